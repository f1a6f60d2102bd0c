//! The seam between the workloads and the QUIC implementation under test.
//!
//! Workloads and the perf protocol are written once, against the small traits here
//! ([`EndpointOps`], [`ConnOps`], [`SendOps`], [`RecvOps`]). Since ringquic mirrors quinn's API
//! method for method, one macro implements those traits for both crates' types, and only endpoint
//! construction ([`System`]) is written per implementation. [`SystemKind`] names a system (and a
//! ringquic backend) at run time; [`with_system!`](crate::with_system) turns it into a concrete
//! type for the generic code.

use std::{fmt, future::Future, net::SocketAddr, pin::Pin, str::FromStr};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use quinn_proto::{ClientConfig, EndpointConfig, ServerConfig};
use serde::{Deserialize, Serialize};

/// A connection attempt in progress, as handed out by [`EndpointOps::accept`].
pub type Handshake<C> = Pin<Box<dyn Future<Output = Result<C>> + Send>>;

/// The sending half of a stream.
pub trait SendOps: Send + 'static {
    /// Queues `data` (zero-copy where the implementation can).
    fn write_chunk(&mut self, data: Bytes) -> impl Future<Output = Result<()>> + Send;
    /// Writes all of `data`.
    fn write_all(&mut self, data: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Sends FIN once everything written has been sent.
    fn finish(&mut self) -> Result<()>;
}

/// The receiving half of a stream.
pub trait RecvOps: Send + 'static {
    /// Reads the next chunk of at most `max` bytes in order; `None` at the end of the stream.
    fn read_chunk(&mut self, max: usize) -> impl Future<Output = Result<Option<Bytes>>> + Send;
    /// Reads into `buf`; `None` at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = Result<Option<usize>>> + Send;
}

/// An HTTP/3 transport connection (h3's `quic::Connection`) whose parts can move between tasks:
/// what [`ConnOps::into_h3`] gives for the h3 workloads. Implemented for the two adapters,
/// h3-quinn's and ringquic-h3's connections; the bounds are checked there.
pub trait H3Transport:
    h3::quic::Connection<
        Bytes,
        RecvStream: Send + 'static,
        OpenStreams: Clone + Send + Sync + 'static,
        BidiStream: Send + 'static,
        SendStream: Send + 'static,
    > + Send
    + 'static
{
}

/// An established connection.
pub trait ConnOps: Clone + Send + Sync + 'static {
    /// The sending half of a stream.
    type Send: SendOps;
    /// The receiving half of a stream.
    type Recv: RecvOps;
    /// Opens a bidirectional stream.
    fn open_bi(&self) -> impl Future<Output = Result<(Self::Send, Self::Recv)>> + Send;
    /// Opens a unidirectional stream.
    fn open_uni(&self) -> impl Future<Output = Result<Self::Send>> + Send;
    /// Accepts the peer's next bidirectional stream.
    fn accept_bi(&self) -> impl Future<Output = Result<(Self::Send, Self::Recv)>> + Send;
    /// Accepts the peer's next unidirectional stream.
    fn accept_uni(&self) -> impl Future<Output = Result<Self::Recv>> + Send;
    /// Queues an unreliable datagram (dropping the oldest queued one if the buffer is full).
    fn send_datagram(&self, data: Bytes) -> Result<()>;
    /// The connection's statistics (quinn-proto's, for both systems).
    fn stats(&self) -> quinn_proto::ConnectionStats;
    /// Receives the next datagram.
    fn read_datagram(&self) -> impl Future<Output = Result<Bytes>> + Send;
    /// The largest datagram payload the peer accepts now, if datagrams are supported.
    fn max_datagram_size(&self) -> Option<usize>;
    /// Closes the connection with an application error code.
    fn close(&self, code: u32, reason: &[u8]);
    /// Starts `fut`, the serving of this connection, as a task where the connection lives:
    /// for ringquic's local mode, on the I/O thread that drives it (its own shard of a sharded
    /// endpoint: thread-per-core serving, `Connection::spawn`); else as [`spawn_detached`].
    fn spawn_home<F: Future<Output = ()> + Send + 'static>(&self, fut: F);
    /// This connection as an HTTP/3 transport: h3-quinn's for quinn, ringquic-h3's for ringquic.
    type H3: H3Transport;
    /// Wraps the connection for h3.
    fn into_h3(self) -> Self::H3;
}

