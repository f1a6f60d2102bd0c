//! Data integrity at volume: a 256 MiB stream hashed at both ends, 100 concurrent streams,
//! unreliable datagrams. Each runs on every backend.
use crate::common;
use common::hashed::{spawn_hashed_receiver, write_hashed};
use common::impair::Rng;
use common::*;

use bytes::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_256_mib_hashed_at_both_ends() {
    const TOTAL: usize = 256 << 20;
    for b in backends() {
        let (server, client) = pair(b);
        let receiver = spawn_hashed_receiver(&server);
        let conn = connect_to(&client, server.local_addr().unwrap()).await;
        let mut send = conn.open_uni().await.unwrap();
        within(120, async {
            let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
            let (sent, hash) = write_hashed(&mut send, &mut rng, 1 << 20, TOTAL, || false).await;
            send.finish().unwrap();
            let ((n, digest), _sconn) = receiver.await.unwrap();
            assert_eq!((sent, n), (TOTAL, TOTAL), "{b}: byte count");
            assert_eq!(digest, hash, "{b}: SHA-256 differs");
        })
        .await;
        let stats = client.io_stats();
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
        let conn = connect_to(&client, addr).await;
        within(60, async {
            let mut tasks = Vec::new();
            for i in 0..100u32 {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    let payload: Vec<u8> = (0..(10_000 + i as usize * 100))
                        .map(|x| (x as u32 ^ i) as u8)
                        .collect();
                    assert_eq!(request(&conn, &payload, 1 << 20).await, payload, "stream {i}");
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
        let (_server, _client, sconn, conn) = connected_pair(b).await;
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
