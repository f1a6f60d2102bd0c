//! The protocol side of the I/O thread's turn: the `quinn_proto::Endpoint` and every
//! connection's protocol work (the follow-up to the seed's design: connections driven on the
//! I/O thread, next to the socket).
//!
//! [`Core`] is everything of the I/O thread but its backend: commands from the application,
//! routing received datagrams through the endpoint to their connections, admitting new ones,
//! timers, driving each dirty connection (timers, events, transmits into TX buffers), the
//! endpoint's own responses, and the flush of CONNECTION_CLOSEs at shutdown. The loop in
//! `driver.rs` calls it around the backend's wait; what it learns that the application must
//! hear, it says through the shared state's methods (`shared.rs`).

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc, MutexGuard},
    task::Waker,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn_proto::{self as proto, ConnectionHandle, DatagramEvent};
use tracing::{debug, warn};

use crate::{
    dgramflow::Admit,
    handles::{HandleMap, HandleSet},
    handoff,
    io::{IoBackend, RecvMeta},
    shared::{
        AcceptReply, Command, ConnState, ConnectionInner, EndpointShared, Offer, ShardLink,
        MAX_FORWARDED_QUEUED,
    },
    wakers::wake_all,
    ConnectionError, EndpointIoStats, TransportError, TransportErrorCode,
};

/// Endpoint-level responses (version negotiation, stateless resets, refusals, …) kept for
/// sending; more are dropped and counted, as a stateless responder should under flood.
const MAX_PENDING_RESPONSES: usize = 64;

/// The `quinn_proto::Endpoint`, owned by the I/O thread, with the responses it produces.
struct ProtoEndpoint {
    inner: proto::Endpoint,
    /// Responses to send (bounded by [`MAX_PENDING_RESPONSES`]).
    responses: VecDeque<(Vec<u8>, proto::Transmit)>,
    responses_dropped: u64,
    /// Scratch space quinn-proto writes responses into.
    buf: Vec<u8>,
}

impl ProtoEndpoint {
    /// Queue the response quinn-proto wrote into `self.buf`, or count it dropped if the queue
    /// is full.
    fn queue_response(&mut self, t: proto::Transmit) {
        if self.responses.len() < MAX_PENDING_RESPONSES {
            self.responses.push_back((self.buf[..t.size].to_vec(), t));
        } else {
            self.responses_dropped += 1;
        }
        self.buf.clear();
    }
}

/// GSO batches one connection may send per turn before others get their go.
pub(crate) const MAX_TRANSMITS_PER_DRIVE: usize = 16;

/// How long shutdown keeps turning the loop so every connection's CONNECTION_CLOSE goes out
/// (with few TX buffers and many connections that takes several turns).
const SHUTDOWN_FLUSH_TIME: Duration = Duration::from_millis(500);

/// The closing period a connection gets from the moment its CONNECTION_CLOSE actually went
/// out: about three PTOs, estimated from the smoothed RTT and the default 25 ms ACK delay
/// (quinn-proto does not expose its PTO).
///
/// quinn-proto starts the period (its close timer) when the application closes. If the I/O
/// thread gets to the connection late, or a TX buffer was short, the close goes out after the
/// timer is already due, and the connection would be forgotten at once; the peer's answer, or a
/// packet it sent before it heard the close, would then draw a stateless reset, which replaces
/// the close as the reason the peer reports when both arrive together (quinn-proto keeps the
/// last). Holding the timer this long after the send keeps the period RFC 9000 §10.2 asks for.
fn closing_period(rtt: Duration) -> Duration {
    3 * (rtt + rtt / 2 + Duration::from_millis(25))
}

/// The shard (of `shards`) a datagram's destination connection ID names, read as the kernel's
/// steering program reads it (`io::steer`): the octet at `offset` of the DCID, short header or
/// long, modulo the number of shards; `None` where the datagram does not hold it (it is
/// handled where it arrived, as the kernel's hash placed it).
fn shard_of(datagram: &[u8], offset: usize, shards: usize) -> Option<usize> {
    let first = *datagram.first()?;
    let octet = if first & 0x80 == 0 {
        *datagram.get(1 + offset)?
    } else {
        if usize::from(*datagram.get(5)?) <= offset {
            return None;
        }
        *datagram.get(6 + offset)?
    };
    Some(usize::from(octet) % shards.max(1))
}

/// Queue `ch` to be driven this turn, once.
fn mark_dirty(dirty: &mut VecDeque<ConnectionHandle>, in_dirty: &mut HandleSet, ch: ConnectionHandle) {
    if in_dirty.insert(ch) {
        dirty.push_back(ch);
    }
}

