//! The backend seam: how the I/O thread talks to the kernel, the trait every backend
//! implements and the types that cross it.
//!
//! The seam is completion-oriented, whatever the backend underneath:
//!
//! * **TX**: the driver takes a free TX buffer ([`IoBackend::take_tx`]), lets quinn-proto write
//!   one GSO batch straight into it (`Connection::poll_transmit`), and hands it back with
//!   [`IoBackend::send`]. The buffer returns to the backend's free list when the kernel is done
//!   with it. When every TX buffer is in flight `take_tx` returns `None`; the driver stops polling
//!   connections for transmits and resumes on the completion that frees one. There is no unbounded
//!   queue anywhere on the send path.
//! * **RX**: [`IoBackend::turn`] submits what is queued, sleeps until a completion, the deadline or
//!   a wakeup, and hands every received datagram (GRO batches already split by segment size) to a
//!   callback, together with its [`RecvMeta`].
//! * **Wakeup**: [`IoBackend::waker`] gives the handle that other threads use to interrupt the
//!   sleep (an eventfd watched by the ring, or a `mio::Waker`).
//!
//! Nothing in this module knows about connections or streams.

use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use bytes::BytesMut;
use quinn_proto::Transmit;

use super::bufpool::TxPool;
pub(crate) use super::{bufpool::TxBuf, recv::RecvMeta};
use crate::backend::BackendKind;

/// Counters a backend keeps: the I/O part of the public [`EndpointIoStats`] (the backend fills
/// the receive, send, buffer and rebind counters; the I/O loop adds its own before publishing).
/// One struct, so a counter is named and documented once.
pub(crate) type IoStats = crate::stats::EndpointIoStats;

/// What a backend needs to know, validated by the builder before the I/O thread starts.
#[derive(Debug, Clone)]
pub(crate) struct IoConfig {
    /// Number of receive buffers (provided-buffer ring entries).
    pub recv_buffers: usize,
    /// Bytes per receive buffer, including the backend's headers.
    pub recv_buffer_size: usize,
    /// Number of TX buffers.
    pub tx_buffers: usize,
    /// Bytes per TX buffer: the largest GSO batch one send may carry.
    pub tx_buffer_size: usize,
    /// The largest UDP payload quinn-proto will write (`EndpointConfig::max_udp_payload_size`).
    pub max_udp_payload: usize,
    /// Receives of at least this many payload bytes skip the copy out of the kernel's buffer
    /// (io_uring and poll; see `EndpointBuilder::zero_copy_threshold`).
    pub zero_copy_min: usize,
    /// Bytes of receive buffers that may be lent out at once (`recv.rs`).
    pub recv_memory_budget: usize,
    /// io_uring: sends of at least this many bytes use `SENDMSG_ZC` (`usize::MAX`: never).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub send_zc_min: usize,
    /// After a turn that found nothing to do, keep polling without sleeping this long.
    pub busy_poll: std::time::Duration,
    /// Pin the I/O thread to this CPU.
    pub pin_cpu: Option<usize>,
    /// Application threads may send a connection's packets themselves (`direct.rs`).
    pub app_thread_sends: bool,
    /// io_uring: a kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`) and sleeps
    /// after this long idle.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub sqpoll_idle: Option<std::time::Duration>,
    /// The loop runs as a task on the application's runtime (`driver_task.rs`), which may move
    /// it between threads: io_uring is set up without `SINGLE_ISSUER` and `COOP_TASKRUN`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub on_runtime: bool,
}

#[cfg(test)]
impl IoConfig {
    /// A backend test's configuration: these pool sizes, 1472-byte datagrams, every optional
    /// behaviour (zero-copy, busy-poll, pinning, SQPOLL) off.
    pub(crate) fn for_tests(
        recv_buffers: usize,
        recv_buffer_size: usize,
        tx_buffers: usize,
        tx_buffer_size: usize,
    ) -> Self {
        Self {
            recv_buffers,
            recv_buffer_size,
            tx_buffers,
            tx_buffer_size,
            max_udp_payload: 1472,
            zero_copy_min: usize::MAX,
            recv_memory_budget: 0,
            send_zc_min: usize::MAX,
            busy_poll: std::time::Duration::ZERO,
            pin_cpu: None,
            app_thread_sends: false,
            sqpoll_idle: None,
            on_runtime: false,
        }
    }
}

/// The error of a call on a backend that was shut down.
pub(crate) fn shut_down() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the backend is shut down")
}

/// Interrupts the I/O thread's sleep. Implemented by each backend's wakeup primitive.
pub(crate) trait Wakeup: Send + Sync + 'static {
    /// Make the I/O thread's current or next sleep return promptly.
    fn wake(&self);
}

