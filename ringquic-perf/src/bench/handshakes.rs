//! `handshakes`: new connections per second, each with one small request.

use std::{sync::atomic::AtomicU64, time::Duration};

use anyhow::Result;

use super::workload::{Client, Workload};
use crate::{
    measure::{Outcome, WorkloadKind},
    perf::{self, Request},
    system::{ConnOps, EndpointOps},
};

/// The request made on every new connection.
const REQUEST: Request = Request::bi(64, 64);

/// `concurrency` loops that each connect, make one request and close, for `duration`.
#[derive(Debug, Clone)]
pub struct Handshakes {
    /// Connection attempts in flight at once.
    pub concurrency: u64,
    /// How long to run.
    pub duration: Duration,
}

impl Workload for Handshakes {
    const KIND: WorkloadKind = WorkloadKind::Handshakes;

    async fn run<E: EndpointOps>(self, client: Client<E>) -> Result<Outcome> {
        let ignored = AtomicU64::new(0);
        let workers = self.concurrency.max(1) as usize;
        client
            .timed_loops(workers, self.duration, |_| async {
                let conn = client.connect().await?;
                let result = perf::request(&conn, REQUEST, &ignored).await;
                conn.close(perf::CLOSE_DONE, b"done");
                result
            })
            .await
    }
}
