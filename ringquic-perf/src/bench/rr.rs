//! `rr`: small requests and responses over many connections, for requests per second and
//! latency percentiles.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use anyhow::Result;

use super::workload::{timed_loops, Workload, SERVER_NAME};
use crate::{
    measure::{Outcome, Unit, WorkloadKind},
    perf::{self, Request},
    system::{ConnOps, EndpointOps},
};

/// `connections` connections with `streams` request loops each, for `duration`.
#[derive(Debug, Clone)]
pub struct RequestResponse {
    /// Connections to open.
    pub connections: u64,
    /// Concurrent request loops per connection (each request is a new stream).
    pub streams: u64,
    /// Request and response payload size in bytes.
    pub size: u64,
    /// How long to run.
    pub duration: Duration,
}

impl Workload for RequestResponse {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Rr
    }

    fn unit(&self) -> Unit {
        Unit::Requests
    }

    fn total(&self) -> Option<u64> {
        None
    }

    async fn run<E: EndpointOps>(
        self,
        endpoint: E,
        server: SocketAddr,
        meter: Arc<AtomicU64>,
    ) -> Result<Outcome> {
        let connecting = (0..self.connections.max(1)).map(|_| endpoint.connect(server, SERVER_NAME));
        let conns = futures::future::try_join_all(connecting).await?;
        let req = Request {
            upload: self.size,
            download: self.size,
            uni: false,
        };
        let workers = conns.len() * self.streams.max(1) as usize;
        let ignored = AtomicU64::new(0);
        let result = timed_loops(workers, self.duration, &meter, |i| {
            perf::request(&conns[i % conns.len()], req, &ignored)
        })
        .await;
        for c in &conns {
            c.close(perf::CLOSE_DONE, b"done");
        }
        result
    }
}
