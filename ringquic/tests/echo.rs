//! Handshake, bidirectional echo, and the runtime-agnostic futures.
mod common;
use common::*;

use ringquic::{BackendKind, Endpoint};

async fn echo_once(server: &Endpoint, client: &Endpoint) {
    let addr = server.local_addr().unwrap();
    let connecting = client.connect(addr, "localhost").unwrap();
    let srv = server.clone();
    let server_task = async move {
        let conn = srv
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("server handshake");
        let (mut send, mut recv) = conn.accept_bi().await.expect("accept_bi");
        let msg = recv.read_to_end(1 << 20).await.expect("read");
        send.write_all(&msg).await.expect("write");
        send.finish().unwrap();
        let _ = send.stopped().await;
        conn
    };
    let client_task = async move {
        let conn = connecting.await.expect("client handshake");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello ringquic").await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(1 << 20).await.unwrap();
        assert_eq!(back, b"hello ringquic");
        conn
    };
    let (_s, _c) = futures::join!(server_task, client_task);
}

fn run_echo(backend: BackendKind, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let (server, client) = pair(backend);
        within(20, echo_once(&server, &client)).await;
    });
}

#[test]
fn echo_tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for b in backends() {
        run_echo(b, &rt);
    }
}

#[test]
fn echo_tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for b in backends() {
        run_echo(b, &rt);
    }
}

/// No tokio at all: `futures::executor::block_on` drives everything; the I/O thread wakes it.
#[test]
fn echo_futures_block_on() {
    for b in backends() {
        let (server, client) = pair(b);
        // A watchdog instead of tokio::time: fail rather than hang.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(std::time::Duration::from_secs(20)).is_err() {
                eprintln!("echo under block_on timed out");
                std::process::abort();
            }
        });
        futures::executor::block_on(async {
            let addr = server.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let srv = server.clone();
            let s = async move {
                let conn = srv.accept().await.unwrap().await.unwrap();
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let msg = recv.read_to_end(1024).await.unwrap();
                send.write_all(&msg).await.unwrap();
                send.finish().unwrap();
                let _ = send.stopped().await;
            };
            let c = async move {
                let conn = connecting.await.unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(b"no runtime").await.unwrap();
                send.finish().unwrap();
                assert_eq!(recv.read_to_end(1024).await.unwrap(), b"no runtime");
            };
            futures::join!(s, c);
        });
        done_tx.send(()).unwrap();
        watchdog.join().unwrap();
    }
}