/// One kernel I/O backend, owned and driven by the I/O thread, or by the loop's task on the
/// application's runtime (`driver_task.rs`), which may move it to another thread between two
/// calls: hence `Send`. No call is ever made from two threads at once (`&mut self`).
pub(crate) trait IoBackend: Send {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// The socket's local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Largest number of datagrams one [`TxBuf`] may carry as a GSO batch (1 without GSO).
    fn max_gso_segments(&self) -> usize;
    /// The backend's TX buffers, and the counters taking one is counted in. Every backend
    /// keeps its TX buffers in a [`TxPool`] (registered with the kernel where the backend
    /// registers them), so the three TX calls below are the same for all.
    fn tx_pool(&mut self) -> (&mut TxPool, &mut IoStats);
    /// Take a free TX buffer, empty. `None` when every TX buffer is in flight.
    fn take_tx(&mut self) -> Option<TxBuf> {
        let (tx, stats) = self.tx_pool();
        tx.take_counted(stats)
    }
    /// Whether [`IoBackend::take_tx`] would return a buffer now.
    fn has_free_tx(&mut self) -> bool {
        self.tx_pool().0.has_free()
    }
    /// Whether sends are queued that the kernel has not taken yet and that
    /// [`IoBackend::shutdown`] would drop (the poll backend's sends waiting for the socket to
    /// become writable). Shutdown keeps turning while this holds, so a connection's last
    /// CONNECTION_CLOSE is not among them. Submitted io_uring sends do not count: shutdown
    /// waits for their completions anyway.
    fn sends_waiting(&self) -> bool {
        false
    }
    /// Return a TX buffer unused.
    fn put_tx(&mut self, buf: TxBuf) {
        self.tx_pool().0.put(buf);
    }
    /// Queue `buf.buf[..transmit.size]` for sending as described by `transmit`. Errors are
    /// counted, never returned: a datagram that cannot be sent is a lost datagram.
    fn send(&mut self, buf: TxBuf, transmit: &Transmit);
    /// Submit what is queued, then wait until there is I/O to report, `deadline` passes (`None`:
    /// no deadline) or [`Wakeup::wake`] is called, and hand received datagrams to `on_recv`.
    /// A deadline in the past means "do not sleep". Does a bounded amount of work per call.
    fn turn(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<()>;
    /// The wakeup handle for other threads.
    fn waker(&self) -> Arc<dyn Wakeup>;
    /// Until when [`IoBackend::turn`] would sleep if called now with `deadline`: `now` when
    /// it has work already (completions waiting, a socket not yet read to `WouldBlock`), an
    /// earlier time when it must look again by then (io_uring with a receive not armed),
    /// else `deadline`. The loop on a runtime sleeps on [`IoBackend::readiness_fd`] until then.
    fn sleep_until(&mut self, deadline: Option<Instant>) -> Option<Instant>;
    /// Whether [`IoBackend::turn`] has something to do without new readiness on
    /// [`IoBackend::readiness_fd`]: submissions queued, completions waiting, a socket not yet
    /// read to `WouldBlock`, a receive to re-arm. The loop on a runtime skips the turn (and
    /// its system call) otherwise.
    #[cfg(unix)]
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn needs_turn(&mut self) -> bool {
        true
    }
    /// A file descriptor that becomes readable whenever [`IoBackend::turn`] has something new
    /// to report (the ring's fd; the poll backend's epoll instance), for a runtime's reactor
    /// to watch (`driver_task.rs`). `None`: this backend cannot run on a runtime.
    #[cfg(unix)]
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Counters.
    fn stats(&self) -> IoStats;
    /// A sender on this backend's socket for the application's threads (`io/direct.rs`), where
    /// the backend allows sends beside its own, for batches of at most `max_segments`
    /// datagrams. Asked at start and after every rebind.
    #[cfg(target_os = "linux")]
    fn direct_sender(&self, max_segments: usize) -> Option<super::direct::DirectSender> {
        let _ = max_segments;
        None
    }
    /// Serve `socket` (bound, non-blocking, checked by `socket::adopt`) from now on instead of
    /// the current socket, and return its local address. The backend sets the options it needs
    /// and arms the new socket's receives as at start, and closes the old socket once no
    /// operation on it is in flight any more (at once where none can be: poll). Never waits
    /// for the kernel. On an error (counted in [`IoStats::rebinds_failed`]) nothing changed:
    /// the old socket is still served, and `socket` is dropped.
    fn rebind(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr>;
    /// Cancel everything in flight and wait until the kernel no longer references any buffer.
    /// Called once before the backend is dropped; `Drop` must also be safe without it.
    fn shutdown(&mut self);
}
