//! [`Endpoint`], its builder, and [`Incoming`] connections.
//!
//! An endpoint is a UDP socket served by one I/O thread (see `driver.rs`). The application holds
//! cheap handles; they reach the I/O thread through the [`Mailbox`]. When the last handle of any
//! kind (endpoint, connection, stream) is dropped, the I/O thread closes what is left, cancels
//! in-flight I/O, frees its buffers and is joined.

use std::{
    collections::VecDeque,
    future::{Future, IntoFuture},
    io,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
    task::{Context, Poll, Waker},
    thread::ThreadId,
    time::Duration,
};

use bytes::Bytes;
use quinn_proto::{self as proto, ClientConfig, ConnectError, EndpointConfig, ServerConfig, VarInt};

use crate::{
    connection::{register, AcceptReply, Connecting, Connection},
    driver::{self, DriverSetup},
    io::{BackendKind, IoConfig},
    mailbox::{lock, Command, Mailbox},
    ConnectionError, EndpointError,
};

/// Counters of an endpoint's I/O, for monitoring and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// UDP datagrams received (after splitting GRO batches).
    pub datagrams_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// UDP datagrams sent (GSO batches counted per datagram).
    pub datagrams_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// Datagrams dropped on receive: truncated (larger than a receive buffer) or with
    /// unparsable metadata.
    pub recv_dropped: u64,
    /// Times every receive buffer was in use, so receiving paused until buffers came back
    /// (datagrams wait in the kernel's socket buffer meanwhile).
    pub recv_starved: u64,
    /// Times the kernel ended a multishot receive and the I/O thread re-armed it.
    pub recv_rearms: u64,
    /// Sends that failed (the datagrams are lost, as on a lossy path; QUIC recovers them). On
    /// io_uring a full socket buffer (`EAGAIN`/`ENOBUFS`) counts too; the poll backend queues
    /// such sends until the socket is writable instead.
    pub send_errors: u64,
    /// Times a connection had data to send but every TX buffer was in flight.
    pub tx_exhausted: u64,
    /// Times GSO was refused by the kernel and turned off.
    pub gso_disabled: u64,
    /// Receives (one GRO batch each) handed to quinn-proto and the application in the very
    /// buffer the kernel filled, without a copy (io_uring; see
    /// [`EndpointBuilder::zero_copy_threshold`]).
    pub recv_zero_copy: u64,
    /// Sends submitted as zero-copy `SENDMSG_ZC` (see
    /// [`EndpointBuilder::send_zero_copy_threshold`]).
    pub send_zero_copy: u64,
    /// Zero-copy sends the kernel reported it had to copy after all (on loopback, all of them).
    pub send_zero_copy_copied: u64,
    /// Receive buffers lent out by zero-copy receive that are still held by quinn-proto or the
    /// application now (a gauge, not a counter; at most
    /// [`EndpointBuilder::recv_memory_budget`] bytes' worth).
    pub recv_buffers_lent: u64,
    /// Endpoint-level responses (version negotiation, stateless reset, refusals) dropped for lack
    /// of a TX buffer.
    pub responses_dropped: u64,
    /// Incoming connections answered with a Retry because address validation is on.
    pub incoming_retried: u64,
    /// Incoming connections refused because `max_incoming` were already pending or handshaking.
    pub incoming_refused: u64,
    /// Wakeups the application sent to the I/O thread (coalesced: many commands, one wakeup).
    pub app_wakeups: u64,
    /// Turns of the I/O loop.
    pub loop_turns: u64,
    /// Connections the I/O thread drives now.
    pub open_connections: u64,
}

/// Application-visible endpoint state, shared with the I/O thread.
pub(crate) struct EpState {
    pub(crate) incoming: VecDeque<proto::Incoming>,
    pub(crate) accept_waiters: Vec<Waker>,
    pub(crate) idle_waiters: Vec<Waker>,
    pub(crate) open_connections: usize,
    /// `Endpoint::close` was called, or the I/O thread exited: `accept` yields `None`.
    pub(crate) closed: bool,
    pub(crate) driver_exited: bool,
    pub(crate) default_client_config: Option<ClientConfig>,
    pub(crate) stats: EndpointStats,
}

/// Everything the handles and the I/O thread share.
pub(crate) struct EndpointShared {
    pub(crate) mailbox: Mailbox,
    pub(crate) state: Mutex<EpState>,
    /// Handles of any kind alive (endpoints, connections, streams, incoming).
    handles: AtomicUsize,
    /// Endpoint handles alive; at zero no new connections are accepted.
    endpoint_handles: AtomicUsize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Disconnects when the I/O thread is done (its sender is dropped as `driver::run` returns).
    exited: Mutex<Option<mpsc::Receiver<()>>>,
    pub(crate) thread_id: OnceLock<ThreadId>,
    pub(crate) info: OnceLock<(BackendKind, SocketAddr)>,
    /// Application tasks spawned onto the I/O thread ([`Endpoint::spawn`]), ready to run.
    pub(crate) local_tasks: Mutex<VecDeque<async_task::Runnable>>,
    /// A waker of every live spawned task, so the exiting I/O thread can cancel even tasks
    /// nothing else would ever wake.
    pub(crate) task_wakers: Mutex<(u64, rustc_hash::FxHashMap<u64, Waker>)>,
}

