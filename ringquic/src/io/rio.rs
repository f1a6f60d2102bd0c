//! The Windows Registered I/O (RIO) backend (seed points 1, 2 and 6, on Windows).
//!
//! ```text
//!   one region, allocated and RIORegisterBuffer'ed once for the endpoint's life
//!   ┌──────────────────────────────┬───────────────────────┬─────────────────┬──────────────────┐
//!   │ rx payload 0 .. N-1          │ tx payload 0 .. M-1   │ SOCKADDR_INET   │ RIO_CMSG_BUFFERs │
//!   │ (kernel writes datagrams)    │ (TxBuf copied in)     │ rx/tx, 32 B each│ rx/tx, 128 B each│
//!   └──────────────▲───────────────┴───────────┬───────────┴─────────────────┴──────────────────┘
//!                  │ RIOReceiveEx × N          │ RIOSendEx (+UDP_SEND_MSG_SIZE, IP_ECN, PKTINFO)
//!                  │ (DEFER, one commit/turn)  │ (DEFER, one commit/turn)
//!   RIO request queue on the socket ──► one RIO completion queue ──► RIODequeueCompletion
//!                                                    │ RIONotify (armed only before sleeping)
//!                          event mode: SetEvent(rio) │ IOCP mode: packet(RIO_KEY)
//!   Wakeup::wake: SetEvent(wake) / packet(WAKE_KEY)  ▼
//!   I/O thread: [spin ≤ N µs on RIODequeueCompletion] → WaitForMultipleObjects([rio, wake])
//!                                                       or GetQueuedCompletionStatusEx(port)
//! ```
//!
//! * **Receive.** Every receive slot (`recv_buffers` of them) is posted with `RIOReceiveEx`,
//!   asking for the sender's address and the control messages (`IP_PKTINFO`/`IPV6_PKTINFO`,
//!   `IP_ECN`/`IPV6_ECN`, `UDP_COALESCED_INFO` when URO is on). A completion is parsed by
//!   [`rio_book`](super::rio_book), its payload copied out through `recv.rs` (per datagram, or
//!   a URO batch into a pooled buffer that is lent out), and the slot posted again at the end
//!   of the turn.
//! * **Send.** quinn-proto writes into a [`TxBuf`] (a `Vec`); `send` copies it into the TX slot
//!   of the same number in the registered region, with the destination and the control
//!   messages, and posts it with `RIOSendEx` — one request per USO batch (`UDP_SEND_MSG_SIZE`,
//!   probed with `getsockopt`), or one per datagram without USO. The copy is the price of
//!   registering one region once: quinn-proto's buffers are ordinary `Vec`s that could move.
//!   The slot is free again when the last request of its batch has completed.
//! * **Notification.** Either an event (`RIONotify` sets it; the thread waits on it and on the
//!   wakeup event together, so a wakeup can never be reset away by `RIONotify`) or an I/O
//!   completion port that both `RIONotify` and the wakeup post to. `RIONotify` is armed only
//!   when the queue was found empty and the thread is about to sleep. Optionally the thread
//!   busy-polls the queue for a few µs first (`RINGQUIC_RIO_SPIN_US`).
//! * **Rebind** (`Endpoint::rebind`). The new socket gets the options and its own request
//!   queue on the same completion queue (which is made with room for two queues, and grown if
//!   the system wants more) before anything changes; if either fails, the old socket is kept.
//!   Then everything deferred is committed, the new queue takes over, and the old socket is
//!   closed at once, which completes its outstanding requests with `WSA_OPERATION_ABORTED` on
//!   the shared completion queue: their slots come back as any completion's do (receive slots
//!   are then posted on the new queue). That is safe because those requests name only the
//!   registered region, which stays registered and allocated until `shutdown` has seen every
//!   request of either queue complete (the slot books count both). Sockets made without
//!   `WSA_FLAG_REGISTERED_IO` cannot carry a request queue: rebinding to one fails that way.
//! * **Shutdown.** Sends already posted (the CONNECTION_CLOSE frames) get a bounded time to
//!   complete, then the socket is closed, which completes every outstanding request with an
//!   error; completions are drained (bounded, 5 s), and only when nothing is outstanding is the
//!   completion queue closed, the buffer deregistered and the memory freed — in that order. If
//!   the drain cannot finish, everything the kernel might still touch is leaked deliberately
//!   and the leak is logged: leaking is safe, freeing under the kernel is not.
//!
//! The bookkeeping (slot accounting, request contexts, region layout, control-message bytes,
//! USO splitting) lives in [`rio_book`](super::rio_book), which is platform-independent and
//! unit-tested on Linux; this file is the system calls around it.

