//! [`SendStream`] and [`RecvStream`]: quinn's stream API over the shared connection state.
//!
//! Writes copy the application's bytes into quinn-proto's send buffer under the connection lock
//! and ask the I/O thread to drive the connection; `write_chunk` hands over a `Bytes` without
//! copying. Reads take chunks out of quinn-proto's receive buffer: `read_chunk` returns `Bytes`
//! that point into the very buffer the datagram was decrypted in.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use quinn_proto::{self as proto, Chunk, ClosedStream, FinishError, StreamId, VarInt, Written};

use crate::{
    direct::{transmit_soon, DIRECT_MAX_WRITE},
    shared::ConnectionRef,
    ReadError, ReadExactError, ReadToEndError, ResetError, StoppedError, WriteError,
};

/// The sending half of a stream.
///
/// Dropping it without [`SendStream::finish`] or [`SendStream::reset`] finishes the stream, as in
/// quinn 0.11.
#[derive(Debug)]
pub struct SendStream {
    conn: ConnectionRef,
    id: StreamId,
    /// Opened in 0-RTT data: fails with `ZeroRttRejected` if the server rejects it.
    is_0rtt: bool,
}

impl SendStream {
    pub(crate) fn new(conn: ConnectionRef, id: StreamId, is_0rtt: bool) -> Self {
        Self { conn, id, is_0rtt }
    }

    /// The stream's identifier.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Write bytes; returns how many were taken (at least one, unless `buf` is empty). Waits
    /// while flow control or the send buffer is full.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, WriteError> {
        std::future::poll_fn(|cx| self.poll_write_with(cx, |s| s.write(buf), |n| *n)).await
    }

    /// Write all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Write as many of `bufs` as flow control takes now (at least something, unless all are
    /// empty), without copying; taken bytes are split off the front of each `Bytes`.
    pub async fn write_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Written, WriteError> {
        std::future::poll_fn(|cx| self.poll_write_with(cx, |s| s.write_chunks(bufs), |w| w.bytes)).await
    }

    /// Poll form of [`SendStream::write`], for `AsyncWrite`-style callers.
    pub fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        self.get_mut().poll_write_with(cx, |s| s.write(buf), |n| *n)
    }

    /// Write a chunk without copying it; waits until all of it is taken.
    pub async fn write_chunk(&mut self, buf: Bytes) -> Result<(), WriteError> {
        self.write_all_chunks(&mut [buf]).await
    }

    /// Write a list of chunks without copying; waits until all are taken. Taken chunks are
    /// left empty.
    pub async fn write_all_chunks(&mut self, bufs: &mut [Bytes]) -> Result<(), WriteError> {
        let mut first = 0;
        while first < bufs.len() {
            let rest = &mut bufs[first..];
            let written =
                std::future::poll_fn(|cx| self.poll_write_with(cx, |s| s.write_chunks(rest), |w| w.bytes))
                    .await?;
            first += written.chunks;
            if written.chunks == 0 && written.bytes == 0 && bufs[first..].iter().all(|b| b.is_empty()) {
                break;
            }
            while first < bufs.len() && bufs[first].is_empty() {
                first += 1;
            }
        }
        Ok(())
    }

    /// Write with `f`; `size` says how many bytes a result took (small writes are sent from
    /// this thread, large ones by the I/O thread: `direct.rs`).
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut proto::SendStream<'_>) -> Result<T, proto::WriteError>,
        size: impl FnOnce(&T) -> usize,
    ) -> Poll<Result<T, WriteError>> {
        let mut st = self.conn.lock();
        if self.is_0rtt && !st.zero_rtt_ok() {
            return Poll::Ready(Err(WriteError::ZeroRttRejected));
        }
        if let Some(e) = st.error() {
            return Poll::Ready(Err(WriteError::ConnectionLost(e)));
        }
        match f(&mut st.inner.send_stream(self.id)) {
            Ok(v) => {
                drop(st);
                if size(&v) <= DIRECT_MAX_WRITE {
                    transmit_soon(self.conn.inner());
                } else {
                    self.conn.wake();
                }
                Poll::Ready(Ok(v))
            }
            Err(proto::WriteError::Blocked) => {
                st.waiters().writable(self.id, cx.waker());
                Poll::Pending
            }
            Err(proto::WriteError::Stopped(code)) => Poll::Ready(Err(WriteError::Stopped(code))),
            Err(proto::WriteError::ClosedStream) => Poll::Ready(Err(WriteError::ClosedStream)),
        }
    }

    /// Signal that no more data follows. Data already written is still delivered (await
    /// [`SendStream::stopped`] to know when the peer has it all).
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        let mut st = self.conn.lock();
        match st.inner.send_stream(self.id).finish() {
            Ok(()) => {
                drop(st);
                transmit_soon(self.conn.inner());
                Ok(())
            }
            Err(FinishError::ClosedStream) => Err(ClosedStream::default()),
            // Harmless here, as in quinn: `stopped` reports it to whoever cares (and dropping
            // the stream resets it with the peer's code).
            Err(FinishError::Stopped(_)) => Ok(()),
        }
    }

    /// Abandon the stream: unsent data is discarded and the peer receives `code`.
    pub fn reset(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        let mut st = self.conn.lock();
        st.inner.send_stream(self.id).reset(code)?;
        drop(st);
        self.conn.wake();
        Ok(())
    }

    /// Change the stream's priority (higher goes first).
    pub fn set_priority(&self, priority: i32) -> Result<(), ClosedStream> {
        self.conn.lock().inner.send_stream(self.id).set_priority(priority)
    }

    /// The stream's priority.
    pub fn priority(&self) -> Result<i32, ClosedStream> {
        self.conn.lock().inner.send_stream(self.id).priority()
    }

    /// Wait until the peer stops the stream (`Some(code)`) or has received everything after
    /// [`SendStream::finish`] (`None`). The future is independent of this stream handle: it may
    /// outlive it, and several may wait at once (it keeps the connection open while it waits).
    pub fn stopped(
        &self,
    ) -> impl Future<Output = Result<Option<VarInt>, StoppedError>> + Send + Sync + 'static {
        let (conn, id, is_0rtt) = (self.conn.clone(), self.id, self.is_0rtt);
        std::future::poll_fn(move |cx| {
            let mut st = conn.lock();
            if is_0rtt && !st.zero_rtt_ok() {
                return Poll::Ready(Err(StoppedError::ZeroRttRejected));
            }
            match st.inner.send_stream(id).stopped() {
                Ok(Some(code)) => return Poll::Ready(Ok(Some(code))),
                Ok(None) => {}
                // The stream is gone: it was finished and fully acknowledged (or reset).
                Err(ClosedStream { .. }) => return Poll::Ready(Ok(None)),
            }
            if let Some(e) = st.error() {
                return Poll::Ready(Err(StoppedError::ConnectionLost(e)));
            }
            st.waiters().stopped(id, cx.waker());
            Poll::Pending
        })
    }
}

