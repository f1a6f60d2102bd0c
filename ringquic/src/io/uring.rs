//! The Linux io_uring backend.
//!
//! ```text
//!          provided-buffer ring (bgid 0)              TX slots (TxPool + SendSlot)
//!   ┌──────────────────────────────────┐       ┌───────────────────────────────────┐
//!   │ RxSlots: N BytesMut buffers, each │       │ slot i: msghdr ─► iovec ─► Vec<u8> │
//!   │ [recvmsg_out|name|control|payload]│       │         name (dest), control (GSO, │
//!   └──────────────▲───────────────────┘       │         ECN, src ip)                │
//!     bid back, or │  kernel picks a buffer    └──────────────┬────────────────────┘
//!     a spare/fresh│                                          │ SENDMSG (user_data SEND|i)
//!   RECVMSG multishot (user_data RECV) ──► CQE(bid, len) ──► io/recv.rs ──► on_recv(meta, BytesMut)
//!   POLL_ADD multishot on the eventfd (user_data WAKE) ──► CQE ──► read eventfd, loop turns
//! ```
//!
//! * One multishot `recvmsg` stays armed on the socket; every completion names the provided
//!   buffer the kernel filled. We parse it (`RecvMsgOut`) and hand the payload on through
//!   `io/recv.rs`: a receive of at least `zero_copy_threshold` bytes (in practice a GRO batch)
//!   goes on in that very buffer (lent, within the receive memory budget; a spare or fresh
//!   buffer takes its ring slot); anything else is copied (one datagram: an exact copy; a
//!   batch: a pooled buffer or a copy per datagram) and the buffer goes straight back into the
//!   ring. When the kernel ends the multishot (ENOBUFS while every buffer was in use, or any
//!   other reason) we re-arm it on the next turn and count it.
//! * Sends go out as `sendmsg` (`SENDMSG_ZC` from `send_zero_copy_threshold` bytes on, where
//!   the kernel has it) with `UDP_SEGMENT` (GSO), ECN and the source address. A slot's
//!   `msghdr`, name, control and data stay put until its completion (for `SENDMSG_ZC`, its
//!   notification) arrives. Small sends wait for the turn's one `io_uring_enter`; once 32 KiB
//!   are queued they are submitted at once, so the kernel works on one batch while quinn-proto
//!   builds the next. If the kernel refuses GSO at run time (EIO, or EINVAL on an ordinary
//!   send), later sends carry one datagram each.
//! * The eventfd is the application's wakeup: [`EventFdWaker::wake`] writes it, the ring's
//!   multishot poll completes, `io_uring_enter` returns.
//! * `rebind` (`Endpoint::rebind`) sets the options on the new socket and arms its receive at
//!   once; the old socket is kept open, its multishot receive cancelled, until the kernel has
//!   completed every operation on it (the receive's last completion, every send submitted on
//!   it), and only then closed (`Retiring`). Completions say which socket they were for: a
//!   receive's user_data carries its socket's generation, a send's slot remembers it. Until
//!   then datagrams still arriving on the old socket are delivered like any other. The buffer
//!   ring, the receive buffers and the TX slots are shared by both sockets and freed only by
//!   `shutdown`, which waits for the old sockets' operations too.
//! * Shutdown cancels the receive and the poll, waits (bounded) until every operation has
//!   completed, unregisters the buffer ring and only then frees memory. If the kernel does not
//!   give everything back in time the memory is leaked on purpose: leaking is safe, freeing
//!   memory the kernel may still write is not.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{atomic::AtomicU16, atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use quinn_proto::Transmit;
use tracing::{debug, warn};

use super::{
    bufpool::{RxSlots, TxPool},
    cmsg::{self, SendCmsgs},
    recv,
    send::Batch,
    BackendKind, IoBackend, IoConfig, IoStats, RecvMeta, TxBuf, Wakeup,
};

const RECV: u64 = 1 << 56;
const SEND: u64 = 2 << 56;
const WAKE: u64 = 3 << 56;
const CANCEL: u64 = 4 << 56;
/// `IORING_SEND_ZC_REPORT_USAGE`: the notification says whether the kernel copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`, in a notification's result.
const NOTIF_USAGE_ZC_COPIED: i32 = 1 << 31;
const KIND_MASK: u64 = 0xff << 56;
/// A receive's user_data (and its cancel's): `RECV | generation` of the socket it is on.
const GENERATION_MASK: u64 = 0xffff_ffff;
/// In a cancel's user_data: the cancel of the eventfd poll (not of a socket's receive).
const CANCEL_WAKE: u64 = 1 << 32;
const BGID: u16 = 0;
/// `sizeof(struct io_uring_recvmsg_out)`.
const RECVMSG_OUT: usize = 16;
/// Room for a `sockaddr_in6`.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Room for GRO, packet info (v4 or v6) and TOS/TCLASS, with slack.
const CONTROL_LEN: usize = 128;
/// Queued send bytes that make `send` submit at once instead of waiting for the turn's
/// `io_uring_enter`: about half a full GSO batch. Measured against "never" and "every send" in
/// docs/PERFORMANCE.md.
const EAGER_SUBMIT_BYTES: usize = 32 * 1024;
/// Most completions handled per turn, so the driver gets control back regularly.
const CQE_BOUND: usize = 1024;

/// Headroom every receive buffer needs before the payload.
pub(crate) const RECV_HEADROOM: usize = RECVMSG_OUT + NAME_LEN + CONTROL_LEN;

/// Open a ring, or say why not. ENOSYS, EPERM (seccomp, `kernel.io_uring_disabled`) and the like
/// make the endpoint fall back to the poll backend.
pub(crate) fn open_ring(cfg: &IoConfig) -> io::Result<IoUring> {
    let sq = (cfg.tx_buffers + 16).next_power_of_two().clamp(64, 4096) as u32;
    let cq = (cfg.recv_buffers * 2 + cfg.tx_buffers * 2 + 64)
        .next_power_of_two()
        .clamp(256, 65536) as u32;
    if let Some(idle) = cfg.sqpoll_idle {
        // Asked for explicitly: no fallback to a ring without it (the caller reports the error).
        let ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1);
        return IoUring::builder().setup_cqsize(cq).setup_sqpoll(ms).build(sq);
    }
    if cfg.on_runtime {
        // The loop's task may move between threads, so no `SINGLE_ISSUER`; and no
        // `COOP_TASKRUN`, under which a completion's task work would not wake a thread that
        // sleeps in the runtime's `epoll_wait` rather than in `io_uring_enter`, so the ring's
        // fd would not become readable.
        return IoUring::builder().setup_cqsize(cq).build(sq);
    }
    // Newest flags first; older kernels reject them with EINVAL.
    match IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(sq)
    {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder().setup_cqsize(cq).build(sq),
        Err(e) => Err(e),
    }
}

/// The application's wakeup: an eventfd the ring polls.
pub(crate) struct EventFdWaker {
    fd: OwnedFd,
}

impl Wakeup for EventFdWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A failure (EAGAIN when
        // the counter would overflow) means a wakeup is already pending, which is all we want.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl EventFdWaker {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// The kernel-visible parts of one TX slot. Boxed in a slice that never moves or resizes, so
/// the pointers inside stay valid while a send is in flight.
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: socket2::SockAddr,
    control: [u8; cmsg::SEND_SPACE],
    /// GSO segment size of the batch in flight, `None` for a single datagram.
    segment: Option<usize>,
    /// The send in flight is a zero-copy send from this slot's registered buffer.
    fixed_send: bool,
    /// Start and capacity of this slot's buffer when it was registered as fixed buffer `slot`
    /// (`None`: not registered). A send uses the registration only while the buffer is still
    /// that memory.
    fixed: Option<(usize, usize)>,
    /// Generation of the socket the send in flight went out on (`UringBackend::generation`).
    generation: u32,
}