/// Remember when `ch`'s held packets must be fed in at the latest (`dgramflow.rs`).
fn note_hold(held_until: &mut HandleMap<Instant>, ch: ConnectionHandle, until: Option<Instant>) {
    match until {
        Some(t) => {
            held_until.insert(ch, t);
        }
        None => {
            held_until.remove(&ch);
        }
    }
}

/// One connection's lock, held while a run of its received events is handed to it
/// ([`Core::route_received`]).
struct Run<'a> {
    ch: ConnectionHandle,
    st: MutexGuard<'a, ConnState>,
    now: Instant,
    /// Only a connection whose application reads datagrams is paced (`dgramflow.rs`).
    paced: bool,
}

impl<'a> Run<'a> {
    fn start(ch: ConnectionHandle, conn: &'a ConnectionInner) -> Self {
        let st = conn.lock();
        let now = Instant::now();
        let paced = st.dgram_flow.reading(now) || st.dgram_flow.holding();
        Self { ch, st, now, paced }
    }

    fn feed(&mut self, ev: proto::ConnectionEvent, stats: &mut EndpointIoStats) {
        let st = &mut *self.st;
        if !self.paced {
            st.inner.handle_event(ev);
            return;
        }
        // The count of DATAGRAM frames is read before every packet: a turn's run of packets for
        // one connection can be hundreds long, and a count read once per run let quinn-proto's
        // buffer overflow (10% lost in the bench, against 0.2%).
        let received = st.inner.stats().frame_rx.datagram;
        match st.dgram_flow.admit(ev, received, self.now) {
            Admit::Process(ev) => {
                for held in st.dgram_flow.take_held() {
                    st.inner.handle_event(held);
                }
                st.inner.handle_event(ev);
            }
            Admit::Held => {}
            Admit::Dropped => stats.datagram_backpressure_drops += 1,
        }
    }

    /// The run is over: the lock is released and the connection queued to be driven.
    fn finish(
        self,
        dirty: &mut VecDeque<ConnectionHandle>,
        in_dirty: &mut HandleSet,
        held_until: &mut HandleMap<Instant>,
    ) {
        let hold = self.st.dgram_flow.deadline();
        drop(self.st);
        note_hold(held_until, self.ch, hold);
        mark_dirty(dirty, in_dirty, self.ch);
    }
}

/// Hand a datagram to the shard that owns its connection: through that shard's mailbox, which
/// wakes it. Bounded by [`MAX_FORWARDED_QUEUED`] per target; past it, or if the target has
/// exited, the datagram is dropped and counted.
fn forward(link: &ShardLink, owner: usize, meta: RecvMeta, data: BytesMut, stats: &mut EndpointIoStats) {
    let Some(target) = link.peers.get(owner).and_then(|w| w.upgrade()) else {
        stats.forward_drops += 1;
        return;
    };
    if target.forwarded_queued.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDED_QUEUED {
        target.forwarded_queued.fetch_sub(1, Ordering::AcqRel);
        stats.forward_drops += 1;
        return;
    }
    match target.mailbox.push(Command::Forwarded(meta, data)) {
        Ok(()) => stats.forwarded_out += 1,
        Err(_) => {
            target.forwarded_queued.fetch_sub(1, Ordering::AcqRel);
            stats.forward_drops += 1;
        }
    }
}

/// How new incoming connections are admitted, before the application sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// Answer every incoming connection whose address is not yet validated with a Retry.
    pub validate_addresses: bool,
    /// Most incoming connections waiting for `accept` plus accepted ones still handshaking;
    /// more are refused.
    pub max_incoming: usize,
}

/// What a `Connecting` reports for a connect quinn-proto refused on the I/O thread (the checks
/// `Endpoint::connect_with` can make itself never get here).
fn connect_failed(e: proto::ConnectError) -> ConnectionError {
    match e {
        proto::ConnectError::EndpointStopping => ConnectionError::LocallyClosed,
        proto::ConnectError::CidsExhausted => ConnectionError::CidsExhausted,
        proto::ConnectError::UnsupportedVersion => ConnectionError::VersionMismatch,
        other => internal_error(format!("connect refused: {other}")),
    }
}

/// The error connections see when the endpoint failed under them (not a close of theirs).
pub(crate) fn internal_error(reason: String) -> ConnectionError {
    ConnectionError::TransportError(TransportError {
        code: TransportErrorCode::INTERNAL_ERROR,
        frame: None,
        reason,
    })
}

/// Capacity of the received-datagram queue kept between turns (a few GRO batches' worth).
const MAX_RETAINED_EVENTS: usize = 1024;