impl Drop for SendStream {
    /// As quinn: finish the stream; if the peer has stopped it, reset it with the peer's code,
    /// which is what lets quinn-proto free the stream and give its credit back (a stopped
    /// stream that is neither reset nor finished stays open for ever and counts against the
    /// peer's stream limit). Wakers this stream registered are released either way.
    fn drop(&mut self) {
        let mut st = self.conn.lock();
        st.waiters().forget_send(self.id);
        if st.error().is_some() {
            return;
        }
        let mut stream = st.inner.send_stream(self.id);
        let changed = match stream.finish() {
            Ok(()) => true,
            Err(FinishError::Stopped(code)) => stream.reset(code).is_ok(),
            // Already finished (and perhaps freed) or reset: nothing to do.
            Err(FinishError::ClosedStream) => false,
        };
        drop(st);
        if changed {
            transmit_soon(self.conn.inner());
        }
    }
}

/// What one attempt at reading produced.
enum ReadStatus<T> {
    Readable(T),
    Finished(Option<T>),
    Failed(Option<T>, proto::ReadError),
}

/// The receiving half of a stream.
///
/// Dropping it before reading to the end stops the stream with code 0, as in quinn.
#[derive(Debug)]
pub struct RecvStream {
    conn: ConnectionRef,
    id: StreamId,
    all_data_read: bool,
    reset: Option<VarInt>,
    /// An unordered read happened: ordered reads are refused from then on. Checked here
    /// because quinn-proto 0.11 drops the stream's receive state when it refuses one.
    unordered: bool,
    /// Opened in 0-RTT data: fails with `ZeroRttRejected` if the server rejects it.
    is_0rtt: bool,
}

impl RecvStream {
    pub(crate) fn new(conn: ConnectionRef, id: StreamId, is_0rtt: bool) -> Self {
        Self {
            conn,
            id,
            all_data_read: false,
            reset: None,
            unordered: false,
            is_0rtt,
        }
    }

    /// Whether the stream was opened in 0-RTT data (by this client, or, on a server, by the
    /// client before the handshake completed).
    pub fn is_0rtt(&self) -> bool {
        self.is_0rtt
    }

