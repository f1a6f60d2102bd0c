//! QUIC-LB: the connection IDs a server issues with `QuicLbCidGenerator` are decoded by an
//! independent implementation of draft-ietf-quic-load-balancers-21's plaintext load balancer
//! (written here from the draft, sharing no code with ringquic's generator), which gets the
//! configured server ID and shard back from every packet the client sends, long headers and
//! short alike, as a load balancer in front of the server would.
use crate::common;
use common::*;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use ringquic::{EndpointConfig, QuicLbCidGenerator, QuicLbConfig};

/// What a plaintext QUIC-LB load balancer is configured with for one config rotation
/// codepoint (draft §4.3): the server ID length and the nonce length, and the server IDs of
/// the servers behind it.
#[derive(Debug, Clone)]
struct LbConfig {
    config_id: u8,
    server_id_len: usize,
    nonce_len: usize,
    servers: Vec<Vec<u8>>,
}

/// What the load balancer makes of a destination CID.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Routable: the server ID, and the nonce field that follows it.
    Server { server_id: Vec<u8>, nonce: Vec<u8> },
    /// Not decodable with this configuration (draft §3.1).
    Unroutable,
}

/// The draft's load balancer actions for the plaintext algorithm (§4.6): the first three bits
/// select the configuration (0b111 is always unroutable), a CID too short for it is
/// unroutable, the server ID is the octets right after the first, and one that names no
/// active server is unroutable (§3.1): a client's random DCID can look routable otherwise.
fn lb_decode(lb: &LbConfig, dcid: &[u8]) -> Route {
    let Some(&first) = dcid.first() else {
        return Route::Unroutable;
    };
    let config = first >> 5;
    if config == 0b111 || config != lb.config_id {
        return Route::Unroutable;
    }
    let need = 1 + lb.server_id_len + lb.nonce_len;
    if dcid.len() < need {
        return Route::Unroutable;
    }
    let server_id = &dcid[1..1 + lb.server_id_len];
    if !lb.servers.iter().any(|s| s == server_id) {
        return Route::Unroutable;
    }
    Route::Server {
        server_id: server_id.to_vec(),
        nonce: dcid[1 + lb.server_id_len..need].to_vec(),
    }
}

/// The destination CID of a QUIC v1 packet as a load balancer reads it (RFC 8999): long
/// headers carry its length; short headers do not, so the load balancer uses the length its
/// configuration implies.
fn dcid_of(datagram: &[u8], short_len: usize) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 != 0 {
        let len = usize::from(*datagram.get(5)?);
        datagram.get(6..6 + len)
    } else {
        datagram.get(1..1 + short_len)
    }
}

/// The draft's first test vector (§A.1, "Unencrypted CIDs"): config 0, server ID c4605e,
/// nonce 4504cc4f, length self-encoded.
#[test]
fn the_decoder_reads_the_drafts_test_vector() {
    let lb = LbConfig {
        config_id: 0,
        server_id_len: 3,
        nonce_len: 4,
        servers: vec![vec![0xc4, 0x60, 0x5e]],
    };
    let cid = [0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f];
    assert_eq!(
        lb_decode(&lb, &cid),
        Route::Server {
            server_id: vec![0xc4, 0x60, 0x5e],
            nonce: vec![0x45, 0x04, 0xcc, 0x4f]
        }
    );
    assert_eq!(cid[0] & 0x1f, 7, "the length after the first octet");
    assert_eq!(lb_decode(&lb, &cid[..7]), Route::Unroutable, "too short");
    let mut unroutable = cid;
    unroutable[0] |= 0b111 << 5;
    assert_eq!(lb_decode(&lb, &unroutable), Route::Unroutable);
    let mut unknown = cid;
    unknown[1] ^= 1;
    assert_eq!(lb_decode(&lb, &unknown), Route::Unroutable, "no such server");
}

