//! Application tasks on the endpoint's I/O thread (`Endpoint::spawn`).
use crate::common;
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
                assert_eq!(request(&conn, &i.to_be_bytes(), 1024).await, i.to_be_bytes());
            }
            conn.close(0u32.into(), b"done");
            200u32
        });
        let done = block_on_within(30, "local-task request/response", requests);
        assert_eq!(done.expect("the request task"), 200, "{b}");
        // The server's accept_bi ends with the connection's close.
        block_on_within(10, "the serving task", serving).expect("the serving task");
        let (cw, sw) = (client.io_stats().app_wakeups, server.io_stats().app_wakeups);
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
