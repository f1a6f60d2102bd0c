//! ringquic-perf: benchmarks ringquic against stock quinn and speaks the QUIC perf protocol.
pub mod config;
pub mod proto;
pub mod system;
pub mod perf;
pub mod usage;
