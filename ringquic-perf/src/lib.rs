//! ringquic-perf: benchmarks ringquic against stock quinn on the same work, and speaks the QUIC
//! perf protocol (draft-banks-quic-performance-00) as a server and a client.
//!
//! The binary (`src/main.rs`) is a thin command line over this library, so the test suite can
//! run servers, clients and the bench in-process.
//!
//! # Module map
//!
//! Arrows are "uses" and point down only; no child uses its parent (`.ci/modgraph.py` checks).
//!
//! ```text
//! cli             -> bench, measure, config, perf, proto, system
//! bench           -> its submodules, report, measure, config, system   (orchestrates phases)
//! bench::phase    -> bench::workload, measure, config, perf, system, usage   (runs one phase)
//! bench::{transfer, rr, handshakes, datagrams, h3} -> bench::workload, measure, perf, proto, system
//! bench::workload -> measure, perf, system      (the Workload trait, the Client side, helpers)
//! report          -> plot, measure, proto, system, usage      (collects and renders results)
//! plot            -> measure                                  (draws the panels it is given)
//! measure         -> config, system, usage             (plain data: options, outcomes, units)
//! perf -> proto, system;   config -> proto;   proto, system, usage -> nothing
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod measure;
pub mod perf;
pub mod plot;
pub mod proto;
pub mod report;
pub mod system;
pub mod usage;