/// A socket `rebind` replaced, kept open until the kernel has completed every operation on it:
/// closing it earlier would leave the kernel working on a file we no longer name (and, for
/// sends still in the submission queue, let the descriptor's number be reused under them).
struct Retiring {
    socket: std::net::UdpSocket,
    generation: u32,
    /// Its multishot receives still armed (0 or 1).
    recv_armed: usize,
    /// Its sends whose TX slot the kernel still holds.
    sends: usize,
    /// Its receive's cancel is still to be queued: at the rebind, or again after a cancel that
    /// found nothing to cancel while the receive had not ended yet.
    cancel_due: bool,
    /// When it was retired: past [`RETIRE_LIMIT`] it is closed whatever is left.
    since: Instant,
}

/// How long a socket replaced by a rebind waits for the kernel to finish with it before it is
/// closed anyway. Closing early is memory-safe (io_uring holds its own reference to the file,
/// the receive buffers are the ring's, the TX slots stay ours and are reaped by generation); it
/// only bounds the list of retiring sockets if a cancel keeps failing.
const RETIRE_LIMIT: Duration = Duration::from_secs(5);

/// The longest sleep while the wakeup poll could not be armed (a full submission queue): the
/// next turn arms it, so no sleep waits for a wakeup that cannot come.
const UNARMED_WAKE_SLEEP: Duration = Duration::from_millis(10);

/// The shared-memory ring of provided buffers (`IORING_REGISTER_PBUF_RING`).
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    mask: u16,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(
            entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring too large"))?;
        // SAFETY: non-zero size (entries ≥ 1, checked by the caller).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "buffer ring allocation failed",
            ));
        }
        Ok(Self {
            entries: ptr,
            layout,
            mask: entries - 1,
            tail: 0,
        })
    }

    /// Queue buffer `bid` of `rx` for the kernel; visible after [`BufRing::publish`].
    fn push(&mut self, rx: &mut RxSlots, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx ≤ mask < entries, inside the allocation. The kernel only reads entries
        // between its head and our published tail, and this one is past the published tail.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(rx.addr(bid as usize) as u64);
        e.set_len(rx.buf_size() as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `tail` points at the ring header's tail field inside our allocation, which
        // is 2-byte aligned; the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; dropped only after unregistering (or
        // leaked by `UringBackend::drop` when the kernel might still read it).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) }
    }
}

/// The io_uring backend. Lives on the I/O thread, or in the loop's task on the application's
/// runtime, which may move it between threads.
pub(crate) struct UringBackend {
    // Declared first, so the ring is closed before the memory below is freed. That order is
    // not what makes freeing safe: `shutdown` (called by `Drop` first) waits until the kernel
    // has completed every operation, and leaks the memory if it has not.
    ring: IoUring,
    socket: std::net::UdpSocket,
    /// Generation of `socket`, one more at each `rebind`: in its receive's user_data and in
    /// each send slot, so a completion says which socket it was for.
    generation: u32,
    /// Sockets replaced by `rebind` that the kernel still has operations on; each is closed
    /// (`retire`) once it has none.
    retiring: Vec<Retiring>,
    socket_is_v6: bool,
    /// Whether GRO is asked for on a socket: a receive buffer holds a whole batch.
    want_gro: bool,
    waker: Arc<EventFdWaker>,
    recv_msg: Box<libc::msghdr>,
    buf_ring: Option<BufRing>,
    rx: Option<RxSlots>,
    /// Receives with at least this many payload bytes are handed over in the buffer the
    /// kernel filled (zero-copy); smaller ones are copied out and the buffer reused at once.
    zero_copy_min: usize,
    /// Pooled buffers that a receive of several datagrams (at least `recv::POOLED_MIN` bytes) is
    /// copied into and lent from when its own buffer is not lent: below `zero_copy_min`, or over
    /// the lending budget (payload-sized: no header area).
    copies: recv::Lender,
    tx: TxPool,
    slots: Box<[SendSlot]>,
    /// Multishot receives the kernel holds (normally 0 or 1).
    recv_armed: usize,
    /// Multishot eventfd polls the kernel holds (normally 0 or 1).
    wake_armed: usize,
    cancels_in_flight: usize,
    gso_segments: usize,
    gro: bool,
    /// Sends of at least this many bytes go out as `SENDMSG_ZC` (`usize::MAX`: never, or the
    /// kernel lacks it).
    send_zc_min: usize,
    stats: IoStats,
    /// Completions reaped and not yet dispatched: (user_data, result, flags). Plain tuples, so
    /// tests can inject completions the kernel is hard to coax into producing.
    cqes: Vec<(u64, i32, u32)>,
    /// Bytes of sends queued since the last submission.
    unsubmitted: usize,
    shut_down: bool,
}

/// Dropping the backend shuts it down first (see the note on `ring` above): the kernel is done
/// with every buffer before any field is freed.
impl Drop for UringBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// SAFETY: the raw pointers in a `UringBackend` (the provided-buffer ring's entries, the
// receive `msghdr` template, the send slots' headers) all point into allocations this value
// owns and frees, and are dereferenced only through `&mut self` or by the kernel. Moving the
// value to another thread moves that ownership whole; nothing refers to the memory from the
// old thread. The kernel's access to it does not depend on which thread owns the backend.
// What does depend on the thread is io_uring's `SINGLE_ISSUER` (a submission from another
// thread fails with EEXIST, an error, not memory unsafety); a backend that is moved (the loop
// on a runtime, `IoConfig::on_runtime`) is set up without it (`open_ring`).
unsafe impl Send for UringBackend {}

impl UringBackend {
    /// Set up the socket options, the buffer pools and the buffer ring, and arm the receive.
    pub(crate) fn new(
        ring: IoUring,
        socket: std::net::UdpSocket,
        cfg: &IoConfig,
    ) -> Result<Self, crate::EndpointError> {
        let payload_room = cfg.recv_buffer_size.saturating_sub(RECV_HEADROOM);
        // GRO can hand us up to 64 KiB at once; with smaller buffers it would truncate.
        let want_gro = payload_room >= u16::MAX as usize;
        let features = cmsg::configure_socket(&socket, want_gro)?;
        let io_err =
            |what: &'static str| move |source: io::Error| crate::EndpointError::Backend { what, source };
        let entries = u16::try_from(cfg.recv_buffers.next_power_of_two())
            .ok()
            .filter(|n| *n <= 32768)
            .ok_or(crate::EndpointError::Config("recv_buffers must be at most 32768"))?;
        // The header part (recvmsg_out, name and control areas) is zeroed: the kernel may leave
        // gaps there. The payload after it is always written in full.
        // At most `recv_memory_budget` bytes of buffers lent to quinn-proto and the
        // application: half for the kernel's own buffers (zero-copy), half for the pooled
        // buffers small GRO batches are copied into.
        let max_lent = cfg.recv_memory_budget / 2 / cfg.recv_buffer_size.max(1);
        let mut rx = RxSlots::new(entries as usize, cfg.recv_buffer_size, RECV_HEADROOM, max_lent).ok_or(
            crate::EndpointError::Config("receive buffer pool could not be allocated"),
        )?;
        let mut buf_ring = BufRing::new(entries).map_err(io_err("provided-buffer ring"))?;
        // SAFETY: the ring memory is page-aligned, holds `entries` entries and lives in
        // `self.buf_ring` until after `unregister_buf_ring` (see `shutdown`/`Drop`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(buf_ring.entries as u64, entries, BGID, 0)
                .map_err(io_err("IORING_REGISTER_PBUF_RING"))?;
        }
        for bid in 0..entries {
            buf_ring.push(&mut rx, bid);
        }
        buf_ring.publish();