    /// The stream's identifier.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Read into `buf`; `Ok(None)` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        std::future::poll_fn(|cx| self.poll_read_some(cx, buf)).await
    }

    /// Poll form of [`RecvStream::read`]: how many bytes were read into `buf`, 0 at the end of
    /// the stream (as quinn's).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Result<usize, ReadError>> {
        self.poll_read_some(cx, buf).map_ok(|n| n.unwrap_or(0))
    }

    /// Poll form of a read into a tokio `ReadBuf`: fills what it can; nothing filled means the
    /// end of the stream.
    #[cfg(feature = "tokio")]
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<Result<(), ReadError>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Chunks are copied into the unfilled part as they come: nothing is zeroed first.
        self.poll_generic(cx, true, |chunks| {
            let mut read = false;
            while buf.remaining() > 0 {
                match chunks.next(buf.remaining()) {
                    Ok(Some(c)) => {
                        buf.put_slice(&c.bytes);
                        read = true;
                    }
                    Ok(None) => return ReadStatus::Finished(read.then_some(())),
                    Err(e) => return ReadStatus::Failed(read.then_some(()), e),
                }
            }
            ReadStatus::Readable(())
        })
        .map_ok(|_| ())
    }

    /// A read into `buf`: `Some(n)` bytes, `None` at the end of the stream.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<Option<usize>, ReadError>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(Some(0)));
        }
        self.poll_generic(cx, true, |chunks| {
            let mut filled = 0;
            while filled < buf.len() {
                match chunks.next(buf.len() - filled) {
                    Ok(Some(c)) => {
                        buf[filled..filled + c.bytes.len()].copy_from_slice(&c.bytes);
                        filled += c.bytes.len();
                    }
                    Ok(None) => return ReadStatus::Finished((filled > 0).then_some(filled)),
                    Err(e) => return ReadStatus::Failed((filled > 0).then_some(filled), e),
                }
            }
            ReadStatus::Readable(filled)
        })
    }

    /// Read exactly `buf.len()` bytes. If the stream ends first,
    /// [`ReadExactError::FinishedEarly`] says how many bytes were read (as in quinn).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadExactError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None => return Err(ReadExactError::FinishedEarly(filled)),
            }
        }
        Ok(())
    }

    /// Read the next chunk of at most `max_length` bytes without copying. With `ordered ==
    /// false` chunks may come out of order (their `offset` says where they go).
    pub async fn read_chunk(&mut self, max_length: usize, ordered: bool) -> Result<Option<Chunk>, ReadError> {
        std::future::poll_fn(|cx| {
            self.poll_generic(cx, ordered, |chunks| match chunks.next(max_length) {
                Ok(Some(c)) => ReadStatus::Readable(c),
                Ok(None) => ReadStatus::Finished(None),
                Err(e) => ReadStatus::Failed(None, e),
            })
        })
        .await
    }

    /// Read up to `bufs.len()` chunks without copying; returns how many were filled, `None` at
    /// the end of the stream.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, ReadError> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        std::future::poll_fn(|cx| {
            self.poll_generic(cx, true, |chunks| {
                let mut n = 0;
                while n < bufs.len() {
                    match chunks.next(usize::MAX) {
                        Ok(Some(c)) => {
                            bufs[n] = c.bytes;
                            n += 1;
                        }
                        Ok(None) => return ReadStatus::Finished((n > 0).then_some(n)),
                        Err(e) => return ReadStatus::Failed((n > 0).then_some(n), e),
                    }
                }
                ReadStatus::Readable(n)
            })
        })
        .await
    }

    /// Read the whole stream, failing if it is longer than `size_limit` bytes. Reads chunks
    /// in any order and puts them in place (as quinn does), so it works after unordered reads.
    pub async fn read_to_end(&mut self, size_limit: usize) -> Result<Vec<u8>, ReadToEndError> {
        let mut chunks = Vec::new();
        let (mut start, mut end) = (u64::MAX, 0u64);
        while let Some(chunk) = self.read_chunk(usize::MAX, false).await? {
            start = start.min(chunk.offset);
            end = end.max(chunk.offset + chunk.bytes.len() as u64);
            if end - start > size_limit as u64 {
                return Err(ReadToEndError::TooLong);
            }
            chunks.push(chunk);
        }
        if end == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0; (end - start) as usize];
        for c in chunks {
            let at = (c.offset - start) as usize;
            out[at..at + c.bytes.len()].copy_from_slice(&c.bytes);
        }
        Ok(out)
    }

    /// Tell the peer to stop sending with `code`; unread data is discarded.
    pub fn stop(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        let mut st = self.conn.lock();
        st.inner.recv_stream(self.id).stop(code)?;
        self.all_data_read = true;
        drop(st);
        self.conn.wake();
        Ok(())
    }

    /// Wait until the peer resets the stream (`Some(code)`) or the whole stream has been read
    /// (`None`).
    pub async fn received_reset(&mut self) -> Result<Option<VarInt>, ResetError> {
        std::future::poll_fn(|cx| {
            let mut st = self.conn.lock();
            if self.is_0rtt && !st.zero_rtt_ok() {
                return Poll::Ready(Err(ResetError::ZeroRttRejected));
            }
            if let Some(code) = self.reset {
                return Poll::Ready(Ok(Some(code)));
            }
            match st.inner.recv_stream(self.id).received_reset() {
                Ok(Some(code)) => {
                    // quinn-proto has just freed the stream: the connection may owe the peer
                    // stream credit (MAX_STREAMS), which only a drive sends.
                    drop(st);
                    self.conn.wake();
                    Poll::Ready(Ok(Some(code)))
                }
                Err(ClosedStream { .. }) => Poll::Ready(Ok(None)),
                Ok(None) => {
                    if let Some(e) = st.error() {
                        return Poll::Ready(Err(ResetError::ConnectionLost(e)));
                    }
                    st.waiters().readable(self.id, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn poll_generic<T>(
        &mut self,
        cx: &mut Context<'_>,
        ordered: bool,
        mut read_fn: impl FnMut(&mut proto::Chunks<'_>) -> ReadStatus<T>,
    ) -> Poll<Result<Option<T>, ReadError>> {
        if self.all_data_read {
            return Poll::Ready(Ok(None));
        }
        if ordered && self.unordered {
            return Poll::Ready(Err(ReadError::IllegalOrderedRead));
        }
        self.unordered |= !ordered;
        let mut st = self.conn.lock();
        if self.is_0rtt && !st.zero_rtt_ok() {
            return Poll::Ready(Err(ReadError::ZeroRttRejected));
        }
        let status = match self.reset {
            Some(code) => ReadStatus::Failed(None, proto::ReadError::Reset(code)),
            None => {
                let mut recv = st.inner.recv_stream(self.id);
                let mut chunks = match recv.read(ordered) {
                    Ok(c) => c,
                    Err(e) => return Poll::Ready(Err(e.into())),
                };
                let status = read_fn(&mut chunks);
                if chunks.finalize().should_transmit() {
                    // Flow-control credit to hand out (MAX_STREAM_DATA, MAX_STREAMS).
                    transmit_soon(self.conn.inner());
                }
                status
            }
        };
        match status {
            ReadStatus::Readable(v) => Poll::Ready(Ok(Some(v))),
            ReadStatus::Finished(v) => {
                self.all_data_read = true;
                Poll::Ready(Ok(v))
            }
            ReadStatus::Failed(v, proto::ReadError::Blocked) => match v {
                Some(v) => Poll::Ready(Ok(Some(v))),
                None => {
                    if let Some(e) = st.error() {
                        return Poll::Ready(Err(ReadError::ConnectionLost(e)));
                    }
                    st.waiters().readable(self.id, cx.waker());
                    Poll::Pending
                }
            },
            ReadStatus::Failed(v, proto::ReadError::Reset(code)) => {
                self.reset = Some(code);
                match v {
                    None => {
                        self.all_data_read = true;
                        Poll::Ready(Err(ReadError::Reset(code)))
                    }
                    some => Poll::Ready(Ok(some)),
                }
            }
        }
    }
}

impl Drop for RecvStream {
    /// As quinn: stop the stream with code 0 unless it was read to the end; the reader's waker
    /// is released either way.
    fn drop(&mut self) {
        let mut st = self.conn.lock();
        st.waiters().forget_recv(self.id);
        if self.all_data_read || st.error().is_some() {
            return;
        }
        if st.inner.recv_stream(self.id).stop(VarInt::from_u32(0)).is_ok() {
            drop(st);
            self.conn.wake();
        }
    }
}

#[cfg(feature = "tokio")]
mod tokio_impls {
    use super::*;
    use std::io;

    impl tokio::io::AsyncWrite for SendStream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_with(cx, |s| s.write(buf), |n| *n)
                .map_err(Into::into)
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.finish().map_err(Into::into))
        }
    }

    impl tokio::io::AsyncRead for RecvStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            RecvStream::poll_read_buf(&mut self, cx, buf).map_err(Into::into)
        }
    }
}

#[cfg(feature = "futures-io")]
mod futures_io_impls {
    use super::*;
    use std::io;

    impl futures_io::AsyncWrite for SendStream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_with(cx, |s| s.write(buf), |n| *n)
                .map_err(Into::into)
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(self.finish().map_err(Into::into))
        }
    }

    impl futures_io::AsyncRead for RecvStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            RecvStream::poll_read(&mut self, cx, buf).map_err(Into::into)
        }
    }
}
