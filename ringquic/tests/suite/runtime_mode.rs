//! The I/O loop as a task on the application's tokio runtime (`EndpointBuilder::io_on_runtime`):
//! the same scenarios as on an I/O thread, on both backends and both runtime flavours, with
//! either side (or both) on the runtime; the settings it refuses; and its shutdown, whether the
//! endpoint or the runtime goes first.
#![cfg(unix)]
use crate::common;
use common::*;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringquic::{BackendKind, ConnectionError, Endpoint, EndpointError};

/// A pair on `backend` where the server's loop runs on the runtime if `server_rt`, and the
/// client's if `client_rt`. Call inside the runtime.
fn pair_on(backend: BackendKind, server_rt: bool, client_rt: bool) -> (Endpoint, Endpoint) {
    pair_with(
        backend,
        |b| b.io_on_runtime(server_rt),
        |b| b.io_on_runtime(client_rt),
    )
}

/// Echo, a hashed 8 MiB transfer each way, 400 small requests on 8 streams in flight at a time,
/// and datagrams both ways, between `server` and `client`.
async fn exercise(server: &Endpoint, client: &Endpoint) {
    let (srv, cli) = connected(server, client).await;
    // Echo.
    let echo = tokio::spawn({
        let srv = srv.clone();
        async move {
            for _ in 0..401 {
                let (mut send, mut recv) = srv.accept_bi().await.expect("accept_bi");
                let msg = recv.read_to_end(1 << 10).await.expect("request");
                send.write_all(&msg).await.expect("response");
                send.finish().expect("finish");
            }
        }
    });
    assert_eq!(request(&cli, b"hello runtime", 1 << 10).await, b"hello runtime");
    // Requests, 8 in flight.
    let mut rounds = Vec::new();
    for lane in 0..8u32 {
        let cli = cli.clone();
        rounds.push(tokio::spawn(async move {
            for i in 0..50u32 {
                let msg = format!("{lane}:{i}");
                assert_eq!(request(&cli, msg.as_bytes(), 1 << 10).await, msg.as_bytes());
            }
        }));
    }
    for r in rounds {
        r.await.expect("requests");
    }
    echo.await.expect("echo task");
    // Bulk, both ways at once, hashed.
    const BULK: usize = 8 << 20;
    let up = tokio::spawn({
        let cli = cli.clone();
        async move { hashed::send_hashed(&cli, BULK, 1).await }
    });
    let down = tokio::spawn({
        let srv = srv.clone();
        async move { hashed::send_hashed(&srv, BULK, 2).await }
    });
    let (got_up, got_down) = tokio::join!(hashed::recv_hashed(&srv), hashed::recv_hashed(&cli));
    assert_eq!(got_up, (BULK, up.await.unwrap()), "client → server bytes");
    assert_eq!(got_down, (BULK, down.await.unwrap()), "server → client bytes");
    // Datagrams: each side sends 20 and reads what arrives (loopback: all, normally; at least
    // one must).
    for i in 0..20u8 {
        cli.send_datagram(Bytes::from(vec![i; 100]))
            .expect("client datagram");
        srv.send_datagram(Bytes::from(vec![i; 100]))
            .expect("server datagram");
    }
    let d = within(10, srv.read_datagram())
        .await
        .expect("server reads a datagram");
    assert_eq!(d.len(), 100);
    let d = within(10, cli.read_datagram())
        .await
        .expect("client reads a datagram");
    assert_eq!(d.len(), 100);
    cli.close(0u32.into(), b"done");
    let e = within(10, srv.closed()).await;
    assert!(
        matches!(e, ConnectionError::ApplicationClosed(_)),
        "server saw {e:?}"
    );
}

fn exercise_on(rt: tokio::runtime::Runtime, server_rt: bool, client_rt: bool) {
    for b in backends() {
        rt.block_on(async {
            let (server, client) = pair_on(b, server_rt, client_rt);
            within(60, exercise(&server, &client)).await;
            let stats = client.io_stats();
            assert!(
                stats.datagrams_received > 0 && stats.datagrams_sent > 0,
                "{stats:?}"
            );
        });
        eprintln!("{b}: server on runtime {server_rt}, client on runtime {client_rt}: ok");
    }
}

#[test]
fn both_on_a_current_thread_runtime() {
    exercise_on(current_thread_runtime(), true, true);
}

#[test]
fn both_on_a_multi_thread_runtime() {
    exercise_on(multi_thread_runtime(), true, true);
}

/// Each mode against the other: a loop on the runtime talks to a loop on an I/O thread.
#[test]
fn on_the_runtime_against_an_io_thread() {
    exercise_on(current_thread_runtime(), true, false);
    exercise_on(multi_thread_runtime(), false, true);
}

