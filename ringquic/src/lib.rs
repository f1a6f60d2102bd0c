//! # ringquic
//!
//! A QUIC endpoint whose UDP I/O runs on its own I/O thread over completion-based I/O with
//! buffers registered with the kernel: io_uring on Linux, with a portable readiness-based
//! fallback. The QUIC protocol comes from [`quinn_proto`]; the async API is quinn's, so porting
//! means changing imports. The futures are woken from the I/O thread and need no runtime: they
//! work under tokio, smol, or a plain `block_on`.
//!
//! ## How a datagram travels
//!
//! ```text
//!  application task            │ I/O thread ("ringquic-io")                 │ kernel
//!  ────────────────────────────┼────────────────────────────────────────────┼───────────────
//!  stream.write(b) ─ lock conn ─► proto::Connection send buffer              │
//!    └─ wake(): Drive(ch) ─► Mailbox ─► eventfd ────────────────────────────►│ ring wakes
//!                              │ poll_transmit ─► TX buffer ─► SENDMSG+GSO ─►│ UDP out
//!                              │                                            │
//!                              │ RECVMSG multishot ◄─ provided buffer ◄──────│ UDP in (GRO)
//!                              │ buffer ─► BytesMut (no copy for GRO batches │
//!                              │   ≥ 16 KiB; smaller: one copy) ─► proto::Endpoint
//!                              │   ─► proto::Connection (decrypt in place)   │
//!  stream.read_chunk() ◄─ waker ◄ Readable event                            │
//!    └─ Bytes slice of the decrypted datagram                               │
//! ```
//!
//! ## Example
//!
//! ```no_run
//! # async fn run(server_config: ringquic::ServerConfig, client_config: ringquic::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use ringquic::Endpoint;
//!
//! let server = Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
//! let addr = server.local_addr()?;
//! let mut client = Endpoint::client("127.0.0.1:0".parse()?)?;
//! client.set_default_client_config(client_config);
//!
//! let connecting = client.connect(addr, "localhost")?;
//! let incoming = server.accept().await.expect("endpoint open");
//! let (conn, server_conn) = (connecting.await?, incoming.await?);
//!
//! let (mut send, mut recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let (mut s_send, mut s_recv) = server_conn.accept_bi().await?;
//! let msg = s_recv.read_to_end(1024).await?;
//! s_send.write_all(&msg).await?;
//! s_send.finish()?;
//! assert_eq!(recv.read_to_end(1024).await?, b"hello");
//! println!("backend: {}", client.backend());
//! # Ok(()) }
//! ```
//!
//! See `DESIGN.md` in the repository for the whole design.
#![deny(unsafe_code)]
#![warn(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod connection;
mod driver;
mod endpoint;
mod handles;
#[allow(unsafe_code)]
mod io;
mod mailbox;
mod socket;
mod streams;
mod sync;

pub use crate::{
    connection::{Connecting, Connection},
    endpoint::{
        try_spawn, Accept, Endpoint, EndpointBuilder, EndpointStats, Incoming, IncomingFuture, JoinError,
        JoinHandle, RetryError, DEFAULT_MAX_INCOMING, DEFAULT_RECV_BUFFERS, DEFAULT_RECV_BUFFER_SIZE,
        DEFAULT_RECV_MEMORY_BUDGET, DEFAULT_TX_BUFFERS, DEFAULT_TX_BUFFER_SIZE, DEFAULT_ZERO_COPY_THRESHOLD,
        SHUTDOWN_JOIN_TIMEOUT,
    },
    io::BackendKind,
    streams::{RecvStream, ResetWaitError, SendStream},
};

pub use quinn_proto::{
    crypto, AckFrequencyConfig, ApplicationClose, Chunk, ClientConfig, ClosedStream, ConfigError,
    ConnectError, ConnectionClose, ConnectionError, ConnectionId, ConnectionStats, Dir, EndpointConfig,
    FrameStats, IdleTimeout, MtuDiscoveryConfig, PathStats, ServerConfig, Side, StreamId, TransportConfig,
    TransportError, TransportErrorCode, UdpStats, VarInt, VarIntBoundsExceeded, Written,
};
pub use rustls;

