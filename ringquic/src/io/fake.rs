//! A fake completion backend for tests: endpoints exchange datagrams through an in-memory
//! network that can drop, duplicate, reorder and fail them, and can hold TX buffers "in the
//! kernel" for several turns. It lets the I/O loop be driven through situations real sockets
//! rarely produce on demand (TX buffers exhausted for long stretches, failed sends, batches
//! delivered backwards), while everything above the backend seam runs for real.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn_proto::Transmit;

use super::{
    bufpool::TxPool, recv, send::Batch, BackendKind, IoBackend, IoConfig, IoStats, RecvMeta, TxBuf, Wakeup,
};
use crate::sync::lock;

/// Builds a fake backend on the I/O thread from the endpoint's (unused) socket
/// (`EndpointBuilder::fake_backend`).
pub(crate) type FakeFactory = Box<dyn FnOnce(&std::net::UdpSocket, &IoConfig) -> Box<dyn IoBackend> + Send>;

/// What the fake network does to traffic. Counters are per network, deterministic.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Drop every n-th datagram.
    pub drop_every: Option<u64>,
    /// Deliver every n-th datagram twice.
    pub duplicate_every: Option<u64>,
    /// Fail every n-th send (counted as a send error, nothing delivered).
    pub fail_send_every: Option<u64>,
    /// Deliver each receive batch in reverse order.
    pub reverse_batches: bool,
    /// Keep each TX buffer "in flight" for this many turns before its completion.
    pub tx_completion_turns: usize,
    /// Every turn fails, as a backend whose ring broke would (`io::Error` "injected").
    pub fail_turns: bool,
    /// `rebind` fails, as when the kernel refuses the new socket (counted, nothing changes).
    pub fail_rebind: bool,
}

#[derive(Default)]
struct NetState {
    queues: HashMap<SocketAddr, VecDeque<(SocketAddr, Vec<u8>)>>,
    /// Backends woken (by id: an endpoint's waker outlives a rebind to a new address).
    woken: HashSet<u64>,
    next_id: u64,
    datagrams: u64,
    sends: u64,
    /// Datagrams the network dropped on purpose.
    pub dropped: u64,
    /// Datagrams sent to an address nobody is at (any more): lost.
    unreachable: u64,
    /// Rebinds refused on purpose (`Faults::fail_rebind`).
    rebinds_refused: u64,
}

/// The in-memory network.
#[derive(Default)]
pub(crate) struct FakeNet {
    state: Mutex<NetState>,
    cv: Condvar,
    faults: Mutex<Faults>,
}

impl FakeNet {
    pub(crate) fn new(faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            faults: Mutex::new(faults),
            ..Default::default()
        })
    }

    /// Change the faults from now on.
    pub(crate) fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
    }

    /// Datagrams dropped on purpose so far.
    pub(crate) fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }

    /// Rebinds refused on purpose so far.
    pub(crate) fn rebinds_refused(&self) -> u64 {
        lock(&self.state).rebinds_refused
    }

    /// Datagrams sent to an address no backend is at (one that rebound away, say).
    pub(crate) fn unreachable(&self) -> u64 {
        lock(&self.state).unreachable
    }
}

struct FakeWaker {
    net: Arc<FakeNet>,
    id: u64,
}

impl Wakeup for FakeWaker {
    fn wake(&self) {
        lock(&self.net.state).woken.insert(self.id);
        self.net.cv.notify_all();
    }
}

/// One endpoint's view of the fake network.
pub(crate) struct FakeBackend {
    net: Arc<FakeNet>,
    id: u64,
    addr: SocketAddr,
    /// The socket of the last rebind, kept so its port (this backend's address) stays taken.
    socket: Option<std::net::UdpSocket>,
    tx: TxPool,
    /// TX slots "in the kernel" and the turns left before they complete.
    in_flight: VecDeque<(u32, usize)>,
    waker: Arc<FakeWaker>,
    stats: IoStats,
}

impl FakeBackend {
    pub(crate) fn new(net: Arc<FakeNet>, addr: SocketAddr, cfg: &IoConfig) -> Self {
        let id = {
            let mut st = lock(&net.state);
            st.queues.entry(addr).or_default();
            st.next_id += 1;
            st.next_id
        };
        Self {
            waker: Arc::new(FakeWaker { net: net.clone(), id }),
            net,
            id,
            addr,
            socket: None,
            tx: TxPool::new(cfg.tx_buffers, cfg.tx_buffer_size),
            in_flight: VecDeque::new(),
            stats: IoStats::default(),
        }
    }

