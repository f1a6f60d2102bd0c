//! The application's side of a connection: [`Connection`] and [`Connecting`].
//!
//! Every call locks the connection's state in `shared.rs` (quinn-proto's connection and its
//! waiters), does its work on quinn-proto's connection, and, when that produced something to
//! send, asks the I/O thread to drive the connection ([`ConnectionInner::wake`]). A call that
//! must wait registers its task's waker there; the I/O thread wakes it: the futures need no
//! runtime.
//!
//! [`ConnectionInner::wake`]: crate::shared::ConnectionInner::wake

use std::{
    any::Any,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use quinn_proto::{
    self as proto, congestion::Controller, crypto::ExportKeyingMaterialError, ConnectionStats, Dir, Side,
    StreamId, VarInt,
};

use crate::{
    shared::{AcceptWait, ConnectionRef, EndpointRef},
    streams::{RecvStream, SendStream},
    wakers::wake_all,
    ConnectionError, SendDatagramError,
};

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
    /// The I/O thread could not create the connection; awaiting reports why.
    Failed(Option<ConnectionError>),
    /// Resolved (the connection was handed out, or an error reported).
    Done,
}

/// How long [`Connecting::into_0rtt`] waits, at most, for the I/O thread to create the
/// connection (it normally takes microseconds: one turn of the I/O loop).
pub const INTO_0RTT_WAIT: Duration = Duration::from_secs(1);

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

    /// Hand the connection out before its handshake completes, to send 0-RTT data (a client
    /// resuming a session whose ticket allows early data) or 0.5-RTT data (a server). `Err(self)`
    /// when that is not possible (a client without 0-RTT keys): await it as usual. The
    /// [`ZeroRttAccepted`] resolves once the handshake is over: whether the server took the
    /// early data; if not, streams opened before then fail with `ZeroRttRejected`.
    ///
    /// The connection is created by the I/O thread, normally within microseconds of `connect`
    /// or `accept`; if it does not exist yet, this call waits for it on the calling thread, at
    /// most [`INTO_0RTT_WAIT`] (quinn creates it inside `connect` itself, TLS included). On the
    /// endpoint's I/O thread (a task of [`Endpoint::spawn`](crate::Endpoint::spawn)) it cannot
    /// wait for itself: there, a connection not created yet gives `Err(self)`. When the loop
    /// runs on the application's runtime
    /// ([`EndpointBuilder::io_on_runtime`](crate::EndpointBuilder::io_on_runtime)) it has the
    /// loop create the connection on the calling thread, and waits only while another worker
    /// thread is running the loop's turn; inside that turn it gives `Err(self)`.
    pub fn into_0rtt(mut self) -> Result<(Connection, ZeroRttAccepted), Self> {
        if let ConnectingState::Pending { wait, endpoint, .. } = &self.state {
            if endpoint.0.on_io_thread() {
                return Err(self);
            }
            // A loop on the runtime may need this very thread: have it take the `Connect`
            // here and now. Inside the loop's own turn it cannot (the turn holds the loop);
            // if another thread is running a turn, that turn takes it: wait.
            if endpoint.0.in_loop_turn() {
                return Err(self);
            }
            let limit = if endpoint.0.take_commands_inline() {
                Duration::ZERO
            } else {
                INTO_0RTT_WAIT
            };
            match wait.wait_blocking(limit) {
                None => return Err(self),
                Some(Err(e)) => {
                    // Awaiting the `Connecting` reports it.
                    self.state = ConnectingState::Failed(Some(e));
                    return Err(self);
                }
                Some(Ok(inner)) => {
                    let conn = ConnectionRef::adopt(inner, endpoint.clone());
                    self.state = ConnectingState::Handshaking(conn);
                }
            }
        }
        let ConnectingState::Handshaking(conn) = &self.state else {
            return Err(self);
        };
        if !conn.lock().may_use_0rtt() {
            return Err(self);
        }
        let ConnectingState::Handshaking(conn) = std::mem::replace(&mut self.state, ConnectingState::Done)
        else {
            unreachable!("checked above")
        };
        Ok((Connection(conn.clone()), ZeroRttAccepted(conn)))
    }

    /// The peer's handshake parameters (for rustls: `quinn_proto::crypto::rustls::HandshakeData`,
    /// with the negotiated ALPN protocol and the server name), as soon as they are known, before
    /// the handshake completes.
    pub async fn handshake_data(&mut self) -> Result<Box<dyn Any>, ConnectionError> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll_created(cx) {
                r?;
            }
            match &self.state {
                ConnectingState::Handshaking(conn) => conn.lock().poll_handshake_data(cx),
                ConnectingState::Pending { .. } => Poll::Pending,
                ConnectingState::Failed(e) => {
                    Poll::Ready(Err(e.clone().unwrap_or(ConnectionError::LocallyClosed)))
                }
                ConnectingState::Done => Poll::Ready(Err(ConnectionError::LocallyClosed)),
            }
        })
        .await
    }

    /// While the connection is not created yet: wait for the I/O thread's answer and move to
    /// `Handshaking` (or `Failed`). Ready(Ok) once past that stage.
    fn poll_created(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        let ConnectingState::Pending { wait, endpoint, .. } = &self.state else {
            return Poll::Ready(Ok(()));
        };
        match wait.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.state = ConnectingState::Failed(Some(e.clone()));
                Poll::Ready(Err(e))
            }
            Poll::Ready(Ok(inner)) => {
                let conn = ConnectionRef::adopt(inner, endpoint.clone());
                self.state = ConnectingState::Handshaking(conn);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        match &self.state {
            ConnectingState::Pending { remote, .. } => *remote,
            ConnectingState::Handshaking(c) => c.lock().inner.remote_address(),
            ConnectingState::Failed(_) | ConnectingState::Done => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }

    /// The local IP address the connection uses, if known.
    pub fn local_ip(&self) -> Option<IpAddr> {
        match &self.state {
            ConnectingState::Pending { local_ip, .. } => *local_ip,
            ConnectingState::Handshaking(c) => c.lock().inner.local_ip(),
            ConnectingState::Failed(_) | ConnectingState::Done => None,
        }
    }
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(Err(e)) = self.poll_created(cx) {
            self.state = ConnectingState::Done;
            return Poll::Ready(Err(e));
        }
        let ready = match &mut self.state {
            ConnectingState::Pending { .. } => return Poll::Pending,
            ConnectingState::Handshaking(conn) => conn.lock().poll_connected(cx),
            ConnectingState::Failed(e) => {
                Poll::Ready(Err(e.take().unwrap_or(ConnectionError::LocallyClosed)))
            }
            ConnectingState::Done => Poll::Ready(Err(ConnectionError::LocallyClosed)),
        };
        match ready {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let ConnectingState::Handshaking(conn) =
                    std::mem::replace(&mut self.state, ConnectingState::Done)
                else {
                    unreachable!("only a handshaking connection becomes connected")
                };
                Poll::Ready(Ok(Connection(conn)))
            }
        }
    }
}

