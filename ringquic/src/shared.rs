//! The state the application's handles and the I/O thread both touch, and the only place where
//! they meet.
//!
//! Handles (`endpoint.rs`, `incoming.rs`, `connection.rs`, `streams.rs`, `local.rs`) and the I/O
//! thread (`driver.rs`, `core.rs`) both depend on this module and never on each other. Each side
//! changes this state through its methods: the I/O thread says what happened
//! ([`EndpointShared::offer_incoming`], [`EndpointShared::set_open_connections`],
//! [`ConnState::on_event`], …), a handle says what it waits for ([`EndpointShared::poll_accept`],
//! [`ConnState::waiters`], …). The types live in one module because they refer to each other: a
//! connection's [`ConnectionInner::wake`] queues a [`Command`] in its endpoint's mailbox, and a
//! command's [`AcceptReply`] carries a connection back.
//!
//! ## Locks, and their order
//!
//! | lock | guards | taken by |
//! |---|---|---|
//! | [`AcceptWait`]'s | a pending connect/accept's answer and waiter | `Connecting::poll`, the I/O thread's reply |
//! | [`ConnectionInner::state`] | the `quinn_proto::Connection` and its waiters | both sides, for every stream operation and every drive |
//! | the mailbox's queue (`mailbox.rs`) | queued commands | [`ConnectionInner::wake`] and the handles; the I/O thread drains it |
//! | [`EndpointShared`]'s `state` | incoming connections, endpoint waiters, counters | `accept`, `close`, `stats`; the I/O thread |
//! | the task queue and task wakers | [`Endpoint::spawn`](crate::Endpoint::spawn)'s tasks | `local.rs`, the I/O thread |
//! | the local address | the socket's address | `local_addr`, the I/O thread's start and rebinds |
//! | the direct sender | application threads' socket (`direct.rs`) | a flush (under a connection), `stats`, the I/O thread's start, rebind and exit |
//!
//! Nested only in this order: a pending answer, then a connection, then the mailbox's queue (a
//! wake while a connection is locked) or the direct sender (a flush takes it under the
//! connection's lock). The endpoint state, the local address and the two task
//! locks are never held while taking another lock. Wakers are collected under a lock and woken
//! after it is released.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
    task::{Context, Poll, Waker},
    thread::ThreadId,
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn_proto::{self as proto, ClientConfig, ConnectionHandle, ServerConfig, VarInt};
use rustc_hash::FxHashMap;

#[cfg(target_os = "linux")]
use crate::io::direct::{DirectCounts, DirectSender};
use crate::{
    dgramflow::DatagramFlow,
    handoff::Handoff,
    io::{BackendKind, RecvMeta},
    mailbox::Mailbox,
    stats::EndpointIoStats,
    sync::lock,
    wakers::{register, wake_all, Waiters},
    ConnectionError,
};

/// What the application asks of the I/O thread.
pub(crate) enum Command {
    /// A connection's application-side state changed (data written, stream opened, …): drive it.
    Drive(ConnectionHandle),
    /// Start a client connection; the answer goes to the waiting `Connecting`.
    Connect {
        config: ClientConfig,
        remote: SocketAddr,
        server_name: String,
        reply: AcceptReply,
    },
    /// Accept an incoming connection; the answer goes to the waiting `Connecting`.
    Accept {
        incoming: proto::Incoming,
        server_config: Option<Arc<ServerConfig>>,
        reply: AcceptReply,
    },
    /// Refuse an incoming connection (the peer gets CONNECTION_REFUSED).
    Refuse(proto::Incoming),
    /// Answer an incoming connection with a Retry packet.
    Retry(proto::Incoming),
    /// Drop an incoming connection silently.
    Ignore(proto::Incoming),
    /// Replace the server configuration (`None`: stop accepting).
    SetServerConfig(Option<Arc<ServerConfig>>),
    /// Close every connection with this code and reason.
    Close { code: VarInt, reason: Bytes },
    /// Serve this socket (checked by `socket::adopt`) instead of the current one, and tell every
    /// connection its local address changed (`Endpoint::rebind`).
    Rebind(std::net::UdpSocket),
    /// Every handle is gone: close what is left, cancel in-flight I/O and exit.
    Shutdown,
    /// This endpoint is one shard of a sharded one ([`ShardLink`]).
    JoinShards(ShardLink),
    /// A datagram another shard received for a connection of this one (no kernel steering, or
    /// a datagram that raced a change of the socket group).
    Forwarded(RecvMeta, bytes::BytesMut),
    /// Panic on the I/O thread, to test that a panic fails futures instead of hanging them.
    #[cfg(test)]
    Panic,
}

