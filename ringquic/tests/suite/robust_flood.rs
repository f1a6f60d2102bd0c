//! Floods and garbage: while a transfer runs, another thread blasts the server from many source
//! ports with random datagrams and with QUIC-Initial-looking packets that fail decryption; the
//! transfer completes byte-exact, a new client connects afterwards, memory stays bounded. Then
//! floods of *valid* client Initials (captured from a real client, replayed from many ports, as
//! a spoofing attacker would) against the two admission controls: the `max_incoming` cap and
//! address validation (Retry). Every test runs on every backend.
use crate::common;
use common::hashed::{recv_hashed, send_hashed_while, MAX_HASHED};
use common::impair::Rng;
use common::process::{in_child, rss_kib, test_name};
use common::*;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ring::digest::{Context, SHA256};
use ringquic::{BackendKind, ConnectionError, Endpoint, TransportErrorCode};

const MIB: usize = 1 << 20;

/// What the flooder sends.
#[derive(Clone)]
enum Payload {
    /// Random bytes, random length 1..=1500.
    Garbage,
    /// Long-header packets that look like QUIC v1 (Initial, 0-RTT, Handshake), random
    /// connection IDs of 0..=20 bytes, padded to 1200 bytes: every one fails decryption.
    FakeInitials,
    /// These exact datagrams (valid client Initials), each once, in order.
    Replay(Arc<Vec<Vec<u8>>>),
}