impl EndpointShared {
    /// Whether the calling thread is this endpoint's I/O thread.
    pub(crate) fn on_io_thread(&self) -> bool {
        self.thread_id.get() == Some(&std::thread::current().id())
    }
}

impl EndpointShared {
    /// Take every task waiting on the endpoint (accept, wait_idle), to wake once the state's
    /// lock is released.
    pub(crate) fn take_waiters(st: &mut EpState) -> Vec<Waker> {
        st.accept_waiters
            .drain(..)
            .chain(st.idle_waiters.drain(..))
            .collect()
    }
}

/// How long the drop of an endpoint's last handle waits for its I/O thread to finish shutting
/// down (closing connections, cancelling in-flight I/O) before leaving it to finish alone.
/// Normally the thread is done within a few milliseconds; io_uring's wait for the kernel to
/// give back every buffer can take longer only when the kernel is stuck (it gives up after 5 s
/// and then leaks the memory rather than free it under the kernel).
pub const SHUTDOWN_JOIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A counted handle keeping the I/O thread alive. The last one to drop shuts the thread down
/// and joins it.
pub(crate) struct EndpointRef(pub(crate) Arc<EndpointShared>);

impl EndpointRef {
    fn new(shared: Arc<EndpointShared>) -> Self {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Clone for EndpointRef {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
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

/// A QUIC endpoint: one UDP socket, one I/O thread, any number of connections.
///
/// Cheap to clone. Created with [`Endpoint::server`], [`Endpoint::client`] or
/// [`Endpoint::builder`].
pub struct Endpoint {
    inner: EndpointRef,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        self.inner.0.endpoint_handles.fetch_add(1, Ordering::AcqRel);
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.inner.0.endpoint_handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // No one can accept any more: refuse newcomers, as quinn does.
            let _ = self.inner.0.mailbox.push(Command::SetServerConfig(None));
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("backend", &self.backend())
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

impl Endpoint {
    /// A builder with the defaults: automatic backend choice, 256 receive buffers of 64 KiB
    /// (plus headers), 64 TX buffers of 64 KiB.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder::default()
    }

    /// A server (that can also connect out) bound to `addr`.
    pub fn server(config: ServerConfig, addr: SocketAddr) -> Result<Self, EndpointError> {
        Self::builder().server_config(config).bind(addr)
    }

    /// A client bound to `addr` (use port 0 for any). Set a client configuration with
    /// [`Endpoint::set_default_client_config`] or use [`Endpoint::connect_with`].
    pub fn client(addr: SocketAddr) -> Result<Self, EndpointError> {
        Self::builder().bind(addr)
    }

    pub(crate) fn shared(&self) -> &Arc<EndpointShared> {
        &self.inner.0
    }

    /// Which I/O backend serves this endpoint.
    pub fn backend(&self) -> BackendKind {
        self.shared().info.get().map_or(BackendKind::Poll, |i| i.0)
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared()
            .info
            .get()
            .map(|i| i.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "endpoint not running"))
    }

    /// Counters of the endpoint's I/O.
    pub fn stats(&self) -> EndpointStats {
        let mut s = lock(&self.shared().state).stats;
        s.app_wakeups = self.shared().mailbox.wakeups();
        s
    }

    /// Number of connections the I/O thread is driving (including closing ones).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared().state).open_connections
    }

    /// Set the client configuration [`Endpoint::connect`] uses.
    pub fn set_default_client_config(&mut self, config: ClientConfig) {
        lock(&self.shared().state).default_client_config = Some(config);
    }

    /// Replace the server configuration (new connections only); `None` stops accepting.
    pub fn set_server_config(&self, config: Option<ServerConfig>) {
        let _ = self
            .shared()
            .mailbox
            .push(Command::SetServerConfig(config.map(Arc::new)));
    }

    /// Connect to `addr` with the default client configuration.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Connecting, ConnectError> {
        let config = lock(&self.shared().state)
            .default_client_config
            .clone()
            .ok_or(ConnectError::NoDefaultClientConfig)?;
        self.connect_with(config, addr, server_name)
    }

