//! The errors of ringquic's stream and datagram calls. They are quinn 0.11's, variant for variant
//! (none is `#[non_exhaustive]`, as none of quinn's is, so a `match` written for quinn compiles
//! here), with the same `From` conversions and the same `io::ErrorKind` for each. quinn-proto's
//! errors, such as [`ConnectionError`], are re-exported as they are;
//! [`EndpointError`](crate::EndpointError) is in `backend.rs`, beside the backend choice it
//! reports on.

use std::io;

use quinn_proto::{ClosedStream, ReadableError};

use crate::{ConnectionError, VarInt};

/// Errors writing to a [`SendStream`](crate::SendStream).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The peer stopped the stream with this code (STOP_SENDING).
    #[error("sending stopped by peer: error {0}")]
    Stopped(VarInt),
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already finished or reset.
    #[error("closed stream")]
    ClosedStream,
    /// The stream was opened in 0-RTT data the server rejected: open a new one.
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<ClosedStream> for WriteError {
    fn from(_: ClosedStream) -> Self {
        Self::ClosedStream
    }
}

impl From<StoppedError> for WriteError {
    fn from(e: StoppedError) -> Self {
        match e {
            StoppedError::ConnectionLost(e) => Self::ConnectionLost(e),
            StoppedError::ZeroRttRejected => Self::ZeroRttRejected,
        }
    }
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match e {
            WriteError::Stopped(_) | WriteError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            WriteError::ConnectionLost(_) | WriteError::ClosedStream => io::ErrorKind::NotConnected,
        };
        Self::new(kind, e)
    }
}

/// Errors from [`SendStream::stopped`](crate::SendStream::stopped).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoppedError {
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was opened in 0-RTT data the server rejected.
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<StoppedError> for io::Error {
    fn from(e: StoppedError) -> Self {
        let kind = match e {
            StoppedError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            StoppedError::ConnectionLost(_) => io::ErrorKind::NotConnected,
        };
        Self::new(kind, e)
    }
}

/// Errors reading from a [`RecvStream`](crate::RecvStream).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The peer reset the stream with this code (RESET_STREAM).
    #[error("stream reset by peer: error {0}")]
    Reset(VarInt),
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was already stopped, or read to the end.
    #[error("closed stream")]
    ClosedStream,
    /// An ordered read after unordered reads on the same stream.
    #[error("ordered read after unordered read")]
    IllegalOrderedRead,
    /// The stream was opened in 0-RTT data the server rejected.
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<ReadableError> for ReadError {
    fn from(e: ReadableError) -> Self {
        match e {
            ReadableError::ClosedStream => Self::ClosedStream,
            ReadableError::IllegalOrderedRead => Self::IllegalOrderedRead,
        }
    }
}

impl From<ResetError> for ReadError {
    fn from(e: ResetError) -> Self {
        match e {
            ResetError::ConnectionLost(e) => Self::ConnectionLost(e),
            ResetError::ZeroRttRejected => Self::ZeroRttRejected,
        }
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        let kind = match e {
            ReadError::Reset(_) | ReadError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            ReadError::ConnectionLost(_) | ReadError::ClosedStream => io::ErrorKind::NotConnected,
            ReadError::IllegalOrderedRead => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}

/// Errors from [`RecvStream::received_reset`](crate::RecvStream::received_reset).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResetError {
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was opened in 0-RTT data the server rejected.
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<ResetError> for io::Error {
    fn from(e: ResetError) -> Self {
        let kind = match e {
            ResetError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            ResetError::ConnectionLost(_) => io::ErrorKind::NotConnected,
        };
        Self::new(kind, e)
    }
}

/// Errors from [`RecvStream::read_exact`](crate::RecvStream::read_exact).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadExactError {
    /// The stream ended after this many bytes were read, before the buffer was full.
    #[error("stream finished early ({0} bytes read)")]
    FinishedEarly(usize),
    /// Reading failed.
    #[error(transparent)]
    ReadError(#[from] ReadError),
}

/// Errors from [`RecvStream::read_to_end`](crate::RecvStream::read_to_end).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadToEndError {
    /// Reading failed.
    #[error("read error: {0}")]
    Read(#[from] ReadError),
    /// The stream is longer than the limit given.
    #[error("stream too long")]
    TooLong,
}

/// Errors from [`Connection::send_datagram`](crate::Connection::send_datagram).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SendDatagramError {
    /// The peer does not accept datagrams.
    #[error("datagrams not supported by peer")]
    UnsupportedByPeer,
    /// Datagrams are disabled locally.
    #[error("datagram support disabled")]
    Disabled,
    /// The datagram is larger than the connection can carry now (the path MTU less overhead,
    /// or the peer's limit).
    #[error("datagram too large")]
    TooLarge,
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `io::ErrorKind` of every variant is quinn 0.11's.
    #[test]
    fn io_error_kinds_are_quinns() {
        let lost = || ConnectionError::LocallyClosed;
        let kind = |e: io::Error| e.kind();
        use io::ErrorKind::*;
        assert_eq!(
            kind(WriteError::Stopped(VarInt::from_u32(1)).into()),
            ConnectionReset
        );
        assert_eq!(kind(WriteError::ZeroRttRejected.into()), ConnectionReset);
        assert_eq!(kind(WriteError::ConnectionLost(lost()).into()), NotConnected);
        assert_eq!(kind(WriteError::ClosedStream.into()), NotConnected);
        assert_eq!(
            kind(ReadError::Reset(VarInt::from_u32(1)).into()),
            ConnectionReset
        );
        assert_eq!(kind(ReadError::ZeroRttRejected.into()), ConnectionReset);
        assert_eq!(kind(ReadError::ConnectionLost(lost()).into()), NotConnected);
        assert_eq!(kind(ReadError::ClosedStream.into()), NotConnected);
        assert_eq!(kind(ReadError::IllegalOrderedRead.into()), InvalidInput);
        assert_eq!(kind(StoppedError::ZeroRttRejected.into()), ConnectionReset);
        assert_eq!(kind(StoppedError::ConnectionLost(lost()).into()), NotConnected);
        assert_eq!(kind(ResetError::ZeroRttRejected.into()), ConnectionReset);
        assert_eq!(kind(ResetError::ConnectionLost(lost()).into()), NotConnected);
        assert_eq!(
            WriteError::from(StoppedError::ZeroRttRejected),
            WriteError::ZeroRttRejected
        );
        assert_eq!(
            ReadError::from(ResetError::ConnectionLost(lost())),
            ReadError::ConnectionLost(lost())
        );
        assert_eq!(
            WriteError::from(ClosedStream::default()),
            WriteError::ClosedStream
        );
    }
}
