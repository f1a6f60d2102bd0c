//! ringquic's errors in h3's terms ([`ConnectionErrorIncoming`], [`StreamErrorIncoming`]).

use std::sync::Arc;

use h3::quic::{ConnectionErrorIncoming, StreamErrorIncoming};
use ringquic::{ConnectionError, ReadError, VarInt, WriteError};

/// An h3 error code as a QUIC `VarInt`. h3's codes all fit (they are below 2^62); one that did
/// not (only a caller's own code could) is sent as the largest `VarInt` rather than panicking.
pub(crate) fn code_to_varint(code: u64) -> VarInt {
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

/// Why the QUIC connection ended, as h3 wants to hear it: the peer's application code, an idle
/// timeout, or anything else kept as the source of `Undefined`.
pub(crate) fn connection_error(e: ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(close) => ConnectionErrorIncoming::ApplicationClose {
            error_code: close.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

/// A stream operation failed because the connection ended.
pub(crate) fn stream_connection_error(e: ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

/// A failed read: the peer's RESET_STREAM code, the connection's end, or a misuse h3 treats
/// as the stream's end (`Unknown`).
pub(crate) fn read_error(e: ReadError) -> StreamErrorIncoming {
    match e {
        ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        ReadError::ConnectionLost(e) => stream_connection_error(e),
        // `ClosedStream` (read after stop), `ZeroRttRejected` (ringquic has no 0-RTT), and
        // `IllegalOrderedRead` (this crate reads in order only, so it cannot happen).
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

/// A failed write: the peer's STOP_SENDING code, the connection's end, or a misuse.
pub(crate) fn write_error(e: WriteError) -> StreamErrorIncoming {
    match e {
        WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        WriteError::ConnectionLost(e) => stream_connection_error(e),
        other @ (WriteError::ClosedStream | WriteError::ZeroRttRejected) => {
            StreamErrorIncoming::Unknown(Box::new(other))
        }
    }
}

/// h3 called a send before the previous one was written out: a bug in the caller, which h3
/// answers by closing the connection with H3_INTERNAL_ERROR (h3-quinn does the same).
pub(crate) fn not_ready() -> StreamErrorIncoming {
    internal("send called before the previous data was written (poll_ready)")
}

/// Something this crate cannot go on from: h3 closes the connection with H3_INTERNAL_ERROR.
pub(crate) fn internal(what: &str) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: ConnectionErrorIncoming::InternalError(what.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringquic::{ApplicationClose, TransportErrorCode};

    #[test]
    fn connection_errors() {
        let close = ApplicationClose {
            error_code: VarInt::from_u32(0x100),
            reason: bytes::Bytes::new(),
        };
        assert!(matches!(
            connection_error(ConnectionError::ApplicationClosed(close)),
            ConnectionErrorIncoming::ApplicationClose { error_code: 0x100 }
        ));
        assert!(matches!(
            connection_error(ConnectionError::TimedOut),
            ConnectionErrorIncoming::Timeout
        ));
        let e = connection_error(ConnectionError::TransportError(
            TransportErrorCode::PROTOCOL_VIOLATION.into(),
        ));
        let ConnectionErrorIncoming::Undefined(inner) = e else {
            panic!("a transport error is not h3's: Undefined, got {e:?}")
        };
        assert!(inner.to_string().to_lowercase().contains("protocol"), "{inner}");
    }

    #[test]
    fn stream_errors() {
        let code = VarInt::from_u32(0x10c);
        assert!(matches!(
            read_error(ReadError::Reset(code)),
            StreamErrorIncoming::StreamTerminated { error_code: 0x10c }
        ));
        assert!(matches!(
            write_error(WriteError::Stopped(code)),
            StreamErrorIncoming::StreamTerminated { error_code: 0x10c }
        ));
        assert!(matches!(
            read_error(ReadError::ConnectionLost(ConnectionError::TimedOut)),
            StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::Timeout
            }
        ));
        assert!(matches!(
            write_error(WriteError::ClosedStream),
            StreamErrorIncoming::Unknown(_)
        ));
        assert!(matches!(
            read_error(ReadError::IllegalOrderedRead),
            StreamErrorIncoming::Unknown(_)
        ));
    }

    #[test]
    fn codes() {
        assert_eq!(code_to_varint(0x100).into_inner(), 0x100);
        assert_eq!(code_to_varint(u64::MAX), VarInt::MAX);
    }
}
