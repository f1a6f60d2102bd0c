//! Exhaustion: an application that stops reading, a receive flood larger than the buffer pool,
//! and a sender whose TX buffers are all in flight. The endpoint keeps running, counts what it
//! had to drop or wait for in `Endpoint::stats()`, holds memory bounded (flow control), and
//! recovers when the pressure ends. Every test runs on every backend.
use crate::common;
use common::hashed::{random_bytes, send_hashed, send_hashed_while, sha256, spawn_hashed_receiver};
use common::impair::Rng;
use common::*;

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use ring::digest::{Context, SHA256};
use ringquic::{BackendKind, VarInt};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

/// The receiving application reads 1 MiB and then stops reading. The sender's writes stop
/// completing (a 500 ms timeout elapses: a correctness bound, not a speed one) once it has used
/// the receiver's stream window; the receiving endpoint takes in no more than that window; when
/// the application reads again, the rest arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_blocks_the_sender_and_memory_stays_bounded() {
    const TOTAL: usize = 8 * MIB;
    const READ_FIRST: usize = MIB;
    const STREAM_WINDOW: usize = 256 * KIB;
    for b in backends() {
        let mut t = transport();
        t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW as u32));
        t.receive_window(VarInt::from_u32(4 * MIB as u32));
        t.send_window(4 * MIB as u64);
        let (server, client) = pair_with_transport(b, t, |s| s, |c| c);
        let addr = server.local_addr().unwrap();
        let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
        let srv = server.clone();
        let reader = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let mut r = conn.accept_uni().await.unwrap();
            let mut h = Context::new(&SHA256);
            let mut n = 0;
            while n < READ_FIRST {
                let c = r.read_chunk(READ_FIRST - n, true).await.unwrap().unwrap();
                h.update(&c.bytes);
                n += c.bytes.len();
            }
            // The application stops reading here until told to go on.
            resume_rx.await.unwrap();
            while let Some(c) = r.read_chunk(usize::MAX, true).await.unwrap() {
                h.update(&c.bytes);
                n += c.bytes.len();
            }
            (n, h.finish().as_ref().to_vec(), conn)
        });
        let conn = connect_to(&client, addr).await;
        let mut s = conn.open_uni().await.unwrap();
        let data = random_bytes(TOTAL, 42);
        let mut written = 0;
        let limit = READ_FIRST + STREAM_WINDOW;
        // Write until a write does not complete within 500 ms (once the reader has stopped: a
        // timeout before that is only a slow machine).
        within(30, async {
            loop {
                let end = (written + 64 * KIB).min(TOTAL);
                match tokio::time::timeout(Duration::from_millis(500), s.write(&data[written..end])).await {
                    Ok(n) => written += n.unwrap(),
                    Err(_elapsed) if written >= READ_FIRST => break,
                    Err(_elapsed) => {}
                }
                assert!(
                    written <= limit,
                    "{b}: wrote {written}, flow control allows {limit}"
                );
            }
            // Let everything settle, then take any write that still completes (a slow machine
            // may have timed out before the window was used up) until one times out again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            loop {
                let end = (written + 64 * KIB).min(TOTAL);
                match tokio::time::timeout(Duration::from_millis(300), s.write(&data[written..end])).await {
                    Ok(n) => written += n.unwrap(),
                    Err(_elapsed) => break,
                }
                assert!(
                    written <= limit,
                    "{b}: wrote {written}, flow control allows {limit}"
                );
            }
        })
        .await;
        // The sender stopped at the receiver's flow-control limit: what was read plus one stream
        // window.
        assert!(written >= READ_FIRST, "{b}: blocked early at {written}");
        // The receiving endpoint took in no more than the window (plus packet overhead), and
        // nothing more arrives while the application sleeps.
        let rx1 = server.io_stats().bytes_received;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rx2 = server.io_stats().bytes_received;
        assert!(
            rx1 <= (limit + limit / 5 + 64 * KIB) as u64,
            "{b}: the server received {rx1} bytes for a {limit}-byte window"
        );
        assert!(
            rx2 - rx1 < 16 * KIB as u64,
            "{b}: {} bytes arrived while blocked",
            rx2 - rx1
        );
        // Still blocked: one more write does not complete either.
        let more = (written + 64 * KIB).min(TOTAL);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.write(&data[written..more]))
                .await
                .is_err(),
            "{b}: a write completed while the receiver was not reading"
        );
        // Resume: everything arrives, intact.
        resume_tx.send(()).unwrap();
        within(60, async {
            s.write_all(&data[written..]).await.unwrap();
            s.finish().unwrap();
        })
        .await;
        let (n, got, _sconn) = within(60, reader).await.unwrap();
        assert_eq!(n, TOTAL, "{b}");
        assert_eq!(got, sha256(&data), "{b}: SHA-256 differs");
        eprintln!(
            "{b}: receiver stopped after {} MiB: sender blocked at {written} bytes (limit {limit}), \
             server received {rx1} bytes, +{} while blocked; resumed: {} MiB intact",
            READ_FIRST / MIB,
            rx2 - rx1,
            TOTAL / MIB
        );
        conn.close(0u32.into(), b"done");
    }
}