/// A relay that forwards client → server and server → client and keeps a copy of every
/// client → server datagram.
struct CapturingRelay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CapturingRelay {
    fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut client = None;
            let mut buf = [0u8; 65536];
            // Bounded: the test stops it, and it gives up after 60 s regardless.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !st.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if from == server {
                    if let Some(c) = client {
                        let _ = sock.send_to(&buf[..n], c);
                    }
                } else {
                    client = Some(from);
                    s.lock().unwrap().push(buf[..n].to_vec());
                    let _ = sock.send_to(&buf[..n], server);
                }
            }
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CapturingRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server whose endpoint issues QUIC-LB CIDs (server ID 5a 17, shard 3): every packet the
/// client sends after its first flight names the server's CID, and the load balancer decodes
/// the server ID and shard from each; the client's first Initials (its own random DCID) are
/// the unroutable ones the draft's fallback handles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_routes_every_packet_by_the_servers_cids() {
    let server_id = vec![0x5a, 0x17];
    let config = QuicLbConfig {
        config_id: 1,
        server_id: server_id.clone(),
        nonce_len: 6,
        encode_length: true,
    };
    let shard = 3u8;
    let lb = LbConfig {
        config_id: 1,
        server_id_len: 2,
        // To the load balancer, the shard byte is part of the nonce field.
        nonce_len: 1 + 6,
        // This server and two others.
        servers: vec![vec![0x01, 0x02], server_id.clone(), vec![0x5a, 0x18]],
    };
    let cid_len = 1 + lb.server_id_len + lb.nonce_len;
    for b in backends() {
        let generator = QuicLbCidGenerator::new(config.clone()).unwrap().for_shard(shard);
        let mut ep_config = EndpointConfig::default();
        ep_config.cid_generator(move || Box::new(generator.clone()));
        let (server, client) = pair_with(b, |s| s.endpoint_config(ep_config), |c| c);
        let relay = CapturingRelay::new(server.local_addr().unwrap());
        let (sconn, conn) = connected_via(&server, &client, relay.addr).await;
        // Some traffic after the handshake, so that short headers go by too.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, mut r) = sconn.accept_bi().await.unwrap();
            let got = r.read_to_end(1 << 20).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.finish().unwrap();
            sconn
        });
        send.write_all(&[9u8; 100_000]).await.unwrap();
        send.finish().unwrap();
        let back = within(10, recv.read_to_end(1 << 20)).await.unwrap();
        assert_eq!(back.len(), 100_000, "{b}");
        let sconn = within(10, echo).await.unwrap();
        let seen = std::mem::take(&mut *relay.seen.lock().unwrap());
        drop(relay);

        let (mut routed, mut unroutable, mut short) = (0usize, 0usize, 0usize);
        for d in &seen {
            let dcid = dcid_of(d, cid_len).expect("a QUIC packet");
            match lb_decode(&lb, dcid) {
                Route::Server {
                    server_id: sid,
                    nonce,
                } => {
                    assert_eq!(sid, server_id, "{b}: server ID of {dcid:02x?}");
                    assert_eq!(nonce[0], shard, "{b}: shard of {dcid:02x?}");
                    assert_eq!(
                        usize::from(dcid[0] & 0x1f),
                        cid_len - 1,
                        "{b}: self-encoded length"
                    );
                    routed += 1;
                    short += usize::from(d[0] & 0x80 == 0);
                }
                // Only the client's first flight, to the DCID it chose itself, before it knew
                // the server's CID.
                Route::Unroutable => {
                    assert!(
                        routed == 0,
                        "{b}: an unroutable packet after routable ones: {dcid:02x?}"
                    );
                    assert!(d[0] & 0x80 != 0, "{b}: a short header with an unroutable DCID");
                    unroutable += 1;
                }
            }
        }
        eprintln!("{b}: {routed} client packets routed by server ID and shard ({short} short headers), {unroutable} first-flight Initials to the client's own DCID");
        assert!(
            unroutable >= 1 && routed > 50 && short > 40,
            "{b}: {unroutable} / {routed} / {short}"
        );
        drop((conn, sconn));
    }
}
