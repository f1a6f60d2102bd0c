//! What `bench` prints and writes: the table (medians, spread, ratios to quinn), the JSON file
//! with every figure, and the SVG of throughput over time.
//!
//! A [`Report`] collects [`Measurement`]s (from `measure`) as `bench` hands them over and
//! renders them; it knows nothing of how they were taken. The SVG is drawn by `plot`, which gets
//! the panels and lines from here and knows nothing of reports.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    measure::{BenchOptions, Latency, Measurement, Unit, WorkloadKind},
    plot::{self, Panel},
    proto::format_bytes,
    system::SystemKind,
    usage::PeakSource,
};

/// A progress line for stderr about one phase.
pub fn one_line(m: &Measurement) -> String {
    match &m.error {
        Some(e) => format!(
            "{} {} run {}: FAILED: {e}",
            m.workload.name(),
            m.system,
            m.run + 1
        ),
        None => format!(
            "{} {} run {}: {} ({:.2} s CPU in process over {:.2} s)",
            m.workload.name(),
            m.system,
            m.run + 1,
            format_figure(m.unit, m.figure),
            m.cpu_process.total(),
            m.wall_secs
        ),
    }
}

/// The median of each figure over a group's successful runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Successful runs.
    pub runs: usize,
    /// Median units per second.
    pub figure: f64,
    /// Smallest units per second.
    pub min: f64,
    /// Largest units per second.
    pub max: f64,
    /// Half the min–max range as a fraction of the median.
    pub spread: f64,
    /// Median client CPU seconds per normalised unit.
    pub cpu_client: f64,
    /// Median server CPU seconds per normalised unit.
    pub cpu_server: f64,
    /// Median process CPU seconds per normalised unit.
    pub cpu_process: f64,
    /// Median peak RSS in bytes.
    pub peak_rss: f64,
    /// Median of each latency percentile.
    pub latency: Option<Latency>,
    /// Median fraction of datagrams lost (datagrams only).
    pub loss: Option<f64>,
    /// Median figure relative to quinn's (ringquic / quinn).
    pub ratio: Option<f64>,
    /// Median process CPU per unit relative to quinn's.
    pub cpu_ratio: Option<f64>,
}

/// All runs of one workload on one system.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// The workload.
    pub workload: WorkloadKind,
    /// The system as requested.
    pub kind: SystemKind,
    /// The label shown (the resolved backend, once known).
    pub system: String,
    /// Every run.
    pub runs: Vec<Measurement>,
    /// Medians over the successful runs (`None` if none succeeded).
    pub summary: Option<Summary>,
}

/// The machine the bench ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// Total memory in bytes.
    pub memory: u64,
    /// Kernel name and release.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine description (from `/proc` where available).
    pub fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        let memory = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
                line.split_ascii_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(0, |kib| kib * 1024);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| format!("Linux {}", r.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory,
            kernel,
        }
    }

    /// One line: `2 × Intel(R) … , 24.00 GiB, Linux 6.1.0`.
    pub fn describe(&self) -> String {
        format!(
            "{} × {}, {} RAM, {}",
            self.cores,
            self.cpu,
            format_bytes(self.memory as f64),
            self.kernel
        )
    }
}

/// Everything one `bench` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The options it ran with.
    pub options: BenchOptions,
    /// One group per workload and system, in table order.
    pub groups: Vec<Group>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_of(runs: &[&Measurement], f: impl Fn(&Measurement) -> f64) -> f64 {
    median(&mut runs.iter().map(|m| f(m)).collect::<Vec<_>>())
}

impl Report {
    /// An empty report for a run with `options`.
    pub fn new(options: &BenchOptions) -> Self {
        Report {
            machine: Machine::detect(),
            options: options.clone(),
            groups: Vec::new(),
        }
    }

