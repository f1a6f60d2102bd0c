//! The I/O layer: the backends that move datagrams between the kernel and the I/O thread, and
//! the choice among them.
//!
//! - `seam.rs`: the trait every backend implements ([`IoBackend`]) and the types that cross it
//!   (TX buffers, receive metadata, counters, configuration);
//! - `uring.rs` (Linux io_uring), `rio.rs` with `rio_book.rs` (Windows Registered I/O),
//!   `poll.rs` (the portable fallback), `fake.rs` (tests: a scripted network);
//! - shared by the backends: `bufpool.rs` (buffers made with the socket), `recv.rs` (handing
//!   received bytes over, within the memory budget), `send.rs` (what a transmit asks to send,
//!   and its count), `cmsg.rs` (Linux control messages), `addr.rs` (socket address forms), and
//!   for their unit tests `testutil.rs`;
//! - `reactor.rs` (Unix, with tokio): a backend's readiness fd registered with a tokio
//!   runtime's reactor, for the loop that runs as a task on the runtime (`driver_task.rs`);
//! - `steer.rs` (Linux): the reuseport program that steers datagrams to shards by their
//!   connection ID (public as `ringquic::steer_by_shard`).
//!
//! Arrows point down only: this file uses the backends, the backends use `seam.rs` and the
//! shared helpers, and nothing here uses a module above `io/` but `backend.rs` (the backend
//! names and setup errors) and `sync.rs`. Nothing in this layer knows about connections or
//! streams. All of the crate's `unsafe` is in this directory.

use std::io;

pub(crate) use crate::backend::BackendKind;
use crate::backend::EndpointError;

pub(crate) mod addr;
// `TxPool` serves every backend, `RxSlots` io_uring and `RxArena` RIO: not every part is used
// on every platform.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) mod bufpool;
#[cfg(target_os = "linux")]
pub(crate) mod cmsg;
// Application threads send only on a tokio runtime (`crate::direct`); without the feature the
// sender is made but never sends.
#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) mod direct;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod poll;
pub(crate) mod recv;
// The backend's readiness fd in a tokio runtime's reactor, for the loop on a runtime.
#[cfg(all(unix, feature = "tokio"))]
pub(crate) mod reactor;
#[cfg(windows)]
pub(crate) mod rio;
// Platform-independent RIO bookkeeping: used by `rio` on Windows, unit-tested everywhere.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) mod rio_book;
mod send;
#[cfg(target_os = "linux")]
pub(crate) mod steer;
mod testutil;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

pub(crate) mod seam;

pub(crate) use seam::{IoBackend, IoConfig, IoStats, RecvMeta, TxBuf, Wakeup};

/// Headroom any backend may need in a receive buffer in front of the payload.
#[cfg(target_os = "linux")]
pub(crate) const RECV_HEADROOM: usize = uring::RECV_HEADROOM;
#[cfg(not(target_os = "linux"))]
pub(crate) const RECV_HEADROOM: usize = 0;

/// Open the backend for `socket`: `wanted` if given (an error if it cannot run here), else the
/// best this system offers (io_uring on Linux, RIO on Windows, the poll backend elsewhere or
/// when those are missing, logged once).
pub(crate) fn open_backend(
    socket: std::net::UdpSocket,
    cfg: &IoConfig,
    wanted: Option<BackendKind>,
) -> Result<Box<dyn IoBackend>, EndpointError> {
    #[cfg(not(windows))]
    if wanted == Some(BackendKind::Rio) {
        return Err(EndpointError::BackendUnavailable {
            backend: BackendKind::Rio,
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, "RIO exists only on Windows"),
        });
    }
    // Windows: RIO when asked for or when nothing was. If RIO cannot be set up before anything
    // was posted on the socket (no RIO in the system, as under Wine; an adopted socket without
    // WSA_FLAG_REGISTERED_IO), the socket comes back and the poll backend serves it — unless
    // RIO was asked for explicitly, which makes it an error.
    #[cfg(windows)]
    let socket = if !matches!(wanted, None | Some(BackendKind::Rio)) {
        socket
    } else {
        let opts = rio_book::RioOptions::from_env()?;
        match rio::RioBackend::new(socket, cfg, opts) {
            Ok(b) => return Ok(Box::new(b)),
            Err(e) if wanted == Some(BackendKind::Rio) => {
                return Err(EndpointError::BackendUnavailable {
                    backend: BackendKind::Rio,
                    source: std::io::Error::new(e.source.kind(), format!("{}: {}", e.what, e.source)),
                })
            }
            Err(e) => match e.socket {
                Some(socket) => {
                    static ONCE: std::sync::Once = std::sync::Once::new();
                    ONCE.call_once(|| {
                        tracing::warn!(
                            "Windows RIO is not available ({}: {}); using the poll backend",
                            e.what,
                            e.source
                        )
                    });
                    socket
                }
                None => {
                    return Err(EndpointError::Backend {
                        what: e.what,
                        source: e.source,
                    })
                }
            },
        }
    };
    #[cfg(target_os = "linux")]
    {
        if wanted != Some(BackendKind::Poll) {
            match uring::open_ring(cfg) {
                Ok(ring) => return Ok(Box::new(uring::UringBackend::new(ring, socket, cfg)?)),
                // SQPOLL was asked for: running without it would not be what the user chose.
                Err(source) if cfg.sqpoll_idle.is_some() => {
                    return Err(EndpointError::Backend {
                        what: "io_uring with IORING_SETUP_SQPOLL",
                        source,
                    })
                }
                Err(source) if wanted == Some(BackendKind::IoUring) => {
                    return Err(EndpointError::BackendUnavailable {
                        backend: BackendKind::IoUring,
                        source,
                    })
                }
                Err(e) => log_fallback(&e),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        if wanted == Some(BackendKind::IoUring) {
            return Err(EndpointError::BackendUnavailable {
                backend: BackendKind::IoUring,
                source: std::io::Error::new(std::io::ErrorKind::Unsupported, "io_uring exists only on Linux"),
            });
        }
    }
    let b = poll::PollBackend::new(socket, cfg).map_err(|source| EndpointError::Backend {
        what: "poll backend",
        source,
    })?;
    Ok(Box::new(b))
}

#[cfg(target_os = "linux")]
fn log_fallback(e: &std::io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::warn!("io_uring is not available ({e}); using the poll backend"));
}

/// Pin the calling thread to `cpu` (`sched_setaffinity` on Linux, `SetThreadAffinityMask` on
/// Windows).
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "CPU number out of range",
            ));
        }
        // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` < CPU_SETSIZE (checked), so the bit is inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::Threading::{GetCurrentThread, SetThreadAffinityMask};
        if cpu >= usize::BITS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "CPU number out of range",
            ));
        }
        // SAFETY: GetCurrentThread returns a pseudo-handle valid in this thread; the mask names
        // one CPU. A zero return is an error (e.g. a CPU outside the process's affinity).
        if unsafe { SetThreadAffinityMask(GetCurrentThread(), 1usize << cpu) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = cpu;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pinning the I/O thread is supported on Linux and Windows",
        ))
    }
}