/// A thread that blasts `target` from `ports` sockets bound on 127.0.0.1:0, round-robin, until
/// it has sent `max` datagrams, `max_time` has passed, or it is stopped. Without `pace` it sends
/// in bursts of 512 with a 0.5 ms breath between them (a blast, but not a busy loop that starves
/// the endpoints of a 2-core machine); with `pace` it sleeps that long after every datagram. It
/// samples this process's RSS as it goes.
struct Flooder {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flooder {
    fn start(
        target: SocketAddr,
        payloads: Vec<Payload>,
        ports: usize,
        max: u64,
        max_time: Duration,
        pace: Option<Duration>,
    ) -> Self {
        assert!(target.ip().is_loopback());
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(rss_kib()));
        let (s, st, peak) = (sent.clone(), stop.clone(), peak_rss.clone());
        let thread = std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..ports)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let mut rng = Rng::new(0xf100d);
            let mut buf = vec![0u8; 1500];
            let started = Instant::now();
            let mut n = 0u64;
            let mut replay_at = 0usize;
            while n < max && started.elapsed() < max_time && !st.load(Ordering::Relaxed) {
                let payload = &payloads[n as usize % payloads.len()];
                let len = match payload {
                    Payload::Garbage => {
                        let len = 1 + rng.below(1500);
                        rng.fill(&mut buf[..len]);
                        len
                    }
                    Payload::FakeInitials => fake_initial(&mut rng, &mut buf),
                    Payload::Replay(list) => {
                        if replay_at >= list.len() {
                            break;
                        }
                        let d = &list[replay_at];
                        replay_at += 1;
                        buf[..d.len()].copy_from_slice(d);
                        d.len()
                    }
                };
                let sock = &socks[n as usize % socks.len()];
                match sock.send_to(&buf[..len], target) {
                    Ok(_) => {
                        n += 1;
                        s.store(n, Ordering::Relaxed);
                    }
                    // The socket buffer is full: give the receiver a moment.
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
                if let Some(p) = pace {
                    std::thread::sleep(p);
                }
                if n % 512 == 0 {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    if pace.is_none() {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
            peak.fetch_max(rss_kib(), Ordering::Relaxed);
        });
        Self {
            sent,
            stop,
            peak_rss,
            thread: Some(thread),
        }
    }

    /// Replay `datagrams` to `target`, each once from a port of its own, in order, for 10 s at
    /// most, sleeping `pace` after each (see [`Flooder::start`]).
    fn replay(target: SocketAddr, datagrams: Vec<Vec<u8>>, pace: Option<Duration>) -> Self {
        let n = datagrams.len();
        let payloads = vec![Payload::Replay(Arc::new(datagrams))];
        Self::start(target, payloads, n, n as u64, Duration::from_secs(10), pace)
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Let it run to its end, join, and return (datagrams sent, peak RSS in KiB).
    fn wait(mut self) -> (u64, u64) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (self.sent(), self.peak_rss.load(Ordering::Relaxed))
    }

    /// Stop it now, join, and return (datagrams sent, peak RSS in KiB).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.wait()
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A QUIC v1 long-header packet with random connection IDs and a random (undecryptable)
/// payload, padded to 1200 bytes like a client's first datagram. Returns its length.
fn fake_initial(rng: &mut Rng, buf: &mut [u8]) -> usize {
    const LEN: usize = 1200;
    rng.fill(&mut buf[..LEN]);
    // Header form 1, fixed bit 1, type: mostly Initial (0), some 0-RTT (1) and Handshake (2).
    let ty = [0u8, 0, 0, 1, 2][rng.below(5)];
    buf[0] = 0xc0 | (ty << 4) | (buf[0] & 0x03);
    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
    let mut i = 5;
    for _ in 0..2 {
        let cid = rng.below(21);
        buf[i] = cid as u8;
        i += 1 + cid; // random CID bytes are already there
    }
    if ty == 0 {
        buf[i] = 0; // token length 0
        i += 1;
    }
    // Length (2-byte varint): the rest of the datagram (packet number + payload).
    let rest = LEN - i - 2;
    buf[i] = 0x40 | (rest >> 8) as u8;
    buf[i + 1] = rest as u8;
    LEN
}

/// `count` valid client Initials with distinct destination connection IDs: a real client
/// endpoint connects `count` times to a socket that only listens, and the first datagram of
/// each attempt is kept. Replayed from other ports they are what a spoofing attacker sends.
fn capture_initials(b: BackendKind, count: usize) -> Vec<Vec<u8>> {
    let c = cert();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let client = client_endpoint(b, client_config(&c), |e| e);
    let attempts: Vec<_> = (0..count)
        .map(|_| client.connect(sink.local_addr().unwrap(), "localhost").unwrap())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < count && Instant::now() < deadline {
        let Ok((n, _)) = sink.recv_from(&mut buf) else {
            continue;
        };
        // Long header, type Initial; DCID length at byte 5.
        if n < 1200 || buf[0] & 0xf0 != 0xc0 {
            continue;
        }
        let dcid = buf[6..6 + buf[5] as usize].to_vec();
        if seen.insert(dcid) {
            out.push(buf[..n].to_vec());
        }
    }
    drop(attempts);
    drop(client);
    assert_eq!(out.len(), count, "captured {} of {count} Initials", out.len());
    out
}

/// A fresh client endpoint connects to `addr` and echoes a small message.
async fn fresh_client_echo(b: BackendKind, addr: SocketAddr, c: &Cert) -> Result<(), ConnectionError> {
    let client = client_endpoint(b, client_config(c), |e| e);
    let conn = within(20, client.connect(addr, "localhost").unwrap()).await?;
    let back = within(20, request(&conn, b"still there?", 1024)).await;
    assert_eq!(back, b"still there?");
    conn.close(0u32.into(), b"bye");
    Ok(())
}

/// Serve every connection that reaches `accept`: echo each bidirectional stream, hash each
/// unidirectional one and report it on `done`. Returns how many incoming connections reached
/// `accept`, and how many of those failed their handshake.
fn serve(
    server: Endpoint,
    done: tokio::sync::mpsc::UnboundedSender<(usize, Vec<u8>)>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let mut accepted = 0;
        let failed = Arc::new(AtomicU64::new(0));
        while let Some(incoming) = server.accept().await {
            accepted += 1;
            let done = done.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let c2 = conn.clone();
                tokio::spawn(async move {
                    while let Ok(mut r) = c2.accept_uni().await {
                        let mut h = Context::new(&SHA256);
                        let mut n = 0;
                        while let Ok(Some(chunk)) = r.read_chunk(usize::MAX, true).await {
                            h.update(&chunk.bytes);
                            n += chunk.bytes.len();
                        }
                        let _ = done.send((n, h.finish().as_ref().to_vec()));
                    }
                });
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(d) = r.read_to_end(1 << 20).await {
                            let _ = s.write_all(&d).await;
                            let _ = s.finish();
                            let _ = s.stopped().await;
                        }
                    });
                }
            });
        }
        // Handshakes still running fail as the endpoint closes; give them a moment to count.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (accepted, failed.load(Ordering::Relaxed) as usize)
    })
}

