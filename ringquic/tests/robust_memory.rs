//! Memory a hostile peer can make an endpoint hold, measured with a counting global allocator.
//!
//! The attack: every small packet the client sends (a 1-byte DATAGRAM frame, or a 1-byte
//! stream chunk) goes out as the short *last* segment of a GSO batch, behind
//! [`GARBAGE_SEGMENTS`] garbage segments of [`SEGMENT`] bytes. On loopback the kernel hands
//! that batch to the receiving socket as one GRO receive. quinn-proto drops the garbage
//! silently but keeps the tiny frame, and the frame is a slice of the buffer the whole batch
//! arrived in: unless the endpoint bounds what such slices keep alive, 56-64 KiB (the batch, or
//! the whole receive buffer) stay alive per byte the application has not read yet. The server
//! application here never reads, so everything the attack pinned is still pinned when we
//! measure.
//!
//! The client is stock quinn 0.11 on a wrapped [`quinn::AsyncUdpSocket`] ([`GroPadding`]), so
//! the handshake and the protocol are genuine and only the UDP framing is hostile.
//!
//! * `held_receive_memory_stays_within_budget`: a ringquic server, both scenarios (datagrams,
//!   streams) on each backend; the heap growth while the connection is still open must stay
//!   below [`BUDGET`], and it must come back once everything is closed.
//! * `stock_quinn_under_the_same_attack` (ignored): the same against a stock quinn server, for
//!   comparison; prints the figures, asserts no bound.
//!
//! Both tests take [`SERIAL`], so the counter only ever sees one attack at a time, even with
//! `--include-ignored`.
// The attack needs GSO on the sending socket and GRO on the receiving one: Linux only.
#![cfg(target_os = "linux")]
mod common;
use common::*;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use ringquic::{BackendKind, ConnectionStats, EndpointError};

/// Heap growth the attack may cause while the connections are open: the library's zero-copy
/// budget (`ringquic::DEFAULT_RECV_MEMORY_BUDGET`, 32 MiB: what lent buffers may hold at
/// most) plus what copied datagrams cost (each retained frame keeps its own ~30-byte packet,
/// well under 1 MiB here), plus slack for the test's own bookkeeping (quinn client state,
/// stats, tokio). Measured: 32.5-32.7 MiB on both backends (the
/// budget, all of it lent: half kernel buffers, half pooled copies on io_uring).
const BUDGET: usize = ringquic::DEFAULT_RECV_MEMORY_BUDGET + (8 << 20);

/// 1-byte units (datagrams, or stream bytes) the attacker sends per scenario. 4000 x 56-64 KiB
/// pinned is 210-250 MiB on unfixed code, far above `BUDGET`, and the attack takes one to a
/// few seconds on loopback.
const UNITS: usize = 4000;

/// Garbage segments in front of each small packet. 40 x 1400 + the packet fits one 64 KiB +
/// 256 receive buffer (ringquic's default), so the kernel delivers the batch in one receive.
const GARBAGE_SEGMENTS: usize = 40;

/// Segment size of the GSO batch: a typical full-size QUIC packet on a 1500-byte MTU.
const SEGMENT: usize = 1400;

/// Transmits shorter than this are padded: the 1-byte frames travel in ~30-byte packets (so do
/// the client's ACKs, which does no harm); MTU probes and other full-size packets pass as they
/// are.
const SMALL: usize = 200;

/// Garbage byte. 0xff starts a long header (0x80) with the fixed bit set (0x40), then a
/// version of 0xffffffff and a destination CID length of 255, more than QUIC's maximum of 20:
/// quinn-proto's `PartialDecode::new` fails with `InvalidHeader("malformed cid")` before it
/// looks at the version or the connection table, and `Endpoint::handle` returns `None` for
/// that: no version negotiation (that needs a parsable header with an unknown version), no
/// stateless reset (short headers only), no event for the connection. (A short header with the
/// fixed bit clear is not rejected by default: `grease_quic_bit` is on, so it would be parsed,
/// and an unknown CID passing the CID generator's check would be answered with a stateless
/// reset.)
const GARBAGE_BYTE: u8 = 0xff;

/// Streams for the stream scenario. quinn-proto copies a stream's chunks into one buffer
/// ("defragments") once their estimated over-allocation exceeds 32 KiB, estimated from the
/// packet's payload length (~30 bytes per 1-byte chunk), so about a thousand chunks on one
/// stream. 100 bytes on each of 40 streams stays far below that, as an attacker would; 40 is
/// also below the default limit of 100 concurrent unidirectional streams.
const STREAMS: usize = 40;

