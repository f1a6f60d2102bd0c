//! `bench` through the library, in-process: every workload with tiny sizes, on every system
//! this build has, checking that each phase produced a figure and that the table and JSON come
//! out. Bounded by the phase timeout.

use std::time::Duration;

use ringquic_perf::{
    bench,
    measure::{BenchOptions, WorkloadKind},
    system::SystemKind,
};

#[test]
fn every_workload_in_process() {
    let mut systems = vec![SystemKind::Quinn];
    if cfg!(feature = "ringquic") {
        systems.push(SystemKind::Ringquic(None));
    }
    let opts = BenchOptions {
        workloads: vec![WorkloadKind::All],
        systems: systems.clone(),
        runs: 2,
        size: 4 << 20,
        streams: 8,
        stream_size: 128 << 10,
        concurrency: 4,
        connections: 2,
        rr_streams: 2,
        duration: Duration::from_millis(300),
        phase_timeout: Duration::from_secs(60),
        progress: false,
        isolate: false,
        ..BenchOptions::default()
    };
    let report = bench::run(&opts).unwrap();
    assert!(!report.any_failed(), "{}", report.table());
    assert_eq!(report.groups.len(), WorkloadKind::EVERY.len() * systems.len());
    for g in &report.groups {
        assert_eq!(g.runs.len(), 2);
        let s = g.summary.as_ref().unwrap();
        assert!(s.figure > 0.0, "{g:?}");
        assert!(s.ratio.is_some());
        for m in &g.runs {
            assert!(m.outcome.amount > 0);
            assert!(m.cpu_process.total() > 0.0);
            assert!(m.peak_rss > 0);
        }
    }
    // Runs alternate the order of systems.
    let first_of_run = |run: usize| {
        report
            .groups
            .iter()
            .filter(|g| g.workload == WorkloadKind::Bulk)
            .flat_map(|g| &g.runs)
            .filter(|m| m.run == run)
            .count()
    };
    assert_eq!(first_of_run(0), systems.len());
    let table = report.table();
    assert!(table.contains("p50/p99/p999"), "{table}");
    assert!(table.contains("lost"), "{table}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["groups"].as_array().unwrap().len(),
        WorkloadKind::EVERY.len() * systems.len()
    );
}

/// Thread-per-core serving in the bench's `+local` rows: a connection accepted by a task on
/// shard 0 of a two-shard server is served (`ConnOps::spawn_home`) on the I/O thread that
/// drives it, which `Connection::spawn` names. Called from the tokio runtime instead, it runs
/// there, as for quinn.
#[cfg(all(feature = "ringquic", target_os = "linux"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_home_serves_a_local_connection_on_its_own_shard() {
    use ringquic_perf::{
        config::{client_config, endpoint_config, server_config, Identity, NetOptions, Trust},
        system::ConnOps,
    };
    use std::thread::{current, ThreadId};
    const CONNS: usize = 16;
    let net = NetOptions::default();
    let id = Identity::self_signed(&["localhost"]).unwrap();
    let server = ringquic::Endpoint::builder()
        .shards(2)
        .endpoint_config(endpoint_config(&net).unwrap())
        .server_config(server_config(&id, &net).unwrap())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client = ringquic::Endpoint::builder()
        .endpoint_config(endpoint_config(&net).unwrap())
        .default_client_config(client_config(&Trust::Roots(id.certs.clone()), &net).unwrap())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    // (the thread the serving ran on, the connection's own I/O thread)
    let (tx, rx) = std::sync::mpsc::channel::<(ThreadId, ThreadId)>();
    let srv = server.clone();
    let accepting = server.spawn(async move {
        for _ in 0..CONNS {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let home = conn.spawn(async { current().id() });
            let tx = tx.clone();
            conn.spawn_home(async move {
                let ran_on = current().id();
                let _ = tx.send((ran_on, home.await.unwrap()));
            });
        }
    });
    let addr = server.local_addr().unwrap();
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(client.connect(addr, "localhost").unwrap().await.unwrap());
    }
    accepting.await.unwrap();
    let mut homes = std::collections::HashSet::new();
    for _ in 0..CONNS {
        let (ran_on, home) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(ran_on, home, "served away from the connection's shard");
        homes.insert(home);
    }
    // Random connection IDs put 16 connections on one shard with odds 2^-15.
    assert_eq!(homes.len(), 2, "the connections were not spread over both shards");
    // From a runtime thread: on the runtime.
    let (tx, rx) = tokio::sync::oneshot::channel();
    conns[0].spawn_home(async move {
        let _ = tx.send(current().name().map(str::to_owned));
    });
    let name = rx.await.unwrap();
    assert_ne!(name.as_deref(), Some("ringquic-io"), "left the runtime");
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    server.close(0u32.into(), b"done");
}