/// A transfer under a flood of garbage and fake Initials from 64 source ports: it completes
/// byte-exact, the server counted the flood, a new client connects afterwards, and memory stays
/// bounded. Runs in a child process so the memory figures are this test's own.
#[test]
fn transfer_survives_a_garbage_and_fake_initial_flood() {
    if !in_child(
        "RINGQUIC_TEST_CHILD_FLOOD",
        &test_name(
            module_path!(),
            "transfer_survives_a_garbage_and_fake_initial_flood",
        ),
    ) {
        return;
    }
    // The transfer sends at least MIN_TOTAL and goes on until the whole flood has been sent.
    const MIN_TOTAL: usize = 16 * MIB;
    const FLOOD: u64 = 100_000;
    let rt = multi_thread_runtime();
    for b in backends() {
        rt.block_on(async {
            let c = cert();
            let server = server_endpoint(b, server_config(&c), |s| s);
            let addr = server.local_addr().unwrap();
            let client = client_endpoint(b, client_config(&c), |e| e);
            let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
            let served = serve(server.clone(), done_tx);
            let conn = connect_to(&client, addr).await;
            let rss_before = rss_kib();
            let flood = Flooder::start(
                addr,
                vec![Payload::Garbage, Payload::FakeInitials],
                64,
                FLOOD,
                Duration::from_secs(20),
                None,
            );
            let started = Instant::now();
            let (total, sent) = within(
                60,
                send_hashed_while(&conn, 11, MIN_TOTAL, || !flood.is_finished()),
            )
            .await;
            let (n, got) = within(60, done.recv()).await.unwrap();
            let flood_done_first = flood.is_finished();
            let (flood_sent, peak_rss) = flood.finish();
            let elapsed = started.elapsed();
            assert_eq!(n, total, "{b}: byte count");
            assert_eq!(got, sent, "{b}: SHA-256 differs");
            assert!(
                total < MAX_HASHED && flood_done_first,
                "{b}: the flood was not over when the transfer reached its 1 GiB cap"
            );
            assert!(
                flood_sent >= FLOOD / 2,
                "{b}: the flood sent only {flood_sent} datagrams in 20 s"
            );
            // Everything the server received beyond what our client sent came from the flood.
            let ss = server.io_stats();
            let from_client = client.io_stats().datagrams_sent;
            let flood_received = ss.datagrams_received.saturating_sub(from_client);
            // A new client connects and is served after the flood.
            within(30, fresh_client_echo(b, addr, &c)).await.unwrap();
            let growth_mib = peak_rss.saturating_sub(rss_before) / 1024;
            eprintln!(
                "{b}: {} MiB transfer under a flood of {flood_sent} datagrams (garbage + fake Initials, \
                 64 ports): {:.1} s, hash ok; server received {flood_received} flood datagrams; RSS {} \
                 MiB before, peak +{growth_mib} MiB; server stats {ss:?}",
                total / MIB,
                elapsed.as_secs_f64(),
                rss_before / 1024,
            );
            // Most of it normally (see docs/RELIABILITY.md); a quarter at least on a loaded machine
            // whose kernel drops what the endpoint cannot take in time.
            assert!(
                flood_received * 4 >= flood_sent,
                "{b}: server took in only {flood_received} of {flood_sent} flood datagrams"
            );
            // Garbage creates no connection: the only ones are ours. (Fake Initials that queue
            // for `accept` faster than the application takes them may be refused by the default
            // `max_incoming` cap: that is the cap doing its job, so `incoming_refused` is not
            // checked here.)
            assert!(ss.open_connections <= 2, "{b}: {ss:?}");
            // 100 000 datagrams are ~100 MB: queueing them anywhere would show here.
            assert!(growth_mib < 64, "{b}: RSS grew by {growth_mib} MiB under flood");
            conn.close(0u32.into(), b"done");
            server.close(0u32.into(), b"done");
            // Structurally valid fake Initials (DCID of 8 bytes or more) reach `accept` as
            // `Incoming`s: quinn-proto authenticates a new connection's first packet only when
            // it is accepted, so they fail there, cheaply, and never become connections.
            let (accepted, failed) = within(10, served).await.unwrap();
            eprintln!(
                "{b}: {accepted} incoming connections reached accept, {failed} failed their handshake \
                 (fake Initials); 2 were real"
            );
            assert!(
                accepted >= 2 && accepted - failed == 2,
                "{b}: {accepted} accepted, {failed} failed"
            );
        });
    }
}

