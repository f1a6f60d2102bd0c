//! The portable readiness-based backend: `quinn-udp` system calls driven by `mio`
//! (epoll on Linux, kqueue on the BSDs and macOS, IOCP-emulated readiness on Windows).
//!
//! Design, in short:
//!
//! * **Readiness, edge-triggered.** The socket is registered with a [`mio::Poll`]. Readiness is
//!   reported once per edge, so the backend remembers it: `readable` stays set until a receive
//!   returns `WouldBlock`, `writable` until a send does. A [`turn`](IoBackend::turn) that stopped
//!   receiving because of its work bound leaves `readable` set, and the next turn polls with a
//!   zero timeout instead of sleeping.
//! * **Receive** uses up to [`quinn_udp::BATCH_SIZE`] pooled buffers ([`RxSlots`]), each large
//!   enough for a whole GRO batch, one `recvmmsg` filling several. A receive of at least
//!   `zero_copy_threshold` bytes (a GRO batch) is lent as it is, the buffer the kernel filled
//!   split per datagram, and a spare takes its slot, within the receive memory budget
//!   (`recv.rs`). A smaller one, or one over the budget, is copied as `recv::deliver` copies
//!   (a batch of 16 KiB or more into a pooled buffer of the same budget, anything else per
//!   datagram), and the buffer stays.
//! * **Send** tries the system call right away. A send that would block is parked in a FIFO,
//!   which is bounded by construction (it only holds TX buffers, and there are `tx_buffers` of
//!   them), and flushed, in order, when the socket reports writability. Interest in writability
//!   is registered only while that FIFO is non-empty: a UDP socket is almost always writable, and
//!   with permanent write interest every datagram the kernel finishes sending would end the
//!   sleep of the next turn for nothing.
//! * **Errors** other than "would block" on send are counted and the datagram is dropped, as a
//!   lossy network would drop it; QUIC recovers.
//! * **Rebind** (`Endpoint::rebind`): the new socket gets its quinn-udp state and is registered
//!   before the old one is deregistered and closed, which can happen at once: nothing is in the
//!   kernel's hands between system calls. Sends waiting for a writable socket go out on the new
//!   one.

use std::{
    collections::VecDeque,
    fmt,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use mio::{net::UdpSocket, Events, Interest, Poll, Token, Waker};
use quinn_udp::{UdpSocketState, BATCH_SIZE};
use tracing::{debug, trace};

use super::{
    addr::{addr_for_socket, canonical, canonical_ip, ip_for_socket},
    bufpool::{RxSlots, TxPool},
    recv,
    send::Batch,
    BackendKind, IoBackend, IoConfig, IoStats, RecvMeta, TxBuf, Wakeup,
};

/// Token of the UDP socket in the `mio` registry.
const SOCKET: Token = Token(0);
/// Token of the [`MioWakeup`] in the `mio` registry.
const WAKER: Token = Token(1);
/// Receive system calls per [`IoBackend::turn`] at most (each takes up to `BATCH_SIZE` buffers).
const MAX_RECV_CALLS_PER_TURN: usize = 32;
/// No UDP datagram, nor any GRO batch (the kernel caps a coalesced packet below 64 KiB), is
/// larger than this.
const MAX_RECV_BUFFER: usize = 64 * 1024;
/// Bytes one GSO send may carry: the largest UDP payload over IPv4 (the kernel refuses more with
/// `EMSGSIZE`, for IPv6 too); larger batches are split.
const MAX_GSO_BYTES: usize = 65_507;
/// Readiness events taken per poll; there are only two sources.
const EVENTS_CAPACITY: usize = 8;
/// Send errors are logged at most once per this interval (the rest are counted).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// [`Wakeup`] over a [`mio::Waker`] registered with the backend's `Poll`.
#[derive(Debug)]
struct MioWakeup(Waker);

impl Wakeup for MioWakeup {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            debug!(error = %e, "failed to wake the I/O thread");
        }
    }
}

/// A send that has not (completely) reached the kernel yet.
#[derive(Debug)]
struct PendingTx {
    buf: TxBuf,
    /// Destination, in the socket's address family.
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    /// Source address, in the socket's address family.
    src_ip: Option<IpAddr>,
    /// Bytes of `buf.buf` to send.
    len: usize,
    /// Size of each datagram in the batch, smaller than `len` (`send::Batch`); `None`: one
    /// datagram.
    segment_size: Option<usize>,
    /// Bytes already handed to the kernel (a GSO batch goes out in several system calls when it
    /// is larger than one send may carry, or was written before GSO was disabled).
    sent: usize,
}

/// The portable, readiness-based [`IoBackend`]: a non-blocking UDP socket driven by `mio`, with
/// `quinn-udp` doing the system calls (GSO/GRO, ECN, packet info, don't-fragment).
///
/// The receive buffers, the TX buffers and the FIFO of pending sends are allocated in
/// [`PollBackend::new`]. On the hot path only receiving allocates: an exact copy of each
/// datagram of a small receive, or a buffer taking the place of one lent, which is a lent
/// buffer that came back whenever one has (`recv.rs`).
pub(crate) struct PollBackend {
    socket: UdpSocket,
    /// quinn-udp's socket state; `None` in plain mode (quinn-udp could not configure the
    /// socket): `send_to`/`recv_from`, one datagram per call, no ECN, GSO, GRO or packet info.
    state: Option<UdpSocketState>,
    poll: Poll,
    events: Events,
    waker: Arc<MioWakeup>,
    /// The socket is IPv6 (possibly dual-stack): IPv4 destinations are sent v4-mapped.
    ipv6: bool,
    /// Readable edge seen and no `WouldBlock` since: there may be data waiting.
    readable: bool,
    /// No `WouldBlock` since the last writable edge (or since start).
    writable: bool,
    /// The socket is registered with `WRITABLE` interest too (only while sends are pending).
    write_interest: bool,
    /// `shutdown` was called: the socket is deregistered and sends are dropped.
    closed: bool,
    /// quinn-udp serves the socket where it can (false: plain mode forced, for tests).
    use_quinn_udp: bool,
    /// The largest UDP payload received (`IoConfig::max_udp_payload`, clamped).
    max_payload: usize,
    /// `IoConfig::recv_buffer_size`.
    recv_buffer_size: usize,
    /// Receive system calls per turn at most.
    max_recv_calls: usize,
    /// As many buffers as one receive call fills (at most `BATCH_SIZE`), each large enough for
    /// a whole GRO batch, every byte initialised; lent whole for a large receive (`recv.rs`).
    rx: RxSlots,
    /// Receives of at least this many bytes are lent, smaller ones copied
    /// (`IoConfig::zero_copy_min`).
    zero_copy_min: usize,
    /// `IoConfig::recv_memory_budget`.
    recv_memory_budget: usize,
    recv_meta: [quinn_udp::RecvMeta; BATCH_SIZE],
    /// The TX buffers. None is ever parked: a send's buffer is in `pending` until the kernel
    /// has taken all of it.
    tx: TxPool,
    /// Sends that hit `WouldBlock`, oldest first. Never longer than `tx_buffers`.
    pending: VecDeque<PendingTx>,
    stats: IoStats,
    last_error_log: Option<Instant>,
    suppressed_errors: u64,
}