/// The server has stopped receiving once its counter stayed the same for this long.
const QUIET: Duration = Duration::from_millis(200);

/// Heap growth tolerated after everything is closed and dropped, relative to before the
/// endpoints existed (lazily initialised statics: rustls, tokio, tracing callsites).
const CLEANUP_SLACK: usize = 4 << 20;

/// One attack at a time in this process: the allocator counts every thread.
static SERIAL: Mutex<()> = Mutex::new(());

// ---- Counting allocator ----------------------------------------------------------------------

/// Bytes allocated and not yet freed, by anyone in the process.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest `LIVE` since the last [`reset_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping is two
// atomics (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Shrink first, so the peak does not count both sizes at once.
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---- The hostile socket ----------------------------------------------------------------------

/// A quinn socket that, once armed, sends every small short-header packet as the last segment
/// of a GSO batch behind `GARBAGE_SEGMENTS` garbage segments. Everything else (the handshake,
/// full-size packets, receiving) passes through unchanged.
#[derive(Debug)]
struct GroPadding {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    /// Off during the handshake, so it stays genuine and the baseline is taken before any
    /// padded batch.
    armed: AtomicBool,
    /// Padded batches the kernel accepted.
    padded: AtomicU64,
    /// The garbage, reused: the packet is appended after it for each send and cut off again.
    scratch: Mutex<Vec<u8>>,
}

impl GroPadding {
    fn new(inner: Arc<dyn quinn::AsyncUdpSocket>) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(false),
            padded: AtomicU64::new(0),
            scratch: Mutex::new(vec![GARBAGE_BYTE; GARBAGE_SEGMENTS * SEGMENT]),
        }
    }

    fn padded(&self) -> u64 {
        self.padded.load(Ordering::Relaxed)
    }
}

impl quinn::AsyncUdpSocket for GroPadding {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let one_packet = t.segment_size.is_none_or(|s| s >= t.contents.len());
        let short_header = t.contents.first().is_some_and(|b| b & 0x80 == 0);
        if !self.armed.load(Ordering::Relaxed) || !one_packet || !short_header || t.contents.len() >= SMALL {
            return self.inner.try_send(t);
        }
        let mut batch = self.scratch.lock().unwrap();
        batch.truncate(GARBAGE_SEGMENTS * SEGMENT);
        batch.extend_from_slice(t.contents);
        let sent = self.inner.try_send(&Transmit {
            destination: t.destination,
            ecn: t.ecn,
            contents: &batch,
            // The short packet is the batch's last, shorter segment (GSO allows that).
            segment_size: Some(SEGMENT),
            src_ip: t.src_ip,
        });
        if sent.is_ok() {
            self.padded.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// One packet per transmit: otherwise quinn may batch a unit's packet with the next one
    /// (its driver builds the next packet while the attacker queues the next unit), and such a
    /// batch would go out unpadded.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A stock quinn client endpoint on a [`GroPadding`] socket.
fn hostile_client(c: &Cert) -> (quinn::Endpoint, Arc<GroPadding>) {
    let std_socket = std::net::UdpSocket::bind(localhost()).expect("client socket");
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(GroPadding::new(
        quinn::Runtime::wrap_udp_socket(&*runtime, std_socket).expect("wrap socket"),
    ));
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        socket.clone(),
        runtime,
    )
    .expect("client endpoint");
    endpoint.set_default_client_config(client_config(c));
    (endpoint, socket)
}

// ---- The attack ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// 1-byte unreliable datagrams the server application never reads.
    Datagrams,
    /// 1-byte writes on `STREAMS` unidirectional streams the server application never accepts.
    Streams,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Datagrams => "datagrams",
            Self::Streams => "streams",
        })
    }
}

/// DATAGRAM or STREAM frames `conn` has put in packets so far.
fn frames_sent(conn: &quinn::Connection, scenario: Scenario) -> u64 {
    let frames = conn.stats().frame_tx;
    match scenario {
        Scenario::Datagrams => frames.datagram,
        Scenario::Streams => frames.stream,
    }
}

