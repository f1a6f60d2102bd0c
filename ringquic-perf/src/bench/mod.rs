//! The `bench` subcommand: every workload on every system, in one run.
//!
//! A *phase* is one workload on one system: a server thread and a client thread, each with its
//! own tokio current-thread runtime and its own endpoint, talking over loopback. The main thread
//! measures (CPU per side and per process, peak memory, progress over time) and draws the
//! progress bar. Workloads are written once, generic over [`System`], in the submodules.

mod datagrams;
mod handshakes;
mod rr;
mod streams;
mod transfer;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io::{IsTerminal, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

pub use self::{
    datagrams::Datagrams, handshakes::Handshakes, rr::RequestResponse, streams::Streams, transfer::Bulk,
};
use crate::{
    config::{self, Identity, NetOptions, Trust},
    perf,
    report::{Measurement, Report},
    system::{EndpointOps, Role, System, SystemKind},
    usage::{self, Snapshot},
    with_system,
};

/// The server name every bench client connects to.
pub const SERVER_NAME: &str = "localhost";

/// The workloads `bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// One connection, one stream, one large download.
    Bulk,
    /// One connection, many 1 MiB downloads, some at a time.
    Streams,
    /// Small requests and responses on many connections: requests per second and latency.
    Rr,
    /// New connections per second, each with one small request.
    Handshakes,
    /// Unreliable datagrams per second, delivered and lost.
    Datagrams,
    /// All of the above.
    All,
}

impl WorkloadKind {
    /// Every concrete workload, in the order the table shows them.
    pub const EVERY: [WorkloadKind; 5] = [
        WorkloadKind::Bulk,
        WorkloadKind::Streams,
        WorkloadKind::Rr,
        WorkloadKind::Handshakes,
        WorkloadKind::Datagrams,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Bulk => "bulk",
            WorkloadKind::Streams => "streams",
            WorkloadKind::Rr => "rr",
            WorkloadKind::Handshakes => "handshakes",
            WorkloadKind::Datagrams => "datagrams",
            WorkloadKind::All => "all",
        }
    }

    /// Expands `all` and removes duplicates, keeping the table order.
    pub fn expand(kinds: &[WorkloadKind]) -> Vec<WorkloadKind> {
        let set: BTreeSet<WorkloadKind> = kinds
            .iter()
            .flat_map(|k| match k {
                WorkloadKind::All => WorkloadKind::EVERY.to_vec(),
                k => vec![*k],
            })
            .collect();
        set.into_iter().collect()
    }
}

/// What a workload counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Payload bytes received by the client.
    Bytes,
    /// Completed request/response exchanges.
    Requests,
    /// Completed connections (handshake plus one request).
    Connections,
    /// Datagrams delivered to the server.
    Datagrams,
}

impl Unit {
    /// How many units one "CPU seconds per …" figure is normalised to.
    pub fn cpu_scale(self) -> f64 {
        match self {
            Unit::Bytes => (1u64 << 30) as f64,
            _ => 1000.0,
        }
    }

    /// The label of [`Unit::cpu_scale`], e.g. `GiB`.
    pub fn cpu_label(self) -> &'static str {
        match self {
            Unit::Bytes => "GiB",
            Unit::Requests => "1k req",
            Unit::Connections => "1k conn",
            Unit::Datagrams => "1k dgram",
        }
    }
}

/// What a workload's client reports at the end of a phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Units completed in the timed part.
    pub amount: u64,
    /// Length of the timed part, in seconds.
    pub elapsed_secs: f64,
    /// Latency percentiles, for workloads that measure it.
    pub latency: Option<Latency>,
    /// Workload-specific figures (e.g. datagrams sent and lost).
    pub extra: BTreeMap<String, f64>,
}

impl Outcome {
    /// An outcome of `amount` units in `elapsed`.
    pub fn new(amount: u64, elapsed: Duration) -> Self {
        Outcome {
            amount,
            elapsed_secs: elapsed.as_secs_f64(),
            ..Outcome::default()
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Number of samples.
    pub samples: u64,
}

/// A latency histogram (microseconds, 3 significant digits).
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        // 1 µs .. 1 h at 3 significant digits never fails to build.
        let h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("sigfig 3 is valid"));
        Histogram(h)
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        self.0.saturating_record(latency.as_micros().max(1) as u64);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles, or `None` without samples.
    pub fn latency(&self) -> Option<Latency> {
        (!self.0.is_empty()).then(|| Latency {
            p50_us: self.0.value_at_quantile(0.5) as f64,
            p99_us: self.0.value_at_quantile(0.99) as f64,
            p999_us: self.0.value_at_quantile(0.999) as f64,
            max_us: self.0.max() as f64,
            samples: self.0.len(),
        })
    }
}

