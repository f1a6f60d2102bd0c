//! Migration, on every backend, over loopback: `Endpoint::rebind` (a client moves to a new
//! socket mid-transfer: active migration), a client whose address changes under it behind a
//! NAT (passive migration: the relay forwards from a new port), with ringquic and stock quinn
//! peers; and the rebinds that cannot be done (a closed endpoint, a socket that is not a bound
//! UDP socket), which fail at once with a typed error.
use crate::common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{hashed::*, impair::*, *};
use ringquic::{Connection, EndpointError};

const SIZE: usize = 6 << 20;

/// Poll `cond` every 5 ms until it holds; `false` after `secs` seconds.
async fn eventually(secs: u64, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Whether `addr`'s port can be bound again within `secs` seconds: the socket that had it is
/// closed, and (io_uring) no operation of the kernel's holds it any more.
async fn port_freed(addr: SocketAddr, secs: u64) -> bool {
    eventually(secs, || std::net::UdpSocket::bind(addr).is_ok()).await
}

/// A fresh UDP socket on loopback, for a rebind.
fn fresh_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
}

/// The [`EndpointError`] inside a rebind's `io::Error`.
fn endpoint_error(e: &std::io::Error) -> &EndpointError {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<EndpointError>())
        .unwrap_or_else(|| panic!("no EndpointError inside {e:?}"))
}

/// Serve one bidirectional stream of `$conn` (quinn's or ringquic's connection): echo it chunk
/// by chunk as it arrives (so data flows both ways throughout), finish, and evaluate to the
/// SHA-256 of what was read.
macro_rules! echo_hashed {
    ($conn:expr) => {{
        let (mut send, mut recv) = $conn.accept_bi().await.expect("accept_bi");
        let mut data = Vec::with_capacity(SIZE);
        while let Some(c) = recv.read_chunk(64 * 1024, true).await.expect("read") {
            data.extend_from_slice(&c.bytes);
            send.write_all(&c.bytes).await.expect("echo");
        }
        send.finish().expect("finish");
        let _ = send.stopped().await;
        sha256(&data)
    }};
}

/// Send `data` on a new bidirectional stream of `$conn` (quinn's or ringquic's), running
/// `$during` (an async block) once the first quarter is written, and evaluate to the SHA-256 of
/// what comes back.
macro_rules! upload_echoed {
    ($conn:expr, $data:expr, $during:expr) => {{
        let data: &[u8] = $data;
        let (mut send, mut recv) = $conn.open_bi().await.expect("open_bi");
        let write = async {
            send.write_all(&data[..data.len() / 4]).await.expect("write");
            $during.await;
            send.write_all(&data[data.len() / 4..]).await.expect("write");
            send.finish().expect("finish");
        };
        let ((), back) = tokio::join!(write, recv.read_to_end(data.len()));
        sha256(&back.expect("read back"))
    }};
}

/// What passive migration through `relay` must have done: the echo of `data` came back intact
/// (`back`) and the server read it intact (`echo`), the relay moved the client at least four
/// times, and the server follows the client's new address (it is no longer `first`).
async fn migrated(
    b: ringquic::BackendKind,
    data: &[u8],
    back: Vec<u8>,
    echo: tokio::task::JoinHandle<Vec<u8>>,
    relay: &ImpairedRelay,
    server_side: &Connection,
    first: SocketAddr,
) {
    assert_eq!(back, sha256(data), "{b}: the echo differs");
    assert_eq!(
        echo.await.unwrap(),
        sha256(data),
        "{b}: the server got other bytes"
    );
    assert!(
        relay.rebinds() >= 4,
        "{b}: the relay rebound {} times",
        relay.rebinds()
    );
    assert_ne!(
        server_side.remote_address(),
        first,
        "{b}: the server did not follow"
    );
}

