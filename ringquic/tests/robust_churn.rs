//! No leaks: 1000 connections, each with one small request, across 10 server/client endpoint
//! pairs created and dropped in turn. Every endpoint's I/O thread is joined when it is dropped,
//! and resident memory stays flat across the churn; on Linux two more pairs follow whose server
//! is sharded over two I/O threads. `.ci/reliability.sh` runs this test under LeakSanitizer,
//! and under valgrind with fewer connections (`RINGQUIC_CHURN_CONNS`).
//!
//! Environment: `RINGQUIC_CHURN_CONNS` (default 1000) and `RINGQUIC_CHURN_ENDPOINTS` (default 10)
//! per backend; `RINGQUIC_CHURN_SKIP_RSS=1` skips the RSS bound (meaningless under valgrind);
//! `RINGQUIC_CHURN_LEAK_CANARY=1` leaks 4 KiB on purpose, so that `.ci/reliability.sh` can check
//! its leak checker really reports a leak.
mod common;
use common::process::{env_usize, in_child, io_threads, io_threads_after, rss_kib, test_name};
use common::*;

use std::time::{Duration, Instant};

use ringquic::BackendKind;

/// Connections open at the same time.
const PARALLEL: usize = 4;
/// Largest RSS growth allowed between the end of the first (warm-up) endpoint pair and the end
/// of the last one.
const RSS_GROWTH_LIMIT_MIB: u64 = 30;
/// Bound on each wait for an endpoint pair to go idle (the whole pair has 120 s).
const IDLE_BOUND_SECS: u64 = 40;