use std::{
    ffi::c_void,
    io,
    mem::{size_of, size_of_val},
    net::{SocketAddr, UdpSocket},
    os::windows::io::{AsRawHandle, AsRawSocket, FromRawHandle, FromRawSocket, OwnedHandle, RawSocket},
    ptr,
    sync::{
        atomic::{fence, AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn_proto::Transmit;
use tracing::{debug, trace, warn};
use windows_sys::Win32::{
    Foundation::{HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0, WAIT_TIMEOUT},
    Networking::WinSock as ws,
    System::{
        Threading::{CreateEventW, SetEvent, WaitForMultipleObjects},
        IO::{
            CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus, OVERLAPPED,
            OVERLAPPED_ENTRY,
        },
    },
};

use super::{
    addr::{addr_for_socket, canonical, ip_for_socket},
    bufpool::{RxArena, TxPool},
    recv,
    rio_book::{
        self, classify, decode_ctx, encode_rio_control, encode_sockaddr_inet, parse_rio_control,
        parse_sockaddr_inet, segments_per_part, wait_millis, CmsgLayout, RecvBook, RegionLayout, ReqKind,
        RioNotify, RioOptions, SendBook, SendControl, Span, Status, MAX_URO_BYTES, MAX_USO_BYTES,
        MAX_USO_SEGMENTS, SOCKADDR_INET_LEN,
    },
    send::Batch,
    BackendKind, IoBackend, IoConfig, IoStats, RecvMeta, TxBuf, Wakeup,
};

// The byte-level code in rio_book spells out the Windows ABI; check it against windows-sys.
const _: () = {
    assert!(rio_book::AF_INET == ws::AF_INET);
    assert!(rio_book::AF_INET6 == ws::AF_INET6);
    assert!(rio_book::IPPROTO_IP == ws::IPPROTO_IP);
    assert!(rio_book::IPPROTO_IPV6 == ws::IPPROTO_IPV6);
    assert!(rio_book::IPPROTO_UDP == ws::IPPROTO_UDP);
    assert!(rio_book::IP_PKTINFO == ws::IP_PKTINFO);
    assert!(rio_book::IPV6_PKTINFO == ws::IPV6_PKTINFO);
    assert!(rio_book::IP_ECN == ws::IP_ECN);
    assert!(rio_book::IPV6_ECN == ws::IPV6_ECN);
    assert!(rio_book::UDP_SEND_MSG_SIZE == ws::UDP_SEND_MSG_SIZE);
    assert!(rio_book::UDP_COALESCED_INFO as u32 == ws::UDP_COALESCED_INFO);
    assert!(SOCKADDR_INET_LEN == size_of::<ws::SOCKADDR_INET>());
    assert!(size_of::<ws::IN_PKTINFO>() == 8);
    assert!(size_of::<ws::IN6_PKTINFO>() == 20);
    assert!(size_of::<ws::CMSGHDR>() == CmsgLayout::NATIVE.header());
    assert!(size_of::<ws::RIO_CMSG_BUFFER>() == 4);
};

/// Completions handled per turn at most, so the driver gets control back regularly.
const CQE_BOUND: usize = 1024;
/// Completions taken per `RIODequeueCompletion` call.
const DEQUEUE_BATCH: usize = 128;
/// Concurrent send requests per TX slot (parts of split batches may overlap).
const SEND_DEPTH_PER_SLOT: usize = 2;
/// How long shutdown waits for posted sends before closing the socket.
const SHUTDOWN_SEND_WAIT: Duration = Duration::from_millis(500);
/// How long shutdown waits, in all, for the kernel to give every buffer back.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// If no receive could be posted, sleep at most this long before trying again.
const REPOST_RETRY_MS: u32 = 10;
/// IOCP completion keys.
const RIO_KEY: usize = 1;
const WAKE_KEY: usize = 2;

/// The function pointer inside an `LPFN_*` (`Option<fn>`) type.
type RioFn<T> = <T as IntoIterator>::Item;
/// `RIOReceiveEx` and `RIOSendEx`, whose signatures are the same.
type RioPostFn = RioFn<ws::LPFN_RIOSENDEX>;
/// `RIO_INVALID_BUFFERID` (`(RIO_BUFFERID)(ULONG_PTR)0xFFFFFFFF`; not in windows-sys).
const RIO_INVALID_BUFFERID: ws::RIO_BUFFERID = 0xFFFF_FFFF;

fn last_wsa_error() -> io::Error {
    // SAFETY: reads the calling thread's last Winsock error; no arguments.
    io::Error::from_raw_os_error(unsafe { ws::WSAGetLastError() })
}

fn raw(socket: &UdpSocket) -> ws::SOCKET {
    socket.as_raw_socket() as ws::SOCKET
}

/// Make sure Winsock is initialised before the first `WSASocketW` (std does it lazily, on its
/// own first socket). The reference taken is kept for the process's life, as std's is.
fn winsock_init() -> io::Result<()> {
    static INIT: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = *INIT.get_or_init(|| {
        // SAFETY: WSADATA is plain old data; all-zero is a valid value for WSAStartup to fill.
        let mut data: ws::WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a live, writable WSADATA.
        match unsafe { ws::WSAStartup(0x0202, &mut data) } {
            0 => Ok(()),
            e => Err(e),
        }
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// `socket2::Socket::new`, but created with `WSA_FLAG_REGISTERED_IO` (plus
/// `WSA_FLAG_OVERLAPPED`, which the portable backend's IOCP polling needs, and no handle
/// inheritance), unbound. Only sockets made like this can carry a RIO request queue; the flag
/// cannot be added later, which is why `socket::create` makes its sockets here on Windows.
pub(crate) fn registered_socket(
    domain: socket2::Domain,
    ty: socket2::Type,
    protocol: socket2::Protocol,
) -> io::Result<socket2::Socket> {
    winsock_init()?;
    let flags = ws::WSA_FLAG_OVERLAPPED | ws::WSA_FLAG_REGISTERED_IO | ws::WSA_FLAG_NO_HANDLE_INHERIT;
    // SAFETY: plain call without pointers (no protocol info); the result is checked.
    let s = unsafe {
        ws::WSASocketW(
            i32::from(domain),
            i32::from(ty),
            i32::from(protocol),
            ptr::null(),
            0,
            flags,
        )
    };
    if s == ws::INVALID_SOCKET {
        return Err(last_wsa_error());
    }
    // SAFETY: `s` is a valid socket that nothing else owns; the `Socket` takes ownership and
    // closes it on drop.
    Ok(unsafe { socket2::Socket::from_raw_socket(s as RawSocket) })
}

fn set_opt(socket: &UdpSocket, level: i32, name: i32, value: u32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live u32 with its exact size.
    let rc = unsafe {
        ws::setsockopt(
            raw(socket),
            level,
            name,
            (&value as *const u32).cast(),
            size_of::<u32>() as i32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_wsa_error())
    }
}

fn get_opt_u32(socket: &UdpSocket, level: i32, name: i32) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = size_of::<u32>() as i32;
    // SAFETY: passes a live u32 and its size; the kernel writes at most `len` bytes.
    let rc = unsafe {
        ws::getsockopt(
            raw(socket),
            level,
            name,
            (&mut value as *mut u32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(last_wsa_error())
    }
}

/// The socket options QUIC needs: no fragmentation (path MTU discovery) and packet info, for
/// each family the socket serves; ECN reporting where the system has it (best effort: QUIC
/// works without ECN). Fails naming the option that could not be set.
fn configure_socket(socket: &UdpSocket, is_v6: bool) -> Result<(), (&'static str, io::Error)> {
    // Read with our own getsockopt: socket2's `only_v6` asserts the kernel answers 4 bytes,
    // and Wine answers 1.
    let only_v6 = if is_v6 {
        get_opt_u32(socket, ws::IPPROTO_IPV6, ws::IPV6_V6ONLY).map_err(|e| ("IPV6_V6ONLY", e))? != 0
    } else {
        false
    };
    if !is_v6 || !only_v6 {
        set_opt(socket, ws::IPPROTO_IP, ws::IP_DONTFRAGMENT, 1).map_err(|e| ("IP_DONTFRAGMENT", e))?;
        set_opt(socket, ws::IPPROTO_IP, ws::IP_PKTINFO, 1).map_err(|e| ("IP_PKTINFO", e))?;
        if let Err(e) = set_opt(socket, ws::IPPROTO_IP, ws::IP_RECVECN, 1) {
            debug!("IP_RECVECN unavailable ({e}); no ECN on received IPv4 datagrams");
        }
    }
    if is_v6 {
        set_opt(socket, ws::IPPROTO_IPV6, ws::IPV6_DONTFRAG, 1).map_err(|e| ("IPV6_DONTFRAG", e))?;
        set_opt(socket, ws::IPPROTO_IPV6, ws::IPV6_PKTINFO, 1).map_err(|e| ("IPV6_PKTINFO", e))?;
        if let Err(e) = set_opt(socket, ws::IPPROTO_IPV6, ws::IPV6_RECVECN, 1) {
            debug!("IPV6_RECVECN unavailable ({e}); no ECN on received IPv6 datagrams");
        }
    }
    Ok(())
}

/// The RIO functions, from `WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER,
/// WSAID_MULTIPLE_RIO)`. Every one the backend calls is checked present at load.
#[derive(Clone, Copy)]
struct RioFns {
    receive_ex: RioFn<ws::LPFN_RIORECEIVEEX>,
    send_ex: RioFn<ws::LPFN_RIOSENDEX>,
    close_cq: RioFn<ws::LPFN_RIOCLOSECOMPLETIONQUEUE>,
    create_cq: RioFn<ws::LPFN_RIOCREATECOMPLETIONQUEUE>,
    create_rq: RioFn<ws::LPFN_RIOCREATEREQUESTQUEUE>,
    resize_cq: RioFn<ws::LPFN_RIORESIZECOMPLETIONQUEUE>,
    dequeue: RioFn<ws::LPFN_RIODEQUEUECOMPLETION>,
    deregister: RioFn<ws::LPFN_RIODEREGISTERBUFFER>,
    notify: RioFn<ws::LPFN_RIONOTIFY>,
    register: RioFn<ws::LPFN_RIOREGISTERBUFFER>,
}

impl RioFns {
    /// Load the table through `socket`. Fails where the system has no RIO (Wine 8 answers
    /// `WSAEOPNOTSUPP`).
    fn load(socket: &UdpSocket) -> io::Result<Self> {
        let mut t = ws::RIO_EXTENSION_FUNCTION_TABLE {
            cbSize: size_of::<ws::RIO_EXTENSION_FUNCTION_TABLE>() as u32,
            ..Default::default()
        };
        let guid = ws::WSAID_MULTIPLE_RIO;
        let mut bytes = 0u32;
        // SAFETY: input and output point at live locals with their exact sizes; synchronous
        // call (no OVERLAPPED, no completion routine).
        let rc = unsafe {
            ws::WSAIoctl(
                raw(socket),
                ws::SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER,
                (&guid as *const windows_sys::core::GUID).cast(),
                size_of_val(&guid) as u32,
                (&mut t as *mut ws::RIO_EXTENSION_FUNCTION_TABLE).cast(),
                size_of_val(&t) as u32,
                &mut bytes,
                ptr::null_mut(),
                None,
            )
        };
        if rc != 0 {
            return Err(last_wsa_error());
        }
        let (
            Some(receive_ex),
            Some(send_ex),
            Some(close_cq),
            Some(create_cq),
            Some(create_rq),
            Some(resize_cq),
            Some(dequeue),
            Some(deregister),
            Some(notify),
            Some(register),
        ) = (
            t.RIOReceiveEx,
            t.RIOSendEx,
            t.RIOCloseCompletionQueue,
            t.RIOCreateCompletionQueue,
            t.RIOCreateRequestQueue,
            t.RIOResizeCompletionQueue,
            t.RIODequeueCompletion,
            t.RIODeregisterBuffer,
            t.RIONotify,
            t.RIORegisterBuffer,
        )
        else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the RIO function table is incomplete",
            ));
        };
        Ok(Self {
            receive_ex,
            send_ex,
            close_cq,
            create_cq,
            create_rq,
            resize_cq,
            dequeue,
            deregister,
            notify,
            register,
        })
    }
}

/// A RIO completion queue, closed on drop.
struct Cq {
    cq: ws::RIO_CQ,
    close: RioFn<ws::LPFN_RIOCLOSECOMPLETIONQUEUE>,
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: `cq` came from RIOCreateCompletionQueue and is closed once, here. It is dropped
        // only when no request queue can post to it any more (before one exists, or after the
        // socket was closed and every request drained); otherwise `shutdown` leaks it instead.
        unsafe { (self.close)(self.cq) }
    }
}

/// The registration of the region, undone on drop.
struct Registration {
    id: ws::RIO_BUFFERID,
    deregister: RioFn<ws::LPFN_RIODEREGISTERBUFFER>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `id` came from RIORegisterBuffer and is deregistered once, here, only when no
        // request references the region (see `Cq::drop` for the same argument); the memory
        // itself is freed after this (field order in `RioBackend`, local order in `new`).
        unsafe { (self.deregister)(self.id) }
    }
}

fn new_event(manual_reset: bool) -> io::Result<OwnedHandle> {
    // SAFETY: no security attributes, no name; the result is checked.
    let h = unsafe { CreateEventW(ptr::null(), i32::from(manual_reset), 0, ptr::null()) };
    if h.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(h) })
}