/// `max_incoming(8)` against floods of valid Initials from 100 spoofed-looking ports each.
///
/// 1. Nobody accepts: 8 wait in the queue, the other 92 are refused and counted, no connection
///    state is created.
/// 2. The application drops the queued attempts (`ignore`); a real client then connects.
/// 3. A second wave while the real connection transfers (at least 4 MiB, on until the wave is
///    over): the queue fills to the cap again and the rest is refused; the established
///    connection is unaffected (byte-exact); a real client arriving while the queue is full of
///    spoofed attempts is refused too: the cap is indiscriminate (address validation, next test,
///    is what tells them apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_incoming_caps_a_handshake_flood() {
    const CAP: usize = 8;
    const WAVE: usize = 100;
    for b in backends() {
        let c = cert();
        let server = server_endpoint(b, server_config(&c), |s| s.max_incoming(CAP));
        let addr = server.local_addr().unwrap();
        let initials = capture_initials(b, 2 * WAVE);

        // Wave 1: nobody accepts.
        let flood = Flooder::replay(addr, initials[..WAVE].to_vec(), None);
        assert_eq!(flood.wait().0, WAVE as u64);
        let s1 = stats_when(&server, |s| s.datagrams_received >= WAVE as u64).await;
        assert!(s1.datagrams_received >= WAVE as u64 * 9 / 10, "{b}: {s1:?}");
        assert_eq!(
            s1.incoming_refused,
            s1.datagrams_received - CAP as u64,
            "{b}: every valid Initial beyond the cap is refused: {s1:?}"
        );
        assert_eq!(s1.open_connections, 0, "{b}: {s1:?}");

        // The application drops what is queued; a real client then gets in.
        for _ in 0..CAP {
            within(5, server.accept()).await.unwrap().ignore();
        }
        let client = client_endpoint(b, client_config(&c), |e| e);
        let (sconn, conn) = connected(&server, &client).await;
        let reader = tokio::spawn(async move { (recv_hashed(&sconn).await, sconn) });

        // Wave 2 while the real connection transfers; nobody accepts.
        let before = server.io_stats();
        let flood = Flooder::replay(addr, initials[WAVE..].to_vec(), Some(Duration::from_millis(2)));
        let (total, sent_hash) =
            within(60, send_hashed_while(&conn, 11, 4 * MIB, || !flood.is_finished())).await;
        let ((n, got), _sconn) = within(60, reader).await.unwrap();
        assert_eq!(flood.wait().0, WAVE as u64);
        assert_eq!(n, total, "{b}");
        assert_eq!(got, sent_hash, "{b}: SHA-256 differs");
        let s2 = stats_when(&server, |s| {
            s.incoming_refused - before.incoming_refused >= (WAVE - CAP) as u64
        })
        .await;
        let refused = s2.incoming_refused - before.incoming_refused;
        assert_eq!(refused, (WAVE - CAP) as u64, "{b}: {s2:?}");
        assert_eq!(s2.open_connections, 1, "{b}: only ours: {s2:?}");
        // The queue is full of spoofed attempts: a real newcomer is refused too.
        match within(20, fresh_client_echo(b, addr, &c)).await {
            Err(ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(close.error_code, TransportErrorCode::CONNECTION_REFUSED, "{b}")
            }
            other => panic!("{b}: expected a refusal while the cap is full, got {other:?}"),
        }
        eprintln!(
            "{b}: max_incoming({CAP}): wave 1: {} received, {} refused; wave 2 during a {} MiB \
             transfer (hash ok): {refused} refused, {} connection open",
            s1.datagrams_received,
            s1.incoming_refused,
            total / MIB,
            s2.open_connections
        );
        conn.close(0u32.into(), b"done");
    }
}