/// A bound endpoint.
pub trait EndpointOps: Clone + Send + Sync + 'static {
    /// Its connections.
    type Conn: ConnOps;
    /// Waits for the next incoming connection attempt; `None` once the endpoint is closed.
    fn accept(&self) -> impl Future<Output = Option<Handshake<Self::Conn>>> + Send;
    /// Connects to `addr`, authenticating it as `server_name`, with the default client config.
    fn connect(&self, addr: SocketAddr, server_name: &str)
        -> impl Future<Output = Result<Self::Conn>> + Send;
    /// The bound address.
    fn local_addr(&self) -> Result<SocketAddr>;
    /// Closes every connection.
    fn close(&self, code: u32, reason: &[u8]);
    /// Waits until every connection has been cleanly shut down.
    fn wait_idle(&self) -> impl Future<Output = ()> + Send;
}

/// Implements the traits above for a crate with quinn's API (`quinn` itself, or `ringquic`), and
/// its h3 adapter crate (`h3_quinn`, `ringquic_h3`).
macro_rules! impl_quic_ops {
    ($q:ident, $h3:ident, $spawn_home:path) => {
        impl SendOps for $q::SendStream {
            async fn write_chunk(&mut self, data: Bytes) -> Result<()> {
                Ok($q::SendStream::write_chunk(self, data).await?)
            }
            async fn write_all(&mut self, data: &[u8]) -> Result<()> {
                Ok($q::SendStream::write_all(self, data).await?)
            }
            fn finish(&mut self) -> Result<()> {
                Ok($q::SendStream::finish(self)?)
            }
        }

        impl RecvOps for $q::RecvStream {
            async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
                let chunk = $q::RecvStream::read_chunk(self, max, true).await?;
                Ok(chunk.map(|c| c.bytes))
            }
            async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
                Ok($q::RecvStream::read(self, buf).await?)
            }
        }

        impl ConnOps for $q::Connection {
            type Send = $q::SendStream;
            type Recv = $q::RecvStream;
            async fn open_bi(&self) -> Result<(Self::Send, Self::Recv)> {
                Ok($q::Connection::open_bi(self).await?)
            }
            async fn open_uni(&self) -> Result<Self::Send> {
                Ok($q::Connection::open_uni(self).await?)
            }
            async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv)> {
                Ok($q::Connection::accept_bi(self).await?)
            }
            async fn accept_uni(&self) -> Result<Self::Recv> {
                Ok($q::Connection::accept_uni(self).await?)
            }
            fn send_datagram(&self, data: Bytes) -> Result<()> {
                Ok($q::Connection::send_datagram(self, data)?)
            }
            fn stats(&self) -> quinn_proto::ConnectionStats {
                $q::Connection::stats(self)
            }
            async fn read_datagram(&self) -> Result<Bytes> {
                Ok($q::Connection::read_datagram(self).await?)
            }
            fn max_datagram_size(&self) -> Option<usize> {
                $q::Connection::max_datagram_size(self)
            }
            fn close(&self, code: u32, reason: &[u8]) {
                $q::Connection::close(self, code.into(), reason)
            }
            fn spawn_home<F: Future<Output = ()> + Send + 'static>(&self, fut: F) {
                $spawn_home(self, fut)
            }
            type H3 = $h3::Connection;
            fn into_h3(self) -> Self::H3 {
                $h3::Connection::new(self)
            }
        }

        impl H3Transport for $h3::Connection {}

        impl EndpointOps for $q::Endpoint {
            type Conn = $q::Connection;
            async fn accept(&self) -> Option<Handshake<Self::Conn>> {
                let incoming = $q::Endpoint::accept(self).await?;
                Some(Box::pin(async move { Ok(incoming.await?) }))
            }
            fn connect(
                &self,
                addr: SocketAddr,
                server_name: &str,
            ) -> impl Future<Output = Result<Self::Conn>> + Send {
                let connecting = $q::Endpoint::connect(self, addr, server_name);
                async move { Ok(connecting?.await?) }
            }
            fn local_addr(&self) -> Result<SocketAddr> {
                Ok($q::Endpoint::local_addr(self)?)
            }
            fn close(&self, code: u32, reason: &[u8]) {
                $q::Endpoint::close(self, code.into(), reason)
            }
            async fn wait_idle(&self) {
                $q::Endpoint::wait_idle(self).await
            }
        }
    };
}