/// A workload: its server side (the perf server unless overridden) and its client side.
///
/// Both run inside their side's runtime; `meter` is the live counter the main thread samples for
/// the progress bar and the throughput-over-time plot.
pub trait Workload: Clone + Send + Sync + 'static {
    /// Which workload this is.
    fn kind(&self) -> WorkloadKind;
    /// What it counts.
    fn unit(&self) -> Unit;
    /// The total the meter reaches at the end, for sized workloads (`None`: timed).
    fn total(&self) -> Option<u64>;
    /// The server side; runs until the endpoint closes.
    fn serve<E: EndpointOps>(self, endpoint: E, meter: Arc<AtomicU64>) -> impl Future<Output = ()> + Send {
        let _ = meter;
        perf::serve(endpoint)
    }
    /// The client side; returns what the timed part achieved.
    fn run<E: EndpointOps>(
        self,
        endpoint: E,
        server: SocketAddr,
        meter: Arc<AtomicU64>,
    ) -> impl Future<Output = Result<Outcome>> + Send;
}

/// Everything `bench` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Workloads to run (`all` expanded).
    pub workloads: Vec<WorkloadKind>,
    /// Systems to compare; quinn is the baseline for ratios.
    pub systems: Vec<SystemKind>,
    /// Repetitions of every phase.
    pub runs: usize,
    /// `bulk`: download size in bytes.
    pub size: u64,
    /// `streams`: number of streams.
    pub streams: u64,
    /// `streams`: bytes per stream.
    pub stream_size: u64,
    /// `streams`: streams at a time.
    pub concurrency: u64,
    /// `rr`: connections; `handshakes`: connection attempts at a time.
    pub connections: u64,
    /// `rr`: concurrent streams per connection.
    pub rr_streams: u64,
    /// `rr`: request and response size in bytes.
    pub rr_size: u64,
    /// Length of the timed workloads (`rr`, `handshakes`, `datagrams`).
    #[serde(with = "secs")]
    pub duration: Duration,
    /// `datagrams`: payload size in bytes (capped at what the path allows).
    pub datagram_size: usize,
    /// Shared network settings.
    pub net: NetOptions,
    /// Longest a phase may take before it is abandoned as failed.
    #[serde(with = "secs")]
    pub phase_timeout: Duration,
    /// Whether to draw a progress bar (only when stdout is a terminal).
    pub progress: bool,
    /// Whether to run every phase in a fresh child process (`ringquic-perf phase`), so that
    /// memory and threads left by one phase cannot affect the next.
    pub isolate: bool,
    /// ringquic-only settings (busy-poll, pinning, SQPOLL, zero-copy threshold).
    #[serde(default)]
    pub ringquic: crate::system::RingquicTuning,
}

/// Durations as seconds (a float) in JSON.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workloads: WorkloadKind::EVERY.to_vec(),
            systems: default_systems(),
            runs: 3,
            size: 1 << 30,
            streams: 1000,
            stream_size: 1 << 20,
            concurrency: 64,
            connections: 16,
            rr_streams: 4,
            rr_size: 64,
            duration: Duration::from_secs(5),
            datagram_size: 1024,
            net: NetOptions::default(),
            phase_timeout: Duration::from_secs(120),
            progress: std::io::stdout().is_terminal(),
            isolate: false,
            ringquic: Default::default(),
        }
    }
}

/// quinn plus ringquic on its default backend (quinn alone without the `ringquic` feature).
pub fn default_systems() -> Vec<SystemKind> {
    let mut v = vec![SystemKind::Quinn];
    if cfg!(feature = "ringquic") {
        v.push(SystemKind::Ringquic(None));
    }
    v
}

