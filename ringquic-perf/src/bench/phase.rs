//! One phase: one workload on one system, measured.
//!
//! A server thread and a client thread, each with its own tokio current-thread runtime and its
//! own endpoint, talk over loopback. The main thread measures (CPU per side and per process, peak
//! memory, progress over time) and draws the progress bar. It drives any [`Workload`] and knows no
//! workload by name; `bench` (the orchestrator) decides which phases run and calls [`run_phase`].

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::workload::{Client, Workload};
use crate::{
    config::{self, Identity, NetOptions, Trust},
    measure::{BenchOptions, Measurement, Outcome},
    perf,
    system::{EndpointOps, Role, System, SystemKind},
    usage::{self, CpuTimes, Snapshot},
};

/// What every phase needs besides the system and the workload.
pub(super) struct PhaseEnv<'a> {
    /// The bench options.
    pub opts: &'a BenchOptions,
    /// The server's certificate, trusted by the client.
    pub identity: Arc<Identity>,
    /// The progress bar's label.
    pub label: String,
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

/// Binds an endpoint on loopback for the role `role` makes, on the calling thread and inside
/// `rt`, and reports which threads it uses.
fn bind_side<S: System>(
    rt: &tokio::runtime::Runtime,
    sys: &S,
    net: &NetOptions,
    role: impl FnOnce() -> Result<Role>,
) -> Result<(S::Endpoint, Ready)> {
    let _guard = rt.enter();
    let own = usage::current_tid();
    let before = usage::thread_ids();
    let endpoint = sys.bind(config::endpoint_config(net)?, role()?, loopback())?;
    let mut tids: BTreeSet<u32> = usage::thread_ids().difference(&before).copied().collect();
    tids.extend(own);
    let ready = Ready {
        addr: endpoint.local_addr()?,
        label: sys.label(&endpoint),
        tids,
    };
    Ok((endpoint, ready))
}

/// Starts one side's thread: a current-thread runtime, an endpoint bound for the role `role`
/// makes (reported on `ready`), then `body`; the endpoint is closed when `body` returns.
fn spawn_side<S, R, F>(
    name: &str,
    sys: S,
    net: NetOptions,
    ready: mpsc::Sender<Result<Ready>>,
    role: R,
    body: F,
) -> Result<thread::JoinHandle<()>>
where
    S: System,
    R: FnOnce() -> Result<Role> + Send + 'static,
    F: FnOnce(&tokio::runtime::Runtime, S::Endpoint) + Send + 'static,
{
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        let bound = runtime().and_then(|rt| {
            let side = bind_side(&rt, &sys, &net, role)?;
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
pub(super) fn run_phase<S: System, W: Workload>(
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
        net,
        ready_tx.clone(),
        move || Ok(Role::Server(config::server_config(&identity, &net)?)),
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
        net,
        ready_tx,
        move || Ok(Role::Client(config::client_config(&Trust::Roots(cert), &net)?)),
        {
            let (workload, meter) = (workload.clone(), meter.clone());
            move |rt, endpoint| {
                if go_rx.recv().is_err() {
                    return;
                }
                let outcome = rt.block_on(async {
                    let client = Client {
                        endpoint: endpoint.clone(),
                        server: server_addr,
                        meter,
                    };
                    let run = host.host(&endpoint, workload.run(client));
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
        workload: W::KIND,
        system: client_ready.label,
        server_label: server_ready.label,
        kind,
        run: 0,
        unit: W::KIND.unit(),
        figure: outcome.amount as f64 / outcome.elapsed_secs.max(1e-9),
        cpu_client: end.client - start.client,
        cpu_server: end.server - start.server,
        cpu_process: end.process - start.process,
        wall_secs: end.wall_since(&start).as_secs_f64(),
        peak_rss,
        peak_source,
        threads: (client_ready.tids.len(), server_ready.tids.len()),
        server_threads: server_thread_cpu(&start, &end),
        timeline,
        outcome,
        error: None,
    })
}

/// Each server thread's CPU between two snapshots, named, busiest first.
fn server_thread_cpu(start: &Snapshot, end: &Snapshot) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = end
        .server_threads
        .iter()
        .map(|(tid, name, cpu)| {
            let before = start
                .server_threads
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(CpuTimes::default(), |&(_, _, c)| c);
            (name.clone(), (*cpu - before).total())
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
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
