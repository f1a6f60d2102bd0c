//! The contract between the phase runner (`bench::phase`) and the workloads (the other
//! submodules of `bench`): the [`Workload`] trait, the [`Client`] a workload's client side
//! drives, and the patterns several workloads share (one timed connection, timed loops).
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
    measure::{Histogram, Outcome, WorkloadKind},
    perf,
    system::{ConnOps, EndpointOps},
};

/// The server name every bench client connects to.
pub const SERVER_NAME: &str = "localhost";

/// A workload: its server side (the perf server unless overridden) and its client side.
///
/// Both run inside their side's runtime; `meter` is the live counter the main thread samples for
/// the progress bar and the throughput-over-time plot.
pub trait Workload: Clone + Send + Sync + 'static {
    /// Which workload this is; what it counts is [`WorkloadKind::unit`] of it.
    const KIND: WorkloadKind;
    /// The total the meter reaches at the end, for sized workloads (`None`: timed).
    fn total(&self) -> Option<u64> {
        None
    }
    /// The server side; runs until the endpoint closes.
    fn serve<E: EndpointOps>(self, endpoint: E, meter: Arc<AtomicU64>) -> impl Future<Output = ()> + Send {
        let _ = meter;
        perf::serve(endpoint)
    }
    /// The client side; returns what the timed part achieved.
    fn run<E: EndpointOps>(self, client: Client<E>) -> impl Future<Output = Result<Outcome>> + Send;
}

/// A workload's client side: its endpoint, the phase's server and the live meter.
pub struct Client<E> {
    /// The client endpoint.
    pub endpoint: E,
    /// The server's address.
    pub server: SocketAddr,
    /// Units completed so far, sampled by the main thread.
    pub meter: Arc<AtomicU64>,
}

impl<E: EndpointOps> Client<E> {
    /// Connects to the phase's server.
    pub async fn connect(&self) -> Result<E::Conn> {
        self.endpoint.connect(self.server, SERVER_NAME).await
    }

    /// Connects, times `work` on the connection, then closes it; returns what `work` returned and
    /// how long it took.
    pub async fn timed_on_connection<T, Fut>(
        &self,
        work: impl FnOnce(E::Conn) -> Fut,
    ) -> Result<(T, Duration)>
    where
        Fut: Future<Output = Result<T>>,
    {
        let conn = self.connect().await?;
        let start = Instant::now();
        let result = work(conn.clone()).await;
        let elapsed = start.elapsed();
        perf::report_conn_stats("client", &conn);
        conn.close(perf::CLOSE_DONE, b"done");
        Ok((result?, elapsed))
    }

    /// Runs `workers` loops of `op(worker_index)` back to back until `duration` has passed, timing
    /// every call and counting it on the meter; the first error ends the run.
    pub async fn timed_loops<F, Fut>(&self, workers: usize, duration: Duration, op: F) -> Result<Outcome>
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
                    self.meter.fetch_add(1, Ordering::Relaxed);
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
}
