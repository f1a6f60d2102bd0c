//! This test process: running one test alone in a child process, environment knobs, resident
//! memory, and the I/O threads alive.

/// The name the test harness knows test `test` by, written in the module `module` (pass
/// `module_path!()`): the module path without the crate's name, then the test, as `--exact`
/// wants it (`lifecycle::dropping_the_endpoint_joins_its_thread` in the `suite` binary, the bare
/// test name in a binary of its own). Moving a test file between binaries changes nothing.
pub fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_string(),
    }
}

/// Run the test `name` (see [`test_name`]) of this binary alone in a child process with `env` set, show its
/// stderr, and check that it ran and passed.
pub fn run_child(name: &str, env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().expect("test executable"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .expect("child test process");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child test {name} ({env:?}) failed");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child test {name} ({env:?}) did not run"
    );
}

/// Whether this process is the child that runs the test body (`var` is set, by [`in_child`] or
/// by a caller such as a valgrind run); otherwise run the test `name` in such a child (see
/// [`run_child`]) and return false.
pub fn in_child(var: &str, name: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    run_child(name, &[(var, name)]);
    false
}

/// The environment variable `name` as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process, in KiB (0 where `/proc` is missing).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many of this process's threads are ringquic I/O threads (by name), to check that none is
/// left behind (0 where `/proc` is missing).
/// I/O threads still running once every endpoint is dropped, after waiting up to `limit` for
/// them: the last handle's drop joins its thread, but only for `SHUTDOWN_JOIN_TIMEOUT`; on an
/// overloaded machine a thread may still be finishing its shutdown after that (it never takes
/// longer than its own bounds: the 500 ms close flush and io_uring's 5 s quiescence wait).
/// Returns how many are left then (0 expected) and how long the wait took.
#[allow(dead_code)]
pub fn io_threads_after(limit: std::time::Duration) -> (usize, std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let n = io_threads();
        if n == 0 || start.elapsed() >= limit {
            return (n, start.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|n| n.trim() == "ringquic-io")
                })
                .count()
        })
        .unwrap_or(0)
}
