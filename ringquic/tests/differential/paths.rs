//! `path_scenarios!(crate)`: what happens on the path: NAT rebinding, a dead path, a server
//! that lost its state.

macro_rules! path_scenarios {
    ($q:ident) => {
        /// Behaviour through a loopback relay.
        mod paths {
            use std::{sync::Arc, time::Duration};

            use $q::{ConnectionError, EndpointConfig};

            use super::h::{self, imp};
            use crate::differential::support::*;

            /// The client's NAT rebinds mid-transfer (the relay moves to a new server-facing
            /// port after 512 KiB, while the server is already echoing back): the server
            /// follows the client to the new address and a 2 MiB echo arrives intact both ways (quinn-proto: migration; quinn: rebind_recv
            /// from the server's point of view).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nat_rebinding_mid_transfer() {
                // finding f
                nat_rebinding(1).await;
            }

            /// The NAT rebinds again and again: a new server-facing port every 256 KiB of
            /// the transfer (about eight times); the echo still arrives intact.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nat_rebinding_repeatedly() {
                // finding f
                nat_rebinding(8).await;
            }

            /// The server's side of a mid-transfer echo: accepts one bidirectional stream,
            /// writes each chunk back as it arrives and returns the SHA-256 of all it read.
            fn spawn_echo(conn: $q::Connection, size: usize) -> tokio::task::JoinHandle<Vec<u8>> {
                tokio::spawn(async move {
                    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                    let mut data = Vec::with_capacity(size);
                    while let Some(c) = recv.read_chunk(64 * 1024, true).await.unwrap() {
                        data.extend_from_slice(&c.bytes);
                        send.write_all(&c.bytes).await.unwrap();
                    }
                    send.finish().unwrap();
                    sha256(&data)
                })
            }

            /// The echo's server side read exactly `data`.
            async fn server_got(echo: tokio::task::JoinHandle<Vec<u8>>, data: &[u8]) {
                let server_hash = within(5, "server", echo).await.unwrap();
                assert_eq!(
                    server_hash,
                    sha256(data),
                    "{}: server got different bytes",
                    imp::NAME
                );
            }

            async fn nat_rebinding(times: u64) {
                const SIZE: usize = 2 << 20;
                let (server, client, _cert) = h::endpoints();
                let relay = Relay::new(server.local_addr().unwrap()).await;
                let (conn, server_conn) = h::connect_via(&server, &client, relay.addr).await;
                let first_addr = server_conn.remote_address();
                // The server echoes as it reads, so data flows both ways when the NAT rebinds.
                let echo = spawn_echo(server_conn.clone(), SIZE);
                if times == 1 {
                    relay.rebind_after(512 * 1024);
                } else {
                    relay.rebind_every(256 * 1024);
                }
                let data = payload(SIZE, 5);
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let (_, back) = within(30, "transfer across a NAT rebinding", async {
                    tokio::join!(
                        async {
                            send.write_all(&data).await.expect("write");
                            send.finish().unwrap();
                        },
                        recv.read_to_end(SIZE)
                    )
                })
                .await;
                let back = back.expect("read back");
                assert!(
                    relay.rebinds() >= times.min(4),
                    "{}: the relay rebound {} times",
                    imp::NAME,
                    relay.rebinds()
                );
                server_got(echo, &data).await;
                assert_eq!(sha256(&back), sha256(&data), "{}: echo differs", imp::NAME);
                assert_ne!(
                    server_conn.remote_address(),
                    first_addr,
                    "{}: server did not follow the client",
                    imp::NAME
                );
            }

            /// The client moves to a new socket itself (`Endpoint::rebind`) a quarter into a
            /// 2 MiB echo: its local address is the new one (ringquic: once the I/O thread has
            /// swapped, hence the wait), the server follows it there, the echo arrives intact,
            /// the client switched to a new connection ID (active migration), and the old
            /// socket's port is free afterwards (quinn-proto: migration; quinn: rebind).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn active_rebind_mid_transfer() {
                const SIZE: usize = 2 << 20;
                let (server, client, _cert) = h::endpoints();
                let (conn, server_conn) = h::connect(&server, &client).await;
                let old = client.local_addr().unwrap();
                let echo = spawn_echo(server_conn.clone(), SIZE);
                let data = payload(SIZE, 6);
                let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let new = fresh.local_addr().unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let (_, back) = within(30, "transfer across a rebind", async {
                    tokio::join!(
                        async {
                            send.write_all(&data[..SIZE / 4]).await.expect("write");
                            client.rebind(fresh).expect("rebind");
                            within(5, "the new local address", async {
                                while client.local_addr().unwrap() != new {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            })
                            .await;
                            send.write_all(&data[SIZE / 4..]).await.expect("write");
                            send.finish().unwrap();
                        },
                        recv.read_to_end(SIZE)
                    )
                })
                .await;
                assert_eq!(
                    sha256(&back.expect("read back")),
                    sha256(&data),
                    "{}: echo differs",
                    imp::NAME
                );
                server_got(echo, &data).await;
                assert_eq!(
                    server_conn.remote_address(),
                    new,
                    "{}: server did not follow",
                    imp::NAME
                );
                let tx = conn.stats().frame_tx;
                assert!(
                    tx.retire_connection_id >= 1,
                    "{}: no connection ID retired: {tx:?}",
                    imp::NAME
                );
                wait_socket_released(old, 5, imp::NAME).await;
            }

            /// A path that drops everything: both sides close with `TimedOut` after the idle
            /// timeout (quinn-proto: idle_timeout).
            #[tokio::test]
            async fn idle_timeout_is_timed_out() {
                let (server, client, _cert) = h::endpoints_with(idle_timeout(Duration::from_millis(500)));
                let relay = Relay::new(server.local_addr().unwrap()).await;
                let (c, s) = h::connect_via(&server, &client, relay.addr).await;
                relay.blackhole();
                let (ce, se) = within(5, "idle timeout", async {
                    tokio::join!(c.closed(), s.closed())
                })
                .await;
                assert_eq!(ce, ConnectionError::TimedOut, "{}", imp::NAME);
                assert_eq!(se, ConnectionError::TimedOut, "{}", imp::NAME);
            }

            /// A server restarted with the same reset key answers the old connection's
            /// packets with a stateless reset: the client sees `Reset` (quinn-proto:
            /// client_stateless_reset).
            #[tokio::test]
            async fn stateless_reset_from_restarted_server() {
                fn cfg() -> EndpointConfig {
                    let mut c = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                        ring::hmac::HMAC_SHA256,
                        &[7u8; 64],
                    )));
                    // The default (hashed) CID generator has a random key of its own: the new
                    // server would drop the old CIDs as invalid instead of resetting.
                    c.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(8)));
                    c
                }
                let cert = cert();
                let first = h::endpoint(
                    cfg(),
                    Some(server_cfg(&cert, transport(|_| {}))),
                    None,
                    localhost(),
                );
                let client = h::client(client_cfg(&cert, transport(|_| {})));
                let relay = Relay::new(first.local_addr().unwrap()).await;
                let (conn, first_conn) = h::connect_via(&first, &client, relay.addr).await;
                // One round trip first, so the handshake is confirmed and the client sends
                // only short-header packets (a stateless reset answers only those).
                let mut s = conn.open_uni().await.unwrap();
                s.write_all(b"ping").await.unwrap();
                s.finish().unwrap();
                let mut r = within(5, "accept_uni", first_conn.accept_uni())
                    .await
                    .unwrap();
                within(5, "read", r.read_to_end(10)).await.unwrap();
                within(5, "stopped", s.stopped()).await.unwrap();
                // The "restarted" server: same key, no memory of the connection.
                let second = h::endpoint(
                    cfg(),
                    Some(server_cfg(&cert, transport(|_| {}))),
                    None,
                    localhost(),
                );
                relay.retarget(second.local_addr().unwrap());
                let mut s = conn.open_uni().await.unwrap();
                s.write_all(&[0u8; 1000]).await.unwrap();
                let e = within(5, "stateless reset", conn.closed()).await;
                assert_eq!(e, ConnectionError::Reset, "{}", imp::NAME);
            }
        }
    };
}