    /// Connect to `addr` with `config`. `server_name` is checked against the server's
    /// certificate.
    ///
    /// Never waits for the I/O thread: what can be checked here is (the endpoint closed or
    /// stopped: [`ConnectError::EndpointStopping`]; an unusable address; a server name rustls
    /// cannot use), and the connection itself is created by the I/O thread on its next turn
    /// (TLS key generation belongs there); the rare failures only quinn-proto can tell
    /// (connection IDs exhausted, an unsupported version) are reported by the returned
    /// [`Connecting`] (see PORTING.md).
    pub fn connect_with(
        &self,
        config: ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connecting, ConnectError> {
        let addr = match (addr, self.local_addr()) {
            // A v4 destination is fine on a dual-stack v6 socket; a v6 one is not on a v4 socket.
            (SocketAddr::V6(v6), Ok(SocketAddr::V4(_))) if v6.ip().to_ipv4_mapped().is_none() => {
                return Err(ConnectError::InvalidRemoteAddress(addr))
            }
            _ => addr,
        };
        // quinn-proto's own checks, made here so they fail at once, as in quinn.
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(ConnectError::InvalidRemoteAddress(addr));
        }
        if rustls::pki_types::ServerName::try_from(server_name).is_err() {
            return Err(ConnectError::InvalidServerName(server_name.into()));
        }
        let shared = self.shared();
        if lock(&shared.state).closed || shared.mailbox.is_closed() {
            return Err(ConnectError::EndpointStopping);
        }
        let (reply, wait) = AcceptReply::new();
        shared
            .mailbox
            .push(Command::Connect {
                config,
                remote: addr,
                server_name: server_name.to_owned(),
                reply,
            })
            .map_err(|_| ConnectError::EndpointStopping)?;
        Ok(Connecting::pending(wait, self.inner.clone(), addr, None))
    }

    /// Run `future` on the endpoint's I/O thread, next to the socket and the connections
    /// (thread-per-core style), instead of on the application's runtime.
    ///
    /// Wakeups between such a task and the I/O loop stay on one thread: no system call, no
    /// context switch, which is what small request/response work pays for otherwise. The task
    /// must not block (it shares the thread with all the endpoint's I/O); ringquic's own
    /// futures never do, and `connect`/`accept` work inline there. Await the returned handle
    /// from anywhere for the output; dropping the handle lets the task run on (detaches).
    /// If the endpoint's thread exits, remaining tasks are cancelled.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        spawn_on(self.shared(), future)
    }

    /// Wait for the next incoming connection; `None` once the endpoint is closed.
    pub fn accept(&self) -> Accept<'_> {
        Accept { endpoint: self }
    }

    /// Close every connection with `code` and `reason` and stop accepting: from now on
    /// [`Endpoint::accept`] yields `None` and [`Endpoint::connect`] fails with
    /// [`ConnectError::EndpointStopping`]. Use [`Endpoint::wait_idle`] to let the close frames
    /// reach the peers.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let waiters = {
            let mut st = lock(&self.shared().state);
            st.closed = true;
            EndpointShared::take_waiters(&mut st)
        };
        waiters.into_iter().for_each(Waker::wake);
        let _ = self.shared().mailbox.push(Command::Close {
            code,
            reason: Bytes::copy_from_slice(reason),
        });
    }

    /// Wait until every connection has been cleaned up (closed and drained), so close frames
    /// and in-flight data have gone out.
    pub async fn wait_idle(&self) {
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.shared().state);
            if st.open_connections == 0 || st.driver_exited {
                return Poll::Ready(());
            }
            register(&mut st.idle_waiters, cx.waker());
            Poll::Pending
        })
        .await
    }
}

/// Spawn `future` onto `shared`'s I/O thread.
pub(crate) fn spawn_on<F>(shared: &Arc<EndpointShared>, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let weak = Arc::downgrade(shared);
    let schedule = move |runnable: async_task::Runnable| {
        let Some(shared) = weak.upgrade() else { return };
        let mut q = lock(&shared.local_tasks);
        // Checked under the queue's lock, which the exiting I/O thread takes to cancel what is
        // queued: a task is either queued before that or dropped here.
        if shared.mailbox.is_closed() {
            drop(q);
            drop(runnable);
            return;
        }
        q.push_back(runnable);
        drop(q);
        shared.mailbox.notify();
    };
    let future = Cancellable {
        fut: Box::pin(future),
        shared: Arc::downgrade(shared),
        key: None,
    };
    let (runnable, task) = async_task::spawn(future, schedule);
    runnable.schedule();
    JoinHandle(Some(task.fallible()))
}

/// Spawn `future` onto the I/O thread the caller is running on, next to the caller: call it
/// from a task started with [`Endpoint::spawn`] to start sibling tasks there (as
/// `tokio::spawn` does inside a runtime). Anywhere else the future is handed back.
pub fn try_spawn<F>(future: F) -> Result<JoinHandle<F::Output>, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match crate::driver::current_endpoint() {
        Some(shared) => Ok(spawn_on(&shared, future)),
        None => Err(future),
    }
}

/// A spawned task's future, registered with the endpoint so the exiting I/O thread can wake
/// (and thereby cancel) it. A panic while polling it is caught here and becomes the task's
/// output, so it ends that task only: the I/O thread, its connections and other tasks go on
/// (as with `tokio::spawn`).
struct Cancellable<F> {
    fut: Pin<Box<F>>,
    shared: std::sync::Weak<EndpointShared>,
    key: Option<u64>,
}

/// What a panicking task left behind.
type PanicPayload = Box<dyn std::any::Any + Send + 'static>;

