//! One endpoint over several I/O threads (`EndpointBuilder::shards`): connections spread over
//! every shard, `accept` yields them all, a client that changes address stays on its shard,
//! the counters add up, shutdown releases every socket, and what a sharded endpoint cannot do
//! is refused with a typed error. Linux only (the kernel steering).
#![cfg(target_os = "linux")]

use crate::common;
use common::*;

use std::{net::UdpSocket, sync::Arc, time::Duration};

use ringquic::{BackendKind, Endpoint, EndpointError, EndpointIoStats, QuicLbConfig, TransportConfig};

const SHARDS: usize = 4;
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 8;

fn sharded(b: BackendKind, cert: &Cert, t: &Arc<TransportConfig>, shards: usize) -> Endpoint {
    sharded_with(b, cert, t, shards, true)
}

fn sharded_with(
    b: BackendKind,
    cert: &Cert,
    t: &Arc<TransportConfig>,
    shards: usize,
    steering: bool,
) -> Endpoint {
    Endpoint::builder()
        .backend(b)
        .shards(shards)
        .shard_steering(steering)
        .server_config(server_config_with(cert, t.clone()))
        .bind(localhost())
        .expect("sharded endpoint")
}

/// The sharded endpoint's summed stats once forwarding is accounted for. Each shard publishes
/// its counters at the end of its own turns, so one snapshot of them all can count a forwarded
/// datagram in at its target before the shard that sent it has published its count out; once
/// both have, every datagram counted in was counted out. Waits (at most 2 s) for a snapshot
/// where that holds; the caller asserts it.
async fn forwarding_settled(server: &Endpoint) -> EndpointIoStats {
    let mut io = server.io_stats();
    for _ in 0..200 {
        if io.forwarded_in + io.forward_drops <= io.forwarded_out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        io = server.io_stats();
    }
    io
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_shards_and_stay_when_clients_move() {
    for b in backends() {
        spread_and_move(b, true).await;
    }
}

/// The fallback where the kernel will not steer: every shard forwards what arrives for another
/// shard. The same connections, the same moves, every echo still comes back; the forwarding is
/// counted (and is zero with the program).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kernel_steering_the_shards_forward_and_nothing_is_lost() {
    for b in backends() {
        spread_and_move(b, false).await;
    }
}

