//! `streams`: one connection, many downloads of a fixed size, some at a time.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Instant,
};

use anyhow::{ensure, Result};

use super::workload::{Workload, SERVER_NAME};
use crate::{
    measure::{Outcome, Unit, WorkloadKind},
    perf::{self, Request},
    system::{ConnOps, EndpointOps},
};

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
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Streams
    }

    fn unit(&self) -> Unit {
        Unit::Bytes
    }

    fn total(&self) -> Option<u64> {
        Some(self.count * self.size)
    }

    async fn run<E: EndpointOps>(
        self,
        endpoint: E,
        server: SocketAddr,
        meter: Arc<AtomicU64>,
    ) -> Result<Outcome> {
        let conn = endpoint.connect(server, SERVER_NAME).await?;
        let start = Instant::now();
        let req = Request {
            upload: 0,
            download: self.size,
            uni: false,
        };
        let tally = perf::run_requests(&conn, req, self.count, self.concurrency, &meter).await?;
        let elapsed = start.elapsed();
        conn.close(perf::CLOSE_DONE, b"done");
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
