//! Pseudo-random data written on streams and checked at the other end by its length and
//! SHA-256, so that nothing the size of a transfer has to be kept.

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use ringquic::{Connection, Endpoint, RecvStream, SendStream};

use super::impair::Rng;

/// The most a hashed writer sends, whatever its `more` says: 1 GiB.
pub const MAX_HASHED: usize = 1 << 30;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&SHA256, data).as_ref().to_vec()
}

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Read `recv` to its end: (bytes, SHA-256).
pub async fn read_hashed(recv: &mut RecvStream) -> (usize, Vec<u8>) {
    let mut h = Context::new(&SHA256);
    let mut n = 0;
    while let Some(c) = recv.read_chunk(usize::MAX, true).await.expect("read") {
        h.update(&c.bytes);
        n += c.bytes.len();
    }
    (n, h.finish().as_ref().to_vec())
}

/// Accept the next unidirectional stream of `conn` and read it to its end: (bytes, SHA-256).
pub async fn recv_hashed(conn: &Connection) -> (usize, Vec<u8>) {
    let mut recv = conn.accept_uni().await.expect("accept_uni");
    read_hashed(&mut recv).await
}

/// A task that accepts the next connection on `server` and reads its first unidirectional
/// stream to the end: ((bytes, SHA-256), the connection).
pub fn spawn_hashed_receiver(server: &Endpoint) -> tokio::task::JoinHandle<((usize, Vec<u8>), Connection)> {
    let server = server.clone();
    tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("accept");
        (recv_hashed(&conn).await, conn)
    })
}

/// Write bytes from `rng` on `send` in chunks of up to `chunk` bytes: exactly `min`, or more
/// while `more()` says so (up to [`MAX_HASHED`]). Returns the byte count and the SHA-256; the
/// stream is left open.
pub async fn write_hashed(
    send: &mut SendStream,
    rng: &mut Rng,
    chunk: usize,
    min: usize,
    more: impl Fn() -> bool,
) -> (usize, Vec<u8>) {
    let mut h = Context::new(&SHA256);
    let mut sent = 0;
    while sent < MAX_HASHED && (sent < min || more()) {
        let limit = if sent < min { min } else { MAX_HASHED };
        let mut buf = vec![0u8; chunk.min(limit - sent)];
        rng.fill(&mut buf);
        h.update(&buf);
        sent += buf.len();
        send.write_chunk(Bytes::from(buf)).await.expect("write");
    }
    (sent, h.finish().as_ref().to_vec())
}

/// [`write_hashed`] in 1 MiB chunks seeded with `seed` on a new unidirectional stream of
/// `conn`, then finish it and wait until the peer has everything (so that a close afterwards
/// cannot cut the tail off). Returns the byte count and the SHA-256.
pub async fn send_hashed_while(
    conn: &Connection,
    seed: u64,
    min: usize,
    more: impl Fn() -> bool,
) -> (usize, Vec<u8>) {
    let mut send = conn.open_uni().await.expect("open_uni");
    let sent = write_hashed(&mut send, &mut Rng::new(seed), 1 << 20, min, more).await;
    send.finish().expect("finish");
    let _ = send.stopped().await;
    sent
}

/// [`send_hashed_while`] of exactly `total` bytes; returns their SHA-256.
pub async fn send_hashed(conn: &Connection, total: usize, seed: u64) -> Vec<u8> {
    send_hashed_while(conn, seed, total, || false).await.1
}
