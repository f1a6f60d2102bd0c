//! The perf protocol's server and client, generic over the QUIC implementation.
//!
//! The server answers every request on every connection until its endpoint closes. The client
//! runs a number of identical requests, some at a time, on one connection and checks every byte
//! count. The bench workloads reuse [`request`] and [`serve`], so every number the bench prints
//! was measured over this protocol.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use serde::Serialize;

use crate::{
    proto::{encode_header, format_bytes, parse_header, HEADER_LEN},
    system::{spawn_detached, ConnOps, EndpointOps, RecvOps, SendOps},
};

/// The application error code used to close connections after a clean run.
pub const CLOSE_DONE: u32 = 0;

/// Size of the reusable payload buffer; writes hand out slices of it without copying.
const PAYLOAD_CHUNK: usize = 64 * 1024;
static ZEROS: [u8; PAYLOAD_CHUNK] = [0; PAYLOAD_CHUNK];

/// Set (to anything) to have each side of a connection that carried more than 1 MiB print its
/// packet and frame counts to stderr when it is done (the client when its timed part ends, the
/// server when the connection closes): how many ACKs the receiver sent, in how many sends the
/// data left, which the CPU columns do not show. A diagnostic for `bulk` and `streams`.
pub const CONN_STATS_ENV: &str = "RINGQUIC_PERF_CONN_STATS";

/// Prints `side`'s line of what [`CONN_STATS_ENV`] asks for, if it is set.
pub fn report_conn_stats<C: ConnOps>(side: &str, conn: &C) {
    // Read once per process: the server asks at every connection's end (thousands in `handshakes`).
    static ENABLED: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os(CONN_STATS_ENV).is_some());
    if !*ENABLED {
        return;
    }
    let s = conn.stats();
    if s.udp_rx.bytes + s.udp_tx.bytes < 1 << 20 {
        return;
    }
    eprintln!(
        "{side} connection: rx {} datagrams / {} bytes ({} STREAM, {} ACK frames); \
         tx {} datagrams in {} sends ({} ACK frames); rtt {:?}, cwnd {}, lost {}",
        s.udp_rx.datagrams,
        s.udp_rx.bytes,
        s.frame_rx.stream,
        s.frame_rx.acks,
        s.udp_tx.datagrams,
        s.udp_tx.ios,
        s.frame_tx.acks,
        s.path.rtt,
        s.path.cwnd,
        s.path.lost_packets,
    );
}

/// Serves perf requests on every connection `endpoint` accepts, until it is closed.
pub async fn serve<E: EndpointOps>(endpoint: E) {
    while let Some(handshake) = endpoint.accept().await {
        spawn_detached(async move {
            if let Ok(conn) = handshake.await {
                // Where the connection lives: its own shard's I/O thread in local mode.
                conn.clone().spawn_home(serve_connection(conn));
            }
        });
    }
}

/// Serves perf requests on one connection until it closes.
pub async fn serve_connection<C: ConnOps>(conn: C) {
    {
        // Ends by itself when the connection closes, like the loop below.
        let conn = conn.clone();
        spawn_detached(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let conn = conn.clone();
                spawn_detached(async move {
                    // A failed request only affects its stream; the client sees it.
                    let _ = answer_uni(&conn, recv).await;
                });
            }
        });
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        spawn_detached(async move {
            let _ = answer_bi(send, recv).await;
        });
    }
    report_conn_stats("server", &conn);
}

async fn answer_bi<S: SendOps, R: RecvOps>(mut send: S, mut recv: R) -> Result<()> {
    let size = read_request(&mut recv).await?;
    send_payload(&mut send, size).await
}

async fn answer_uni<C: ConnOps>(conn: &C, mut recv: C::Recv) -> Result<()> {
    let size = read_request(&mut recv).await?;
    let mut send = conn.open_uni().await?;
    send_payload(&mut send, size).await
}

/// Reads a request: its header, then the upload until FIN. Returns the requested response size.
pub async fn read_request<R: RecvOps>(recv: &mut R) -> Result<u64> {
    let mut head = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match recv.read(&mut head[have..]).await? {
            Some(n) => have += n,
            None => break,
        }
    }
    let size = parse_header(&head[..have])?;
    drain(recv, &AtomicU64::new(0)).await?;
    Ok(size)
}