/// What one shard of a sharded endpoint knows of the others (`EndpointBuilder::shards`).
pub(crate) struct ShardLink {
    /// This shard's number.
    pub(crate) index: usize,
    /// Where the shard octet is in the connection IDs the shards issue.
    pub(crate) shard_offset: usize,
    /// Every shard, by number (weak: shards do not keep each other alive).
    pub(crate) peers: Vec<std::sync::Weak<EndpointShared>>,
    /// Whether the kernel steers datagrams to their shard; without it, datagrams that arrive
    /// on the wrong shard are forwarded (there are many then; with it, only races).
    pub(crate) steered: bool,
}

/// Datagrams forwarded to a shard and not yet taken by it, at most; more are dropped and
/// counted (loss QUIC repairs), so a shard that lags cannot make the others queue without end.
pub(crate) const MAX_FORWARDED_QUEUED: usize = 1024;

/// How long the drop of an endpoint's last handle waits for its I/O thread to finish shutting
/// down (closing connections, cancelling in-flight I/O) before leaving it to finish alone.
/// Normally the thread is done within a few milliseconds; io_uring's wait for the kernel to
/// give back every buffer can take longer only when the kernel is stuck (it gives up after 5 s
/// and then leaks the memory rather than free it under the kernel).
pub const SHUTDOWN_JOIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The endpoint's state behind [`EndpointShared`]'s lock.
struct EpState {
    /// Connection attempts waiting for `accept` (bounded by the I/O thread's admission cap).
    incoming: VecDeque<proto::Incoming>,
    accept_waiters: Vec<Waker>,
    idle_waiters: Vec<Waker>,
    open_connections: usize,
    /// `Endpoint::close` was called, or the I/O thread exited: `accept` yields `None`.
    closed: bool,
    driver_exited: bool,
    default_client_config: Option<ClientConfig>,
    stats: EndpointIoStats,
}

impl EpState {
    /// Every task waiting on the endpoint (accept, wait_idle), to wake after unlocking.
    fn take_waiters(&mut self) -> Vec<Waker> {
        let mut w = std::mem::take(&mut self.accept_waiters);
        w.append(&mut self.idle_waiters);
        w
    }
}

/// Tasks spawned on the I/O thread ([`Endpoint::spawn`](crate::Endpoint::spawn)).
#[derive(Default)]
struct TaskWakers {
    next_key: u64,
    /// A waker of every live spawned task, so the exiting I/O thread can cancel even tasks
    /// nothing else would ever wake.
    live: FxHashMap<u64, Waker>,
}

/// The spawned tasks of an exiting I/O thread ([`EndpointShared::take_tasks`]).
pub(crate) struct TakenTasks {
    queued: Vec<async_task::Runnable>,
    live: Vec<Waker>,
}

impl TakenTasks {
    /// Cancel them: the queued ones by dropping their runnables (their futures are dropped
    /// here), the waiting ones by waking them into the closed queue, which drops them too.
    pub(crate) fn cancel(self) {
        drop(self.queued);
        wake_all(self.live);
    }
}

/// What happened to an incoming connection offered to the application's `accept` queue.
pub(crate) enum Offer {
    /// Queued, and the waiting `accept`s woken.
    Queued,
    /// The endpoint is closed: refuse it.
    Closed(proto::Incoming),
    /// The queue holds as many as the admission cap allows: refuse it.
    Full(proto::Incoming),
}

/// Everything the handles and the I/O thread share about one endpoint.
pub(crate) struct EndpointShared {
    pub(crate) mailbox: Mailbox<Command>,
    state: Mutex<EpState>,
    /// Handles of any kind alive (endpoints, connections, streams, incoming).
    handles: AtomicUsize,
    /// Endpoint handles alive; at zero no new connections are accepted.
    endpoint_handles: AtomicUsize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Disconnects when the I/O thread is done (its sender is dropped as the thread ends).
    exited: Mutex<Option<mpsc::Receiver<()>>>,
    thread_id: OnceLock<ThreadId>,
    /// The loop, when it runs as a task on the application's runtime (`driver_task.rs`), for a
    /// call that needs its answer at once (`into_0rtt`); unset on an I/O thread.
    inline: OnceLock<Box<dyn InlineLoop>>,
    backend: OnceLock<BackendKind>,
    /// The socket's local address, from the I/O thread's start; changed by a rebind. Taken
    /// alone.
    local_addr: Mutex<Option<SocketAddr>>,
    /// Spawned tasks ready to run, in order.
    tasks: Mutex<VecDeque<async_task::Runnable>>,
    task_wakers: Mutex<TaskWakers>,
    /// The rules of sends made by application threads (`direct.rs`).
    pub(crate) handoff: Handoff,
    /// Datagrams other shards forwarded here and this shard has not taken yet (at most
    /// [`MAX_FORWARDED_QUEUED`]).
    pub(crate) forwarded_queued: AtomicUsize,
    /// Their socket, while the backend offers one (Linux); replaced by a rebind, dropped when
    /// the I/O thread exits (so the port is free once it has), with the counts of the senders
    /// before it.
    #[cfg(target_os = "linux")]
    direct: Mutex<(Option<Arc<DirectSender>>, DirectCounts)>,
}

