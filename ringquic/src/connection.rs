//! The application's side of a connection: [`Connection`], [`Connecting`], and the state the
//! application and the I/O thread share.
//!
//! A connection's `quinn_proto::Connection` lives in [`ConnectionInner::state`], a mutex. The
//! I/O thread locks it to feed datagrams in, fire timers, poll events and write transmits; the
//! application locks it to write or read stream data, open streams, and so on, then calls
//! [`ConnectionInner::wake`] so the I/O thread drives the connection (sends what was written).
//! Wakers registered here are woken by the I/O thread: the futures need no runtime.

use std::{
    any::Any,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use quinn_proto::{self as proto, ConnectionHandle, ConnectionStats, Dir, StreamEvent, StreamId, VarInt};
use rustc_hash::FxHashMap;

use crate::{
    endpoint::{EndpointRef, EndpointShared},
    mailbox::{lock, Command},
    streams::{RecvStream, SendStream},
    ConnectionError, SendDatagramError,
};

/// Shared between the I/O thread and the application's handles.
pub(crate) struct ConnectionInner {
    pub(crate) handle: ConnectionHandle,
    pub(crate) state: Mutex<State>,
    shared: Arc<EndpointShared>,
    /// A `Command::Drive` for this connection is queued and not yet taken: coalesce.
    queued: AtomicBool,
}

impl ConnectionInner {
    pub(crate) fn new(
        handle: ConnectionHandle,
        conn: proto::Connection,
        shared: Arc<EndpointShared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            // One handle, reserved for the application's `Connecting`, which adopts it.
            state: Mutex::new(State::new(conn)),
            shared,
            queued: AtomicBool::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
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
}

/// Wake every waker in `list`, or collect them for waking after the lock is released.
fn take_all(list: &mut Vec<Waker>, out: &mut Vec<Waker>) {
    out.append(list);
}

/// Register `w` in `list` unless it is already there (a task polling twice adds one entry).
pub(crate) fn register(list: &mut Vec<Waker>, w: &Waker) {
    if !list.iter().any(|x| x.will_wake(w)) {
        list.push(w.clone());
    }
}

/// Per-connection state behind the mutex.
pub(crate) struct State {
    pub(crate) inner: proto::Connection,
    /// Set once the connection is lost or closed; every later operation reports it.
    pub(crate) error: Option<ConnectionError>,
    connected: bool,
    on_connected: Vec<Waker>,
    pub(crate) blocked_writers: FxHashMap<StreamId, Waker>,
    pub(crate) blocked_readers: FxHashMap<StreamId, Waker>,
    pub(crate) stopped: FxHashMap<StreamId, Waker>,
    open_waiters: [Vec<Waker>; 2],
    accept_waiters: [Vec<Waker>; 2],
    datagram_readers: Vec<Waker>,
    closed_waiters: Vec<Waker>,
    /// Application handles alive (connections, streams, `Connecting`). At zero the connection
    /// is closed with code 0, as in quinn.
    pub(crate) handles: usize,
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

impl State {
    fn new(inner: proto::Connection) -> Self {
        Self {
            inner,
            error: None,
            connected: false,
            on_connected: Vec::new(),
            blocked_writers: FxHashMap::default(),
            blocked_readers: FxHashMap::default(),
            stopped: FxHashMap::default(),
            open_waiters: [Vec::new(), Vec::new()],
            accept_waiters: [Vec::new(), Vec::new()],
            datagram_readers: Vec::new(),
            closed_waiters: Vec::new(),
            handles: 1,
        }
    }

    /// Apply one application event from quinn-proto; wakers to wake are collected in `woken`.
    pub(crate) fn on_event(&mut self, ev: proto::Event, woken: &mut Vec<Waker>) {
        use proto::Event::*;
        match ev {
            HandshakeDataReady => {}
            Connected => {
                self.connected = true;
                take_all(&mut self.on_connected, woken);
            }
            ConnectionLost { reason } => self.terminate(reason, woken),
            Stream(StreamEvent::Readable { id }) => woken.extend(self.blocked_readers.remove(&id)),
            Stream(StreamEvent::Writable { id }) => woken.extend(self.blocked_writers.remove(&id)),
            Stream(StreamEvent::Finished { id }) => woken.extend(self.stopped.remove(&id)),
            Stream(StreamEvent::Stopped { id, .. }) => {
                woken.extend(self.stopped.remove(&id));
                woken.extend(self.blocked_writers.remove(&id));
            }
            Stream(StreamEvent::Opened { dir }) => take_all(&mut self.accept_waiters[dir_index(dir)], woken),
            Stream(StreamEvent::Available { dir }) => take_all(&mut self.open_waiters[dir_index(dir)], woken),
            DatagramReceived => take_all(&mut self.datagram_readers, woken),
            DatagramsUnblocked => {}
        }
    }

    /// Wake `SendStream::stopped` waiters whose stream quinn-proto has freed without an event
    /// (it frees a reset stream once the peer acknowledges the RESET_STREAM, silently).
    pub(crate) fn wake_freed_stopped(&mut self, woken: &mut Vec<Waker>) {
        if self.stopped.is_empty() {
            return;
        }
        let inner = &mut self.inner;
        self.stopped.retain(|id, w| {
            if inner.send_stream(*id).stopped().is_err() {
                woken.push(w.clone());
                false
            } else {
                true
            }
        });
    }

    /// Record the connection's end and wake everything waiting on it.
    pub(crate) fn terminate(&mut self, reason: ConnectionError, woken: &mut Vec<Waker>) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
        take_all(&mut self.on_connected, woken);
        woken.extend(self.blocked_writers.drain().map(|(_, w)| w));
        woken.extend(self.blocked_readers.drain().map(|(_, w)| w));
        woken.extend(self.stopped.drain().map(|(_, w)| w));
        for l in &mut self.open_waiters {
            take_all(l, woken);
        }
        for l in &mut self.accept_waiters {
            take_all(l, woken);
        }
        take_all(&mut self.datagram_readers, woken);
        take_all(&mut self.closed_waiters, woken);
    }

    /// Close from the application side: CONNECTION_CLOSE goes out on the next drive.
    fn close(&mut self, code: VarInt, reason: Bytes, woken: &mut Vec<Waker>) {
        if self.error.is_none() {
            self.inner.close(Instant::now(), code, reason);
        }
        self.terminate(ConnectionError::LocallyClosed, woken);
    }
}

fn wake_all(woken: Vec<Waker>) {
    for w in woken {
        w.wake();
    }
}

/// A counted application handle to a connection: while any exists the connection stays open;
/// when the last goes, the connection is closed with code 0 (as quinn does). It also keeps the
/// endpoint's I/O thread alive.
pub(crate) struct ConnectionRef {
    pub(crate) inner: Arc<ConnectionInner>,
    _endpoint: EndpointRef,
}

impl ConnectionRef {
    /// Take over the handle count the I/O thread reserved when it created the connection (see
    /// [`ConnectionInner::new`]), so the connection is never seen without handles before the
    /// application holds one.
    pub(crate) fn adopt(inner: Arc<ConnectionInner>, endpoint: EndpointRef) -> Self {
        Self {
            inner,
            _endpoint: endpoint,
        }
    }
}

impl Clone for ConnectionRef {
    fn clone(&self) -> Self {
        self.inner.lock().handles += 1;
        Self::adopt(self.inner.clone(), self._endpoint.clone())
    }
}

impl Drop for ConnectionRef {
    fn drop(&mut self) {
        self.inner.release_handle();
    }
}

impl ConnectionInner {
    /// One application handle is gone; at the last, the connection is closed with code 0.
    pub(crate) fn release_handle(&self) {
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

/// A connection the I/O thread creates for [`Endpoint::connect`](crate::Endpoint::connect) or
/// [`Incoming::accept`](crate::Incoming::accept): quinn-proto's connect and accept run TLS
/// (key generation, the server's certificate signature), far too much to do under the
/// endpoint lock the I/O thread routes datagrams with (measured: handshakes/s fell by a
/// quarter when the application did it), so the application's call only queues it and the
/// [`Connecting`] waits for it, asynchronously.
#[derive(Default)]
pub(crate) struct PendingAccept {
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    result: Option<Result<Arc<ConnectionInner>, ConnectionError>>,
    waker: Option<Waker>,
    /// The `Connecting` is gone: a connection that arrives now is released at once.
    abandoned: bool,
}

/// The I/O thread's end of a [`PendingAccept`] (connect or accept). Dropped unanswered (the I/O thread exited
/// with the command still queued), it answers `LocallyClosed`, so nothing waits for ever.
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
                inner.lock().on_connected.push(w);
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

/// The `Connecting`'s end of a [`PendingAccept`].
pub(crate) struct AcceptWait(Arc<PendingAccept>);

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

impl std::ops::Deref for ConnectionRef {
    type Target = ConnectionInner;
    fn deref(&self) -> &ConnectionInner {
        &self.inner
    }
}

/// A connection in progress. Resolves to a [`Connection`] once the handshake completes.
#[must_use = "a Connecting does nothing unless awaited"]
pub struct Connecting {
    state: ConnectingState,
}

enum ConnectingState {
    /// A connection the I/O thread has not created yet (connect or accept queued).
    Pending {
        wait: AcceptWait,
        endpoint: EndpointRef,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
    },
    Handshaking(ConnectionRef),
    /// Resolved (the connection was handed out, or an error reported).
    Done,
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting")
            .field("remote", &self.remote_address())
            .finish()
    }
}

impl Connecting {
    /// A connection the I/O thread is creating.
    pub(crate) fn pending(
        wait: AcceptWait,
        endpoint: EndpointRef,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
    ) -> Self {
        Self {
            state: ConnectingState::Pending {
                wait,
                endpoint,
                remote,
                local_ip,
            },
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match &self.state {
            ConnectingState::Pending { remote, .. } => *remote,
            ConnectingState::Handshaking(c) => c.lock().inner.remote_address(),
            ConnectingState::Done => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The local IP address the connection uses, if known.
    pub fn local_ip(&self) -> Option<IpAddr> {
        match &self.state {
            ConnectingState::Pending { local_ip, .. } => *local_ip,
            ConnectingState::Handshaking(c) => c.lock().inner.local_ip(),
            ConnectingState::Done => None,
        }
    }
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let ConnectingState::Pending { wait, endpoint, .. } = &self.state {
            let mut st = lock(&wait.0.state);
            match st.result.take() {
                None => {
                    st.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Some(Err(e)) => {
                    drop(st);
                    self.state = ConnectingState::Done;
                    return Poll::Ready(Err(e));
                }
                Some(Ok(inner)) => {
                    drop(st);
                    let conn = ConnectionRef::adopt(inner, endpoint.clone());
                    self.state = ConnectingState::Handshaking(conn);
                }
            }
        }
        let ConnectingState::Handshaking(conn) = &self.state else {
            return Poll::Ready(Err(ConnectionError::LocallyClosed));
        };
        let mut st = conn.lock();
        if st.connected {
            drop(st);
            let ConnectingState::Handshaking(conn) =
                std::mem::replace(&mut self.state, ConnectingState::Done)
            else {
                unreachable!("checked above")
            };
            return Poll::Ready(Ok(Connection(conn)));
        }
        if let Some(e) = st.error.clone() {
            return Poll::Ready(Err(e));
        }
        register(&mut st.on_connected, cx.waker());
        Poll::Pending
    }
}

/// An established QUIC connection. Cheap to clone; the connection is closed (code 0) when the
/// last clone and the last of its streams are dropped.
#[derive(Clone)]
pub struct Connection(pub(crate) ConnectionRef);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("handle", &self.0.handle.0)
            .field("remote", &self.remote_address())
            .finish()
    }
}

impl Connection {
    /// Open a bidirectional stream. Waits while the peer's stream limit is reached.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.open(Dir::Bi).await?;
        Ok((
            SendStream::new(self.0.clone(), id),
            RecvStream::new(self.0.clone(), id),
        ))
    }

    /// Open a unidirectional stream. Waits while the peer's stream limit is reached.
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        let id = self.open(Dir::Uni).await?;
        Ok(SendStream::new(self.0.clone(), id))
    }

    /// Accept the next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.accept(Dir::Bi).await?;
        Ok((
            SendStream::new(self.0.clone(), id),
            RecvStream::new(self.0.clone(), id),
        ))
    }

    /// Accept the next unidirectional stream the peer opens.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let id = self.accept(Dir::Uni).await?;
        Ok(RecvStream::new(self.0.clone(), id))
    }

    fn open(&self, dir: Dir) -> impl Future<Output = Result<StreamId, ConnectionError>> + '_ {
        std::future::poll_fn(move |cx| {
            let mut st = self.0.lock();
            if let Some(e) = st.error.clone() {
                return Poll::Ready(Err(e));
            }
            if let Some(id) = st.inner.streams().open(dir) {
                return Poll::Ready(Ok(id));
            }
            register(&mut st.open_waiters[dir_index(dir)], cx.waker());
            Poll::Pending
        })
    }

    fn accept(&self, dir: Dir) -> impl Future<Output = Result<StreamId, ConnectionError>> + '_ {
        std::future::poll_fn(move |cx| {
            let mut st = self.0.lock();
            if let Some(id) = st.inner.streams().accept(dir) {
                drop(st);
                // Accepting may let us grant the peer more stream credit.
                self.0.wake();
                return Poll::Ready(Ok(id));
            }
            if let Some(e) = st.error.clone() {
                return Poll::Ready(Err(e));
            }
            register(&mut st.accept_waiters[dir_index(dir)], cx.waker());
            Poll::Pending
        })
    }

    /// Send an unreliable datagram. If the send buffer is full the oldest queued datagram is
    /// dropped to make room, as in quinn.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        let mut st = self.0.lock();
        if let Some(e) = st.error.clone() {
            return Err(SendDatagramError::ConnectionLost(e));
        }
        match st.inner.datagrams().send(data, true) {
            Ok(()) => {
                drop(st);
                self.0.wake();
                Ok(())
            }
            Err(proto::SendDatagramError::UnsupportedByPeer) => Err(SendDatagramError::UnsupportedByPeer),
            Err(proto::SendDatagramError::Disabled) => Err(SendDatagramError::Disabled),
            Err(proto::SendDatagramError::TooLarge) => Err(SendDatagramError::TooLarge),
            // Not returned when dropping old datagrams is allowed; treat as "too large" if a
            // future quinn-proto does.
            Err(proto::SendDatagramError::Blocked(_)) => Err(SendDatagramError::TooLarge),
        }
    }

    /// Receive the next unreliable datagram.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        std::future::poll_fn(|cx| {
            let mut st = self.0.lock();
            if let Some(d) = st.inner.datagrams().recv() {
                return Poll::Ready(Ok(d));
            }
            if let Some(e) = st.error.clone() {
                return Poll::Ready(Err(e));
            }
            register(&mut st.datagram_readers, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The largest datagram payload [`Connection::send_datagram`] accepts now, or `None` if the
    /// peer does not take datagrams.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.0.lock().inner.datagrams().max_size()
    }

    /// Close the connection at once with `code` and `reason`. Pending operations fail with
    /// [`ConnectionError::LocallyClosed`]; the peer receives the code and reason.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let mut woken = Vec::new();
        self.0
            .lock()
            .close(code, Bytes::copy_from_slice(reason), &mut woken);
        self.0.wake();
        wake_all(woken);
    }

    /// Wait until the connection is closed, and say why.
    pub async fn closed(&self) -> ConnectionError {
        std::future::poll_fn(|cx| {
            let mut st = self.0.lock();
            if let Some(e) = st.error.clone() {
                return Poll::Ready(e);
            }
            register(&mut st.closed_waiters, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.lock().error.clone()
    }

    /// Transport statistics.
    pub fn stats(&self) -> ConnectionStats {
        self.0.lock().inner.stats()
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.lock().inner.remote_address()
    }

    /// The local IP address the peer sends to, when the platform reports it.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.0.lock().inner.local_ip()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.0.lock().inner.rtt()
    }

    /// An identifier of this connection, unique among the endpoint's live connections.
    pub fn stable_id(&self) -> usize {
        Arc::as_ptr(&self.0.inner) as usize
    }

    /// Parameters negotiated in the handshake (for rustls: `quinn_proto::crypto::rustls::HandshakeData`).
    pub fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.0.lock().inner.crypto_session().handshake_data()
    }

    /// The peer's identity (for rustls: `Vec<rustls::pki_types::CertificateDer>`).
    pub fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.0.lock().inner.crypto_session().peer_identity()
    }

    /// Current path MTU estimate for UDP payloads.
    pub fn current_mtu(&self) -> u16 {
        self.0.lock().inner.current_mtu()
    }

    /// Change how many streams of `dir` the peer may have open at once.
    pub fn set_max_concurrent_streams(&self, dir: Dir, count: VarInt) {
        self.0.lock().inner.set_max_concurrent_streams(dir, count);
        self.0.wake();
    }
}