/// Runs every phase and returns the collected figures (failed phases are recorded, not fatal).
pub fn run(opts: &BenchOptions) -> Result<Report> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let identity = Arc::new(Identity::self_signed(&[SERVER_NAME])?);
    // Fail early on a bad MTU or cipher, before any thread starts.
    config::server_config(&identity, &opts.net)?;
    let mut report = Report::new(opts);
    for &kind in &WorkloadKind::expand(&opts.workloads) {
        for run in 0..opts.runs {
            // Alternate the order of systems between runs so drift hits all of them.
            let mut order = opts.systems.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for system in order {
                if system.is_local() && kind == WorkloadKind::Datagrams {
                    // The datagram workload paces itself with tokio timers, which do not exist
                    // on ringquic's I/O thread.
                    continue;
                }
                let m = if opts.isolate {
                    run_isolated(kind, system, run, opts, &identity)
                } else {
                    run_one(kind, system, run, opts, &identity)
                };
                eprintln!("{}", m.one_line());
                report.push(kind, m);
            }
        }
    }
    Ok(report)
}

/// What a `phase` child process is asked to run (sent as JSON on its stdin).
#[derive(Debug, Serialize, Deserialize)]
pub struct PhaseSpec {
    /// The workload.
    pub workload: WorkloadKind,
    /// The system.
    pub system: SystemKind,
    /// Which repetition.
    pub run: usize,
    /// All bench options.
    pub options: BenchOptions,
    /// The server certificate (DER), the same for every phase.
    pub cert_der: Vec<u8>,
    /// Its private key (DER).
    pub key_der: Vec<u8>,
}

/// The hidden `phase` subcommand: reads a [`PhaseSpec`] from stdin, runs it in this process and
/// prints the [`Measurement`] as JSON on stdout.
pub fn phase_main() -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the phase spec")?;
    let spec: PhaseSpec = serde_json::from_str(&input).context("parsing the phase spec")?;
    let identity = Arc::new(Identity {
        certs: vec![spec.cert_der.into()],
        key: rustls::pki_types::PrivateKeyDer::try_from(spec.key_der)
            .map_err(|e| anyhow!("bad private key: {e}"))?,
    });
    let m = run_one(spec.workload, spec.system, spec.run, &spec.options, &identity);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &m)?;
    writeln!(out)?;
    Ok(())
}

/// Runs one phase in a child process (`ringquic-perf phase`), killing it if it overruns.
fn run_isolated(
    kind: WorkloadKind,
    system: SystemKind,
    run: usize,
    opts: &BenchOptions,
    identity: &Identity,
) -> Measurement {
    let spawn = || -> Result<Measurement> {
        let spec = PhaseSpec {
            workload: kind,
            system,
            run,
            options: opts.clone(),
            cert_der: identity.certs.first().map(|c| c.to_vec()).unwrap_or_default(),
            key_der: identity.key.secret_der().to_vec(),
        };
        let exe = std::env::current_exe().context("locating the ringquic-perf binary")?;
        let mut child = Command::new(exe)
            .arg("phase")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the phase process")?;
        let stdin = child.stdin.take().context("phase stdin")?;
        serde_json::to_writer(stdin, &spec).context("sending the phase spec")?;
        let mut stdout = child.stdout.take().context("phase stdout")?;
        let reader = thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let deadline = Instant::now() + opts.phase_timeout + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the phase process overran its time limit and was killed");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let out = reader
            .join()
            .map_err(|_| anyhow!("phase output reader panicked"))?
            .context("reading the phase output")?;
        if !status.success() {
            bail!("the phase process failed ({status})");
        }
        serde_json::from_str(out.trim()).context("parsing the phase output")
    };
    spawn().unwrap_or_else(|e| Measurement::failed(kind, system, run, format!("{e:#}")))
}

