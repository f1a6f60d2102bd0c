//! # ringquic
//!
//! A QUIC endpoint whose UDP I/O runs in its own event loop over completion-based I/O with
//! buffers registered with the kernel: io_uring on Linux, with a portable readiness-based
//! fallback. The QUIC protocol comes from [`quinn_proto`]; the async API is quinn's, so porting
//! means changing imports. The futures are woken from the loop and need no runtime: they work
//! under tokio, smol, or a plain `block_on`.
//!
//! The loop runs on an I/O thread of its own, or, by default when an endpoint is made inside a
//! tokio runtime, as one task on that runtime (as quinn's driver does), which on a machine
//! with few cores saves a cross-thread handoff per message:
//! [`EndpointBuilder::io_on_runtime`] says when and how. The picture below is the I/O thread's;
//! on the runtime the same steps run in the loop's task, woken by the runtime's reactor.
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
//! ## Polling a future and dropping it
//!
//! A future that must wait registers its task's waker in the connection's (or endpoint's) shared
//! state and keeps nothing else. So these may be polled once and dropped, and a new one made on
//! the next wakeup takes up where the old one was (the `ringquic-h3` crate's poll-based traits
//! rely on it): `Endpoint::accept`, `Connection::open_bi`/`open_uni`/`accept_bi`/`accept_uni`/
//! `read_datagram`/`closed`, `SendStream::write`/`write_chunks`/`stopped`,
//! `RecvStream::read`/`read_chunk`/`read_chunks`/`received_reset`. The others carry progress:
//! `write_all`, `write_chunk(s)`'s "all" forms, `read_exact` and `read_to_end` (how much is done),
//! `send_datagram_wait` (the datagram itself: dropped after `Pending`, it is not sent), and
//! `Connecting` (the connection).
//!
//! See `DESIGN.md` in the repository for the whole design.
#![deny(unsafe_code)]
#![warn(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs")))]
compile_error!(
    "ringquic needs a crypto provider: enable the `rustls-ring` (default) or `rustls-aws-lc-rs` feature"
);

// The module map (DESIGN.md draws it with its arrows). Handles the application holds:
mod builder;
mod connection;
mod endpoint;
mod incoming;
mod local;
mod streams;
// The state handles and the I/O thread share, and the one place they meet:
mod shared;
mod wakers;
// The I/O thread:
mod core;
mod dgramflow;
mod direct;
mod driver;
#[cfg(all(unix, feature = "tokio"))]
mod driver_task;
mod handoff;
// Below both: the queue to the I/O thread, sockets, the backends (all of the crate's `unsafe`).
#[allow(unsafe_code)]
mod io;
mod mailbox;
mod socket;
// Leaves every layer may use:
mod backend;
mod errors;
mod handles;
mod quic_lb;
mod stats;
mod sync;

pub use crate::{
    backend::{BackendKind, EndpointError},
    builder::{
        EndpointBuilder, DEFAULT_MAX_INCOMING, DEFAULT_RECV_BUFFERS, DEFAULT_RECV_BUFFER_SIZE,
        DEFAULT_RECV_MEMORY_BUDGET, DEFAULT_TX_BUFFERS, DEFAULT_TX_BUFFER_SIZE, DEFAULT_ZERO_COPY_THRESHOLD,
    },
    connection::{
        AcceptBi, AcceptUni, Connecting, Connection, OpenBi, OpenUni, ReadDatagram, SendDatagram,
        ZeroRttAccepted, INTO_0RTT_WAIT,
    },
    endpoint::{Accept, Endpoint},
    errors::{
        ReadError, ReadExactError, ReadToEndError, ResetError, SendDatagramError, StoppedError, WriteError,
    },
    incoming::{Incoming, IncomingFuture, RetryError},
    local::{try_spawn, JoinError, JoinHandle},
    quic_lb::{QuicLbCidGenerator, QuicLbConfig, QuicLbConfigError},
    shared::SHUTDOWN_JOIN_TIMEOUT,
    stats::{EndpointIoStats, EndpointStats},
    streams::{RecvStream, SendStream},
};

// What quinn 0.11 re-exports from quinn-proto, and a few more of its configuration types.
/// Steer datagrams over an `SO_REUSEPORT` group of endpoints by the shard their connection ID
/// names (Linux; docs/SCALING.md).
#[cfg(target_os = "linux")]
pub use crate::io::steer::steer_by_shard;
pub use quinn_proto::{
    congestion, crypto, AckFrequencyConfig, ApplicationClose, BloomTokenLog, Chunk, ClientConfig,
    ClosedStream, ConfigError, ConnectError, ConnectionClose, ConnectionError, ConnectionId,
    ConnectionIdGenerator, ConnectionStats, Dir, EcnCodepoint, EndpointConfig, FrameStats, FrameType,
    IdleTimeout, MtuDiscoveryConfig, NoneTokenLog, NoneTokenStore, PathStats, ServerConfig, Side,
    StdSystemTime, StreamId, TimeSource, TokenLog, TokenMemoryCache, TokenReuseError, TokenStore, Transmit,
    TransportConfig, TransportError, TransportErrorCode, UdpStats, ValidationTokenConfig, VarInt,
    VarIntBoundsExceeded, Written,
};
/// quinn-udp, as quinn re-exports it (ringquic's poll backend runs on it).
pub use quinn_udp as udp;
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