async fn spread_and_move(b: BackendKind, steering: bool) {
    {
        let cert = cert();
        let t = Arc::new(transport());
        let server = sharded_with(b, &cert, &t, SHARDS, steering);
        assert_eq!(server.shards(), SHARDS);
        let serving = serve_echoes(&server);
        let clients: Vec<Endpoint> = (0..CLIENTS)
            .map(|_| client_endpoint(b, client_config_with(&cert, t.clone()), |c| c))
            .collect();
        let addr = server.local_addr().unwrap();
        let conns = echoing_connections(&clients, addr, PER_CLIENT).await;
        let total = CLIENTS * PER_CLIENT;
        let per_shard: Vec<u64> = server
            .shard_io_stats()
            .iter()
            .map(|s| s.handshakes.accepted_handshakes)
            .collect();
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "{b}: a shard got no connection: {per_shard:?}"
        );
        assert_eq!(per_shard.iter().sum::<u64>(), total as u64, "{b}: {per_shard:?}");
        assert_eq!(server.stats().accepted_handshakes, total as u64, "{b}: the sum");
        // Every shard took datagrams in: from its socket, or, without kernel steering, from
        // the shard whose socket the kernel's hash chose (the sums are `EndpointIoStats::add`,
        // whose every field the compiler checks).
        let received: Vec<u64> = server
            .shard_io_stats()
            .iter()
            .map(|s| s.datagrams_received + s.forwarded_in)
            .collect();
        assert!(received.iter().all(|&n| n > 0), "{b}: {received:?}");

        for client in &clients {
            client.rebind(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        }
        let after = futures::future::join_all(conns.iter().map(|c| echoes(c, b"sharded", 5))).await;
        let alive = after.iter().filter(|ok| **ok).count();
        let io = forwarding_settled(&server).await;
        eprintln!(
            "{b}, steering {steering}: connections per shard {per_shard:?}; {alive} of {total} echo after \
             their clients moved; forwarded {} (dropped {}), unsteered shards {}",
            io.forwarded_out, io.forward_drops, io.unsteered_shards
        );
        assert_eq!(alive, total, "{b}: connections lost when their clients moved");
        assert!(
            io.forwarded_in + io.forward_drops <= io.forwarded_out,
            "{b}: {io:?}"
        );
        if steering {
            assert_eq!(io.unsteered_shards, 0, "{b}");
            assert_eq!(
                io.forwarded_out, 0,
                "{b}: the kernel steered every datagram: {io:?}"
            );
        } else {
            assert_eq!(io.unsteered_shards, SHARDS as u64, "{b}");
            assert!(io.forwarded_out > 100, "{b}: {io:?}");
        }

        for c in &conns {
            c.close(0u32.into(), b"done");
        }
        server.close(0u32.into(), b"done");
        assert_eq!(
            within(10, serving).await.unwrap(),
            total,
            "{b}: accept yielded every connection"
        );
        drop((conns, clients));
        // Every shard's socket is released once the endpoint is gone: the port can be bound
        // again (not while any socket of the group is open).
        let dropping = std::time::Instant::now();
        drop(server);
        eprintln!(
            "{b}: the sharded endpoint's last drop took {:?}",
            dropping.elapsed()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while UdpSocket::bind(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{b}: a shard's socket was not released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[test]
fn what_a_sharded_endpoint_cannot_do_is_refused() {
    let cert = cert();
    let t = Arc::new(transport());
    let b = backends()[0];
    let server = sharded(b, &cert, &t, 2);
    let e = server
        .rebind(UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap_err();
    assert!(
        matches!(
            e.get_ref().and_then(|e| e.downcast_ref::<EndpointError>()),
            Some(EndpointError::Config(_))
        ),
        "{e}"
    );
    let adopted = Endpoint::builder()
        .shards(2)
        .socket(UdpSocket::bind("127.0.0.1:0").unwrap());
    assert!(matches!(adopted, Err(EndpointError::Config(_))), "{adopted:?}");
    let too_many = Endpoint::builder().shards(257).bind(localhost());
    assert!(matches!(too_many, Err(EndpointError::Config(_))), "{too_many:?}");
    let bad_lb = Endpoint::builder()
        .shards(2)
        .quic_lb(QuicLbConfig {
            config_id: 7,
            server_id: vec![1],
            nonce_len: 4,
            encode_length: true,
        })
        .bind(localhost());
    assert!(matches!(bad_lb, Err(EndpointError::QuicLb(_))), "{bad_lb:?}");
}

#[test]
fn zero_shards_means_one_per_cpu() {
    let ep = Endpoint::builder().shards(0).bind(localhost()).expect("endpoint");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(ep.shards(), cpus);
    assert_eq!(ep.shard_io_stats().len(), cpus);
}

/// A sharded server with QUIC-LB connection IDs (whose layout `tests/suite/quic_lb.rs` decodes):
/// the builder installs a generator per shard, and connections land and work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_lb_ids_on_a_sharded_endpoint() {
    let cert = cert();
    let t = Arc::new(transport());
    let b = backends()[0];
    let server = Endpoint::builder()
        .backend(b)
        .shards(2)
        .quic_lb(QuicLbConfig {
            config_id: 3,
            server_id: vec![0x42],
            nonce_len: 6,
            encode_length: true,
        })
        .server_config(server_config_with(&cert, t.clone()))
        .bind(localhost())
        .expect("sharded endpoint");
    let serving = serve_echoes(&server);
    let client = client_endpoint(b, client_config_with(&cert, t), |c| c);
    for c in echoing_connections(&[client], server.local_addr().unwrap(), 8).await {
        c.close(0u32.into(), b"done");
    }
    server.close(0u32.into(), b"done");
    assert_eq!(within(10, serving).await.unwrap(), 8);
}

/// Thread-per-core serving: each connection's work runs on its own shard's I/O thread
/// (`Connection::spawn`). Four shards, 32 connections: the echo tasks ran on exactly four
/// threads, all of them ringquic's I/O threads, and each connection's tasks on one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tasks_run_on_their_own_shard() {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    let cert = cert();
    let t = Arc::new(transport());
    let b = backends()[0];
    let server = sharded(b, &cert, &t, SHARDS);
    let threads: Arc<Mutex<HashMap<usize, HashSet<String>>>> = Arc::default();
    let (srv, seen) = (server.clone(), threads.clone());
    let serving = tokio::spawn(async move {
        while let Some(incoming) = srv.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (seen, c) = (seen.clone(), conn.clone());
            // The whole connection is served on its shard: accepting streams, reading, writing.
            drop(conn.spawn(async move {
                while let Ok((mut s, mut r)) = c.accept_bi().await {
                    let here = std::thread::current();
                    let name = format!("{}:{:?}", here.name().unwrap_or("?"), here.id());
                    seen.lock()
                        .unwrap()
                        .entry(c.stable_id())
                        .or_default()
                        .insert(name);
                    if let Ok(v) = r.read_to_end(1024).await {
                        let _ = s.write_all(&v).await;
                        let _ = s.finish();
                    }
                }
            }));
        }
    });
    let clients: Vec<Endpoint> = (0..8)
        .map(|_| client_endpoint(b, client_config_with(&cert, t.clone()), |c| c))
        .collect();
    let conns = echoing_connections(&clients, server.local_addr().unwrap(), 4).await;
    for c in &conns {
        assert!(echoes(c, b"sharded", 10).await, "{b}: echo from a shard task");
    }
    let seen = threads.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        conns.len(),
        "{b}: every connection was served: {seen:?}"
    );
    assert!(
        seen.values().all(|t| t.len() == 1),
        "{b}: a connection's tasks moved threads: {seen:?}"
    );
    let all: HashSet<&String> = seen.values().flatten().collect();
    assert!(all.iter().all(|n| n.starts_with("ringquic-io:")), "{b}: {all:?}");
    assert_eq!(
        all.len(),
        SHARDS,
        "{b}: tasks ran on {} threads: {all:?}",
        all.len()
    );
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    server.close(0u32.into(), b"done");
    within(10, serving).await.unwrap();
}

/// The race the forwarding is there for even with the kernel steering: the reuseport group
/// changes under the program. The program answers a socket's place in the group, and the kernel
/// fills a leaving socket's place with the group's last one (`reuseport_detach_sock`). Here a
/// stray socket of the same user joins the port first, the four shards join behind it, and the
/// stray one leaves: the group is then shard 3, 0, 1, 2, so the kernel puts every datagram that
/// names shard k on shard k − 1's socket. Every connection must still land, work and be held by
/// the shard its IDs name; each misplaced datagram is forwarded and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_change_under_the_program_is_forwarded_and_counted() {
    use socket2::{Domain, Protocol, Socket, Type};
    for b in backends() {
        let stray = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        stray.set_reuse_port(true).unwrap();
        stray.bind(&localhost().into()).unwrap();
        let addr = stray.local_addr().unwrap().as_socket().unwrap();
        let cert = cert();
        let t = Arc::new(transport());
        let server = Endpoint::builder()
            .backend(b)
            .shards(SHARDS)
            .server_config(server_config_with(&cert, t.clone()))
            .bind(addr)
            .expect("a sharded endpoint on the stray socket's port");
        drop(stray);
        let serving = serve_echoes(&server);
        let clients: Vec<Endpoint> = (0..CLIENTS)
            .map(|_| client_endpoint(b, client_config_with(&cert, t.clone()), |c| c))
            .collect();
        let conns = echoing_connections(&clients, addr, PER_CLIENT).await;
        let total = CLIENTS * PER_CLIENT;
        let after = futures::future::join_all(conns.iter().map(|c| echoes(c, b"reordered", 5))).await;
        let alive = after.iter().filter(|ok| **ok).count();
        let per_shard: Vec<u64> = server
            .shard_io_stats()
            .iter()
            .map(|s| s.handshakes.accepted_handshakes)
            .collect();
        let io = forwarding_settled(&server).await;
        eprintln!(
            "{b}: connections per shard {per_shard:?}; {alive} of {total} echo; forwarded {} \
             (dropped {}), unsteered shards {}",
            io.forwarded_out, io.forward_drops, io.unsteered_shards
        );
        assert_eq!(alive, total, "{b}: connections lost to the reordered group");
        assert_eq!(io.unsteered_shards, 0, "{b}: the program is attached");
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "{b}: a shard got no connection: {per_shard:?}"
        );
        // Every datagram of every connection reached a socket one place off: each handshake
        // and each echo crossed at least once (a few may also be dropped at the bound).
        assert!(
            io.forwarded_out >= 2 * total as u64,
            "{b}: the misplaced datagrams were not forwarded: {io:?}"
        );
        assert!(
            io.forwarded_in + io.forward_drops <= io.forwarded_out,
            "{b}: {io:?}"
        );
        for c in &conns {
            c.close(0u32.into(), b"done");
        }
        server.close(0u32.into(), b"done");
        assert_eq!(within(10, serving).await.unwrap(), total, "{b}");
    }
}