/// Wait (bounded: 100 ms, 2 000 polls) until quinn has put the unit just queued into a packet,
/// so each unit goes out in a packet of its own instead of being coalesced with the next ones.
/// Usually that takes a few hundred yields; quinn-proto's pacer sometimes holds a packet back
/// for a few milliseconds, hence the 1 ms sleeps after the first thousand polls.
async fn wait_sent(conn: &quinn::Connection, scenario: Scenario, before: u64) {
    let deadline = Instant::now() + Duration::from_millis(100);
    for n in 0..2_000 {
        if frames_sent(conn, scenario) > before || Instant::now() > deadline {
            return;
        }
        if n < 1_000 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Send `UNITS` 1-byte units, one per packet. Returns the streams of the stream scenario, still
/// open (not finished), for the caller to drop once it has measured.
async fn attack(conn: &quinn::Connection, scenario: Scenario) -> Vec<quinn::SendStream> {
    let mut streams = Vec::new();
    if let Scenario::Streams = scenario {
        for _ in 0..STREAMS {
            streams.push(within(10, conn.open_uni()).await.expect("open_uni"));
        }
    }
    for i in 0..UNITS {
        let before = frames_sent(conn, scenario);
        let unit = [i as u8];
        match scenario {
            Scenario::Datagrams => conn
                .send_datagram(Bytes::copy_from_slice(&unit))
                .expect("send_datagram"),
            Scenario::Streams => within(10, streams[i % STREAMS].write_all(&unit))
                .await
                .expect("write"),
        }
        wait_sent(conn, scenario, before).await;
    }
    streams
}

/// Wait (bounded by 10 s) until `counter` stayed the same for `QUIET`.
async fn quiesce(counter: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (counter(), Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counter();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= QUIET {
            return;
        }
    }
    println!("warning: the server was still receiving after 10 s");
}

/// Wait (bounded by 5 s) until the heap is back within `CLEANUP_SLACK` of `start`; the growth
/// left over.
async fn settle(start: usize) -> isize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while live() > start + CLEANUP_SLACK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live() as isize - start as isize
}

/// The server side under attack.
enum Server {
    Ringquic(ringquic::Endpoint),
    Quinn(quinn::Endpoint),
}

enum ServerConn {
    Ringquic(ringquic::Connection),
    Quinn(quinn::Connection),
}

impl ServerConn {
    fn stats(&self) -> ConnectionStats {
        match self {
            Self::Ringquic(c) => c.stats(),
            Self::Quinn(c) => c.stats(),
        }
    }
}

/// What one attack did.
struct Figures {
    target: String,
    scenario: Scenario,
    /// Heap growth since just before the attack, once the server stopped receiving, with the
    /// connections still open.
    held: isize,
    /// The highest heap during the attack, relative to the same baseline.
    peak: isize,
    /// Padded batches the client sent.
    padded: u64,
    /// DATAGRAM or STREAM frames the server connection received.
    frames: u64,
    /// UDP datagrams the server connection received (the garbage never reaches it).
    conn_datagrams: u64,
    /// Datagrams the server endpoint received, garbage included (ringquic only).
    endpoint_datagrams: Option<u64>,
    /// Receives handed over without a copy (ringquic only; GRO batches of 16 KiB or more on
    /// io_uring).
    zero_copy: Option<u64>,
    /// Heap growth left after closing and dropping everything, relative to before the
    /// endpoints existed.
    after_cleanup: isize,
    took: Duration,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "{} {}: held {:.1} MiB (peak {:.1} MiB) for {} units; {} padded batches sent, \
             {} frames and {} datagrams on the server connection, {} datagrams on the endpoint, \
             {} zero-copy receives; {:.1} MiB left after cleanup; {:.1} s",
            self.target,
            self.scenario,
            mib(self.held),
            mib(self.peak),
            UNITS,
            self.padded,
            self.frames,
            self.conn_datagrams,
            opt(self.endpoint_datagrams),
            opt(self.zero_copy),
            mib(self.after_cleanup),
            self.took.as_secs_f64(),
        )
    }
}