/// Resolves once the handshake of a connection handed out by [`Connecting::into_0rtt`] is over:
/// `true` if the server accepted the 0-RTT data (always `true` on the server side once
/// connected), `false` if it rejected it or the connection failed.
#[must_use = "futures do nothing unless polled"]
pub struct ZeroRttAccepted(ConnectionRef);

impl std::fmt::Debug for ZeroRttAccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroRttAccepted").finish_non_exhaustive()
    }
}

impl Future for ZeroRttAccepted {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        self.0.lock().poll_zero_rtt_accepted(cx)
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
    pub fn open_bi(&self) -> OpenBi<'_> {
        OpenBi { conn: &self.0 }
    }

    /// Open a unidirectional stream. Waits while the peer's stream limit is reached.
    pub fn open_uni(&self) -> OpenUni<'_> {
        OpenUni { conn: &self.0 }
    }

    /// Accept the next bidirectional stream the peer opens.
    pub fn accept_bi(&self) -> AcceptBi<'_> {
        AcceptBi { conn: &self.0 }
    }

    /// Accept the next unidirectional stream the peer opens.
    pub fn accept_uni(&self) -> AcceptUni<'_> {
        AcceptUni { conn: &self.0 }
    }

    /// Send an unreliable datagram. If the send buffer is full the oldest queued datagram is
    /// dropped to make room, as in quinn.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        let mut st = self.0.lock();
        if let Some(e) = st.error() {
            return Err(SendDatagramError::ConnectionLost(e));
        }
        match st.inner.datagrams().send(data, true) {
            Ok(()) => {
                drop(st);
                self.0.wake();
                Ok(())
            }
            Err(e) => Err(datagram_error(e)),
        }
    }

    /// Receive the next unreliable datagram.
    pub fn read_datagram(&self) -> ReadDatagram<'_> {
        ReadDatagram { conn: &self.0 }
    }

    /// Send an unreliable datagram, waiting while the send buffer is full instead of dropping
    /// the oldest queued datagram (as quinn's `send_datagram_wait`).
    pub fn send_datagram_wait(&self, data: Bytes) -> SendDatagram<'_> {
        SendDatagram {
            conn: &self.0,
            data: Some(data),
        }
    }

    /// Bytes free in the datagram send buffer: a datagram no larger is queued without dropping
    /// an older one.
    pub fn datagram_send_buffer_space(&self) -> usize {
        self.0.lock().inner.datagrams().send_buffer_space()
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
            if let Some(e) = st.error() {
                return Poll::Ready(e);
            }
            st.waiters().closed(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.lock().error()
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
        self.0.stable_id()
    }

    /// Run `future` on the I/O thread that drives this connection: with a sharded endpoint
    /// ([`EndpointBuilder::shards`](crate::EndpointBuilder::shards)), the connection's own
    /// shard, so its per-connection work never leaves that core; otherwise the endpoint's
    /// thread, as [`Endpoint::spawn`](crate::Endpoint::spawn). The same rules hold: the task
    /// must not block, the handle can be awaited from anywhere, and the task is cancelled if
    /// the thread exits.
    pub fn spawn<F>(&self, future: F) -> crate::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        crate::local::spawn_on(self.0.shared(), future)
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

    /// Change how many streams of `dir` the peer may have open at once (ringquic's; quinn has
    /// one method per direction, below).
    pub fn set_max_concurrent_streams(&self, dir: Dir, count: VarInt) {
        self.0.lock().inner.set_max_concurrent_streams(dir, count);
        self.0.wake();
    }

    /// Change how many unidirectional streams the peer may have open at once.
    pub fn set_max_concurrent_uni_streams(&self, count: VarInt) {
        self.set_max_concurrent_streams(Dir::Uni, count);
    }

    /// Change how many bidirectional streams the peer may have open at once.
    pub fn set_max_concurrent_bi_streams(&self, count: VarInt) {
        self.set_max_concurrent_streams(Dir::Bi, count);
    }

    /// Change how much data may be in flight unacknowledged across all streams.
    pub fn set_send_window(&self, send_window: u64) {
        self.0.lock().inner.set_send_window(send_window);
        self.0.wake();
    }

    /// Change how much data the peer may send across all streams before we read it.
    pub fn set_receive_window(&self, receive_window: VarInt) {
        self.0.lock().inner.set_receive_window(receive_window);
        self.0.wake();
    }

    /// Which side of the connection this is.
    pub fn side(&self) -> Side {
        self.0.lock().inner.side()
    }

    /// The smallest round-trip time seen on the current path.
    pub fn min_rtt(&self) -> Duration {
        self.0.lock().inner.min_rtt()
    }

    /// A copy of the congestion controller's state.
    pub fn congestion_state(&self) -> Box<dyn Controller> {
        self.0.lock().inner.congestion_state().clone_box()
    }

    /// Start a key update now (for tests of key updates; QUIC updates keys on its own).
    pub fn force_key_update(&self) {
        self.0.lock().inner.force_key_update();
        // The update goes out with the next packet: make sure there is one.
        self.0.wake();
    }

    /// Derive keying material from the TLS session (RFC 5705), for binding application
    /// protocols to this connection.
    pub fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.0
            .lock()
            .inner
            .crypto_session()
            .export_keying_material(output, label, context)
    }
}