    /// Age the sends in flight by one turn; returns whether any completed.
    fn complete_sends(&mut self) -> bool {
        for entry in self.in_flight.iter_mut() {
            entry.1 = entry.1.saturating_sub(1);
        }
        let mut any = false;
        while let Some(&(slot, 0)) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.tx.complete(slot);
            any = true;
        }
        any
    }
}

impl IoBackend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Poll
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn max_gso_segments(&self) -> usize {
        10
    }

    fn tx_pool(&mut self) -> (&mut TxPool, &mut IoStats) {
        (&mut self.tx, &mut self.stats)
    }

    fn send(&mut self, buf: TxBuf, t: &Transmit) {
        let faults = *lock(&self.net.faults);
        let slot = buf.slot;
        let batch = Batch::new(&buf, t);
        let data = self.tx.park(buf)[..batch.len].to_vec();
        self.in_flight.push_back((slot, faults.tx_completion_turns));
        let mut net = lock(&self.net.state);
        net.sends += 1;
        if faults.fail_send_every.is_some_and(|n| net.sends % n == 0) {
            self.stats.send_errors += 1;
            return;
        }
        self.stats.count_sent(data.len(), batch.segment_size);
        for range in recv::segments(data.len(), batch.segment_size) {
            let chunk = &data[range];
            net.datagrams += 1;
            if faults.drop_every.is_some_and(|n| net.datagrams % n == 0) {
                net.dropped += 1;
                continue;
            }
            let copies = if faults.duplicate_every.is_some_and(|n| net.datagrams % n == 0) {
                2
            } else {
                1
            };
            match net.queues.get_mut(&t.destination) {
                Some(q) => {
                    for _ in 0..copies {
                        q.push_back((self.addr, chunk.to_vec()));
                    }
                }
                None => net.unreachable += 1,
            }
        }
        drop(net);
        self.net.cv.notify_all();
    }

    fn turn(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<()> {
        // A completed send is I/O to report, as a CQE would be: do not sleep after one.
        let completed = self.complete_sends();
        let Faults {
            reverse_batches: reverse,
            fail_turns,
            ..
        } = *lock(&self.net.faults);
        if fail_turns {
            return Err(io::Error::other("injected backend failure"));
        }
        let mut net = lock(&self.net.state);
        // Bounded wait: at most 10 s per turn even without a deadline.
        let limit = Instant::now() + Duration::from_secs(10);
        loop {
            let has_data = net.queues.get(&self.addr).is_some_and(|q| !q.is_empty());
            // TX completions pending count as I/O to report, like CQEs would.
            if has_data || completed || net.woken.remove(&self.id) || !self.in_flight.is_empty() {
                break;
            }
            let now = Instant::now();
            let until = deadline.unwrap_or(limit).min(limit);
            if now >= until {
                break;
            }
            net = self
                .net
                .cv
                .wait_timeout(net, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let batch: Vec<_> = match net.queues.get_mut(&self.addr) {
            Some(q) => {
                let n = q.len().min(64);
                q.drain(..n).collect()
            }
            None => Vec::new(),
        };
        drop(net);
        let mut batch = batch;
        if reverse {
            batch.reverse();
        }
        for (from, data) in batch {
            let meta = RecvMeta {
                remote: from,
                local_ip: None,
                ecn: None,
            };
            // One datagram each, handed on as every backend hands one on.
            recv::deliver_copied(&data, None, meta, &mut self.stats, on_recv);
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wakeup> {
        self.waker.clone()
    }

    fn sleep_until(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        deadline
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    /// Move to the new socket's address: datagrams still queued for the old one are lost (a
    /// closed socket's receive buffer), later ones to the old address are unreachable. Sends in
    /// flight complete as before. Refused, changing nothing, under `Faults::fail_rebind`.
    fn rebind(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
        let addr = socket.local_addr()?;
        let fail = lock(&self.net.faults).fail_rebind;
        let mut net = lock(&self.net.state);
        if fail {
            net.rebinds_refused += 1;
            self.stats.rebinds_failed += 1;
            return Err(io::Error::other("rebind refused (injected)"));
        }
        if let Some(lost) = net.queues.remove(&self.addr) {
            net.unreachable += lost.len() as u64;
        }
        net.queues.entry(addr).or_default();
        drop(net);
        self.addr = addr;
        self.socket = Some(socket);
        self.stats.rebinds += 1;
        Ok(addr)
    }

    fn shutdown(&mut self) {
        while let Some((slot, _)) = self.in_flight.pop_front() {
            self.tx.complete(slot);
        }
        lock(&self.net.state).queues.remove(&self.addr);
    }
}
