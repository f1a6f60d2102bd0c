//! Random sequences of public-API operations against a live peer on 127.0.0.1.
//!
//! One server and one client endpoint per backend (io_uring and poll, where each can run) are
//! made once per process; every input opens a fresh connection, runs up to 48 operations on it
//! (open bi/uni, write, finish, reset, stop, read, read to end, wait for `stopped`, poll a read
//! once and drop it, send a datagram, close, drop a stream or half of one, drop the connection
//! handle), drops everything, and waits for the server to see the connection close. The peer
//! echoes every bidirectional stream (and mirrors a reset with the same code), drains
//! unidirectional streams and datagrams.
//!
//! Findings: a panic anywhere (library, I/O thread, or an invariant below), and a hang: every
//! input must finish within 2 s.
//!
//! Invariants checked on the way (the model only awaits what must complete; anything else is
//! polled once and dropped, which also exercises cancellation):
//! * echoed bytes are the bytes written, at the same offsets, ordered or unordered;
//! * the end of an echoed stream comes only after every written byte came back;
//! * a `Reset` read error carries the code we reset our side with (the peer mirrors it);
//! * `ConnectionLost` only after we closed, and then as `LocallyClosed`;
//! * opening a stream, the first `finish`/`reset`/`stop`, writing to an open stream, and a
//!   datagram no larger than `max_datagram_size` succeed on a connection we did not close; writing
//!   after our own `finish`/`reset` fails;
//! * the server sees the close with our code and reason (code 0 and no reason for an implicit
//!   close when the last handle is dropped) within 1 s; only the known quinn-proto bug described
//!   at that check (a stateless reset, or silence once the client has dropped the connection) is
//!   tolerated, unless `API_OPS_STRICT=1`;
//! * the endpoints do not accumulate connections across inputs.
#![no_main]

use std::{
    future::Future,
    net::SocketAddr,
    pin::pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, Waker},
    time::Duration,
};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringquic::{
    rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    ApplicationClose, BackendKind, ClientConfig, Connection, ConnectionError, Endpoint, ReadError,
    RecvStream, SendDatagramError, SendStream, ServerConfig, TransportConfig, VarInt, WriteError,
};

/// Longest an input may take before it counts as a hang.
const INPUT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_OPS: usize = 48;
/// How long the server may take to see the close after the last handle is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Bytes written per input, kept far below the stream and connection flow-control windows so a
/// write never waits on a reader that the model does not drive.
const MAX_WRITTEN: usize = 64 * 1024;
/// Connections an endpoint may hold (open or draining) between inputs before it counts as a leak.
const MAX_LINGERING: usize = 1000;

#[derive(Debug, Arbitrary)]
enum Op {
    OpenBi,
    OpenUni,
    Write { s: u8, len: u16, chunk: bool },
    Finish { s: u8 },
    Reset { s: u8, code: u32 },
    Stop { s: u8, code: u32 },
    Read { s: u8, max: u16, ordered: bool },
    ReadToEnd { s: u8 },
    PollRead { s: u8 },
    Stopped { s: u8 },
    SendDatagram { len: u16 },
    Close { code: u32, reason: u8 },
    DropSend { s: u8 },
    DropRecv { s: u8 },
    DropStream { s: u8 },
    DropConnection,
    Yield,
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Which backend's endpoint pair runs this input (when both are available).
    poll_backend: bool,
    ops: Vec<Op>,
}

struct Pair {
    kind: BackendKind,
    server: Endpoint,
    client: Endpoint,
    addr: SocketAddr,
}