thread_local! {
    /// The endpoint whose I/O thread this is, for [`crate::try_spawn`].
    static CURRENT: std::cell::RefCell<Weak<EndpointShared>> =
        const { std::cell::RefCell::new(Weak::new()) };
}

/// The loop on a runtime, as a call that cannot wait for its next turn sees it
/// (`driver_task.rs` implements it; a trait so this module names nothing above it).
pub(crate) trait InlineLoop: Send + Sync {
    /// Take the queued commands now, on the calling thread, if the loop is not running a turn
    /// elsewhere at this moment; whether it did.
    fn take_commands(&self) -> bool;
}

/// Restores the thread's previous current endpoint ([`EndpointShared::enter_current`]).
#[cfg_attr(not(all(unix, feature = "tokio")), allow(dead_code))]
pub(crate) struct CurrentGuard {
    previous: Weak<EndpointShared>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl EndpointShared {
    /// A new endpoint's state; `exited` disconnects when its I/O thread is done.
    pub(crate) fn new(default_client_config: Option<ClientConfig>, exited: mpsc::Receiver<()>) -> Arc<Self> {
        Arc::new(Self {
            mailbox: Mailbox::new(),
            state: Mutex::new(EpState {
                incoming: VecDeque::new(),
                accept_waiters: Vec::new(),
                idle_waiters: Vec::new(),
                open_connections: 0,
                closed: false,
                driver_exited: false,
                default_client_config,
                stats: EndpointIoStats::default(),
            }),
            handles: AtomicUsize::new(0),
            endpoint_handles: AtomicUsize::new(1),
            thread: Mutex::new(None),
            exited: Mutex::new(Some(exited)),
            thread_id: OnceLock::new(),
            inline: OnceLock::new(),
            backend: OnceLock::new(),
            local_addr: Mutex::new(None),
            tasks: Mutex::new(VecDeque::new()),
            task_wakers: Mutex::new(TaskWakers::default()),
            handoff: Handoff::default(),
            forwarded_queued: AtomicUsize::new(0),
            #[cfg(target_os = "linux")]
            direct: Mutex::new((None, DirectCounts::default())),
        })
    }

    // ---- the I/O thread's side ----

    /// The I/O thread is running `kind` on a socket bound to `local`: record it, and make this
    /// the calling thread's current endpoint ([`EndpointShared::current`]).
    pub(crate) fn enter_io_thread(self: &Arc<Self>, kind: BackendKind, local: SocketAddr) {
        let _ = self.thread_id.set(std::thread::current().id());
        let _ = self.backend.set(kind);
        self.set_local_addr(local);
        CURRENT.with(|c| *c.borrow_mut() = Arc::downgrade(self));
    }

    /// The loop runs `kind` on a socket bound to `local` as a task on the application's
    /// runtime: record it. No thread is the I/O thread; [`EndpointShared::enter_current`]
    /// makes this the current endpoint while the task runs.
    pub(crate) fn enter_runtime(&self, kind: BackendKind, local: SocketAddr) {
        let _ = self.backend.set(kind);
        self.set_local_addr(local);
    }

    /// Make this the calling thread's current endpoint ([`EndpointShared::current`]) until the
    /// guard is dropped: the loop on a runtime, while it runs a turn.
    #[cfg_attr(not(all(unix, feature = "tokio")), allow(dead_code))]
    pub(crate) fn enter_current(self: &Arc<Self>) -> CurrentGuard {
        let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), Arc::downgrade(self)));
        CurrentGuard { previous }
    }

    /// The I/O thread serves a socket bound to `local` from now on (its start, a rebind).
    pub(crate) fn set_local_addr(&self, local: SocketAddr) {
        *lock(&self.local_addr) = Some(local);
    }

    /// Application threads send through `sender` from now on (`None`: not at all).
    #[cfg(target_os = "linux")]
    pub(crate) fn set_direct_sender(&self, sender: Option<DirectSender>) {
        let mut d = lock(&self.direct);
        if let Some(old) = d.0.take() {
            d.1 = d.1.add(old.counts());
        }
        d.0 = sender.map(Arc::new);
    }

    /// The socket application threads send through, if they may.
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn direct_sender(&self) -> Option<Arc<DirectSender>> {
        lock(&self.direct).0.clone().filter(|s| s.usable())
    }

    /// Record the I/O thread's join handle (the last handle's drop joins it).
    pub(crate) fn set_thread(&self, thread: std::thread::JoinHandle<()>) {
        *lock(&self.thread) = Some(thread);
    }

    /// Offer a new connection attempt to `accept`. `room` is how many attempts the admission
    /// cap allows to wait (the cap less those already handshaking).
    pub(crate) fn offer_incoming(&self, incoming: proto::Incoming, room: usize) -> Offer {
        let mut st = lock(&self.state);
        if st.closed {
            return Offer::Closed(incoming);
        }
        if st.incoming.len() >= room {
            return Offer::Full(incoming);
        }
        st.incoming.push_back(incoming);
        // Wake every waiting `accept`: a waker left by a dropped future must not swallow the
        // only wakeup.
        let waiters = std::mem::take(&mut st.accept_waiters);
        drop(st);
        wake_all(waiters);
        Offer::Queued
    }

    /// `Endpoint::close` reached the I/O thread: `accept` yields `None` from now on; the attempts
    /// still waiting are returned, to be refused.
    pub(crate) fn stop_accepting(&self) -> Vec<proto::Incoming> {
        let mut st = lock(&self.state);
        st.closed = true;
        let waiters = st.take_waiters();
        let pending = st.incoming.drain(..).collect();
        drop(st);
        wake_all(waiters);
        pending
    }

    /// How many connections the I/O thread drives; at zero, `wait_idle` returns.
    pub(crate) fn set_open_connections(&self, n: usize) {
        let mut st = lock(&self.state);
        st.open_connections = n;
        let idle = if n == 0 {
            std::mem::take(&mut st.idle_waiters)
        } else {
            Vec::new()
        };
        drop(st);
        wake_all(idle);
    }

    /// The counters of this turn.
    pub(crate) fn publish_stats(&self, stats: EndpointIoStats) {
        lock(&self.state).stats = stats;
    }

    /// The I/O loop has ended: nothing will accept or drive again. Wakes every endpoint waiter.
    pub(crate) fn driver_exited(&self) {
        let mut st = lock(&self.state);
        st.driver_exited = true;
        st.open_connections = 0;
        st.incoming.clear();
        let waiters = st.take_waiters();
        drop(st);
        wake_all(waiters);
    }

    /// The next spawned task ready to run.
    pub(crate) fn next_task(&self) -> Option<async_task::Runnable> {
        lock(&self.tasks).pop_front()
    }

    /// Whether spawned tasks are ready to run.
    pub(crate) fn has_tasks(&self) -> bool {
        !lock(&self.tasks).is_empty()
    }

    /// The I/O thread is exiting (its mailbox is closed already): take every spawned task, to
    /// cancel once the connections have been failed and the backend shut down.
    pub(crate) fn take_tasks(&self) -> TakenTasks {
        TakenTasks {
            queued: lock(&self.tasks).drain(..).collect(),
            live: lock(&self.task_wakers).live.drain().map(|(_, w)| w).collect(),
        }
    }

    // ---- the handles' side ----

    /// The endpoint whose I/O thread the caller runs on, if any.
    pub(crate) fn current() -> Option<Arc<EndpointShared>> {
        CURRENT.with(|c| c.borrow().upgrade())
    }

    /// The loop on a runtime says how a call can have its commands taken at once; from then
    /// on the endpoint counts as one whose loop is on a runtime (before any handle exists).
    #[cfg_attr(not(all(unix, feature = "tokio")), allow(dead_code))]
    pub(crate) fn set_inline_loop(&self, inline: Box<dyn InlineLoop>) {
        let _ = self.inline.set(inline);
    }

    /// Take the queued commands on the calling thread, if the loop is on a runtime and no
    /// turn runs right now; whether that happened. Not from inside the loop's own turn
    /// ([`EndpointShared::in_loop_turn`]: the turn holds the loop).
    pub(crate) fn take_commands_inline(&self) -> bool {
        self.inline.get().is_some_and(|l| l.take_commands())
    }

    /// Whether the caller runs inside this endpoint's loop on a runtime (a task of
    /// `Endpoint::spawn` polled in its turn).
    pub(crate) fn in_loop_turn(self: &Arc<Self>) -> bool {
        self.loop_on_runtime() && Self::current().is_some_and(|c| Arc::ptr_eq(&c, self))
    }

    /// Whether the loop runs as a task on the application's runtime: then a call that needs the
    /// loop's answer has it take the commands on the calling thread
    /// ([`EndpointShared::take_commands_inline`]) instead of waiting for a turn the calling
    /// thread may be the one to run.
    pub(crate) fn loop_on_runtime(&self) -> bool {
        self.inline.get().is_some()
    }

    /// Whether the calling thread is this endpoint's I/O thread.
    pub(crate) fn on_io_thread(&self) -> bool {
        self.thread_id.get() == Some(&std::thread::current().id())
    }

    /// The backend and local address, once the I/O thread runs.
    pub(crate) fn info(&self) -> Option<(BackendKind, SocketAddr)> {
        Some((*self.backend.get()?, (*lock(&self.local_addr))?))
    }

    /// Whether `connect` must fail with `EndpointStopping`.
    pub(crate) fn is_stopping(&self) -> bool {
        lock(&self.state).closed || self.mailbox.is_closed()
    }

    pub(crate) fn default_client_config(&self) -> Option<ClientConfig> {
        lock(&self.state).default_client_config.clone()
    }

    pub(crate) fn set_default_client_config(&self, config: ClientConfig) {
        lock(&self.state).default_client_config = Some(config);
    }

    /// The latest counters, with the application's wakeups.
    pub(crate) fn stats(&self) -> EndpointIoStats {
        let mut s = lock(&self.state).stats;
        s.app_wakeups = self.mailbox.wakeups();
        #[cfg(target_os = "linux")]
        {
            let d = lock(&self.direct);
            d.0.as_ref()
                .map(|c| c.counts())
                .unwrap_or_default()
                .add_to(d.1, &mut s);
        }
        s
    }

    pub(crate) fn open_connections(&self) -> usize {
        lock(&self.state).open_connections
    }

    /// `Endpoint::close`: `accept` yields `None` at once, before the I/O thread gets the command.
    pub(crate) fn close(&self) {
        let waiters = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.take_waiters()
        };
        wake_all(waiters);
    }

    /// The next incoming connection attempt, `None` once the endpoint is closed.
    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<proto::Incoming>> {
        let mut st = lock(&self.state);
        if let Some(inc) = st.incoming.pop_front() {
            return Poll::Ready(Some(inc));
        }
        if st.closed || st.driver_exited {
            return Poll::Ready(None);
        }
        register(&mut st.accept_waiters, cx.waker());
        Poll::Pending
    }

    /// Ready once no connection is left (or the I/O thread has exited).
    pub(crate) fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.state);
        if st.open_connections == 0 || st.driver_exited {
            return Poll::Ready(());
        }
        register(&mut st.idle_waiters, cx.waker());
        Poll::Pending
    }

    /// Queue a spawned task to run and wake the I/O thread; `false` (the task dropped) once the
    /// I/O thread has exited. Checked under the queue's lock, which the exiting thread takes to
    /// cancel what is queued: a task is either queued before that or dropped here.
    pub(crate) fn schedule_task(&self, runnable: async_task::Runnable) -> bool {
        let mut q = lock(&self.tasks);
        if self.mailbox.is_closed() {
            drop(q);
            drop(runnable);
            return false;
        }
        q.push_back(runnable);
        drop(q);
        self.mailbox.notify();
        true
    }

    /// Register a live task's waker; the key forgets it.
    pub(crate) fn register_task(&self, waker: &Waker) -> u64 {
        let mut w = lock(&self.task_wakers);
        let key = w.next_key;
        w.next_key += 1;
        w.live.insert(key, waker.clone());
        key
    }

    pub(crate) fn forget_task(&self, key: u64) {
        lock(&self.task_wakers).live.remove(&key);
    }
}