/// Tasks of `Endpoint::spawn` run inside the loop's task; `try_spawn` there starts siblings; a
/// panicking one ends alone.
#[test]
fn spawned_tasks_run_in_the_loop() {
    let rt = current_thread_runtime();
    for b in backends() {
        rt.block_on(async {
            let (server, client) = pair_on(b, true, true);
            let (srv, cli) = connected(&server, &client).await;
            let serve = server.spawn(async move {
                let (mut send, mut recv) = srv.accept_bi().await.expect("accept_bi");
                let msg = recv.read_to_end(1 << 10).await.expect("request");
                let sibling = ringquic::try_spawn(async { 7 }).ok().expect("try_spawn inside");
                assert_eq!(sibling.await.expect("sibling"), 7);
                send.write_all(&msg).await.expect("response");
                send.finish().expect("finish");
                let _ = send.stopped().await;
                srv
            });
            let boom = server.spawn(async { panic!("a task's own panic") });
            assert!(
                within(10, boom).await.is_err(),
                "a panicking task ends in a JoinError"
            );
            assert_eq!(request(&cli, b"ping", 1 << 10).await, b"ping");
            let _srv = within(10, serve).await.expect("server task");
            // The endpoint outlived the panic.
            assert_eq!(server.open_connections(), 1);
        });
    }
}

