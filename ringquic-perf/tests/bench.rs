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