/// Reads a stream to its end, adding every byte received to `counter`; returns the total.
pub async fn drain<R: RecvOps>(recv: &mut R, counter: &AtomicU64) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        let n = chunk.len() as u64;
        total += n;
        counter.fetch_add(n, Ordering::Relaxed);
    }
    Ok(total)
}

/// Writes `size` bytes (zeros, without copying) and FIN.
pub async fn send_payload<S: SendOps>(send: &mut S, size: u64) -> Result<()> {
    let mut left = size;
    while left > 0 {
        let n = left.min(PAYLOAD_CHUNK as u64) as usize;
        send.write_chunk(Bytes::from_static(&ZEROS[..n])).await?;
        left -= n as u64;
    }
    send.finish()
}

/// One perf request's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Request {
    /// Bytes the client sends after the header.
    pub upload: u64,
    /// Bytes the client asks the server to answer with.
    pub download: u64,
    /// Whether to use unidirectional streams (the answer comes on a new server stream).
    pub uni: bool,
}

impl Request {
    /// A bidirectional request that uploads `upload` bytes and asks for `download` bytes.
    pub const fn bi(upload: u64, download: u64) -> Self {
        Request {
            upload,
            download,
            uni: false,
        }
    }
}

/// Runs one request on `conn`, counting received bytes into `counter`, and checks that exactly
/// `req.download` bytes came back.
pub async fn request<C: ConnOps>(conn: &C, req: Request, counter: &AtomicU64) -> Result<()> {
    let received = if req.uni {
        let mut send = conn.open_uni().await?;
        send.write_all(&encode_header(req.download)).await?;
        send_payload(&mut send, req.upload).await?;
        let mut recv = conn.accept_uni().await?;
        drain(&mut recv, counter).await?
    } else {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&encode_header(req.download)).await?;
        send_payload(&mut send, req.upload).await?;
        drain(&mut recv, counter).await?
    };
    ensure!(
        received == req.download,
        "server answered {received} bytes, expected {}",
        req.download
    );
    Ok(())
}

/// What the `client` subcommand does.
#[derive(Debug, Clone, Serialize)]
pub struct ClientOptions {
    /// The server's name for certificate checks (and SNI).
    pub server_name: String,
    /// The shape of every request.
    pub request: Request,
    /// How many requests to run.
    pub requests: u64,
    /// How many requests run at once.
    pub concurrency: u64,
}

/// What a client run achieved.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// The server address.
    pub server: SocketAddr,
    /// The options it ran with.
    pub options: ClientOptions,
    /// Requests answered with exactly the requested byte count.
    pub requests_ok: u64,
    /// Requests that failed; see `errors`.
    pub requests_failed: u64,
    /// Bytes received in answers.
    pub bytes_received: u64,
    /// Bytes sent as uploads (of successful requests).
    pub bytes_sent: u64,
    /// Time to establish the connection, in seconds.
    pub handshake_secs: f64,
    /// Time from the first request to the last answer, in seconds.
    pub transfer_secs: f64,
    /// The first few distinct errors.
    pub errors: Vec<String>,
}

impl ClientReport {
    /// Whether every request got every byte it asked for.
    pub fn success(&self) -> bool {
        self.requests_failed == 0
            && self.requests_ok == self.options.requests
            && self.bytes_received == self.options.requests * self.options.request.download
    }

    /// A one-paragraph human summary.
    pub fn summary(&self) -> String {
        let secs = self.transfer_secs.max(1e-9);
        format!(
            "{ok}/{n} requests ok in {secs:.3} s (handshake {hs:.1} ms): \
             received {down} ({down_rate}/s, {down_gbps:.3} Gbit/s), sent {up} ({up_rate}/s), \
             {rps:.1} requests/s",
            ok = self.requests_ok,
            n = self.options.requests,
            hs = self.handshake_secs * 1000.0,
            down = format_bytes(self.bytes_received as f64),
            down_rate = format_bytes(self.bytes_received as f64 / secs),
            down_gbps = self.bytes_received as f64 * 8.0 / secs / 1e9,
            up = format_bytes(self.bytes_sent as f64),
            up_rate = format_bytes(self.bytes_sent as f64 / secs),
            rps = self.requests_ok as f64 / secs,
        )
    }
}