/// Entry points for fuzz targets into parsers that read what the kernel or a peer hands us.
/// Not part of the API: hidden, and only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a received control-message buffer (GRO size, ECN, destination address).
    #[cfg(target_os = "linux")]
    pub fn parse_cmsgs(control: &[u8]) -> (Option<u8>, Option<std::net::IpAddr>, Option<usize>) {
        let c = crate::io::cmsg::parse(control);
        (c.ecn.map(|e| e as u8), c.dst_ip, c.segment_size)
    }

    /// Parse a kernel `sockaddr_in`/`sockaddr_in6`.
    #[cfg(target_os = "linux")]
    pub fn parse_sockaddr(name: &[u8]) -> Option<std::net::SocketAddr> {
        crate::io::cmsg::parse_sockaddr(name)
    }

    /// Split a received payload of `len` bytes by a GRO segment size; returns the ranges.
    pub fn split_segments(len: usize, segment_size: Option<usize>) -> Vec<std::ops::Range<usize>> {
        crate::io::recv::segments(len, segment_size).collect()
    }

    /// Encode send-side control messages and parse them back; returns the encoded length.
    #[cfg(target_os = "linux")]
    pub fn encode_cmsgs(
        segment_size: Option<u16>,
        ecn: u8,
        src_ip: Option<std::net::IpAddr>,
        dst_v4: bool,
    ) -> usize {
        let mut buf = [0u8; crate::io::cmsg::SEND_SPACE];
        let c = crate::io::cmsg::SendCmsgs {
            segment_size,
            ecn: quinn_proto::EcnCodepoint::from_bits(ecn & 0b11),
            src_ip,
        };
        crate::io::cmsg::encode(&mut buf, dst_v4, &c)
    }
}

/// Errors creating an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The UDP socket could not be created or bound to the address.
    #[error("failed to bind a UDP socket to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A socket option ringquic needs could not be set or read (for an adopted socket: the
    /// socket is not usable as it is, and `option` names what is missing).
    #[error("the socket cannot be used: {option}: {source}")]
    Socket {
        /// The option or check that failed.
        option: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A backend name (`RINGQUIC_BACKEND` or the builder) is not one ringquic knows.
    #[error("unknown backend {0:?}: expected \"uring\", \"poll\" or \"rio\"")]
    UnknownBackend(String),
    /// The backend asked for explicitly cannot run here.
    #[error("the {backend} backend is not available here: {source}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: BackendKind,
        /// Why it cannot run.
        source: std::io::Error,
    },
    /// Setting up the backend failed after it was chosen.
    #[error("I/O backend setup failed at {what}: {source}")]
    Backend {
        /// The step that failed.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The builder's settings cannot work; the message says which and why.
    #[error("invalid endpoint configuration: {0}")]
    Config(&'static str),
    /// A receive buffer cannot hold a maximum-size UDP payload plus the backend's headers.
    #[error("receive buffers of {size} bytes are too small: at least {min} bytes are needed for a {max_udp_payload}-byte UDP payload")]
    RecvBufferTooSmall {
        /// The size asked for.
        size: usize,
        /// The smallest that works.
        min: usize,
        /// The endpoint's maximum UDP payload size.
        max_udp_payload: usize,
    },
    /// A TX buffer cannot hold one maximum-size UDP payload.
    #[error("TX buffers of {size} bytes are too small: at least {min} bytes are needed")]
    TxBufferTooSmall {
        /// The size asked for.
        size: usize,
        /// The smallest that works.
        min: usize,
    },
    /// The I/O thread could not be started.
    #[error("failed to start the I/O thread: {0}")]
    Thread(std::io::Error),
}

/// Errors writing to a [`SendStream`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The peer stopped the stream with this code.
    #[error("sending stopped by peer: error {0}")]
    Stopped(VarInt),
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already finished or reset.
    #[error("closed stream")]
    ClosedStream,
}

/// Errors reading from a [`RecvStream`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer reset the stream with this code.
    #[error("stream reset by peer: error {0}")]
    Reset(VarInt),
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already stopped, or read to the end.
    #[error("closed stream")]
    ClosedStream,
    /// An ordered read after unordered reads on the same stream.
    #[error("ordered read after unordered read")]
    IllegalOrderedRead,
}

/// Errors from [`RecvStream::read_exact`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadExactError {
    /// The stream ended after this many bytes were read, before the buffer was full.
    #[error("stream finished early ({0} bytes read)")]
    FinishedEarly(usize),
    /// Reading failed.
    #[error(transparent)]
    ReadError(#[from] ReadError),
}

/// Errors from [`RecvStream::read_to_end`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadToEndError {
    /// The stream is longer than the limit given.
    #[error("stream too long")]
    TooLong,
    /// Reading failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Errors from [`SendStream::stopped`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoppedError {
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
}

/// Errors from [`Connection::send_datagram`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendDatagramError {
    /// The peer does not accept datagrams.
    #[error("datagrams not supported by peer")]
    UnsupportedByPeer,
    /// Datagrams are disabled locally.
    #[error("datagram support disabled")]
    Disabled,
    /// The datagram is larger than the connection can carry now.
    #[error("datagram too large")]
    TooLarge,
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
}

impl From<WriteError> for std::io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match e {
            WriteError::Stopped(_) | WriteError::ConnectionLost(_) => std::io::ErrorKind::ConnectionReset,
            WriteError::ClosedStream => std::io::ErrorKind::NotConnected,
        };
        Self::new(kind, e)
    }
}

impl From<ReadError> for std::io::Error {
    fn from(e: ReadError) -> Self {
        let kind = match e {
            ReadError::Reset(_) | ReadError::ConnectionLost(_) => std::io::ErrorKind::ConnectionReset,
            ReadError::ClosedStream => std::io::ErrorKind::NotConnected,
            ReadError::IllegalOrderedRead => std::io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}