impl_quic_ops!(quinn, h3_quinn, quinn_spawn_home);
#[cfg(feature = "ringquic")]
impl_quic_ops!(ringquic, ringquic_h3, ringquic_spawn_home);

/// quinn's connections live on the runtime: [`spawn_detached`].
fn quinn_spawn_home<F: Future<Output = ()> + Send + 'static>(_conn: &quinn::Connection, fut: F) {
    spawn_detached(fut)
}

/// On an I/O thread (local mode: the caller is a task `Endpoint::spawn` started), on the
/// connection's own I/O thread, its shard's; anywhere else on the caller's tokio runtime.
/// Whether the caller is on an I/O thread is asked the one way the public API offers:
/// `try_spawn` of an empty task (once per connection).
#[cfg(feature = "ringquic")]
fn ringquic_spawn_home<F: Future<Output = ()> + Send + 'static>(conn: &ringquic::Connection, fut: F) {
    match ringquic::try_spawn(std::future::ready(())) {
        Ok(probe) => {
            drop(probe);
            drop(conn.spawn(fut));
        }
        // Not on an I/O thread: what `spawn_detached` would do after asking again.
        Err(_) => drop(tokio::spawn(fut)),
    }
}

/// What an endpoint is bound for.
pub enum Role {
    /// Accepting connections, with this server configuration.
    Server(ServerConfig),
    /// Making connections, with this default client configuration.
    Client(ClientConfig),
}

/// The future [`System::host`] returns: the hosted future's output, or why it could not run.
pub type Hosted<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// A QUIC implementation that can make server and client endpoints.
///
/// Endpoints are made on the thread (and inside the tokio runtime) that will use them.
pub trait System: Clone + Send + 'static {
    /// Its endpoint type.
    type Endpoint: EndpointOps;
    /// Binds an endpoint at `addr` for `role`.
    fn bind(&self, endpoint: EndpointConfig, role: Role, addr: SocketAddr) -> Result<Self::Endpoint>;
    /// The name to report for endpoints of this system, e.g. `quinn` or `ringquic/uring`.
    fn label(&self, endpoint: &Self::Endpoint) -> String;
    /// Runs `fut` where this system runs application code: on the calling thread's runtime,
    /// or, for ringquic's local mode, on the endpoint's own I/O thread.
    fn host<F: Future<Output: Send + 'static> + Send + 'static>(
        &self,
        endpoint: &Self::Endpoint,
        fut: F,
    ) -> Hosted<F::Output> {
        let _ = endpoint;
        Box::pin(async move { Ok(fut.await) })
    }
}

/// Starts `fut` as a task next to the caller: on ringquic's I/O thread when the caller runs
/// there ([`ringquic::try_spawn`]), else on the caller's tokio runtime.
pub fn spawn_detached<F: Future<Output = ()> + Send + 'static>(fut: F) {
    #[cfg(feature = "ringquic")]
    let fut = match ringquic::try_spawn(fut) {
        Ok(handle) => return drop(handle),
        Err(fut) => fut,
    };
    tokio::spawn(fut);
}

/// Stock quinn 0.11 on the calling thread's tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quinn;

impl System for Quinn {
    type Endpoint = quinn::Endpoint;

    fn bind(&self, endpoint: EndpointConfig, role: Role, addr: SocketAddr) -> Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        let runtime = quinn::default_runtime().context("quinn needs a tokio runtime")?;
        let (server, client) = match role {
            Role::Server(server) => (Some(server), None),
            Role::Client(client) => (None, Some(client)),
        };
        let mut ep = quinn::Endpoint::new(endpoint, server, socket, runtime)?;
        if let Some(client) = client {
            ep.set_default_client_config(client);
        }
        Ok(ep)
    }

    fn label(&self, _endpoint: &quinn::Endpoint) -> String {
        "quinn".into()
    }
}

