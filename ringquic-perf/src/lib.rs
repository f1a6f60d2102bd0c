//! ringquic-perf: benchmarks ringquic against stock quinn on the same work, and speaks the QUIC
//! perf protocol (draft-banks-quic-performance-00) as a server and a client.
//!
//! The binary (`src/main.rs`) is a thin command line over this library, so the test suite can
//! run servers, clients and the bench in-process.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod config;
pub mod perf;
pub mod plot;
pub mod proto;
pub mod report;
pub mod system;
pub mod usage;
