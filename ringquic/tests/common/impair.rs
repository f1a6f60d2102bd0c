//! An impairing UDP relay for the robustness tests: sits on 127.0.0.1 between ONE client and a
//! server and, per direction, drops, reorders, duplicates, delays and corrupts datagrams at
//! configurable, seeded (deterministic) rates, and can blackhole the path.
//!
//! * **drop**: the datagram is not forwarded.
//! * **reorder**: the datagram is held back and released after the next `reorder_gap` datagrams
//!   of the same direction (or after [`MAX_HOLD`] if the direction goes quiet).
//! * **duplicate**: the datagram is forwarded twice.
//! * **corrupt**: 1–4 random bits are flipped in a copy, which is forwarded instead of the
//!   original (to QUIC a corrupted packet must look like a lost one).
//! * **delay**: every datagram waits `delay` plus a uniform `0..jitter` in a time-ordered queue
//!   (jitter reorders too).
//! * **NAT rebinding** ([`ImpairedRelay::rebind_after`]): after so many client → server bytes,
//!   client → server datagrams leave from a fresh port (the server sees the client's address
//!   change, the client does not), as behind a NAT whose mapping changed; what the server
//!   still sends to an old port is lost. The fresh port's socket has a thread of its own that
//!   hands the server's datagrams to the relay's socket, where they are impaired like the rest.
//!
//! One thread, one socket. The socket has a read timeout so the loop sees the stop flag; the
//! thread is stopped and joined on drop. It only ever sends to the server address it was given
//! and to the first loopback address that sent to it (the client); anything else is ignored.
#![allow(dead_code)]

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Longest a reordered datagram is held when no later datagram comes to release it.
pub const MAX_HOLD: Duration = Duration::from_millis(25);
/// Longest the relay blocks in `recv_from` before looking at its stop flag and queues.
const POLL: Duration = Duration::from_millis(10);

/// splitmix64: tiny, seeded, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// What the relay does to one direction. Rates are probabilities per datagram, in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impair {
    pub drop: f64,
    pub reorder: f64,
    /// A reordered datagram is released after this many later datagrams (at least 1).
    pub reorder_gap: usize,
    pub duplicate: f64,
    pub corrupt: f64,
    pub delay: Duration,
    pub jitter: Duration,
}

impl Impair {
    /// Forward everything untouched.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loss, reordering and duplication at the given rates (reorder gap 3), no delay.
    pub fn lossy(drop: f64, reorder: f64, duplicate: f64) -> Self {
        Self {
            drop,
            reorder,
            reorder_gap: 3,
            duplicate,
            ..Self::default()
        }
    }
}

/// Counters of one direction. `forwarded` counts datagrams actually sent on (duplicates and
/// corrupted copies included); the others count decisions. `forwarded` is counted before the
/// `send_to` (and taken back if it fails), so a test that saw the peer react to a datagram
/// also sees it counted.
#[derive(Debug, Default)]
pub struct DirCounters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub corrupted: AtomicU64,
    pub delayed: AtomicU64,
    pub blackholed: AtomicU64,
    /// `send_to` failures (the datagram is lost, like a drop).
    pub send_failed: AtomicU64,
}

