//! The errors of ringquic's stream and datagram calls (quinn-proto's errors, such as
//! [`ConnectionError`], are re-exported as they are; [`EndpointError`](crate::EndpointError) is in
//! `backend.rs`, beside the backend choice it reports on).

use crate::{ConnectionError, VarInt};

/// Errors writing to a [`SendStream`](crate::SendStream).
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

/// Errors reading from a [`RecvStream`](crate::RecvStream).
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

/// Errors from [`RecvStream::read_exact`](crate::RecvStream::read_exact).
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

/// Errors from [`RecvStream::read_to_end`](crate::RecvStream::read_to_end).
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

/// Errors from [`SendStream::stopped`](crate::SendStream::stopped).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoppedError {
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
}

/// Error from [`RecvStream::received_reset`](crate::RecvStream::received_reset).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetWaitError {
    /// The connection was lost.
    #[error("connection lost: {0}")]
    ConnectionLost(#[from] ConnectionError),
}

/// Errors from [`Connection::send_datagram`](crate::Connection::send_datagram).
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
