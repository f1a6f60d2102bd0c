//! `handshakes`: new connections per second, each with one small request.

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

/// The request made on every new connection.
const REQUEST: Request = Request {
    upload: 64,
    download: 64,
    uni: false,
};

/// `concurrency` loops that each connect, make one request and close, for `duration`.
#[derive(Debug, Clone)]
pub struct Handshakes {
    /// Connection attempts in flight at once.
    pub concurrency: u64,
    /// How long to run.
    pub duration: Duration,
}

impl Workload for Handshakes {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Handshakes
    }

    fn unit(&self) -> Unit {
        Unit::Connections
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
        let ignored = AtomicU64::new(0);
        timed_loops(
            self.concurrency.max(1) as usize,
            self.duration,
            &meter,
            |_| async {
                let conn = endpoint.connect(server, SERVER_NAME).await?;
                let result = perf::request(&conn, REQUEST, &ignored).await;
                conn.close(perf::CLOSE_DONE, b"done");
                result
            },
        )
        .await
    }
}