impl<F: Future> Future for Cancellable<F> {
    type Output = Result<F::Output, PanicPayload>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.key.is_none() {
            // Every waker of one async-task task schedules that same task: one is enough.
            if let Some(shared) = self.shared.upgrade() {
                let mut w = lock(&shared.task_wakers);
                let key = w.0;
                w.0 += 1;
                w.1.insert(key, cx.waker().clone());
                self.key = Some(key);
            }
        }
        // The future is not polled again after a panic (the task completes with the payload),
        // so whatever state the panic left it in is never observed: unwind safety holds.
        let fut = self.fut.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                tracing::debug!("a task spawned on the I/O thread panicked");
                Poll::Ready(Err(payload))
            }
        }
    }
}

impl<F> Drop for Cancellable<F> {
    fn drop(&mut self) {
        if let (Some(key), Some(shared)) = (self.key, self.shared.upgrade()) {
            lock(&shared.task_wakers).1.remove(&key);
        }
    }
}

/// A task running on an endpoint's I/O thread ([`Endpoint::spawn`]). Await it for the task's
/// output; drop it to let the task run on.
#[must_use = "dropping a JoinHandle detaches the task"]
pub struct JoinHandle<T>(Option<async_task::FallibleTask<Result<T, PanicPayload>>>);

/// Why a task started with [`Endpoint::spawn`] produced no output: it was cancelled, or it
/// panicked (the panic ended that task only).
pub struct JoinError {
    /// `None`: cancelled. The payload sits behind a mutex only so `JoinError` is `Sync`.
    panic: Option<Mutex<PanicPayload>>,
}

impl JoinError {
    fn cancelled() -> Self {
        Self { panic: None }
    }

    /// The task was cancelled: [`JoinHandle::abort`], or its endpoint's I/O thread exited.
    pub fn is_cancelled(&self) -> bool {
        self.panic.is_none()
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// The panic's payload, to resume it with [`std::panic::resume_unwind`]; `Err(self)` if the
    /// task was cancelled instead.
    pub fn try_into_panic(self) -> Result<PanicPayload, JoinError> {
        match self.panic {
            Some(p) => Ok(p.into_inner().unwrap_or_else(|e| e.into_inner())),
            None => Err(self),
        }
    }

    /// The panic message, when the payload is a string (as with `panic!("...")`).
    fn message(&self) -> Option<String> {
        let p = self.panic.as_ref()?;
        let p = lock(p);
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
    }
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.panic, self.message()) {
            (None, _) => f.write_str("the task was cancelled"),
            (Some(_), Some(m)) => write!(f, "the task panicked: {m}"),
            (Some(_), None) => f.write_str("the task panicked"),
        }
    }
}

impl std::fmt::Debug for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.panic, self.message()) {
            (None, _) => f.write_str("JoinError::Cancelled"),
            (Some(_), m) => write!(f, "JoinError::Panic({:?})", m.as_deref().unwrap_or("...")),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for io::Error {
    fn from(e: JoinError) -> Self {
        io::Error::other(e)
    }
}

impl<T> JoinHandle<T> {
    /// Cancel the task: its future is dropped (on the I/O thread, or here if it is not running).
    pub fn abort(mut self) {
        drop(self.0.take());
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(t) => Pin::new(t).poll(cx).map(|r| match r {
                Some(Ok(v)) => Ok(v),
                Some(Err(panic)) => Err(JoinError {
                    panic: Some(Mutex::new(panic)),
                }),
                None => Err(JoinError::cancelled()),
            }),
            None => Poll::Ready(Err(JoinError::cancelled())),
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.detach();
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle").finish_non_exhaustive()
    }
}

/// Future of [`Endpoint::accept`].
#[must_use = "futures do nothing unless polled"]
pub struct Accept<'a> {
    endpoint: &'a Endpoint,
}

impl Future for Accept<'_> {
    type Output = Option<Incoming>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        let shared = self.endpoint.shared();
        let mut st = lock(&shared.state);
        if let Some(inc) = st.incoming.pop_front() {
            drop(st);
            return Poll::Ready(Some(Incoming {
                inner: Some(inc),
                endpoint: self.endpoint.inner.clone(),
            }));
        }
        if st.closed || st.driver_exited {
            return Poll::Ready(None);
        }
        register(&mut st.accept_waiters, cx.waker());
        Poll::Pending
    }
}

/// A connection attempt not yet accepted. Await it (or call [`Incoming::accept`]) to accept;
/// dropping it refuses the connection.
pub struct Incoming {
    inner: Option<proto::Incoming>,
    endpoint: EndpointRef,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.remote_address())
            .finish()
    }
}

impl Incoming {
    fn take(&mut self) -> proto::Incoming {
        self.inner.take().expect("Incoming is consumed only once")
    }

    /// Accept with the endpoint's server configuration.
    pub fn accept(self) -> Result<Connecting, ConnectionError> {
        self.accept_inner(None)
    }

    /// Accept with a specific server configuration.
    pub fn accept_with(self, server_config: Arc<ServerConfig>) -> Result<Connecting, ConnectionError> {
        self.accept_inner(Some(server_config))
    }

