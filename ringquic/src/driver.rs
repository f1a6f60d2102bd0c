//! The I/O thread's loop (seed point 1 and its follow-up): the `quinn_proto::Endpoint` and every
//! connection are driven here, next to the socket.
//!
//! One turn of the loop:
//!
//! 1. take the application's commands from the [`Mailbox`](crate::mailbox::Mailbox);
//! 2. drive every connection marked dirty (datagrams arrived, a timer fired, the application
//!    wrote): fire timers, hand endpoint events to the endpoint, wake application tasks, and
//!    write transmits straight into free TX buffers — at most [`MAX_TRANSMITS_PER_DRIVE`] GSO
//!    batches per connection per turn, so one busy connection cannot starve the rest;
//! 3. sleep in the backend (`io_uring_enter`) until a completion, the earliest connection
//!    timer, or a wakeup — unless work is already waiting, then do not sleep;
//! 4. feed received datagrams to the endpoint and their connections, marking them dirty.
//!
//! A connection that finds every TX buffer in flight waits in `waiting_tx` and becomes dirty
//! again when a send completes and frees one: no spinning, no unbounded queue.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{mpsc, Arc},
    task::Waker,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn_proto::{self as proto, ConnectionHandle, DatagramEvent};
use tracing::{debug, error, info, warn};

use crate::handles::{HandleMap, HandleSet};
use crate::{
    connection::ConnectionInner,
    endpoint::{EndpointShared, EndpointStats},
    io::{poll::PollBackend, BackendKind, IoBackend, IoConfig, RecvMeta},
    mailbox::{lock, Command},
    ConnectionError, EndpointError, TransportError, TransportErrorCode,
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

/// Headroom any backend may need in a receive buffer in front of the payload.
#[cfg(target_os = "linux")]
pub(crate) const RECV_HEADROOM: usize = crate::io::uring::RECV_HEADROOM;
#[cfg(not(target_os = "linux"))]
pub(crate) const RECV_HEADROOM: usize = 0;

/// How long shutdown keeps turning the loop so every connection's CONNECTION_CLOSE goes out
/// (with few TX buffers and many connections that takes several turns).
const SHUTDOWN_FLUSH_TIME: Duration = Duration::from_millis(500);

/// How new incoming connections are admitted, before the application sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// Answer every incoming connection whose address is not yet validated with a Retry.
    pub validate_addresses: bool,
    /// Most incoming connections waiting for `accept` plus accepted ones still handshaking;
    /// more are refused.
    pub max_incoming: usize,
}

/// What the thread needs to start.
pub(crate) struct DriverSetup {
    pub shared: Arc<EndpointShared>,
    pub socket: std::net::UdpSocket,
    pub io: IoConfig,
    pub backend: Option<BackendKind>,
    pub endpoint: proto::Endpoint,
    pub admission: Admission,
    /// Tests: use this backend instead of a kernel one.
    #[cfg(test)]
    pub fake: Option<crate::endpoint::FakeFactory>,
    pub ready: mpsc::SyncSender<Result<(), EndpointError>>,
    /// Dropped when the thread is done, which tells the last handle's drop it may join.
    pub exited: mpsc::Sender<()>,
}

