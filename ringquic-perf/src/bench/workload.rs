//! The contract between the phase runner (`bench::phase`) and the workloads (the other
//! submodules of `bench`): the [`Workload`] trait, the server name, and the timed loop that the
//! timed workloads share.
//!
//! Workloads use this module and the layers below it (`measure`, `perf`, `system`), never
//! `bench` itself, and this module uses nothing of `bench`: the orchestrator depends on the
//! workloads, not the other way round.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    measure::{Histogram, Outcome, Unit, WorkloadKind},
    perf,
    system::EndpointOps,
};

/// The server name every bench client connects to.
pub const SERVER_NAME: &str = "localhost";

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

/// Runs `workers` loops of `op(worker_index)` back to back until `duration` has passed, timing
/// every call; the first error ends the run.
pub async fn timed_loops<F, Fut>(
    workers: usize,
    duration: Duration,
    meter: &AtomicU64,
    op: F,
) -> Result<Outcome>
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