    /// Queue the accept for the I/O thread and return at once: quinn-proto's accept runs the
    /// TLS server's first flight, which belongs on the I/O thread rather than under the
    /// endpoint lock it routes datagrams with. The returned [`Connecting`] waits for it; an
    /// accept that fails (or an endpoint that has stopped) is reported there.
    fn accept_inner(
        mut self,
        server_config: Option<Arc<ServerConfig>>,
    ) -> Result<Connecting, ConnectionError> {
        let (remote, local_ip) = (self.remote_address(), self.local_ip());
        let incoming = self.take();
        let (reply, wait) = AcceptReply::new();
        self.endpoint
            .0
            .mailbox
            .push(Command::Accept {
                incoming,
                server_config,
                reply,
            })
            // The I/O thread has exited (the returned command, with its reply, is dropped).
            .map_err(|_| ConnectionError::LocallyClosed)?;
        Ok(Connecting::pending(wait, self.endpoint.clone(), remote, local_ip))
    }

    /// Refuse: the peer gets a CONNECTION_REFUSED close.
    pub fn refuse(mut self) {
        let inc = self.take();
        let _ = self.endpoint.0.mailbox.push(Command::Refuse(inc));
    }

    /// Answer with a Retry packet so the peer proves its address. Fails if the peer's address is
    /// already validated (see [`Incoming::may_retry`]).
    pub fn retry(mut self) -> Result<(), RetryError> {
        if !self.may_retry() {
            return Err(RetryError(Box::new(self)));
        }
        let inc = self.take();
        let _ = self.endpoint.0.mailbox.push(Command::Retry(inc));
        Ok(())
    }

    /// Drop the attempt silently.
    pub fn ignore(mut self) {
        let inc = self.take();
        let _ = self.endpoint.0.mailbox.push(Command::Ignore(inc));
    }

    /// The local IP address the peer sent to, when known.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.inner.as_ref().and_then(|i| i.local_ip())
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner
            .as_ref()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.remote_address())
    }

    /// Whether the peer's address was validated (by a Retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.remote_address_validated())
    }

    /// Whether [`Incoming::retry`] is allowed.
    pub fn may_retry(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.may_retry())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(inc) = self.inner.take() {
            let _ = self.endpoint.0.mailbox.push(Command::Refuse(inc));
        }
    }
}

impl IntoFuture for Incoming {
    type Output = Result<Connection, ConnectionError>;
    type IntoFuture = IncomingFuture;

    fn into_future(self) -> IncomingFuture {
        IncomingFuture(self.accept().map_err(Some))
    }
}

/// Future of awaiting an [`Incoming`]: accept, then complete the handshake.
pub struct IncomingFuture(Result<Connecting, Option<ConnectionError>>);

impl Future for IncomingFuture {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Ok(c) => Pin::new(c).poll(cx),
            Err(e) => Poll::Ready(Err(e.take().unwrap_or(ConnectionError::LocallyClosed))),
        }
    }
}

/// [`Incoming::retry`] was not possible; the incoming connection is given back.
#[derive(Debug, thiserror::Error)]
#[error("retry() with validated Incoming")]
pub struct RetryError(Box<Incoming>);

impl RetryError {
    /// Take the incoming connection back.
    pub fn into_incoming(self) -> Incoming {
        *self.0
    }
}

/// Builds an [`Endpoint`] with non-default settings.
#[must_use]
pub struct EndpointBuilder {
    backend: Option<BackendKind>,
    server_config: Option<ServerConfig>,
    client_config: Option<ClientConfig>,
    endpoint_config: EndpointConfig,
    recv_buffers: usize,
    recv_buffer_size: usize,
    tx_buffers: usize,
    tx_buffer_size: usize,
    validate_addresses: bool,
    max_incoming: usize,
    zero_copy_min: usize,
    recv_memory_budget: usize,
    send_zc_min: usize,
    busy_poll: Duration,
    pin_cpu: Option<usize>,
    sqpoll_idle: Option<Duration>,
    #[cfg(test)]
    fake: Option<FakeFactory>,
}

impl std::fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("backend", &self.backend)
            .field("recv_buffers", &self.recv_buffers)
            .field("recv_buffer_size", &self.recv_buffer_size)
            .field("tx_buffers", &self.tx_buffers)
            .field("tx_buffer_size", &self.tx_buffer_size)
            .field("validate_addresses", &self.validate_addresses)
            .field("max_incoming", &self.max_incoming)
            .field("zero_copy_threshold", &self.zero_copy_min)
            .field("recv_memory_budget", &self.recv_memory_budget)
            .field("send_zero_copy_threshold", &self.send_zc_min)
            .field("busy_poll", &self.busy_poll)
            .field("pin_cpu", &self.pin_cpu)
            .field("sqpoll_idle", &self.sqpoll_idle)
            .finish_non_exhaustive()
    }
}

/// Tests: builds a fake backend on the I/O thread from the endpoint's (unused) socket.
#[cfg(test)]
pub(crate) type FakeFactory =
    Box<dyn FnOnce(&std::net::UdpSocket, &IoConfig) -> Box<dyn crate::io::IoBackend> + Send>;

/// Default cap on incoming connections waiting for `accept` plus those still handshaking.
pub const DEFAULT_MAX_INCOMING: usize = 1024;