struct Env {
    rt: tokio::runtime::Runtime,
    pairs: Vec<Pair>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let der = cert.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
        let transport = || {
            let mut t = TransportConfig::default();
            t.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
            Arc::new(t)
        };
        let mut server_config = ServerConfig::with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(key))
            .expect("server config");
        server_config.transport_config(transport());
        let mut roots = ringquic::rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let mut client_config = ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
        client_config.transport_config(transport());

        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let kinds: Vec<BackendKind> = match std::env::var("RINGQUIC_BACKEND").ok().as_deref() {
            Some("uring") => vec![BackendKind::IoUring],
            Some("poll") => vec![BackendKind::Poll],
            _ => vec![BackendKind::IoUring, BackendKind::Poll],
        };
        let mut pairs = Vec::new();
        for kind in kinds {
            let server = Endpoint::builder()
                .backend(kind)
                .server_config(server_config.clone())
                .bind(localhost);
            let server = match server {
                Ok(s) => s,
                Err(e) if kind == BackendKind::IoUring => {
                    eprintln!("api_ops: io_uring backend unavailable ({e}); fuzzing the poll backend only");
                    continue;
                }
                Err(e) => panic!("{kind:?} server endpoint: {e}"),
            };
            let client = Endpoint::builder()
                .backend(kind)
                .default_client_config(client_config.clone())
                .bind(localhost)
                .expect("client endpoint");
            let addr = server.local_addr().expect("server address");
            pairs.push(Pair {
                kind,
                server,
                client,
                addr,
            });
        }
        assert!(!pairs.is_empty(), "no backend can run");
        Env { rt, pairs }
    })
}

/// The byte at `offset` of the data written on stream number `stream`.
fn pattern(stream: usize, offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31) ^ (offset >> 8) as u8 ^ (stream as u8).wrapping_mul(101)
}

fn check_pattern(stream: usize, offset: usize, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        assert_eq!(
            b,
            pattern(stream, offset + i),
            "stream {stream}: echoed byte {} differs from the byte written there",
            offset + i
        );
    }
}

/// Poll `f` once; the result if it was ready, `None` if it was pending (the future is dropped).
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// One stream as the model knows it.
struct Stream {
    n: usize,
    send: Option<SendStream>,
    recv: Option<RecvStream>,
    /// Bytes the send side took.
    written: usize,
    /// False when a failed write may have taken an unknown number of bytes.
    written_exact: bool,
    finished: bool,
    reset: Option<VarInt>,
    /// Bytes read back (echoed), ordered and unordered together.
    echoed: usize,
    unordered: bool,
    /// The receive side ended (end of stream, error, or stopped): reads return at once.
    recv_over: bool,
}

struct Model {
    conn: Option<Connection>,
    /// The first explicit close: what the server must see.
    closed: Option<(VarInt, Vec<u8>)>,
    streams: Vec<Stream>,
    total_written: usize,
}

impl Model {
    fn pick(&mut self, s: u8) -> Option<&mut Stream> {
        if self.streams.is_empty() {
            return None;
        }
        let i = s as usize % self.streams.len();
        Some(&mut self.streams[i])
    }

