//! Application tasks on the endpoint's I/O thread (`Endpoint::spawn`).
mod common;
use common::*;

use ringquic::Endpoint;

/// Serve on the server's I/O thread and run the client on the client's, connect and accept
/// included (they run inline there); 200 request/response exchanges cost (next to) no
/// cross-thread wakeups.
#[test]
fn request_response_entirely_on_io_threads() {
    for b in backends() {
        let (server, client) = pair(b);
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let serving = server.spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let req = recv.read_to_end(1024).await.unwrap();
                send.write_all(&req).await.unwrap();
                send.finish().unwrap();
            }
        });
        let cl = client.clone();
        let requests = client.spawn(async move {
            let conn = cl.connect(addr, "localhost").unwrap().await.unwrap();
            for i in 0..200u32 {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&i.to_be_bytes()).await.unwrap();
                send.finish().unwrap();
                assert_eq!(recv.read_to_end(1024).await.unwrap(), i.to_be_bytes());
            }
            conn.close(0u32.into(), b"done");
            200u32
        });
        let done = futures::executor::block_on(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let watchdog = std::thread::spawn(move || {
                if rx.recv_timeout(std::time::Duration::from_secs(30)).is_err() {
                    eprintln!("local-task request/response hung");
                    std::process::abort();
                }
            });
            let n = requests.await;
            tx.send(()).unwrap();
            watchdog.join().unwrap();
            n
        });
        assert_eq!(done.expect("the request task"), 200, "{b}");
        // The server's accept_bi ends with the connection's close.
        futures::executor::block_on(serving).expect("the serving task");
        let (cw, sw) = (client.stats().app_wakeups, server.stats().app_wakeups);
        assert!(
            cw < 10 && sw < 10,
            "{b}: {cw} / {sw} cross-thread wakeups for 200 exchanges"
        );
    }
}

/// An accept loop running on the I/O thread ends when the endpoint is closed; aborting a
/// task drops its future (and the handles it holds), so the endpoint can shut down.
#[test]
fn close_ends_a_local_accept_loop_and_abort_drops_a_task() {
    for b in backends() {
        let endpoint = Endpoint::builder().backend(b).bind(localhost()).unwrap();
        let ep = endpoint.clone();
        let accept_loop = endpoint.spawn(async move {
            let mut n = 0;
            while ep.accept().await.is_some() {
                n += 1;
            }
            n
        });
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        let ep = endpoint.clone();
        let parked = endpoint.spawn(async move {
            let _hold = (ep, Dropped(dropped_tx));
            std::future::pending::<()>().await
        });
        endpoint.close(0u32.into(), b"");
        assert_eq!(
            futures::executor::block_on(accept_loop).expect("accept loop"),
            0,
            "{b}"
        );
        parked.abort();
        // Aborting dropped the task's future (and the endpoint handle it held).
        // (A task aborted before its first poll drops the sender unused: Disconnected.)
        assert!(
            !matches!(
                dropped_rx.recv_timeout(std::time::Duration::from_secs(10)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ),
            "{b}: the aborted task's future was not dropped"
        );
        drop(endpoint);
    }
}

#[test]
fn tasks_of_a_closed_endpoint_are_cancelled() {
    for b in backends() {
        let endpoint = Endpoint::builder().backend(b).bind(localhost()).unwrap();
        let waiting = endpoint.spawn(std::future::pending::<()>());
        let probe = endpoint.clone();
        drop(endpoint);
        // Last handle goes: the I/O thread exits and cancels the task.
        drop(probe);
        let e = futures::executor::block_on(waiting).expect_err("the task cannot finish");
        assert!(e.is_cancelled() && !e.is_panic(), "{b}: {e}");
    }
}

/// `try_spawn` starts sibling tasks on the I/O thread from inside a task there, and hands the
/// future back anywhere else.
#[test]
fn try_spawn_on_the_current_io_thread() {
    let endpoint = Endpoint::builder().bind(localhost()).unwrap();
    assert!(
        ringquic::try_spawn(async { 1 }).is_err(),
        "not on an I/O thread here"
    );
    let outer = endpoint.spawn(async {
        let inner = ringquic::try_spawn(async { 20 })
            .map_err(|_| ())
            .expect("on the I/O thread");
        inner.await.unwrap() + 1
    });
    assert_eq!(futures::executor::block_on(outer).expect("outer task"), 21);
}

/// A panic in a spawned task ends that task only (as with `tokio::spawn`): its handle says it
/// panicked, and the endpoint, its connections and its other tasks go on.
#[test]
fn a_panicking_task_ends_alone() {
    for b in backends() {
        let (server, client) = pair(b);
        let addr = server.local_addr().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(20), async {
                let connecting = client.connect(addr, "localhost").unwrap();
                let conn = server.accept().await.unwrap().await.unwrap();
                let client_conn = connecting.await.unwrap();
                // A task that waits on the connection while its sibling panics.
                let c = conn.clone();
                let survivor = server.spawn(async move {
                    let mut recv = c.accept_uni().await.unwrap();
                    recv.read_to_end(64).await.unwrap()
                });
                let boom = server.spawn(async {
                    tokio::task::yield_now().await;
                    panic!("deliberate panic in a spawned task");
                });
                let e = boom.await.expect_err("the task panicked");
                assert!(e.is_panic() && !e.is_cancelled(), "{b}: {e:?}");
                assert!(e.to_string().contains("deliberate panic"), "{b}: {e}");
                // The endpoint, the connection and the other task are still alive.
                let mut send = client_conn.open_uni().await.unwrap();
                send.write_all(b"still here").await.unwrap();
                send.finish().unwrap();
                assert_eq!(survivor.await.expect("the survivor"), b"still here");
                let late = server.spawn(async { 7 });
                assert_eq!(late.await.expect("a task spawned after the panic"), 7);
                assert!(conn.close_reason().is_none(), "{b}");
            })
            .await
            .unwrap_or_else(|_| panic!("{b}: hung after a task panicked"));
        });
    }
}

