//! CPU time and memory accounting for bench phases.
//!
//! * Per side: each side's threads are its runtime thread plus any thread that appeared while
//!   its endpoint was being built (ringquic's I/O thread); their user+sys times come from
//!   `/proc/self/task/TID/stat`, read by the main thread at the start and end of the phase.
//! * Whole process: `getrusage(RUSAGE_SELF)` deltas over the same window.
//! * Peak memory: `VmHWM` from `/proc/self/status` after resetting it through
//!   `/proc/self/clear_refs` at the start of the phase (falls back to `ru_maxrss`, the peak of the
//!   whole process lifetime, where that reset is not possible).
//!
//! Off Linux the `/proc` readings are absent (per-side CPU reads as zero), and off Unix so is
//! `getrusage`.

use std::{collections::BTreeSet, fs, ops::Sub, time::Duration};

use serde::{Deserialize, Serialize};

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    /// Seconds in user mode.
    pub user: f64,
    /// Seconds in the kernel.
    pub sys: f64,
}

impl CpuTimes {
    /// User + system seconds.
    pub fn total(&self) -> f64 {
        self.user + self.sys
    }
}

impl Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, rhs: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: (self.user - rhs.user).max(0.0),
            sys: (self.sys - rhs.sys).max(0.0),
        }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(iter: I) -> CpuTimes {
        iter.fold(CpuTimes::default(), |a, b| CpuTimes {
            user: a.user + b.user,
            sys: a.sys + b.sys,
        })
    }
}

/// `/proc` reports thread times in USER_HZ ticks, which Linux fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// The calling thread's kernel thread id, if `/proc/thread-self` exists.
pub fn current_tid() -> Option<u32> {
    let link = fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The ids of every thread of this process right now (empty off Linux).
pub fn thread_ids() -> BTreeSet<u32> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Parses utime and stime (fields 14 and 15) out of a `/proc/.../stat` line.
fn parse_stat(stat: &str) -> Option<CpuTimes> {
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 is the first here
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user: utime / USER_HZ,
        sys: stime / USER_HZ,
    })
}

/// CPU time of one thread of this process, if it still exists.
pub fn thread_cpu(tid: u32) -> Option<CpuTimes> {
    parse_stat(&fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?)
}

/// A thread's name (`/proc/self/task/<tid>/comm`), if it can be read.
pub fn thread_name(tid: u32) -> Option<String> {
    Some(
        fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// Each thread's name and CPU time (threads that have exited are left out).
pub fn each_thread_cpu(tids: &BTreeSet<u32>) -> Vec<(u32, String, CpuTimes)> {
    tids.iter()
        .filter_map(|&t| {
            let cpu = thread_cpu(t)?;
            Some((t, thread_name(t).unwrap_or_else(|| format!("thread {t}")), cpu))
        })
        .collect()
}

/// CPU time of a set of threads (threads that have exited count as zero).
pub fn threads_cpu(tids: &BTreeSet<u32>) -> CpuTimes {
    tids.iter().filter_map(|&t| thread_cpu(t)).sum()
}

/// What `getrusage(RUSAGE_SELF)` says about the whole process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcessUsage {
    cpu: CpuTimes,
    /// Peak resident set size over the process lifetime, in bytes.
    max_rss: u64,
}

#[cfg(unix)]
fn process_usage() -> ProcessUsage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` points to writable memory of the size of `rusage`, which getrusage fills
    // (and RUSAGE_SELF is a valid `who`); the zeroed value is a valid `rusage` either way.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    // ru_maxrss is in KiB, except on Apple systems where it is in bytes.
    let unit = if cfg!(target_vendor = "apple") { 1 } else { 1024 };
    ProcessUsage {
        cpu: CpuTimes {
            user: secs(u.ru_utime),
            sys: secs(u.ru_stime),
        },
        max_rss: u64::try_from(u.ru_maxrss).unwrap_or(0) * unit,
    }
}

#[cfg(not(unix))]
fn process_usage() -> ProcessUsage {
    ProcessUsage::default()
}

/// CPU time of the whole process so far (all threads, including finished ones).
pub fn process_cpu() -> CpuTimes {
    process_usage().cpu
}

/// How the peak memory figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeakSource {
    /// `VmHWM` after a reset through `/proc/self/clear_refs`: the peak of this phase.
    VmHwmPerPhase,
    /// `ru_maxrss`: the peak since the process started.
    MaxRssLifetime,
}

/// Resets the resident-set high-water mark; returns whether that worked.
pub fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident set size in bytes, and where it came from (see [`reset_peak_rss`]).
pub fn peak_rss(was_reset: bool) -> (u64, PeakSource) {
    if was_reset {
        if let Some(kib) = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| status_field_kib(&s, "VmHWM:"))
        {
            return (kib * 1024, PeakSource::VmHwmPerPhase);
        }
    }
    (process_usage().max_rss, PeakSource::MaxRssLifetime)
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_ascii_whitespace().next()?.parse().ok()
}

/// A point-in-time reading of the CPU used by each side and by the process.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The client side's threads.
    pub client: CpuTimes,
    /// The server side's threads.
    pub server: CpuTimes,
    /// The whole process.
    pub process: CpuTimes,
    /// Each of the server side's threads.
    pub server_threads: Vec<(u32, String, CpuTimes)>,
    /// When it was taken.
    pub wall: Option<std::time::Instant>,
}

impl Snapshot {
    /// Reads the current CPU times of both sides' threads and of the process.
    pub fn take(client: &BTreeSet<u32>, server: &BTreeSet<u32>) -> Self {
        Snapshot {
            client: threads_cpu(client),
            server: threads_cpu(server),
            process: process_cpu(),
            server_threads: each_thread_cpu(server),
            wall: Some(std::time::Instant::now()),
        }
    }

    /// The wall time between two snapshots.
    pub fn wall_since(&self, earlier: &Snapshot) -> Duration {
        match (self.wall, earlier.wall) {
            (Some(a), Some(b)) => a.saturating_duration_since(b),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (tokio rt) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0";
        assert_eq!(parse_stat(stat), Some(CpuTimes { user: 2.5, sys: 0.37 }));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tx\nVmPeak:\t  1000 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_field_kib(status, "VmRSS:"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_own_threads() {
        let tid = current_tid().expect("tid");
        assert!(thread_ids().contains(&tid));
        let start = process_cpu();
        let mut x = 0u64;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!((process_cpu() - start).total() > 0.0);
        assert!(thread_cpu(tid).is_some());
        let was_reset = reset_peak_rss();
        assert!(peak_rss(was_reset).0 > 0);
    }
}