    async fn op(&mut self, op: &Op) {
        let closed = self.closed.is_some();
        match *op {
            Op::OpenBi | Op::OpenUni => {
                let Some(conn) = &self.conn else { return };
                let bi = matches!(op, Op::OpenBi);
                let opened = if bi {
                    conn.open_bi().await.map(|(s, r)| (s, Some(r)))
                } else {
                    conn.open_uni().await.map(|s| (s, None))
                };
                match opened {
                    Ok((send, recv)) => self.streams.push(Stream {
                        n: self.streams.len(),
                        send: Some(send),
                        recv,
                        written: 0,
                        written_exact: true,
                        finished: false,
                        reset: None,
                        echoed: 0,
                        unordered: false,
                        recv_over: !bi,
                    }),
                    Err(e) => check_lost(closed, "open", &e),
                }
            }
            Op::Write { s, len, chunk } => {
                let len = usize::from(len) % 4097;
                if self.total_written + len > MAX_WRITTEN {
                    return;
                }
                let Some(st) = self.pick(s) else { return };
                let Some(send) = &mut st.send else { return };
                let data: Vec<u8> = (0..len).map(|i| pattern(st.n, st.written + i)).collect();
                let res = if chunk {
                    let r = send.write_chunk(Bytes::from(data)).await;
                    match r {
                        Ok(()) => st.written += len,
                        Err(_) => st.written_exact = false,
                    }
                    r
                } else {
                    let mut off = 0;
                    loop {
                        match send.write(&data[off..]).await {
                            Ok(n) => {
                                st.written += n;
                                off += n;
                                if off == len {
                                    break Ok(());
                                }
                                assert!(n > 0, "write of {} bytes took none", len - off);
                            }
                            Err(e) => break Err(e),
                        }
                    }
                };
                let done = st.finished || st.reset.is_some();
                match res {
                    Ok(()) => {
                        assert!(!done || len == 0, "a write after our own finish/reset succeeded");
                        self.total_written += len;
                    }
                    Err(WriteError::ConnectionLost(e)) => check_lost(closed, "write", &e),
                    Err(e) => assert!(done, "write to an open stream failed: {e}"),
                }
            }
            Op::Finish { s } => {
                let Some(st) = self.pick(s) else { return };
                let Some(send) = &mut st.send else { return };
                let first = !st.finished && st.reset.is_none();
                let r = send.finish();
                if first && !closed {
                    assert!(r.is_ok(), "first finish failed: {r:?}");
                }
                st.finished |= r.is_ok();
            }
            Op::Reset { s, code } => {
                let Some(st) = self.pick(s) else { return };
                let Some(send) = &mut st.send else { return };
                let first = !st.finished && st.reset.is_none();
                let code = VarInt::from_u32(code);
                let r = send.reset(code);
                if first && !closed {
                    assert!(r.is_ok(), "first reset failed: {r:?}");
                }
                if r.is_ok() && st.reset.is_none() {
                    st.reset = Some(code);
                }
            }
            Op::Stop { s, code } => {
                let Some(st) = self.pick(s) else { return };
                let Some(recv) = &mut st.recv else { return };
                let r = recv.stop(VarInt::from_u32(code));
                if !st.recv_over && !closed {
                    assert!(r.is_ok(), "stop of a stream not read to its end failed: {r:?}");
                }
                st.recv_over = true;
            }
            Op::Read { s, max, ordered } => {
                let Some(st) = self.pick(s) else { return };
                let max = usize::from(max) % 8192 + 1;
                if must_complete(st, closed) {
                    read(st, max, ordered, closed).await;
                } else if let Some(recv) = &mut st.recv {
                    // Nothing is due: a read may or may not be ready; poll it once and drop it.
                    // Even a pending unordered read puts the stream in unordered mode.
                    st.unordered |= !ordered;
                    let r = poll_once(recv.read_chunk(max, ordered));
                    if let Some(r) = r {
                        settle(st, r, ordered, closed);
                    }
                }
            }
            Op::ReadToEnd { s } => {
                let Some(st) = self.pick(s) else { return };
                // Only when the end is due: our side finished or was reset, or the receive side
                // (or the connection) is already over.
                let end_due = st.finished || st.reset.is_some() || st.recv_over || closed;
                if st.recv.is_none() || !end_due {
                    return;
                }
                while !st.recv_over {
                    let ordered = !st.unordered;
                    read(st, usize::MAX, ordered, closed).await;
                }
            }
            Op::PollRead { s } => {
                let Some(st) = self.pick(s) else { return };
                let Some(recv) = &mut st.recv else { return };
                let mut buf = [0u8; 1500];
                if let Some(r) = poll_once(recv.read(&mut buf)) {
                    let r = r.map(|o| o.map(|n| (st.echoed as u64, Bytes::copy_from_slice(&buf[..n]))));
                    settle_read(st, r, true, closed);
                }
            }
            Op::Stopped { s } => {
                let Some(st) = self.pick(s) else { return };
                // Due after our finish (the peer acknowledges everything), our reset (the stream
                // is freed when the RESET_STREAM is acknowledged) or our close.
                let due = st.finished || st.reset.is_some() || closed;
                let Some(send) = &mut st.send else { return };
                let r = if due {
                    Some(send.stopped().await)
                } else {
                    poll_once(send.stopped())
                };
                if let Some(Err(ringquic::StoppedError::ConnectionLost(e))) = r {
                    check_lost(closed, "stopped", &e);
                }
            }
            Op::SendDatagram { len } => {
                let Some(conn) = &self.conn else { return };
                let len = usize::from(len) % 1500;
                let max = conn.max_datagram_size();
                match conn.send_datagram(Bytes::from(vec![0xd9; len])) {
                    Ok(()) => assert!(!closed, "datagram accepted after close"),
                    Err(SendDatagramError::ConnectionLost(e)) => check_lost(closed, "send_datagram", &e),
                    Err(e) => assert!(
                        closed || max.is_none_or(|m| len > m),
                        "a {len}-byte datagram failed ({e}) with max_datagram_size {max:?}"
                    ),
                }
            }
            Op::Close { code, reason } => {
                let Some(conn) = &self.conn else { return };
                let code = VarInt::from_u32(code);
                let reason = vec![b'r'; usize::from(reason % 32)];
                conn.close(code, &reason);
                self.closed.get_or_insert((code, reason));
            }
            Op::DropSend { s } | Op::DropStream { s } => {
                let Some(st) = self.pick(s) else { return };
                if st.send.take().is_some() && st.reset.is_none() {
                    st.finished = true; // dropping finishes, as in quinn
                }
                if matches!(op, Op::DropStream { .. }) {
                    st.recv = None;
                    st.recv_over = true;
                }
            }
            Op::DropRecv { s } => {
                let Some(st) = self.pick(s) else { return };
                st.recv = None;
                st.recv_over = true;
            }
            Op::DropConnection => self.conn = None,
            Op::Yield => tokio::task::yield_now().await,
        }
    }
}