/// Default number of receive buffers.
pub const DEFAULT_RECV_BUFFERS: usize = 256;
/// Default size of one receive buffer: a 64 KiB GRO batch plus the backend's headers.
pub const DEFAULT_RECV_BUFFER_SIZE: usize = 65536 + 256;
/// Default number of TX buffers.
pub const DEFAULT_TX_BUFFERS: usize = 64;
/// Default [`EndpointBuilder::zero_copy_threshold`]: 16 KiB, about a dozen full-size datagrams
/// coalesced by GRO. Each zero-copy buffer then carries at least a quarter of its capacity.
pub const DEFAULT_ZERO_COPY_THRESHOLD: usize = 16 * 1024;
/// Default [`EndpointBuilder::recv_memory_budget`]: 32 MiB, 510 default-size receive buffers (on
/// io_uring, 255 for zero-copy receive and 255 for pooled copies). Measured: 8 MiB (63 lent
/// kernel buffers) cost a one-connection download on io_uring 10% of its throughput and 13%
/// more CPU, because lending ran out and receives were copied; 32 MiB gives all of it back.
pub const DEFAULT_RECV_MEMORY_BUDGET: usize = 32 << 20;
/// Default size of one TX buffer: the largest GSO batch.
pub const DEFAULT_TX_BUFFER_SIZE: usize = 65536;

impl Default for EndpointBuilder {
    fn default() -> Self {
        Self {
            backend: None,
            server_config: None,
            client_config: None,
            endpoint_config: EndpointConfig::default(),
            recv_buffers: DEFAULT_RECV_BUFFERS,
            recv_buffer_size: DEFAULT_RECV_BUFFER_SIZE,
            tx_buffers: DEFAULT_TX_BUFFERS,
            tx_buffer_size: DEFAULT_TX_BUFFER_SIZE,
            validate_addresses: false,
            max_incoming: DEFAULT_MAX_INCOMING,
            zero_copy_min: DEFAULT_ZERO_COPY_THRESHOLD,
            recv_memory_budget: DEFAULT_RECV_MEMORY_BUDGET,
            send_zc_min: usize::MAX,
            busy_poll: Duration::ZERO,
            pin_cpu: None,
            sqpoll_idle: None,
            #[cfg(test)]
            fake: None,
        }
    }
}

