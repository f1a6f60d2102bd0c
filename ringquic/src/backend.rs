//! Which I/O backend serves an endpoint ([`BackendKind`]), and what can fail while an endpoint
//! and its backend are set up ([`EndpointError`]). A leaf: the backends in `io/` and the
//! builder both use it, and it uses neither.

use std::{fmt, str::FromStr};

/// Which I/O backend an endpoint runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Linux io_uring: multishot `recvmsg` into a provided-buffer ring, `sendmsg` with GSO.
    IoUring,
    /// Portable readiness-based fallback: `quinn-udp` system calls driven by epoll/kqueue/IOCP
    /// through `mio`.
    Poll,
    /// Windows Registered I/O: `RIOReceiveEx`/`RIOSendEx` (with USO) on one registered buffer
    /// region, completions announced through an event or an I/O completion port. Windows only;
    /// where RIO is missing the poll backend serves instead (see `docs/WINDOWS.md`).
    Rio,
}

impl BackendKind {
    /// The name used by `RINGQUIC_BACKEND` and the builder: `uring`, `poll` or `rio`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::IoUring => "uring",
            BackendKind::Poll => "poll",
            BackendKind::Rio => "rio",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uring" | "io_uring" | "io-uring" => Ok(BackendKind::IoUring),
            "poll" | "fallback" => Ok(BackendKind::Poll),
            "rio" => Ok(BackendKind::Rio),
            _ => Err(EndpointError::UnknownBackend(s.to_owned())),
        }
    }
}

/// Errors creating an endpoint, or giving it a new socket ([`Endpoint::rebind`]).
///
/// [`Endpoint::rebind`]: crate::Endpoint::rebind
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
    /// The endpoint was closed ([`Endpoint::close`]) or its I/O thread has exited: it takes no
    /// new socket ([`Endpoint::rebind`]). As an `io::Error`, of kind `NotConnected`.
    ///
    /// [`Endpoint::close`]: crate::Endpoint::close
    /// [`Endpoint::rebind`]: crate::Endpoint::rebind
    #[error("the endpoint is closed or stopping")]
    Stopping,
    /// [`EndpointBuilder::quic_lb`](crate::EndpointBuilder::quic_lb) was given a configuration
    /// the draft forbids.
    #[error("QUIC-LB configuration: {0}")]
    QuicLb(#[from] crate::QuicLbConfigError),
}

impl From<EndpointError> for std::io::Error {
    /// The `io::Error` quinn's constructors would return: the OS error's kind where there is
    /// one, `InvalidInput` for a configuration ringquic refuses; the [`EndpointError`] itself is
    /// the inner error.
    fn from(e: EndpointError) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            EndpointError::Bind { source, .. }
            | EndpointError::Socket { source, .. }
            | EndpointError::BackendUnavailable { source, .. }
            | EndpointError::Backend { source, .. }
            | EndpointError::Thread(source) => source.kind(),
            EndpointError::UnknownBackend(_)
            | EndpointError::Config(_)
            | EndpointError::RecvBufferTooSmall { .. }
            | EndpointError::TxBufferTooSmall { .. }
            | EndpointError::QuicLb(_) => ErrorKind::InvalidInput,
            EndpointError::Stopping => ErrorKind::NotConnected,
        };
        std::io::Error::new(kind, e)
    }
}