/// A counted handle keeping the I/O thread alive. The last one to drop shuts the thread down
/// and joins it (for at most [`SHUTDOWN_JOIN_TIMEOUT`]).
pub(crate) struct EndpointRef(pub(crate) Arc<EndpointShared>);

impl EndpointRef {
    /// The first handle of a started endpoint (the one `Endpoint` holds).
    pub(crate) fn new(shared: Arc<EndpointShared>) -> Self {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }

    /// Another endpoint handle (an `Endpoint` clone): counted apart from the rest, because the
    /// last `Endpoint` gone means no one can accept any more.
    pub(crate) fn clone_endpoint(&self) -> Self {
        self.0.endpoint_handles.fetch_add(1, Ordering::AcqRel);
        self.clone()
    }

    /// An `Endpoint` handle is gone; at the last one, newcomers are refused, as quinn does.
    pub(crate) fn drop_endpoint(&self) {
        if self.0.endpoint_handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.0.mailbox.push(Command::SetServerConfig(None));
        }
    }
}

impl Clone for EndpointRef {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
    }
}

impl EndpointRef {
    /// If this is the last handle of any kind, tell the I/O thread to shut down now, without
    /// waiting: the drop that follows then finds it already on its way. A sharded endpoint's
    /// last drop does this for every shard first, so the shards shut down side by side and the
    /// drop waits about as long as for one, not once per shard. Nothing else can add a handle
    /// meanwhile: new ones are only cloned from existing ones, and this is the only one.
    pub(crate) fn shut_down_early_if_last(&self) {
        if self.0.handles.load(Ordering::Acquire) == 1 {
            let _ = self.0.mailbox.push(Command::Shutdown);
        }
    }
}

