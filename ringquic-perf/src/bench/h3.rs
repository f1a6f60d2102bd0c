//! The HTTP/3 workloads, each on one connection through the `h3` crate: `h3-rr` (small GETs,
//! many in flight, for requests per second and latency) and `h3-bulk` (one large GET, for
//! throughput). The transport adapter is the system's own ([`ConnOps::into_h3`]): h3-quinn on
//! quinn, ringquic-h3 on ringquic, so the rows compare the two adapters on the same h3 code.
//!
//! The server answers `GET /N` with N zero bytes, in DATA frames of up to 64 KiB cut from one
//! static buffer (no copy in h3; both adapters copy into QUIC's send buffer). The connection is
//! negotiated with the bench's ALPN (`perf`), not `h3`: both ends are this program, and h3 does
//! not look at ALPN.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::{Buf, Bytes};

use super::workload::{Client, Workload};
use crate::{
    measure::{Outcome, WorkloadKind},
    perf,
    system::{spawn_detached, ConnOps, EndpointOps, H3Transport},
};

/// How much of the body one DATA frame carries.
const FRAME: usize = 64 * 1024;
static ZEROS: [u8; FRAME] = [0; FRAME];

/// `concurrency` loops of `GET /size` on one connection, for `duration`.
#[derive(Debug, Clone)]
pub struct H3Requests {
    /// GETs in flight at once.
    pub concurrency: u64,
    /// Response body size in bytes.
    pub size: u64,
    /// How long to run.
    pub duration: Duration,
}

impl Workload for H3Requests {
    const KIND: WorkloadKind = WorkloadKind::H3Rr;

    fn serve<E: EndpointOps>(self, endpoint: E, _meter: Arc<AtomicU64>) -> impl Future<Output = ()> + Send {
        serve(endpoint)
    }

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let conn = client.connect().await?;
        let send = h3_client(conn.clone()).await?;
        let ignored = AtomicU64::new(0);
        let path = format!("/{}", self.size);
        let result = client
            .timed_loops(self.concurrency.max(1) as usize, self.duration, |_| {
                let (mut send, path, ignored) = (send.clone(), &path, &ignored);
                async move { get(&mut send, path, self.size, ignored).await }
            })
            .await;
        drop(send);
        conn.close(perf::CLOSE_DONE, b"done");
        result
    }
}

/// One `GET` of `size` bytes on one connection.
#[derive(Debug, Clone)]
pub struct H3Bulk {
    /// Response body size in bytes.
    pub size: u64,
}

impl Workload for H3Bulk {
    const KIND: WorkloadKind = WorkloadKind::H3Bulk;

    fn total(&self) -> Option<u64> {
        Some(self.size)
    }

    fn serve<E: EndpointOps>(self, endpoint: E, _meter: Arc<AtomicU64>) -> impl Future<Output = ()> + Send {
        serve(endpoint)
    }

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let conn = client.connect().await?;
        let mut send = h3_client(conn.clone()).await?;
        let start = Instant::now();
        let result = get(&mut send, &format!("/{}", self.size), self.size, &client.meter).await;
        let elapsed = start.elapsed();
        drop(send);
        conn.close(perf::CLOSE_DONE, b"done");
        result.context("h3 bulk GET")?;
        Ok(Outcome::new(self.size, elapsed))
    }
}

type SendRequest<C> =
    h3::client::SendRequest<<<C as ConnOps>::H3 as h3::quic::Connection<Bytes>>::OpenStreams, Bytes>;

/// An h3 client on `conn`, its connection driver started beside the caller.
async fn h3_client<C: ConnOps>(conn: C) -> Result<SendRequest<C>> {
    let (mut driver, send) = h3::client::new(conn.into_h3())
        .await
        .map_err(|e| anyhow!("h3 client: {e}"))?;
    spawn_detached(async move {
        // Ends when the connection does (the last request sender gone, or closed).
        let _ = driver.wait_idle().await;
    });
    Ok(send)
}

/// `GET path`, checking the status and that exactly `size` body bytes came, counted into `meter`.
async fn get<O>(
    send: &mut h3::client::SendRequest<O, Bytes>,
    path: &str,
    size: u64,
    meter: &AtomicU64,
) -> Result<()>
where
    O: h3::quic::OpenStreams<Bytes>,
{
    let req = http::Request::get(format!("https://localhost{path}")).body(())?;
    let mut stream = send
        .send_request(req)
        .await
        .map_err(|e| anyhow!("send_request: {e}"))?;
    match stream.finish().await {
        // The server answers without reading to the request's end and may stop it first.
        Ok(()) | Err(h3::error::StreamError::RemoteTerminate { .. }) => {}
        Err(e) => return Err(anyhow!("finish: {e}")),
    }
    let resp = stream
        .recv_response()
        .await
        .map_err(|e| anyhow!("recv_response: {e}"))?;
    ensure!(resp.status() == http::StatusCode::OK, "status {}", resp.status());
    let mut received = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| anyhow!("recv_data: {e}"))? {
        let n = chunk.remaining() as u64;
        received += n;
        meter.fetch_add(n, Ordering::Relaxed);
    }
    ensure!(received == size, "GET {path}: {received} bytes, expected {size}");
    Ok(())
}

/// Serves `GET /N` (N zero bytes) on every connection `endpoint` accepts, until it is closed.
async fn serve<E: EndpointOps>(endpoint: E) {
    while let Some(handshake) = endpoint.accept().await {
        spawn_detached(async move {
            if let Ok(conn) = handshake.await {
                // A failed connection or request only affects the client, which reports it.
                let _ = serve_connection(conn.into_h3()).await;
            }
        });
    }
}

async fn serve_connection<T: H3Transport>(conn: T) -> Result<()> {
    let mut conn = h3::server::Connection::<T, Bytes>::new(conn)
        .await
        .map_err(|e| anyhow!("h3 server: {e}"))?;
    while let Some(resolver) = conn.accept().await.map_err(|e| anyhow!("accept: {e}"))? {
        spawn_detached(async move {
            let _ = answer(resolver).await;
        });
    }
    Ok(())
}

async fn answer<T: H3Transport>(resolver: h3::server::RequestResolver<T, Bytes>) -> Result<()> {
    let (req, mut stream) = resolver
        .resolve_request()
        .await
        .map_err(|e| anyhow!("request: {e}"))?;
    let size: Option<u64> = req.uri().path().strip_prefix('/').and_then(|n| n.parse().ok());
    let status = if size.is_some() {
        http::StatusCode::OK
    } else {
        http::StatusCode::NOT_FOUND
    };
    let size = size.unwrap_or(0);
    let resp = http::Response::builder()
        .status(status)
        .header("content-length", size)
        .body(())?;
    stream
        .send_response(resp)
        .await
        .map_err(|e| anyhow!("response: {e}"))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(FRAME as u64) as usize;
        stream
            .send_data(Bytes::from_static(&ZEROS[..n]))
            .await
            .map_err(|e| anyhow!("body: {e}"))?;
        left -= n as u64;
    }
    stream.finish().await.map_err(|e| anyhow!("finish: {e}"))?;
    Ok(())
}
