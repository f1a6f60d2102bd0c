//! Closing, idle timeouts, shutdown without leftovers, adopted sockets, construction errors.
use crate::common;
use common::process::{in_child, io_threads, run_child, test_name};
use common::*;

use std::{sync::Arc, time::Duration};

use ringquic::{
    BackendKind, ConnectionError, Endpoint, EndpointBuilder, EndpointConfig, EndpointError, TransportConfig,
};

#[tokio::test(flavor = "current_thread")]
async fn close_reaches_the_peer_as_application_closed() {
    for b in backends() {
        let (server, _client, sconn, conn) = connected_pair(b).await;
        sconn.close(42u32.into(), b"go away");
        match within(10, conn.closed()).await {
            ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, 42u32.into());
                assert_eq!(&c.reason[..], b"go away");
            }
            other => panic!("{b}: {other}"),
        }
        // Later operations report the same error.
        assert!(matches!(
            conn.open_bi().await,
            Err(ConnectionError::ApplicationClosed(_))
        ));
        // The closing side sees LocallyClosed.
        assert_eq!(sconn.closed().await, ConnectionError::LocallyClosed);
        within(10, server.wait_idle()).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn idle_timeout_reaches_the_other_side() {
    for b in backends() {
        let c = cert();
        let mut short = TransportConfig::default();
        short.max_idle_timeout(Some(Duration::from_millis(300).try_into().unwrap()));
        let server = server_endpoint(b, server_config_with(&c, Arc::new(short)), |s| s);
        let client = client_endpoint(b, client_config(&c), |e| e);
        let relay = Relay::new(server.local_addr().unwrap());
        let (sconn, conn) = connected_via(&server, &client, relay.addr).await;
        // The path goes silent both ways; neither side hears a close: both time out.
        relay.blackhole();
        assert_eq!(within(10, conn.closed()).await, ConnectionError::TimedOut, "{b}");
        assert_eq!(within(10, sconn.closed()).await, ConnectionError::TimedOut, "{b}");
    }
}