/// A ringquic client rebinds to a new socket a quarter into a 6 MiB echo with a ringquic
/// server: `local_addr` reports the new address, the server follows the client there, the
/// echo arrives intact both ways, the old socket's port is free afterwards, and the new socket
/// serves new connections too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_rebind_mid_transfer() {
    for b in backends() {
        let (server, client) = pair(b);
        within(60, async {
            let (server_side, conn) = connected(&server, &client).await;
            let old = client.local_addr().unwrap();
            assert_eq!(server_side.remote_address(), old);
            let sc = server_side.clone();
            let echo = tokio::spawn(async move { echo_hashed!(sc) });
            let data = random_bytes(SIZE, 11);
            let fresh = fresh_socket();
            let new = fresh.local_addr().unwrap();
            let back = upload_echoed!(conn, &data, async {
                client.rebind(fresh).expect("rebind");
                assert!(
                    eventually(5, || client.local_addr().unwrap() == new).await,
                    "{b}: local_addr still {:?}",
                    client.local_addr()
                );
            });
            assert_eq!(back, sha256(&data), "{b}: the echo differs");
            assert_eq!(
                echo.await.unwrap(),
                sha256(&data),
                "{b}: the server got other bytes"
            );
            assert_eq!(
                server_side.remote_address(),
                new,
                "{b}: the server did not follow"
            );
            // Active migration, not just a new address: the client moved to a new connection
            // ID (retiring the old one), as quinn-proto's `local_address_changed` does.
            let tx = conn.stats().frame_tx;
            assert!(
                tx.retire_connection_id >= 1,
                "{b}: no connection ID retired: {tx:?}"
            );
            assert!(
                port_freed(old, 5).await,
                "{b}: the old socket {old} is still open"
            );
            // New connections leave from the new socket.
            let (s2, _c2) = connected(&server, &client).await;
            assert_eq!(s2.remote_address(), new, "{b}");
            conn.close(0u32.into(), b"done");
        })
        .await;
    }
}

/// A ringquic client rebinds in the middle of an echo with stock quinn's server: quinn's
/// server follows the client to the new address, the echo arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_rebind_with_a_quinn_server() {
    for b in backends() {
        let c = cert();
        let served = quinn_serves_one(&c, |conn| async move {
            let hash = echo_hashed!(conn);
            (hash, conn.remote_address())
        });
        let Some((addr, serve)) = served else {
            return;
        };
        let client = client_endpoint(b, client_config(&c), |e| e);
        within(60, async {
            let conn = connect_to(&client, addr).await;
            let data = random_bytes(SIZE, 12);
            let fresh = fresh_socket();
            let new = fresh.local_addr().unwrap();
            let back = upload_echoed!(conn, &data, async {
                client.rebind(fresh).expect("rebind");
            });
            assert_eq!(back, sha256(&data), "{b}: the echo differs");
            let ((hash, remote), _server) = serve.await.unwrap();
            assert_eq!(hash, sha256(&data), "{b}: quinn's server got other bytes");
            assert_eq!(remote, new, "{b}: quinn's server did not follow the client");
            assert_eq!(client.local_addr().unwrap(), new);
            conn.close(0u32.into(), b"done");
        })
        .await;
    }
}

/// Rebinds back to back, none waiting for the one before to be done: the endpoint ends on the
/// last socket, every old port is freed, and the connection still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinds_in_a_row() {
    for b in backends() {
        let (server, client) = pair(b);
        within(30, async {
            let (server_side, conn) = connected(&server, &client).await;
            let mut olds = vec![client.local_addr().unwrap()];
            let mut last = None;
            for _ in 0..3 {
                let s = fresh_socket();
                olds.push(s.local_addr().unwrap());
                last = Some(s.local_addr().unwrap());
                client.rebind(s).expect("rebind");
            }
            olds.pop();
            let last = last.unwrap();
            assert!(
                eventually(5, || client.local_addr().unwrap() == last).await,
                "{b}"
            );
            let sc = server_side.clone();
            let serve = tokio::spawn(async move { echo_one(&sc, 1 << 20).await });
            let msg = random_bytes(200_000, 13);
            assert_eq!(request(&conn, &msg, 1 << 20).await, msg, "{b}");
            let _ = serve.await.unwrap();
            assert_eq!(server_side.remote_address(), last, "{b}");
            for old in olds {
                assert!(port_freed(old, 5).await, "{b}: {old} still open");
            }
        })
        .await;
    }
}

/// Passive migration: behind a "NAT" (the relay) a stock quinn client's address changes four
/// times during a 6 MiB echo with a ringquic server, which follows it each time; the echo
/// arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_quinn_client_to_ringquic_server() {
    for b in backends() {
        let c = cert();
        let server = server_endpoint(b, server_config(&c), |s| s);
        let relay = ImpairedRelay::new(server.local_addr().unwrap(), Impair::none(), 21);
        let Some(mut client) = quinn_or_skip(quinn::Endpoint::client(localhost())) else {
            return;
        };
        client.set_default_client_config(client_config(&c));
        within(60, async {
            let connecting = client.connect(relay.addr, "localhost").unwrap();
            let server_side = server.accept().await.unwrap().await.unwrap();
            let conn = connecting.await.unwrap();
            let first = server_side.remote_address();
            let sc = server_side.clone();
            let echo = tokio::spawn(async move { echo_hashed!(sc) });
            let data = random_bytes(SIZE, 22);
            relay.rebind_after(512 << 10, Some(1 << 20));
            let back = upload_echoed!(conn, &data, async {});
            migrated(b, &data, back, echo, &relay, &server_side, first).await;
            conn.close(0u32.into(), b"done");
        })
        .await;
    }
}

