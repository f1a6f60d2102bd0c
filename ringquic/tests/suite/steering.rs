//! Thread-per-core on one port, assembled by hand (docs/SCALING.md): four server endpoints (four
//! I/O threads) on one address through `SO_REUSEPORT`, each issuing QUIC-LB connection IDs that
//! name its shard, and `steer_by_shard` attached to the group. 64 connections from 8 clients
//! spread over all four; after every client moves to another port, every connection still
//! reaches the endpoint that holds it. Without the program the kernel hashes each client's new
//! 4-tuple to some socket, and connections held elsewhere are lost: the control run shows it.
#![cfg(target_os = "linux")]

use crate::common;
use common::*;

use std::{net::UdpSocket, time::Duration};

use ringquic::{BackendKind, Endpoint, EndpointConfig, QuicLbCidGenerator, QuicLbConfig, TransportConfig};
use socket2::{Domain, Protocol, Socket, Type};

const SHARDS: usize = 4;
/// Client endpoints, and connections from each: 64 in all.
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 8;
const CONNS: usize = CLIENTS * PER_CLIENT;

fn lb_config() -> QuicLbConfig {
    QuicLbConfig {
        config_id: 0,
        server_id: vec![0x0a, 0x0b],
        nonce_len: 5,
        encode_length: true,
    }
}

/// `SHARDS` server endpoints on one loopback port, bound in shard order, each naming its shard
/// in its CIDs; the steering program attached if `steer`.
fn sharded_server(
    b: BackendKind,
    cert: &Cert,
    t: &std::sync::Arc<TransportConfig>,
    steer: bool,
) -> Vec<Endpoint> {
    let generator = QuicLbCidGenerator::new(lb_config()).unwrap();
    let mut sockets: Vec<UdpSocket> = Vec::new();
    for _ in 0..SHARDS {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_port(true).unwrap();
        let at = sockets
            .first()
            .map_or("127.0.0.1:0".parse().unwrap(), |f| f.local_addr().unwrap());
        s.bind(&at.into()).unwrap();
        sockets.push(s.into());
    }
    if steer {
        ringquic::steer_by_shard(&sockets[0], lb_config().shard_offset(), SHARDS)
            .expect("attach the program");
    }
    sockets
        .into_iter()
        .enumerate()
        .map(|(shard, socket)| {
            let g = generator.for_shard(shard as u8);
            let mut ec = EndpointConfig::default();
            ec.cid_generator(move || Box::new(g.clone()));
            Endpoint::builder()
                .backend(b)
                .endpoint_config(ec)
                .server_config(server_config_with(cert, t.clone()))
                .socket(socket)
                .expect("shard endpoint")
        })
        .collect()
}

/// Connect `CONNS` connections, echo on each, move the client to a new port, echo again:
/// (connections per shard, connections that still echo after the move).
async fn run(b: BackendKind, steer: bool) -> (Vec<usize>, usize) {
    let cert = cert();
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
    let t = std::sync::Arc::new(t);
    let shards = sharded_server(b, &cert, &t, steer);
    let serving: Vec<_> = shards.iter().map(serve_echoes).collect();
    let clients: Vec<Endpoint> = (0..CLIENTS)
        .map(|_| client_endpoint(b, client_config_with(&cert, t.clone()), |c| c))
        .collect();
    let addr = shards[0].local_addr().unwrap();
    let conns = echoing_connections(&clients, addr, PER_CLIENT).await;
    let per_shard: Vec<usize> = shards
        .iter()
        .map(|s| s.stats().accepted_handshakes as usize)
        .collect();
    for client in &clients {
        client.rebind(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    }
    let after = futures::future::join_all(
        conns
            .iter()
            .map(|c| echoes(c, b"ping through the right shard", 3)),
    )
    .await;
    let alive = after.iter().filter(|ok| **ok).count();
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    for s in &shards {
        s.close(0u32.into(), b"done");
    }
    for h in serving {
        within(10, h).await.unwrap();
    }
    (per_shard, alive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_on_their_shard_when_the_client_moves() {
    for b in backends() {
        let (per_shard, alive) = run(b, true).await;
        eprintln!("{b}, steered: connections per shard {per_shard:?}; {alive} of {CONNS} echo after the client moved");
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "{b}: a shard got no connection: {per_shard:?}"
        );
        assert_eq!(per_shard.iter().sum::<usize>(), CONNS, "{b}");
        assert_eq!(alive, CONNS, "{b}: connections lost when the client moved");
    }
}

/// The control: the same without the program. The kernel hashes by 4-tuple, so each client's
/// connections all land on one shard; after the move each client's datagrams go to whichever
/// socket its new 4-tuple hashes to, and the connections go silent unless that is the same one
/// (all eight clients hashing back to their old socket has odds of 4^-8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_program_the_move_loses_connections() {
    let b = backends()[0];
    let (per_shard, alive) = run(b, false).await;
    eprintln!("{b}, not steered: connections per shard {per_shard:?}; {alive} of {CONNS} echo after the client moved");
    assert!(
        alive < CONNS,
        "{b}: every connection survived without steering: the test would prove nothing"
    );
}