/// Start the server `make` returns, connect the hostile client, attack, measure, clean up.
async fn run(target: &str, scenario: Scenario, make: impl FnOnce(&Cert) -> Server) -> Figures {
    let t0 = Instant::now();
    let start = live();
    let c = cert();
    let server = make(&c);
    let (client, socket) = hostile_client(&c);
    let addr = match &server {
        Server::Ringquic(s) => s.local_addr(),
        Server::Quinn(s) => s.local_addr(),
    }
    .expect("server address");
    let connecting = client.connect(addr, "localhost").expect("connect");
    let server_conn = within(10, async {
        match &server {
            Server::Ringquic(s) => {
                ServerConn::Ringquic(s.accept().await.expect("incoming").await.expect("accept"))
            }
            Server::Quinn(s) => ServerConn::Quinn(s.accept().await.expect("incoming").await.expect("accept")),
        }
    })
    .await;
    let conn = within(10, connecting).await.expect("handshake");
    // Let the handshake's tail (HANDSHAKE_DONE, its ACKs, new connection IDs) settle, so the
    // baseline holds none of it.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let baseline = live();
    reset_peak();
    socket.armed.store(true, Ordering::Relaxed);
    let streams = within(30, attack(&conn, scenario)).await;
    // Until the server has processed everything (the ringquic endpoint counter includes the
    // garbage; stock quinn's only the connection's datagrams).
    match &server {
        Server::Ringquic(s) => quiesce(|| s.io_stats().datagrams_received).await,
        Server::Quinn(_) => quiesce(|| server_conn.stats().udp_rx.datagrams).await,
    }
    let held = live() as isize - baseline as isize;
    let peak = PEAK.load(Ordering::Relaxed) as isize - baseline as isize;
    socket.armed.store(false, Ordering::Relaxed);
    let padded = socket.padded();
    let stats = server_conn.stats();
    let frames = match scenario {
        Scenario::Datagrams => stats.frame_rx.datagram,
        Scenario::Streams => stats.frame_rx.stream,
    };
    let (endpoint_datagrams, zero_copy) = match &server {
        Server::Ringquic(s) => {
            let st = s.io_stats();
            (Some(st.datagrams_received), Some(st.recv_zero_copy))
        }
        Server::Quinn(_) => (None, None),
    };

    conn.close(0u32.into(), b"done");
    within(10, client.wait_idle()).await;
    drop((streams, conn, client, socket, server_conn));
    // Dropping the last handle of the ringquic endpoint joins its I/O thread.
    match server {
        Server::Ringquic(s) => within(10, s.wait_idle()).await,
        Server::Quinn(s) => within(10, s.wait_idle()).await,
    }
    let after_cleanup = settle(start).await;
    Figures {
        target: target.to_string(),
        scenario,
        held,
        peak,
        padded,
        frames,
        conn_datagrams: stats.udp_rx.datagrams,
        endpoint_datagrams,
        zero_copy,
        after_cleanup,
        took: t0.elapsed(),
    }
}

fn ringquic_server(backend: BackendKind) -> Result<impl Fn(&Cert) -> Server, EndpointError> {
    // Probe once whether the backend can run here.
    ringquic::Endpoint::builder().backend(backend).bind(localhost())?;
    Ok(move |c: &Cert| Server::Ringquic(server_endpoint(backend, server_config(c), |s| s)))
}

#[test]
fn held_receive_memory_stays_within_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two workers: the quinn client's driver and the test itself (the ringquic server runs on
    // its own I/O thread).
    let rt = multi_thread_runtime();
    let mut failures = Vec::new();
    for backend in backends() {
        let make = match ringquic_server(backend) {
            Ok(make) => make,
            Err(e @ EndpointError::BackendUnavailable { .. }) => {
                println!("SKIPPED: {backend}: {e}");
                continue;
            }
            Err(e) => panic!("{backend}: {e}"),
        };
        for scenario in [Scenario::Datagrams, Scenario::Streams] {
            let f = rt.block_on(run(&format!("ringquic {backend}"), scenario, &make));
            println!("{f}");
            // The attack must have landed, or a small growth proves nothing: the frames reached
            // the connection, and the garbage segments in front of them reached the endpoint.
            if f.frames < UNITS as u64 / 2 {
                failures.push(format!(
                    "{backend} {scenario}: the attack did not land: {} of {UNITS} frames received",
                    f.frames
                ));
            }
            let garbage = f.endpoint_datagrams.unwrap_or(0).saturating_sub(f.conn_datagrams);
            if garbage < (GARBAGE_SEGMENTS * UNITS / 2) as u64 {
                failures.push(format!(
                    "{backend} {scenario}: only {garbage} garbage segments arrived for {} batches",
                    f.padded
                ));
            }
            if f.held >= BUDGET as isize {
                failures.push(format!(
                    "{backend} {scenario}: {:.1} MiB held for {UNITS} unread bytes, budget {:.0} MiB",
                    mib(f.held),
                    mib(BUDGET as isize)
                ));
            }
            if f.after_cleanup > CLEANUP_SLACK as isize {
                failures.push(format!(
                    "{backend} {scenario}: {:.1} MiB still allocated after cleanup",
                    mib(f.after_cleanup)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "for comparison only: stock quinn holds the memory too; run with --ignored --nocapture"]
fn stock_quinn_under_the_same_attack() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two workers: the quinn client's driver and the test itself (the ringquic server runs on
    // its own I/O thread).
    let rt = multi_thread_runtime();
    for scenario in [Scenario::Datagrams, Scenario::Streams] {
        let f = rt.block_on(async {
            run("stock quinn", scenario, |c| {
                Server::Quinn(quinn::Endpoint::server(server_config(c), localhost()).expect("quinn server"))
            })
            .await
        });
        println!("{f}");
    }
}
