//! `lifecycle_scenarios!(crate)`: dropping handles in every order, dropping a busy server.

macro_rules! lifecycle_scenarios {
    ($q:ident) => {
        /// What dropping handles does, in every order.
        mod lifecycle {
            use std::time::Duration;

            use $q::{ConnectionError, Endpoint, ReadError, VarInt};

            use super::h::{self, imp};
            use crate::differential::support::*;

            /// The four handles an application holds on one side.
            #[derive(Clone, Copy, Debug, PartialEq)]
            enum Handle {
                Endpoint,
                Connection,
                Send,
                Recv,
            }

            /// All 24 orders of the four handles.
            fn orders() -> Vec<[Handle; 4]> {
                use Handle::*;
                let all = [Endpoint, Connection, Send, Recv];
                let mut out = Vec::new();
                for a in 0..4 {
                    for b in 0..4 {
                        for c in 0..4 {
                            for d in 0..4 {
                                let idx = [a, b, c, d];
                                if (0..4).all(|i| idx.contains(&i)) {
                                    out.push(idx.map(|i| all[i]));
                                }
                            }
                        }
                    }
                }
                out
            }

            /// One side (the dropper) opens a stream, writes 64 KiB without finishing while the
            /// peer writes 32 KiB back, then drops its four handles in `order`. The peer must
            /// see an orderly end: the stream finished with everything written, or the
            /// connection closed with code 0, having got a prefix of the data either way; then
            /// the connection is closed with code 0, and the dropper's socket is released
            /// (its I/O stopped). `Err` says what went wrong.
            ///
            /// Deliberate difference: quinn may lose the CONNECTION_CLOSE when the handles go
            /// without `wait_idle` (the peer then times out, here after 2 s); ringquic's I/O
            /// thread sends it before it exits (`imp::DROP_MAY_LOSE_CLOSE`, PORTING.md).
            async fn drop_case(order: [Handle; 4], server_drops: bool) -> Result<(), String> {
                // A 2 s idle timeout: a lost close shows up as `TimedOut` within the bounds.
                let (server_ep, client_ep, _cert) = h::endpoints_with(idle_timeout(Duration::from_secs(2)));
                let (client, server) = h::connect(&server_ep, &client_ep).await;
                let (ep, conn, peer_ep, peer) = if server_drops {
                    (server_ep, server, client_ep, client)
                } else {
                    (client_ep, client, server_ep, server)
                };
                let addr = ep.local_addr().unwrap();
                let data = payload(64 * 1024, 9);
                let (mut send, recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
                send.write_all(&data).await.map_err(|e| format!("write: {e}"))?;
                let (mut peer_send, mut peer_recv) = tokio::time::timeout(Duration::from_secs(5), peer.accept_bi())
                    .await
                    .map_err(|_| "accept_bi hung".to_string())?
                    .map_err(|e| format!("accept_bi: {e}"))?;
                let _ = peer_send.write_all(&payload(32 * 1024, 10)).await;

                let (mut ep, mut conn, mut send, mut recv) = (Some(ep), Some(conn), Some(send), Some(recv));
                for handle in order {
                    match handle {
                        Handle::Endpoint => drop(ep.take()),
                        Handle::Connection => drop(conn.take()),
                        Handle::Send => drop(send.take()),
                        Handle::Recv => drop(recv.take()),
                    }
                    tokio::task::yield_now().await;
                }

                let mut got = Vec::new();
                let end = tokio::time::timeout(Duration::from_secs(4), async {
                    for _ in 0..100_000 {
                        match peer_recv.read_chunk(usize::MAX, true).await {
                            Ok(Some(c)) => got.extend_from_slice(&c.bytes),
                            Ok(None) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|_| format!("peer's read hung (got {} bytes)", got.len()))?;
                if got[..] != data[..got.len().min(data.len())] || got.len() > data.len() {
                    return Err(format!("peer got {} bytes that are not a prefix of what was sent", got.len()));
                }
                let lost_close = |e: &ConnectionError| *e == ConnectionError::TimedOut && imp::DROP_MAY_LOSE_CLOSE;
                match &end {
                    Ok(()) if got.len() == data.len() => {}
                    Ok(()) => return Err(format!("stream finished after {} of {} bytes", got.len(), data.len())),
                    Err(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(c))) if c.error_code == VarInt::from_u32(0) => {}
                    Err(ReadError::ConnectionLost(e)) if lost_close(e) => {}
                    Err(e) => return Err(format!("peer's read ended with {e:?}")),
                }
                let closed = tokio::time::timeout(Duration::from_secs(3), peer.closed())
                    .await
                    .map_err(|_| "peer never saw the connection end".to_string())?;
                if !matches!(&closed, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(0)) && !lost_close(&closed) {
                    return Err(format!("peer saw the connection end with {closed:?}"));
                }
                drop(peer_ep);
                let deadline = std::time::Instant::now() + Duration::from_secs(4);
                while std::net::UdpSocket::bind(addr).is_err() {
                    if std::time::Instant::now() > deadline {
                        return Err("the dropping side's socket was not released (I/O still running)".into());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }

            async fn all_drop_orders(server_drops: bool) {
                let mut failures = Vec::new();
                for batch in orders().chunks(24) {
                    let results = futures::future::join_all(batch.iter().map(|o| drop_case(*o, server_drops))).await;
                    for (o, r) in batch.iter().zip(results) {
                        if let Err(e) = r {
                            failures.push(format!("{o:?}: {e}"));
                        }
                    }
                }
                // A lost close shows as the peer timing out (see `imp::MAX_LOST_CLOSES`).
                let lost = failures.iter().filter(|f| f.ends_with("ConnectionLost(TimedOut)")).count();
                if lost > 0 {
                    eprintln!("{}: {lost} of 24 drop orders lost their close:\n{}", imp::NAME, failures.join("\n"));
                }
                assert!(
                    failures.len() == lost && lost <= imp::MAX_LOST_CLOSES,
                    "{}: {} of 24 orders failed:\n{}",
                    imp::NAME,
                    failures.len(),
                    failures.join("\n")
                );
            }

            /// The client drops {Endpoint, Connection, SendStream, RecvStream} in each of
            /// the 24 orders mid-transfer: orderly outcome at the server, client I/O stops.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_orders_client_side() {
                // finding g
                within(20, "24 drop orders", all_drop_orders(false)).await;
            }

            /// The server does the same.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_orders_server_side() {
                // finding g
                within(20, "24 drop orders", all_drop_orders(true)).await;
            }

            /// A server with 40 open connections drops all its handles (connections first or
            /// endpoint first): every client's `closed()` is an application close with code
            /// 0, quickly, not an idle timeout (10 s).
            async fn dropping_busy_server(server: Endpoint, cert: &Cert, endpoint_first: bool) {
                const N: usize = 40;
                let clients: Vec<Endpoint> = (0..4).map(|_| h::client(client_cfg(cert, transport(|_| {})))).collect();
                let mut client_conns = Vec::new();
                let mut server_conns = Vec::new();
                for i in 0..N {
                    let (c, s) = h::connect(&server, &clients[i % clients.len()]).await;
                    client_conns.push(c);
                    server_conns.push(s);
                }
                if endpoint_first {
                    drop(server);
                    drop(server_conns);
                } else {
                    drop(server_conns);
                    drop(server);
                }
                let results = within(4, "every client sees the close (idle timeout is 10 s)", futures::future::join_all(client_conns.iter().map(|c| c.closed()))).await;
                let bad: Vec<_> = results
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !matches!(e, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(0)))
                    .collect();
                assert!(bad.is_empty(), "{}: {bad:?}", imp::NAME);
            }

            /// Finding e: connections dropped, then the endpoint.
            #[tokio::test]
            async fn dropping_server_closes_every_connection() {
                // finding e
                let cert = cert();
                let server = h::server(server_cfg(&cert, transport(|_| {})));
                dropping_busy_server(server, &cert, false).await;
            }

            /// Finding e: the endpoint dropped first, then its connections.
            #[tokio::test]
            async fn dropping_server_endpoint_first_closes_every_connection() {
                // finding e
                let cert = cert();
                let server = h::server(server_cfg(&cert, transport(|_| {})));
                dropping_busy_server(server, &cert, true).await;
            }

            /// Finding e with as few TX buffers as the implementation allows (ringquic:
            /// `tx_buffers(1)`; quinn: no such setting).
            #[tokio::test]
            async fn dropping_server_with_scarce_tx_buffers_closes_every_connection() {
                // finding e
                let cert = cert();
                let server = imp::scarce_tx_server(server_cfg(&cert, transport(|_| {})));
                dropping_busy_server(server, &cert, false).await;
            }
        }
    };
}
