//! [`Incoming`]: a connection attempt the application has not accepted yet, and what it can do
//! with one (accept, refuse, retry, ignore). Each choice is a command for the I/O thread, which
//! owns `quinn_proto::Endpoint`; accepting returns a [`Connecting`] at once.

use std::{
    future::{Future, IntoFuture},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use quinn_proto::{self as proto, ConnectionId, ServerConfig};

use crate::{
    connection::{Connecting, Connection},
    shared::{AcceptReply, Command, EndpointRef},
    ConnectionError,
};

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
    /// A connection attempt taken from the endpoint's queue by `accept`.
    pub(crate) fn new(inner: proto::Incoming, endpoint: EndpointRef) -> Self {
        Self {
            inner: Some(inner),
            endpoint,
        }
    }

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

    /// The destination connection ID the client put in its first Initial packet.
    pub fn orig_dst_cid(&self) -> ConnectionId {
        self.inner
            .as_ref()
            .map_or(ConnectionId::new(&[]), |i| *i.orig_dst_cid())
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
#[derive(Debug)]
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
