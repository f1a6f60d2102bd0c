//! ringquic's integration tests that need nothing of the process to themselves, in one test
//! binary: each file here is one area (a module; its first lines say what it covers). One binary
//! instead of twenty saves CI the build and link of each (~7 s of CPU apiece, debug), on Linux
//! and again for Windows.
//!
//! A test here that counts threads or resident memory runs its body alone in a child process
//! (`common::process::in_child`, which re-runs this binary with `--exact` and the test's full
//! name, `module::test`), so the tests running beside it do not disturb the count. Binaries of
//! their own: `robust_memory` and `zero_copy` (each replaces the global allocator to count),
//! `robust_churn` (CI builds it alone with LeakSanitizer and runs it under valgrind), and
//! `differential` (the scenarios run against quinn, which CI reruns by name).
//!
//! Run one area: `cargo test -p ringquic --all-features --test suite -- rebind::`.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod app_thread_sends;
mod async_io;
mod datagram_flow;
mod echo;
mod examples;
mod interop;
mod lifecycle;
mod local_tasks;
mod providers;
mod quic_lb;
mod rebind;
mod robust_exhaustion;
mod robust_flood;
mod robust_impaired;
mod runtime_mode;
mod shards;
mod steering;
mod transfer;
mod tuning;