fn run_one(
    kind: WorkloadKind,
    system: SystemKind,
    run: usize,
    opts: &BenchOptions,
    identity: &Arc<Identity>,
) -> Measurement {
    let env = PhaseEnv {
        opts,
        identity: identity.clone(),
        label: format!("{} {} run {}/{}", kind.name(), system.name(), run + 1, opts.runs),
    };
    let result = match kind {
        WorkloadKind::Bulk => dispatch(system, Bulk { size: opts.size }, &env),
        WorkloadKind::Streams => dispatch(
            system,
            Streams {
                count: opts.streams,
                size: opts.stream_size,
                concurrency: opts.concurrency,
            },
            &env,
        ),
        WorkloadKind::Rr => dispatch(
            system,
            RequestResponse {
                connections: opts.connections,
                streams: opts.rr_streams,
                size: opts.rr_size,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::Handshakes => dispatch(
            system,
            Handshakes {
                concurrency: opts.connections,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::Datagrams => dispatch(
            system,
            Datagrams {
                size: opts.datagram_size,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::All => Err(anyhow!("`all` is not a single workload")),
    };
    result
        .unwrap_or_else(|e| Measurement::failed(kind, system, run, format!("{e:#}")))
        .with_run(run)
}

fn dispatch<W: Workload>(system: SystemKind, workload: W, env: &PhaseEnv<'_>) -> Result<Measurement> {
    with_system!(system, sys => run_phase(sys, system, workload, env))
}

/// What every phase needs besides the system and the workload.
struct PhaseEnv<'a> {
    opts: &'a BenchOptions,
    identity: Arc<Identity>,
    label: String,
}

/// What a side's thread reports once its endpoint is bound.
struct Ready {
    addr: SocketAddr,
    label: String,
    tids: BTreeSet<u32>,
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building tokio runtime")
}

/// Builds an endpoint on the calling thread, inside `rt`, and reports which threads it uses.
fn bind_side<S: System>(
    rt: &tokio::runtime::Runtime,
    sys: &S,
    bind: impl FnOnce(&S) -> Result<S::Endpoint>,
) -> Result<(S::Endpoint, Ready)> {
    let _guard = rt.enter();
    let own = usage::current_tid();
    let before = usage::thread_ids();
    let endpoint = bind(sys)?;
    let mut tids: BTreeSet<u32> = usage::thread_ids().difference(&before).copied().collect();
    tids.extend(own);
    let ready = Ready {
        addr: endpoint.local_addr()?,
        label: sys.label(&endpoint),
        tids,
    };
    Ok((endpoint, ready))
}

/// Starts one side's thread: a current-thread runtime, an endpoint bound by `bind` (reported on
/// `ready`), then `body`; the endpoint is closed when `body` returns.
fn spawn_side<S, B, F>(
    name: &str,
    sys: S,
    ready: mpsc::Sender<Result<Ready>>,
    bind: B,
    body: F,
) -> Result<thread::JoinHandle<()>>
where
    S: System,
    B: FnOnce(&S) -> Result<S::Endpoint> + Send + 'static,
    F: FnOnce(&tokio::runtime::Runtime, S::Endpoint) + Send + 'static,
{
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        let bound = runtime().and_then(|rt| {
            let side = bind_side(&rt, &sys, bind)?;
            Ok((rt, side))
        });
        match bound {
            Ok((rt, (endpoint, r))) => {
                let _ = ready.send(Ok(r));
                body(&rt, endpoint.clone());
                rt.block_on(close_endpoint(&endpoint));
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
    spawned.with_context(|| format!("spawning the {name} thread"))
}

/// Closes an endpoint and gives it a moment to tell its peers.
async fn close_endpoint<E: EndpointOps>(endpoint: &E) {
    endpoint.close(perf::CLOSE_DONE, b"bench over");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Runs one workload on one system and measures it.
fn run_phase<S: System, W: Workload>(
    sys: S,
    kind: SystemKind,
    workload: W,
    env: &PhaseEnv<'_>,
) -> Result<Measurement> {
    let opts = env.opts;
    let net = opts.net;
    crate::system::set_ringquic_tuning(opts.ringquic);
    let meter = Arc::new(AtomicU64::new(0));
    let peak_reset = usage::reset_peak_rss();

    // Server side.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Ready>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let identity = env.identity.clone();
    let server = spawn_side(
        "perf-server",
        sys.clone(),
        ready_tx.clone(),
        move |s| {
            let role = Role::Server(config::server_config(&identity, &net)?);
            s.bind(config::endpoint_config(&net)?, role, loopback())
        },
        {
            let (workload, meter, host) = (workload.clone(), meter.clone(), sys.clone());
            move |rt, endpoint| {
                rt.block_on(async {
                    let serve = host.host(&endpoint, workload.serve(endpoint.clone(), meter));
                    tokio::select! {
                        _ = serve => {}
                        _ = stop_rx => {}
                    }
                })
            }
        },
    )?;
    let server_ready = recv_ready(&ready_rx, "server")?;

    // Client side.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Result<Outcome>>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let cert = env.identity.certs.clone();
    let (server_addr, timeout) = (server_ready.addr, opts.phase_timeout);
    let host = sys.clone();
    let client = spawn_side(
        "perf-client",
        sys,
        ready_tx,
        move |s| {
            let role = Role::Client(config::client_config(&Trust::Roots(cert), &net)?);
            s.bind(config::endpoint_config(&net)?, role, loopback())
        },
        {
            let (workload, meter) = (workload.clone(), meter.clone());
            move |rt, endpoint| {
                if go_rx.recv().is_err() {
                    return;
                }
                let outcome = rt.block_on(async {
                    let run = host.host(&endpoint, workload.run(endpoint.clone(), server_addr, meter));
                    match tokio::time::timeout(timeout, run).await {
                        Ok(r) => r.and_then(|r| r),
                        Err(_) => Err(anyhow!("phase timed out after {timeout:?}")),
                    }
                });
                let _ = done_tx.send(outcome);
                // Keep the endpoint (and its threads) alive until the main thread has measured.
                let _ = release_rx.recv();
            }
        },
    )?;
    let client_ready = match recv_ready(&ready_rx, "client") {
        Ok(r) => r,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = server.join();
            return Err(e);
        }
    };

    // Timed part: the main thread samples the meter until the client reports.
    let bar = progress_bar(opts, &workload, &env.label);
    let start = Snapshot::take(&client_ready.tids, &server_ready.tids);
    let t0 = Instant::now();
    let _ = go_tx.send(());
    let mut timeline = Vec::new();
    let mut last = (0.0f64, 0u64);
    let outcome = loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcome) => break outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let (t, v) = (t0.elapsed().as_secs_f64(), meter.load(Ordering::Relaxed));
                timeline.push([t, (v - last.1) as f64 / (t - last.0).max(1e-9)]);
                last = (t, v);
                match workload.total() {
                    Some(_) => bar.set_position(v),
                    None => bar.set_position(t0.elapsed().as_millis() as u64),
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow!("client thread ended without a result"))
            }
        }
    };
    let end = Snapshot::take(&client_ready.tids, &server_ready.tids);
    let (t, v) = (t0.elapsed().as_secs_f64(), meter.load(Ordering::Relaxed));
    // The last, partial interval; too short a one would only add noise to the plot.
    if t > last.0 + 0.05 {
        timeline.push([t, (v - last.1) as f64 / (t - last.0)]);
    }
    let (peak_rss, peak_source) = usage::peak_rss(peak_reset);
    bar.finish_and_clear();

    let _ = release_tx.send(());
    let _ = stop_tx.send(());
    let client_result = client.join();
    let server_result = server.join();
    let outcome = outcome?;
    client_result.map_err(|_| anyhow!("client thread panicked"))?;
    server_result.map_err(|_| anyhow!("server thread panicked"))?;

    Ok(Measurement {
        workload: workload.kind(),
        system: client_ready.label,
        server_label: server_ready.label,
        kind,
        run: 0,
        unit: workload.unit(),
        figure: outcome.amount as f64 / outcome.elapsed_secs.max(1e-9),
        cpu_client: end.client - start.client,
        cpu_server: end.server - start.server,
        cpu_process: end.process - start.process,
        wall_secs: end.wall_since(&start).as_secs_f64(),
        peak_rss,
        peak_source,
        threads: (client_ready.tids.len(), server_ready.tids.len()),
        timeline,
        outcome,
        error: None,
    })
}

fn recv_ready(rx: &mpsc::Receiver<Result<Ready>>, side: &str) -> Result<Ready> {
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("{side} thread did not start"))?
        .with_context(|| format!("starting the {side} endpoint"))
}

fn progress_bar<W: Workload>(opts: &BenchOptions, workload: &W, label: &str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match workload.total() {
        Some(total) => (total, "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"),
        None => (opts.duration.as_millis() as u64, "{msg:32} [{bar:30}] {elapsed}"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    bar
}

/// Runs `workers` loops of `op(worker_index)` back to back until `duration` has passed, timing
/// every call; the first error ends the run.
async fn timed_loops<F, Fut>(workers: usize, duration: Duration, meter: &AtomicU64, op: F) -> Result<Outcome>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let start = Instant::now();
    let worker = |i: usize| {
        let op = &op;
        async move {
            let mut hist = Histogram::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                op(i).await?;
                hist.record(t.elapsed());
                meter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(hist)
        }
    };
    let hists = futures::future::try_join_all((0..workers).map(worker)).await?;
    let elapsed = start.elapsed();
    let mut all = Histogram::new();
    for h in &hists {
        all.merge(h);
    }
    let latency = all.latency();
    let mut outcome = Outcome::new(latency.map_or(0, |l| l.samples), elapsed);
    outcome.latency = latency;
    Ok(outcome)
}
