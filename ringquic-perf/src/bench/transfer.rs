//! The download workloads, both on one connection: `bulk` (one stream, one large download) and
//! `streams` (many downloads of a fixed size, some at a time).

use anyhow::{ensure, Context, Result};

use super::workload::{Client, Workload};
use crate::{
    measure::{Outcome, WorkloadKind},
    perf::{self, Request},
    system::EndpointOps,
};

/// Downloads `size` bytes on a single stream of a single connection.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// Bytes to download.
    pub size: u64,
}

impl Workload for Bulk {
    const KIND: WorkloadKind = WorkloadKind::Bulk;

    fn total(&self) -> Option<u64> {
        Some(self.size)
    }

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let (req, meter) = (Request::bi(0, self.size), &client.meter);
        let ((), elapsed) = client
            .timed_on_connection(|conn| async move {
                perf::request(&conn, req, meter).await.context("bulk download")
            })
            .await?;
        Ok(Outcome::new(self.size, elapsed))
    }
}

/// Downloads `count` streams of `size` bytes each, `concurrency` at a time, on one connection.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Number of streams (requests).
    pub count: u64,
    /// Bytes per stream.
    pub size: u64,
    /// Streams in flight at once.
    pub concurrency: u64,
}

impl Workload for Streams {
    const KIND: WorkloadKind = WorkloadKind::Streams;

    fn total(&self) -> Option<u64> {
        Some(self.count * self.size)
    }

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let (req, meter) = (Request::bi(0, self.size), &client.meter);
        let (tally, elapsed) = client
            .timed_on_connection(|conn| async move {
                perf::run_requests(&conn, req, self.count, self.concurrency, meter).await
            })
            .await?;
        ensure!(
            tally.failed == 0,
            "{} of {} streams failed: {}",
            tally.failed,
            self.count,
            tally.errors.join("; ")
        );
        Ok(Outcome::new(self.count * self.size, elapsed))
    }
}