impl EndpointBuilder {
    /// Choose the backend. Without this, `RINGQUIC_BACKEND` (`uring`, `poll` or `rio`) decides,
    /// and without that, io_uring is used on Linux where the kernel allows it, Registered I/O on
    /// Windows where the system has it, and the poll backend elsewhere.
    /// A backend chosen here or through the variable that cannot run is an error, not a silent
    /// fallback.
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }

    /// Accept incoming connections with this configuration.
    pub fn server_config(mut self, config: ServerConfig) -> Self {
        self.server_config = Some(config);
        self
    }

    /// The client configuration [`Endpoint::connect`] uses.
    pub fn default_client_config(mut self, config: ClientConfig) -> Self {
        self.client_config = Some(config);
        self
    }

    /// Endpoint-wide QUIC settings (maximum UDP payload, connection ID generator, …).
    pub fn endpoint_config(mut self, config: EndpointConfig) -> Self {
        self.endpoint_config = config;
        self
    }

    /// Number of receive buffers kept armed with the kernel (rounded up to a power of two for
    /// io_uring). More absorbs bigger bursts. Default 256.
    pub fn recv_buffers(mut self, n: usize) -> Self {
        self.recv_buffers = n;
        self
    }

    /// Bytes per receive buffer, headers included. Below 64 KiB + 256 the io_uring backend
    /// turns GRO off (a coalesced batch would not fit). Default 64 KiB + 256.
    pub fn recv_buffer_size(mut self, n: usize) -> Self {
        self.recv_buffer_size = n;
        self
    }

    /// Number of TX buffers; when all are in flight, sending waits for a completion.
    /// Default 64.
    pub fn tx_buffers(mut self, n: usize) -> Self {
        self.tx_buffers = n;
        self
    }

    /// Bytes per TX buffer: the largest GSO batch one send carries. Default 64 KiB.
    pub fn tx_buffer_size(mut self, n: usize) -> Self {
        self.tx_buffer_size = n;
        self
    }

    /// Make every new client prove its address with a Retry round trip before it reaches
    /// [`Endpoint::accept`] (costs one round trip per handshake; blunts spoofed-source floods
    /// and amplification). Off by default, as in quinn.
    pub fn validate_addresses(mut self, on: bool) -> Self {
        self.validate_addresses = on;
        self
    }

    /// At most `n` incoming connections waiting for [`Endpoint::accept`] plus accepted ones still
    /// handshaking; more are refused (CONNECTION_REFUSED) and counted in
    /// [`EndpointStats::incoming_refused`]. Bounds the memory a handshake flood can take.
    /// Default [`DEFAULT_MAX_INCOMING`].
    pub fn max_incoming(mut self, n: usize) -> Self {
        self.max_incoming = n;
        self
    }

    /// Zero-copy receive (io_uring): a receive of at least `bytes` of payload (one GRO batch,
    /// several datagrams) is not copied. The buffer the kernel filled goes to quinn-proto, which
    /// decrypts in place, and the application's `read_chunk` gets slices of that same memory;
    /// another buffer takes its place in the kernel's ring. Smaller receives are copied, each
    /// datagram into an allocation of its own size, and the kernel's buffer is reused at once.
    ///
    /// A lent buffer is `recv_buffer_size` bytes and lives until the last piece of it is
    /// dropped (a stream chunk or datagram the application has not read holds the whole
    /// buffer), so lending is bounded by [`EndpointBuilder::recv_memory_budget`]. `0` lends every
    /// receive (within the budget); `usize::MAX` copies every receive. The poll and RIO backends
    /// always copy. Default [`DEFAULT_ZERO_COPY_THRESHOLD`]; [`EndpointStats::recv_zero_copy`]
    /// counts the receives lent.
    pub fn zero_copy_threshold(mut self, bytes: usize) -> Self {
        self.zero_copy_min = bytes;
        self
    }

    /// The receive memory budget: at most `bytes` of receive buffers lent to quinn-proto and
    /// the application at once, endpoint-wide. Lent buffers are the kernel's own (zero-copy
    /// receive, io_uring) and the pooled buffers a GRO batch is copied into (every backend);
    /// io_uring splits the budget evenly between the two. A buffer comes back, and is reused
    /// instead of allocating a new one, once quinn-proto and the application hold no piece of
    /// it. While the budget is used up, each datagram is copied into an allocation of its own
    /// size instead, which quinn-proto's own accounting covers.
    ///
    /// This is what bounds the memory a peer can make the endpoint hold by having it keep
    /// tiny pieces of big receives (docs/RELIABILITY.md, "Receive memory budget"); rounded down
    /// to whole buffers. Default [`DEFAULT_RECV_MEMORY_BUDGET`]; `0` lends nothing (no
    /// zero-copy receive, every datagram copied on its own). [`EndpointStats::recv_buffers_lent`]
    /// says how many are out.
    pub fn recv_memory_budget(mut self, bytes: usize) -> Self {
        self.recv_memory_budget = bytes;
        self
    }

    /// Zero-copy send (io_uring, Linux 6.0+): a GSO batch of at least `bytes` goes out as
    /// `SENDMSG_ZC` from TX buffers registered with the kernel (fixed buffers, used where the
    /// kernel allows them with `SENDMSG_ZC`, 6.15+), so the kernel sends from our memory instead
    /// of copying it into socket buffers. Each such send costs a second completion (the kernel's
    /// "done with the buffer" notification), and the TX buffer stays busy until it arrives.
    ///
    /// It pays only for large sends on a real NIC: the kernel copies anyway when the receiver is
    /// on the same host (loopback), which [`EndpointStats::send_zero_copy_copied`] reports, and
    /// below ~10 KB the notification costs more than the copy saves. A kernel without
    /// `SENDMSG_ZC` keeps ordinary sends (logged). Default `usize::MAX`: off.
    pub fn send_zero_copy_threshold(mut self, bytes: usize) -> Self {
        self.send_zc_min = bytes;
        self
    }

    /// Busy-poll: when a turn of the I/O loop finds nothing to do, keep asking the kernel for
    /// completions (without sleeping) for up to `d` before going to sleep. This trades a
    /// spinning core for the cost of a sleep and a cross-CPU wakeup per burst of packets, and
    /// pays only when the I/O thread has a core to itself: with the application's tasks on the
    /// I/O thread ([`Endpoint::spawn`]) and [`EndpointBuilder::pin_to_cpu`], say. On a machine
    /// with fewer cores than busy threads it takes CPU time from them instead. At most 1 s.
    /// Default zero: sleep at once.
    pub fn busy_poll(mut self, d: Duration) -> Self {
        self.busy_poll = d;
        self
    }

    /// Pin the I/O thread to CPU `cpu` (Linux and Windows). Failing to pin (a CPU the process
    /// may not use, say) fails [`EndpointBuilder::bind`]. Default: not pinned.
    pub fn pin_to_cpu(mut self, cpu: usize) -> Self {
        self.pin_cpu = Some(cpu);
        self
    }

    /// io_uring `SQPOLL`: a kernel thread picks up submissions, so sends need no
    /// `io_uring_enter`; it sleeps after `idle` without work (rounded to milliseconds, at least
    /// 1). It costs a kernel thread that spins while busy: worth it only with cores to spare.
    /// If the kernel refuses it, [`EndpointBuilder::bind`] fails rather than silently running
    /// without. Other backends ignore it. Default: off.
    pub fn sqpoll(mut self, idle: Duration) -> Self {
        self.sqpoll_idle = Some(idle);
        self
    }

    /// Tests: run on a fake backend.
    #[cfg(test)]
    pub(crate) fn fake_backend(mut self, f: FakeFactory) -> Self {
        self.fake = Some(f);
        self
    }

    fn io_config(&self) -> Result<IoConfig, EndpointError> {
        let max_udp_payload = self.endpoint_config.get_max_udp_payload_size() as usize;
        if self.recv_buffers == 0 {
            return Err(EndpointError::Config("recv_buffers must be at least 1"));
        }
        if self.recv_buffers > 32768 {
            return Err(EndpointError::Config("recv_buffers must be at most 32768"));
        }
        if self.tx_buffers == 0 {
            return Err(EndpointError::Config("tx_buffers must be at least 1"));
        }
        if self.tx_buffers > 4096 {
            return Err(EndpointError::Config("tx_buffers must be at most 4096"));
        }
        if self.max_incoming == 0 {
            return Err(EndpointError::Config("max_incoming must be at least 1"));
        }
        if self.busy_poll > Duration::from_secs(1) {
            return Err(EndpointError::Config("busy_poll must be at most 1 s"));
        }
        if self.sqpoll_idle.is_some_and(|d| d > Duration::from_secs(60)) {
            return Err(EndpointError::Config("sqpoll idle time must be at most 60 s"));
        }
        let min_rx = max_udp_payload + crate::driver::RECV_HEADROOM;
        if self.recv_buffer_size < min_rx {
            return Err(EndpointError::RecvBufferTooSmall {
                size: self.recv_buffer_size,
                min: min_rx,
                max_udp_payload,
            });
        }
        if self.tx_buffer_size < max_udp_payload {
            return Err(EndpointError::TxBufferTooSmall {
                size: self.tx_buffer_size,
                min: max_udp_payload,
            });
        }
        Ok(IoConfig {
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            tx_buffers: self.tx_buffers,
            tx_buffer_size: self.tx_buffer_size,
            max_udp_payload,
            zero_copy_min: self.zero_copy_min,
            recv_memory_budget: self.recv_memory_budget,
            send_zc_min: self.send_zc_min,
            busy_poll: self.busy_poll,
            pin_cpu: self.pin_cpu,
            sqpoll_idle: self.sqpoll_idle,
        })
    }

    fn choose_backend(&self) -> Result<Option<BackendKind>, EndpointError> {
        if let Some(b) = self.backend {
            return Ok(Some(b));
        }
        match std::env::var("RINGQUIC_BACKEND") {
            Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Create a socket bound to `addr` and start the endpoint on it. An IPv6 wildcard address
    /// (`[::]:port`) is dual-stack.
    pub fn bind(self, addr: SocketAddr) -> Result<Endpoint, EndpointError> {
        let cfg = self.io_config()?;
        let backend = self.choose_backend()?;
        let socket = crate::socket::create(addr)?;
        self.start(socket, cfg, backend)
    }

    /// Start the endpoint on an existing socket. The socket must be a bound UDP socket; ringquic
    /// sets the options it needs on it (non-blocking, ECN and packet-info control messages, GRO,
    /// no fragmentation) and says which one failed if it cannot.
    pub fn socket(self, socket: std::net::UdpSocket) -> Result<Endpoint, EndpointError> {
        let cfg = self.io_config()?;
        let backend = self.choose_backend()?;
        crate::socket::adopt(&socket)?;
        self.start(socket, cfg, backend)
    }

    fn start(
        self,
        socket: std::net::UdpSocket,
        cfg: IoConfig,
        backend: Option<BackendKind>,
    ) -> Result<Endpoint, EndpointError> {
        let endpoint_config = Arc::new(self.endpoint_config);
        let server_config = self.server_config.map(Arc::new);
        // quinn-proto's path MTU discovery needs the socket to send with "don't fragment",
        // which every backend sets.
        let allow_mtud = true;
        let (exit_tx, exit_rx) = mpsc::channel();
        let shared = Arc::new(EndpointShared {
            mailbox: Mailbox::new(),
            state: Mutex::new(EpState {
                incoming: VecDeque::new(),
                accept_waiters: Vec::new(),
                idle_waiters: Vec::new(),
                open_connections: 0,
                closed: false,
                driver_exited: false,
                default_client_config: self.client_config,
                stats: EndpointStats::default(),
            }),
            handles: AtomicUsize::new(0),
            endpoint_handles: AtomicUsize::new(1),
            thread: Mutex::new(None),
            exited: Mutex::new(Some(exit_rx)),
            thread_id: OnceLock::new(),
            info: OnceLock::new(),
            local_tasks: Mutex::new(VecDeque::new()),
            task_wakers: Mutex::new((0, rustc_hash::FxHashMap::default())),
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let setup = DriverSetup {
            shared: shared.clone(),
            socket,
            io: cfg,
            backend,
            endpoint: proto::Endpoint::new(endpoint_config, server_config, allow_mtud, None),
            admission: driver::Admission {
                validate_addresses: self.validate_addresses,
                max_incoming: self.max_incoming,
            },
            #[cfg(test)]
            fake: self.fake,
            ready: ready_tx,
            exited: exit_tx,
        };
        let thread = std::thread::Builder::new()
            .name("ringquic-io".into())
            .spawn(move || driver::run(setup))
            .map_err(EndpointError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                *lock(&shared.thread) = Some(thread);
                Ok(Endpoint {
                    inner: EndpointRef::new(shared),
                })
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EndpointError::Thread(io::Error::other(
                    "the I/O thread exited during setup",
                )))
            }
        }
    }
}