/// Connects to `server` and runs the requests `opts` describes, on one connection.
///
/// Errors only when no connection could be made; failed requests are counted in the report.
pub async fn run_client<E: EndpointOps>(
    endpoint: &E,
    server: SocketAddr,
    opts: &ClientOptions,
) -> Result<ClientReport> {
    ensure!(opts.concurrency > 0, "concurrency must be at least 1");
    let start = Instant::now();
    let conn = endpoint
        .connect(server, &opts.server_name)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let handshake = start.elapsed();

    let received = AtomicU64::new(0);
    let transfer_start = Instant::now();
    let tally = run_requests(&conn, opts.request, opts.requests, opts.concurrency, &received).await?;
    let mut report = ClientReport {
        server,
        options: opts.clone(),
        requests_ok: tally.ok,
        requests_failed: tally.failed,
        bytes_received: 0,
        bytes_sent: 0,
        handshake_secs: handshake.as_secs_f64(),
        transfer_secs: 0.0,
        errors: tally.errors,
    };
    report.transfer_secs = transfer_start.elapsed().as_secs_f64();
    report.bytes_received = received.load(Ordering::Relaxed);
    report.bytes_sent = report.requests_ok * opts.request.upload;
    conn.close(CLOSE_DONE, b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(report)
}

/// How a batch of requests went.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests answered in full.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// The first few distinct errors.
    pub errors: Vec<String>,
}

impl Tally {
    /// Counts a failed request, keeping its error if it is one of the first few distinct ones.
    pub fn record_error(&mut self, error: String) {
        self.failed += 1;
        if self.errors.len() < 8 && !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }
}

/// Runs `n` copies of `req` on `conn`, `concurrency` at a time, counting received bytes into
/// `counter`.
pub async fn run_requests<C: ConnOps>(
    conn: &C,
    req: Request,
    n: u64,
    concurrency: u64,
    counter: &AtomicU64,
) -> Result<Tally> {
    let next = AtomicU64::new(0);
    let worker = || async {
        let mut tally = Tally::default();
        while next.fetch_add(1, Ordering::Relaxed) < n {
            match request(conn, req, counter).await {
                Ok(()) => tally.ok += 1,
                Err(e) => tally.record_error(format!("{e:#}")),
            }
        }
        tally
    };
    let workers = (0..concurrency.clamp(1, n.max(1))).map(|_| worker());
    let mut total = Tally::default();
    for t in futures::future::join_all(workers).await {
        total.ok += t.ok;
        total.failed += t.failed - t.errors.len() as u64;
        for e in t.errors {
            total.record_error(e);
        }
    }
    Ok(total)
}

/// Turns a finished report into the client's verdict: `Ok` only if every byte arrived.
pub fn verdict(report: &ClientReport) -> Result<()> {
    if report.success() {
        return Ok(());
    }
    let expected = report.options.requests * report.options.request.download;
    bail!(
        "{} of {} requests failed; received {} of {} bytes{}{}",
        report.options.requests - report.requests_ok,
        report.options.requests,
        report.bytes_received,
        expected,
        if report.errors.is_empty() { "" } else { ": " },
        report.errors.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: u64, failed: u64, received: u64) -> ClientReport {
        ClientReport {
            server: "127.0.0.1:1".parse().unwrap(),
            options: ClientOptions {
                server_name: "localhost".into(),
                request: Request {
                    upload: 0,
                    download: 100,
                    uni: false,
                },
                requests: 4,
                concurrency: 2,
            },
            requests_ok: ok,
            requests_failed: failed,
            bytes_received: received,
            bytes_sent: 0,
            handshake_secs: 0.001,
            transfer_secs: 0.5,
            errors: if failed > 0 {
                vec!["server answered 50 bytes, expected 100".into()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn verdict_needs_every_byte() {
        assert!(verdict(&report(4, 0, 400)).is_ok());
        let err = verdict(&report(3, 1, 350)).unwrap_err().to_string();
        assert!(err.contains("1 of 4 requests failed"), "{err}");
        assert!(err.contains("350 of 400 bytes"), "{err}");
        assert!(err.contains("expected 100"), "{err}");
        assert!(verdict(&report(4, 0, 399)).is_err());
        assert!(report(4, 0, 400).summary().contains("4/4 requests ok"));
    }

    #[test]
    fn tally_keeps_distinct_errors() {
        let mut t = Tally::default();
        for i in 0..20 {
            t.record_error(format!("e{}", i % 10));
        }
        t.record_error("e0".into());
        assert_eq!(t.failed, 21);
        assert_eq!(t.errors.len(), 8);
    }
}