/// A snapshot of [`DirCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirStats {
    pub received: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub delayed: u64,
    pub blackholed: u64,
    pub send_failed: u64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirStats {
            received: l(&self.received),
            forwarded: l(&self.forwarded),
            dropped: l(&self.dropped),
            duplicated: l(&self.duplicated),
            reordered: l(&self.reordered),
            corrupted: l(&self.corrupted),
            delayed: l(&self.delayed),
            blackholed: l(&self.blackholed),
            send_failed: l(&self.send_failed),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Both directions' counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Client → server.
    pub to_server: DirStats,
    /// Server → client.
    pub to_client: DirStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

struct Shared {
    config: Mutex<[Impair; 2]>,
    blackhole: AtomicBool,
    stop: AtomicBool,
    counters: [DirCounters; 2],
    /// Client → server bytes so far.
    to_server_bytes: AtomicU64,
    /// At this many client → server bytes, move to a fresh server-facing port (`u64::MAX`:
    /// never).
    rebind_at: AtomicU64,
    /// Then again every this many bytes (0: once).
    rebind_every: AtomicU64,
    rebinds: AtomicU64,
    /// Datagrams the server sent to a port the relay had moved away from (lost).
    stale: AtomicU64,
}

/// The impairing relay. Point the client at [`ImpairedRelay::addr`].
pub struct ImpairedRelay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ImpairedRelay {
    /// A relay to `server` (a loopback address) with the same impairment both ways.
    pub fn new(server: SocketAddr, impair: Impair, seed: u64) -> Self {
        Self::with(server, impair, impair, seed)
    }

    /// A relay to `server` with `to_server` applied to client → server datagrams and
    /// `to_client` to server → client ones.
    pub fn with(server: SocketAddr, to_server: Impair, to_client: Impair, seed: u64) -> Self {
        assert!(server.ip().is_loopback(), "the relay only talks to loopback");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        // Big socket buffers, so the relay itself loses as little as possible beyond what it is
        // told to (the kernel caps these at net.core.[rw]mem_max).
        let s2 = socket2::SockRef::from(&sock);
        let _ = s2.set_recv_buffer_size(8 << 20);
        let _ = s2.set_send_buffer_size(8 << 20);
        sock.set_read_timeout(Some(POLL)).unwrap();
        let addr = sock.local_addr().unwrap();
        let shared = Arc::new(Shared {
            config: Mutex::new([to_server, to_client]),
            blackhole: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Default::default(),
            to_server_bytes: AtomicU64::new(0),
            rebind_at: AtomicU64::new(u64::MAX),
            rebind_every: AtomicU64::new(0),
            rebinds: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("impair-relay".into())
            .spawn(move || Worker::new(sock, server, sh, seed).run())
            .expect("relay thread");
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Change one direction's impairment from now on.
    pub fn set(&self, dir: Dir, impair: Impair) {
        self.shared.config.lock().unwrap()[dir as usize] = impair;
    }

    /// Change both directions' impairment from now on.
    pub fn set_both(&self, impair: Impair) {
        *self.shared.config.lock().unwrap() = [impair, impair];
    }

    /// Drop everything, both ways, from now on (or stop doing so).
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// NAT rebinding: once `bytes` more client → server bytes have passed, forward client →
    /// server datagrams from a fresh port; with `every`, again each time that many more have.
    pub fn rebind_after(&self, bytes: u64, every: Option<u64>) {
        let now = self.shared.to_server_bytes.load(Ordering::Relaxed);
        self.shared
            .rebind_every
            .store(every.unwrap_or(0), Ordering::Relaxed);
        self.shared.rebind_at.store(now + bytes, Ordering::Relaxed);
    }

    /// How many times the relay moved to a fresh server-facing port.
    pub fn rebinds(&self) -> u64 {
        self.shared.rebinds.load(Ordering::Relaxed)
    }

    /// Datagrams the server sent to a server-facing port the relay had left (lost).
    pub fn stale(&self) -> u64 {
        self.shared.stale.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_server: self.shared.counters[0].snapshot(),
            to_client: self.shared.counters[1].snapshot(),
        }
    }
}

impl Drop for ImpairedRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A delayed datagram: (release time, sequence number for a stable order, direction, bytes).
type Delayed = (Instant, u64, usize, Vec<u8>);

/// A datagram held back for reordering.
struct Held {
    data: Vec<u8>,
    /// Later datagrams still to pass before this one goes.
    after: usize,
    since: Instant,
}

struct Worker {
    sock: UdpSocket,
    server: SocketAddr,
    client: Option<SocketAddr>,
    /// After a NAT rebinding: the server-facing socket and its address (before one, `sock`
    /// faces both ways).
    up: Option<(UdpSocket, SocketAddr)>,
    /// The threads handing the server-facing sockets' datagrams to `sock`.
    readers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    rng: Rng,
    /// Delayed datagrams, earliest release first.
    queue: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    held: [VecDeque<Held>; 2],
    timeout: Duration,
}

impl Worker {
    fn new(sock: UdpSocket, server: SocketAddr, shared: Arc<Shared>, seed: u64) -> Self {
        Self {
            sock,
            server,
            client: None,
            up: None,
            readers: Vec::new(),
            shared,
            rng: Rng::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            held: [VecDeque::new(), VecDeque::new()],
            timeout: POLL,
        }
    }

    fn run(mut self) {
        let mut buf = vec![0u8; 65536];
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.release_due();
            self.set_timeout();
            let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let dir = if self.up.as_ref().is_some_and(|(_, up)| *up == from) {
                // The server's datagram, handed over by the server-facing socket's reader.
                Dir::ToClient
            } else if from == self.server {
                if self.client.is_none() {
                    continue;
                }
                if self.up.is_some() {
                    // Sent to the port the relay moved away from: the old mapping is gone.
                    bump(&self.shared.stale);
                    continue;
                }
                Dir::ToClient
            } else if self.client == Some(from) {
                Dir::ToServer
            } else if self.client.is_none() && from.ip().is_loopback() {
                self.client = Some(from);
                Dir::ToServer
            } else {
                // Neither the server nor our one client: never forward.
                continue;
            };
            if dir == Dir::ToServer {
                self.count_to_server(n);
            }
            self.on_datagram(dir as usize, &buf[..n]);
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Count client → server bytes; at the threshold, move to a fresh server-facing port.
    fn count_to_server(&mut self, n: usize) {
        let sh = &self.shared;
        let total = sh.to_server_bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total < sh.rebind_at.load(Ordering::Relaxed) {
            return;
        }
        let every = sh.rebind_every.load(Ordering::Relaxed);
        let next = if every == 0 { u64::MAX } else { total + every };
        sh.rebind_at.store(next, Ordering::Relaxed);
        self.nat_rebind();
    }

    /// Forward to the server from a fresh port from now on. The old server-facing socket (if
    /// any) closes once its reader has seen it replaced (within [`POLL`]).
    fn nat_rebind(&mut self) {
        let up = UdpSocket::bind("127.0.0.1:0").expect("relay's server-facing socket");
        let s2 = socket2::SockRef::from(&up);
        let _ = s2.set_recv_buffer_size(8 << 20);
        let _ = s2.set_send_buffer_size(8 << 20);
        up.set_read_timeout(Some(POLL)).unwrap();
        let addr = up.local_addr().unwrap();
        let generation = self.shared.rebinds.fetch_add(1, Ordering::Relaxed) + 1;
        let reader = up.try_clone().expect("socket clone");
        let (front, server, shared) = (self.sock.local_addr().unwrap(), self.server, self.shared.clone());
        let current = move || {
            !shared.stop.load(Ordering::Relaxed) && shared.rebinds.load(Ordering::Relaxed) == generation
        };
        let thread = std::thread::Builder::new()
            .name("impair-relay-up".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while current() {
                    let Ok((n, from)) = reader.recv_from(&mut buf) else {
                        continue;
                    };
                    // Replaced meanwhile: the mapping is gone, the datagram with it.
                    if from == server && current() {
                        let _ = reader.send_to(&buf[..n], front);
                    }
                }
            })
            .expect("relay reader thread");
        self.readers.push(thread);
        self.up = Some((up, addr));
    }

    fn on_datagram(&mut self, d: usize, data: &[u8]) {
        let c = &self.shared.counters[d];
        bump(&c.received);
        if self.shared.blackhole.load(Ordering::Relaxed) {
            bump(&c.blackholed);
            return;
        }
        let cfg = self.shared.config.lock().unwrap()[d];
        // Every datagram that passes releases the reordered ones it was waiting for.
        let mut released = Vec::new();
        for h in self.held[d].iter_mut() {
            h.after = h.after.saturating_sub(1);
        }
        let mut i = 0;
        while i < self.held[d].len() {
            if self.held[d][i].after == 0 {
                released.push(self.held[d].remove(i).unwrap().data);
            } else {
                i += 1;
            }
        }
        if self.rng.chance(cfg.drop) {
            bump(&self.shared.counters[d].dropped);
        } else {
            let mut out = data.to_vec();
            if self.rng.chance(cfg.corrupt) {
                bump(&self.shared.counters[d].corrupted);
                let flips = 1 + self.rng.below(4);
                for _ in 0..flips {
                    let bit = self.rng.below(out.len() * 8);
                    out[bit / 8] ^= 1 << (bit % 8);
                }
            }
            let copies = if self.rng.chance(cfg.duplicate) {
                bump(&self.shared.counters[d].duplicated);
                2
            } else {
                1
            };
            if self.rng.chance(cfg.reorder) {
                bump(&self.shared.counters[d].reordered);
                for _ in 0..copies {
                    self.held[d].push_back(Held {
                        data: out.clone(),
                        after: cfg.reorder_gap.max(1),
                        since: Instant::now(),
                    });
                }
            } else {
                for _ in 0..copies {
                    released.insert(0, out.clone());
                }
            }
        }
        for data in released {
            self.schedule(d, data, &cfg);
        }
    }

    /// Send now, or queue for later if this direction is delayed.
    fn schedule(&mut self, d: usize, data: Vec<u8>, cfg: &Impair) {
        if cfg.delay.is_zero() && cfg.jitter.is_zero() {
            self.send(d, &data);
            return;
        }
        let jitter = if cfg.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.next_u64() % cfg.jitter.as_nanos() as u64)
        };
        bump(&self.shared.counters[d].delayed);
        self.seq += 1;
        self.queue
            .push(Reverse((Instant::now() + cfg.delay + jitter, self.seq, d, data)));
    }

    fn send(&self, d: usize, data: &[u8]) {
        let to = if d == Dir::ToServer as usize {
            self.server
        } else {
            match self.client {
                Some(c) => c,
                None => return,
            }
        };
        let c = &self.shared.counters[d];
        let sock = match &self.up {
            Some((up, _)) if d == Dir::ToServer as usize => up,
            _ => &self.sock,
        };
        // Counted first: the receiver may act on the datagram before this thread runs again.
        bump(&c.forwarded);
        if sock.send_to(data, to).is_err() {
            c.forwarded.fetch_sub(1, Ordering::Relaxed);
            bump(&c.send_failed);
        }
    }

    /// Send the delayed datagrams whose time has come and the reordered ones held too long.
    fn release_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
            let Reverse((_, _, d, data)) = self.queue.pop().unwrap();
            if self.shared.blackhole.load(Ordering::Relaxed) {
                bump(&self.shared.counters[d].blackholed);
                continue;
            }
            self.send(d, &data);
        }
        for d in 0..2 {
            while self.held[d]
                .front()
                .is_some_and(|h| now.duration_since(h.since) >= MAX_HOLD)
            {
                let h = self.held[d].pop_front().unwrap();
                if self.shared.blackhole.load(Ordering::Relaxed) {
                    bump(&self.shared.counters[d].blackholed);
                    continue;
                }
                let cfg = self.shared.config.lock().unwrap()[d];
                self.schedule(d, h.data, &cfg);
            }
        }
    }

    /// Block in `recv_from` no longer than until the next queued datagram is due.
    fn set_timeout(&mut self) {
        let now = Instant::now();
        let mut next = now + POLL;
        if let Some(Reverse((t, ..))) = self.queue.peek() {
            next = next.min(*t);
        }
        for h in self.held.iter().filter_map(|q| q.front()) {
            next = next.min(h.since + MAX_HOLD);
        }
        // Zero means "no timeout" to the kernel: wait at least 100 µs.
        let want = next
            .saturating_duration_since(now)
            .max(Duration::from_micros(100));
        // Avoid a system call per datagram when nothing is queued.
        if want != self.timeout {
            let _ = self.sock.set_read_timeout(Some(want));
            self.timeout = want;
        }
    }
}