impl Drop for EndpointRef {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Last handle: stop the I/O thread and wait for it, unless we *are* the I/O thread
        // (a waker dropped there released the last handle); then it exits on its own. The
        // wait is bounded by SHUTDOWN_JOIN_TIMEOUT: past it the thread finishes alone.
        let _ = self.0.mailbox.push(Command::Shutdown);
        if self.0.on_io_thread() {
            return;
        }
        let thread = lock(&self.0.thread).take();
        let exited = lock(&self.0.exited).take();
        let (Some(thread), Some(exited)) = (thread, exited) else {
            return;
        };
        match exited.recv_timeout(SHUTDOWN_JOIN_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                "ringquic I/O thread still shutting down after {SHUTDOWN_JOIN_TIMEOUT:?}; not waiting for it"
            ),
            // Done (the sender was dropped): the join returns at once.
            _ => {
                if thread.join().is_err() {
                    tracing::error!("ringquic I/O thread panicked");
                }
            }
        }
    }
}

/// One connection as both sides see it. The I/O thread holds one in its table; every
/// application handle holds one through a [`ConnectionRef`].
pub(crate) struct ConnectionInner {
    pub(crate) handle: ConnectionHandle,
    state: Mutex<ConnState>,
    shared: Arc<EndpointShared>,
    /// A `Command::Drive` for this connection is queued and not yet taken: coalesce.
    queued: AtomicBool,
    /// An application thread sent for it directly and listed it in the endpoint's
    /// [`Handoff`]; the I/O thread has not looked yet.
    pub(crate) changed: AtomicBool,
    /// A direct send (`direct.rs`) is scheduled on the application's runtime.
    pub(crate) flush_scheduled: AtomicBool,
    /// When it was scheduled ([`Handoff::stamp`]).
    pub(crate) flush_since: AtomicU64,
    /// The connection is in the [`Handoff`]'s list of scheduled flushes.
    pub(crate) flush_listed: AtomicBool,
}

