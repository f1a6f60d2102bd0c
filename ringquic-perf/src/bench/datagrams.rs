//! `datagrams`: unreliable datagrams per second, delivered and lost.
//!
//! The client sends datagrams for the duration, keeping at most [`WINDOW`] of them queued but not
//! yet transmitted (it watches the connection's count of DATAGRAM frames sent), so the offered
//! load follows what the connection can carry and nothing is dropped from the send buffer. The
//! server counts what arrives.
//! Afterwards the client asks for that count over a perf request whose answer is the count as
//! 8 bytes, big-endian; lost = sent − delivered.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;

use super::workload::{Client, Workload};
use crate::{
    measure::{Outcome, WorkloadKind},
    perf,
    proto::{encode_header, parse_header, HEADER_LEN},
    system::{ConnOps, EndpointOps, RecvOps, SendOps},
};

/// Sends datagrams of `size` bytes for `duration`.
#[derive(Debug, Clone)]
pub struct Datagrams {
    /// Payload size (capped at the path's maximum datagram size).
    pub size: usize,
    /// How long to send.
    pub duration: Duration,
}

/// Datagrams the client lets sit in the send buffer before it waits for transmissions.
pub const WINDOW: u64 = 1024;

/// Datagrams queued per turn before yielding to the runtime.
const BURST: u64 = 64;

/// How long the client waits after sending for the last datagrams to land.
const SETTLE: Duration = Duration::from_millis(200);

async fn count_datagrams<C: ConnOps>(conn: C, meter: Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (conn, received) = (conn.clone(), received.clone());
        tokio::spawn(async move {
            while conn.read_datagram().await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
                meter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Every bidirectional request is answered with the count so far.
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if perf::read_request(&mut recv).await.is_err() {
            break;
        }
        let count = received.load(Ordering::Relaxed);
        if send.write_all(&encode_header(count)).await.is_err() || send.finish().is_err() {
            break;
        }
    }
    reader.abort();
}

impl Workload for Datagrams {
    const KIND: WorkloadKind = WorkloadKind::Datagrams;

    async fn serve<E: EndpointOps>(self, endpoint: E, meter: Arc<AtomicU64>) {
        while let Some(handshake) = endpoint.accept().await {
            let meter = meter.clone();
            tokio::spawn(async move {
                if let Ok(conn) = handshake.await {
                    count_datagrams(conn, meter).await;
                }
            });
        }
    }

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let conn = client.connect().await?;
        let max = conn
            .max_datagram_size()
            .context("the server does not accept datagrams")?;
        let size = self.size.min(max).max(1);
        let payload = Bytes::from(vec![0x5a; size]);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut idle = 0u32;
        while start.elapsed() < self.duration {
            let queued = sent.saturating_sub(conn.stats().frame_tx.datagram);
            let room = WINDOW.saturating_sub(queued).min(BURST);
            if room == 0 {
                // Full: give the connection a moment (first by yielding, then by sleeping).
                idle += 1;
                if idle < 16 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                continue;
            }
            idle = 0;
            for _ in 0..room {
                conn.send_datagram(payload.clone())?;
                sent += 1;
            }
            tokio::task::yield_now().await;
        }
        let elapsed = start.elapsed();
        tokio::time::sleep(SETTLE).await;

        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode_header(HEADER_LEN as u64)).await?;
        send.finish()?;
        let mut answer = Vec::new();
        while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
            answer.extend_from_slice(&chunk);
        }
        ensure!(
            answer.len() == HEADER_LEN,
            "bad count answer: {} bytes",
            answer.len()
        );
        let delivered = parse_header(&answer)?;
        conn.close(perf::CLOSE_DONE, b"done");

        let mut outcome = Outcome::new(delivered, elapsed);
        outcome.extra.insert("sent".into(), sent as f64);
        outcome
            .extra
            .insert("lost".into(), sent.saturating_sub(delivered) as f64);
        outcome.extra.insert("datagram_size".into(), size as f64);
        Ok(outcome)
    }
}
