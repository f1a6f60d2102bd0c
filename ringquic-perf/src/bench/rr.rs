//! `rr`: small requests and responses over many connections, for requests per second and
//! latency percentiles.

use std::{sync::atomic::AtomicU64, time::Duration};

use anyhow::Result;

use super::workload::{Client, Workload};
use crate::{
    measure::{Outcome, WorkloadKind},
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
    const KIND: WorkloadKind = WorkloadKind::Rr;

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let connecting = (0..self.connections.max(1)).map(|_| client.connect());
        let conns = futures::future::try_join_all(connecting).await?;
        let req = Request::bi(self.size, self.size);
        let workers = conns.len() * self.streams.max(1) as usize;
        let ignored = AtomicU64::new(0);
        let result = client
            .timed_loops(workers, self.duration, |i| {
                perf::request(&conns[i % conns.len()], req, &ignored)
            })
            .await;
        for c in &conns {
            c.close(perf::CLOSE_DONE, b"done");
        }
        result
    }
}