/// Passive migration between two ringquic endpoints, through a relay that also loses a few
/// datagrams: the client's address changes four times during the echo; it arrives intact, and
/// the client's own address never changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_ringquic_to_ringquic() {
    for b in backends() {
        let (server, client) = pair(b);
        let relay = ImpairedRelay::new(server.local_addr().unwrap(), Impair::lossy(0.002, 0.0, 0.0), 23);
        within(60, async {
            let (server_side, conn) = connected_via(&server, &client, relay.addr).await;
            let first = server_side.remote_address();
            let own = client.local_addr().unwrap();
            let sc = server_side.clone();
            let echo = tokio::spawn(async move { echo_hashed!(sc) });
            let data = random_bytes(SIZE, 24);
            relay.rebind_after(512 << 10, Some(1 << 20));
            let back = upload_echoed!(conn, &data, async {});
            migrated(b, &data, back, echo, &relay, &server_side, first).await;
            assert_eq!(client.local_addr().unwrap(), own);
            // Passive: the client did not know, so it kept its connection ID.
            assert_eq!(conn.stats().frame_tx.retire_connection_id, 0, "{b}");
            conn.close(0u32.into(), b"done");
        })
        .await;
    }
}

/// A rebind after `close` fails at once (`EndpointError::Stopping`, kind `NotConnected`);
/// the socket handed over is closed, not kept.
#[tokio::test(flavor = "current_thread")]
async fn rebind_after_close_is_refused() {
    for b in backends() {
        let (server, client) = pair(b);
        within(10, async {
            let (_s, _c) = connected(&server, &client).await;
            let before = client.local_addr().unwrap();
            client.close(0u32.into(), b"closing");
            let s = fresh_socket();
            let addr = s.local_addr().unwrap();
            let e = client.rebind(s).expect_err("rebind after close");
            assert_eq!(e.kind(), std::io::ErrorKind::NotConnected, "{b}: {e}");
            assert!(matches!(endpoint_error(&e), EndpointError::Stopping), "{b}: {e}");
            assert!(
                std::net::UdpSocket::bind(addr).is_ok(),
                "{b}: the refused socket was kept"
            );
            assert_eq!(client.local_addr().unwrap(), before);
            client.wait_idle().await;
        })
        .await;
    }
}

/// A socket that is not a bound UDP socket (a TCP socket, an unbound UDP socket) is refused at
/// once with the check that failed (`EndpointError::Socket`, kind `InvalidInput`); the
/// endpoint goes on with its socket and its connection.
#[tokio::test(flavor = "current_thread")]
async fn rebind_refuses_unusable_sockets() {
    for b in backends() {
        let (server, client) = pair(b);
        within(10, async {
            let (server_side, conn) = connected(&server, &client).await;
            let before = client.local_addr().unwrap();
            let tcp: socket2::Socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap().into();
            let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            for (sock, check) in [(tcp, "SO_TYPE"), (unbound, "bind")] {
                let e = client.rebind(sock.into()).expect_err("an unusable socket");
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{b}: {e}");
                match endpoint_error(&e) {
                    EndpointError::Socket { option, .. } => assert_eq!(*option, check, "{b}: {e}"),
                    other => panic!("{b}: {other}"),
                }
            }
            assert_eq!(client.local_addr().unwrap(), before);
            let serve = tokio::spawn(async move { echo_one(&server_side, 100).await });
            assert_eq!(request(&conn, b"still here", 100).await, b"still here", "{b}");
            let _ = serve.await.unwrap();
        })
        .await;
    }
}

/// A rebind with no connection open: only the address changes, and the endpoint then connects
/// from the new one. The server can rebind too: new clients reach it at its new address.
#[tokio::test(flavor = "current_thread")]
async fn rebind_an_idle_endpoint() {
    for b in backends() {
        let (server, client) = pair(b);
        within(10, async {
            for ep in [&client, &server] {
                let s = fresh_socket();
                let new = s.local_addr().unwrap();
                ep.rebind(s).expect("rebind");
                assert!(eventually(5, || ep.local_addr().unwrap() == new).await, "{b}");
            }
            let (s, c): (Connection, Connection) = connected(&server, &client).await;
            assert_eq!(s.remote_address(), client.local_addr().unwrap(), "{b}");
            let sc = s.clone();
            let serve = tokio::spawn(async move { echo_one(&sc, 100).await });
            assert_eq!(request(&c, b"hello", 100).await, b"hello", "{b}");
            let _ = serve.await.unwrap();
        })
        .await;
    }
}