/// The wakeup of event mode: an auto-reset event next to the RIO event in the thread's wait.
/// `pending` coalesces: a burst of wakes costs one `SetEvent` until the thread consumes it.
struct EventWake {
    event: OwnedHandle,
    pending: AtomicBool,
}

impl Wakeup for EventWake {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // SAFETY: a live event handle owned by `self`.
            if unsafe { SetEvent(self.event.as_raw_handle() as HANDLE) } == 0 {
                debug!("SetEvent failed: {}", io::Error::last_os_error());
            }
        }
    }
}

/// The wakeup of IOCP mode: a packet with [`WAKE_KEY`] on the port RIO notifies too. Holds the
/// port, so the port lives as long as anyone can post to it.
struct PortWake {
    port: OwnedHandle,
    pending: AtomicBool,
}

impl Wakeup for PortWake {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // SAFETY: a live completion port owned by `self`; no OVERLAPPED is attached.
            let ok = unsafe {
                PostQueuedCompletionStatus(self.port.as_raw_handle() as HANDLE, 0, WAKE_KEY, ptr::null())
            };
            if ok == 0 {
                self.pending.store(false, Ordering::Release);
                debug!(
                    "PostQueuedCompletionStatus failed: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// What ended a wait.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fired {
    /// The RIO notification fired (it must be re-armed with `RIONotify`).
    rio: bool,
    /// A wakeup arrived.
    wake: bool,
}

/// How the thread sleeps and is woken: independent of RIO itself, so it is tested with real
/// kernel objects even where RIO is missing (Wine).
enum Signals {
    Event {
        /// Manual-reset, `NotifyReset`: `RIONotify` resets it, a notification sets it.
        rio: OwnedHandle,
        wake: Arc<EventWake>,
    },
    Iocp {
        wake: Arc<PortWake>,
        /// Handed to RIO for its notification packets; must outlive the completion queue.
        overlapped: Box<OVERLAPPED>,
    },
}

impl Signals {
    fn new(kind: RioNotify) -> io::Result<Self> {
        match kind {
            RioNotify::Event => Ok(Signals::Event {
                rio: new_event(true)?,
                wake: Arc::new(EventWake {
                    event: new_event(false)?,
                    pending: AtomicBool::new(false),
                }),
            }),
            RioNotify::Iocp => {
                // SAFETY: creates a new port (no file handle, no existing port); checked below.
                let h = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
                if h.is_null() {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh handle nothing else owns.
                let port = unsafe { OwnedHandle::from_raw_handle(h) };
                Ok(Signals::Iocp {
                    wake: Arc::new(PortWake {
                        port,
                        pending: AtomicBool::new(false),
                    }),
                    // SAFETY: OVERLAPPED is plain old data; all-zero is its documented initial value.
                    overlapped: Box::new(unsafe { std::mem::zeroed() }),
                })
            }
        }
    }

    /// The notification to create the completion queue with. The handles and the OVERLAPPED
    /// it names live in `self`, which outlives the queue.
    fn notification(&mut self) -> ws::RIO_NOTIFICATION_COMPLETION {
        let mut n = ws::RIO_NOTIFICATION_COMPLETION::default();
        match self {
            Signals::Event { rio, .. } => {
                n.Type = ws::RIO_EVENT_COMPLETION;
                n.Anonymous.Event = ws::RIO_NOTIFICATION_COMPLETION_0_0 {
                    EventHandle: rio.as_raw_handle() as HANDLE,
                    NotifyReset: 1,
                };
            }
            Signals::Iocp { wake, overlapped } => {
                n.Type = ws::RIO_IOCP_COMPLETION;
                n.Anonymous.Iocp = ws::RIO_NOTIFICATION_COMPLETION_0_1 {
                    IocpHandle: wake.port.as_raw_handle() as HANDLE,
                    CompletionKey: RIO_KEY as *mut c_void,
                    Overlapped: (&mut **overlapped as *mut OVERLAPPED).cast(),
                };
            }
        }
        n
    }

    fn waker(&self) -> Arc<dyn Wakeup> {
        match self {
            Signals::Event { wake, .. } => wake.clone(),
            Signals::Iocp { wake, .. } => wake.clone(),
        }
    }

    /// A wakeup has been sent and not consumed yet.
    fn wake_pending(&self) -> bool {
        match self {
            Signals::Event { wake, .. } => wake.pending.load(Ordering::Acquire),
            Signals::Iocp { wake, .. } => wake.pending.load(Ordering::Acquire),
        }
    }

    /// Sleep up to `ms` milliseconds (`u32::MAX`: no limit) for a notification or a wakeup.
    fn wait(&self, ms: u32) -> io::Result<Fired> {
        match self {
            Signals::Event { rio, wake } => {
                let handles: [HANDLE; 2] = [
                    rio.as_raw_handle() as HANDLE,
                    wake.event.as_raw_handle() as HANDLE,
                ];
                // SAFETY: two live handles owned by `self`; the count matches the array.
                let r = unsafe { WaitForMultipleObjects(2, handles.as_ptr(), 0, ms) };
                match r {
                    WAIT_OBJECT_0 => Ok(Fired {
                        rio: true,
                        wake: false,
                    }),
                    x if x == WAIT_OBJECT_0 + 1 => {
                        // The auto-reset event is consumed; later wakes must signal it again.
                        wake.pending.store(false, Ordering::Release);
                        Ok(Fired {
                            rio: false,
                            wake: true,
                        })
                    }
                    WAIT_TIMEOUT => Ok(Fired::default()),
                    _ => Err(io::Error::last_os_error()),
                }
            }
            Signals::Iocp { wake, .. } => {
                // SAFETY: OVERLAPPED_ENTRY is plain old data; all-zero is valid.
                let mut entries: [OVERLAPPED_ENTRY; 8] = unsafe { std::mem::zeroed() };
                let mut n = 0u32;
                // SAFETY: the array and count match; `n` is live; not alertable.
                let ok = unsafe {
                    GetQueuedCompletionStatusEx(
                        wake.port.as_raw_handle() as HANDLE,
                        entries.as_mut_ptr(),
                        entries.len() as u32,
                        &mut n,
                        ms,
                        0,
                    )
                };
                if ok == 0 {
                    let e = io::Error::last_os_error();
                    return if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                        Ok(Fired::default())
                    } else {
                        Err(e)
                    };
                }
                let mut fired = Fired::default();
                for e in &entries[..(n as usize).min(entries.len())] {
                    match e.lpCompletionKey {
                        RIO_KEY => fired.rio = true,
                        WAKE_KEY => {
                            wake.pending.store(false, Ordering::Release);
                            fired.wake = true;
                        }
                        other => debug!(key = other, "unexpected completion packet"),
                    }
                }
                Ok(fired)
            }
        }
    }
}

/// Probe a socket's offloads: the segments one send may carry (USO, probed the way msquic does,
/// by reading the option; 1 without) and whether receive coalescing (URO) is on, when asked for
/// with the largest batch `uro_max`.
fn offloads(socket: &UdpSocket, max_udp_payload: usize, uro_max: Option<u32>) -> (usize, bool) {
    let uso_segments = match get_opt_u32(socket, ws::IPPROTO_UDP, ws::UDP_SEND_MSG_SIZE) {
        Ok(_) => segments_per_part(max_udp_payload.max(1), MAX_USO_SEGMENTS, MAX_USO_BYTES),
        Err(e) => {
            debug!("no UDP send offload (USO): {e}");
            1
        }
    };
    let uro = uro_max.is_some_and(|max| {
        match set_opt(socket, ws::IPPROTO_UDP, ws::UDP_RECV_MAX_COALESCED_SIZE, max) {
            Ok(()) => true,
            Err(e) => {
                debug!("no UDP receive coalescing (URO): {e}");
                false
            }
        }
    });
    (uso_segments, uro)
}

/// Why RIO could not be set up. `socket` is handed back when nothing was posted on it, so the
/// caller can serve it with the poll backend instead.
pub(crate) struct RioSetupError {
    pub what: &'static str,
    pub source: io::Error,
    pub socket: Option<UdpSocket>,
}

/// What a TX slot's control areas hold for the batch in flight.
#[derive(Debug, Default, Clone, Copy)]
struct TxMeta {
    /// Bytes of control area 0 (with USO) and 1 (single datagrams).
    ctrl_len: [usize; 2],
    /// An ECN control message was included.
    ecn: bool,
}

/// The RIO backend. Lives on the I/O thread.
///
/// Field order is drop order and matters: the completion queue is closed before the region is
/// deregistered, which happens before its memory is freed, before the notification handles are
/// closed. [`IoBackend::shutdown`] (also run by `Drop`) makes sure nothing is outstanding
/// before any of that, or leaks those fields instead.
pub(crate) struct RioBackend {
    fns: RioFns,
    /// `None` once closed by `shutdown`.
    socket: Option<UdpSocket>,
    local: SocketAddr,
    socket_is_v6: bool,
    /// Freed by the system with the socket.
    rq: ws::RIO_RQ,
    /// Receive and send requests a request queue may have outstanding (what `RecvBook` and
    /// `SendBook` allow in all).
    rq_depth: (u32, u32),
    cq: Option<Cq>,
    /// Entries the completion queue was made (or resized) with: room for the request queues
    /// of two sockets (a rebind creates the new one before the old one is gone).
    cq_size: u32,
    /// `UDP_RECV_MAX_COALESCED_SIZE` asked of every socket (URO), if any.
    uro_max: Option<u32>,
    /// `IoConfig::max_udp_payload`: the USO segment count is derived from it.
    max_udp_payload: usize,
    registration: Option<Registration>,
    arena: Option<RxArena>,
    /// Pooled buffers URO batches are copied into and lent from (`recv.rs`). In a `RefCell`:
    /// it is used while the registered region is borrowed through `&self`.
    lender: std::cell::RefCell<recv::Lender>,
    signals: Option<Signals>,
    waker: Arc<dyn Wakeup>,
    buffer_id: ws::RIO_BUFFERID,
    layout: RegionLayout,
    recv: RecvBook,
    sends: SendBook,
    tx: TxPool,
    tx_meta: Vec<TxMeta>,
    results: Vec<ws::RIORESULT>,
    notify_armed: bool,
    recv_commit: bool,
    send_commit: bool,
    /// Segments per USO send (1: no USO).
    uso_segments: usize,
    ecn_send: bool,
    spin: Duration,
    stats: IoStats,
    shut_down: bool,
}

// SAFETY: the raw pointers and handles in a `RioBackend` (the request and completion queues,
// the registered region's buffer id, the boxed OVERLAPPED of the IOCP notification, the arena)
// are the backend's own: created by it, referring to memory it owns and frees, and used only
// through `&mut self` (the `RefCell` is never shared: `&self` is not handed out across
// threads, the trait takes `&mut self` for everything that touches it). RIO asks that calls on
// one queue be serialized, not that they come from one thread, and the event and IOCP handles
// are process-wide; so moving the backend, which moves that exclusive ownership whole, is
// sound. (Nothing moves it today: the loop on a runtime, the one mover, does not run on
// Windows; the bound is the seam's, `IoBackend: Send`.)
unsafe impl Send for RioBackend {}

impl RioBackend {
    /// Set up RIO on `socket` (which must have been created with `WSA_FLAG_REGISTERED_IO`):
    /// load the function table, set the socket options, register the region, create the
    /// completion and request queues, and post every receive.
    pub(crate) fn new(socket: UdpSocket, cfg: &IoConfig, opts: RioOptions) -> Result<Self, RioSetupError> {
        macro_rules! fail {
            ($what:expr, $e:expr) => {
                return Err(RioSetupError {
                    what: $what,
                    source: $e,
                    socket: Some(socket),
                })
            };
        }
        let fns = match RioFns::load(&socket) {
            Ok(f) => f,
            Err(e) => fail!(
                "WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER, WSAID_MULTIPLE_RIO)",
                e
            ),
        };
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => fail!("getsockname", e),
        };
        let socket_is_v6 = local.is_ipv6();
        if let Err((what, e)) = configure_socket(&socket, socket_is_v6) {
            fail!(what, e);
        }
        // URO only on request, and only if a receive buffer holds a coalesced batch.
        let uro_max = (opts.uro && cfg.recv_buffer_size >= 2 * cfg.max_udp_payload)
            .then(|| cfg.recv_buffer_size.min(MAX_URO_BYTES) as u32);
        let (uso_segments, uro) = offloads(&socket, cfg.max_udp_payload, uro_max);

        let too_many = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        let (Ok(rx_count), Ok(tx_count)) = (u32::try_from(cfg.recv_buffers), u32::try_from(cfg.tx_buffers))
        else {
            fail!("buffer counts", too_many("buffer counts exceed u32"));
        };
        let layout = match RegionLayout::new(
            cfg.recv_buffers,
            cfg.recv_buffer_size,
            cfg.tx_buffers,
            cfg.tx_buffer_size,
        ) {
            Ok(l) => l,
            Err(e) => fail!(
                "RIO buffer region",
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
            ),
        };
        let send_depth = cfg.tx_buffers.saturating_mul(SEND_DEPTH_PER_SLOT);
        let (Ok(recv_depth_u32), Ok(send_depth_u32)) =
            (u32::try_from(cfg.recv_buffers), u32::try_from(send_depth))
        else {
            fail!("RIO queue depth", too_many("queue depths exceed u32"));
        };
        // Room for two request queues: a rebind makes the new socket's before the old one's is
        // gone.
        let cq_size = recv_depth_u32.saturating_add(send_depth_u32).saturating_mul(2);
        if cq_size > ws::RIO_MAX_CQ_SIZE {
            fail!(
                "RIO completion queue",
                too_many("completion queue larger than RIO_MAX_CQ_SIZE")
            );
        }

        // Locals drop in reverse order on the error paths below: the queue first, then the
        // registration, then the memory.
        let rx_payload_len = layout.rx_payload(0).map_or(1, |s| s.len as usize);
        let Some(arena) = RxArena::new(1, layout.total()) else {
            fail!(
                "RIO buffer region",
                io::Error::new(io::ErrorKind::OutOfMemory, "allocation failed")
            );
        };
        // SAFETY: `arena` holds `layout.total()` (≤ u32::MAX) bytes that stay allocated until
        // after the registration is undone (drop order here and in `RioBackend`).
        let buffer_id = unsafe { (fns.register)(arena.addr(0).cast_const(), layout.total() as u32) };
        if buffer_id == RIO_INVALID_BUFFERID {
            fail!("RIORegisterBuffer", last_wsa_error());
        }
        let registration = Registration {
            id: buffer_id,
            deregister: fns.deregister,
        };
        let mut signals = match Signals::new(opts.notify) {
            Ok(s) => s,
            Err(e) => fail!(
                match opts.notify {
                    RioNotify::Event => "CreateEventW",
                    RioNotify::Iocp => "CreateIoCompletionPort",
                },
                e
            ),
        };
        let notification = signals.notification();
        // SAFETY: `notification` names handles (and an OVERLAPPED) owned by `signals`, which
        // outlives the queue (dropped after it here and in `RioBackend`).
        let cq = unsafe { (fns.create_cq)(cq_size, &notification) };
        if cq == 0 {
            fail!("RIOCreateCompletionQueue", last_wsa_error());
        }
        let cq = Cq {
            cq,
            close: fns.close_cq,
        };
        // SAFETY: a valid socket and completion queue; one data buffer per request; no socket
        // context. Fails for a socket made without WSA_FLAG_REGISTERED_IO.
        let rq = unsafe {
            (fns.create_rq)(
                raw(&socket),
                recv_depth_u32,
                1,
                send_depth_u32,
                1,
                cq.cq,
                cq.cq,
                ptr::null(),
            )
        };
        if rq == 0 {
            fail!("RIOCreateRequestQueue", last_wsa_error());
        }

        let waker = signals.waker();
        let mut this = Self {
            fns,
            socket: Some(socket),
            local,
            socket_is_v6,
            rq,
            rq_depth: (recv_depth_u32, send_depth_u32),
            cq: Some(cq),
            cq_size,
            uro_max,
            max_udp_payload: cfg.max_udp_payload,
            registration: Some(registration),
            arena: Some(arena),
            lender: std::cell::RefCell::new(recv::Lender::new(
                rx_payload_len,
                0,
                cfg.recv_memory_budget / rx_payload_len.max(1),
            )),
            signals: Some(signals),
            waker,
            buffer_id,
            layout,
            recv: RecvBook::new(rx_count),
            sends: SendBook::new(tx_count, send_depth),
            tx: TxPool::new(cfg.tx_buffers, cfg.tx_buffer_size),
            tx_meta: vec![TxMeta::default(); cfg.tx_buffers],
            results: vec![ws::RIORESULT::default(); DEQUEUE_BATCH],
            notify_armed: false,
            recv_commit: false,
            send_commit: false,
            uso_segments,
            ecn_send: true,
            spin: opts.spin,
            stats: IoStats::default(),
            shut_down: false,
        };
        // From here on requests may be posted: a failure must close the socket and drain, so the
        // socket cannot be handed back for the fallback.
        let failure = match this.post_receives() {
            Ok(n) if n > 0 => None,
            Ok(_) => Some(io::Error::other("no receive could be posted")),
            Err(e) => Some(e),
        };
        if let Some(source) = failure {
            this.shutdown();
            return Err(RioSetupError {
                what: "RIOReceiveEx",
                source,
                socket: None,
            });
        }
        this.commit();
        debug!(
            receives = this.recv.posted(),
            uso_segments,
            uro,
            notify = ?opts.notify,
            spin_us = opts.spin.as_micros() as u64,
            "RIO backend ready"
        );
        Ok(this)
    }

    /// Base of the registered region (`None` after shutdown released it).
    fn base(&self) -> Option<*mut u8> {
        self.arena.as_ref().map(|a| a.addr(0))
    }

    /// The bytes of `span`.
    ///
    /// # Safety
    ///
    /// No posted request may cover `span` while the returned slice lives (the kernel could
    /// write it): the caller holds the slot it belongs to.
    unsafe fn bytes(&self, span: Span) -> &[u8] {
        match self.base() {
            // SAFETY: `span` comes from `self.layout`, so it lies inside the region; the caller
            // guarantees the kernel does not write it meanwhile.
            Some(base) => unsafe {
                std::slice::from_raw_parts(base.add(span.offset as usize), span.len as usize)
            },
            None => &[],
        }
    }

    /// The bytes of `span`, writable.
    ///
    /// # Safety
    ///
    /// As [`RioBackend::bytes`]: no posted request may cover `span` while the slice lives.
    unsafe fn bytes_mut(&mut self, span: Span) -> &mut [u8] {
        match self.base() {
            // SAFETY: inside the region (from `self.layout`); the caller guarantees exclusive
            // access; `&mut self` rules out other slices made through this backend.
            Some(base) => unsafe {
                std::slice::from_raw_parts_mut(base.add(span.offset as usize), span.len as usize)
            },
            None => &mut [],
        }
    }

    fn rio_buf(&self, span: Span) -> ws::RIO_BUF {
        ws::RIO_BUF {
            BufferId: self.buffer_id,
            Offset: span.offset,
            Length: span.len,
        }
    }

    /// Post every free receive slot (deferred; [`RioBackend::commit`] starts them). Returns how
    /// many were posted, or the error if none could be.
    fn post_receives(&mut self) -> io::Result<usize> {
        if self.shut_down || self.socket.is_none() || self.arena.is_none() {
            return Ok(0);
        }
        let mut posted = 0;
        let mut error = None;
        while let Some((slot, ctx)) = self.recv.next_to_post() {
            let s = slot as usize;
            let (Some(data), Some(addr), Some(ctrl)) = (
                self.layout.rx_payload(s),
                self.layout.rx_addr(s),
                self.layout.rx_ctrl(s),
            ) else {
                self.recv.unpost(slot);
                break;
            };
            // Clear what the kernel might not overwrite, so nothing of the slot's previous
            // datagram can be read as this one's address or control messages.
            // SAFETY: the slot was just taken from the free list: no request covers it.
            unsafe {
                self.bytes_mut(addr)[..2].fill(0);
                self.bytes_mut(ctrl)[..4].fill(0);
            }
            let bufs = [self.rio_buf(data), self.rio_buf(addr), self.rio_buf(ctrl)];
            // SAFETY: the RIO_BUFs name areas of the registered region, which stays registered
            // and allocated until this request has completed (`shutdown`); the descriptors are
            // copied by the call; the request queue is used from this thread only.
            let ok = unsafe {
                (self.fns.receive_ex)(
                    self.rq,
                    &bufs[0],
                    1,
                    ptr::null(),
                    &bufs[1],
                    &bufs[2],
                    ptr::null(),
                    ws::RIO_MSG_DEFER,
                    ctx as usize as *const c_void,
                )
            };
            if ok == 0 {
                error = Some(last_wsa_error());
                self.recv.unpost(slot);
                break;
            }
            posted += 1;
        }
        if posted > 0 {
            self.recv_commit = true;
        }
        match error {
            Some(e) if posted == 0 => Err(e),
            Some(e) => {
                debug!("RIOReceiveEx failed after {posted} receives: {e}");
                Ok(posted)
            }
            None => Ok(posted),
        }
    }

    /// Post the parts of TX batches that have request capacity (deferred).
    fn post_sends(&mut self) {
        if self.arena.is_none() {
            return;
        }
        while let Some(part) = self.sends.next_part() {
            let s = part.slot as usize;
            let variant = usize::from(part.segment.is_none());
            let spans = (
                self.layout.tx_payload(s),
                self.layout.tx_addr(s),
                self.layout.tx_ctrl(s, variant),
            );
            let (Some(payload), Some(addr), Some(ctrl)) = spans else {
                self.fail_part(part.ctx, part.slot);
                continue;
            };
            let data = ws::RIO_BUF {
                BufferId: self.buffer_id,
                Offset: payload.offset + part.offset as u32,
                Length: part.len as u32,
            };
            let addr = self.rio_buf(addr);
            let ctrl_len = self.tx_meta.get(s).map_or(0, |m| m.ctrl_len[variant]);
            let ctrl = ws::RIO_BUF {
                BufferId: self.buffer_id,
                Offset: ctrl.offset,
                Length: ctrl_len as u32,
            };
            let ctrl_ptr = if ctrl_len > CmsgLayout::NATIVE.rio_base() {
                &ctrl as *const ws::RIO_BUF
            } else {
                ptr::null()
            };
            // SAFETY: as for receives: the region stays registered and allocated until this
            // request completes; the slot's areas were written in `send` before `start` and are
            // not written again until the slot is free; descriptors are copied by the call.
            let ok = unsafe {
                (self.fns.send_ex)(
                    self.rq,
                    &data,
                    1,
                    ptr::null(),
                    &addr,
                    ctrl_ptr,
                    ptr::null(),
                    ws::RIO_MSG_DEFER,
                    part.ctx as usize as *const c_void,
                )
            };
            if ok == 0 {
                let e = last_wsa_error();
                debug!("RIOSendEx failed: {e}; dropping the rest of the batch");
                self.stats.send_errors += 1;
                self.fail_part(part.ctx, part.slot);
            } else {
                self.send_commit = true;
            }
        }
    }

    /// A part could not be posted: drop the rest of its batch and free the slot when nothing of
    /// it is outstanding.
    fn fail_part(&mut self, ctx: u64, slot: u32) {
        self.sends.abandon(slot);
        if let Ok(done) = self.sends.complete(ctx) {
            if done.slot_free {
                self.tx.complete(done.slot);
            }
        }
    }

    /// Start the requests posted with `RIO_MSG_DEFER` (one kernel transition per direction).
    fn commit(&mut self) {
        if self.recv_commit {
            self.recv_commit = !self.commit_only(self.fns.receive_ex, "receives");
        }
        if self.send_commit {
            self.send_commit = !self.commit_only(self.fns.send_ex, "sends");
        }
    }

    /// Start what one direction has posted with `RIO_MSG_DEFER`: a commit-only call of its post
    /// function, `RIOReceiveEx` or `RIOSendEx` (the two take the same arguments). Returns
    /// whether it succeeded; a failure is logged, and the commit is tried again next time.
    fn commit_only(&self, post: RioPostFn, what: &str) -> bool {
        // SAFETY: `post` is `RIOReceiveEx` or `RIOSendEx` from the table loaded for this socket;
        // a commit-only call names no buffers and no context; the request queue is valid and
        // used from this thread only.
        let ok = unsafe {
            post(
                self.rq,
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ws::RIO_MSG_COMMIT_ONLY,
                ptr::null(),
            )
        };
        if ok == 0 {
            debug!("committing {what} failed: {}", last_wsa_error());
        }
        ok != 0
    }

    /// Post what can be posted and start it.
    fn refill(&mut self) {
        if let Err(e) = self.post_receives() {
            if self.recv.posted() == 0 {
                warn!("no receive is posted: {e}; retrying");
            }
        }
        self.post_sends();
        self.commit();
    }

    /// Take up to [`CQE_BOUND`] completions and handle them. Errors only for a corrupt queue.
    fn reap(&mut self, on_recv: &mut dyn FnMut(RecvMeta, BytesMut)) -> io::Result<usize> {
        let Some(cq) = self.cq.as_ref().map(|c| c.cq) else {
            return Ok(0);
        };
        let mut total = 0;
        while total < CQE_BOUND {
            let want = DEQUEUE_BATCH.min(CQE_BOUND - total).min(self.results.len());
            // SAFETY: `results` has room for `want` entries; the queue is valid and used from
            // this thread only.
            let n = unsafe { (self.fns.dequeue)(cq, self.results.as_mut_ptr(), want as u32) };
            if n == ws::RIO_CORRUPT_CQ {
                return Err(io::Error::other("the RIO completion queue is corrupt"));
            }
            let n = (n as usize).min(want);
            if n == 0 {
                break;
            }
            // The kernel wrote the buffers before it queued their completions.
            fence(Ordering::Acquire);
            for i in 0..n {
                let r = self.results[i];
                match decode_ctx(r.RequestContext) {
                    Some((ReqKind::Recv, ..)) => self.on_recv_done(r, on_recv),
                    Some((ReqKind::Send, ..)) => self.on_send_done(r),
                    None => warn!(
                        ctx = r.RequestContext,
                        "completion with an unknown request context"
                    ),
                }
            }
            total += n;
            if n < want {
                break;
            }
        }
        Ok(total)
    }

    fn on_recv_done(&mut self, r: ws::RIORESULT, on_recv: &mut dyn FnMut(RecvMeta, BytesMut)) {
        let slot = match self.recv.complete(r.RequestContext) {
            Ok(s) => s,
            Err(e) => {
                warn!("ignoring a receive completion: {e}");
                return;
            }
        };
        if self.recv.posted() == 0 && !self.shut_down {
            // Every receive completed before we could post again: datagrams wait in the
            // socket buffer meanwhile (lost only if that overflows too).
            self.stats.recv_starved += 1;
        }
        match classify(r.Status) {
            Status::Ok => self.deliver(slot, r.BytesTransferred as usize, on_recv),
            Status::Truncated => self.stats.recv_dropped += 1,
            Status::Aborted => {}
            Status::Transient => trace!(status = r.Status, "receive reported network feedback"),
            Status::Refused | Status::Other(_) => debug!(status = r.Status, "receive failed"),
        }
        self.recv.release(slot);
    }

    /// Parse held receive `slot` and hand its datagrams on, copied out of the slot
    /// (`recv::deliver`: per datagram, or a URO batch into one pooled buffer).
    fn deliver(&mut self, slot: u32, len: usize, on_recv: &mut dyn FnMut(RecvMeta, BytesMut)) {
        let s = slot as usize;
        let (Some(payload), Some(addr), Some(ctrl)) = (
            self.layout.rx_payload(s),
            self.layout.rx_addr(s),
            self.layout.rx_ctrl(s),
        ) else {
            return;
        };
        // SAFETY: the slot is held (its receive completed; it is posted again only after
        // `release`), so the kernel does not write these bytes now.
        let (a, c, p) = unsafe { (self.bytes(addr), self.bytes(ctrl), self.bytes(payload)) };
        // Counted on a copy: the slices above borrow `self`.
        let mut stats = self.stats;
        let Some(remote) = parse_sockaddr_inet(a) else {
            self.stats.recv_dropped += 1;
            return;
        };
        let c = parse_rio_control(c, CmsgLayout::NATIVE);
        let meta = RecvMeta {
            remote,
            local_ip: c.dst_ip,
            ecn: c.ecn,
        };
        // UDP_COALESCED_INFO is only present on a coalesced receive: honour it even if URO was
        // not asked for, rather than hand a batch on as one datagram. Copied into a pooled
        // buffer or per datagram (`recv.rs`: what a retained piece may keep alive).
        recv::deliver(
            &mut self.lender.borrow_mut(),
            &p[..len.min(p.len())],
            c.segment_size,
            meta,
            &mut stats,
            on_recv,
        );
        self.stats = stats;
    }

    fn on_send_done(&mut self, r: ws::RIORESULT) {
        let done = match self.sends.complete(r.RequestContext) {
            Ok(d) => d,
            Err(e) => {
                warn!("ignoring a send completion: {e}");
                return;
            }
        };
        let meta = self.tx_meta.get(done.slot as usize).copied().unwrap_or_default();
        match classify(r.Status) {
            Status::Ok => self.stats.count_sent(r.BytesTransferred as usize, done.segment),
            Status::Refused if self.uso_segments > 1 && done.segment.is_some() => {
                warn!(
                    "a USO send was refused ({}); sending one datagram per request from now on",
                    io::Error::from_raw_os_error(r.Status)
                );
                self.uso_segments = 1;
                self.sends.limit_per_part(1);
                self.stats.gso_disabled += 1;
                self.stats.send_errors += 1;
            }
            Status::Refused if self.ecn_send && meta.ecn => {
                warn!(
                    "a send with an ECN control message was refused ({}); sending without ECN from now on",
                    io::Error::from_raw_os_error(r.Status)
                );
                self.ecn_send = false;
                self.stats.send_errors += 1;
            }
            Status::Aborted => {}
            _ => {
                self.stats.send_errors += 1;
                debug!(status = r.Status, "send failed; datagram dropped");
            }
        }
        if done.slot_free {
            self.tx.complete(done.slot);
        }
    }

    /// Busy-poll the queue until a completion, a wakeup, the spin time or the deadline.
    fn spin(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<usize> {
        let mut end = Instant::now() + self.spin;
        if let Some(d) = deadline {
            end = end.min(d);
        }
        loop {
            let n = self.reap(on_recv)?;
            if n > 0 {
                return Ok(n);
            }
            if self.signals.as_ref().is_none_or(Signals::wake_pending) || Instant::now() >= end {
                return Ok(0);
            }
            std::hint::spin_loop();
        }
    }

    /// Arm the notification if needed and sleep until it fires, a wakeup or the deadline.
    fn sleep(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let (Some(cq), Some(signals)) = (self.cq.as_ref().map(|c| c.cq), self.signals.as_ref()) else {
            return Ok(());
        };
        if !self.notify_armed {
            // SAFETY: a valid completion queue, used from this thread only.
            match unsafe { (self.fns.notify)(cq) } {
                0 => self.notify_armed = true,
                ws::WSAEALREADY => self.notify_armed = true,
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
        let mut ms = wait_millis(Instant::now(), deadline);
        if self.recv.posted() == 0 {
            ms = ms.min(REPOST_RETRY_MS);
        }
        let fired = signals.wait(ms)?;
        if fired.rio {
            self.notify_armed = false;
        }
        Ok(())
    }

    /// A request queue for `socket` on the completion queue, growing the completion queue once
    /// if the system says it has no room for another queue (`WSAENOBUFS`).
    fn create_rq(&mut self, socket: &UdpSocket) -> io::Result<ws::RIO_RQ> {
        let Some(cq) = self.cq.as_ref().map(|c| c.cq) else {
            return Err(super::seam::shut_down());
        };
        let (recv_depth, send_depth) = self.rq_depth;
        let create_rq = self.fns.create_rq;
        let create = || {
            // SAFETY: a valid socket and completion queue (used from this thread only); one
            // data buffer per request; no socket context. Fails for a socket made without
            // WSA_FLAG_REGISTERED_IO.
            let rq = unsafe { create_rq(raw(socket), recv_depth, 1, send_depth, 1, cq, cq, ptr::null()) };
            if rq == 0 {
                Err(last_wsa_error())
            } else {
                Ok(rq)
            }
        };
        match create() {
            Err(e) if e.raw_os_error() == Some(ws::WSAENOBUFS) => {
                let grown = self
                    .cq_size
                    .saturating_add(recv_depth.saturating_add(send_depth))
                    .min(ws::RIO_MAX_CQ_SIZE);
                // SAFETY: a valid completion queue, used from this thread only (nothing dequeues
                // from it meanwhile); RIO keeps the completions it holds.
                if grown == self.cq_size || unsafe { (self.fns.resize_cq)(cq, grown) } == 0 {
                    return Err(e);
                }
                self.cq_size = grown;
                create()
            }
            r => r,
        }
    }

    /// Nothing is outstanding in the kernel.
    fn quiescent(&self) -> bool {
        self.recv.posted() == 0 && self.sends.outstanding() == 0
    }

    /// Shutdown's wait: reap completions (delivering nothing), napping 1 ms whenever the queue
    /// is empty, until `done` holds or `until` has passed. Returns false if the completion queue
    /// turned out corrupt (logged), after which nothing more can be learnt from it.
    fn drain_until(&mut self, until: Instant, done: impl Fn(&Self) -> bool) -> bool {
        let mut sink = |_: RecvMeta, _: BytesMut| {};
        while !done(self) && Instant::now() < until {
            match self.reap(&mut sink) {
                Ok(0) => std::thread::sleep(Duration::from_millis(1)),
                Ok(_) => {}
                Err(e) => {
                    warn!("{e} during shutdown");
                    return false;
                }
            }
        }
        true
    }
}

impl IoBackend for RioBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Rio
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_gso_segments(&self) -> usize {
        self.uso_segments
    }

    fn tx_pool(&mut self) -> (&mut TxPool, &mut IoStats) {
        (&mut self.tx, &mut self.stats)
    }

    fn send(&mut self, buf: TxBuf, t: &Transmit) {
        if self.shut_down || self.socket.is_none() {
            self.tx.put(buf);
            return;
        }
        let s = buf.slot as usize;
        let Batch {
            len,
            segment_size: segment,
        } = Batch::new(&buf, t);
        let spans = (
            self.layout.tx_payload(s),
            self.layout.tx_addr(s),
            self.layout.tx_ctrl(s, 0),
            self.layout.tx_ctrl(s, 1),
        );
        let (Some(payload), Some(addr), Some(ctrl_uso), Some(ctrl_one)) = spans else {
            self.stats.send_errors += 1;
            self.tx.put(buf);
            return;
        };
        let dest = addr_for_socket(t.destination, self.socket_is_v6);
        let (Some(dest), true) = (dest, len > 0 && len <= payload.len as usize) else {
            debug!(
                destination = %t.destination,
                len,
                "cannot send this datagram from this socket; dropped"
            );
            self.stats.send_errors += 1;
            self.tx.put(buf);
            return;
        };
        let per_part = segment.map_or(1, |seg| segments_per_part(seg, self.uso_segments, MAX_USO_BYTES));
        let ecn = t.ecn.filter(|_| self.ecn_send);
        let control = SendControl {
            src_ip: t.src_ip.and_then(|ip| ip_for_socket(ip, self.socket_is_v6)),
            ecn,
            ecn_v4: canonical(t.destination).is_ipv4(),
            segment_size: segment.and_then(|seg| u32::try_from(seg).ok()),
        };
        let single = SendControl {
            segment_size: None,
            ..control
        };
        let mut addr_bytes = [0u8; SOCKADDR_INET_LEN];
        encode_sockaddr_inet(dest, &mut addr_bytes);
        // SAFETY: the slot is not in flight: its TxBuf was handed out by the pool, and a slot's
        // areas are only posted between `SendBook::start` below and its last completion.
        let ctrl_len = unsafe {
            self.bytes_mut(payload)[..len].copy_from_slice(&buf.buf[..len]);
            self.bytes_mut(addr)[..SOCKADDR_INET_LEN].copy_from_slice(&addr_bytes);
            [
                encode_rio_control(self.bytes_mut(ctrl_uso), CmsgLayout::NATIVE, &control).unwrap_or(0),
                encode_rio_control(self.bytes_mut(ctrl_one), CmsgLayout::NATIVE, &single).unwrap_or(0),
            ]
        };
        self.tx_meta[s] = TxMeta {
            ctrl_len,
            ecn: ecn.is_some(),
        };
        let slot = buf.slot;
        self.tx.park(buf);
        if !self.sends.start(slot, len, segment, per_part) {
            warn!(slot, "TX slot already in flight; dropping the datagram");
            self.stats.send_errors += 1;
            self.tx.complete(slot);
            return;
        }
        self.post_sends();
    }

    fn turn(
        &mut self,
        deadline: Option<Instant>,
        on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    ) -> io::Result<()> {
        if self.shut_down {
            return Ok(());
        }
        self.refill();
        let mut n = self.reap(on_recv)?;
        let expired = deadline.is_some_and(|d| d <= Instant::now());
        if n == 0 && !expired {
            if !self.spin.is_zero() {
                n = self.spin(deadline, on_recv)?;
            }
            if n == 0 {
                self.sleep(deadline)?;
                self.reap(on_recv)?;
            }
        }
        self.refill();
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wakeup> {
        self.waker.clone()
    }

    /// RIO's turn decides itself whether completions are waiting; the loop on a runtime,
    /// which is the only other caller, does not run on Windows.
    fn sleep_until(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        deadline
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn rebind(&mut self, socket: UdpSocket) -> io::Result<SocketAddr> {
        if self.shut_down || self.socket.is_none() {
            return Err(super::seam::shut_down());
        }
        // The new socket is made ready first, its request queue included: if anything fails,
        // nothing has changed.
        let prepared = socket
            .local_addr()
            .and_then(|local| {
                configure_socket(&socket, local.is_ipv6())
                    .map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))?;
                Ok(local)
            })
            .and_then(|local| Ok((local, self.create_rq(&socket)?)));
        let (local, rq) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.stats.rebinds_failed += 1;
                return Err(e);
            }
        };
        let (uso_segments, uro) = offloads(&socket, self.max_udp_payload, self.uro_max);
        // What was posted deferred on the old queue is started there, so it completes (aborted)
        // when the old socket closes. (Should a commit fail, the close still completes those
        // requests; the flags then only make the next commit, on the new queue, start nothing.)
        self.commit();
        self.rq = rq;
        let old = self.socket.replace(socket);
        self.local = local;
        self.socket_is_v6 = local.is_ipv6();
        if uso_segments < self.uso_segments {
            self.sends.limit_per_part(uso_segments);
        }
        self.uso_segments = uso_segments;
        // Closing the old socket completes every request still outstanding on its queue, with
        // WSA_OPERATION_ABORTED, on the shared completion queue; their slots come back as any
        // completion's do, and free receive slots are posted on the new queue (next refill).
        drop(old);
        self.refill();
        self.stats.rebinds += 1;
        debug!(%local, uso_segments, uro, "rebound to a new socket");
        Ok(local)
    }

    fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        let start = Instant::now();
        // 1. Sends already posted (the CONNECTION_CLOSE frames) may finish; unposted parts are
        //    dropped.
        for slot in self.sends.abandon_all() {
            self.tx.complete(slot);
        }
        self.commit();
        let mut intact = self.drain_until(start + SHUTDOWN_SEND_WAIT, |b| b.sends.outstanding() == 0);
        // 2. Closing the socket completes every request still outstanding, with an error.
        drop(self.socket.take());
        // 3. Drain, bounded.
        intact = intact && self.drain_until(start + SHUTDOWN_WAIT, Self::quiescent);
        if self.quiescent() && intact {
            // Nothing references the region: close the queue, deregister, free, in this order.
            drop(self.cq.take());
            drop(self.registration.take());
            drop(self.arena.take());
        } else {
            warn!(
                receives = self.recv.posted(),
                sends = self.sends.outstanding(),
                "RIO requests still outstanding after {SHUTDOWN_WAIT:?}; leaking the registered \
                 region, the completion queue and its notification handles rather than freeing \
                 them under the kernel"
            );
            std::mem::forget(self.cq.take());
            std::mem::forget(self.registration.take());
            std::mem::forget(self.arena.take());
            std::mem::forget(self.signals.take());
        }
    }
}