/// Connecting never waits for an I/O thread: a task on endpoint A's I/O thread connects
/// through endpoint B while a task on B's connects through A, and both handshakes complete.
#[test]
fn crossed_connects_between_io_threads_do_not_deadlock() {
    for b in backends() {
        let (a, bee) = pair(b);
        let (b2, a2) = pair(b);
        // a serves, bee connects to it from a task on a2's thread; b2 serves, a2's peer...
        let (a_addr, b2_addr) = (a.local_addr().unwrap(), b2.local_addr().unwrap());
        let (bee2, a22) = (bee.clone(), a2.clone());
        // On a2's I/O thread: connect through bee. On bee's I/O thread: connect through a2.
        let t1 = a2.spawn(async move { bee2.connect(a_addr, "localhost").unwrap().await.map(|_| ()) });
        let t2 = bee.spawn(async move { a22.connect(b2_addr, "localhost").unwrap().await.map(|_| ()) });
        let (sa, sb) = (a.clone(), b2.clone());
        let accepts = std::thread::spawn(move || {
            futures::executor::block_on(async {
                let x = sa.accept().await.unwrap().await;
                let y = sb.accept().await.unwrap().await;
                (x.is_ok(), y.is_ok())
            })
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let watchdog = std::thread::spawn(move || {
            if rx.recv_timeout(std::time::Duration::from_secs(20)).is_err() {
                eprintln!("crossed connects between I/O threads deadlocked");
                std::process::abort();
            }
        });
        let r1 = futures::executor::block_on(t1).expect("task 1");
        let r2 = futures::executor::block_on(t2).expect("task 2");
        let accepted = accepts.join().unwrap();
        tx.send(()).unwrap();
        watchdog.join().unwrap();
        assert!(r1.is_ok() && r2.is_ok(), "{b}: {r1:?} {r2:?}");
        assert_eq!(accepted, (true, true), "{b}");
    }
}