impl fmt::Debug for PollBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollBackend")
            .field("socket", &self.socket)
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("closed", &self.closed)
            .field("recv_slots", &self.rx.buf_count())
            .field("recv_slot_size", &self.rx.buf_size())
            .field("tx_free", &self.tx.free_count())
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PollBackend {
    /// Wraps an already bound UDP socket (it is made non-blocking here) and allocates all the
    /// memory the backend will use.
    ///
    /// Receive memory: `min(cfg.recv_buffers, BATCH_SIZE)` buffers (at least one) of
    /// `max(cfg.recv_buffer_size, min(max(gro_segments × cfg.max_udp_payload,
    /// cfg.max_udp_payload + 1), 64 KiB))` bytes each, plus at most `cfg.recv_memory_budget` of
    /// them lent out. TX memory: `cfg.tx_buffers` × `cfg.tx_buffer_size`.
    pub(crate) fn new(socket: std::net::UdpSocket, cfg: &IoConfig) -> io::Result<Self> {
        Self::with_mode(socket, cfg, true)
    }

    /// `use_quinn_udp == false` forces the plain mode (tests; it is otherwise chosen only when
    /// quinn-udp cannot configure the socket).
    fn with_mode(socket: std::net::UdpSocket, cfg: &IoConfig, use_quinn_udp: bool) -> io::Result<Self> {
        if cfg.tx_buffers == 0 || u32::try_from(cfg.tx_buffers).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tx_buffers must be between 1 and u32::MAX",
            ));
        }
        socket.set_nonblocking(true)?;
        let mut socket = UdpSocket::from_std(socket);
        let state = socket_state(&socket, use_quinn_udp);
        let ipv6 = socket.local_addr()?.is_ipv6();

        let poll = Poll::new()?;
        let waker = Arc::new(MioWakeup(Waker::new(poll.registry(), WAKER)?));
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;

        let max_payload = cfg.max_udp_payload.clamp(1, MAX_RECV_BUFFER - 1);
        let rx = new_rx_slots(
            cfg.recv_buffers.clamp(1, BATCH_SIZE),
            recv_slot_size(cfg.recv_buffer_size, max_payload, state.as_ref()),
            cfg.recv_memory_budget,
        )?;

        Ok(Self {
            socket,
            state,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            waker,
            ipv6,
            readable: false,
            writable: true,
            write_interest: false,
            closed: false,
            use_quinn_udp,
            max_payload,
            recv_buffer_size: cfg.recv_buffer_size,
            max_recv_calls: MAX_RECV_CALLS_PER_TURN,
            rx,
            zero_copy_min: cfg.zero_copy_min,
            recv_memory_budget: cfg.recv_memory_budget,
            recv_meta: [quinn_udp::RecvMeta::default(); BATCH_SIZE],
            // Slot numbers in range: checked above.
            tx: TxPool::new(cfg.tx_buffers, cfg.tx_buffer_size),
            pending: VecDeque::with_capacity(cfg.tx_buffers),
            stats: IoStats::default(),
            last_error_log: None,
            suppressed_errors: 0,
        })
    }

    /// Datagrams one send may carry: quinn-udp's GSO limit, 1 in plain mode.
    fn max_gso(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.max_gso_segments()).max(1)
    }

    /// Bytes of receive memory this backend holds.
    #[cfg(test)]
    fn recv_memory(&self) -> usize {
        self.rx.buf_count() * self.rx.buf_size()
    }

    /// Send pending datagrams in order until the FIFO is empty or the socket would block; adjust
    /// write interest accordingly.
    fn flush_pending(&mut self) {
        while let Some(mut p) = self.pending.pop_front() {
            if self.transmit(&mut p) {
                self.tx.put(p.buf);
            } else {
                self.writable = false;
                self.pending.push_front(p);
                break;
            }
        }
        self.set_write_interest(!self.pending.is_empty());
    }

    /// (De)register interest in writability. Only called on transitions between "sends pending"
    /// and "nothing pending", which are rare.
    fn set_write_interest(&mut self, on: bool) {
        if self.write_interest == on || self.closed {
            return;
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut self.socket, SOCKET, interest)
        {
            Ok(()) => self.write_interest = on,
            Err(e) => {
                debug!(error = %e, "failed to change the socket's poll interest");
                // Without a writable edge to wait for, retry the pending sends on every turn.
                if on {
                    self.writable = true;
                }
            }
        }
    }

    /// Hand what is left of `p` to the kernel. `true` when done with it (sent, or dropped on an
    /// error), `false` when the socket would block (progress is kept in `p.sent`).
    fn transmit(&mut self, p: &mut PendingTx) -> bool {
        while p.sent < p.len {
            let remaining = p.len - p.sent;
            let max_segments = self.max_gso();
            // A batch written before GSO was disabled (or larger than the kernel takes) goes out
            // in several sends.
            let (chunk, segment_size) = match p.segment_size {
                Some(seg) if remaining > seg => {
                    let segments = max_segments.min((MAX_GSO_BYTES / seg).max(1));
                    let chunk = remaining.min(seg.saturating_mul(segments));
                    (chunk, (chunk > seg).then_some(seg))
                }
                _ => (remaining, None),
            };
            let transmit = quinn_udp::Transmit {
                destination: p.destination,
                ecn: p.ecn,
                contents: &p.buf.buf[p.sent..p.sent + chunk],
                segment_size,
                src_ip: p.src_ip,
            };
            let sent = match &self.state {
                Some(state) => state.try_send((&self.socket).into(), &transmit),
                // Plain mode: no GSO (max_gso() is 1), so one datagram per call.
                None => self
                    .socket
                    .send_to(transmit.contents, transmit.destination)
                    .map(|_| ()),
            };
            match sent {
                Ok(()) => {
                    p.sent += chunk;
                    self.stats.count_sent(chunk, segment_size);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if segment_size.is_some() && self.max_gso() < max_segments => {
                    // quinn-udp saw the GSO send refused and lowered the segment count: resend
                    // the batch in smaller pieces.
                    self.stats.gso_disabled += 1;
                    debug!(error = %e, "GSO send refused; falling back to smaller sends");
                }
                Err(e) => {
                    self.stats.send_errors += 1;
                    self.log_send_error(&e, p.destination, chunk);
                    return true;
                }
            }
        }
        true
    }

    fn log_send_error(&mut self, e: &io::Error, destination: SocketAddr, len: usize) {
        let now = Instant::now();
        match self.last_error_log {
            Some(last) if now.saturating_duration_since(last) < ERROR_LOG_INTERVAL => {
                self.suppressed_errors += 1;
            }
            _ => {
                debug!(
                    error = %e,
                    %destination,
                    len,
                    suppressed = self.suppressed_errors,
                    "send failed; datagram dropped"
                );
                self.last_error_log = Some(now);
                self.suppressed_errors = 0;
            }
        }
    }

    /// Receive until the socket would block or `max_recv_calls` system calls were made (then
    /// `readable` stays set, so the next turn does not sleep).
    fn recv_bounded(&mut self, on_recv: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<()> {
        let slots = self.rx.buf_count();
        let slot_size = self.rx.buf_size();

        for _ in 0..self.max_recv_calls {
            let received = {
                let mut chunks = self.rx.initialised_mut();
                let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                let bufs = &mut bufs[..slots];
                let metas = &mut self.recv_meta[..slots];
                match &self.state {
                    Some(state) => state.recv((&self.socket).into(), bufs, metas),
                    None => self.socket.recv_from(&mut bufs[0]).map(|(len, addr)| {
                        metas[0] = quinn_udp::RecvMeta {
                            addr,
                            len,
                            stride: len,
                            ..Default::default()
                        };
                        1
                    }),
                }
            };
            let count = match received {
                Ok(count) => count.min(slots),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if is_truncated_recv(&e) => {
                    // A datagram larger than the receive buffer (Windows reports it as an error,
                    // `WSAEMSGSIZE`, where Linux truncates): dropped and counted, never fatal.
                    self.stats.recv_dropped += 1;
                    continue;
                }
                Err(e) if is_transient_recv_error(&e) => {
                    // ICMP feedback about an earlier send (Windows reports it on unconnected
                    // sockets); nothing was received.
                    trace!(error = %e, "ignoring receive error");
                    continue;
                }
                Err(e) => return Err(e),
            };

            for slot in 0..count {
                let meta = self.recv_meta[slot];
                let len = meta.len.min(slot_size);
                if len == 0 {
                    continue;
                }
                let stride = if meta.stride == 0 || meta.stride > len {
                    len
                } else {
                    meta.stride
                };
                // A full buffer holding a lone datagram (larger than max_udp_payload) or ending
                // in a short segment may have been cut by the kernel: drop that last datagram.
                let drop_last = len >= slot_size && (stride == len || len % stride != 0);
                let kept = if drop_last {
                    self.stats.recv_dropped += 1;
                    trace!(remote = %meta.addr, "dropping a truncated datagram");
                    // Everything before the last datagram's start.
                    (len - 1) / stride * stride
                } else {
                    len
                };
                let recv_meta = RecvMeta {
                    remote: canonical(meta.addr),
                    local_ip: meta.dst_ip.map(canonical_ip),
                    ecn: meta
                        .ecn
                        .and_then(|ecn| quinn_proto::EcnCodepoint::from_bits(ecn as u8)),
                };
                self.hand_on(slot, kept, stride, recv_meta, on_recv);
            }
        }
        Ok(())
    }

    /// Hand on the first `len` bytes of receive buffer `slot`, datagrams of `stride` bytes: the
    /// buffer itself, lent, when the receive reaches `zero_copy_min` and the budget allows
    /// (another buffer takes the slot); else copied as `recv::deliver` does, a large batch into
    /// a pooled buffer within the same budget, anything else per datagram into allocations of
    /// their own size. What a piece quinn-proto keeps holds alive is bounded either way.
    fn hand_on(
        &mut self,
        slot: usize,
        len: usize,
        stride: usize,
        meta: RecvMeta,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) {
        if len >= self.zero_copy_min {
            // SAFETY: the receive call has returned, so nothing writes buffer `slot` any more,
            // and the pool was made with every byte initialised (`new_rx_slots`), so the first
            // `len` ≤ buffer size bytes are.
            if let Some(data) = unsafe { self.rx.lend(slot, 0..len) } {
                self.stats.recv_zero_copy += 1;
                recv::deliver_lent(data, Some(stride), meta, &mut self.stats, on_recv);
                self.stats.recv_buffers_lent = self.rx.lent() as u64;
                return;
            }
        }
        // SAFETY: as for `lend` above; a refused `lend` left buffer `slot` in place, unchanged.
        match unsafe { self.rx.filled_with_lender(slot, len) } {
            // A batch under the threshold: into a pooled buffer of the same pool and budget, or
            // per datagram (`recv::deliver`).
            Some((payload, lender)) => {
                recv::deliver(lender, payload, Some(stride), meta, &mut self.stats, on_recv)
            }
            None => self.stats.recv_dropped += 1,
        }
    }
}

/// The poll backend's receive buffers: `slots` of `slot_size` bytes, every byte initialised
/// (quinn-udp's `recvmmsg` takes initialised slices), at most the budget's worth lent.
fn new_rx_slots(slots: usize, slot_size: usize, budget: usize) -> io::Result<RxSlots> {
    RxSlots::new(slots, slot_size, slot_size, budget / slot_size.max(1))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "receive buffers must have a size"))
}