/// `ConnectionLost` is only for a connection we closed, and then it says so.
fn check_lost(closed: bool, what: &str, e: &ConnectionError) {
    assert!(closed, "{what}: connection lost ({e}) though we never closed it");
    assert_eq!(*e, ConnectionError::LocallyClosed, "{what} after our close");
}

/// Whether a read on this stream must complete: there is echo data in flight, or the stream's
/// end or reset is on its way, or reads return at once.
fn must_complete(st: &Stream, closed: bool) -> bool {
    st.recv.is_some()
        && (st.recv_over || closed || st.echoed < st.written || st.finished || st.reset.is_some())
}

async fn read(st: &mut Stream, max: usize, ordered: bool, closed: bool) {
    let Some(recv) = &mut st.recv else { return };
    st.unordered |= !ordered;
    let r = recv.read_chunk(max, ordered).await;
    settle(st, r, ordered, closed);
}

fn settle(st: &mut Stream, r: Result<Option<ringquic::Chunk>, ReadError>, ordered: bool, closed: bool) {
    settle_read(st, r.map(|c| c.map(|c| (c.offset, c.bytes))), ordered, closed)
}

fn settle_read(st: &mut Stream, r: Result<Option<(u64, Bytes)>, ReadError>, ordered: bool, closed: bool) {
    let over = st.recv_over;
    match r {
        Ok(Some((offset, data))) => {
            let offset = offset as usize;
            assert!(!over, "stream {}: data after the receive side ended", st.n);
            if ordered && !st.unordered {
                assert_eq!(offset, st.echoed, "stream {}: ordered read out of order", st.n);
            }
            check_pattern(st.n, offset, &data);
            assert!(
                offset + data.len() <= st.written,
                "stream {}: echoed up to {} but only {} written",
                st.n,
                offset + data.len(),
                st.written
            );
            st.echoed += data.len();
        }
        Ok(None) => {
            if !over && !st.unordered && st.written_exact {
                assert_eq!(st.echoed, st.written, "stream {}: echo ended early", st.n);
            }
            st.recv_over = true;
        }
        Err(ReadError::Reset(code)) => {
            assert_eq!(
                Some(code),
                st.reset,
                "stream {}: reset by the peer with a code we never sent",
                st.n
            );
            st.recv_over = true;
        }
        Err(ReadError::ConnectionLost(e)) => {
            assert!(
                closed,
                "stream {}: connection lost ({e}) though we never closed it",
                st.n
            );
            assert_eq!(e, ConnectionError::LocallyClosed);
            st.recv_over = true;
        }
        Err(ReadError::IllegalOrderedRead) => {
            // Refused, and the stream stays readable (unordered) afterwards.
            assert!(
                ordered && st.unordered,
                "IllegalOrderedRead without an unordered read before"
            );
        }
        Err(e) => {
            assert!(over, "stream {}: read failed ({e}) before its end", st.n);
        }
    }
}