/// Everything but the backend, so the receive callback can borrow it while the backend runs.
pub(crate) struct Core {
    shared: Arc<EndpointShared>,
    ep: ProtoEndpoint,
    conns: HandleMap<Arc<ConnectionInner>>,
    /// Each connection's next timeout. Scanned linearly each turn: the protocol work per
    /// connection dwarfs it at the connection counts one endpoint serves.
    timers: HandleMap<Instant>,
    dirty: VecDeque<ConnectionHandle>,
    in_dirty: HandleSet,
    /// Connections that found every TX buffer in flight, each once (`in_waiting_tx`).
    waiting_tx: Vec<ConnectionHandle>,
    in_waiting_tx: HandleSet,
    /// This turn's datagrams, routed through the endpoint after the wait under one lock.
    rx: Vec<(RecvMeta, BytesMut)>,
    /// New connection attempts from this turn's datagrams, admitted after routing.
    incoming: Vec<proto::Incoming>,
    woken: Vec<Waker>,
    max_segments: usize,
    admission: Admission,
    /// Server-side connections accepted whose handshake has not completed.
    handshaking: HandleSet,
    /// Shutdown: closed connections whose CONNECTION_CLOSE has not gone out yet.
    awaiting_close: HandleSet,
    /// Closed connections whose CONNECTION_CLOSE went out and whose peer has not answered with
    /// its own yet, in their closing period: shutdown waits for them (a peer that goes on
    /// sending has not heard the close, and quinn-proto answers each of its packets with the
    /// close again).
    unanswered: HandleSet,
    /// Closed connections whose CONNECTION_CLOSE has gone out, and the time before which
    /// their close timer does not run ([`closing_period`]).
    close_floor: HandleMap<Instant>,
    /// The other shards, if this endpoint is one shard of a sharded one.
    shard: Option<ShardLink>,
    /// Set once the last handle is gone: the loop goes on until every close is out, or until
    /// this time (see [`Core::begin_shutdown`]).
    flush_until: Option<Instant>,
    stats: EndpointIoStats,
    /// Reused for [`Handoff::take_changed`](crate::handoff::Handoff::take_changed).
    sent_directly: Vec<ConnectionHandle>,
    /// When connections sent for directly were last taken.
    direct_seen: Option<Instant>,
    /// Connections holding packets back (`dgramflow.rs`), and until when at the latest.
    held_until: HandleMap<Instant>,
    /// The builder's `app_thread_sends`: a rebind gives application threads a new sender.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    app_thread_sends: bool,
}

