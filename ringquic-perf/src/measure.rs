//! What a bench run is told and what it measures: the workloads and what each counts, the
//! options, a phase's [`Outcome`] (what its client achieved) and [`Measurement`] (that, plus the
//! CPU, memory and timeline the phase runner read around it).
//!
//! Plain data (serde) and its arithmetic. It sits below everything that makes or shows these
//! values: it knows nothing of how phases run (`bench`) or how results are shown (`report`,
//! `plot`), which all use it.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal,
    time::Duration,
};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::{
    config::NetOptions,
    system::{RingquicTuning, SystemKind},
    usage::{CpuTimes, PeakSource},
};

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
    /// HTTP/3 (h3 on h3-quinn or ringquic-h3): small GETs on one connection, many in flight.
    #[value(name = "h3-rr")]
    #[serde(rename = "h3-rr")]
    H3Rr,
    /// HTTP/3: one large GET on one connection.
    #[value(name = "h3-bulk")]
    #[serde(rename = "h3-bulk")]
    H3Bulk,
    /// All of the above.
    All,
}

impl WorkloadKind {
    /// Every concrete workload, in the order the table shows them.
    pub const EVERY: [WorkloadKind; 7] = [
        WorkloadKind::Bulk,
        WorkloadKind::Streams,
        WorkloadKind::Rr,
        WorkloadKind::Handshakes,
        WorkloadKind::Datagrams,
        WorkloadKind::H3Rr,
        WorkloadKind::H3Bulk,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Bulk => "bulk",
            WorkloadKind::Streams => "streams",
            WorkloadKind::Rr => "rr",
            WorkloadKind::Handshakes => "handshakes",
            WorkloadKind::Datagrams => "datagrams",
            WorkloadKind::H3Rr => "h3-rr",
            WorkloadKind::H3Bulk => "h3-bulk",
            WorkloadKind::All => "all",
        }
    }

    /// What it counts (`all` counts bytes, like its first workload).
    pub fn unit(self) -> Unit {
        match self {
            WorkloadKind::Bulk | WorkloadKind::Streams | WorkloadKind::H3Bulk | WorkloadKind::All => {
                Unit::Bytes
            }
            WorkloadKind::Rr | WorkloadKind::H3Rr => Unit::Requests,
            WorkloadKind::Handshakes => Unit::Connections,
            WorkloadKind::Datagrams => Unit::Datagrams,
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

/// Everything `bench` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Workloads to run (`all` expanded).
    pub workloads: Vec<WorkloadKind>,
    /// Systems to compare; quinn is the baseline for ratios.
    pub systems: Vec<SystemKind>,
    /// Repetitions of every phase.
    pub runs: usize,
    /// `bulk`, `h3-bulk`: download size in bytes.
    pub size: u64,
    /// `streams`: number of streams.
    pub streams: u64,
    /// `streams`: bytes per stream.
    pub stream_size: u64,
    /// `streams`: streams at a time.
    pub concurrency: u64,
    /// `rr`: connections; `handshakes`: connection attempts at a time; `h3-rr`: times
    /// `rr_streams`, the GETs in flight on its one connection.
    pub connections: u64,
    /// `rr`: concurrent streams per connection.
    pub rr_streams: u64,
    /// `rr`: request and response size in bytes; `h3-rr`: response body size.
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
    pub ringquic: RingquicTuning,
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

/// One phase: one workload on one system, one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// The workload.
    pub workload: WorkloadKind,
    /// The client endpoint's system label, e.g. `quinn` or `ringquic/uring`.
    pub system: String,
    /// The server endpoint's system label.
    pub server_label: String,
    /// The system as requested.
    pub kind: SystemKind,
    /// Which repetition (0-based).
    pub run: usize,
    /// What the figure counts.
    pub unit: Unit,
    /// Units per second.
    pub figure: f64,
    /// CPU time of the client's threads during the timed part.
    pub cpu_client: CpuTimes,
    /// CPU time of the server's threads during the timed part.
    pub cpu_server: CpuTimes,
    /// CPU time of the whole process during the timed part.
    pub cpu_process: CpuTimes,
    /// Wall time of the timed part, in seconds (includes connection setup).
    pub wall_secs: f64,
    /// Peak resident memory of the process in bytes.
    pub peak_rss: u64,
    /// How `peak_rss` was measured.
    pub peak_source: PeakSource,
    /// How many threads each side ran on (client, server).
    pub threads: (usize, usize),
    /// CPU seconds of each of the server's threads during the timed part, by thread name
    /// (its runtime thread and its endpoint's I/O threads, one per shard), busiest first.
    #[serde(default)]
    pub server_threads: Vec<(String, f64)>,
    /// `[seconds since start, units per second over the last interval]`.
    pub timeline: Vec<[f64; 2]>,
    /// What the workload reported.
    pub outcome: Outcome,
    /// Why the phase failed, if it did.
    pub error: Option<String>,
}

impl Measurement {
    /// A phase that could not complete.
    pub fn failed(workload: WorkloadKind, kind: SystemKind, run: usize, error: String) -> Self {
        Measurement {
            workload,
            system: kind.name(),
            server_label: kind.name(),
            kind,
            run,
            unit: Unit::Bytes,
            figure: 0.0,
            cpu_client: CpuTimes::default(),
            cpu_server: CpuTimes::default(),
            cpu_process: CpuTimes::default(),
            wall_secs: 0.0,
            peak_rss: 0,
            peak_source: PeakSource::MaxRssLifetime,
            threads: (0, 0),
            server_threads: Vec::new(),
            timeline: Vec::new(),
            outcome: Outcome::default(),
            error: Some(error),
        }
    }

    /// The same measurement, tagged with its repetition number.
    pub fn with_run(mut self, run: usize) -> Self {
        self.run = run;
        self
    }

    /// CPU seconds per normalised unit (per GiB or per 1000), for a CPU reading of this phase.
    pub fn cpu_per_unit(&self, cpu: CpuTimes) -> f64 {
        let amount = self.outcome.amount as f64;
        if amount > 0.0 {
            cpu.total() / amount * self.unit.cpu_scale()
        } else {
            f64::NAN
        }
    }
}