/// The peer: echo bidirectional streams (mirroring resets), drain unidirectional ones and
/// datagrams, until the connection closes.
async fn peer(conn: Connection) {
    let uni = conn.clone();
    tokio::spawn(async move {
        while let Ok(mut recv) = uni.accept_uni().await {
            tokio::spawn(async move { while let Ok(Some(_)) = recv.read_chunk(usize::MAX, true).await {} });
        }
    });
    let dgram = conn.clone();
    tokio::spawn(async move { while dgram.read_datagram().await.is_ok() {} });
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let mut echoing = true;
            loop {
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => {
                        if echoing && send.write_all(&chunk.bytes).await.is_err() {
                            echoing = false; // stopped by the client: keep draining
                        }
                    }
                    Ok(None) => {
                        let _ = send.finish();
                        break;
                    }
                    Err(ReadError::Reset(code)) => {
                        let _ = send.reset(code);
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
    }
}

async fn run(pair: &Pair, ops: &[Op]) {
    let connecting = pair.client.connect(pair.addr, "localhost").expect("connect");
    let (client, server) = tokio::join!(connecting, async {
        pair.server.accept().await.expect("server endpoint open").await
    });
    let (client, server) = (
        client.expect("client handshake"),
        server.expect("server handshake"),
    );
    tokio::spawn(peer(server.clone()));

    let mut m = Model {
        conn: Some(client),
        closed: None,
        streams: Vec::new(),
        total_written: 0,
    };
    for (i, op) in ops.iter().enumerate() {
        if debug() {
            eprintln!("  op {i}: {op:?}");
        }
        m.op(op).await;
    }
    if debug() {
        eprintln!("  ops done; dropping everything");
    }
    let (code, reason) = m.closed.take().unwrap_or((VarInt::from_u32(0), Vec::new()));
    drop(m); // the last handle goes: an implicit close with code 0 unless we closed

    // The close reaches the server within a round trip. The wait is bounded separately so the
    // known quinn-proto bug below can be told apart from a hang.
    let seen = tokio::time::timeout(CLOSE_WAIT, server.closed()).await;
    match seen {
        Ok(ConnectionError::ApplicationClosed(ApplicationClose {
            error_code,
            reason: r,
        })) => {
            assert_eq!(
                (error_code, &r[..]),
                (code, &reason[..]),
                "the server saw another close"
            )
        }
        // Known quinn-proto 0.11.19 bug (quinn-rs/quinn#2785, fixed upstream by #2787, not yet
        // released): a close while the congestion window is full never sends CONNECTION_CLOSE,
        // so the client drains silently; the server then either gets a stateless reset for its
        // next packet, or, with nothing in flight, hears nothing until its idle timeout (the
        // client endpoint no longer has the connection). Tolerated unless API_OPS_STRICT is
        // set; see fuzz/crashes/README.md.
        Ok(ConnectionError::Reset) if !strict() => {}
        Err(_) if !strict() && pair.client.open_connections() == 0 => server.close(VarInt::from_u32(0), b""),
        Ok(e) => panic!(
            "the server saw the connection end with {e:?} instead of our close ({code}); {:?} endpoints' \
             counters: client {:?}, server {:?}",
            pair.kind,
            pair.client.stats(),
            pair.server.stats()
        ),
        Err(_) => panic!(
            "the server did not see our close ({code}) within {CLOSE_WAIT:?}; {:?} endpoints' counters: \
             client {:?}, server {:?}",
            pair.kind,
            pair.client.stats(),
            pair.server.stats()
        ),
    }
}

/// `API_OPS_STRICT=1`: also fail on the known quinn-proto close bug the target otherwise works
/// around (see the check at the end of `run`).
fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("API_OPS_STRICT").is_some())
}

/// `API_OPS_DEBUG=1`: print each input's operations (to read a crash input).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("API_OPS_DEBUG").is_some())
}

fuzz_target!(|input: Input| {
    let env = env();
    let pair = &env.pairs[usize::from(input.poll_backend) % env.pairs.len()];
    let ops = &input.ops[..input.ops.len().min(MAX_OPS)];
    if debug() {
        eprintln!("api_ops on {:?}: {ops:?}", pair.kind);
    }
    for ep in [&pair.server, &pair.client] {
        assert!(
            ep.open_connections() <= MAX_LINGERING,
            "{:?} endpoint holds {} connections: closed connections are not released",
            pair.kind,
            ep.open_connections()
        );
    }
    env.rt.block_on(async {
        if tokio::time::timeout(INPUT_TIMEOUT, run(pair, ops)).await.is_err() {
            panic!(
                "hang: input not done within {INPUT_TIMEOUT:?} on {:?}: {ops:?}; counters: client {:?}, \
                 server {:?}",
                pair.kind,
                pair.client.stats(),
                pair.server.stats()
            );
        }
    });
});