impl ConnectionInner {
    /// A connection the I/O thread has just created. It counts one application handle,
    /// reserved for the `Connecting` that adopts it ([`ConnectionRef::adopt`]).
    pub(crate) fn new(
        handle: ConnectionHandle,
        conn: proto::Connection,
        shared: Arc<EndpointShared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            state: Mutex::new(ConnState::new(conn)),
            shared,
            queued: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            flush_scheduled: AtomicBool::new(false),
            flush_since: AtomicU64::new(0),
            flush_listed: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Its endpoint's shared state.
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn shared(&self) -> &Arc<EndpointShared> {
        &self.shared
    }

    /// Ask the I/O thread to drive this connection. Many calls before the I/O thread gets to it
    /// cost one queued command and at most one wakeup.
    pub(crate) fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // If the I/O thread is gone the connection already carries an error; nothing to do.
            let _ = self.shared.mailbox.push(Command::Drive(self.handle));
        }
    }

    /// Called by the I/O thread when it takes the `Drive` command.
    pub(crate) fn clear_queued(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// One application handle is gone; at the last, the connection is closed with code 0.
    fn release_handle(&self) {
        let mut st = self.lock();
        st.handles -= 1;
        if st.handles == 0 && st.error.is_none() {
            let mut woken = Vec::new();
            st.close(VarInt::from_u32(0), Bytes::new(), &mut woken);
            drop(st);
            self.wake();
            wake_all(woken);
        }
    }
}

/// A connection's state behind its mutex: quinn-proto's connection, how it ended, and who waits.
pub(crate) struct ConnState {
    /// The protocol state machine both sides drive: the application writes and reads streams,
    /// the I/O thread feeds datagrams and timers and polls transmits.
    pub(crate) inner: proto::Connection,
    /// Set once the connection is lost or closed; every later operation reports it.
    error: Option<ConnectionError>,
    connected: bool,
    /// quinn-proto has the peer's handshake parameters (ALPN, server name): `Connecting::handshake_data`.
    handshake_data_ready: bool,
    waiters: Waiters,
    /// Application handles alive (connections, streams, `Connecting`). At zero the connection
    /// is closed with code 0, as in quinn.
    handles: usize,
    /// The I/O loop turn that last queued sends for this connection ([`Handoff`]).
    pub(crate) io_send_turn: u64,
    /// Datagram back-pressure: packets held while the application's reads are behind.
    pub(crate) dgram_flow: DatagramFlow<proto::ConnectionEvent>,
}

impl ConnState {
    fn new(inner: proto::Connection) -> Self {
        Self {
            inner,
            error: None,
            connected: false,
            handshake_data_ready: false,
            waiters: Waiters::default(),
            handles: 1,
            io_send_turn: 0,
            dgram_flow: DatagramFlow::default(),
        }
    }

    /// Why the connection ended, once it has.
    pub(crate) fn error(&self) -> Option<ConnectionError> {
        self.error.clone()
    }

