//! The `bench` subcommand: every workload on every system, in one run.
//!
//! This module only orchestrates: which phases run, in which order, in this process or in a
//! child process each, and it collects their measurements into a [`Report`]. How one phase runs
//! and is measured is `phase`; the contract a workload implements is [`workload`]; the workloads
//! themselves, written once and generic over [`System`](crate::system::System), are the other
//! submodules (`transfer` holds both download workloads, `bulk` and `streams`; `h3` both HTTP/3
//! ones, `h3-rr` and `h3-bulk`). Arrows point
//! down only: `bench` uses its submodules, they never use `bench`, and the workloads see only
//! [`workload`] (not `phase`, nor each other).

pub mod datagrams;
pub mod h3;
pub mod handshakes;
mod phase;
pub mod rr;
pub mod transfer;
pub mod workload;

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use self::{
    phase::{run_phase, PhaseEnv},
    workload::{Workload, SERVER_NAME},
};
use crate::{
    config::{self, Identity},
    measure::{BenchOptions, Measurement, WorkloadKind},
    report::{self, Report},
    system::SystemKind,
    with_system,
};

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
                eprintln!("{}", report::one_line(&m));
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
    /// The server's certificate and key, the same for every phase.
    pub identity: Identity,
}

/// The hidden `phase` subcommand: reads a [`PhaseSpec`] from stdin, runs it in this process and
/// prints the [`Measurement`] as JSON on stdout.
pub fn phase_main() -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the phase spec")?;
    let spec: PhaseSpec = serde_json::from_str(&input).context("parsing the phase spec")?;
    let identity = Arc::new(spec.identity);
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
            identity: identity.clone(),
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
        WorkloadKind::Bulk => dispatch(system, transfer::Bulk { size: opts.size }, &env),
        WorkloadKind::Streams => dispatch(
            system,
            transfer::Streams {
                count: opts.streams,
                size: opts.stream_size,
                concurrency: opts.concurrency,
            },
            &env,
        ),
        WorkloadKind::Rr => dispatch(
            system,
            rr::RequestResponse {
                connections: opts.connections,
                streams: opts.rr_streams,
                size: opts.rr_size,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::Handshakes => dispatch(
            system,
            handshakes::Handshakes {
                concurrency: opts.connections,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::Datagrams => dispatch(
            system,
            datagrams::Datagrams {
                size: opts.datagram_size,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::H3Rr => dispatch(
            system,
            h3::H3Requests {
                concurrency: opts.connections * opts.rr_streams,
                size: opts.rr_size,
                duration: opts.duration,
            },
            &env,
        ),
        WorkloadKind::H3Bulk => dispatch(system, h3::H3Bulk { size: opts.size }, &env),
        WorkloadKind::All => Err(anyhow!("`all` is not a single workload")),
    };
    result
        .unwrap_or_else(|e| Measurement::failed(kind, system, run, format!("{e:#}")))
        .with_run(run)
}

fn dispatch<W: Workload>(system: SystemKind, workload: W, env: &PhaseEnv<'_>) -> Result<Measurement> {
    with_system!(system, sys => run_phase(sys, system, workload, env))
}