impl Drop for RioBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{
        assert_wakeup_ends_an_unbounded_turn, collect, send, send_gso_batch, shut_down_with_sends_in_flight,
        turn_until,
    };

    fn cfg() -> IoConfig {
        IoConfig::for_tests(16, 2048, 4, 65536)
    }

    fn udp(addr: SocketAddr) -> socket2::Socket {
        registered_socket(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            socket2::Protocol::UDP,
        )
        .expect("WSASocketW with WSA_FLAG_REGISTERED_IO")
    }

    fn registered(addr: &str) -> UdpSocket {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = udp(addr);
        s.bind(&addr.into()).unwrap();
        s.into()
    }

    /// A RIO backend, or `None` (with the reason printed) where the system has no RIO.
    fn backend(c: &IoConfig, opts: RioOptions) -> Option<RioBackend> {
        match RioBackend::new(registered("127.0.0.1:0"), c, opts) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("RIO unavailable here ({}: {}); skipping", e.what, e.source);
                assert!(
                    e.socket.is_some(),
                    "setup failed before posting: the socket comes back"
                );
                None
            }
        }
    }

    const THREE_SECONDS: Duration = Duration::from_secs(3);

    #[test]
    fn registered_socket_takes_the_quic_options() {
        let s = registered("127.0.0.1:0");
        assert_ne!(s.local_addr().unwrap().port(), 0);
        configure_socket(&s, false).unwrap();
        // A dual-stack socket serves both families.
        let s6 = udp("[::]:0".parse().unwrap());
        if s6.set_only_v6(false).is_ok() && s6.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into()).is_ok() {
            let s6: UdpSocket = s6.into();
            configure_socket(&s6, true).unwrap();
        }
        // USO probe: either answer is fine, it must not fail in another way.
        let uso = get_opt_u32(&s, ws::IPPROTO_UDP, ws::UDP_SEND_MSG_SIZE);
        eprintln!("USO probe: {uso:?}");
    }

    #[test]
    fn missing_rio_gives_the_socket_back() {
        let s = registered("127.0.0.1:0");
        let addr = s.local_addr().unwrap();
        match RioBackend::new(s, &cfg(), RioOptions::default()) {
            Ok(b) => assert_eq!(b.local_addr().unwrap(), addr),
            Err(e) => {
                eprintln!(
                    "RIO setup failed as expected without RIO: {}: {}",
                    e.what, e.source
                );
                let s = e.socket.expect("socket handed back for the fallback");
                assert_eq!(s.local_addr().unwrap(), addr);
            }
        }
    }

    #[test]
    fn function_table_loads_or_says_why() {
        let s = registered("127.0.0.1:0");
        match RioFns::load(&s) {
            Ok(_) => eprintln!("RIO present"),
            Err(e) => {
                eprintln!("RIO missing: {e}");
                assert!(e.raw_os_error().is_some() || e.kind() == io::ErrorKind::Unsupported);
            }
        }
    }

    /// The sleep/wake machinery, with real kernel objects (runs where RIO does not exist).
    fn signals_wake_and_time_out(kind: RioNotify) {
        let mut sig = Signals::new(kind).unwrap();
        let _ = sig.notification();
        // A timeout with nothing pending.
        let start = Instant::now();
        assert_eq!(sig.wait(30).unwrap(), Fired::default());
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "{:?}",
            start.elapsed()
        );
        // A wakeup from another thread ends an unbounded wait.
        let w = sig.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            w.wake();
        });
        let start = Instant::now();
        let f = sig.wait(5000).unwrap();
        t.join().unwrap();
        assert!(f.wake && !f.rio, "{f:?}");
        assert!(start.elapsed() < Duration::from_secs(4));
        // Consumed: the next wait times out again.
        assert_eq!(sig.wait(10).unwrap(), Fired::default());
        assert!(!sig.wake_pending());
        // Wakes before the wait are coalesced into one signal, consumed by one wait.
        let w = sig.waker();
        w.wake();
        w.wake();
        w.wake();
        assert!(sig.wake_pending());
        assert!(sig.wait(1000).unwrap().wake);
        assert!(!sig.wake_pending());
        assert_eq!(sig.wait(10).unwrap(), Fired::default());
        // The RIO side of the wait, signalled by hand the way RIO would.
        match &sig {
            Signals::Event { rio, .. } => {
                // SAFETY: a live event handle.
                assert_ne!(unsafe { SetEvent(rio.as_raw_handle() as HANDLE) }, 0);
            }
            Signals::Iocp { wake, .. } => {
                // SAFETY: a live port; no OVERLAPPED.
                let ok = unsafe {
                    PostQueuedCompletionStatus(wake.port.as_raw_handle() as HANDLE, 0, RIO_KEY, ptr::null())
                };
                assert_ne!(ok, 0);
            }
        }
        assert!(sig.wait(1000).unwrap().rio);
    }

    #[test]
    fn event_signals_wake_and_time_out() {
        signals_wake_and_time_out(RioNotify::Event);
    }

    #[test]
    fn iocp_signals_wake_and_time_out() {
        signals_wake_and_time_out(RioNotify::Iocp);
    }

    /// Asking for RIO explicitly gives RIO or a typed `BackendUnavailable` naming the step that
    /// failed — never a silent fallback (runs under Wine, where it is the error).
    #[test]
    fn explicit_rio_is_rio_or_unavailable() {
        let r = crate::Endpoint::builder()
            .backend(BackendKind::Rio)
            .bind("127.0.0.1:0".parse().unwrap());
        match r {
            Ok(e) => assert_eq!(e.backend(), BackendKind::Rio),
            Err(crate::EndpointError::BackendUnavailable { backend, source }) => {
                assert_eq!(backend, BackendKind::Rio);
                eprintln!("RIO unavailable: {source}");
                assert!(source.to_string().contains("WSAIoctl"), "{source}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        // An adopted socket made without WSA_FLAG_REGISTERED_IO cannot carry a request queue
        // (or, under Wine, there is no RIO at all): explicit RIO on it is an error too, unless
        // the system accepts it, in which case it is RIO.
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        match crate::Endpoint::builder().backend(BackendKind::Rio).socket(plain) {
            Ok(e) => assert_eq!(e.backend(), BackendKind::Rio),
            Err(crate::EndpointError::BackendUnavailable { backend, source }) => {
                assert_eq!(backend, BackendKind::Rio);
                eprintln!("RIO on an adopted plain socket: {source}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    // ─── The tests below need RIO; they skip (and say so) where it is missing. ────────────

    fn round_trip(opts: RioOptions) {
        let c = cfg();
        let (Some(mut a), Some(mut b)) = (backend(&c, opts), backend(&c, opts)) else {
            return;
        };
        assert_eq!(a.kind(), BackendKind::Rio);
        let to = b.local_addr().unwrap();
        for i in 0..10u8 {
            send(&mut a, to, &vec![i; 100 + usize::from(i)], None);
            a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        }
        let got = collect(&mut b, 10, THREE_SECONDS);
        assert_eq!(got.len(), 10, "{:?}", b.stats());
        for (meta, d) in &got {
            let i = d[0];
            assert_eq!(d.len(), 100 + usize::from(i));
            assert_eq!(meta.remote, a.local_addr().unwrap());
            assert_eq!(meta.local_ip, Some("127.0.0.1".parse().unwrap()));
        }
        turn_until(&mut a, Duration::from_secs(2), |a| a.tx.in_flight() == 0);
        assert_eq!(a.tx.in_flight(), 0);
        assert_eq!(a.stats().datagrams_sent, 10);
        a.shutdown();
        assert!(a.arena.is_none() && a.cq.is_none(), "freed, not leaked");
    }

    #[test]
    fn rio_round_trip_event() {
        round_trip(RioOptions::default());
    }

    #[test]
    fn rio_round_trip_iocp_with_spin() {
        round_trip(RioOptions {
            notify: RioNotify::Iocp,
            spin: Duration::from_micros(200),
            uro: false,
        });
    }

    #[test]
    fn rio_batch_arrives_split() {
        let c = cfg();
        let (Some(mut a), Some(mut b)) = (
            backend(&c, RioOptions::default()),
            backend(&c, RioOptions::default()),
        ) else {
            return;
        };
        let got = send_gso_batch(&mut a, &mut b, THREE_SECONDS);
        assert_eq!(got.len(), 5, "uso {} stats {:?}", a.max_gso_segments(), a.stats());
        let mut seen = [false; 5];
        for (_, d) in &got {
            assert_eq!(d.len(), 1200);
            seen[usize::from(d[0])] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    /// `rebind`: a socket without `WSA_FLAG_REGISTERED_IO` cannot carry a request queue and is
    /// refused (counted), the old socket still served; a registered one takes over at once, the
    /// old one is closed (its port free), its aborted requests come back, and the new socket
    /// sends and receives.
    #[test]
    fn rio_rebind_moves_to_the_new_socket() {
        let c = cfg();
        let (Some(mut a), Some(mut b)) = (
            backend(&c, RioOptions::default()),
            backend(&c, RioOptions::default()),
        ) else {
            return;
        };
        let old = a.local_addr().unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain.set_nonblocking(true).unwrap();
        let plain_taken = a.rebind(plain).is_ok();
        if plain_taken {
            eprintln!("this system accepts RIO on a socket without WSA_FLAG_REGISTERED_IO");
        } else {
            assert_eq!(a.stats().rebinds_failed, 1);
            assert_eq!(a.local_addr().unwrap(), old);
        }
        let old = a.local_addr().unwrap();
        let fresh = registered("127.0.0.1:0");
        fresh.set_nonblocking(true).unwrap();
        let new = fresh.local_addr().unwrap();
        assert_eq!(a.rebind(fresh).unwrap(), new);
        assert_eq!(a.local_addr().unwrap(), new);
        UdpSocket::bind(old).expect("the old port is free");
        send(&mut a, b.local_addr().unwrap(), b"from the new socket", None);
        a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        let got = collect(&mut b, 1, THREE_SECONDS);
        assert_eq!(got.len(), 1, "{:?}", a.stats());
        assert_eq!(got[0].0.remote, new);
        send(&mut b, new, b"to the new socket", None);
        b.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
        // Every receive slot was posted on the old queue: this one came back aborted and was
        // posted again, on the new queue.
        let got = collect(&mut a, 1, THREE_SECONDS);
        assert_eq!(got.len(), 1, "{:?}", a.stats());
        assert_eq!(&got[0].1[..], b"to the new socket");
        assert_eq!(a.stats().rebinds, 1 + u64::from(plain_taken));
        a.shutdown();
        assert!(a.quiescent() && a.arena.is_none(), "freed, not leaked");
    }

    #[test]
    fn rio_wakeup_ends_a_sleep_and_shutdown_drains() {
        let c = cfg();
        let Some(mut b) = backend(&c, RioOptions::default()) else {
            return;
        };
        assert_wakeup_ends_an_unbounded_turn(&mut b);
        // Sends in flight at shutdown complete or are aborted before memory is freed.
        shut_down_with_sends_in_flight(&mut b);
        assert!(b.quiescent());
        assert!(b.arena.is_none() && b.registration.is_none(), "freed, not leaked");
        assert!(b.local_addr().is_ok());
    }
}