/// `max_incoming(n)` bounds incoming attempts waiting for `accept` *plus accepted ones still
/// handshaking* (its documentation). With an application that accepts everything, 10 spoofed
/// handshakes that never complete must leave 2 handshaking and 8 refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_incoming_counts_accepted_handshakes() {
    for b in backends() {
        let server = server_endpoint(b, server_config(&cert()), |s| s.max_incoming(2));
        let addr = server.local_addr().unwrap();
        let initials = capture_initials(b, 10);
        let srv = server.clone();
        let accept_loop = tokio::spawn(async move {
            let mut handshaking = Vec::new();
            while let Some(incoming) = srv.accept().await {
                handshaking.push(incoming.accept().unwrap());
            }
            handshaking.len()
        });
        let flood = Flooder::replay(addr, initials, Some(Duration::from_millis(20)));
        assert_eq!(flood.wait().0, 10);
        let s = stats_when(&server, |s| s.datagrams_received >= 10).await;
        server.close(0u32.into(), b"done");
        let accepted = within(10, accept_loop).await.unwrap();
        assert_eq!(s.datagrams_received, 10, "{b}: {s:?}");
        assert_eq!((accepted, s.incoming_refused), (2, 8), "{b}: {s:?}");
    }
}

/// `validate_addresses(true)` (with `max_incoming(4)`) against a flood of 300 valid Initials
/// from 300 ports mixed with garbage: every spoofed attempt gets a Retry and creates no state, so
/// the cap never fills; a real client connecting in the middle of the flood answers its Retry
/// and is the only connection that ever reaches `accept`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_addresses_keeps_a_spoofed_handshake_flood_out() {
    const SPOOFED: usize = 300;
    for b in backends() {
        let c = cert();
        let server = server_endpoint(b, server_config(&c), |s| {
            s.validate_addresses(true).max_incoming(4)
        });
        let addr = server.local_addr().unwrap();
        let initials = Arc::new(capture_initials(b, SPOOFED));
        let (done_tx, _done) = tokio::sync::mpsc::unbounded_channel();
        let served = serve(server.clone(), done_tx);
        let flood = Flooder::start(
            addr,
            vec![Payload::Replay(initials), Payload::Garbage],
            SPOOFED,
            2 * SPOOFED as u64,
            Duration::from_secs(10),
            Some(Duration::from_millis(2)),
        );
        // The real client arrives once the flood is under way (and has over a second to connect
        // before it is over).
        let end = Instant::now() + Duration::from_secs(10);
        while flood.sent() < SPOOFED as u64 / 3 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        within(30, fresh_client_echo(b, addr, &c)).await.unwrap();
        let during = flood.sent();
        let flood_went_on = !flood.is_finished();
        let (sent, _) = flood.wait();
        let s = stats_when(&server, |s| s.incoming_retried > SPOOFED as u64).await;
        eprintln!(
            "{b}: validate_addresses: {sent} flood datagrams ({SPOOFED} valid Initials), real client \
             connected after {during}: retried {}, refused {}, responses dropped {}",
            s.incoming_retried, s.incoming_refused, s.responses_dropped
        );
        assert!(
            flood_went_on && during < sent,
            "{b}: the flood was over before the real client connected"
        );
        // Every spoofed Initial and the real client's first one were answered with a Retry
        // (or, beyond the 64 queued responses, the Retry was dropped: still no state).
        assert!(s.incoming_retried >= SPOOFED as u64 * 9 / 10, "{b}: {s:?}");
        assert!(s.incoming_retried <= SPOOFED as u64 + 1, "{b}: {s:?}");
        assert_eq!(
            s.open_connections, 0,
            "{b}: spoofed attempts made connections: {s:?}"
        );
        assert_eq!(s.incoming_refused, 0, "{b}: the cap filled up: {s:?}");
        server.close(0u32.into(), b"done");
        let (accepted, _) = within(10, served).await.unwrap();
        assert_eq!(accepted, 1, "{b}: only the real client reaches accept");
    }
}
