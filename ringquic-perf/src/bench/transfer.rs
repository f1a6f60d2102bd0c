//! `bulk`: one connection, one stream, one large download.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Instant,
};

use anyhow::{Context, Result};

use super::workload::{Workload, SERVER_NAME};
use crate::{
    measure::{Outcome, Unit, WorkloadKind},
    perf::{self, Request},
    system::{ConnOps, EndpointOps},
};

/// Downloads `size` bytes on a single stream of a single connection.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// Bytes to download.
    pub size: u64,
}

impl Workload for Bulk {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Bulk
    }

    fn unit(&self) -> Unit {
        Unit::Bytes
    }

    fn total(&self) -> Option<u64> {
        Some(self.size)
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
        perf::request(&conn, req, &meter).await.context("bulk download")?;
        let elapsed = start.elapsed();
        conn.close(perf::CLOSE_DONE, b"done");
        Ok(Outcome::new(self.size, elapsed))
    }
}
