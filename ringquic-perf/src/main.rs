//! `ringquic-perf`: `bench` (ringquic against stock quinn on the same work), and `server` /
//! `client` for the QUIC perf protocol. See `ringquic-perf --help`.

use std::process::ExitCode;

use clap::Parser;
use ringquic_perf::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