    /// Whether the connection ended because this side closed it.
    pub(crate) fn closed_locally(&self) -> bool {
        self.error == Some(ConnectionError::LocallyClosed)
    }

    /// Whether a stream opened in 0-RTT data may still be used: while the handshake runs, once
    /// the server has accepted the 0-RTT data, or on the server (as quinn's `check_0rtt`).
    pub(crate) fn zero_rtt_ok(&self) -> bool {
        self.inner.is_handshaking() || self.inner.accepted_0rtt() || self.inner.side().is_server()
    }

    /// Where application tasks register to be woken.
    pub(crate) fn waiters(&mut self) -> &mut Waiters {
        &mut self.waiters
    }

    /// The handshake's outcome for a `Connecting`: ready when connected or ended, else the
    /// task waits for it.
    pub(crate) fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if self.connected {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = self.error() {
            return Poll::Ready(Err(e));
        }
        self.waiters.connected(cx.waker());
        Poll::Pending
    }

    /// Ready once the peer's handshake parameters are known (`Connecting::handshake_data`), or
    /// the connection has ended.
    pub(crate) fn poll_handshake_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Box<dyn std::any::Any>, ConnectionError>> {
        if self.handshake_data_ready || self.error.is_some() {
            return Poll::Ready(match self.inner.crypto_session().handshake_data() {
                Some(d) => Ok(d),
                None => Err(self.error().unwrap_or(ConnectionError::LocallyClosed)),
            });
        }
        self.waiters.handshake_data(cx.waker());
        Poll::Pending
    }

    /// Whether the server accepted this client's 0-RTT data, once the handshake is over
    /// (`ZeroRttAccepted`): `false` if it ended otherwise.
    pub(crate) fn poll_zero_rtt_accepted(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.connected {
            return Poll::Ready(self.inner.accepted_0rtt());
        }
        if self.error.is_some() {
            return Poll::Ready(false);
        }
        self.waiters.connected(cx.waker());
        Poll::Pending
    }

    /// Whether `Connecting::into_0rtt` may hand the connection out now: a client with 0-RTT keys
    /// (a resumed session whose ticket allows early data), or any server (0.5-RTT).
    pub(crate) fn may_use_0rtt(&self) -> bool {
        self.inner.has_0rtt() || self.inner.side().is_server()
    }

    /// Apply one application event from quinn-proto; wakers to wake are collected in `woken`.
    pub(crate) fn on_event(&mut self, ev: proto::Event, woken: &mut Vec<Waker>) {
        use proto::Event::*;
        match ev {
            HandshakeDataReady => {
                self.handshake_data_ready = true;
                self.waiters.handshake_data_ready(woken);
            }
            DatagramsUnblocked => self.waiters.datagrams_unblocked(woken),
            Connected => {
                self.connected = true;
                self.waiters.handshake_done(woken);
                if self.inner.side().is_client() && !self.inner.accepted_0rtt() {
                    // Streams opened in rejected 0-RTT data fail now, with `ZeroRttRejected`.
                    self.waiters.stream_waiters(woken);
                }
            }
            ConnectionLost { reason } => self.terminate(reason, woken),
            Stream(ev) => self.waiters.on_stream_event(ev, woken),
            DatagramReceived => self.waiters.datagram_received(woken),
        }
    }

    /// Wake `SendStream::stopped` waiters whose stream quinn-proto has freed without an event
    /// (it frees a reset stream once the peer acknowledges the RESET_STREAM, silently).
    pub(crate) fn wake_freed_stopped(&mut self, woken: &mut Vec<Waker>) {
        if !self.waiters.has_stopped() {
            return;
        }
        let inner = &mut self.inner;
        self.waiters
            .take_freed_stopped(|id| inner.send_stream(id).stopped().is_err(), woken);
    }

    /// Record the connection's end and wake everything waiting on it.
    pub(crate) fn terminate(&mut self, reason: ConnectionError, woken: &mut Vec<Waker>) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
        self.waiters.take_all(woken);
    }

    /// Close from this side: CONNECTION_CLOSE goes out on the next drive; every waiter fails
    /// with `LocallyClosed`. A connection that has already ended is left as it is.
    pub(crate) fn close(&mut self, code: VarInt, reason: Bytes, woken: &mut Vec<Waker>) {
        if self.error.is_none() {
            self.inner.close(Instant::now(), code, reason);
        }
        self.terminate(ConnectionError::LocallyClosed, woken);
    }
}

/// A counted application handle to a connection: while any exists the connection stays open;
/// when the last goes, the connection is closed with code 0 (as quinn does). It also keeps the
/// endpoint's I/O thread alive.
pub(crate) struct ConnectionRef {
    inner: Arc<ConnectionInner>,
    endpoint: EndpointRef,
}