/// A server with 4 receive buffers of 2 KiB (GRO off) is blasted with 30 000 datagrams from 16
/// ports (1000-byte garbage, and 4000-byte datagrams that do not fit a buffer) while a real
/// client sends it data (4 MiB at least, and on until the flood is over). It keeps running; on io_uring it counts the truncated datagrams
/// (`recv_dropped`) and the times its ring ran dry (`recv_starved`) and was re-armed
/// (`recv_rearms`). The poll backend copies each batch out at once (its receive slots are never
/// smaller than a GRO batch, so the 4000-byte datagrams fit and are discarded by the protocol
/// layer): it has no ring to run dry. On both, the transfer completes byte-exact and a new
/// connection works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_flood_larger_than_the_buffer_pool() {
    const FLOOD: usize = 30_000;
    const MIN_TOTAL: usize = 4 * MIB;
    for b in backends() {
        let c = cert();
        let server = server_endpoint(b, server_config(&c), |s| s.recv_buffers(4).recv_buffer_size(2048));
        let addr = server.local_addr().unwrap();
        let client = client_endpoint(b, client_config(&c), |e| e);
        let reader = spawn_hashed_receiver(&server);
        let conn = connect_to(&client, addr).await;
        let blaster = std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..16).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            let mut rng = Rng::new(99);
            let mut buf = vec![0u8; 4000];
            for i in 0..FLOOD {
                let len = if i % 10 == 0 { 4000 } else { 1000 };
                rng.fill(&mut buf[..len]);
                let _ = socks[i % socks.len()].send_to(&buf[..len], addr);
                if i % 2000 == 1999 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        // The transfer goes on for as long as the flood does.
        let (total, sent) = within(
            60,
            send_hashed_while(&conn, 0, MIN_TOTAL, || !blaster.is_finished()),
        )
        .await;
        blaster.join().unwrap();
        let ((n, got), _sconn) = within(60, reader).await.unwrap();
        assert_eq!(n, total, "{b}");
        assert_eq!(got, sent, "{b}: SHA-256 differs");
        let s = server.io_stats();
        eprintln!(
            "{b}: 4 x 2 KiB receive buffers, {FLOOD}-datagram flood during a {} MiB transfer (hash ok): {s:?}",
            total / MIB
        );
        // The flood reached the endpoint (counted as received, or as dropped when it did not fit).
        assert!(
            s.datagrams_received + s.recv_dropped >= FLOOD as u64 / 2,
            "{b}: the flood did not reach the endpoint: {s:?}"
        );
        if b == BackendKind::IoUring {
            // Every 4000-byte datagram was cut by the kernel to fit a 2 KiB buffer, and dropped.
            assert!(s.recv_dropped > 0, "{b}: oversized datagrams not counted: {s:?}");
            // 4 buffers for thousands of queued datagrams: the ring ran dry and was re-armed.
            assert!(s.recv_starved > 0 && s.recv_rearms > 0, "{b}: {s:?}");
        }
        // Recovery: a new client connects and transfers.
        let client2 = client_endpoint(b, client_config(&c), |e| e);
        let reader = spawn_hashed_receiver(&server);
        let conn2 = connect_to(&client2, addr).await;
        let sent = within(30, send_hashed(&conn2, MIB, 1)).await;
        let ((n, got), _sconn) = within(30, reader).await.unwrap();
        assert_eq!((n, got), (MIB, sent), "{b}: after the flood");
        conn.close(0u32.into(), b"done");
        conn2.close(0u32.into(), b"done");
    }
}

/// A sender with a single TX buffer: every send waits for the previous one's completion. A
/// 16 MiB transfer still completes byte-exact, and the exhaustion is counted (`tx_exhausted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_tx_buffer_all_in_flight() {
    const TOTAL: usize = 16 * MIB;
    for b in backends() {
        let (server, client) = pair_with(b, |s| s, |c| c.tx_buffers(1));
        let reader = spawn_hashed_receiver(&server);
        let conn = connect_to(&client, server.local_addr().unwrap()).await;
        let started = Instant::now();
        let sent = within(60, send_hashed(&conn, TOTAL, 0)).await;
        let ((n, got), _sconn) = within(60, reader).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(n, TOTAL, "{b}");
        assert_eq!(got, sent, "{b}: SHA-256 differs");
        let s = client.io_stats();
        eprintln!(
            "{b}: tx_buffers(1): {} MiB in {:.2} s, hash ok: tx_exhausted {}, send_errors {}, datagrams sent {}",
            TOTAL / MIB,
            elapsed.as_secs_f64(),
            s.tx_exhausted,
            s.send_errors,
            s.datagrams_sent
        );
        if b == BackendKind::IoUring {
            // The one buffer is with the kernel until its completion: connections had to wait.
            assert!(s.tx_exhausted > 0, "{b}: {s:?}");
        }
        conn.close(0u32.into(), b"done");
    }
}