/// The thread's entry point.
pub(crate) fn run(setup: DriverSetup) {
    let DriverSetup {
        shared,
        socket,
        io,
        backend,
        endpoint,
        admission,
        #[cfg(test)]
        fake,
        ready,
        exited: _exited,
    } = setup;
    let _ = shared.thread_id.set(std::thread::current().id());
    if let Some(cpu) = io.pin_cpu {
        if let Err(source) = crate::io::pin_current_thread(cpu) {
            let _ = ready.send(Err(EndpointError::Backend {
                what: "pinning the I/O thread to a CPU",
                source,
            }));
            return;
        }
    }
    #[cfg(test)]
    let opened = match fake {
        Some(f) => Ok(f(&socket, &io)),
        None => open_backend(socket, &io, backend),
    };
    #[cfg(not(test))]
    let opened = open_backend(socket, &io, backend);
    let backend = match opened {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let local = match backend.local_addr() {
        Ok(a) => a,
        Err(source) => {
            let _ = ready.send(Err(EndpointError::Socket {
                option: "getsockname",
                source,
            }));
            return;
        }
    };
    log_backend(backend.kind(), local);
    let _ = shared.info.set((backend.kind(), local));
    shared.mailbox.set_waker(backend.waker());
    let max_segments = backend
        .max_gso_segments()
        .min(io.tx_buffer_size / io.max_udp_payload.max(1))
        .max(1);
    let mut driver = Driver {
        io: backend,
        core: Core {
            shared: shared.clone(),
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
            received: Vec::new(),
            incoming: Vec::new(),
            woken: Vec::new(),
            max_segments,
            admission,
            handshaking: HandleSet::default(),
            closes_sent: HandleSet::default(),
            awaiting_close: HandleSet::default(),
            flush_until: None,
            stats: EndpointStats::default(),
        },
        commands: VecDeque::new(),
        busy_poll: io.busy_poll,
    };
    CURRENT.with(|c| *c.borrow_mut() = Arc::downgrade(&shared));
    let _ = ready.send(Ok(()));
    drop(ready);

    let result = std::panic::catch_unwind(AssertUnwindSafe(|| driver.run()));
    let reason = match result {
        Ok(Ok(())) => ConnectionError::LocallyClosed,
        Ok(Err(e)) => {
            error!("I/O backend failed: {e}; closing the endpoint");
            internal_error(format!("ringquic I/O backend failed: {e}"))
        }
        Err(_) => {
            error!("ringquic I/O thread panicked; failing every connection");
            internal_error("ringquic I/O thread panicked".into())
        }
    };
    driver.finish(reason);
    // Dropping the driver drops the backend, which cancels and reaps in-flight I/O before its
    // buffers are freed.
    drop(driver);
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
fn internal_error(reason: String) -> ConnectionError {
    ConnectionError::TransportError(TransportError {
        code: TransportErrorCode::INTERNAL_ERROR,
        frame: None,
        reason,
    })
}

fn open_backend(
    socket: std::net::UdpSocket,
    cfg: &IoConfig,
    wanted: Option<BackendKind>,
) -> Result<Box<dyn IoBackend>, EndpointError> {
    #[cfg(not(windows))]
    if wanted == Some(BackendKind::Rio) {
        return Err(EndpointError::BackendUnavailable {
            backend: BackendKind::Rio,
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, "RIO exists only on Windows"),
        });
    }
    // Windows: RIO when asked for or when nothing was. If RIO cannot be set up before anything
    // was posted on the socket (no RIO in the system, as under Wine; an adopted socket without
    // WSA_FLAG_REGISTERED_IO), the socket comes back and the poll backend serves it — unless
    // RIO was asked for explicitly, which makes it an error.
    #[cfg(windows)]
    let socket = if !matches!(wanted, None | Some(BackendKind::Rio)) {
        socket
    } else {
        let opts = crate::io::rio_book::RioOptions::from_env()?;
        match crate::io::rio::RioBackend::new(socket, cfg, opts) {
            Ok(b) => return Ok(Box::new(b)),
            Err(e) if wanted == Some(BackendKind::Rio) => {
                return Err(EndpointError::BackendUnavailable {
                    backend: BackendKind::Rio,
                    source: std::io::Error::new(e.source.kind(), format!("{}: {}", e.what, e.source)),
                })
            }
            Err(e) => match e.socket {
                Some(socket) => {
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    ONCE.call_once(|| {
                        tracing::warn!(
                            "Windows RIO is not available ({}: {}); using the poll backend",
                            e.what,
                            e.source
                        )
                    });
                    socket
                }
                None => {
                    return Err(EndpointError::Backend {
                        what: e.what,
                        source: e.source,
                    })
                }
            },
        }
    };
    #[cfg(target_os = "linux")]
    {
        if wanted != Some(BackendKind::Poll) {
            match crate::io::uring::open_ring(cfg) {
                Ok(ring) => return Ok(Box::new(crate::io::uring::UringBackend::new(ring, socket, cfg)?)),
                // SQPOLL was asked for: running without it would not be what the user chose.
                Err(source) if cfg.sqpoll_idle.is_some() => {
                    return Err(EndpointError::Backend {
                        what: "io_uring with IORING_SETUP_SQPOLL",
                        source,
                    })
                }
                Err(source) if wanted == Some(BackendKind::IoUring) => {
                    return Err(EndpointError::BackendUnavailable {
                        backend: BackendKind::IoUring,
                        source,
                    })
                }
                Err(e) => log_fallback(&e),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        if wanted == Some(BackendKind::IoUring) {
            return Err(EndpointError::BackendUnavailable {
                backend: BackendKind::IoUring,
                source: std::io::Error::new(std::io::ErrorKind::Unsupported, "io_uring exists only on Linux"),
            });
        }
    }
    let b = PollBackend::new(socket, cfg).map_err(|source| EndpointError::Backend {
        what: "poll backend",
        source,
    })?;
    Ok(Box::new(b))
}

#[cfg(target_os = "linux")]
fn log_fallback(e: &std::io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::warn!("io_uring is not available ({e}); using the poll backend"));
}

fn log_backend(kind: BackendKind, addr: SocketAddr) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if first {
        info!(backend = %kind, %addr, "ringquic endpoint running");
    } else {
        debug!(backend = %kind, %addr, "ringquic endpoint running");
    }
}

struct Driver {
    io: Box<dyn IoBackend>,
    core: Core,
    commands: VecDeque<Command>,
    /// How long to poll without sleeping before a sleep ([`IoConfig::busy_poll`]).
    busy_poll: Duration,
}

thread_local! {
    /// The endpoint whose I/O thread this is, for [`crate::try_spawn`].
    static CURRENT: std::cell::RefCell<std::sync::Weak<EndpointShared>> =
        const { std::cell::RefCell::new(std::sync::Weak::new()) };
}

/// The endpoint whose I/O thread the caller runs on, if any.
pub(crate) fn current_endpoint() -> Option<Arc<EndpointShared>> {
    CURRENT.with(|c| c.borrow().upgrade())
}

/// Tasks polled per turn at most, so I/O keeps flowing under a busy application.
const MAX_TASK_POLLS_PER_TURN: usize = 1024;

/// Capacity of the received-events queue kept between turns (a few GRO batches' worth).
const MAX_RETAINED_EVENTS: usize = 1024;

/// Everything but the backend, so the receive callback can borrow it while the backend runs.
struct Core {
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
    /// Connection events from this turn's datagrams, not yet handed to their connections.
    received: Vec<(ConnectionHandle, proto::ConnectionEvent)>,
    /// New connection attempts from this turn's datagrams, admitted after routing.
    incoming: Vec<proto::Incoming>,
    woken: Vec<Waker>,
    max_segments: usize,
    admission: Admission,
    /// Server-side connections accepted whose handshake has not completed.
    handshaking: HandleSet,
    /// Closed connections whose CONNECTION_CLOSE has gone out.
    closes_sent: HandleSet,
    /// Shutdown: closed connections whose CONNECTION_CLOSE has not gone out yet.
    awaiting_close: HandleSet,
    /// Set once the last handle is gone: the loop goes on until every close is out, or until
    /// this time (see [`Core::begin_shutdown`]).
    flush_until: Option<Instant>,
    stats: EndpointStats,
}

impl Driver {
    fn run(&mut self) -> std::io::Result<()> {
        loop {
            // Application tasks spawned on this thread run first.
            self.run_local_tasks();
            let core = &mut self.core;
            let io = &mut *self.io;
            core.stats.loop_turns += 1;
            core.take_commands(&mut self.commands);
            core.drive_dirty(io);
            core.send_responses(io);
            core.publish_stats(io);
            if let Some(until) = core.flush_until {
                // Shutting down: done once every close is out (the backend's shutdown submits
                // what is queued and waits for it), or at the time limit.
                if !core.closes_pending(io) {
                    // Hand what was just queued to the kernel before the backend shuts down.
                    let rx = &mut core.rx;
                    io.turn(Some(Instant::now()), &mut |meta, data| rx.push((meta, data)))?;
                    return Ok(());
                }
                if Instant::now() >= until {
                    warn!(
                        connections = core.awaiting_close.len(),
                        "shutdown: some connections' CONNECTION_CLOSE could not be sent in time"
                    );
                    return Ok(());
                }
            }
            let busy = !core.dirty.is_empty()
                || core.shared.mailbox.is_notified()
                || !lock(&core.shared.local_tasks).is_empty();
            let now = Instant::now();
            let mut deadline = if busy {
                Some(now)
            } else {
                core.timers.values().min().copied()
            };
            if let Some(until) = core.flush_until {
                // While closes are due, wake at least every 5 ms (a send completion, an ACK or a
                // pacing timer lets them out) and at the time limit.
                deadline = Some(
                    deadline
                        .unwrap_or(until)
                        .min(now + Duration::from_millis(5))
                        .min(until),
                );
            }
            // Busy-poll (opt-in) only when there is nothing to do yet.
            let spin_until = (!busy && !self.busy_poll.is_zero() && core.flush_until.is_none())
                .then(|| Instant::now() + self.busy_poll);
            Self::wait(io, core, deadline, spin_until)?;
            core.route_received();
            core.deliver_received();
            core.expire_timers();
            core.retry_waiting_tx(io);
        }
    }

    /// One wait for I/O: if `spin_until` is set, first turn the backend without sleeping until
    /// there is work (a datagram, a command, a local task, a due timer, a freed TX buffer
    /// somebody waits for) or that time passes; then, if nothing turned up, sleep until
    /// `deadline` as usual.
    fn wait(
        io: &mut dyn IoBackend,
        core: &mut Core,
        deadline: Option<Instant>,
        spin_until: Option<Instant>,
    ) -> std::io::Result<()> {
        if let Some(until) = spin_until {
            loop {
                io.turn(Some(Instant::now()), &mut |meta, data| core.rx.push((meta, data)))?;
                let now = Instant::now();
                let work = !core.rx.is_empty()
                    || core.shared.mailbox.is_notified()
                    || !lock(&core.shared.local_tasks).is_empty()
                    || deadline.is_some_and(|d| d <= now)
                    || (!core.waiting_tx.is_empty() && io.has_free_tx());
                if work {
                    return Ok(());
                }
                if now >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        io.turn(deadline, &mut |meta, data| core.rx.push((meta, data)))
    }

    /// Run the application tasks that are ready (bounded, so I/O keeps flowing).
    fn run_local_tasks(&mut self) {
        let shared = &self.core.shared;
        for _ in 0..MAX_TASK_POLLS_PER_TURN {
            let Some(runnable) = lock(&shared.local_tasks).pop_front() else {
                break;
            };
            runnable.run();
        }
    }

    /// The loop has ended (shutdown, backend failure or panic): nothing will drive connections
    /// any more. Fail everything still waiting so no future hangs, and refuse new commands and
    /// new connections.
    fn finish(&mut self, reason: ConnectionError) {
        let core = &mut self.core;
        // Commands still queued are dropped.
        drop(core.shared.mailbox.close());
        // Tasks spawned on this thread are cancelled (their futures dropped here): the queued
        // ones by dropping their runnables, the waiting ones by waking them into a closed
        // queue, which drops them too.
        let tasks: Vec<_> = lock(&core.shared.local_tasks).drain(..).collect();
        let task_wakers: Vec<_> = lock(&core.shared.task_wakers).1.drain().map(|(_, w)| w).collect();
        let mut woken = Vec::new();
        for conn in core.conns.values() {
            conn.lock().terminate(reason.clone(), &mut woken);
        }
        core.conns.clear();
        {
            let mut st = lock(&core.shared.state);
            st.driver_exited = true;
            st.open_connections = 0;
            st.incoming.clear();
            woken.extend(EndpointShared::take_waiters(&mut st));
        }
        for w in woken {
            w.wake();
        }
        core.publish_stats(&*self.io);
        self.io.shutdown();
        drop(tasks);
        for w in task_wakers {
            w.wake();
        }
    }
}

impl Core {
    fn take_commands(&mut self, commands: &mut VecDeque<Command>) {
        self.shared.mailbox.drain(commands);
        while let Some(cmd) = commands.pop_front() {
            self.command(cmd);
        }
    }

    /// A connection the I/O thread just created (connect or accept) joins the tables and is
    /// driven this turn (a client sends its Initial).
    fn add_connection(&mut self, inner: &Arc<ConnectionInner>, accepted: bool) {
        let ch = inner.handle;
        if accepted {
            self.handshaking.insert(ch);
        }
        self.conns.insert(ch, inner.clone());
        self.mark_dirty(ch);
        lock(&self.shared.state).open_connections = self.conns.len();
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
    fn retry_waiting_tx(&mut self, io: &dyn IoBackend) {
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
    /// buffers there are. The loop keeps processing received datagrams meanwhile: quinn-proto
    /// holds a close back by congestion control and pacing while stream data is pending, so the
    /// peer's ACKs (and the pacing timer) are what let it out.
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
            let ours = conn.lock().error == Some(ConnectionError::LocallyClosed);
            if ours && !self.closes_sent.contains(&ch) {
                self.awaiting_close.insert(ch);
            }
        }
    }

    /// Whether shutdown still has closes to get out: connections to drive, waiting for a TX
    /// buffer, or whose close has not been sent, or sends the backend has not handed to the
    /// kernel yet.
    fn closes_pending(&self, io: &dyn IoBackend) -> bool {
        !self.dirty.is_empty()
            || !self.waiting_tx.is_empty()
            || self.awaiting_close.len() > 0
            || io.sends_waiting()
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

    fn publish_stats(&self, io: &dyn IoBackend) {
        let io = io.stats();
        let c = &self.stats;
        let mut st = lock(&self.shared.state);
        st.stats = EndpointStats {
            datagrams_received: io.datagrams_received,
            bytes_received: io.bytes_received,
            datagrams_sent: io.datagrams_sent,
            bytes_sent: io.bytes_sent,
            recv_dropped: io.recv_dropped,
            recv_starved: io.recv_starved,
            recv_rearms: io.recv_rearms,
            send_errors: io.send_errors,
            tx_exhausted: io.tx_exhausted,
            gso_disabled: io.gso_disabled,
            recv_zero_copy: io.recv_zero_copy,
            send_zero_copy: io.send_zero_copy,
            send_zero_copy_copied: io.send_zero_copy_copied,
            recv_buffers_lent: io.recv_lent,
            responses_dropped: c.responses_dropped,
            incoming_retried: c.incoming_retried,
            incoming_refused: c.incoming_refused,
            app_wakeups: 0,
            loop_turns: c.loop_turns,
            open_connections: self.conns.len() as u64,
        };
    }

    /// Route this turn's datagrams through the endpoint, then admit the new connection
    /// attempts among them.
    fn route_received(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let now = Instant::now();
        let ep = &mut self.ep;
        for (meta, data) in self.rx.drain(..) {
            match ep
                .inner
                .handle(now, meta.remote, meta.local_ip, meta.ecn, data, &mut ep.buf)
            {
                // Queued, and handed over per connection below: one connection lock for a
                // whole GRO batch instead of one per datagram (the application contends for it).
                Some(DatagramEvent::ConnectionEvent(ch, ev)) => self.received.push((ch, ev)),
                Some(DatagramEvent::NewConnection(incoming)) => self.incoming.push(incoming),
                Some(DatagramEvent::Response(t)) => ep.queue_response(t),
                None => {}
            }
            ep.buf.clear();
        }
        if self.rx.capacity() > MAX_RETAINED_EVENTS {
            self.rx.shrink_to(MAX_RETAINED_EVENTS);
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        for inc in incoming.drain(..) {
            self.admit(inc);
        }
        self.incoming = incoming;
    }

    /// Hand the connection events queued by [`Core::route_received`] to their connections, in
    /// arrival order, taking each connection's lock once per run of events.
    fn deliver_received(&mut self) {
        let mut received = std::mem::take(&mut self.received);
        let mut events = received.drain(..).peekable();
        while let Some((ch, ev)) = events.next() {
            let Some(conn) = self.conns.get(&ch) else {
                continue;
            };
            {
                let mut st = conn.lock();
                st.inner.handle_event(ev);
                while let Some((_, ev)) = events.next_if(|(next, _)| *next == ch) {
                    st.inner.handle_event(ev);
                }
            }
            self.mark_dirty(ch);
        }
        drop(events);
        // A flood can queue tens of thousands of events in one turn; do not keep that much
        // capacity for the endpoint's life.
        if received.capacity() > MAX_RETAINED_EVENTS {
            received.shrink_to(MAX_RETAINED_EVENTS);
        }
        self.received = received;
    }

    fn mark_dirty(&mut self, ch: ConnectionHandle) {
        if self.in_dirty.insert(ch) {
            self.dirty.push_back(ch);
        }
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
        let mut st = lock(&self.shared.state);
        let over_cap = st.incoming.len() + self.handshaking.len() >= self.admission.max_incoming;
        if st.closed || self.flush_until.is_some() || over_cap {
            drop(st);
            if over_cap {
                self.stats.incoming_refused += 1;
            }
            let t = ep.inner.refuse(incoming, &mut ep.buf);
            ep.queue_response(t);
            return;
        }
        st.incoming.push_back(incoming);
        // Wake every waiting `accept` (after unlocking): a waker left by a dropped future must
        // not swallow the only wakeup.
        let waiters = std::mem::take(&mut st.accept_waiters);
        drop(st);
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Mark every connection whose timer is due. No allocation: this runs every turn.
    fn expire_timers(&mut self) {
        let now = Instant::now();
        for (ch, t) in self.timers.iter() {
            if *t <= now && self.in_dirty.insert(ch) {
                self.dirty.push_back(ch);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
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
                    Ok((ch, conn)) => {
                        let inner = ConnectionInner::new(ch, conn, self.shared.clone());
                        self.add_connection(&inner, false);
                        reply.complete(Ok(inner));
                    }
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
                    Ok((ch, conn)) => {
                        let inner = ConnectionInner::new(ch, conn, self.shared.clone());
                        self.add_connection(&inner, true);
                        reply.complete(Ok(inner));
                    }
                    Err(e) => reply.complete(Err(e)),
                }
            }
            Command::Refuse(incoming) => {
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
            Command::Ignore(incoming) => self.ep.inner.ignore(incoming),
            Command::SetServerConfig(c) => self.ep.inner.set_server_config(c),
            Command::Close { code, reason } => {
                self.close_all(code, reason);
                let (pending, waiters) = {
                    let mut st = lock(&self.shared.state);
                    st.closed = true;
                    let w = EndpointShared::take_waiters(&mut st);
                    (st.incoming.drain(..).collect::<Vec<_>>(), w)
                };
                waiters.into_iter().for_each(Waker::wake);
                let ep = &mut self.ep;
                for inc in pending {
                    let t = ep.inner.refuse(inc, &mut ep.buf);
                    ep.queue_response(t);
                }
            }
            Command::Shutdown => self.begin_shutdown(),
            #[cfg(test)]
            Command::Panic => panic!("injected by a test"),
        }
    }

    fn close_all(&mut self, code: proto::VarInt, reason: bytes::Bytes) {
        let now = Instant::now();
        let mut woken = std::mem::take(&mut self.woken);
        let chs: Vec<_> = self.conns.keys().collect();
        for ch in chs {
            if let Some(conn) = self.conns.get(&ch) {
                let mut st = conn.lock();
                if st.error.is_none() {
                    st.inner.close(now, code, reason.clone());
                }
                st.terminate(ConnectionError::LocallyClosed, &mut woken);
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
        let now = Instant::now();
        let mut woken = std::mem::take(&mut self.woken);
        let mut drained = false;
        let mut again = false;
        {
            let mut st = conn.lock();
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
                    }
                    None => {
                        io.put_tx(tx);
                        break;
                    }
                }
            }
            if closing && sent > 0 {
                // A closed connection transmits nothing but its CONNECTION_CLOSE (and ACKs).
                self.closes_sent.insert(ch);
                self.awaiting_close.remove(&ch);
            }
            // ... and its timers wait while the close could not go out for want of a TX buffer
            // (the close timer would end the closing period first), or, at shutdown, until it
            // has gone out at all (bounded by the flush's time limit).
            let hold = tx_blocked || self.awaiting_close.contains(&ch);
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
            self.closes_sent.remove(&ch);
            self.awaiting_close.remove(&ch);
            self.conns.remove(&ch);
            self.timers.remove(&ch);
            let idle = {
                let mut st = lock(&self.shared.state);
                st.open_connections = self.conns.len();
                if self.conns.is_empty() {
                    std::mem::take(&mut st.idle_waiters)
                } else {
                    Vec::new()
                }
            };
            idle.into_iter().for_each(Waker::wake);
        } else if again {
            self.mark_dirty(ch);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crate::{mailbox::Command, ConnectionError, Endpoint, TransportErrorCode};

    fn configs() -> (crate::ServerConfig, crate::ClientConfig) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = c.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(c.signing_key.serialize_der());
        let server = crate::ServerConfig::with_single_cert(vec![der.clone()], key.into()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = crate::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        (server, client)
    }

    /// A panic on the I/O thread fails pending futures with an error instead of hanging them,
    /// and later calls fail fast.
    #[test]
    fn panic_on_the_io_thread_fails_pending_futures() {
        let (sc, cc) = configs();
        let server = Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(cc);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let addr = server.local_addr().unwrap();
            let connecting = client.connect(addr, "localhost").unwrap();
            let _s = server.accept().await.unwrap().await.unwrap();
            let conn = connecting.await.unwrap();
            let (_send, mut recv) = conn.open_bi().await.unwrap();
            let reader = async { recv.read(&mut [0u8; 10]).await };
            let kill = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(client.shared().mailbox.push(Command::Panic).is_ok());
            };
            let (res, ()) =
                tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(reader, kill) })
                    .await
                    .expect("a pending read hung after the I/O thread panicked");
            match res {
                Err(crate::ReadError::ConnectionLost(ConnectionError::TransportError(e))) => {
                    assert_eq!(e.code, TransportErrorCode::INTERNAL_ERROR)
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(
                conn.open_uni().await,
                Err(ConnectionError::TransportError(_))
            ));
            assert!(client.accept().await.is_none());
            assert!(matches!(
                client.connect(addr, "localhost"),
                Err(crate::ConnectError::EndpointStopping)
            ));
        });
    }

    fn fake_endpoint(
        net: &Arc<crate::io::fake::FakeNet>,
        server: Option<crate::ServerConfig>,
        client: Option<crate::ClientConfig>,
        tx_buffers: usize,
    ) -> Endpoint {
        let net = net.clone();
        let mut b = Endpoint::builder()
            .tx_buffers(tx_buffers)
            .fake_backend(Box::new(move |sock, cfg| {
                let addr = sock.local_addr().expect("bound socket");
                Box::new(crate::io::fake::FakeBackend::new(net, addr, cfg))
            }));
        if let Some(s) = server {
            b = b.server_config(s);
        }
        if let Some(c) = client {
            b = b.default_client_config(c);
        }
        b.bind("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// Push `size` bytes from client to server over the fake network; both ends hash.
    fn fake_transfer(
        faults: crate::io::fake::Faults,
        tx_buffers: usize,
        size: usize,
    ) -> (Endpoint, Endpoint) {
        use ring::digest::{digest, SHA256};
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(faults);
        let server = fake_endpoint(&net, Some(sc), None, 64);
        let client = fake_endpoint(&net, None, Some(cc), tx_buffers);
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                let addr = server.local_addr().unwrap();
                let connecting = client.connect(addr, "localhost").unwrap();
                let srv = server.clone();
                let receiver = async move {
                    let conn = srv.accept().await.unwrap().await.unwrap();
                    let mut recv = conn.accept_uni().await.unwrap();
                    let got = recv.read_to_end(usize::MAX).await.unwrap();
                    (conn, got)
                };
                let sender = async {
                    let conn = connecting.await.unwrap();
                    let mut send = conn.open_uni().await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                    conn
                };
                let ((sconn, got), conn) = tokio::join!(receiver, sender);
                assert_eq!(got.len(), data.len());
                assert_eq!(digest(&SHA256, &got).as_ref(), digest(&SHA256, &data).as_ref());
                conn.close(0u32.into(), b"");
                drop(sconn);
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "transfer over the fake network hung: client {:?} server {:?}",
                    client.stats(),
                    server.stats()
                )
            });
        });
        assert!(net.dropped() > 0 || faults.drop_every.is_none());
        (server, client)
    }

    /// A backend that fails under a live connection ends the endpoint with an error that
    /// says so (`INTERNAL_ERROR` and the backend's error), not as if the application had
    /// closed it; later calls fail at once.
    #[test]
    fn a_failed_backend_is_an_internal_error() {
        let (sc, cc) = configs();
        let net = crate::io::fake::FakeNet::new(crate::io::fake::Faults::default());
        let server = fake_endpoint(&net, Some(sc), None, 8);
        let client = fake_endpoint(&net, None, Some(cc), 8);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), async {
                let addr = server.local_addr().unwrap();
                let connecting = client.connect(addr, "localhost").unwrap();
                let _s = server.accept().await.unwrap().await.unwrap();
                let _conn = connecting.await.unwrap();
                net.set_faults(crate::io::fake::Faults {
                    fail_turns: true,
                    ..Default::default()
                });
                // Make the server's loop turn (and fail) now, without anything the client
                // could answer with before its own turns fail.
                // (It may have failed already: then these fail with the error checked below.)
                if let Ok(mut wake) = _s.open_uni().await {
                    let _ = wake.write_all(b"x").await;
                }
                match _s.closed().await {
                    ConnectionError::TransportError(e) => {
                        assert_eq!(e.code, TransportErrorCode::INTERNAL_ERROR);
                        assert!(e.reason.contains("backend failed"), "{}", e.reason);
                    }
                    other => panic!("the server side: {other:?}"),
                }
                // The server's I/O thread has exited: no accept, no connect.
                assert!(server.accept().await.is_none());
                assert!(matches!(
                    server.connect_with(configs().1, addr, "localhost"),
                    Err(crate::ConnectError::EndpointStopping)
                ));
            })
            .await
            .expect("a failed backend hung the endpoint");
        });
    }

    /// One TX buffer held "in the kernel" for three turns, drops, duplicates and batches
    /// delivered backwards: the loop parks the connection on `waiting_tx`, resumes it on
    /// completions, and the data arrives exact.
    #[test]
    fn fake_backend_tx_exhaustion_loss_duplication_reordering() {
        let faults = crate::io::fake::Faults {
            drop_every: Some(13),
            duplicate_every: Some(7),
            reverse_batches: true,
            tx_completion_turns: 3,
            ..Default::default()
        };
        let (_server, client) = fake_transfer(faults, 1, 2 << 20);
        let s = client.stats();
        assert!(s.tx_exhausted > 0, "{s:?}");
    }

    /// Every fifth send fails: counted, treated as loss, the transfer completes.
    #[test]
    fn fake_backend_failed_sends_are_loss() {
        let faults = crate::io::fake::Faults {
            fail_send_every: Some(5),
            ..Default::default()
        };
        let (_server, client) = fake_transfer(faults, 8, 1 << 20);
        assert!(client.stats().send_errors > 0);
    }
}