/// ringquic-only settings of a bench run (`bench --busy-poll`, `--pin-io-threads`, `--sqpoll`,
/// `--zero-copy-threshold`). Quinn has no counterpart, so they apply to the ringquic rows only
/// and the report says they were on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingquicTuning {
    /// `EndpointBuilder::busy_poll`, in microseconds (0: off).
    pub busy_poll_us: u64,
    /// Pin the client's I/O thread to CPU 0 and the server's to CPU 1.
    pub pin_io_threads: bool,
    /// `EndpointBuilder::sqpoll` idle time in milliseconds.
    pub sqpoll_idle_ms: Option<u64>,
    /// `EndpointBuilder::zero_copy_threshold` (ringquic's default when absent).
    pub zero_copy_threshold: Option<usize>,
    /// `EndpointBuilder::send_zero_copy_threshold` (off when absent).
    #[serde(default)]
    pub send_zero_copy_threshold: Option<usize>,
    /// `EndpointBuilder::app_thread_sends(false)`: every send through the I/O thread.
    #[serde(default)]
    pub no_app_thread_sends: bool,
    /// `EndpointBuilder::shards` of the server endpoint (1: not sharded).
    #[serde(default = "one")]
    pub shards: usize,
}

fn one() -> usize {
    1
}

impl RingquicTuning {
    /// Everything at ringquic's defaults.
    pub const DEFAULTS: Self = Self {
        busy_poll_us: 0,
        pin_io_threads: false,
        sqpoll_idle_ms: None,
        zero_copy_threshold: None,
        send_zero_copy_threshold: None,
        no_app_thread_sends: false,
        shards: 1,
    };

