//! The I/O thread's tuning options: busy-poll, CPU pinning, io_uring SQPOLL. Each one carries a
//! real exchange over loopback; out-of-range values are typed errors, never panics.
use crate::common;
use common::*;

use std::time::Duration;

use ringquic::{BackendKind, Endpoint, EndpointBuilder, EndpointError};

/// A server and a client both built with `tune`, on `backend`.
fn tuned_pair(
    backend: BackendKind,
    tune: impl Fn(EndpointBuilder) -> EndpointBuilder,
) -> (Endpoint, Endpoint) {
    pair_with(backend, &tune, &tune)
}

/// Echo 100 kB over one bidirectional stream, then close both sides.
async fn echo(server: &Endpoint, client: &Endpoint) {
    let (s, c) = connected(server, client).await;
    let srv = tokio::spawn(async move {
        echo_one(&s, 1 << 20).await;
        s
    });
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(within(20, request(&c, &msg, 1 << 20)).await, msg);
    let s = within(10, srv).await.expect("server task");
    c.close(0u32.into(), b"done");
    s.close(0u32.into(), b"done");
    within(10, client.wait_idle()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_endpoints_exchange_data() {
    for b in backends() {
        let (server, client) = tuned_pair(b, |e| e.busy_poll(Duration::from_micros(200)));
        // The exchange must complete with both loops spinning between sleeps.
        echo(&server, &client).await;
    }
}

/// The CPUs the calling thread may run on, as the kernel lists them.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("/proc/thread-self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

/// Linux only: it asks `/proc` where the thread may run (on Windows pinning is
/// `SetThreadAffinityMask`, covered by the error test below).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_io_thread_runs_only_on_its_cpu() {
    for b in backends() {
        let (server, client) = tuned_pair(b, |e| e.pin_to_cpu(0));
        // A task spawned on the endpoint runs on its I/O thread: ask the kernel from there.
        let cpus = within(10, client.spawn(async { allowed_cpus() }))
            .await
            .expect("task");
        assert_eq!(cpus, "0", "{b}");
        echo(&server, &client).await;
    }
}

#[test]
fn pinning_to_a_cpu_that_is_not_there_is_an_error() {
    for cpu in [4000, usize::MAX] {
        match Endpoint::builder().pin_to_cpu(cpu).bind(localhost()) {
            Err(EndpointError::Backend { what, .. }) => assert!(what.contains("CPU"), "{what}"),
            other => panic!("pin_to_cpu({cpu}): {other:?}"),
        }
    }
}

#[test]
fn out_of_range_tuning_is_a_config_error() {
    for (option, builder) in [
        ("busy_poll", Endpoint::builder().busy_poll(Duration::from_secs(2))),
        ("sqpoll", Endpoint::builder().sqpoll(Duration::from_secs(61))),
    ] {
        let e = builder.bind(localhost());
        assert!(
            matches!(e, Err(EndpointError::Config(m)) if m.contains(option)),
            "{option}: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqpoll_endpoints_exchange_data_or_refuse_with_a_reason() {
    if !backends().contains(&BackendKind::IoUring) {
        return; // SQPOLL is an io_uring setting; the other backends are covered above.
    }
    let c = cert();
    let server = Endpoint::builder()
        .backend(BackendKind::IoUring)
        .server_config(server_config(&c))
        .sqpoll(Duration::from_millis(10))
        .bind(localhost());
    match server {
        Ok(server) => {
            let client = client_endpoint(BackendKind::IoUring, client_config(&c), |e| {
                e.sqpoll(Duration::from_millis(10))
            });
            echo(&server, &client).await;
        }
        // A kernel that refuses SQPOLL (old, or restricted) must say so, not fall back quietly.
        Err(EndpointError::Backend { what, source }) => {
            assert!(what.contains("SQPOLL"), "{what}: {source}");
            eprintln!("SQPOLL refused here: {source}");
        }
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_sends_carry_an_exchange() {
    for b in backends() {
        let (server, client) = tuned_pair(b, |e| e.send_zero_copy_threshold(0));
        echo(&server, &client).await;
        let s = client.io_stats();
        eprintln!(
            "{b}: {} zero-copy sends, {} copied by the kernel",
            s.send_zero_copy, s.send_zero_copy_copied
        );
        assert!(s.send_zero_copy_copied <= s.send_zero_copy, "{b}: {s:?}");
        if b != BackendKind::IoUring {
            assert_eq!(s.send_zero_copy, 0, "{b}: only io_uring sends zero-copy");
        }
    }
}