impl IoBackend for PollBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Poll
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_gso_segments(&self) -> usize {
        self.max_gso()
    }

    fn sends_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    fn tx_pool(&mut self) -> (&mut TxPool, &mut IoStats) {
        (&mut self.tx, &mut self.stats)
    }

    /// Sends right away if the socket is writable and nothing is queued before; otherwise (or on
    /// `WouldBlock`) the buffer waits in the FIFO for the next writable edge.
    fn send(&mut self, buf: TxBuf, transmit: &quinn_proto::Transmit) {
        if self.closed {
            self.tx.put(buf);
            return;
        }
        let batch = Batch::new(&buf, transmit);
        if batch.len < transmit.size {
            debug!(
                size = transmit.size,
                len = buf.buf.len(),
                "transmit larger than its buffer; sending what is there"
            );
        }
        let pending = PendingTx {
            // A real IPv6 destination on an IPv4 socket cannot be reached (`connect_with` refuses
            // it): passed on as it is, the send fails and is counted.
            destination: addr_for_socket(transmit.destination, self.ipv6).unwrap_or(transmit.destination),
            ecn: transmit
                .ecn
                .and_then(|ecn| quinn_udp::EcnCodepoint::from_bits(ecn as u8)),
            // A source the socket's family cannot name is left to the kernel.
            src_ip: transmit.src_ip.and_then(|ip| ip_for_socket(ip, self.ipv6)),
            len: batch.len,
            segment_size: batch.segment_size,
            sent: 0,
            buf,
        };
        self.pending.push_back(pending);
        if self.writable {
            self.flush_pending();
        } else {
            self.set_write_interest(true);
        }
    }

    /// Flushes pending sends, sleeps in `mio::Poll::poll` (zero timeout if received data may be
    /// left over or the deadline has passed), then receives at most
    /// `MAX_RECV_CALLS_PER_TURN` batches and flushes again if the socket became writable.
    /// An interrupted poll (`EINTR`) is a turn where nothing happened.
    fn turn(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<()> {
        if self.writable && !self.pending.is_empty() {
            self.flush_pending();
        }

        let timeout = self
            .sleep_until(deadline)
            .map(|d| d.saturating_duration_since(Instant::now()));
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            // WAKER events need no handling: returning from the turn is the point.
            if event.token() == SOCKET && !self.closed {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.readable = true;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    self.writable = true;
                }
            }
        }

        if self.readable {
            self.recv_bounded(on_recv)?;
        }
        if self.writable && !self.pending.is_empty() {
            self.flush_pending();
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wakeup> {
        self.waker.clone()
    }

    /// Data may be waiting until a receive meets `WouldBlock` (the socket's readiness is
    /// edge-triggered): then do not sleep.
    fn sleep_until(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        if self.readable {
            Some(Instant::now())
        } else {
            deadline
        }
    }

    /// Sends go out in [`IoBackend::send`] while the socket is writable; what waits for a
    /// writable socket waits for an event.
    #[cfg(unix)]
    fn needs_turn(&mut self) -> bool {
        self.readable || (self.writable && !self.pending.is_empty())
    }

    #[cfg(unix)]
    fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        // The registry's fd is the epoll (kqueue) instance itself.
        Some(self.poll.registry().as_fd())
    }

    #[cfg(target_os = "linux")]
    fn direct_sender(&self, max_segments: usize) -> Option<super::direct::DirectSender> {
        let sender = super::direct::DirectSender::new(
            socket2::SockRef::from(&self.socket),
            max_segments.min(self.max_gso()),
        );
        sender.map_err(|e| tracing::debug!("no direct sends: {e}")).ok()
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    /// The new socket is set up (quinn-udp's state, or plain mode where quinn-udp cannot
    /// configure it, as at start) and registered first; then the old one is deregistered and
    /// closed at once: nothing of it is in the kernel's hands between system calls. Datagrams
    /// still in its receive buffer are lost with it (QUIC retransmits). Sends waiting for a
    /// writable socket go out on the new one, their addresses put in its family.
    fn rebind(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
        if self.closed {
            return Err(super::seam::shut_down());
        }
        let prepared = (|| {
            socket.set_nonblocking(true)?;
            let mut socket = UdpSocket::from_std(socket);
            let local = socket.local_addr()?;
            let state = socket_state(&socket, self.use_quinn_udp);
            let interest = if self.write_interest {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll.registry().register(&mut socket, SOCKET, interest)?;
            Ok((socket, local, state))
        })();
        let (socket, local, state) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.stats.rebinds_failed += 1;
                return Err(e);
            }
        };
        let mut old = std::mem::replace(&mut self.socket, socket);
        if let Err(e) = self.poll.registry().deregister(&mut old) {
            debug!(error = %e, "failed to deregister the old socket");
        }
        drop(old);
        let ipv6 = local.is_ipv6();
        if ipv6 != self.ipv6 {
            for p in self.pending.iter_mut() {
                p.destination = addr_for_socket(canonical(p.destination), ipv6).unwrap_or(p.destination);
                p.src_ip = p.src_ip.and_then(|ip| ip_for_socket(canonical_ip(ip), ipv6));
            }
        }
        self.ipv6 = ipv6;
        // A socket with GRO where the old one had none needs bigger receive buffers. Buffers
        // lent before still count against the budget until they come back (`RxSlots::regrow`).
        let slot_size = recv_slot_size(self.recv_buffer_size, self.max_payload, state.as_ref());
        if slot_size > self.rx.buf_size() {
            // Refused only for a zero size, which `recv_slot_size` never gives.
            self.rx
                .regrow(slot_size, slot_size, self.recv_memory_budget / slot_size);
        }
        self.state = state;
        // Look for data and try pending sends on the next turn, whatever edges the new
        // registration reports.
        self.readable = true;
        self.writable = true;
        self.stats.rebinds += 1;
        debug!(%local, gso = self.max_gso(), "rebound to a new socket");
        Ok(local)
    }

    /// Drops pending sends (returning their buffers) and deregisters the socket. Nothing is in
    /// the kernel's hands between system calls, so there is nothing to wait for.
    fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        while let Some(p) = self.pending.pop_front() {
            self.tx.put(p.buf);
        }
        if let Err(e) = self.poll.registry().deregister(&mut self.socket) {
            debug!(error = %e, "failed to deregister the socket");
        }
        self.closed = true;
        self.readable = false;
        self.writable = false;
        self.write_interest = false;
    }
}

