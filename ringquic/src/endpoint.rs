//! [`Endpoint`]: the application's handle to one UDP socket and the I/O thread that serves it
//! (or, sharded, to several sockets on one address and their I/O threads: each call goes to
//! every shard, or to the one it concerns).
//!
//! The handle reaches the I/O thread through the shared state (`shared.rs`): commands go into
//! its mailbox, and what the I/O thread reports (incoming connections, counters, the end of the
//! last connection) is read back there. It is made by the builder (`builder.rs`, which also
//! holds `Endpoint::server`, `client` and `builder`, so that the builder is the one to know this
//! file and not the other way round). When the last handle of any kind (endpoint, connection,
//! stream) is dropped, the I/O thread closes what is left, cancels in-flight I/O, frees its
//! buffers and is joined.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use quinn_proto::{ClientConfig, ConnectError, ServerConfig, VarInt};

use crate::{
    connection::Connecting,
    incoming::Incoming,
    io::BackendKind,
    local::{self, JoinHandle},
    shared::{AcceptReply, Command, EndpointRef, EndpointShared},
    EndpointError, EndpointIoStats, EndpointStats,
};

/// A QUIC endpoint: one UDP socket, one I/O thread, any number of connections.
///
/// Cheap to clone. Created with [`Endpoint::server`], [`Endpoint::client`] or
/// [`Endpoint::builder`].
pub struct Endpoint {
    /// One reference per shard, shard 0 first; one unless
    /// [`EndpointBuilder::shards`](crate::EndpointBuilder::shards). Never empty.
    shards: Vec<EndpointRef>,
    /// Turns: which shard the next `connect` goes to, where `accept` starts looking.
    turn: Arc<AtomicUsize>,
}

impl Endpoint {
    /// The handle of an endpoint whose I/O threads are running (made by the builder): one
    /// per shard, shard 0 first.
    pub(crate) fn started(shards: Vec<EndpointRef>) -> Self {
        assert!(!shards.is_empty(), "an endpoint has a shard");
        Self {
            shards,
            turn: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Every shard's reference, shard 0 first.
    fn shard_refs(&self) -> impl Iterator<Item = &EndpointRef> {
        self.shards.iter()
    }

    /// The next turn's start, modulo the shard count (0 when there is one shard).
    fn next_turn(&self) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        self.turn.fetch_add(1, Ordering::Relaxed) % self.shards.len()
    }

    /// How many shards (I/O threads) serve the endpoint.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Each shard's I/O counters, shard 0 first ([`Endpoint::io_stats`] is their sum).
    pub fn shard_io_stats(&self) -> Vec<EndpointIoStats> {
        self.shard_refs().map(|r| r.0.stats()).collect()
    }
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.iter().map(|r| r.clone_endpoint()).collect(),
            turn: self.turn.clone(),
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for r in self.shard_refs() {
            r.drop_endpoint();
        }
        if self.shards.len() > 1 {
            for r in self.shard_refs() {
                r.shut_down_early_if_last();
            }
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
    pub(crate) fn shared(&self) -> &Arc<EndpointShared> {
        &self.shards[0].0
    }

    /// Which I/O backend serves this endpoint.
    pub fn backend(&self) -> BackendKind {
        self.shared().info().map_or(BackendKind::Poll, |i| i.0)
    }

    /// Whether the endpoint's I/O loop runs as a task on the application's tokio runtime
    /// rather than on an I/O thread of its own
    /// ([`EndpointBuilder::io_on_runtime`](crate::EndpointBuilder::io_on_runtime), which says
    /// when that is the default).
    pub fn io_on_runtime(&self) -> bool {
        self.shared().loop_on_runtime()
    }

    /// The socket's local address. After [`Endpoint::rebind`] it is the old socket's until the
    /// I/O thread has swapped sockets (on its next turn), then the new one's; it stays the old
    /// one's if the I/O thread could not take the new socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared()
            .info()
            .map(|i| i.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "endpoint not running"))
    }