    /// A one-line description, or `None` when everything is at ringquic's defaults.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.busy_poll_us > 0 {
            parts.push(format!("busy-poll {} µs", self.busy_poll_us));
        }
        if self.pin_io_threads {
            parts.push("I/O threads pinned (client CPU 0, server CPU 1)".to_string());
        }
        if let Some(ms) = self.sqpoll_idle_ms {
            parts.push(format!("SQPOLL (idle {ms} ms)"));
        }
        if let Some(t) = self.zero_copy_threshold {
            parts.push(format!("zero-copy threshold {t} B"));
        }
        if let Some(t) = self.send_zero_copy_threshold {
            parts.push(format!("SENDMSG_ZC from {t} B"));
        }
        if self.no_app_thread_sends {
            parts.push("no sends from application threads".to_string());
        }
        if self.shards != 1 {
            parts.push(format!("server sharded over {} I/O threads", self.shards));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl Default for RingquicTuning {
    fn default() -> Self {
        Self::DEFAULTS
    }
}

/// The tuning the phase running in this process uses (set by the bench before each phase).
static TUNING: std::sync::Mutex<RingquicTuning> = std::sync::Mutex::new(RingquicTuning::DEFAULTS);

/// Set the ringquic tuning for the endpoints created from now on in this process.
pub fn set_ringquic_tuning(t: RingquicTuning) {
    *TUNING.lock().unwrap_or_else(|e| e.into_inner()) = t;
}

#[cfg(feature = "ringquic")]
fn ringquic_tuning() -> RingquicTuning {
    *TUNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// ringquic, on the given backend (or its default: io_uring where available).
#[cfg(feature = "ringquic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Ringquic(pub Option<ringquic::BackendKind>);

#[cfg(feature = "ringquic")]
impl Ringquic {
    fn builder(&self, endpoint: EndpointConfig, cpu: usize) -> ringquic::EndpointBuilder {
        let mut b = ringquic::Endpoint::builder().endpoint_config(endpoint);
        if let Some(kind) = self.0 {
            b = b.backend(kind);
        }
        let t = ringquic_tuning();
        if t.busy_poll_us > 0 {
            b = b.busy_poll(std::time::Duration::from_micros(t.busy_poll_us));
        }
        if t.pin_io_threads {
            b = b.pin_to_cpu(cpu);
        }
        if let Some(ms) = t.sqpoll_idle_ms {
            b = b.sqpoll(std::time::Duration::from_millis(ms));
        }
        if let Some(z) = t.zero_copy_threshold {
            b = b.zero_copy_threshold(z);
        }
        if let Some(z) = t.send_zero_copy_threshold {
            b = b.send_zero_copy_threshold(z);
        }
        if t.no_app_thread_sends {
            b = b.app_thread_sends(false);
        }
        b
    }
}

#[cfg(feature = "ringquic")]
impl System for Ringquic {
    type Endpoint = ringquic::Endpoint;

    /// On an I/O thread always (inside the bench's runtime the default would be the loop on
    /// the runtime: that is [`RingquicRuntime`], the `+rt` rows).
    fn bind(&self, endpoint: EndpointConfig, role: Role, addr: SocketAddr) -> Result<ringquic::Endpoint> {
        self.bind_with(endpoint, role, addr, |b| b.io_on_runtime(false))
    }

    fn label(&self, endpoint: &ringquic::Endpoint) -> String {
        format!("ringquic/{}", endpoint.backend())
    }
}

#[cfg(feature = "ringquic")]
impl Ringquic {
    /// Bind for `role`, with `tweak` applied to the builder last.
    fn bind_with(
        &self,
        endpoint: EndpointConfig,
        role: Role,
        addr: SocketAddr,
        tweak: impl FnOnce(ringquic::EndpointBuilder) -> ringquic::EndpointBuilder,
    ) -> Result<ringquic::Endpoint> {
        // With --pin-io-threads the server's I/O thread goes to CPU 1 and the client's to CPU 0.
        let builder = match role {
            Role::Server(server) => self
                .builder(endpoint, 1)
                .shards(ringquic_tuning().shards)
                .server_config(server),
            Role::Client(client) => self.builder(endpoint, 0).default_client_config(client),
        };
        Ok(tweak(builder).bind(addr)?)
    }
}

/// ringquic with its I/O loop as a task on the application's runtime
/// ([`ringquic::EndpointBuilder::io_on_runtime`]): no I/O thread, one thread per side as in quinn.
/// With no backend named this is what `Endpoint::server`/`client` give inside a tokio runtime
/// (the poll backend).
#[cfg(feature = "ringquic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RingquicRuntime(pub Option<ringquic::BackendKind>);

#[cfg(feature = "ringquic")]
impl System for RingquicRuntime {
    type Endpoint = ringquic::Endpoint;

    fn bind(&self, endpoint: EndpointConfig, role: Role, addr: SocketAddr) -> Result<ringquic::Endpoint> {
        Ringquic(self.0).bind_with(endpoint, role, addr, |b| b.io_on_runtime(true))
    }

    fn label(&self, endpoint: &ringquic::Endpoint) -> String {
        format!("ringquic/{}+rt", endpoint.backend())
    }
}

/// ringquic with the application's tasks on the endpoint's I/O thread ([`ringquic::Endpoint::spawn`]):
/// the thread-per-core option, with no cross-thread wakeups between application and I/O.
#[cfg(feature = "ringquic")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RingquicLocal(pub Option<ringquic::BackendKind>);

#[cfg(feature = "ringquic")]
impl System for RingquicLocal {
    type Endpoint = ringquic::Endpoint;

    fn bind(&self, endpoint: EndpointConfig, role: Role, addr: SocketAddr) -> Result<ringquic::Endpoint> {
        Ringquic(self.0).bind(endpoint, role, addr)
    }

    fn label(&self, endpoint: &ringquic::Endpoint) -> String {
        format!("ringquic/{}+local", endpoint.backend())
    }

    fn host<F: Future<Output: Send + 'static> + Send + 'static>(
        &self,
        endpoint: &ringquic::Endpoint,
        fut: F,
    ) -> Hosted<F::Output> {
        let task = endpoint.spawn(fut);
        Box::pin(async move { Ok(task.await?) })
    }
}

/// Which implementation (and ringquic backend) to run, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemKind {
    /// Stock quinn on tokio.
    Quinn,
    /// ringquic; `None` is its default backend.
    Ringquic(Option<Backend>),
    /// ringquic with the application on its I/O thread; `None` is its default backend.
    RingquicLocal(Option<Backend>),
    /// ringquic with its I/O loop on the application's runtime; `None` is its default backend.
    RingquicRuntime(Option<Backend>),
}

/// A ringquic backend, named independently of the `ringquic` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// io_uring.
    Uring,
    /// The portable poll fallback.
    Poll,
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "poll" => Ok(Backend::Poll),
            other => bail!("unknown backend {other:?} (expected uring or poll)"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "uring",
            Backend::Poll => "poll",
        })
    }
}