/// quinn-udp's state for `socket`, or `None` (plain mode) where it cannot configure it or
/// `use_quinn_udp` is false.
fn socket_state(socket: &UdpSocket, use_quinn_udp: bool) -> Option<UdpSocketState> {
    if !use_quinn_udp {
        return None;
    }
    match UdpSocketState::new(socket.into()) {
        Ok(s) => Some(s),
        Err(e) => {
            // Seen under Wine, which refuses IP_RECVECN. Probe, degrade, log once.
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    "quinn-udp cannot configure the socket ({e}); using plain send_to/recv_from \
                     (no ECN, GSO, GRO or packet info)"
                )
            });
            None
        }
    }
}

/// Bytes per receive buffer: `recv_buffer_size` (the size io_uring's buffers have too), or more
/// where one datagram of the largest size we accept must fit with room to spare (so a full
/// buffer means "truncated") or a whole GRO batch must, up to the 64 KiB no receive exceeds.
fn recv_slot_size(recv_buffer_size: usize, max_payload: usize, state: Option<&UdpSocketState>) -> usize {
    let gro_batch = state
        .map_or(1, |s| s.gro_segments())
        .max(1)
        .saturating_mul(max_payload);
    gro_batch
        .max(max_payload + 1)
        .min(MAX_RECV_BUFFER)
        .max(recv_buffer_size)
}

