//! [`SendStream`], [`RecvStream`] and [`BidiStream`]: h3's stream traits on ringquic's
//! stream halves.

use std::{
    marker::PhantomData,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use h3::{
    error::Code,
    quic::{self, StreamErrorIncoming, StreamId, WriteBuf},
};

use crate::{
    error::{code_to_varint, internal, not_ready, read_error, write_error},
    poll::poll_once,
};

/// h3's stream id for a ringquic one. quinn-proto's ids are below 2^62, as h3's must be.
fn h3_id(id: ringquic::StreamId) -> StreamId {
    StreamId::try_from(u64::from(id)).expect("quinn-proto stream ids are QUIC varints (< 2^62)")
}

/// The receiving half of a stream: h3's [`quic::RecvStream`] on a [`ringquic::RecvStream`].
///
/// Data comes out in order, as the `Bytes` ringquic's `read_chunk` returns (no copy).
///
/// Dropped before its end, it asks the peer to stop sending with an HTTP/3 code, not QUIC's 0
/// (which quinn's drop, and so h3-quinn, sends; 0 is no HTTP/3 error code): `H3_NO_ERROR` on a
/// stream the peer opened (a server that answered without reading the whole request, RFC 9114
/// §4.1.2), `H3_REQUEST_CANCELLED` on one this side opened (a client that gave up on a
/// response, §4.1.1).
#[derive(Debug)]
pub struct RecvStream {
    stream: ringquic::RecvStream,
    id: StreamId,
    /// Read to the end, failed, or stopped: nothing to stop on drop.
    done: bool,
    /// The code a drop before the end stops the peer with.
    stop_on_drop: Code,
}

/// Who opened a stream, which decides the code its receive half is dropped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    Peer,
    Us,
}

impl RecvStream {
    pub(crate) fn new(stream: ringquic::RecvStream, opener: Opener) -> Self {
        let id = h3_id(stream.id());
        let stop_on_drop = match opener {
            Opener::Peer => Code::H3_NO_ERROR,
            Opener::Us => Code::H3_REQUEST_CANCELLED,
        };
        Self {
            stream,
            id,
            done: false,
            stop_on_drop,
        }
    }

    /// The ringquic stream underneath.
    pub fn inner(&mut self) -> &mut ringquic::RecvStream {
        &mut self.stream
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let read = ready!(poll_once(self.stream.read_chunk(usize::MAX, true), cx));
        self.done |= !matches!(read, Ok(Some(_)));
        Poll::Ready(read.map(|chunk| chunk.map(|c| c.bytes)).map_err(read_error))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.done = true;
        // Err means the stream is already stopped or read to the end: nothing left to stop.
        let _ = self.stream.stop(code_to_varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Err: the stream is gone already (the connection closed, say).
        let _ = self.stream.stop(code_to_varint(self.stop_on_drop.value()));
    }
}

/// The sending half of a stream: h3's [`quic::SendStream`] on a [`ringquic::SendStream`].
///
/// `send_data` takes one frame and copies it, header and payload, into one `Bytes` (the one
/// copy a frame costs: `WriteBuf` hands out slices only); `poll_ready` gives that to the stream
/// with `write_chunks`, which quinn-proto keeps without copying again, so a frame not held up by
/// flow control is one allocation, one copy and one call into the connection. (Writing the
/// slices one by one, as h3-quinn does, costs two of each: quinn-proto copies every written
/// slice.)
pub struct SendStream<B: Buf> {
    stream: ringquic::SendStream,
    id: StreamId,
    /// The rest of the frame `send_data` handed over.
    writing: Option<Bytes>,
    /// `B` is only ever copied out of: the stream is `Send + Sync` whatever it is.
    _buf: PhantomData<fn(B)>,
}

impl<B: Buf> std::fmt::Debug for SendStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("stream", &self.stream)
            .field("writing", &self.writing.as_ref().map(Bytes::len))
            .finish()
    }
}

impl<B: Buf> SendStream<B> {
    pub(crate) fn new(stream: ringquic::SendStream) -> Self {
        let id = h3_id(stream.id());
        Self {
            stream,
            id,
            writing: None,
            _buf: PhantomData,
        }
    }

    /// The ringquic stream underneath (for its priority, say).
    pub fn inner(&mut self) -> &mut ringquic::SendStream {
        &mut self.stream
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        let Self { stream, writing, .. } = self;
        while let Some(data) = writing.as_mut().filter(|d| !d.is_empty()) {
            // Takes what flow control allows, split off the front of `data`.
            let written = ready!(poll_once(stream.write_chunks(std::slice::from_mut(data)), cx))
                .map_err(write_error)?;
            if written.bytes == 0 {
                // quinn-proto says Blocked rather than take nothing; never spin on it.
                return Poll::Ready(Err(internal("a write took nothing")));
            }
        }
        *writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(not_ready());
        }
        let mut frame: WriteBuf<B> = data.into();
        self.writing = Some(frame.copy_to_bytes(frame.remaining()));
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        // A frame still being written goes out first (h3 polls ready before it finishes, but
        // finishing in the middle of a frame would cut it).
        ready!(quic::SendStream::<B>::poll_ready(self, cx))?;
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        self.writing = None;
        // Err means the stream is already finished or reset: the peer has its end already.
        let _ = self.stream.reset(code_to_varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

impl<B: Buf> quic::SendStreamUnframed<B> for SendStream<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        if self.writing.is_some() {
            return Poll::Ready(Err(not_ready()));
        }
        let n = ready!(Pin::new(&mut self.stream).poll_write(cx, buf.chunk())).map_err(write_error)?;
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

/// A bidirectional stream: both halves, which h3 splits for a request.
#[derive(Debug)]
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> BidiStream<B> {
    pub(crate) fn new((send, recv): (ringquic::SendStream, ringquic::RecvStream), opener: Opener) -> Self {
        Self {
            send: SendStream::new(send),
            recv: RecvStream::new(recv, opener),
        }
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl<B: Buf> quic::SendStreamUnframed<B> for BidiStream<B> {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        self.send.poll_send(cx, buf)
    }
}
