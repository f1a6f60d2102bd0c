//! HTTP/3 over ringquic: the [`h3`] crate's QUIC traits ([`h3::quic`]) implemented on
//! ringquic's connections and streams, as `h3-quinn` implements them on quinn's.
//!
//! ```no_run
//! # async fn run(conn: ringquic::Connection) -> Result<(), Box<dyn std::error::Error>> {
//! // Server side: an accepted ringquic connection (ALPN "h3") becomes an h3 connection.
//! let conn = ringquic_h3::Connection::new(conn);
//! let mut h3_conn = h3::server::Connection::<_, bytes::Bytes>::new(conn).await?;
//! while let Some(resolver) = h3_conn.accept().await? {
//!     let (_request, mut stream) = resolver.resolve_request().await?;
//!     stream.send_response(http::Response::new(())).await?;
//!     stream.send_data(bytes::Bytes::from_static(b"hello")).await?;
//!     stream.finish().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # The mapping
//!
//! | `h3::quic`                              | ringquic                                                  |
//! |-----------------------------------------|-----------------------------------------------------------|
//! | `Connection::poll_accept_bidi` / `_recv`| [`ringquic::Connection::accept_bi`] / `accept_uni`        |
//! | `OpenStreams::poll_open_bidi` / `_send` | [`ringquic::Connection::open_bi`] / `open_uni`            |
//! | `OpenStreams::close`                    | [`ringquic::Connection::close`] (the h3 code as `VarInt`) |
//! | `RecvStream::poll_data`                 | [`ringquic::RecvStream::read_chunk`] (ordered, no copy)   |
//! | `RecvStream::stop_sending`              | [`ringquic::RecvStream::stop`]                            |
//! | `SendStream::send_data` + `poll_ready`  | the frame copied into one `Bytes`, then [`ringquic::SendStream::write_chunks`] |
//! | `SendStream::poll_finish` / `reset`     | [`ringquic::SendStream::finish`] / `reset`                |
//! | `SendStreamUnframed::poll_send`         | [`ringquic::SendStream::poll_write`]                      |
//! | h3-datagram's send / receive (`datagram`) | [`ringquic::Connection::send_datagram`] / `read_datagram` |
//!
//! Errors: a connection closed by the peer's application becomes
//! [`ConnectionErrorIncoming::ApplicationClose`](h3::quic::ConnectionErrorIncoming) with its
//! code, an idle timeout `Timeout`, every other [`ringquic::ConnectionError`] `Undefined` (it
//! is kept inside, as the source). A stream reset (read side) or stopped (write side) by the
//! peer becomes `StreamTerminated` with the peer's code; misuse of a closed stream `Unknown`.
//!
//! # How the futures are polled
//!
//! h3 polls (`poll_accept_bidi(cx)`), ringquic offers futures (`accept_bi()`), as quinn does.
//! h3-quinn keeps a boxed future (or a boxed stream of them) alive across polls, because quinn's
//! futures borrow the connection or stream they came from. ringquic's futures for these calls
//! (`OpenBi`, `OpenUni`, `AcceptBi`, `AcceptUni`, `ReadDatagram`, `read_chunk`, `write_chunks`) hold no state
//! of their own between polls: a poll that returns `Pending` has left the task's waker with
//! the connection's state, and dropping the future withdraws nothing. So each `poll_*` here
//! makes the future, polls it once and drops it: no allocation per call and no
//! self-referential box; every type here is `Send + Sync` because ringquic's handles are.
//! ringquic documents that property ("Polling a future and dropping it" in its crate docs),
//! with the list of futures it holds for.
//!
//! Writes copy once: h3 hands the transport a [`WriteBuf`](h3::quic::WriteBuf) (frame header,
//! then the payload), whose public API gives slices only; `send_data` copies the frame into one
//! `Bytes`, which `write_chunks` gives quinn-proto without a second copy (h3-quinn writes the
//! header and the payload slices one by one, and quinn-proto copies each). Reads do not copy:
//! `poll_data` returns the `Bytes` that `read_chunk` takes out of quinn-proto's receive buffer.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod connection;
#[cfg(feature = "datagram")]
pub mod datagram;
mod error;
mod poll;
mod streams;

pub use crate::{
    connection::{Connection, OpenStreams},
    streams::{BidiStream, RecvStream, SendStream},
};
/// The h3 crate this implements the traits of (0.0.8).
pub use h3;
/// The QUIC library underneath.
pub use ringquic;

/// The ALPN protocol name of HTTP/3 (RFC 9114), for rustls' `alpn_protocols`.
pub const ALPN: &[u8] = b"h3";