/// Runs in a child process so that no other test's threads are counted.
#[test]
fn dropping_the_endpoint_joins_its_thread() {
    if !in_child(
        "RINGQUIC_TEST_CHILD_THREADS",
        &test_name(module_path!(), "dropping_the_endpoint_joins_its_thread"),
    ) {
        return;
    }
    if !cfg!(target_os = "linux") {
        eprintln!("counting threads by name needs /proc; skipping");
        return;
    }
    // Drops that waited out their bound: a loaded host may make one, a regression every one.
    let mut waited_out = 0;
    for b in backends() {
        assert_eq!(io_threads(), 0);
        let (server, client) = pair(b);
        assert_eq!(io_threads(), 2);
        current_thread_runtime().block_on(async {
            let (s, c) = connected(&server, &client).await;
            let (mut tx, _rx) = c.open_bi().await.unwrap();
            tx.write_all(b"in flight when everything is dropped")
                .await
                .unwrap();
            drop((s, c, tx));
        });
        // Each endpoint's last drop joins its thread, timed one at a time.
        for endpoint in [client, server] {
            let before = io_threads();
            let dropping = std::time::Instant::now();
            drop(endpoint);
            let took = dropping.elapsed();
            if took < ringquic::SHUTDOWN_JOIN_TIMEOUT {
                // Joined inside the drop, no waiting.
                assert_eq!(
                    io_threads(),
                    before - 1,
                    "{b}: the drop returned before its thread ended"
                );
            } else {
                // The drop's bounded wait ran out (a loaded host): the thread finishes alone,
                // soon.
                eprintln!("{b}: the drop waited out its {took:?}; the thread finishes alone");
                waited_out += 1;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while io_threads() >= before {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{b}: the I/O thread never ended"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        assert_eq!(io_threads(), 0, "{b}");
    }
    assert!(
        waited_out <= 1,
        "{waited_out} drops waited out SHUTDOWN_JOIN_TIMEOUT: shutdown is slower than its bound"
    );
}

#[test]
fn adopting_a_socket() {
    for b in backends() {
        let c = cert();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let server = Endpoint::builder()
            .backend(b)
            .server_config(server_config(&c))
            .socket(sock)
            .unwrap();
        assert_eq!(server.local_addr().unwrap(), addr);
        let client = client_endpoint(b, client_config(&c), |e| e);
        current_thread_runtime().block_on(connected(&server, &client));
    }
}

#[test]
fn adopting_an_unbound_socket_says_what_is_missing() {
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let err = Endpoint::builder().socket(raw.into()).unwrap_err();
    assert!(
        matches!(err, EndpointError::Socket { option: "bind", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not bound"), "{err}");
}

#[test]
fn construction_errors_are_typed() {
    // A bigger max UDP payload raises the minimum buffer sizes.
    let mut ec = EndpointConfig::default();
    ec.max_udp_payload_size(9000).unwrap();
    type Expected = fn(&EndpointError) -> bool;
    let cases: [(&str, EndpointBuilder, Expected); 5] = [
        ("recv_buffers(0)", Endpoint::builder().recv_buffers(0), |e| {
            matches!(e, EndpointError::Config(_))
        }),
        ("tx_buffers(0)", Endpoint::builder().tx_buffers(0), |e| {
            matches!(e, EndpointError::Config(_))
        }),
        (
            "recv_buffer_size(1000)",
            Endpoint::builder().recv_buffer_size(1000),
            |e| matches!(e, EndpointError::RecvBufferTooSmall { size: 1000, .. }),
        ),
        (
            "tx_buffer_size(1000)",
            Endpoint::builder().tx_buffer_size(1000),
            |e| matches!(e, EndpointError::TxBufferTooSmall { size: 1000, .. }),
        ),
        (
            "tx_buffer_size(8000) with a 9000-byte max UDP payload",
            Endpoint::builder().endpoint_config(ec).tx_buffer_size(8000),
            |e| matches!(e, EndpointError::TxBufferTooSmall { min: 9000, .. }),
        ),
    ];
    for (what, builder, expected) in cases {
        let e = builder.bind(localhost()).unwrap_err();
        assert!(expected(&e), "{what}: {e}");
    }
    // Bind failure: the port is taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = Endpoint::client(taken.local_addr().unwrap()).unwrap_err();
    // As quinn: an io::Error of the OS's kind, with ringquic's error inside.
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<EndpointError>());
    assert!(matches!(inner, Some(EndpointError::Bind { .. })), "{e}");
    // Unknown backend names.
    let e = "quantum".parse::<BackendKind>().unwrap_err();
    assert!(
        matches!(e, EndpointError::UnknownBackend(ref n) if n == "quantum"),
        "{e}"
    );
    assert_eq!("uring".parse::<BackendKind>().unwrap(), BackendKind::IoUring);
    assert_eq!("poll".parse::<BackendKind>().unwrap(), BackendKind::Poll);
    // No client config: connect says so.
    let client = Endpoint::client(localhost()).unwrap();
    let e = client
        .connect("127.0.0.1:4433".parse().unwrap(), "localhost")
        .unwrap_err();
    assert!(matches!(e, ringquic::ConnectError::NoDefaultClientConfig), "{e}");
    // An invalid remote address is refused by the protocol layer, through the I/O thread.
    let c = cert();
    let e = client
        .connect_with(client_config(&c), "127.0.0.1:0".parse().unwrap(), "localhost")
        .unwrap_err();
    assert!(
        matches!(e, ringquic::ConnectError::InvalidRemoteAddress(_)),
        "{e}"
    );
}

/// `RINGQUIC_BACKEND` with a name ringquic does not know is an error at construction. Runs in a
/// child process so the variable does not leak into other tests.
#[test]
fn unknown_backend_in_the_environment_is_an_error() {
    if std::env::var_os("RINGQUIC_TEST_CHILD").is_some() {
        let e = Endpoint::client(localhost()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<EndpointError>());
        assert!(matches!(inner, Some(EndpointError::UnknownBackend(_))), "{e}");
        return;
    }
    run_child(
        &test_name(module_path!(), "unknown_backend_in_the_environment_is_an_error"),
        &[("RINGQUIC_TEST_CHILD", "1"), ("RINGQUIC_BACKEND", "bogus")],
    );
}

#[test]
fn environment_selects_the_backend() {
    if let Ok(want) = std::env::var("RINGQUIC_TEST_CHILD_BACKEND") {
        let e = Endpoint::client(localhost()).unwrap();
        assert_eq!(e.backend().name(), want);
        return;
    }
    for name in ["poll"]
        .into_iter()
        .chain(cfg!(target_os = "linux").then_some("uring"))
    {
        run_child(
            &test_name(module_path!(), "environment_selects_the_backend"),
            &[("RINGQUIC_TEST_CHILD_BACKEND", name), ("RINGQUIC_BACKEND", name)],
        );
    }
}

/// `Endpoint::close` + `wait_idle`: every connection's peer hears the close, and wait_idle
/// returns once the connections are cleaned up.
#[tokio::test(flavor = "current_thread")]
async fn endpoint_close_then_wait_idle() {
    for b in backends() {
        let (server, client) = pair(b);
        let (server_conns, _conns) = connections(&server, &client, 3).await;
        client.close(5u32.into(), b"maintenance");
        within(10, client.wait_idle()).await;
        assert_eq!(client.open_connections(), 0);
        for sc in &server_conns {
            match within(10, sc.closed()).await {
                ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, 5u32.into()),
                other => panic!("{b}: {other}"),
            }
        }
        assert!(
            client.accept().await.is_none(),
            "a closed endpoint accepts nothing"
        );
    }
}

/// Dropping every client handle closes its connections on the wire before the thread exits: the
/// server hears a close (code 0), not an idle timeout.
#[tokio::test(flavor = "current_thread")]
async fn dropping_every_handle_sends_close_frames() {
    for b in backends() {
        let (_server, client, sconn, conn) = connected_pair(b).await;
        drop(conn);
        drop(client);
        match within(10, sconn.closed()).await {
            ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, 0u32.into()),
            other => panic!("{b}: {other}"),
        }
    }
}

/// An idle endpoint sleeps in the kernel: over half a second with an open, quiet connection
/// the I/O loop turns only for timers and keep-alives, not thousands of times.
#[tokio::test(flavor = "current_thread")]
async fn idle_endpoint_sleeps() {
    for b in backends() {
        let (_server, client, _s, _c) = connected_pair(b).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let before = client.io_stats().loop_turns;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let turns = client.io_stats().loop_turns - before;
        assert!(turns < 100, "{b}: {turns} loop turns while idle");
    }
}

/// Shutdown sends every connection's CONNECTION_CLOSE, however few TX buffers there are: 40
/// connections whose handles all go at once through an endpoint with one TX buffer, while
/// its I/O thread is busy, so the whole shutdown happens in its final turns. Every server-side
/// connection hears a close with code 0 (not an idle timeout).
#[tokio::test(flavor = "current_thread")]
async fn shutdown_closes_every_connection() {
    const CONNS: usize = 40;
    for b in backends() {
        let (server, client) = pair_with(b, |s| s, |c| c.tx_buffers(1));
        let (server_conns, conns) = connections(&server, &client, CONNS).await;
        // Keep the client's I/O thread busy while every handle goes, so the connections'
        // closes and the shutdown reach it together, and late: longer than three PTOs (~80 ms
        // here), after which quinn-proto's close timer would end a closing period in which
        // the close had not gone out.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let busy = client.spawn(async move {
            let _ = started_tx.send(());
            std::thread::sleep(Duration::from_millis(300));
        });
        started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("task started");
        drop(busy);
        drop(conns);
        drop(client);
        for (i, sc) in server_conns.iter().enumerate() {
            match within(5, sc.closed()).await {
                ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, 0u32.into(), "{b}"),
                other => panic!("{b}: connection {i}: {other}"),
            }
        }
    }
}
