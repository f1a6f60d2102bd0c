//! Which backends a test runs on (shared with ringquic-h3's tests, which include this file).

use ringquic::BackendKind;

/// The backends to run a test on: both on Linux, unless `RINGQUIC_BACKEND` forces one.
pub fn backends() -> Vec<BackendKind> {
    match std::env::var("RINGQUIC_BACKEND").ok().as_deref() {
        Some("poll") => vec![BackendKind::Poll],
        Some("uring") => vec![BackendKind::IoUring],
        Some("rio") => vec![BackendKind::Rio],
        _ if cfg!(target_os = "linux") => vec![BackendKind::IoUring, BackendKind::Poll],
        _ => vec![BackendKind::Poll],
    }
}