    /// Switch to a new UDP socket, as quinn's `Endpoint::rebind`: every connection is told that
    /// its local address changed and migrates to the new one (a client's active migration: a
    /// new connection ID and a probe of the new path, which the peer validates). Connections to
    /// peers unreachable from the new address are lost, and a server cannot migrate: its
    /// clients keep sending to the old address, so rebinding a server loses its connections.
    ///
    /// The socket is checked and prepared here as [`EndpointBuilder::socket`] does it (a bound
    /// UDP socket, made non-blocking): an unusable one is an error ([`EndpointError::Socket`]
    /// inside the `io::Error`, which names the check; kind `InvalidInput`), as is an endpoint
    /// that was closed or whose I/O thread has exited ([`EndpointError::Stopping`], kind
    /// `NotConnected`). The call does not wait for the I/O thread: it hands the socket over
    /// and returns. On its next turn the I/O thread sets the options its backend needs on the
    /// new socket (probing GSO and GRO as at start), arms its receives, serves it from then on,
    /// and closes the old socket once the kernel has finished every operation on it (io_uring:
    /// its receive is cancelled and its sends complete first; poll: at once). Until then
    /// [`Endpoint::local_addr`] reports the old address.
    ///
    /// If the I/O thread cannot take the new socket (an option its backend needs cannot be set
    /// on it; on Windows RIO, a socket made without `WSA_FLAG_REGISTERED_IO`, which sockets
    /// from `std::net::UdpSocket::bind` lack), nothing changes: the endpoint goes on serving
    /// the old socket, `local_addr` keeps reporting it, and the failure is logged (one warning)
    /// and counted in the endpoint's I/O statistics; the new socket is closed.
    ///
    /// Unlike quinn, the old socket is not kept receiving until the first datagram arrives on
    /// the new one: what peers still send to the old address after the swap is lost, and QUIC
    /// retransmits it.
    ///
    /// [`EndpointBuilder::socket`]: crate::EndpointBuilder::socket
    pub fn rebind(&self, socket: std::net::UdpSocket) -> io::Result<()> {
        if self.shards.len() > 1 {
            return Err(EndpointError::Config("a sharded endpoint cannot be rebound").into());
        }
        let shared = self.shared();
        if shared.is_stopping() {
            return Err(EndpointError::Stopping.into());
        }
        crate::socket::adopt(&socket)?;
        shared
            .mailbox
            .push(Command::Rebind(socket))
            .map_err(|_| EndpointError::Stopping)?;
        Ok(())
    }

    /// Handshake counts, as quinn's (all shards').
    pub fn stats(&self) -> EndpointStats {
        self.io_stats().handshakes
    }

    /// Counters of the endpoint's I/O: datagrams, bytes, drops, buffer use (ringquic's own),
    /// added up over the shards ([`Endpoint::shard_io_stats`] gives each).
    pub fn io_stats(&self) -> EndpointIoStats {
        let mut shards = self.shard_refs().map(|r| r.0.stats());
        let first = shards.next().unwrap_or_default();
        shards.fold(first, |sum, s| sum.add(&s))
    }

    /// Number of connections the I/O threads are driving (including closing ones).
    pub fn open_connections(&self) -> usize {
        self.shard_refs().map(|r| r.0.open_connections()).sum()
    }

    /// Set the client configuration [`Endpoint::connect`] uses.
    pub fn set_default_client_config(&mut self, config: ClientConfig) {
        for r in self.shard_refs() {
            r.0.set_default_client_config(config.clone());
        }
    }

    /// Replace the server configuration (new connections only); `None` stops accepting.
    pub fn set_server_config(&self, config: Option<ServerConfig>) {
        let config = config.map(Arc::new);
        for r in self.shard_refs() {
            let _ = r.0.mailbox.push(Command::SetServerConfig(config.clone()));
        }
    }

    /// Connect to `addr` with the default client configuration.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Connecting, ConnectError> {
        let config = self
            .shared()
            .default_client_config()
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
        let shard = &self.shards[self.next_turn()];
        let shared = &shard.0;
        if shared.is_stopping() {
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
        Ok(Connecting::pending(wait, shard.clone(), addr, None))
    }

    /// Run `future` on the endpoint's I/O thread, next to the socket and the connections
    /// (thread-per-core style), instead of on the application's runtime.
    ///
    /// Wakeups between such a task and the I/O loop stay on one thread: no system call, no
    /// context switch, which is what small request/response work pays for otherwise. The task
    /// must not block (it shares the thread with all the endpoint's I/O); ringquic's own
    /// futures never do, and `connect`/`accept` work inline there. Await the returned handle
    /// from anywhere for the output; dropping the handle lets the task run on (detaches).
    /// If the endpoint's thread exits, remaining tasks are cancelled. A sharded endpoint runs
    /// them on shard 0.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        local::spawn_on(self.shared(), future)
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
        for r in self.shard_refs() {
            r.0.close();
            let _ = r.0.mailbox.push(Command::Close {
                code,
                reason: Bytes::copy_from_slice(reason),
            });
        }
    }

    /// Wait until every connection has been cleaned up (closed and drained), so close frames
    /// and in-flight data have gone out.
    pub async fn wait_idle(&self) {
        for r in self.shard_refs() {
            std::future::poll_fn(|cx| r.0.poll_idle(cx)).await
        }
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
        let ep = self.endpoint;
        // Every shard's queue, starting at a different one each time so none waits behind the
        // others; `None` once every shard is closed. Each pending shard keeps the waker.
        let n = ep.shards.len();
        let start = ep.next_turn();
        let mut closed = 0;
        for k in 0..n {
            let r = &ep.shards[(start + k) % n];
            match r.0.poll_accept(cx) {
                Poll::Ready(Some(inc)) => return Poll::Ready(Some(Incoming::new(inc, r.clone()))),
                Poll::Ready(None) => closed += 1,
                Poll::Pending => {}
            }
        }
        if closed == n {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