    /// Adds one phase's measurement and refreshes the summaries.
    pub fn push(&mut self, workload: WorkloadKind, m: Measurement) {
        let kind = m.kind;
        let idx = match self
            .groups
            .iter()
            .position(|g| g.workload == workload && g.kind == kind)
        {
            Some(i) => i,
            None => {
                self.groups.push(Group {
                    workload,
                    kind,
                    system: kind.name(),
                    runs: Vec::new(),
                    summary: None,
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[idx];
        if m.error.is_none() {
            group.system = m.system.clone();
        }
        group.runs.push(m);
        self.summarise();
    }

    /// Whether any phase failed.
    pub fn any_failed(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.runs.iter().any(|m| m.error.is_some()))
    }

    fn summarise(&mut self) {
        for g in &mut self.groups {
            let ok: Vec<&Measurement> = g.runs.iter().filter(|m| m.error.is_none()).collect();
            if ok.is_empty() {
                g.summary = None;
                continue;
            }
            let figure = median_of(&ok, |m| m.figure);
            let min = ok.iter().map(|m| m.figure).fold(f64::INFINITY, f64::min);
            let max = ok.iter().map(|m| m.figure).fold(0.0, f64::max);
            let latency = ok.iter().all(|m| m.outcome.latency.is_some()).then(|| {
                let pick = |f: fn(&Latency) -> f64| {
                    median_of(&ok, |m| m.outcome.latency.as_ref().map_or(f64::NAN, f))
                };
                Latency {
                    p50_us: pick(|l| l.p50_us),
                    p99_us: pick(|l| l.p99_us),
                    p999_us: pick(|l| l.p999_us),
                    max_us: pick(|l| l.max_us),
                    samples: ok
                        .iter()
                        .filter_map(|m| m.outcome.latency.map(|l| l.samples))
                        .sum(),
                }
            });
            let loss = ok.iter().all(|m| m.outcome.extra.contains_key("sent")).then(|| {
                median_of(&ok, |m| {
                    let sent = m.outcome.extra.get("sent").copied().unwrap_or(0.0);
                    let lost = m.outcome.extra.get("lost").copied().unwrap_or(0.0);
                    if sent > 0.0 {
                        lost / sent
                    } else {
                        0.0
                    }
                })
            });
            g.summary = Some(Summary {
                runs: ok.len(),
                figure,
                min,
                max,
                spread: if figure > 0.0 {
                    (max - min) / 2.0 / figure
                } else {
                    0.0
                },
                cpu_client: median_of(&ok, |m| m.cpu_per_unit(m.cpu_client)),
                cpu_server: median_of(&ok, |m| m.cpu_per_unit(m.cpu_server)),
                cpu_process: median_of(&ok, |m| m.cpu_per_unit(m.cpu_process)),
                peak_rss: median_of(&ok, |m| m.peak_rss as f64),
                latency,
                loss,
                ratio: None,
                cpu_ratio: None,
            });
        }
        // Ratios against the baseline of the same workload.
        let baselines: Vec<(WorkloadKind, f64, f64)> = self
            .groups
            .iter()
            .filter(|g| g.kind.is_baseline())
            .filter_map(|g| {
                let s = g.summary.as_ref()?;
                Some((g.workload, s.figure, s.cpu_process))
            })
            .collect();
        for g in &mut self.groups {
            let base = baselines.iter().find(|b| b.0 == g.workload);
            if let (Some(s), Some(&(_, fig, cpu))) = (g.summary.as_mut(), base) {
                s.ratio = (fig > 0.0).then(|| s.figure / fig);
                s.cpu_ratio = (cpu > 0.0 && cpu.is_finite()).then(|| s.cpu_process / cpu);
            }
        }
    }

    /// The table, with a header that describes the machine and how figures were measured.
    pub fn table(&self) -> String {
        let o = &self.options;
        let source = self
            .groups
            .iter()
            .flat_map(|g| &g.runs)
            .find(|m| m.error.is_none())
            .map(|m| m.peak_source);
        let peak = match (source, o.isolate) {
            (Some(PeakSource::MaxRssLifetime), _) => "ru_maxrss of the process (lifetime peak)",
            (_, true) => "VmHWM of the phase's own process (both sides), reset when the phase starts",
            (_, false) => "VmHWM of the process (both sides), reset before each phase",
        };
        let mut out = String::new();
        let _ = writeln!(out, "ringquic-perf bench on {}", self.machine.describe());
        let _ = writeln!(
            out,
            "loopback; {}; MTU initial {} / max UDP payload {}; {} run(s) per system, medians; \
             spread = ±half the min–max range",
            o.net.cipher, o.net.initial_mtu, o.net.max_udp_payload, o.runs
        );
        if let Some(t) = o.ringquic.describe() {
            let _ = writeln!(out, "ringquic rows with: {t}");
        }
        let _ = writeln!(
            out,
            "CPU = user+sys seconds per unit during the timed part: client / server = that side's \
             runtime thread + its endpoint's I/O threads (/proc/self/task/*/stat), process = \
             getrusage(RUSAGE_SELF){}; peak RSS = {peak}",
            if o.isolate { " of the phase's process" } else { "" }
        );
        let _ = writeln!(out);
        let header = [
            "workload",
            "system",
            "result",
            "spread",
            "detail",
            "CPU client",
            "server",
            "process",
            "per",
            "peak RSS",
            "×quinn",
            "CPU ×quinn",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for g in &self.groups {
            rows.push(group_row(g));
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let left = [
            true, true, false, false, true, false, false, false, true, false, false, false,
        ];
        for (i, row) in rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c > 0 {
                    line.push_str("  ");
                }
                if left[c] {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                } else {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                let _ = writeln!(out, "{}", "-".repeat(total));
            }
        }
        // A sharded server: how its CPU spread over its threads (each run's share per thread).
        for g in &self.groups {
            for m in g.runs.iter().filter(|m| m.error.is_none()) {
                let io = m
                    .server_threads
                    .iter()
                    .filter(|(n, _)| n == "ringquic-io")
                    .count();
                if io < 2 {
                    continue;
                }
                let total: f64 = m.server_threads.iter().map(|(_, c)| c).sum();
                let shares: Vec<String> = m
                    .server_threads
                    .iter()
                    .map(|(n, c)| format!("{n} {:.0}%", 100.0 * c / total.max(1e-9)))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {} {} run {}: server CPU {:.2} s over {} threads: {}",
                    g.workload.name(),
                    m.system,
                    m.run + 1,
                    total,
                    m.server_threads.len(),
                    shares.join(", ")
                );
            }
        }
        for g in &self.groups {
            for m in &g.runs {
                if let Some(e) = &m.error {
                    let _ = writeln!(
                        out,
                        "! {} {} run {} failed: {e}",
                        g.workload.name(),
                        m.system,
                        m.run + 1
                    );
                }
            }
        }
        out
    }

    /// Writes every figure as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), self)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Draws throughput over time, one panel per workload and one line per system (its first
    /// successful run).
    pub fn write_svg(&self, path: &Path) -> Result<()> {
        let mut workloads: Vec<_> = self.groups.iter().map(|g| g.workload).collect();
        workloads.dedup();
        let panels: Vec<Panel<'_>> = workloads
            .into_iter()
            .map(|workload| {
                let lines: Vec<(&str, Unit, &[[f64; 2]])> = self
                    .groups
                    .iter()
                    .filter(|g| g.workload == workload)
                    .filter_map(|g| {
                        let m = g.runs.iter().find(|m| m.error.is_none())?;
                        Some((g.system.as_str(), m.unit, m.timeline.as_slice()))
                    })
                    .collect();
                Panel {
                    title: workload.name(),
                    unit: lines.first().map_or(Unit::Bytes, |l| l.1),
                    lines: lines.into_iter().map(|(name, _, t)| (name, t)).collect(),
                }
            })
            .collect();
        plot::draw(&panels, path)
    }
}

fn group_row(g: &Group) -> Vec<String> {
    let mut row = vec![g.workload.name().to_owned(), g.system.clone()];
    let Some(s) = &g.summary else {
        row.push("FAILED".into());
        row.extend(std::iter::repeat_n(String::new(), 9));
        return row;
    };
    let unit = g
        .runs
        .iter()
        .find(|m| m.error.is_none())
        .map_or(Unit::Bytes, |m| m.unit);
    row.push(format_figure(unit, s.figure));
    row.push(if s.runs > 1 {
        format!("±{:.1}%", s.spread * 100.0)
    } else {
        "-".into()
    });
    let detail = match (&s.latency, s.loss) {
        (_, Some(loss)) => format!("lost {:.2}%", loss * 100.0),
        (Some(l), None) => format!(
            "p50/p99/p999 {} / {} / {}",
            format_us(l.p50_us),
            format_us(l.p99_us),
            format_us(l.p999_us)
        ),
        (None, None) => String::new(),
    };
    row.push(detail);
    for cpu in [s.cpu_client, s.cpu_server, s.cpu_process] {
        row.push(format_cpu(cpu));
    }
    row.push(format!("s/{}", unit.cpu_label()));
    row.push(format_bytes(s.peak_rss));
    row.push(s.ratio.map_or("-".into(), |r| format!("{r:.2}")));
    row.push(s.cpu_ratio.map_or("-".into(), |r| format!("{r:.2}")));
    row
}

/// Three significant digits (at least one decimal), `-` when unknown.
fn format_cpu(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let decimals = if v > 0.0 {
        (2 - v.log10().floor() as i32).clamp(1, 6) as usize
    } else {
        1
    };
    format!("{v:.decimals$}")
}

fn format_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Formats a rate in `unit`s per second, e.g. `612.3 MiB/s` or `41.2k req/s`.
pub fn format_figure(unit: Unit, per_sec: f64) -> String {
    let suffix = match unit {
        Unit::Bytes => return format!("{}/s ({:.2} Gbit/s)", format_bytes(per_sec), per_sec * 8.0 / 1e9),
        Unit::Requests => "req/s",
        Unit::Connections => "conn/s",
        Unit::Datagrams => "dgram/s",
    };
    if per_sec >= 10_000.0 {
        format!("{:.1}k {suffix}", per_sec / 1000.0)
    } else {
        format!("{per_sec:.0} {suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{measure::Outcome, usage::CpuTimes};

    fn ok(workload: WorkloadKind, kind: SystemKind, figure: f64, cpu: f64) -> Measurement {
        let mut m = Measurement::failed(workload, kind, 0, String::new());
        m.error = None;
        m.unit = Unit::Bytes;
        m.figure = figure;
        m.outcome = Outcome {
            amount: 1 << 30,
            elapsed_secs: 1.0,
            ..Outcome::default()
        };
        m.cpu_process = CpuTimes { user: cpu, sys: 0.0 };
        m
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn summary_and_ratio() {
        let opts = BenchOptions::default();
        let mut r = Report::new(&opts);
        let ring = SystemKind::Ringquic(None);
        r.push(
            WorkloadKind::Bulk,
            ok(WorkloadKind::Bulk, SystemKind::Quinn, 100.0, 2.0),
        );
        r.push(WorkloadKind::Bulk, ok(WorkloadKind::Bulk, ring, 150.0, 1.0));
        r.push(
            WorkloadKind::Bulk,
            ok(WorkloadKind::Bulk, SystemKind::Quinn, 120.0, 2.0),
        );
        r.push(WorkloadKind::Bulk, ok(WorkloadKind::Bulk, ring, 170.0, 1.0));
        r.push(WorkloadKind::Bulk, ok(WorkloadKind::Bulk, ring, 160.0, 1.0));
        let q = r.groups[0].summary.clone().unwrap();
        assert_eq!(q.figure, 110.0);
        assert!((q.spread - 10.0 / 110.0).abs() < 1e-9);
        let s = r.groups[1].summary.clone().unwrap();
        assert_eq!(s.figure, 160.0);
        assert!((s.ratio.unwrap() - 160.0 / 110.0).abs() < 1e-9);
        assert!((s.cpu_ratio.unwrap() - 0.5).abs() < 1e-9);
        let table = r.table();
        assert!(table.contains("bulk"), "{table}");
        assert!(table.contains("1.45"), "{table}");
        assert!(!r.any_failed());
    }

    #[test]
    fn failures_are_reported() {
        let mut r = Report::new(&BenchOptions::default());
        r.push(
            WorkloadKind::Rr,
            Measurement::failed(WorkloadKind::Rr, SystemKind::Quinn, 0, "boom".into()),
        );
        assert!(r.any_failed());
        let table = r.table();
        assert!(table.contains("FAILED") && table.contains("boom"), "{table}");
    }

    #[test]
    fn figures() {
        assert_eq!(format_figure(Unit::Requests, 41234.0), "41.2k req/s");
        assert_eq!(format_figure(Unit::Connections, 812.4), "812 conn/s");
        assert!(format_figure(Unit::Bytes, 1048576.0).starts_with("1.00 MiB/s"));
        assert_eq!(format_us(250.0), "250 µs");
        assert_eq!(format_us(2500.0), "2.50 ms");
        assert_eq!(format_cpu(2.3684), "2.37");
        assert_eq!(format_cpu(0.00412), "0.00412");
        assert_eq!(format_cpu(12.345), "12.3");
        assert_eq!(format_cpu(0.0), "0.0");
        assert_eq!(format_cpu(f64::NAN), "-");
    }
}