/// Receive errors that say nothing about the socket itself (ICMP feedback).
/// Windows' "the datagram did not fit the buffer" (`WSAEMSGSIZE`, the same code RIO's
/// bookkeeping classifies as truncated). Linux's receive reports truncation by a flag, not an
/// error, so this is Windows-only.
fn is_truncated_recv(e: &io::Error) -> bool {
    cfg!(windows) && e.raw_os_error() == Some(super::rio_book::WSAEMSGSIZE)
}

fn is_transient_recv_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        sync::mpsc,
        thread,
    };

    use quinn_proto::EcnCodepoint;

    use super::*;
    use crate::io::testutil::{collect, send};

    const MAX_WAIT: Duration = Duration::from_secs(2);

    fn config() -> IoConfig {
        IoConfig::for_tests(64, 2048, 8, 16 * 1024)
    }

    fn bind(addr: &str) -> io::Result<PollBackend> {
        PollBackend::new(std::net::UdpSocket::bind(addr)?, &config())
    }

    /// Turns `backend` until `n` datagrams arrived, and insists on all `n`.
    fn receive(backend: &mut PollBackend, n: usize) -> Vec<(RecvMeta, BytesMut)> {
        let received = collect(backend, n, MAX_WAIT);
        assert_eq!(received.len(), n, "datagrams received");
        received
    }

    fn payload(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn datagrams_of_many_sizes_arrive() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        assert_eq!(a.kind(), BackendKind::Poll);
        assert!(a.max_gso_segments() >= 1);
        let a_addr = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        let sizes = [1, 10, 100, 200, 500, 700, 1000, 1200, 1350, 1472];

        for (i, &len) in sizes.iter().enumerate() {
            let data = payload(i as u8, len);
            send(&mut a, b_addr, &data, None);
        }
        let received = receive(&mut b, sizes.len());

        let mut seen = [false; 10];
        for (meta, data) in &received {
            let i = usize::from(data[0]);
            assert!(i < sizes.len() && !seen[i], "unexpected datagram {i}");
            seen[i] = true;
            assert_eq!(&data[..], &payload(i as u8, sizes[i])[..]);
            assert_eq!(meta.remote, a_addr);
            if let Some(ip) = meta.local_ip {
                assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
            }
            if cfg!(target_os = "linux") {
                assert_eq!(meta.ecn, Some(EcnCodepoint::Ect0));
            }
        }
        let total: u64 = sizes.iter().map(|&s| s as u64).sum();
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.datagrams_sent, 10);
        assert_eq!(sa.bytes_sent, total);
        assert_eq!(sa.send_errors, 0);
        assert_eq!(sb.datagrams_received, 10);
        assert_eq!(sb.bytes_received, total);
        assert_eq!(sb.recv_dropped, 0);
        // Every buffer came back.
        assert_eq!(a.tx.free_count(), config().tx_buffers);
    }

    #[test]
    fn plain_mode_round_trip_splits_batches() {
        // The mode used where quinn-udp cannot configure the socket (Wine): forced here.
        let cfg = config();
        let mut a =
            PollBackend::with_mode(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg, false).unwrap();
        let mut b =
            PollBackend::with_mode(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg, false).unwrap();
        assert_eq!(a.max_gso_segments(), 1);
        let batch: Vec<u8> = (0..3u8).flat_map(|i| payload(i * 40, 1000)).collect();
        send(&mut a, b.local_addr().unwrap(), &batch, Some(1000));
        send(&mut a, b.local_addr().unwrap(), b"single", None);
        let received = receive(&mut b, 4);
        let mut lens: Vec<usize> = received.iter().map(|(_, d)| d.len()).collect();
        lens.sort_unstable();
        assert_eq!(lens, vec![6, 1000, 1000, 1000]);
        for (meta, _) in &received {
            assert_eq!(meta.remote, a.local_addr().unwrap());
            assert_eq!(meta.ecn, None);
        }
        assert_eq!(a.stats().datagrams_sent, 4);
    }

    #[test]
    fn gso_batch_arrives_as_separate_datagrams() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        let batch: Vec<u8> = (0..5u8).flat_map(|i| payload(i * 40, 1200)).collect();
        send(&mut a, b_addr, &batch, Some(1200));

        let received = receive(&mut b, 5);
        let mut seen = [false; 5];
        for (meta, data) in &received {
            assert_eq!(data.len(), 1200);
            assert_eq!(meta.remote, a.local_addr().unwrap());
            let i = usize::from(data[0] / 40);
            assert!(i < 5 && !seen[i]);
            seen[i] = true;
            assert_eq!(&data[..], &batch[i * 1200..(i + 1) * 1200]);
        }
        assert_eq!(a.stats().datagrams_sent, 5);
        assert_eq!(a.stats().bytes_sent, 6000);
        assert_eq!(b.stats().datagrams_received, 5);
    }

    #[test]
    fn gso_batch_over_64k_is_split() {
        let mut cfg = config();
        cfg.tx_buffer_size = 64 * 1024;
        let mut a = PollBackend::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg).unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        // 64 × 1024 = 65536 bytes: more than one UDP send may carry.
        let batch: Vec<u8> = (0..64u8).flat_map(|i| payload(i, 1024)).collect();
        send(&mut a, b_addr, &batch, Some(1024));
        assert_eq!(a.stats().send_errors, 0);
        assert_eq!(a.stats().datagrams_sent, 64);
        assert_eq!(a.stats().bytes_sent, 65536);

        let mut seen = [false; 64];
        for (_, data) in receive(&mut b, 64) {
            assert_eq!(data.len(), 1024);
            let i = usize::from(data[0]);
            assert!(!seen[i]);
            seen[i] = true;
            assert_eq!(&data[..], &batch[i * 1024..(i + 1) * 1024]);
        }
    }

    #[test]
    fn waker_interrupts_an_unbounded_turn() {
        let mut backend = bind("127.0.0.1:0").unwrap();
        let waker = backend.waker();
        let (done_tx, done_rx) = mpsc::channel();
        let io_thread = thread::spawn(move || {
            let start = Instant::now();
            let result = backend.turn(None, &mut |_, _| {});
            let _ = done_tx.send((result.is_ok(), start.elapsed()));
        });
        thread::sleep(Duration::from_millis(100));
        waker.wake();
        let (ok, _elapsed) = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("turn(None) returned after wake()");
        assert!(ok);
        io_thread.join().unwrap();
    }

    #[test]
    fn tx_pool_exhaustion() {
        let mut backend = bind("127.0.0.1:0").unwrap();
        let n = config().tx_buffers;
        let mut taken: Vec<TxBuf> = (0..n).map(|_| backend.take_tx().unwrap()).collect();
        assert!(taken.iter().all(|b| b.buf.capacity() >= config().tx_buffer_size));
        let mut slots: Vec<u32> = taken.iter().map(|b| b.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..n as u32).collect::<Vec<_>>());
        assert!(backend.take_tx().is_none());
        assert!(backend.take_tx().is_none());
        assert_eq!(backend.stats().tx_exhausted, 2);

        let mut buf = taken.pop().unwrap();
        buf.buf.extend_from_slice(b"scribbled on");
        let slot = buf.slot;
        backend.put_tx(buf);
        let again = backend.take_tx().expect("a buffer after put_tx");
        assert_eq!(again.slot, slot);
        assert!(again.buf.is_empty());
        assert!(backend.take_tx().is_none());
        for buf in taken.into_iter().chain(Some(again)) {
            backend.put_tx(buf);
        }
        assert_eq!(backend.tx.free_count(), n);
    }

    #[test]
    fn ipv6_round_trip() {
        let (mut a, mut b) = match (bind("[::1]:0"), bind("[::1]:0")) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                eprintln!("IPv6 loopback unavailable; skipping");
                return;
            }
        };
        let a_addr = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        send(&mut a, b_addr, b"ping over v6", None);
        let (meta, data) = receive(&mut b, 1).pop().unwrap();
        assert_eq!(&data[..], b"ping over v6");
        assert_eq!(meta.remote, a_addr);
        if let Some(ip) = meta.local_ip {
            assert_eq!(ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        }

        send(&mut b, meta.remote, b"pong", None);
        let (meta, data) = receive(&mut a, 1).pop().unwrap();
        assert_eq!(&data[..], b"pong");
        assert_eq!(meta.remote, b_addr);
    }

    /// An IPv6 socket bound to `[::]:0` that also takes IPv4 (mapped), or `None` with a
    /// message where the system has no IPv6 or no dual-stack sockets (the test skips).
    fn dual_stack_socket() -> Option<socket2::Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        );
        let Ok(socket) = socket else {
            eprintln!("no IPv6 sockets; skipping");
            return None;
        };
        let any: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();
        if socket.set_only_v6(false).is_err() || socket.bind(&any.into()).is_err() {
            eprintln!("no dual-stack sockets; skipping");
            return None;
        }
        Some(socket)
    }

    #[test]
    fn dual_stack_reports_and_accepts_ipv4() {
        let Some(socket) = dual_stack_socket() else {
            return;
        };
        let mut server = PollBackend::new(socket.into(), &config()).unwrap();
        let port = server.local_addr().unwrap().port();
        let mut client = bind("127.0.0.1:0").unwrap();
        let client_addr = client.local_addr().unwrap();

        send(&mut client, (Ipv4Addr::LOCALHOST, port).into(), b"hello", None);
        let (meta, data) = receive(&mut server, 1).pop().unwrap();
        assert_eq!(&data[..], b"hello");
        assert_eq!(meta.remote, client_addr, "reported as IPv4");
        if let Some(ip) = meta.local_ip {
            assert_eq!(ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }

        send(&mut server, meta.remote, b"hi", None);
        let (meta, data) = receive(&mut client, 1).pop().unwrap();
        assert_eq!(&data[..], b"hi");
        assert_eq!(meta.remote, (Ipv4Addr::LOCALHOST, port).into());
        assert_eq!(server.stats().send_errors, 0);
    }

    #[test]
    fn send_error_is_counted_and_buffer_returned() {
        let mut a = bind("127.0.0.1:0").unwrap();
        // An IPv6 destination on an IPv4 socket cannot be sent to.
        let v6: SocketAddr = (Ipv6Addr::LOCALHOST, 9).into();
        send(&mut a, v6, b"nowhere", None);
        send(&mut a, v6, b"nowhere again", None);
        let stats = a.stats();
        assert_eq!(stats.send_errors, 2);
        assert_eq!(stats.datagrams_sent, 0);
        assert_eq!(a.tx.free_count(), config().tx_buffers);
        assert!(a.pending.is_empty());
    }

    #[test]
    fn sending_does_not_end_the_next_sleep() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let b = bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        for i in 0..5 {
            send(&mut a, b_addr, &payload(i, 100), None);
        }
        let start = Instant::now();
        let mut calls = 0;
        a.turn(Some(start + Duration::from_millis(200)), &mut |_, _| calls += 1)
            .unwrap();
        assert_eq!(calls, 0);
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "turn returned early after {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn blocked_sends_wait_in_order_for_the_writable_edge() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap();
        // Pretend the last send hit WouldBlock (loopback never pushes back).
        a.writable = false;
        for i in 1..=3u8 {
            send(&mut a, b_addr, &payload(i, 100 * usize::from(i)), None);
        }
        assert_eq!(a.pending.len(), 3);
        assert_eq!(a.tx.free_count(), config().tx_buffers - 3);
        assert!(a.write_interest);
        assert_eq!(a.stats().datagrams_sent, 0);

        // The socket is writable, so registering interest produces an edge at once.
        let start = Instant::now();
        a.turn(Some(start + MAX_WAIT), &mut |_, _| {}).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1), "no writable edge");
        assert!(a.pending.is_empty());
        assert!(!a.write_interest);
        assert_eq!(a.tx.free_count(), config().tx_buffers);
        assert_eq!(a.stats().datagrams_sent, 3);

        let lens: Vec<usize> = receive(&mut b, 3).iter().map(|(_, d)| d.len()).collect();
        assert_eq!(lens, [100, 200, 300]);
    }

    #[test]
    fn leftover_readable_data_is_received_without_sleeping() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut cfg = config();
        cfg.recv_buffers = 1;
        let mut b = PollBackend::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg).unwrap();
        b.max_recv_calls = 1;
        let b_addr = b.local_addr().unwrap();
        // Different sizes, so that GRO cannot coalesce them.
        for i in 1..=5u8 {
            send(&mut a, b_addr, &payload(i, usize::from(i) * 100), None);
        }
        let mut received = Vec::new();
        for _ in 0..20 {
            if received.len() == 5 {
                break;
            }
            let start = Instant::now();
            b.turn(Some(start + Duration::from_secs(3)), &mut |_, data| {
                received.push(data.len())
            })
            .unwrap();
            assert!(start.elapsed() < Duration::from_secs(1), "turn slept");
        }
        assert_eq!(received, [100, 200, 300, 400, 500]);
    }

    #[test]
    fn deadline_in_the_past_does_not_sleep() {
        let mut backend = bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let past = start.checked_sub(Duration::from_secs(1)).unwrap_or(start);
        backend.turn(Some(past), &mut |_, _| {}).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn receive_memory_holds_a_gro_batch() {
        let backend = bind("127.0.0.1:0").unwrap();
        let cfg = config();
        let slot = backend.rx.buf_size();
        assert!(slot > cfg.max_udp_payload && slot <= MAX_RECV_BUFFER.max(cfg.recv_buffer_size));
        let gro = backend.state.as_ref().map_or(1, |s| s.gro_segments()) * cfg.max_udp_payload;
        assert!(slot >= gro.min(MAX_RECV_BUFFER));
        assert_eq!(
            backend.recv_memory(),
            cfg.recv_buffers.clamp(1, BATCH_SIZE) * slot
        );
    }

    /// A GRO batch of at least `zero_copy_min` bytes goes on in the very buffer the kernel
    /// filled, split per datagram; a small receive is copied per datagram into allocations of
    /// its own; over the budget a batch is copied too, and lending resumes once the lent
    /// buffer's pieces are dropped.
    #[test]
    fn a_gro_batch_is_lent_in_its_receive_buffer_within_the_budget() {
        let mut cfg = IoConfig::for_tests(4, 64 * 1024, 8, 64 * 1024);
        cfg.zero_copy_min = 16 * 1024;
        // One buffer may be lent at a time.
        cfg.recv_memory_budget = 64 * 1024;
        let mut b = PollBackend::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg).unwrap();
        assert_eq!(b.rx.buf_size(), 64 * 1024);
        if b.state.as_ref().map_or(1, |s| s.gro_segments()) < 20 {
            // Linux has had UDP GRO since 5.0; elsewhere quinn-udp may not offer it.
            if cfg!(target_os = "linux") {
                panic!("no UDP GRO on Linux");
            }
            eprintln!("skipped: this socket has no UDP GRO, so no receive holds a batch");
            return;
        }
        let mut a = PollBackend::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), &cfg).unwrap();
        let b_addr = b.local_addr().unwrap();
        let batch: Vec<u8> = (0..20u8).flat_map(|i| payload(i * 10, 1200)).collect();

        // Where the next receive lands (one message: the first buffer); compared, never read.
        let slot0 = b.rx.initialised_mut().next().unwrap().as_ptr() as usize;
        send(&mut a, b_addr, &batch, Some(1200));
        let first = receive(&mut b, 20);
        assert_eq!(b.stats().recv_zero_copy, 1, "one receive, lent");
        assert_eq!(
            first[0].1.as_ptr() as usize,
            slot0,
            "lent in the buffer the kernel filled"
        );
        assert_ne!(
            b.rx.initialised_mut().next().unwrap().as_ptr() as usize,
            slot0,
            "another buffer took its place"
        );
        assert_eq!(b.stats().recv_buffers_lent, 1);
        // Addresses compared only: the datagrams lie back to back in one buffer, in order.
        let base = first[0].1.as_ptr() as usize;
        for (i, (_, d)) in first.iter().enumerate() {
            assert_eq!(
                d.as_ptr() as usize - base,
                i * 1200,
                "datagram {i} is a slice of the buffer"
            );
            assert_eq!(&d[..], &batch[i * 1200..(i + 1) * 1200]);
        }

        // The budget is used: the next batch is copied, each datagram on its own.
        send(&mut a, b_addr, &batch, Some(1200));
        let second = receive(&mut b, 20);
        assert_eq!(b.stats().recv_zero_copy, 1, "over the budget: copied");
        assert!(second.iter().all(|(_, d)| d.capacity() == 1200));
        assert!(second.iter().zip(&first).all(|((_, x), (_, y))| x == y));

        // A small receive is copied whatever the budget.
        send(&mut a, b_addr, b"small", None);
        let small = receive(&mut b, 1);
        assert_eq!((&small[0].1[..], small[0].1.capacity()), (&b"small"[..], 5));

        // Every piece of the lent buffer dropped: it comes back and lending resumes.
        drop(first);
        send(&mut a, b_addr, &batch, Some(1200));
        let third = receive(&mut b, 20);
        assert_eq!(b.stats().recv_zero_copy, 2, "lent again");
        assert_eq!(b.stats().recv_buffers_lent, 1);
        assert!(third.iter().zip(&second).all(|((_, x), (_, y))| x == y));
    }

    /// `rebind` serves the new socket at once and closes the old one (its port is free at once:
    /// nothing is in flight between system calls); sends waiting for a writable socket go out
    /// on the new one, from its address.
    #[test]
    fn rebind_moves_waiting_sends_to_the_new_socket_and_frees_the_old_port() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        let old = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        // Sends parked as if the old socket had hit WouldBlock.
        a.writable = false;
        for i in 1..=2u8 {
            send(&mut a, b_addr, &payload(i, 100), None);
        }
        assert_eq!(a.pending.len(), 2);
        let fresh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let new = fresh.local_addr().unwrap();
        assert_eq!(a.rebind(fresh).unwrap(), new);
        assert_eq!(a.local_addr().unwrap(), new);
        std::net::UdpSocket::bind(old).expect("the old port is free at once");
        a.turn(Some(Instant::now() + MAX_WAIT), &mut |_, _| {}).unwrap();
        assert!(a.pending.is_empty());
        let got = receive(&mut b, 2);
        assert!(
            got.iter().all(|(m, _)| m.remote == new),
            "sent from the new socket"
        );
        // And the new socket receives.
        send(&mut b, new, b"to the new socket", None);
        let (_, d) = receive(&mut a, 1).pop().unwrap();
        assert_eq!(&d[..], b"to the new socket");
        let s = a.stats();
        assert_eq!((s.rebinds, s.rebinds_failed, s.send_errors), (1, 0, 0));
        assert_eq!(a.tx.free_count(), config().tx_buffers);
    }

    /// A rebind from an IPv4 socket to a dual-stack one puts waiting sends' addresses in the
    /// new family; they still arrive.
    #[test]
    fn rebind_to_another_family_readdresses_waiting_sends() {
        let Some(socket) = dual_stack_socket() else {
            return;
        };
        let mut a = bind("127.0.0.1:0").unwrap();
        let mut b = bind("127.0.0.1:0").unwrap();
        a.writable = false;
        send(&mut a, b.local_addr().unwrap(), b"queued on v4", None);
        let port = a.rebind(socket.into()).unwrap().port();
        a.turn(Some(Instant::now() + MAX_WAIT), &mut |_, _| {}).unwrap();
        let (meta, d) = receive(&mut b, 1).pop().unwrap();
        assert_eq!(&d[..], b"queued on v4");
        assert_eq!(meta.remote, (Ipv4Addr::LOCALHOST, port).into());
        assert_eq!(a.stats().send_errors, 0);
    }

    #[test]
    fn shutdown_returns_buffers_and_drops_sends() {
        let mut a = bind("127.0.0.1:0").unwrap();
        let b_addr = bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let held = a.take_tx().unwrap();
        a.shutdown();
        send(&mut a, b_addr, b"after shutdown", None);
        assert_eq!(a.stats().datagrams_sent, 0);
        a.put_tx(held);
        assert_eq!(a.tx.free_count(), config().tx_buffers);
        // A turn after shutdown still honours its deadline.
        let deadline = Instant::now() + Duration::from_millis(10);
        a.turn(Some(deadline), &mut |_, _| {}).unwrap();
        a.shutdown();
    }
}