impl Core {
    pub(crate) fn new(
        shared: Arc<EndpointShared>,
        endpoint: proto::Endpoint,
        max_segments: usize,
        admission: Admission,
        app_thread_sends: bool,
    ) -> Self {
        Self {
            shared,
            ep: ProtoEndpoint {
                inner: endpoint,
                responses: VecDeque::new(),
                responses_dropped: 0,
                buf: Vec::new(),
            },
            conns: HandleMap::default(),
            timers: HandleMap::default(),
            dirty: VecDeque::new(),
            in_dirty: HandleSet::default(),
            waiting_tx: Vec::new(),
            in_waiting_tx: HandleSet::default(),
            rx: Vec::new(),
            incoming: Vec::new(),
            woken: Vec::new(),
            max_segments,
            admission,
            handshaking: HandleSet::default(),
            awaiting_close: HandleSet::default(),
            unanswered: HandleSet::default(),
            close_floor: HandleMap::default(),
            shard: None,
            flush_until: None,
            stats: EndpointIoStats::default(),
            sent_directly: Vec::new(),
            direct_seen: None,
            held_until: HandleMap::default(),
            app_thread_sends,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<EndpointShared> {
        &self.shared
    }

    /// The first half of a turn, before the wait: the application's commands, then every dirty
    /// connection, then the endpoint's responses; the counters are published.
    pub(crate) fn begin_turn(&mut self, commands: &mut VecDeque<Command>, io: &mut dyn IoBackend) {
        self.stats.loop_turns += 1;
        self.take_commands(commands, io);
        self.drive_dirty(io);
        if !self.ep.responses.is_empty() {
            // A refusal counted in `incoming_refused` is visible before the peer can hear it.
            self.publish_stats(io);
        }
        self.send_responses(io);
        self.publish_stats(io);
    }

    /// A datagram the backend received during the wait, routed after it.
    pub(crate) fn receive(&mut self, meta: RecvMeta, data: BytesMut) {
        self.rx.push((meta, data));
    }

    /// The second half of a turn, after the wait: route what was received, mark connections
    /// whose timer is due, and those that waited for a TX buffer if one is free now.
    pub(crate) fn end_turn(&mut self, io: &mut dyn IoBackend) {
        self.route_received();
        self.expire_timers();
        self.retry_waiting_tx(io);
    }

    /// Connections are waiting to be driven.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Datagrams received and not routed yet.
    pub(crate) fn has_received(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Connections are waiting for a free TX buffer.
    pub(crate) fn waits_for_tx(&self) -> bool {
        !self.waiting_tx.is_empty()
    }

    /// The earliest connection timer.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let timers = self.timers.values().min().copied();
        let held = self.held_until.values().min().copied();
        match (timers, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Remember when `ch`'s held packets must be fed in at the latest (`dgramflow.rs`).
    fn note_hold(&mut self, ch: ConnectionHandle, until: Option<Instant>) {
        note_hold(&mut self.held_until, ch, until);
    }

    /// Shutting down: when the flush of closes gives up.
    pub(crate) fn flush_deadline(&self) -> Option<Instant> {
        self.flush_until
    }

    /// Connections whose CONNECTION_CLOSE has not gone out yet.
    pub(crate) fn closes_unsent(&self) -> usize {
        self.awaiting_close.len()
    }

    /// The loop is over: every connection fails with `reason` (its waiters woken) and is
    /// forgotten.
    pub(crate) fn fail_all(&mut self, reason: ConnectionError) {
        let mut woken = Vec::new();
        for conn in self.conns.values() {
            conn.lock().terminate(reason.clone(), &mut woken);
        }
        self.conns.clear();
        self.unanswered = HandleSet::default();
        self.close_floor.clear();
        wake_all(woken);
    }

    fn take_commands(&mut self, commands: &mut VecDeque<Command>, io: &mut dyn IoBackend) {
        self.shared.mailbox.drain(commands);
        while let Some(cmd) = commands.pop_front() {
            self.command(cmd, io);
        }
        self.take_sent_directly();
    }

    /// Connections application threads sent for since the last turn are driven now: their
    /// timers changed (and quinn-proto may have events for the I/O thread).
    fn take_sent_directly(&mut self) {
        let mut changed = std::mem::take(&mut self.sent_directly);
        // Flushes their runtime has not run in time: the I/O thread sends for them, and the
        // next write schedules a flush again.
        let now = Instant::now();
        let handoff = &self.shared.handoff;
        handoff.take_overdue(now, &mut changed);
        for &ch in &changed {
            let Some(conn) = self.conns.get(&ch) else {
                continue;
            };
            conn.flush_listed.store(false, Ordering::Release);
            if !conn.flush_scheduled.load(Ordering::Acquire) {
                // Its flush ran.
                continue;
            }
            let since = handoff.instant(conn.flush_since.load(Ordering::Acquire));
            if now.saturating_duration_since(since) < handoff::FLUSH_GRACE {
                // A newer flush, not overdue yet.
                if !conn.flush_listed.swap(true, Ordering::AcqRel) {
                    handoff.relist(ch, since);
                }
            } else if conn.flush_scheduled.swap(false, Ordering::AcqRel) && self.in_dirty.insert(ch) {
                self.dirty.push_back(ch);
            }
        }
        changed.clear();
        self.shared.handoff.take_changed(&mut changed);
        if !changed.is_empty() {
            self.direct_seen = Some(now);
        }
        for ch in changed.drain(..) {
            if let Some(conn) = self.conns.get(&ch) {
                conn.changed.store(false, Ordering::Release);
                self.mark_dirty(ch);
            }
        }
        self.sent_directly = changed;
    }

    /// Whether application threads sent directly lately ([`handoff::DIRECT_ACTIVE`]): the
    /// I/O thread then sleeps at most [`handoff::DIRECT_TICK`].
    pub(crate) fn direct_active(&self, now: Instant) -> bool {
        self.direct_seen
            .is_some_and(|t| now.saturating_duration_since(t) < handoff::DIRECT_ACTIVE)
    }

    /// The number of the turn under way (sends it queues are submitted in its wait).
    pub(crate) fn turn(&self) -> u64 {
        self.stats.loop_turns
    }

    /// A connection the I/O thread just created (connect or accept) joins the tables, is
    /// driven this turn (a client sends its Initial), and goes to its waiting `Connecting`.
    fn add_connection(
        &mut self,
        ch: ConnectionHandle,
        conn: proto::Connection,
        accepted: bool,
        reply: AcceptReply,
    ) {
        let inner = ConnectionInner::new(ch, conn, self.shared.clone());
        if accepted {
            self.handshaking.insert(ch);
            self.stats.handshakes.accepted_handshakes += 1;
        } else {
            self.stats.handshakes.outgoing_handshakes += 1;
        }
        self.conns.insert(ch, inner.clone());
        self.mark_dirty(ch);
        self.shared.set_open_connections(self.conns.len());
        reply.complete(Ok(inner));
    }

    fn drive_dirty(&mut self, io: &mut dyn IoBackend) {
        // Drive only the connections dirty at the start of this phase; ones marked again while
        // driving (bound reached) wait for the next turn.
        let n = self.dirty.len();
        for _ in 0..n {
            let Some(ch) = self.dirty.pop_front() else {
                break;
            };
            self.in_dirty.remove(&ch);
            self.drive(ch, io);
        }
    }

    /// Connections waiting for a TX buffer are driven again once one is free.
    fn retry_waiting_tx(&mut self, io: &mut dyn IoBackend) {
        if self.waiting_tx.is_empty() || !io.has_free_tx() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting_tx);
        for ch in waiting.drain(..) {
            self.in_waiting_tx.remove(&ch);
            self.mark_dirty(ch);
        }
        self.waiting_tx = waiting;
    }

    /// The last handle is gone: close every connection and let the loop go on (at most
    /// [`SHUTDOWN_FLUSH_TIME`]) until each one's CONNECTION_CLOSE has gone out, however few TX
    /// buffers there are, and has been answered by the peer's own close or reached the end of
    /// its closing period. The loop keeps processing received datagrams meanwhile: a peer that
    /// goes on sending has not heard the close, and quinn-proto answers it with the close again.
    /// (quinn-proto 0.11.19 as released held a close back by congestion control for good when
    /// the window was full; the workspace builds it with that fixed, vendor/README.md.)
    fn begin_shutdown(&mut self) {
        if self.flush_until.is_some() {
            return;
        }
        self.flush_until = Some(Instant::now() + SHUTDOWN_FLUSH_TIME);
        self.close_all(
            proto::VarInt::from_u32(0),
            bytes::Bytes::from_static(b"endpoint dropped"),
        );
        for (ch, conn) in self.conns.iter() {
            let ours = conn.lock().closed_locally();
            if ours && self.close_floor.get(&ch).is_none() {
                self.awaiting_close.insert(ch);
            }
        }
    }

    /// Whether shutdown still has closes to get out: connections to drive, waiting for a TX
    /// buffer, or whose close has not been sent, or sends the backend has not handed to the
    /// kernel yet.
    pub(crate) fn closes_pending(&self, io: &dyn IoBackend) -> bool {
        !self.dirty.is_empty()
            || !self.waiting_tx.is_empty()
            || self.awaiting_close.len() > 0
            || self.unanswered.len() > 0
            || io.sends_waiting()
    }

    /// Connections whose close went out and whose peer has neither answered it nor let the
    /// closing period end: shutdown waits for them too (at most [`SHUTDOWN_FLUSH_TIME`]), so a
    /// lost close can still be sent again.
    pub(crate) fn closes_unanswered(&self) -> usize {
        self.unanswered.len()
    }

    fn shutting_down(&self) -> bool {
        self.flush_until.is_some()
    }

    fn send_responses(&mut self, io: &mut dyn IoBackend) {
        self.stats.responses_dropped += std::mem::take(&mut self.ep.responses_dropped);
        while let Some((bytes, t)) = self.ep.responses.pop_front() {
            match io.take_tx() {
                Some(mut tx) => {
                    tx.buf.extend_from_slice(&bytes[..t.size]);
                    io.send(tx, &t);
                }
                None => {
                    self.stats.responses_dropped += 1 + self.ep.responses.len() as u64;
                    self.ep.responses.clear();
                }
            }
        }
    }

    pub(crate) fn publish_stats(&self, io: &dyn IoBackend) {
        let c = &self.stats;
        self.shared.publish_stats(EndpointIoStats {
            responses_dropped: c.responses_dropped,
            incoming_retried: c.incoming_retried,
            incoming_refused: c.incoming_refused,
            loop_turns: c.loop_turns,
            datagram_backpressure_drops: c.datagram_backpressure_drops,
            closes_repeated: c.closes_repeated,
            forwarded_out: c.forwarded_out,
            forwarded_in: c.forwarded_in,
            forward_drops: c.forward_drops,
            unsteered_shards: c.unsteered_shards,
            open_connections: self.conns.len() as u64,
            handshakes: c.handshakes,
            // The backend's counters; the application's wakeups are added when read.
            ..io.stats()
        });
    }

    /// Route this turn's datagrams through the endpoint, handing each connection event to its
    /// connection as it comes out, then admit the new connection attempts among them.
    ///
    /// Connection state lives behind a mutex the application also takes, so a run of events
    /// for one connection (a GRO batch is ~40 datagrams) is handed over under one lock, held
    /// while the endpoint decodes the next datagram. The events are not queued first: each is
    /// 216 bytes, and a queue of them cost the receiving thread 6% of its samples in the
    /// `streams` bench in copies and page faults (docs/PERFORMANCE.md).
    fn route_received(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut rx = std::mem::take(&mut self.rx);
        self.route(now, &mut rx);
        if rx.capacity() > MAX_RETAINED_EVENTS {
            rx.shrink_to(MAX_RETAINED_EVENTS);
        }
        self.rx = rx;
        let mut incoming = std::mem::take(&mut self.incoming);
        for inc in incoming.drain(..) {
            self.admit(inc);
        }
        self.incoming = incoming;
    }

    /// [`Core::route_received`]'s loop: every datagram through the endpoint, each connection's
    /// run of events under one lock.
    fn route(&mut self, now: Instant, rx: &mut Vec<(RecvMeta, BytesMut)>) {
        let Self {
            conns,
            ep,
            shard,
            stats,
            incoming,
            dirty,
            in_dirty,
            held_until,
            ..
        } = self;
        let mut run: Option<Run<'_>> = None;
        for (meta, data) in rx.drain(..) {
            if let Some(link) = shard {
                if let Some(owner) = shard_of(&data, link.shard_offset, link.peers.len()) {
                    if owner != link.index {
                        // Not under a connection's lock: the target's mailbox has a lock of its own.
                        if let Some(done) = run.take() {
                            done.finish(dirty, in_dirty, held_until);
                        }
                        forward(link, owner, meta, data, stats);
                        continue;
                    }
                }
            }
            match ep
                .inner
                .handle(now, meta.remote, meta.local_ip, meta.ecn, data, &mut ep.buf)
            {
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                    if run.as_ref().is_none_or(|r| r.ch != ch) {
                        if let Some(done) = run.take() {
                            done.finish(dirty, in_dirty, held_until);
                        }
                        // An event for a connection already forgotten is dropped.
                        run = conns.get(&ch).map(|conn| Run::start(ch, conn));
                    }
                    if let Some(r) = &mut run {
                        r.feed(ev, stats);
                    }
                }
                Some(DatagramEvent::NewConnection(inc)) => incoming.push(inc),
                Some(DatagramEvent::Response(t)) => ep.queue_response(t),
                None => {}
            }
            ep.buf.clear();
        }
        if let Some(done) = run {
            done.finish(dirty, in_dirty, held_until);
        }
    }

    /// `ch` is closed and has just transmitted `sent` times, or waits for its peer's answer.
    /// A closed connection transmits nothing but its CONNECTION_CLOSE (and ACKs): a first one,
    /// or the same again in answer to a peer that went on sending (RFC 9000 §10.2.1; quinn-proto
    /// answers every such packet), or, draining, the one answer to the peer's close.
    fn note_close(&mut self, ch: ConnectionHandle, conn: &proto::Connection, sent: usize, now: Instant) {
        let answered = conn.stats().frame_rx.connection_close > 0;
        if sent > 0 {
            if self.close_floor.get(&ch).is_some() {
                self.stats.closes_repeated += sent as u64;
            } else {
                self.close_floor.insert(ch, now + closing_period(conn.rtt()));
                if !answered {
                    self.unanswered.insert(ch);
                }
            }
            self.awaiting_close.remove(&ch);
        }
        if answered {
            self.unanswered.remove(&ch);
        }
    }

    fn mark_dirty(&mut self, ch: ConnectionHandle) {
        mark_dirty(&mut self.dirty, &mut self.in_dirty, ch);
    }

    /// Decide what happens to a new incoming connection: Retry it (address validation), refuse
    /// it (closed, shutting down, or over the cap), or queue it for `accept`.
    fn admit(&mut self, incoming: proto::Incoming) {
        let ep = &mut self.ep;
        if self.admission.validate_addresses && !incoming.remote_address_validated() && incoming.may_retry() {
            self.stats.incoming_retried += 1;
            match ep.inner.retry(incoming, &mut ep.buf) {
                Ok(t) => ep.queue_response(t),
                Err(e) => ep.inner.ignore(e.into_incoming()),
            }
            return;
        }
        let refused = if self.flush_until.is_some() {
            incoming
        } else {
            let room = self.admission.max_incoming.saturating_sub(self.handshaking.len());
            match self.shared.offer_incoming(incoming, room) {
                Offer::Queued => return,
                Offer::Closed(incoming) => incoming,
                Offer::Full(incoming) => {
                    self.stats.incoming_refused += 1;
                    incoming
                }
            }
        };
        let t = ep.inner.refuse(refused, &mut ep.buf);
        ep.queue_response(t);
    }

    /// Mark every connection whose timer is due. No allocation: this runs every turn.
    fn expire_timers(&mut self) {
        let now = Instant::now();
        for (ch, t) in self.timers.iter().chain(self.held_until.iter()) {
            if *t <= now && self.in_dirty.insert(ch) {
                self.dirty.push_back(ch);
            }
        }
    }

    fn command(&mut self, cmd: Command, io: &mut dyn IoBackend) {
        match cmd {
            Command::Drive(ch) => {
                if let Some(c) = self.conns.get(&ch) {
                    c.clear_queued();
                    self.mark_dirty(ch);
                }
            }
            Command::Connect {
                config,
                remote,
                server_name,
                reply,
            } => {
                let created = if self.shutting_down() {
                    Err(proto::ConnectError::EndpointStopping)
                } else {
                    self.ep
                        .inner
                        .connect(Instant::now(), config, remote, &server_name)
                };
                match created {
                    Ok((ch, conn)) => self.add_connection(ch, conn, false, reply),
                    Err(e) => reply.complete(Err(connect_failed(e))),
                }
            }
            Command::Accept {
                incoming,
                server_config,
                reply,
            } => {
                let accepted = {
                    let ep = &mut self.ep;
                    let r = ep
                        .inner
                        .accept(incoming, Instant::now(), &mut ep.buf, server_config);
                    match r {
                        Ok(c) => {
                            ep.buf.clear();
                            Ok(c)
                        }
                        Err(e) => {
                            match e.response {
                                Some(t) => ep.queue_response(t),
                                None => ep.buf.clear(),
                            }
                            Err(e.cause)
                        }
                    }
                };
                match accepted {
                    Ok((ch, conn)) => self.add_connection(ch, conn, true, reply),
                    Err(e) => reply.complete(Err(e)),
                }
            }
            Command::Refuse(incoming) => {
                self.stats.handshakes.refused_handshakes += 1;
                let ep = &mut self.ep;
                let t = ep.inner.refuse(incoming, &mut ep.buf);
                ep.queue_response(t);
            }
            Command::Retry(incoming) => {
                let ep = &mut self.ep;
                match ep.inner.retry(incoming, &mut ep.buf) {
                    Ok(t) => ep.queue_response(t),
                    Err(e) => ep.inner.ignore(e.into_incoming()),
                }
            }
            Command::Ignore(incoming) => {
                self.stats.handshakes.ignored_handshakes += 1;
                self.ep.inner.ignore(incoming);
            }
            Command::SetServerConfig(c) => self.ep.inner.set_server_config(c),
            Command::Close { code, reason } => {
                self.close_all(code, reason);
                let ep = &mut self.ep;
                for inc in self.shared.stop_accepting() {
                    let t = ep.inner.refuse(inc, &mut ep.buf);
                    ep.queue_response(t);
                }
            }
            Command::Rebind(socket) => self.rebind(socket, io),
            Command::Shutdown => self.begin_shutdown(),
            Command::JoinShards(link) => {
                self.stats.unsteered_shards = u64::from(!link.steered);
                self.shard = Some(link);
            }
            Command::Forwarded(meta, data) => {
                self.shared.forwarded_queued.fetch_sub(1, Ordering::AcqRel);
                self.stats.forwarded_in += 1;
                self.rx.push((meta, data));
            }
            #[cfg(test)]
            Command::Panic => panic!("injected by a test"),
        }
    }

    /// `Endpoint::rebind`: the backend takes the new socket, then every connection learns that
    /// its local address changed (quinn-proto: a new connection ID and a probe on the new path)
    /// and is driven. If the backend refuses the socket nothing changes (it counted the
    /// failure; one warning here). Ignored at shutdown: the endpoint is going away.
    fn rebind(&mut self, socket: std::net::UdpSocket, io: &mut dyn IoBackend) {
        if self.shutting_down() {
            return;
        }
        let old = io.local_addr().ok();
        match io.rebind(socket) {
            Ok(local) => {
                self.shared.set_local_addr(local);
                #[cfg(target_os = "linux")]
                if self.app_thread_sends {
                    let max = self.max_segments.min(io.max_gso_segments());
                    self.shared.set_direct_sender(io.direct_sender(max));
                }
                let chs: Vec<_> = self.conns.keys().collect();
                for ch in chs {
                    if let Some(conn) = self.conns.get(&ch) {
                        conn.lock().inner.local_address_changed();
                    }
                    self.mark_dirty(ch);
                }
                debug!(?old, new = %local, connections = self.conns.len(), "rebound");
            }
            Err(e) => warn!(
                ?old,
                "Endpoint::rebind: the new socket cannot be used ({e}); staying on the old one"
            ),
        }
    }

    fn close_all(&mut self, code: proto::VarInt, reason: bytes::Bytes) {
        let mut woken = std::mem::take(&mut self.woken);
        let chs: Vec<_> = self.conns.keys().collect();
        for ch in chs {
            if let Some(conn) = self.conns.get(&ch) {
                conn.lock().close(code, reason.clone(), &mut woken);
            }
            self.mark_dirty(ch);
        }
        for w in woken.drain(..) {
            w.wake();
        }
        self.woken = woken;
    }

    /// Drive one connection: timers, events, transmits. Bounded.
    fn drive(&mut self, ch: ConnectionHandle, io: &mut dyn IoBackend) {
        let Some(conn) = self.conns.get(&ch).cloned() else {
            return;
        };
        let mut woken = std::mem::take(&mut self.woken);
        let mut drained = false;
        let mut again = false;
        {
            let mut st = conn.lock();
            // Read the clock under the lock: an application thread may have sent for this
            // connection (`direct.rs`) a moment ago, and quinn-proto's times must not go back.
            let now = Instant::now();
            if st.dgram_flow.holding() {
                let received = st.inner.stats().frame_rx.datagram;
                if st.dgram_flow.due(received, now) {
                    let st = &mut *st;
                    for ev in st.dgram_flow.take_held() {
                        st.inner.handle_event(ev);
                    }
                }
                self.note_hold(ch, st.dgram_flow.deadline());
            }
            let timer_due = self.timers.get(&ch).is_some_and(|t| *t <= now);
            // A connection the application has closed sends its CONNECTION_CLOSE before its
            // timers run: if this thread got to it late (more than three PTOs after the close,
            // on a loaded machine), the close timer would end the closing period first and the
            // peer would hear nothing but an idle timeout. Otherwise timers first, so loss
            // recovery's retransmits go out in this same drive.
            let closing = st.inner.is_closed();
            if timer_due && !closing {
                st.inner.handle_timeout(now);
            }
            // Transmit first: ACKs and data go out before we look at events.
            let mut sent = 0;
            let mut tx_blocked = false;
            loop {
                if sent >= MAX_TRANSMITS_PER_DRIVE {
                    again = true;
                    break;
                }
                let Some(mut tx) = io.take_tx() else {
                    tx_blocked = true;
                    if self.in_waiting_tx.insert(ch) {
                        self.waiting_tx.push(ch);
                    }
                    break;
                };
                // The backend may have turned GSO off at run time: ask it every time.
                let segments = self.max_segments.min(io.max_gso_segments()).max(1);
                match st.inner.poll_transmit(now, segments, &mut tx.buf) {
                    Some(t) => {
                        io.send(tx, &t);
                        sent += 1;
                        // Application threads send for it again once this turn is submitted.
                        st.io_send_turn = self.stats.loop_turns;
                    }
                    None => {
                        io.put_tx(tx);
                        break;
                    }
                }
            }
            if closing && (sent > 0 || self.unanswered.contains(&ch)) {
                self.note_close(ch, &st.inner, sent, now);
            }
            // ... and its timers wait while the close could not go out for want of a TX buffer
            // (the close timer would end the closing period first), or, at shutdown, until it
            // has gone out at all (bounded by the flush's time limit), and then for a closing
            // period counted from when it went out ([`closing_period`]).
            let floor = self.close_floor.get(&ch).copied();
            let hold = tx_blocked || self.awaiting_close.contains(&ch) || floor.is_some_and(|f| now < f);
            if timer_due && closing && !hold {
                st.inner.handle_timeout(now);
            }
            while let Some(ev) = st.inner.poll_endpoint_events() {
                drained |= ev.is_drained();
                let reply = self.ep.inner.handle_event(ch, ev);
                if let Some(cev) = reply {
                    st.inner.handle_event(cev);
                    again = true;
                }
            }
            while let Some(ev) = st.inner.poll() {
                st.on_event(ev, &mut woken);
            }
            st.wake_freed_stopped(&mut woken);
            if !st.inner.is_handshaking() {
                self.handshaking.remove(&ch);
            }
            match st.inner.poll_timeout() {
                Some(t) => {
                    // A held close timer is looked at again when the hold can end, not at once.
                    let t = floor.map_or(t, |f| t.max(f));
                    self.timers.insert(ch, t);
                }
                None => {
                    self.timers.remove(&ch);
                }
            }
        }
        for w in woken.drain(..) {
            w.wake();
        }
        self.woken = woken;
        if drained {
            self.handshaking.remove(&ch);
            self.awaiting_close.remove(&ch);
            self.unanswered.remove(&ch);
            self.close_floor.remove(&ch);
            self.conns.remove(&ch);
            self.timers.remove(&ch);
            self.held_until.remove(&ch);
            self.shared.set_open_connections(self.conns.len());
        } else if again {
            self.mark_dirty(ch);
        }
    }
}