/// What `io_on_runtime` refuses, as typed errors, never a panic.
#[test]
fn refusals_are_errors() {
    let c = cert();
    let bind = |b: ringquic::EndpointBuilder| {
        b.server_config(server_config(&c))
            .io_on_runtime(true)
            .bind(localhost())
    };
    // Outside a runtime.
    assert!(matches!(bind(Endpoint::builder()), Err(EndpointError::Config(_))));
    let rt = current_thread_runtime();
    let _g = rt.enter();
    for (what, b) in [
        ("shards", Endpoint::builder().shards(2)),
        (
            "busy_poll",
            Endpoint::builder().busy_poll(Duration::from_micros(50)),
        ),
        ("pin_to_cpu", Endpoint::builder().pin_to_cpu(0)),
    ] {
        match bind(b) {
            Err(EndpointError::Config(msg)) => eprintln!("{what}: {msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A runtime without timers, and one without its I/O driver.
    let no_time = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let r = no_time.block_on(async { bind(Endpoint::builder()) });
    assert!(matches!(r, Err(EndpointError::Config(_))), "{r:?}");
    let no_io = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = no_io.block_on(async { bind(Endpoint::builder()) });
    assert!(matches!(r, Err(EndpointError::Backend { .. })), "{r:?}");
}

/// Whether a UDP socket can be bound on `addr` within 5 s (bounded retries).
async fn port_frees(addr: std::net::SocketAddr) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Dropping the last handle closes the connections (the peer hears it) and ends the loop's
/// task, which frees the port, without blocking the thread that drops it.
#[test]
fn dropping_the_endpoint_ends_the_loop() {
    let rt = current_thread_runtime();
    for b in backends() {
        rt.block_on(async {
            let (server, client) = pair_on(b, false, true);
            let (srv, cli) = connected(&server, &client).await;
            let addr = client.local_addr().unwrap();
            drop(cli);
            let t = Instant::now();
            drop(client);
            // On this current-thread runtime the loop cannot run until this task yields, so a
            // drop that waited for it would wait out the whole `SHUTDOWN_JOIN_TIMEOUT`.
            assert!(
                t.elapsed() < ringquic::SHUTDOWN_JOIN_TIMEOUT,
                "the drop waited for the loop: {:?}",
                t.elapsed()
            );
            let e = within(10, srv.closed()).await;
            assert!(
                !matches!(e, ConnectionError::TimedOut),
                "the server was not told: {e:?}"
            );
            assert!(port_frees(addr).await, "{b}: the client's port stayed bound");
        });
    }
}

/// A runtime shut down under a live endpoint drops the loop's task: the connection's handles
/// then fail at once instead of hanging, and the socket is closed.
#[test]
fn the_runtime_going_first_fails_the_handles() {
    for b in backends() {
        let other = current_thread_runtime();
        let rt = current_thread_runtime();
        let (server, _client, srv, cli, addr) = rt.block_on(async {
            let (server, client) = pair_on(b, false, true);
            let (srv, cli) = connected(&server, &client).await;
            let addr = client.local_addr().unwrap();
            (server, client, srv, cli, addr)
        });
        drop(rt);
        other.block_on(async {
            let r = within(5, cli.open_uni()).await;
            assert!(matches!(r, Err(ConnectionError::LocallyClosed)), "{b}: {r:?}");
            assert!(port_frees(addr).await, "{b}: the socket outlived the runtime");
            drop(srv);
            drop(server);
        });
    }
}

/// Where the loop runs by default: on the runtime inside one (with the poll backend), on a
/// thread outside one or when a thread-only setting or a backend is asked for.
#[test]
fn where_the_loop_runs_by_default() {
    let c = cert();
    let bind = |b: ringquic::EndpointBuilder| {
        b.server_config(server_config(&c))
            .bind(localhost())
            .expect("bind")
    };
    let outside = bind(Endpoint::builder());
    assert!(!outside.io_on_runtime());
    let rt = current_thread_runtime();
    rt.block_on(async {
        // RINGQUIC_BACKEND names a backend, which keeps the I/O thread (CI runs the suite
        // once with it set).
        let named = std::env::var("RINGQUIC_BACKEND").is_ok_and(|v| !v.trim().is_empty());
        let e = bind(Endpoint::builder());
        assert_eq!(e.io_on_runtime(), !named);
        if !named {
            assert_eq!(e.backend(), BackendKind::Poll);
        }
        for b in backends() {
            let chosen = bind(Endpoint::builder().backend(b));
            assert!(
                !chosen.io_on_runtime(),
                "{b}: a chosen backend keeps its I/O thread"
            );
            assert_eq!(chosen.backend(), b);
            let told = bind(Endpoint::builder().backend(b).io_on_runtime(true));
            assert!(told.io_on_runtime());
            assert_eq!(told.backend(), b);
        }
        let thread = bind(Endpoint::builder().io_on_runtime(false));
        assert!(!thread.io_on_runtime());
        let busy = bind(Endpoint::builder().busy_poll(Duration::from_micros(10)));
        assert!(!busy.io_on_runtime(), "busy_poll needs a thread of its own");
        // And the default endpoint works: one echo through it.
        let server = Endpoint::builder()
            .server_config(server_config(&c))
            .bind(localhost())
            .unwrap();
        let client = Endpoint::builder()
            .default_client_config(client_config(&c))
            .bind(localhost())
            .unwrap();
        assert_eq!((server.io_on_runtime(), client.io_on_runtime()), (!named, !named));
        let (srv, cli) = connected(&server, &client).await;
        let echo = tokio::spawn(async move {
            let _ = echo_one(&srv, 1 << 10).await.stopped().await;
        });
        assert_eq!(request(&cli, b"default", 1 << 10).await, b"default");
        within(10, echo).await.unwrap();
    });
}

/// 0-RTT on the runtime: `into_0rtt` right after `connect` has the loop take the `Connect`
/// on the calling thread, so it succeeds without waiting, as in quinn; inside the loop's own
/// turn (a task of `Endpoint::spawn`) it gives the `Connecting` back instead of waiting.
#[test]
fn zero_rtt_on_the_runtime() {
    let rt = current_thread_runtime();
    rt.block_on(async {
        let c = cert();
        let server = Endpoint::builder()
            .server_config(server_config(&c))
            .io_on_runtime(true)
            .bind(localhost())
            .unwrap();
        let client = Endpoint::builder()
            .default_client_config(client_config(&c))
            .io_on_runtime(true)
            .bind(localhost())
            .unwrap();
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let accepted = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                let incoming = srv.accept().await.expect("incoming");
                let conn = match incoming.accept().expect("accept").into_0rtt() {
                    Ok((conn, _)) => conn,
                    Err(connecting) => connecting.await.expect("handshake"),
                };
                let mut s = conn.accept_uni().await.expect("accept_uni");
                got.push(s.read_to_end(100).await.expect("read"));
            }
            got
        });
        // A first connection gets the session ticket.
        let first = client
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("first handshake");
        let mut s = first.open_uni().await.unwrap();
        s.write_all(b"first").await.unwrap();
        s.finish().unwrap();
        s.stopped().await.unwrap();
        first.close(0u32.into(), b"");
        let (conn, zero_rtt) = client
            .connect(addr, "localhost")
            .unwrap()
            .into_0rtt()
            .map_err(|_| ())
            .expect("0-RTT without waiting for the loop");
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(b"early").await.unwrap();
        s.finish().unwrap();
        assert!(within(10, zero_rtt).await, "the server took the early data");
        let _ = s.stopped().await;
        assert_eq!(
            within(10, accepted).await.unwrap(),
            [b"first".to_vec(), b"early".to_vec()]
        );
        // Inside the loop's own turn the loop cannot create the connection (this task holds
        // the turn), so the `Connecting` comes back, at once: a wait would last the whole
        // `INTO_0RTT_WAIT`, since nothing can answer it meanwhile.
        let inside = client.clone();
        let (zero_rtt, waited) = within(
            10,
            client.spawn(async move {
                let t = Instant::now();
                let r = inside.connect(addr, "localhost").unwrap().into_0rtt().is_ok();
                (r, t.elapsed())
            }),
        )
        .await
        .expect("task");
        assert!(
            !zero_rtt,
            "into_0rtt inside the loop's turn found a connection the loop made"
        );
        assert!(
            waited < ringquic::INTO_0RTT_WAIT,
            "into_0rtt inside the loop waited {waited:?}"
        );
    });
}