/// A stream just opened or accepted, and whether it belongs to 0-RTT data (then it fails with
/// `ZeroRttRejected` if the server turns the 0-RTT data down).
type NewStream = (StreamId, bool);

/// The two halves of a bidirectional stream.
fn bi(conn: &ConnectionRef, (id, is_0rtt): NewStream) -> (SendStream, RecvStream) {
    (
        SendStream::new(conn.clone(), id, is_0rtt),
        RecvStream::new(conn.clone(), id, is_0rtt),
    )
}

/// Open a stream of `dir`, or wait for the peer's limit to allow one.
fn poll_open(
    conn: &ConnectionRef,
    cx: &mut Context<'_>,
    dir: Dir,
) -> Poll<Result<NewStream, ConnectionError>> {
    let mut st = conn.lock();
    if let Some(e) = st.error() {
        return Poll::Ready(Err(e));
    }
    if let Some(id) = st.inner.streams().open(dir) {
        let is_0rtt = st.inner.side().is_client() && st.inner.is_handshaking();
        return Poll::Ready(Ok((id, is_0rtt)));
    }
    st.waiters().open(dir, cx.waker());
    Poll::Pending
}

/// Take the next stream of `dir` the peer opened, or wait for one.
fn poll_accept(
    conn: &ConnectionRef,
    cx: &mut Context<'_>,
    dir: Dir,
) -> Poll<Result<NewStream, ConnectionError>> {
    let mut st = conn.lock();
    if let Some(id) = st.inner.streams().accept(dir) {
        let is_0rtt = st.inner.is_handshaking();
        drop(st);
        // Accepting may let us grant the peer more stream credit.
        crate::direct::transmit_soon(conn.inner());
        return Poll::Ready(Ok((id, is_0rtt)));
    }
    if let Some(e) = st.error() {
        return Poll::Ready(Err(e));
    }
    st.waiters().accept(dir, cx.waker());
    Poll::Pending
}

