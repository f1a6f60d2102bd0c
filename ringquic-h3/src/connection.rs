//! [`Connection`] and [`OpenStreams`]: h3's connection traits on a [`ringquic::Connection`].

use std::task::{Context, Poll};

use bytes::Buf;
use h3::{
    error::Code,
    quic::{self, ConnectionErrorIncoming, StreamErrorIncoming},
};

use crate::{
    error::{code_to_varint, connection_error, stream_connection_error},
    poll::poll_once,
    streams::{BidiStream, Opener, RecvStream, SendStream},
};

/// An HTTP/3 transport connection: h3's [`quic::Connection`] on a [`ringquic::Connection`].
///
/// Give it to `h3::server::Connection::new` or `h3::client::new`. It holds nothing but the
/// ringquic handle (cheap to clone, `Send + Sync`).
#[derive(Debug, Clone)]
pub struct Connection {
    conn: ringquic::Connection,
}

impl Connection {
    /// Wrap an established ringquic connection (negotiated with ALPN [`crate::ALPN`]).
    pub fn new(conn: ringquic::Connection) -> Self {
        Self { conn }
    }

    /// The ringquic connection underneath (for its statistics, addresses, RTT, ...).
    pub fn inner(&self) -> &ringquic::Connection {
        &self.conn
    }
}

impl From<ringquic::Connection> for Connection {
    fn from(conn: ringquic::Connection) -> Self {
        Self::new(conn)
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        poll_once(self.conn.accept_uni(), cx).map(|r| {
            r.map(|s| RecvStream::new(s, Opener::Peer))
                .map_err(connection_error)
        })
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        poll_once(self.conn.accept_bi(), cx).map(|r| {
            r.map(|s| BidiStream::new(s, Opener::Peer))
                .map_err(connection_error)
        })
    }

    fn opener(&self) -> OpenStreams {
        OpenStreams {
            conn: self.conn.clone(),
        }
    }
}

/// h3's `OpenStreams` for a type holding the ringquic connection in `conn`: the same three
/// calls for [`Connection`] and [`OpenStreams`]. A macro because the trait is h3's: a blanket
/// impl over "types with a connection" is not allowed for a foreign trait.
macro_rules! open_streams_impl {
    ($t:ty) => {
        impl<B: Buf> quic::OpenStreams<B> for $t {
            type BidiStream = BidiStream<B>;
            type SendStream = SendStream<B>;

            fn poll_open_bidi(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
                open_bidi(&self.conn, cx)
            }

            fn poll_open_send(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
                open_send(&self.conn, cx)
            }

            fn close(&mut self, code: Code, reason: &[u8]) {
                self.conn.close(code_to_varint(code.value()), reason);
            }
        }
    };
}

open_streams_impl!(Connection);

/// Opens streams on a connection: h3's [`quic::OpenStreams`] (what `h3::client::SendRequest`
/// holds). Cheap to clone; clones open streams independently.
#[derive(Debug, Clone)]
pub struct OpenStreams {
    conn: ringquic::Connection,
}

open_streams_impl!(OpenStreams);

fn open_bidi<B: Buf>(
    conn: &ringquic::Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
    poll_once(conn.open_bi(), cx).map(|r| {
        r.map(|s| BidiStream::new(s, Opener::Us))
            .map_err(stream_connection_error)
    })
}

fn open_send<B: Buf>(
    conn: &ringquic::Connection,
    cx: &mut Context<'_>,
) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
    poll_once(conn.open_uni(), cx).map(|r| r.map(SendStream::new).map_err(stream_connection_error))
}