impl SystemKind {
    /// A label usable before an endpoint exists (the default backend shows as `ringquic`).
    pub fn name(&self) -> String {
        match self {
            SystemKind::Quinn => "quinn".into(),
            SystemKind::Ringquic(None) => "ringquic".into(),
            SystemKind::Ringquic(Some(b)) => format!("ringquic/{b}"),
            SystemKind::RingquicLocal(None) => "ringquic+local".into(),
            SystemKind::RingquicLocal(Some(b)) => format!("ringquic/{b}+local"),
            SystemKind::RingquicRuntime(None) => "ringquic+rt".into(),
            SystemKind::RingquicRuntime(Some(b)) => format!("ringquic/{b}+rt"),
        }
    }

    /// Whether the application side runs on the endpoint's I/O thread.
    pub fn is_local(&self) -> bool {
        matches!(self, SystemKind::RingquicLocal(_))
    }

    /// Whether this is the baseline system (stock quinn).
    pub fn is_baseline(&self) -> bool {
        matches!(self, SystemKind::Quinn)
    }
}

#[cfg(feature = "ringquic")]
impl From<Backend> for ringquic::BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Uring => ringquic::BackendKind::IoUring,
            Backend::Poll => ringquic::BackendKind::Poll,
        }
    }
}

/// Runs `$body` with `$sys` bound to the concrete [`System`] that a [`SystemKind`] names.
///
/// Without the `ringquic` feature, a ringquic kind evaluates to an error via `$unavailable`.
#[macro_export]
macro_rules! with_system {
    ($kind:expr, $sys:ident => $body:expr) => {
        match $kind {
            $crate::system::SystemKind::Quinn => {
                let $sys = $crate::system::Quinn;
                $body
            }
            #[allow(unused_variables)]
            $crate::system::SystemKind::Ringquic(backend) => {
                $crate::with_ringquic!(backend, $sys => $body)
            }
            #[allow(unused_variables)]
            $crate::system::SystemKind::RingquicLocal(backend) => {
                $crate::with_ringquic!(local backend, $sys => $body)
            }
            #[allow(unused_variables)]
            $crate::system::SystemKind::RingquicRuntime(backend) => {
                $crate::with_ringquic!(runtime backend, $sys => $body)
            }
        }
    };
}

/// Helper of [`with_system!`] for the ringquic arm.
#[cfg(feature = "ringquic")]
#[macro_export]
#[doc(hidden)]
macro_rules! with_ringquic {
    ($backend:expr, $sys:ident => $body:expr) => {{
        let $sys = $crate::system::Ringquic($backend.map(Into::into));
        $body
    }};
    (local $backend:expr, $sys:ident => $body:expr) => {{
        let $sys = $crate::system::RingquicLocal($backend.map(Into::into));
        $body
    }};
    (runtime $backend:expr, $sys:ident => $body:expr) => {{
        let $sys = $crate::system::RingquicRuntime($backend.map(Into::into));
        $body
    }};
}

/// Helper of [`with_system!`] for the ringquic arm (feature off: an error).
#[cfg(not(feature = "ringquic"))]
#[macro_export]
#[doc(hidden)]
macro_rules! with_ringquic {
    ($backend:expr, $sys:ident => $body:expr) => {
        Err(::anyhow::anyhow!(
            "ringquic-perf was built without the `ringquic` feature"
        ))
    };
    (local $backend:expr, $sys:ident => $body:expr) => {
        Err(::anyhow::anyhow!(
            "ringquic-perf was built without the `ringquic` feature"
        ))
    };
    (runtime $backend:expr, $sys:ident => $body:expr) => {
        Err(::anyhow::anyhow!(
            "ringquic-perf was built without the `ringquic` feature"
        ))
    };
}