impl ConnectionRef {
    /// Take over the handle count the I/O thread reserved when it created the connection (see
    /// [`ConnectionInner::new`]), so the connection is never seen without handles before the
    /// application holds one.
    pub(crate) fn adopt(inner: Arc<ConnectionInner>, endpoint: EndpointRef) -> Self {
        Self { inner, endpoint }
    }

    /// The connection itself, for work scheduled beyond this handle's life (`direct.rs`).
    pub(crate) fn inner(&self) -> &Arc<ConnectionInner> {
        &self.inner
    }

    /// An identifier unique among the endpoint's live connections.
    pub(crate) fn stable_id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}

impl Clone for ConnectionRef {
    fn clone(&self) -> Self {
        self.inner.lock().handles += 1;
        Self::adopt(self.inner.clone(), self.endpoint.clone())
    }
}

impl Drop for ConnectionRef {
    fn drop(&mut self) {
        self.inner.release_handle();
    }
}

impl std::ops::Deref for ConnectionRef {
    type Target = ConnectionInner;
    fn deref(&self) -> &ConnectionInner {
        &self.inner
    }
}

impl std::fmt::Debug for ConnectionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRef")
            .field("handle", &self.handle.0)
            .finish()
    }
}

/// A connection the I/O thread creates for [`Endpoint::connect`](crate::Endpoint::connect) or
/// [`Incoming::accept`](crate::Incoming::accept): quinn-proto's connect and accept run TLS
/// (key generation, the server's certificate signature), far too much to do under the
/// endpoint lock the I/O thread routes datagrams with (measured: handshakes/s fell by a
/// quarter when the application did it), so the application's call only queues it and the
/// `Connecting` waits for it, asynchronously.
#[derive(Default)]
struct PendingAccept {
    state: Mutex<PendingState>,
    /// Signalled with the answer, for [`AcceptWait::wait_blocking`].
    answered: std::sync::Condvar,
}

#[derive(Default)]
struct PendingState {
    result: Option<Result<Arc<ConnectionInner>, ConnectionError>>,
    waker: Option<Waker>,
    /// The `Connecting` is gone: a connection that arrives now is released at once.
    abandoned: bool,
}

/// The I/O thread's end of a pending connect or accept. Dropped unanswered (the I/O thread
/// exited with the command still queued), it answers `LocallyClosed`, so nothing waits for ever.
pub(crate) struct AcceptReply(Option<Arc<PendingAccept>>);

impl AcceptReply {
    /// A new pending accept: the reply for the I/O thread, the wait for the `Connecting`.
    pub(crate) fn new() -> (Self, AcceptWait) {
        let p = Arc::new(PendingAccept::default());
        (Self(Some(p.clone())), AcceptWait(p))
    }

    /// Answer. A connection whose `Connecting` is already gone is released (closed, code 0).
    pub(crate) fn complete(mut self, result: Result<Arc<ConnectionInner>, ConnectionError>) {
        let Some(p) = self.0.take() else { return };
        let mut st = lock(&p.state);
        p.answered.notify_all();
        if st.abandoned {
            drop(st);
            if let Ok(inner) = result {
                inner.release_handle();
            }
            return;
        }
        let waker = st.waker.take();
        match (waker, &result) {
            // The task waiting for the connection would only find it handshaking: leave its
            // waker with the connection instead, to be woken once, when the handshake ends.
            (Some(w), Ok(inner)) => {
                inner.lock().waiters.connected_owned(w);
                st.result = Some(result);
            }
            (waker, _) => {
                st.result = Some(result);
                drop(st);
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }
}

impl Drop for AcceptReply {
    fn drop(&mut self) {
        if self.0.is_some() {
            Self(self.0.take()).complete(Err(ConnectionError::LocallyClosed));
        }
    }
}

/// The `Connecting`'s end of a pending connect or accept.
pub(crate) struct AcceptWait(Arc<PendingAccept>);

impl AcceptWait {
    /// Wait on this thread for the I/O thread's answer, at most `limit`: `None` if it has not
    /// come by then. Only `Connecting::into_0rtt` uses it (a synchronous call that needs the
    /// connection itself); the I/O thread answers on its next turn. It must not be called on the
    /// I/O thread, which would wait for itself.
    pub(crate) fn wait_blocking(
        &self,
        limit: Duration,
    ) -> Option<Result<Arc<ConnectionInner>, ConnectionError>> {
        let deadline = Instant::now() + limit;
        let mut st = lock(&self.0.state);
        loop {
            if let Some(r) = st.result.take() {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .0
                .answered
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The connection, once the I/O thread has created it (or the reason it could not).
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Arc<ConnectionInner>, ConnectionError>> {
        let mut st = lock(&self.0.state);
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for AcceptWait {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.abandoned = true;
        if let Some(Ok(inner)) = st.result.take() {
            drop(st);
            inner.release_handle();
        }
    }
}