        let waker = Arc::new(EventFdWaker::new().map_err(io_err("eventfd"))?);
        let socket_is_v6 = socket.local_addr().map_err(io_err("getsockname"))?.is_ipv6();
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_msg.msg_controllen = CONTROL_LEN;
        let slots = (0..cfg.tx_buffers)
            .map(|_| SendSlot {
                // SAFETY: as above, zeroed msghdr/iovec are valid empty values.
                msg: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                name: socket2::SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                control: [0; cmsg::SEND_SPACE],
                segment: None,
                fixed_send: false,
                fixed: None,
                generation: 0,
            })
            .collect();
        debug!(
            gro = features.gro,
            gso = features.gso_segments,
            entries,
            "io_uring backend ready"
        );
        let mut this = Self {
            ring,
            socket,
            generation: 0,
            retiring: Vec::new(),
            socket_is_v6,
            want_gro,
            waker,
            recv_msg,
            buf_ring: Some(buf_ring),
            rx: Some(rx),
            zero_copy_min: cfg.zero_copy_min,
            copies: recv::Lender::new(cfg.recv_buffer_size - RECV_HEADROOM, 0, max_lent),
            tx: TxPool::new(cfg.tx_buffers, cfg.tx_buffer_size),
            slots,
            recv_armed: 0,
            wake_armed: 0,
            cancels_in_flight: 0,
            gso_segments: features.gso_segments,
            gro: features.gro,
            send_zc_min: usize::MAX,
            stats: IoStats::default(),
            cqes: Vec::with_capacity(CQE_BOUND),
            unsubmitted: 0,
            shut_down: false,
        };
        if cfg.send_zc_min != usize::MAX {
            this.setup_send_zc(cfg.send_zc_min);
        }
        this.arm_recv();
        this.arm_wake();
        this.ring.submit().map_err(io_err("io_uring_enter"))?;
        Ok(this)
    }

    /// Turn zero-copy sends on if the kernel has `SENDMSG_ZC`, and register the TX buffers as
    /// fixed buffers so the kernel need not pin their pages on every send. Without the opcode
    /// sends stay ordinary (logged); without the registration they are zero-copy all the same.
    fn setup_send_zc(&mut self, min: usize) {
        let mut probe = io_uring::Probe::new();
        let supported = self.ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::SendMsgZc::CODE);
        if !supported {
            warn!("this kernel has no IORING_OP_SENDMSG_ZC; sends stay ordinary copies");
            return;
        }
        self.send_zc_min = min;
        let regions = self.tx.regions();
        let iovecs: Option<Vec<libc::iovec>> = regions
            .iter()
            .map(|r| {
                r.map(|(base, len)| libc::iovec {
                    iov_base: base.cast(),
                    iov_len: len,
                })
            })
            .collect();
        let Some(iovecs) = iovecs.filter(|v| u16::try_from(v.len()).is_ok()) else {
            return;
        };
        // SAFETY: every iovec is a TX buffer owned by `self.tx` for the backend's whole life;
        // the ring (declared first in the struct) is closed, which unregisters them, before
        // those buffers are freed. The kernel only reads them.
        match unsafe { self.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => {
                for (slot, r) in self.slots.iter_mut().zip(&regions) {
                    slot.fixed = r.map(|(p, c)| (p as usize, c));
                }
            }
            Err(e) => debug!("registering TX buffers failed ({e}); zero-copy sends without them"),
        }
    }

    /// Whether GRO is on for this socket.
    #[allow(dead_code)]
    pub(crate) fn gro(&self) -> bool {
        self.gro
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.socket.as_raw_fd())
    }

    /// Push an SQE, submitting first if the submission queue is full. Gives up (returns false)
    /// after a bounded number of tries, so a wedged ring cannot hang the I/O thread; the caller
    /// then treats the operation as failed.
    #[must_use]
    fn push(&mut self, sqe: squeue::Entry) -> bool {
        for _ in 0..64 {
            // SAFETY: every SQE we build points only at memory owned by `self` (the recv
            // msghdr, a parked TX slot, the eventfd) that stays alive and unmoved until its
            // completion is reaped; `shutdown` waits for all of them before anything is freed.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return true;
            }
            let made_room = if self.ring.params().is_setup_sqpoll() {
                // The kernel's SQ thread drains the queue: wait until it has taken some.
                self.ring.submitter().squeue_wait().map(drop)
            } else {
                self.ring.submit().map(drop)
            };
            if let Err(e) = made_room {
                // EBUSY: the completion queue is backed up (the kernel keeps overflowed
                // completions, NODROP); reap some, then try again.
                debug!("submit while SQ full: {e}");
                self.reap_into_buffer();
            }
        }
        warn!("submission queue stuck full; dropping an operation");
        false
    }

    fn arm_recv(&mut self) {
        let sqe = opcode::RecvMsgMulti::new(self.fd(), &*self.recv_msg as *const _, BGID)
            .build()
            .user_data(RECV | u64::from(self.generation));
        if self.push(sqe) {
            self.recv_armed += 1;
        }
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.waker.fd.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        if self.push(sqe) {
            self.wake_armed += 1;
        }
    }

    /// Move available completions into `self.cqes` (bounded).
    fn reap_into_buffer(&mut self) {
        let room = CQE_BOUND.saturating_sub(self.cqes.len());
        self.cqes.extend(
            self.ring
                .completion()
                .take(room)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }

    /// A completion of the multishot receive on the socket of `generation` (the current one or
    /// one retiring; a retiring socket's datagrams are delivered like any other).
    fn handle_recv(
        &mut self,
        generation: u32,
        res: i32,
        flags: u32,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) {
        if !cqueue::more(flags) {
            if generation == self.generation {
                self.recv_armed = self.recv_armed.saturating_sub(1);
                if !self.shut_down {
                    self.stats.recv_rearms += 1;
                }
            } else if let Some(r) = self.retiring.iter_mut().find(|r| r.generation == generation) {
                // Ended (cancelled, or by the kernel): not re-armed.
                r.recv_armed = r.recv_armed.saturating_sub(1);
            }
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            match -res {
                // Every provided buffer was in use: the kernel ended the multishot. Datagrams
                // wait in the socket's receive queue (nothing is lost yet); the buffers come
                // back as we process completions and the receive is re-armed next turn.
                libc::ENOBUFS => self.stats.recv_starved += 1,
                // Cancelled on shutdown.
                libc::ECANCELED => {}
                // ICMP errors (ECONNREFUSED, EHOSTUNREACH, …) are reported on the socket and
                // end the multishot; QUIC handles loss itself, so just re-arm.
                e => debug!("recvmsg completion error: {}", io::Error::from_raw_os_error(e)),
            }
            return;
        };
        let (Some(rx), Some(ring)) = (self.rx.as_mut(), self.buf_ring.as_mut()) else {
            return;
        };
        if bid as usize >= rx.buf_count() {
            // Not a buffer we provided: never trust it, never recycle it.
            warn!(bid, "receive completion names an unknown buffer");
            self.stats.recv_dropped += 1;
            return;
        }
        if res >= 0 {
            let len = res as usize;
            // SAFETY: this completion returned buffer `bid` (the kernel writes it no more until
            // it goes back to the ring below); `len` covers only initialised bytes: the header
            // part, zeroed at creation, and the payload the kernel wrote (see `RxSlots`).
            let filled = unsafe { rx.filled(bid as usize, len) };
            match filled.map(|b| (parse(b, &self.recv_msg), b)) {
                // A small receive (the per-packet path of request/response traffic): copied
                // out of the buffer in hand, which then goes straight back to the ring.
                Some((Ok(p), b)) if p.payload.len() < self.zero_copy_min => {
                    p.copy_out(b, &mut self.copies, &mut self.stats, on_recv)
                }
                // Zero-copy, within the lending budget: the buffer itself goes to quinn-proto
                // (decrypted in place) and on to the application's chunks; another takes its
                // ring slot. Over the budget it is copied like a small one.
                Some((Ok(p), _)) => {
                    // SAFETY: as for `filled` above: the kernel is done with buffer `bid` and
                    // `p.payload.end` ≤ `len` (parsed from within it).
                    match unsafe { rx.lend(bid as usize, p.payload.clone()) } {
                        Some(data) => {
                            self.stats.recv_zero_copy += 1;
                            recv::deliver_lent(data, p.segment_size, p.meta, &mut self.stats, on_recv);
                        }
                        // SAFETY: as for `filled` above; `lend` refused, so buffer `bid` is
                        // still in its slot, unchanged.
                        None => match unsafe { rx.filled(bid as usize, len) } {
                            Some(b) => p.copy_out(b, &mut self.copies, &mut self.stats, on_recv),
                            None => self.stats.recv_dropped += 1,
                        },
                    }
                }
                _ => self.stats.recv_dropped += 1,
            }
        }
        // The buffer (or the fresh one that replaced it) goes back to the kernel.
        ring.push(rx, bid);
        ring.publish();
    }

    fn handle_send(&mut self, slot: u32, res: i32, flags: u32) {
        if cqueue::notif(flags) {
            // Zero-copy send, second completion: only now is the buffer the kernel's no more.
            if res & NOTIF_USAGE_ZC_COPIED != 0 {
                self.stats.send_zero_copy_copied += 1;
            }
            if self.tx.complete(slot) {
                self.send_done(slot);
            } else {
                warn!(slot, "notification for a TX slot that was not in flight");
            }
            return;
        }
        let Some(len) = self.tx.parked(slot).map(<[u8]>::len) else {
            warn!(slot, "completion for a TX slot that was not in flight");
            return;
        };
        // A zero-copy send with MORE set is followed by a notification, which frees the slot.
        if !cqueue::more(flags) && self.tx.complete(slot) {
            self.send_done(slot);
        }
        if res >= 0 && (res as usize) < len {
            // UDP sends are all or nothing; a short count means the datagram is not what we
            // built. Count it as a failed send (QUIC treats it as loss).
            self.stats.send_errors += 1;
            debug!(sent = res, len, "short UDP send");
            return;
        }
        if res >= 0 {
            self.stats.count_sent(len, self.slots[slot as usize].segment);
            return;
        }
        let fixed_send = self.slots[slot as usize].fixed_send;
        match -res {
            // A kernel that registers buffers but will not send zero-copy from them: stop
            // using the registration (the datagram is lost like any failed send). Checked
            // first: such a send may be a GSO batch too, and its EINVAL says nothing about GSO.
            libc::EINVAL | libc::EFAULT if fixed_send => {
                warn!(
                    "zero-copy send from registered buffers failed ({}); not using them again",
                    io::Error::from_raw_os_error(-res)
                );
                for s in self.slots.iter_mut() {
                    s.fixed = None;
                }
                self.stats.send_errors += 1;
            }
            // The kernel refused a GSO batch (no checksum offload on the route, for one): the
            // batch is lost like any dropped datagram; later sends carry one datagram each.
            libc::EIO | libc::EINVAL
                if self.gso_segments > 1 && self.slots[slot as usize].segment.is_some() =>
            {
                warn!(
                    "GSO send failed ({}); sending one datagram per send from now on",
                    io::Error::from_raw_os_error(-res)
                );
                self.gso_segments = 1;
                self.stats.gso_disabled += 1;
                self.stats.send_errors += 1;
            }
            // Socket buffer full: the datagram is dropped, as a congested network would.
            libc::EAGAIN | libc::ENOBUFS => self.stats.send_errors += 1,
            libc::ECANCELED => {}
            e => {
                self.stats.send_errors += 1;
                debug!("sendmsg failed: {}", io::Error::from_raw_os_error(e));
            }
        }
    }

    /// The kernel gave `slot`'s buffer back: if its send went out on a retiring socket, that
    /// socket has one operation less in flight.
    fn send_done(&mut self, slot: u32) {
        let generation = self.slots[slot as usize].generation;
        if generation != self.generation {
            if let Some(r) = self.retiring.iter_mut().find(|r| r.generation == generation) {
                r.sends = r.sends.saturating_sub(1);
            }
        }
    }

    /// Queue the cancels of retiring sockets' receives that are due, and close every retiring
    /// socket the kernel has no operation on any more.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.retiring.len() {
            let (generation, recv_armed, sends, cancel_due) = {
                let r = &self.retiring[i];
                (r.generation, r.recv_armed, r.sends, r.cancel_due)
            };
            if recv_armed == 0 && sends == 0 {
                // Nothing of this socket is in the kernel's hands: close it.
                let r = self.retiring.swap_remove(i);
                debug!(addr = ?r.socket.local_addr().ok(), "old socket closed after rebind");
                continue;
            }
            if self.retiring[i].since.elapsed() > RETIRE_LIMIT {
                let r = self.retiring.swap_remove(i);
                warn!(
                    addr = ?r.socket.local_addr().ok(),
                    recv_armed, sends, "old socket still busy {RETIRE_LIMIT:?} after rebind; closing it"
                );
                continue;
            }
            if recv_armed > 0 && cancel_due && self.cancel_recv(generation) {
                self.retiring[i].cancel_due = false;
            }
            i += 1;
        }
    }

    /// Queue the cancel of the receive on the socket of `generation`; false if the submission
    /// queue had no room (try again later).
    #[must_use]
    fn cancel_recv(&mut self, generation: u32) -> bool {
        let target = RECV | u64::from(generation);
        // Every request with this user_data, however many are outstanding.
        let cancel = types::CancelBuilder::user_data(target).all();
        let sqe = opcode::AsyncCancel2::new(cancel)
            .build()
            .user_data(CANCEL | u64::from(generation));
        let pushed = self.push(sqe);
        if pushed {
            self.cancels_in_flight += 1;
        }
        pushed
    }

    /// A cancel completed. One that failed (nothing found, or the receive already running)
    /// while a retiring socket's receive is still armed is queued again next turn: that socket
    /// must not stay open for good.
    fn handle_cancel(&mut self, ud: u64, res: i32) {
        self.cancels_in_flight = self.cancels_in_flight.saturating_sub(1);
        if res >= 0 || ud & CANCEL_WAKE != 0 {
            return;
        }
        let generation = (ud & GENERATION_MASK) as u32;
        if let Some(r) = self.retiring.iter_mut().find(|r| r.generation == generation) {
            r.cancel_due = true;
        }
    }

    /// Submit queued SQEs and wait for a completion until `deadline`.
    fn enter(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.unsubmitted = 0;
        let now = Instant::now();
        let res = match deadline {
            Some(d) if d <= now => self.ring.submit(),
            Some(d) => {
                let wait = d - now;
                let ts = types::Timespec::new()
                    .sec(wait.as_secs())
                    .nsec(wait.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // ETIME: the deadline passed. EINTR: a signal. EBUSY/EAGAIN: the completion queue
                // is backed up and must be reaped first, which the caller does next.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    fn dispatch(&mut self, on_recv: &mut dyn FnMut(RecvMeta, BytesMut)) {
        let mut cqes = std::mem::take(&mut self.cqes);
        for (ud, res, flags) in cqes.drain(..) {
            match ud & KIND_MASK {
                RECV => self.handle_recv((ud & GENERATION_MASK) as u32, res, flags, on_recv),
                SEND => self.handle_send((ud & !KIND_MASK) as u32, res, flags),
                WAKE => {
                    self.waker.drain();
                    if !cqueue::more(flags) {
                        self.wake_armed = self.wake_armed.saturating_sub(1);
                    }
                }
                CANCEL => self.handle_cancel(ud, res),
                _ => warn!(user_data = ud, "completion with unknown user_data"),
            }
        }
        self.cqes = cqes;
    }

    fn quiescent(&self) -> bool {
        self.recv_armed == 0
            && self.retiring.iter().all(|r| r.recv_armed == 0)
            && self.wake_armed == 0
            && self.tx.in_flight() == 0
            && self.cancels_in_flight == 0
    }
}

/// What one completed receive buffer holds, as offsets into it.
struct Parsed {
    payload: std::ops::Range<usize>,
    meta: RecvMeta,
    segment_size: Option<usize>,
}

impl Parsed {
    /// Hand this receive on as a copy out of `buf`, the completed buffer it was parsed from.
    fn copy_out(
        &self,
        buf: &[u8],
        copies: &mut recv::Lender,
        stats: &mut IoStats,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) {
        recv::deliver(
            copies,
            &buf[self.payload.clone()],
            self.segment_size,
            self.meta,
            stats,
            on_recv,
        );
    }
}

/// Parse one completed receive buffer (`io_uring_recvmsg_out`, name, control, payload).
fn parse(buf: &[u8], msg: &libc::msghdr) -> Result<Parsed, ()> {
    let out = types::RecvMsgOut::parse(buf, msg)?;
    // A cut control area may have lost the UDP_GRO message: the batch would reach quinn-proto
    // as one datagram. Drop it (counted) instead.
    if out.is_payload_truncated() || out.is_name_data_truncated() || out.is_control_data_truncated() {
        return Err(());
    }
    let remote = cmsg::parse_sockaddr(out.name_data()).ok_or(())?;
    let c = cmsg::parse(out.control_data());
    let payload = out.payload_data();
    // `payload_data` is a sub-slice of `buf`: its offset is the distance between the two.
    let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
    Ok(Parsed {
        payload: start..start + payload.len(),
        meta: RecvMeta {
            remote,
            local_ip: c.dst_ip,
            ecn: c.ecn,
        },
        segment_size: c.segment_size,
    })
}

impl IoBackend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_gso_segments(&self) -> usize {
        self.gso_segments
    }

    fn tx_pool(&mut self) -> (&mut TxPool, &mut IoStats) {
        (&mut self.tx, &mut self.stats)
    }

    fn send(&mut self, mut buf: TxBuf, t: &Transmit) {
        let slot_id = buf.slot;
        let batch = Batch::new(&buf, t);
        buf.buf.truncate(batch.len);
        let dst = cmsg::wire_addr(t.destination, self.socket_is_v6);
        let seg = batch.segment_size.filter(|_| self.gso_segments > 1);
        let cm = SendCmsgs {
            segment_size: seg.and_then(|s| u16::try_from(s).ok()),
            ecn: t.ecn,
            src_ip: t.src_ip,
        };
        let data = self.tx.park(buf);
        let (ptr, len) = (data.as_ptr(), data.len());
        let slot = &mut self.slots[slot_id as usize];
        slot.name = socket2::SockAddr::from(dst);
        slot.segment = seg;
        let clen = cmsg::encode(&mut slot.control, t.destination.is_ipv4(), &cm);
        slot.iov = libc::iovec {
            iov_base: ptr as *mut _,
            iov_len: len,
        };
        slot.msg.msg_name = slot.name.as_ptr() as *mut _;
        slot.msg.msg_namelen = slot.name.len();
        slot.msg.msg_iov = &mut slot.iov;
        slot.msg.msg_iovlen = 1;
        slot.msg.msg_control = if clen > 0 {
            slot.control.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        slot.msg.msg_controllen = clen;
        slot.msg.msg_flags = 0;
        slot.generation = self.generation;
        let fd = types::Fd(self.socket.as_raw_fd());
        let sqe = if len >= self.send_zc_min {
            self.stats.send_zero_copy += 1;
            // The registration holds only while the buffer is the memory registered (quinn-proto
            // never grows it past its capacity, but a moved buffer must not use it).
            let fixed = slot
                .fixed
                .filter(|&(p, c)| p == ptr as usize && len <= c)
                .map(|_| slot_id as u16);
            slot.fixed_send = fixed.is_some();
            opcode::SendMsgZc::new(fd, &slot.msg)
                .ioprio(SEND_ZC_REPORT_USAGE)
                .buf_index(fixed)
                .build()
        } else {
            slot.fixed_send = false;
            opcode::SendMsg::new(fd, &slot.msg).build()
        }
        .user_data(SEND | slot_id as u64);
        if !self.push(sqe) {
            // Never reached the kernel: the buffer is ours again; the datagram is lost.
            self.stats.send_errors += 1;
            self.tx.complete(slot_id);
        }
        // Large batches go to the kernel at once, so it copies and delivers one while
        // quinn-proto builds the next (on two cores that keeps the receiver busy); small sends
        // wait for the turn's single io_uring_enter.
        self.unsubmitted += len;
        if self.unsubmitted >= EAGER_SUBMIT_BYTES {
            self.unsubmitted = 0;
            if let Err(e) = self.ring.submit() {
                debug!("early submit: {e}");
            }
        }
    }

    fn turn(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<()> {
        if self.recv_armed == 0 {
            self.arm_recv();
        }
        if self.wake_armed == 0 {
            self.arm_wake();
        }
        // Completions already waiting mean there is work: do not sleep. That includes those
        // reaped into `cqes` while making room in a full submission queue.
        let deadline = self.sleep_until(deadline);
        self.enter(deadline)?;
        self.reap_into_buffer();
        self.dispatch(on_recv);
        if !self.retiring.is_empty() {
            self.retire();
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wakeup> {
        self.waker.clone()
    }

    /// Completions already waiting mean there is work: do not sleep. That includes those
    /// reaped into `cqes` while making room in a full submission queue. Without an armed
    /// wakeup poll (it could not be queued), sleep at most `UNARMED_WAKE_SLEEP`.
    fn sleep_until(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        if !self.ring.completion().is_empty() || !self.cqes.is_empty() {
            Some(Instant::now())
        } else if self.wake_armed == 0 {
            let cap = Instant::now() + UNARMED_WAKE_SLEEP;
            Some(deadline.map_or(cap, |d| d.min(cap)))
        } else {
            deadline
        }
    }

    fn needs_turn(&mut self) -> bool {
        !self.ring.submission().is_empty()
            || !self.ring.completion().is_empty()
            || !self.cqes.is_empty()
            || self.recv_armed == 0
            || self.wake_armed == 0
            || !self.retiring.is_empty()
    }

    fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.ring.as_fd())
    }

    fn direct_sender(&self, max_segments: usize) -> Option<super::direct::DirectSender> {
        let sender = super::direct::DirectSender::new(
            socket2::SockRef::from(&self.socket),
            max_segments.min(self.gso_segments),
        );
        sender.map_err(|e| tracing::debug!("no direct sends: {e}")).ok()
    }

    /// The counters. `recv_buffers_lent` is counted when asked: the kernel's ring buffers lent
    /// zero-copy plus the pooled copies.
    fn stats(&self) -> IoStats {
        let lent = self.rx.as_ref().map_or(0, |rx| rx.lent()) + self.copies.lent();
        IoStats {
            recv_buffers_lent: lent as u64,
            ..self.stats
        }
    }

    fn rebind(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
        if self.shut_down {
            return Err(super::seam::shut_down());
        }
        // The new socket is made ready first: if that fails, nothing has changed.
        let prepared = socket.local_addr().and_then(|local| {
            cmsg::configure_socket(&socket, self.want_gro)
                .map(|f| (local, f))
                .map_err(io::Error::from)
        });
        let (local, features) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.stats.rebinds_failed += 1;
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.socket, socket);
        let old_generation = self.generation;
        // A generation still retiring is never reused (it would take 2^32 rebinds to come round).
        self.generation = self.generation.wrapping_add(1);
        while self.retiring.iter().any(|r| r.generation == self.generation) {
            self.generation = self.generation.wrapping_add(1);
        }
        self.socket_is_v6 = local.is_ipv6();
        self.gso_segments = features.gso_segments;
        self.gro = features.gro;
        // Every slot in flight now was sent on the old socket (or an older one, which keeps its
        // own count).
        let sends = (0..self.slots.len())
            .filter(|&i| self.slots[i].generation == old_generation && self.tx.parked(i as u32).is_some())
            .count();
        self.retiring.push(Retiring {
            socket: old,
            generation: old_generation,
            recv_armed: std::mem::take(&mut self.recv_armed),
            sends,
            cancel_due: true,
            since: Instant::now(),
        });
        self.arm_recv();
        self.retire();
        self.stats.rebinds += 1;
        debug!(
            %local,
            gro = features.gro,
            gso = features.gso_segments,
            "rebound to a new socket"
        );
        Ok(local)
    }

    fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        // Cancel the receive and the eventfd poll, every request with their user_data however
        // many are outstanding; the retiring sockets' receives are cancelled (again) by
        // `retire` in the wait below.
        let current = RECV | u64::from(self.generation);
        let wake_cancel = CANCEL | CANCEL_WAKE;
        for (target, ud) in [
            (current, CANCEL | u64::from(self.generation)),
            (WAKE, wake_cancel),
        ] {
            let cancel = types::CancelBuilder::user_data(target).all();
            if self.push(opcode::AsyncCancel2::new(cancel).build().user_data(ud)) {
                self.cancels_in_flight += 1;
            }
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut sink = |_: RecvMeta, _: BytesMut| {};
        self.retire();
        while !self.quiescent() && Instant::now() < give_up {
            if let Err(e) = self.enter(Some(Instant::now() + Duration::from_millis(50))) {
                warn!("io_uring_enter during shutdown: {e}");
                break;
            }
            self.reap_into_buffer();
            self.dispatch(&mut sink);
            self.retire();
        }
        if self.quiescent() {
            // SAFETY-relevant ordering: nothing references the provided buffers any more, so
            // the ring can be unregistered and, in Drop, freed.
            if self.slots.iter().any(|s| s.fixed.is_some()) {
                // Nothing is in flight, so nothing reads the registered TX buffers.
                if let Err(e) = self.ring.submitter().unregister_buffers() {
                    debug!("unregistering the TX buffers: {e}");
                }
            }
            if let Err(e) = self.ring.submitter().unregister_buf_ring(BGID) {
                warn!("unregistering the buffer ring failed: {e}; leaking it");
                std::mem::forget(self.buf_ring.take());
                std::mem::forget(self.rx.take());
            }
        } else {
            warn!("io_uring operations still in flight after 5 s; leaking their buffers rather than freeing them under the kernel");
            std::mem::forget(self.buf_ring.take());
            std::mem::forget(self.rx.take());
            std::mem::forget(std::mem::replace(&mut self.slots, Box::new([])));
            std::mem::forget(std::mem::replace(&mut self.tx, TxPool::new(0, 0)));
            std::mem::forget(std::mem::replace(
                &mut self.recv_msg,
                Box::new(
                    // SAFETY: zeroed msghdr is a valid empty value.
                    unsafe { std::mem::zeroed() },
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{
        assert_wakeup_ends_an_unbounded_turn, collect, send, send_gso_batch, shut_down_with_sends_in_flight,
        turn_until,
    };
    use std::net::UdpSocket;

    fn cfg(recv_buffers: usize, recv_buffer_size: usize) -> IoConfig {
        IoConfig::for_tests(recv_buffers, recv_buffer_size, 4, 65536)
    }

    fn backend(c: &IoConfig) -> Option<UringBackend> {
        let ring = match open_ring(c) {
            Ok(r) => r,
            Err(e) => {
                // CI sets RINGQUIC_REQUIRE_URING where the kernel has io_uring: a skip there is
                // a failure, never a silent pass.
                assert!(
                    std::env::var_os("RINGQUIC_REQUIRE_URING").is_none(),
                    "io_uring is required here (RINGQUIC_REQUIRE_URING) but unavailable: {e}"
                );
                eprintln!("SKIPPED: io_uring unavailable here ({e})");
                return None;
            }
        };
        let sock = crate::socket::create("127.0.0.1:0".parse().unwrap()).unwrap();
        Some(UringBackend::new(ring, sock, c).unwrap())
    }

    const TWO_SECONDS: Duration = Duration::from_secs(2);

    #[test]
    fn gso_send_arrives_split_with_metadata() {
        let c = cfg(16, 65536 + 256);
        let (Some(mut a), Some(mut b)) = (backend(&c), backend(&c)) else {
            return;
        };
        let got = send_gso_batch(&mut a, &mut b, TWO_SECONDS);
        assert_eq!(got.len(), 5);
        for (i, (meta, d)) in got.iter().enumerate() {
            assert_eq!(d.len(), 1200);
            assert!(d.iter().all(|x| *x == i as u8));
            assert_eq!(meta.remote, a.local_addr().unwrap());
            assert_eq!(meta.local_ip, Some("127.0.0.1".parse().unwrap()));
            assert_eq!(meta.ecn, Some(quinn_proto::EcnCodepoint::Ect0));
        }
        // The send completion returned the buffer.
        turn_until(&mut a, TWO_SECONDS, |a| a.tx.in_flight() == 0);
        assert_eq!(a.tx.in_flight(), 0);
        assert_eq!(a.stats().datagrams_sent, 5);
        assert_eq!(b.stats().datagrams_received, 5);
    }

    /// More datagrams than receive buffers: the ring runs dry (ENOBUFS ends the multishot), it
    /// is counted and re-armed, nothing is lost, and traffic flows again afterwards.
    #[test]
    fn receive_flood_larger_than_the_pool_recovers() {
        let c = cfg(2, 2048);
        let Some(mut b) = backend(&c) else { return };
        assert!(!b.gro(), "2 KiB buffers cannot hold a GRO batch");
        let to = b.local_addr().unwrap();
        // Send only what the socket's receive buffer surely holds (a 1000-byte datagram costs
        // at most ~2.3 KiB of it on loopback; 4 KiB is counted), so none is dropped by the
        // kernel and every one must come through our two-buffer ring.
        let rcvbuf = socket2::SockRef::from(&b.socket).recv_buffer_size().unwrap();
        let n = (rcvbuf / 4096).clamp(8, 200);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..n {
            sender.send_to(&[1u8; 1000], to).unwrap();
        }
        let got = collect(&mut b, n, Duration::from_millis(300));
        assert!(!got.is_empty());
        assert!(got
            .iter()
            .all(|(_, d)| d.len() == 1000 && d.iter().all(|x| *x == 1)));
        // Recovery: new datagrams arrive.
        sender.send_to(b"after", to).unwrap();
        let after = collect(&mut b, 1, TWO_SECONDS);
        assert_eq!(after.len(), 1, "stats: {:?}", b.stats());
        assert_eq!(&after[0].1[..], b"after");
        let s = b.stats();
        assert_eq!(s.datagrams_received as usize, got.len() + 1, "{s:?}");
        // Two buffers for `n` queued datagrams: the ring ran dry and was re-armed, and the
        // datagrams waited in the socket buffer meanwhile instead of being lost.
        assert!(s.recv_starved > 0 && s.recv_rearms > 0, "{s:?}");
        assert_eq!(got.len(), n, "{s:?}");
    }

    #[test]
    fn wakeup_ends_a_sleep_and_shutdown_reaps_everything() {
        let c = cfg(8, 65536 + 256);
        let Some(mut b) = backend(&c) else { return };
        assert_wakeup_ends_an_unbounded_turn(&mut b);
        // Everything in flight completes before memory is freed.
        shut_down_with_sends_in_flight(&mut b);
        assert!(b.quiescent());
        assert!(b.rx.is_some(), "memory was reclaimed, not leaked");
    }

    const F_BUFFER: u32 = 1 << 0;
    const F_MORE: u32 = 1 << 1;
    /// `IORING_CQE_F_NOTIF`.
    const F_NOTIF: u32 = 1 << 3;

    /// A backend on a socket with GSO (for the tests of how GSO failures are taken).
    fn gso_backend() -> Option<UringBackend> {
        let b = backend(&cfg(8, 65536 + 256))?;
        assert!(b.max_gso_segments() > 1, "GSO probe failed on this kernel");
        Some(b)
    }

    /// Park a TX buffer of `len` bytes as if sent (no SQE: the kernel never sees it), as a batch
    /// of `segment`-byte datagrams (`None`: one datagram), zero-copy from its registered buffer
    /// if `fixed_send`. Returns its slot, for [`complete_send`].
    fn park_as_sent(b: &mut UringBackend, len: usize, segment: Option<usize>, fixed_send: bool) -> u32 {
        let mut tx = b.take_tx().unwrap();
        tx.buf.resize(len, 0);
        let slot = tx.slot;
        let s = &mut b.slots[slot as usize];
        s.segment = segment;
        s.fixed_send = fixed_send;
        if fixed_send {
            s.fixed = Some((0, 0));
        }
        b.tx.park(tx);
        slot
    }

    /// Inject the completion of a send from `slot` with this result and these flags, and
    /// dispatch it.
    fn complete_send(b: &mut UringBackend, slot: u32, res: i32, flags: u32) {
        b.cqes.push((SEND | slot as u64, res, flags));
        b.dispatch(&mut |_, _| {});
    }

    /// A receive whose control area the kernel cut (`MSG_CTRUNC`) may have lost its `UDP_GRO`
    /// message, so its payload could be a whole batch taken for one datagram: it is refused.
    #[test]
    fn a_receive_with_a_cut_control_area_is_refused() {
        // A completed buffer as the kernel lays it out: io_uring_recvmsg_out, the name area
        // (a sockaddr_in), an empty control area, a 10-byte payload.
        let mut buf = vec![0u8; RECV_HEADROOM + 10];
        let header = |flags: u32| {
            let mut h = Vec::new();
            for v in [std::mem::size_of::<libc::sockaddr_in>() as u32, 0, 10, flags] {
                h.extend_from_slice(&v.to_ne_bytes());
            }
            h
        };
        buf[RECVMSG_OUT..RECVMSG_OUT + 2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buf[RECVMSG_OUT + 2..RECVMSG_OUT + 4].copy_from_slice(&4433u16.to_be_bytes());
        buf[RECVMSG_OUT + 4..RECVMSG_OUT + 8].copy_from_slice(&[127, 0, 0, 1]);
        // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths); only its
        // two length fields are read.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_namelen = NAME_LEN as u32;
        msg.msg_controllen = CONTROL_LEN as _;
        buf[..RECVMSG_OUT].copy_from_slice(&header(0));
        let ok = parse(&buf, &msg).expect("an intact receive parses");
        assert_eq!(ok.payload.len(), 10);
        assert_eq!(ok.meta.remote, "127.0.0.1:4433".parse().unwrap());
        buf[..RECVMSG_OUT].copy_from_slice(&header(libc::MSG_CTRUNC as u32));
        assert!(parse(&buf, &msg).is_err(), "a cut control area must be refused");
    }

    /// Completions the kernel rarely produces on demand, injected: the backend counts them,
    /// re-arms, ignores what it cannot trust, and keeps working.
    #[test]
    fn synthetic_completions_are_handled() {
        let c = cfg(8, 65536 + 256);
        let Some(mut b) = backend(&c) else { return };
        let mut none = |_: RecvMeta, _: BytesMut| panic!("nothing should be delivered");
        // ENOBUFS ends the multishot: counted as starvation, re-armed on the next turn.
        b.cqes.push((RECV, -libc::ENOBUFS, 0));
        // Another error ending it (an ICMP error, say): re-armed too.
        b.cqes.push((RECV, -libc::ECONNREFUSED, 0));
        // A buffer id we never provided: dropped, not recycled, no panic.
        b.cqes.push((RECV, 100, F_BUFFER | F_MORE | (9999 << 16)));
        // A send completion for a slot that is not in flight (duplicate): ignored.
        b.cqes.push((SEND | 3, 1200, 0));
        // Unknown user_data: ignored.
        b.cqes.push((0x77 << 56, 0, 0));
        b.dispatch(&mut none);
        let s = b.stats();
        assert_eq!(s.recv_starved, 1);
        assert_eq!(s.recv_rearms, 2);
        assert_eq!(s.recv_dropped, 1);
        assert_eq!(b.tx.in_flight(), 0);
        b.turn(Some(Instant::now()), &mut none).unwrap();
        assert!(b.recv_armed >= 1, "the receive was re-armed");
        // And it still receives.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"still alive", b.local_addr().unwrap()).unwrap();
        let got = collect(&mut b, 1, TWO_SECONDS);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].1[..], b"still alive");
        b.shutdown();
        assert!(b.quiescent());
    }

    /// Zero-copy sends (`SENDMSG_ZC`, from registered buffers where the kernel allows) arrive
    /// intact, and a buffer is free again only after the kernel's notification.
    #[test]
    fn zero_copy_sends_arrive_and_free_buffers_on_the_notification() {
        let mut c = cfg(16, 65536 + 256);
        let Some(mut b) = backend(&c) else { return };
        c.send_zc_min = 0;
        let Some(mut a) = backend(&c) else { return };
        if a.send_zc_min == usize::MAX {
            eprintln!("SKIPPED: no SENDMSG_ZC in this kernel");
            return;
        }
        let registered = a.slots.iter().all(|s| s.fixed.is_some());
        let to = b.local_addr().unwrap();
        for (i, (size, seg)) in [(6000, Some(1200)), (1200, None), (12_000, Some(1200))]
            .into_iter()
            .enumerate()
        {
            send(&mut a, to, &vec![i as u8; size], seg);
        }
        a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let got = collect(&mut b, 16, TWO_SECONDS);
        assert_eq!(got.len(), 16);
        assert_eq!(got.iter().map(|(_, d)| d.len()).sum::<usize>(), 19_200);
        turn_until(&mut a, TWO_SECONDS, |a| a.tx.in_flight() == 0);
        assert_eq!(a.tx.in_flight(), 0, "every notification arrived");
        let s = a.stats();
        assert_eq!(
            (s.send_zero_copy, s.datagrams_sent, s.send_errors),
            (3, 16, 0),
            "{s:?}"
        );
        eprintln!(
            "zero-copy sends: {}, copied by the kernel anyway: {}, from registered buffers: {registered}",
            s.send_zero_copy, s.send_zero_copy_copied
        );
    }

    /// The two completions of a zero-copy send, injected: the first (MORE) accounts the send
    /// and keeps the buffer; the notification frees it; a stray notification is ignored.
    #[test]
    fn zero_copy_send_completions_free_the_buffer_once() {
        let c = cfg(8, 65536 + 256);
        let Some(mut b) = backend(&c) else { return };
        let slot = park_as_sent(&mut b, 1200, None, false);
        complete_send(&mut b, slot, 1200, F_MORE);
        assert_eq!(b.tx.in_flight(), 1, "held until the notification");
        assert_eq!(b.stats().datagrams_sent, 1);
        complete_send(&mut b, slot, NOTIF_USAGE_ZC_COPIED, F_NOTIF);
        assert_eq!(b.tx.in_flight(), 0);
        assert_eq!(b.stats().send_zero_copy_copied, 1);
        complete_send(&mut b, slot, 0, F_NOTIF);
        assert_eq!(b.tx.in_flight(), 0, "a duplicate notification changes nothing");
        assert!(b.has_free_tx());
    }

    /// With the threshold at 0, received datagrams are slices of the very buffers the kernel
    /// was given, and those ring slots get fresh buffers.
    #[test]
    fn zero_copy_receive_hands_over_the_kernels_buffer() {
        let mut c = cfg(8, 65536 + 256);
        c.zero_copy_min = 0;
        c.recv_memory_budget = usize::MAX;
        let Some(mut b) = backend(&c) else { return };
        let size = c.recv_buffer_size;
        let provided: Vec<usize> = {
            let rx = b.rx.as_mut().unwrap();
            (0..rx.buf_count()).map(|i| rx.addr(i) as usize).collect()
        };
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            sender.send_to(&[i; 700], b.local_addr().unwrap()).unwrap();
        }
        let got = collect(&mut b, 3, TWO_SECONDS);
        assert_eq!(got.len(), 3);
        for (_, d) in &got {
            let p = d.as_ptr() as usize;
            assert!(
                provided
                    .iter()
                    .any(|&base| p >= base && p + d.len() <= base + size),
                "a datagram outside every provided buffer: copied"
            );
        }
        assert!(b.stats().recv_zero_copy >= 1);
        let now: Vec<usize> = {
            let rx = b.rx.as_mut().unwrap();
            (0..rx.buf_count()).map(|i| rx.addr(i) as usize).collect()
        };
        assert!(
            now.iter().zip(&provided).any(|(a, b)| a != b),
            "used slots were refilled"
        );
    }

    /// A GSO batch refused at run time (EIO) turns GSO off; short sends and EAGAIN are counted
    /// as send errors; buffers always come back.
    #[test]
    fn failed_sends_degrade_gso_and_return_buffers() {
        let Some(mut b) = gso_backend() else { return };
        for (segment, res) in [(Some(1200), -libc::EIO), (None, 500), (None, -libc::EAGAIN)] {
            let slot = park_as_sent(&mut b, 2400, segment, false);
            complete_send(&mut b, slot, res, 0);
        }
        let s = b.stats();
        assert_eq!(b.max_gso_segments(), 1, "GSO off after EIO");
        assert_eq!(s.gso_disabled, 1);
        assert_eq!(s.send_errors, 3);
        assert_eq!(b.tx.in_flight(), 0);
        assert!(b.has_free_tx());
    }

    /// `EINVAL` from a zero-copy send from a registered buffer says the kernel will not send
    /// from the registration; it says nothing about GSO, even for a GSO batch: the
    /// registration is dropped, GSO stays on. (`EINVAL` on an ordinary GSO send still turns
    /// GSO off.)
    #[test]
    fn a_refused_zero_copy_send_is_not_taken_for_a_gso_refusal() {
        let Some(mut b) = gso_backend() else { return };
        let fail = |b: &mut UringBackend, fixed_send: bool| {
            let slot = park_as_sent(b, 2400, Some(1200), fixed_send);
            complete_send(b, slot, -libc::EINVAL, 0);
        };
        fail(&mut b, true);
        assert!(b.max_gso_segments() > 1, "GSO still on");
        assert!(b.slots.iter().all(|s| s.fixed.is_none()), "registration dropped");
        assert_eq!(b.stats().gso_disabled, 0);
        fail(&mut b, false);
        assert_eq!(
            b.max_gso_segments(),
            1,
            "an ordinary GSO send's EINVAL turns GSO off"
        );
        assert_eq!(b.tx.in_flight(), 0);
    }

    /// Bind `addr` again, retrying for up to `within` (the kernel releases a socket's port when
    /// its last reference goes, which for an io_uring operation is when it completes).
    fn rebind_port(addr: SocketAddr, within: Duration) -> io::Result<UdpSocket> {
        let end = Instant::now() + within;
        loop {
            match UdpSocket::bind(addr) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// `rebind` serves the new socket at once and closes the old one only once the kernel is
    /// done with it: its multishot receive cancelled and ended, every send submitted on it
    /// (here still in the submission queue at the rebind) completed. Then nothing is left on
    /// the old descriptor, its port can be bound again, and the new socket sends and receives.
    #[test]
    fn rebind_closes_the_old_socket_once_nothing_is_in_flight() {
        let c = cfg(8, 65536 + 256);
        let (Some(mut a), Some(mut peer)) = (backend(&c), backend(&c)) else {
            return;
        };
        let old = a.local_addr().unwrap();
        let to = peer.local_addr().unwrap();
        for i in 0..3u8 {
            send(&mut a, to, &[i; 1000], None);
        }
        assert_eq!((a.recv_armed, a.tx.in_flight()), (1, 3));
        let fresh = crate::socket::create("127.0.0.1:0".parse().unwrap()).unwrap();
        let new = fresh.local_addr().unwrap();
        assert_eq!(a.rebind(fresh).unwrap(), new);
        assert_eq!(a.local_addr().unwrap(), new);
        assert_eq!(a.recv_armed, 1, "the new socket's receive is armed");
        assert_eq!(
            a.retiring.len(),
            1,
            "the old socket stays open while the kernel has its operations"
        );
        assert_eq!((a.retiring[0].recv_armed, a.retiring[0].sends), (1, 3));
        turn_until(&mut a, TWO_SECONDS, |a| a.retiring.is_empty());
        assert!(a.retiring.is_empty(), "old socket still open: {:?}", a.stats());
        assert_eq!(a.tx.in_flight(), 0);
        assert_eq!(a.cancels_in_flight, 0);
        rebind_port(old, TWO_SECONDS).expect("the old socket's port is free again");
        // What was sent before the rebind left from the old address, what is sent now from the
        // new one; the new socket receives.
        let before = collect(&mut peer, 3, TWO_SECONDS);
        assert_eq!(before.len(), 3);
        assert!(before.iter().all(|(m, d)| m.remote == old && d.len() == 1000));
        send(&mut a, to, b"after", None);
        a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let after = collect(&mut peer, 1, TWO_SECONDS);
        assert_eq!(after.len(), 1);
        assert_eq!((after[0].0.remote, &after[0].1[..]), (new, &b"after"[..]));
        send(&mut peer, new, b"to the new socket", None);
        peer.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let got = collect(&mut a, 1, TWO_SECONDS);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].1[..], b"to the new socket");
        let s = a.stats();
        assert_eq!((s.rebinds, s.rebinds_failed, s.send_errors), (1, 0, 0), "{s:?}");
        a.shutdown();
        assert!(
            a.quiescent() && a.rx.is_some(),
            "shut down cleanly, memory reclaimed"
        );
    }

    /// Rebinds in a row, each while the previous old socket may still be retiring, and a
    /// shutdown right after the last one: every old socket is closed, the shutdown waits for
    /// their operations too and frees the memory (does not leak it).
    #[test]
    fn rebinds_in_a_row_then_shutdown() {
        let c = cfg(8, 65536 + 256);
        let Some(mut a) = backend(&c) else { return };
        let discard: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut olds = vec![a.local_addr().unwrap()];
        for _ in 0..4 {
            send(&mut a, discard, &[0u8; 1200], None);
            let fresh = crate::socket::create("127.0.0.1:0".parse().unwrap()).unwrap();
            a.rebind(fresh).unwrap();
            olds.push(a.local_addr().unwrap());
        }
        olds.pop();
        assert!(!a.retiring.is_empty());
        a.shutdown();
        assert!(a.quiescent(), "everything completed");
        assert!(a.retiring.is_empty(), "every old socket closed");
        assert!(a.rx.is_some(), "memory was reclaimed, not leaked");
        for addr in olds {
            rebind_port(addr, TWO_SECONDS).expect("old port free");
        }
        assert_eq!(a.stats().rebinds, 4);
    }

    /// A socket the backend cannot set up (here: not an internet socket, so it has no UDP
    /// address) is refused and counted; the backend goes on with the socket it has.
    #[test]
    fn a_refused_rebind_keeps_the_old_socket() {
        let c = cfg(8, 65536 + 256);
        let (Some(mut a), Some(mut peer)) = (backend(&c), backend(&c)) else {
            return;
        };
        let old = a.local_addr().unwrap();
        let (unix, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let not_udp = UdpSocket::from(OwnedFd::from(unix));
        assert!(a.rebind(not_udp).is_err());
        assert_eq!(a.local_addr().unwrap(), old);
        assert!(a.retiring.is_empty());
        assert_eq!((a.stats().rebinds, a.stats().rebinds_failed), (0, 1));
        send(&mut peer, old, b"still here", None);
        peer.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let got = collect(&mut a, 1, TWO_SECONDS);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].1[..], b"still here");
    }

    /// A cancel that finds nothing while the retiring socket's receive is still armed (the
    /// kernel raced it) is queued again, so the old socket cannot stay open for good.
    #[test]
    fn a_failed_cancel_of_a_retiring_receive_is_retried() {
        let c = cfg(8, 65536 + 256);
        let Some(mut a) = backend(&c) else { return };
        let fresh = crate::socket::create("127.0.0.1:0".parse().unwrap()).unwrap();
        a.rebind(fresh).unwrap();
        let old_generation = a.retiring[0].generation;
        assert!(!a.retiring[0].cancel_due, "cancel queued at the rebind");
        a.cancels_in_flight += 1;
        a.cqes
            .push((CANCEL | u64::from(old_generation), -libc::ENOENT, 0));
        a.dispatch(&mut |_, _| {});
        // Nothing was submitted yet: the receive is still armed, and its cancel is due again.
        assert_eq!(a.retiring[0].recv_armed, 1);
        assert!(a.retiring[0].cancel_due, "the cancel is queued again");
        turn_until(&mut a, TWO_SECONDS, |a| a.retiring.is_empty());
        assert!(a.retiring.is_empty());
    }

    /// A submission queue smaller than one turn's sends: pushing submits as it goes, nothing is
    /// lost.
    #[test]
    fn tiny_submission_queue_still_sends_everything() {
        let mut c = cfg(16, 65536 + 256);
        c.tx_buffers = 32;
        let ring = match IoUring::builder().build(4) {
            Ok(r) => r,
            Err(_) => return,
        };
        let sock = crate::socket::create("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut a = UringBackend::new(ring, sock, &c).unwrap();
        let Some(mut b) = backend(&cfg(64, 65536 + 256)) else {
            return;
        };
        let to = b.local_addr().unwrap();
        for i in 0..32u8 {
            send(&mut a, to, &[i; 100], None);
        }
        a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let got = collect(&mut b, 32, TWO_SECONDS);
        assert_eq!(got.len(), 32);
        let mut seen: Vec<u8> = got.iter().map(|(_, d)| d[0]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..32).collect::<Vec<u8>>());
    }
}