/// Future of [`Connection::open_bi`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpenBi<'a> {
    conn: &'a ConnectionRef,
}

impl Future for OpenBi<'_> {
    type Output = Result<(SendStream, RecvStream), ConnectionError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_open(self.conn, cx, Dir::Bi).map_ok(|id| bi(self.conn, id))
    }
}

/// Future of [`Connection::open_uni`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct OpenUni<'a> {
    conn: &'a ConnectionRef,
}

impl Future for OpenUni<'_> {
    type Output = Result<SendStream, ConnectionError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_open(self.conn, cx, Dir::Uni)
            .map_ok(|(id, is_0rtt)| SendStream::new(self.conn.clone(), id, is_0rtt))
    }
}

/// Future of [`Connection::accept_bi`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct AcceptBi<'a> {
    conn: &'a ConnectionRef,
}

impl Future for AcceptBi<'_> {
    type Output = Result<(SendStream, RecvStream), ConnectionError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_accept(self.conn, cx, Dir::Bi).map_ok(|id| bi(self.conn, id))
    }
}

/// Future of [`Connection::accept_uni`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct AcceptUni<'a> {
    conn: &'a ConnectionRef,
}

impl Future for AcceptUni<'_> {
    type Output = Result<RecvStream, ConnectionError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_accept(self.conn, cx, Dir::Uni)
            .map_ok(|(id, is_0rtt)| RecvStream::new(self.conn.clone(), id, is_0rtt))
    }
}

/// Future of [`Connection::read_datagram`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct ReadDatagram<'a> {
    conn: &'a ConnectionRef,
}

impl Future for ReadDatagram<'_> {
    type Output = Result<Bytes, ConnectionError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let conn = self.conn;
        let mut st = conn.lock();
        let now = std::time::Instant::now();
        if let Some(d) = st.inner.datagrams().recv() {
            let caught_up = {
                let st = &mut *st;
                let inner = &st.inner;
                st.dgram_flow.took(now, || inner.stats().frame_rx.datagram)
            };
            drop(st);
            if caught_up {
                // The I/O thread feeds in the packets it held (dgramflow.rs).
                conn.wake();
            }
            return Poll::Ready(Ok(d));
        }
        let received = st.inner.stats().frame_rx.datagram;
        let release = st.dgram_flow.found_none(received, now);
        if let Some(e) = st.error() {
            return Poll::Ready(Err(e));
        }
        st.waiters().datagram(cx.waker());
        drop(st);
        if release {
            conn.wake();
        }
        Poll::Pending
    }
}

/// Future of [`Connection::send_datagram_wait`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct SendDatagram<'a> {
    conn: &'a ConnectionRef,
    /// The datagram, until it is queued.
    data: Option<Bytes>,
}

impl Future for SendDatagram<'_> {
    type Output = Result<(), SendDatagramError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(data) = self.data.take() else {
            // Polled again after it completed: nothing left to send.
            return Poll::Ready(Ok(()));
        };
        let mut st = self.conn.lock();
        if let Some(e) = st.error() {
            return Poll::Ready(Err(SendDatagramError::ConnectionLost(e)));
        }
        match st.inner.datagrams().send(data, false) {
            Ok(()) => {
                drop(st);
                self.conn.wake();
                Poll::Ready(Ok(()))
            }
            Err(proto::SendDatagramError::Blocked(data)) => {
                st.waiters().datagram_space(cx.waker());
                drop(st);
                self.data = Some(data);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(datagram_error(e))),
        }
    }
}

/// quinn-proto's refusal of a datagram, as quinn reports it.
fn datagram_error(e: proto::SendDatagramError) -> SendDatagramError {
    match e {
        proto::SendDatagramError::UnsupportedByPeer => SendDatagramError::UnsupportedByPeer,
        proto::SendDatagramError::Disabled => SendDatagramError::Disabled,
        proto::SendDatagramError::TooLarge => SendDatagramError::TooLarge,
        // Only returned when dropping old datagrams is not allowed, which `send_datagram` allows;
        // `SendDatagram` handles it by waiting.
        proto::SendDatagramError::Blocked(_) => SendDatagramError::TooLarge,
    }
}
