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
use quinn_proto::{self as proto, ConnectionStats, Dir, StreamId, VarInt};

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
            match wait.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.state = ConnectingState::Done;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(inner)) => {
                    let conn = ConnectionRef::adopt(inner, endpoint.clone());
                    self.state = ConnectingState::Handshaking(conn);
                }
            }
        }
        let ConnectingState::Handshaking(conn) = &self.state else {
            return Poll::Ready(Err(ConnectionError::LocallyClosed));
        };
        let ready = conn.lock().poll_connected(cx);
        if let Poll::Ready(Err(e)) = ready {
            return Poll::Ready(Err(e));
        }
        if ready.is_pending() {
            return Poll::Pending;
        }
        let ConnectingState::Handshaking(conn) = std::mem::replace(&mut self.state, ConnectingState::Done)
        else {
            unreachable!("checked above")
        };
        Poll::Ready(Ok(Connection(conn)))
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
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            if let Some(id) = st.inner.streams().open(dir) {
                return Poll::Ready(Ok(id));
            }
            st.waiters().open(dir, cx.waker());
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
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            st.waiters().accept(dir, cx.waker());
            Poll::Pending
        })
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
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            st.waiters().datagram(cx.waker());
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