/// One endpoint pair's life: serve `conns` connections (PARALLEL at a time), each one
/// bidirectional stream with a 100-byte request echoed back, then close and drop everything.
/// The server has `shards` I/O threads (`EndpointBuilder::shards`); with `on_runtime` both
/// loops run as tasks on the test's runtime instead (`EndpointBuilder::io_on_runtime`).
async fn one_endpoint_pair(b: BackendKind, round: usize, conns: usize, shards: usize, on_runtime: bool) {
    let (server, client) = pair_with(
        b,
        |s| s.shards(shards).io_on_runtime(on_runtime),
        |c| c.io_on_runtime(on_runtime),
    );
    assert_eq!(server.io_on_runtime(), on_runtime);
    assert_eq!(server.shards(), shards);
    let addr = server.local_addr().unwrap();
    let srv = server.clone();
    let serving = tokio::spawn(async move {
        let mut handled = 0;
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(incoming) = srv.accept().await {
            handled += 1;
            tasks.spawn(async move {
                let conn = incoming.await.unwrap();
                let _send = echo_one(&conn, 1024).await;
                // Wait for the client's close, so the server side ends cleanly too.
                conn.closed().await;
            });
            // Reap finished handlers as we go: bounded memory in the test itself.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        handled
    });
    let mut next = 0;
    while next < conns {
        let batch = PARALLEL.min(conns - next);
        let mut set = tokio::task::JoinSet::new();
        for k in 0..batch {
            let client = client.clone();
            let id = (round * conns + next + k) as u32;
            set.spawn(async move {
                let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
                let req: Vec<u8> = (0..100u32).map(|i| (i ^ id) as u8).collect();
                assert_eq!(request(&conn, &req, 1024).await, req, "connection {id}");
                conn.close(0u32.into(), b"bye");
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        next += batch;
    }
    // Closed connections wait out their draining period (three PTOs, from the RTT they
    // measured) before the endpoint is idle. Under valgrind the first pair runs while the code
    // is translated on first use (9-12 s for four connections, ~2 s for each later pair), and
    // 10 s for the drain was seen to run out (.ci/reliability.sh): hence the wide bound.
    within(IDLE_BOUND_SECS, client.wait_idle()).await;
    assert_eq!(client.open_connections(), 0, "{b}");
    server.close(0u32.into(), b"round over");
    let handled = within(IDLE_BOUND_SECS, serving).await.unwrap();
    assert_eq!(handled, conns, "{b}: server saw {handled} of {conns} connections");
    within(IDLE_BOUND_SECS, server.wait_idle()).await;
    drop((server, client));
}

/// Runs in a child process (unless `RINGQUIC_TEST_CHILD_CHURN` is set, as valgrind runs do) so
/// that thread counts and RSS are this test's own: other tests of the binary run in parallel.
#[test]
fn churn_connections_and_endpoints_without_leaks() {
    if !in_child(
        "RINGQUIC_TEST_CHILD_CHURN",
        &test_name(module_path!(), "churn_connections_and_endpoints_without_leaks"),
    ) {
        return;
    }
    let conns = env_usize("RINGQUIC_CHURN_CONNS", 1000);
    let endpoints = env_usize("RINGQUIC_CHURN_ENDPOINTS", 10).max(1);
    let check_rss = std::env::var("RINGQUIC_CHURN_SKIP_RSS").is_err() && endpoints >= 3;
    let per_endpoint = conns.div_ceil(endpoints);
    let rt = multi_thread_runtime();
    for b in backends() {
        assert_eq!(io_threads(), 0, "{b}: I/O threads before the churn");
        let started = Instant::now();
        let mut rss = Vec::new();
        // The pairs whose RSS is watched, then (Linux) two more whose server is sharded over two
        // I/O threads, so that the leak and thread checks cover sharded endpoints too. Those
        // stay out of the RSS series: more threads means more malloc arenas, a growth that is
        // the allocator's, not ours.
        // Then (Unix) two pairs whose loops run on the runtime, for the same checks: no thread
        // to join there, the loops' tasks end on the runtime (or are dropped with it, below).
        let sharded_rounds = if cfg!(target_os = "linux") { 2 } else { 0 };
        let runtime_rounds = if cfg!(unix) { 2 } else { 0 };
        for round in 0..endpoints + sharded_rounds + runtime_rounds {
            let shards = if round >= endpoints && round < endpoints + sharded_rounds {
                2
            } else {
                1
            };
            let on_runtime = round >= endpoints + sharded_rounds;
            rt.block_on(within(
                120,
                one_endpoint_pair(b, round, per_endpoint, shards, on_runtime),
            ));
            // Both endpoints were dropped: their threads were joined inside the drop (or, past
            // the drop's bounded wait on a loaded machine, finish on their own within their
            // shutdown bounds: a thread still there after 6 s is a leak).
            let (left, waited) = io_threads_after(Duration::from_secs(6));
            assert_eq!(left, 0, "{b}: I/O threads left after endpoint pair {round}");
            if waited > Duration::from_millis(50) {
                eprintln!("{b}: pair {round}: an I/O thread outlived the drop's join by {waited:?}");
            }
            if round < endpoints {
                rss.push(rss_kib());
            }
        }
        let growth = rss.last().unwrap().saturating_sub(rss[0]) / 1024;
        eprintln!(
            "{b}: {} connections over {endpoints} endpoint pairs (+{sharded_rounds} with a sharded server, \
             +{runtime_rounds} with the loops on the runtime) in {:.1} s; RSS after each of the first \
             {endpoints} pairs (MiB): {:?}; growth after warm-up {growth} MiB",
            per_endpoint * (endpoints + sharded_rounds + runtime_rounds),
            started.elapsed().as_secs_f64(),
            rss.iter().map(|k| k / 1024).collect::<Vec<_>>()
        );
        if check_rss {
            assert!(
                growth <= RSS_GROWTH_LIMIT_MIB,
                "{b}: RSS grew {growth} MiB across the churn: {rss:?} KiB"
            );
        }
    }
    drop(rt);
    assert_eq!(io_threads(), 0);
    if std::env::var("RINGQUIC_CHURN_LEAK_CANARY").is_ok() {
        // On a thread that ends, so no stale pointer to it stays on a live stack.
        std::thread::spawn(|| std::mem::forget(std::hint::black_box(vec![0xa5u8; 4096])))
            .join()
            .unwrap();
    }
}
