//! Scenarios for ringquic's own API (`Endpoint::spawn`: tasks on the endpoint's I/O thread),
//! each next to the tokio + quinn behaviour it mirrors.

use std::{sync::Arc, time::Duration};

use super::support::*;

fn ringquic_pair() -> (ringquic::Endpoint, ringquic::Endpoint) {
    let cert = cert();
    let t = || transport(|_| {});
    let mk = || {
        ringquic::Endpoint::builder()
            .server_config(server_cfg(&cert, t()))
            .default_client_config(client_cfg(&cert, t()))
            .bind(localhost())
            .expect("endpoint")
    };
    (mk(), mk())
}

/// ringquic only. A task on endpoint A's I/O thread connects through endpoint B while a task
/// on B's thread connects through A, at the same moment: neither blocks its thread waiting
/// for the other, both handshakes complete. (quinn has no counterpart: its calls never wait
/// for another thread.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringquic_cross_endpoint_connects_from_io_threads() {
    // finding c
    let (a, b) = ringquic_pair();
    let (a, b) = (LeakOnPanic::new(a), LeakOnPanic::new(b));
    let (a_addr, b_addr) = (a.get().local_addr().unwrap(), b.get().local_addr().unwrap());
    // Accept on the tokio runtime, so only the connects run on the I/O threads.
    let accepts: Vec<_> = [a.get().clone(), b.get().clone()]
        .into_iter()
        .map(|ep| {
            tokio::spawn(async move {
                let c = ep.accept().await.expect("incoming").await.expect("accept");
                c.closed().await
            })
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let task = |on: &ringquic::Endpoint, via: ringquic::Endpoint, to| {
        let barrier = barrier.clone();
        on.spawn(async move {
            barrier.wait().await;
            let connecting = via.connect(to, "localhost").expect("connect");
            connecting.await.map(|c| c.remote_address())
        })
    };
    // On A's thread: B connects to A's own address; on B's thread: A connects to B's.
    let on_a = task(a.get(), b.get().clone(), a_addr);
    let on_b = task(b.get(), a.get().clone(), b_addr);
    let (ra, rb) = within(5, "cross connects from the two I/O threads (deadlock?)", async {
        tokio::join!(on_a, on_b)
    })
    .await;
    assert_eq!(ra.expect("task on A").expect("handshake via B"), a_addr);
    assert_eq!(rb.expect("task on B").expect("handshake via A"), b_addr);
    for t in accepts {
        t.abort();
    }
}

/// ringquic only. A task spawned with `Endpoint::spawn` that panics: its `JoinHandle`
/// resolves to an error that says the task panicked, and the endpoint and its other tasks go
/// on (a connection still works). The tokio + quinn counterpart is
/// [`quinn_tokio_spawn_panic_stays_in_task`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringquic_spawned_task_panic_stays_in_task() {
    // finding d
    let (server, client) = ringquic_pair();
    let (server, client) = (LeakOnPanic::new(server), LeakOnPanic::new(client));
    // A task still waiting when the other panics (woken from a plain thread: there is no
    // tokio timer on the I/O thread).
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let slow = server.get().spawn(async move {
        let _ = rx.await;
        "still running"
    });
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = tx.send(());
    });
    let bad = server.get().spawn(async {
        if true {
            panic!("deliberate panic in a spawned task");
        }
    });
    let r = within(5, "JoinHandle of a task that panicked", bad).await;
    let e = r.expect_err("a panicked task has no output");
    assert!(
        e.to_string().to_lowercase().contains("panic"),
        "the error does not say the task panicked: {e}"
    );
    assert!(e.is_panic(), "{e:?}");
    let slow = within(5, "another task on the same thread", slow).await;
    assert_eq!(slow.expect("the other task"), "still running");
    waker.join().unwrap();
    let after = server.get().spawn(async { 7 });
    let after = within(5, "a task spawned after the panic", after).await;
    assert_eq!(after.expect("a task spawned after the panic"), 7);
    let addr = server.get().local_addr().unwrap();
    let srv = server.get().clone();
    let (c, s) = within(5, "handshake after the panic", async {
        tokio::join!(client.get().connect(addr, "localhost").unwrap(), async {
            srv.accept().await.expect("endpoint still accepting").await
        })
    })
    .await;
    c.expect("client");
    s.expect("server");
}

/// The tokio + quinn counterpart of [`ringquic_spawned_task_panic_stays_in_task`]: a panic
/// in a `tokio::spawn`ed task is a `JoinError` with `is_panic()`, and the endpoint goes on.
#[cfg(not(windows))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_tokio_spawn_panic_stays_in_task() {
    let cert = cert();
    let server = quinn::Endpoint::server(server_cfg(&cert, transport(|_| {})), localhost()).unwrap();
    let mut client = quinn::Endpoint::client(localhost()).unwrap();
    client.set_default_client_config(client_cfg(&cert, transport(|_| {})));
    let srv = server.clone();
    let bad = tokio::spawn(async move {
        let _keep = srv;
        if true {
            panic!("deliberate panic in a spawned task");
        }
    });
    let e = within(5, "JoinHandle of a task that panicked", bad)
        .await
        .expect_err("panicked");
    assert!(e.is_panic());
    let addr = server.local_addr().unwrap();
    let (c, s) = within(5, "handshake after the panic", async {
        tokio::join!(client.connect(addr, "localhost").unwrap(), async {
            server.accept().await.unwrap().await
        })
    })
    .await;
    c.expect("client");
    s.expect("server");
}
