//! Data integrity at volume: a 256 MiB stream hashed at both ends, 100 concurrent streams,
//! unreliable datagrams. Each runs on every backend.
mod common;
use common::*;

use bytes::Bytes;
use ring::digest::{Context, SHA256};

/// Deterministic pseudo-random bytes (xorshift), so both ends can agree without sharing a file.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_256_mib_hashed_at_both_ends() {
    const TOTAL: usize = 256 << 20;
    for b in backends() {
        let (server, client) = pair(b);
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let receiver = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            let mut h = Context::new(&SHA256);
            let mut n = 0usize;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                h.update(&chunk.bytes);
                n += chunk.bytes.len();
            }
            (n, h.finish())
        });
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let mut h = Context::new(&SHA256);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut sent = 0;
        within(120, async {
            while sent < TOTAL {
                let mut buf = vec![0u8; 1 << 20];
                fill(&mut buf, &mut seed);
                h.update(&buf);
                sent += buf.len();
                send.write_chunk(Bytes::from(buf)).await.unwrap();
            }
            send.finish().unwrap();
            let (n, digest) = receiver.await.unwrap();
            assert_eq!(n, TOTAL, "{b}: byte count");
            assert_eq!(digest.as_ref(), h.finish().as_ref(), "{b}: SHA-256 differs");
        })
        .await;
        let stats = client.stats();
        assert!(stats.bytes_sent >= TOTAL as u64, "{b}: {stats:?}");
        conn.close(0u32.into(), b"done");
        within(10, client.wait_idle()).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn hundred_concurrent_streams() {
    for b in backends() {
        let (server, client) = pair(b);
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let echo = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let (mut s, mut r) = conn.accept_bi().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let data = r.read_to_end(1 << 20).await.unwrap();
                    s.write_all(&data).await.unwrap();
                    s.finish().unwrap();
                    let _ = s.stopped().await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            conn
        });
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        within(60, async {
            let mut tasks = Vec::new();
            for i in 0..100u32 {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut s, mut r) = conn.open_bi().await.unwrap();
                    let payload: Vec<u8> = (0..(10_000 + i as usize * 100))
                        .map(|x| (x as u32 ^ i) as u8)
                        .collect();
                    s.write_all(&payload).await.unwrap();
                    s.finish().unwrap();
                    let back = r.read_to_end(1 << 20).await.unwrap();
                    assert_eq!(back, payload, "stream {i}");
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            echo.await.unwrap();
        })
        .await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn unreliable_datagrams() {
    for b in backends() {
        let (server, client) = pair(b);
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let conn = client.connect(addr, "localhost").unwrap();
        let sconn = within(10, async { srv.accept().await.unwrap().await.unwrap() }).await;
        let conn = within(10, conn).await.unwrap();
        let max = conn.max_datagram_size().expect("datagrams enabled by default");
        assert!(max >= 1000, "{max}");
        // Loopback does not lose datagrams unless buffers overflow; send a modest number and
        // require most (and only intact ones) to arrive.
        for i in 0..50u8 {
            conn.send_datagram(Bytes::from(vec![i; 1000])).unwrap();
            tokio::task::yield_now().await;
        }
        let mut got = 0;
        within(10, async {
            while got < 50 {
                let d = sconn.read_datagram().await.unwrap();
                assert_eq!(d.len(), 1000);
                assert!(d.iter().all(|x| *x == d[0]), "datagram corrupted");
                got += 1;
            }
        })
        .await;
        // Too large is a typed error, not a panic.
        let err = conn.send_datagram(Bytes::from(vec![0u8; 70_000])).unwrap_err();
        assert!(matches!(err, ringquic::SendDatagramError::TooLarge), "{err}");
    }
}
