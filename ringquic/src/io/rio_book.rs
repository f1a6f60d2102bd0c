//! The bookkeeping of the Windows RIO backend that does not need Windows, so that the Linux
//! test suite exercises it (`cargo test -p ringquic --lib rio_book`).
//!
//! `rio.rs` (built on Windows only) is a thin layer of system calls over the pieces here:
//!
//! ```text
//!   RegionLayout   where each slot's payload, SOCKADDR_INET and control area sit in the ONE
//!                  registered region (offsets fit the u32 fields of RIO_BUF)
//!   RecvBook       which receive slots are posted; RequestContext ⇄ slot, with a generation
//!                  so a duplicate or stale completion is rejected instead of trusted
//!   SendBook       which TX slots are in flight, split into parts (USO batches or single
//!                  datagrams) posted as RIOSendEx capacity allows; a slot is free again only
//!                  when its last part has completed
//!   parse_rio_control / encode_rio_control
//!                  RIO_CMSG_BUFFER + WSACMSGHDR walking and writing (IP_PKTINFO, IPV6_PKTINFO,
//!                  IP_ECN, IPV6_ECN, UDP_COALESCED_INFO, UDP_SEND_MSG_SIZE), on byte slices,
//!                  never trusting a length read from them
//!   parse_sockaddr_inet / encode_sockaddr_inet, classify, wait_millis, RioOptions
//! ```
//!
//! Everything here is safe code over plain integers and byte slices; the Windows ABI values it
//! needs are spelled out below and checked against `windows-sys` at compile time in `rio.rs`.

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::{Duration, Instant},
};

use quinn_proto::EcnCodepoint;

use super::addr::{canonical, canonical_ip};

// ─── Windows ABI values (checked against windows-sys in rio.rs) ─────────────────────────────

/// `AF_INET` on Windows.
pub(crate) const AF_INET: u16 = 2;
/// `AF_INET6` on Windows (23, not Linux's 10).
pub(crate) const AF_INET6: u16 = 23;
/// `IPPROTO_IP`.
pub(crate) const IPPROTO_IP: i32 = 0;
/// `IPPROTO_IPV6`.
pub(crate) const IPPROTO_IPV6: i32 = 41;
/// `IPPROTO_UDP`.
pub(crate) const IPPROTO_UDP: i32 = 17;
/// `IP_PKTINFO` (control message type and socket option).
pub(crate) const IP_PKTINFO: i32 = 19;
/// `IPV6_PKTINFO`.
pub(crate) const IPV6_PKTINFO: i32 = 19;
/// `IP_ECN` (control message type; the option enabling it is `IP_RECVECN`, same value).
pub(crate) const IP_ECN: i32 = 50;
/// `IPV6_ECN`.
pub(crate) const IPV6_ECN: i32 = 50;
/// `UDP_SEND_MSG_SIZE`: USO segment size (control message on send, option to probe).
pub(crate) const UDP_SEND_MSG_SIZE: i32 = 2;
/// `UDP_COALESCED_INFO`: URO segment size of a coalesced receive.
pub(crate) const UDP_COALESCED_INFO: i32 = 3;
/// `sizeof(SOCKADDR_INET)`: the union of `SOCKADDR_IN` (16) and `SOCKADDR_IN6` (28).
pub(crate) const SOCKADDR_INET_LEN: usize = 28;
/// `sizeof(IN_PKTINFO)`: `IN_ADDR` + `ULONG ipi_ifindex`.
const IN_PKTINFO_LEN: usize = 8;
/// `sizeof(IN6_PKTINFO)`: `IN6_ADDR` + `ULONG ipi6_ifindex`.
const IN6_PKTINFO_LEN: usize = 20;

/// Largest UDP payload one send may carry (the IPv4 limit, which Windows applies to USO batches
/// on IPv6 too); larger batches are split.
pub(crate) const MAX_USO_BYTES: usize = 65_507;
/// Most segments one USO send may carry (what Windows 11 accepts; quinn-udp uses the same).
pub(crate) const MAX_USO_SEGMENTS: usize = 512;
/// Largest URO batch we ask for (`UDP_RECV_MAX_COALESCED_SIZE`): 64 KiB minus the UDP header.
pub(crate) const MAX_URO_BYTES: usize = 65_527;

// ─── Winsock error codes a completion's Status may carry ─────────────────────────────────

const ERROR_NETNAME_DELETED: i32 = 64;
const ERROR_INVALID_PARAMETER: i32 = 87;
const ERROR_NOT_SUPPORTED: i32 = 50;
const ERROR_OPERATION_ABORTED: i32 = 995;
const ERROR_NETWORK_UNREACHABLE: i32 = 1231;
const ERROR_HOST_UNREACHABLE: i32 = 1232;
const ERROR_PROTOCOL_UNREACHABLE: i32 = 1233;
const ERROR_PORT_UNREACHABLE: i32 = 1234;
const WSAEINTR: i32 = 10004;
const WSAENOTSOCK: i32 = 10038;
const WSAEINVAL: i32 = 10022;
pub(crate) const WSAEMSGSIZE: i32 = 10040;
const WSAEOPNOTSUPP: i32 = 10045;
const WSAENETUNREACH: i32 = 10051;
const WSAENETRESET: i32 = 10052;
const WSAECONNABORTED: i32 = 10053;
const WSAECONNRESET: i32 = 10054;
const WSAENOBUFS: i32 = 10055;
const WSAESHUTDOWN: i32 = 10058;
const WSAEHOSTUNREACH: i32 = 10065;

/// What a completion's `RIORESULT::Status` means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Success.
    Ok,
    /// The datagram did not fit the receive buffer (`WSAEMSGSIZE`): dropped and counted.
    Truncated,
    /// Network feedback about some earlier datagram (ICMP unreachable, reset) or a full socket
    /// buffer: the operation is lost, the socket is fine.
    Transient,
    /// The socket was closed or the request cancelled (shutdown).
    Aborted,
    /// The stack refused a parameter: for a send, one of our control messages (USO, ECN).
    Refused,
    /// Anything else (the raw code, for the log).
    Other(i32),
}

/// Sort a completion status.
pub(crate) fn classify(status: i32) -> Status {
    match status {
        0 => Status::Ok,
        WSAEMSGSIZE => Status::Truncated,
        WSAECONNRESET
        | WSAENETRESET
        | WSAENETUNREACH
        | WSAEHOSTUNREACH
        | WSAENOBUFS
        | ERROR_PORT_UNREACHABLE
        | ERROR_HOST_UNREACHABLE
        | ERROR_NETWORK_UNREACHABLE
        | ERROR_PROTOCOL_UNREACHABLE => Status::Transient,
        ERROR_OPERATION_ABORTED
        | WSAECONNABORTED
        | WSAENOTSOCK
        | WSAESHUTDOWN
        | WSAEINTR
        | ERROR_NETNAME_DELETED => Status::Aborted,
        WSAEINVAL | WSAEOPNOTSUPP | ERROR_INVALID_PARAMETER | ERROR_NOT_SUPPORTED => Status::Refused,
        other => Status::Other(other),
    }
}

// ─── Options ─────────────────────────────────────────────────────────────────────────────

/// How the I/O thread learns that the RIO completion queue has entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RioNotify {
    /// `RIONotify` sets an event; the thread sleeps in `WaitForMultipleObjects` on it and on
    /// the wakeup event (the seed's POC waited on an event too).
    #[default]
    Event,
    /// `RIONotify` posts to an I/O completion port; the thread sleeps in
    /// `GetQueuedCompletionStatusEx`, and the wakeup posts to the same port.
    Iocp,
}

/// Settings of the RIO backend. From the environment ([`RioOptions::from_env`]) until the
/// builder grows a setter:
///
/// * `RINGQUIC_RIO_NOTIFY=event|iocp` (default `event`);
/// * `RINGQUIC_RIO_SPIN_US=n`: busy-poll the completion queue for up to `n` µs (at most
///   [`RioOptions::MAX_SPIN`]) before sleeping (default 0: never spin);
/// * `RINGQUIC_RIO_URO=1`: ask for UDP receive coalescing (URO). Off by default, as in
///   quinn-udp (quinn issue 2041); needs receive buffers of 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RioOptions {
    /// Completion notification.
    pub notify: RioNotify,
    /// Busy-poll this long before sleeping.
    pub spin: Duration,
    /// Ask for URO.
    pub uro: bool,
}

impl RioOptions {
    /// The longest spin accepted.
    pub(crate) const MAX_SPIN: Duration = Duration::from_millis(10);

    /// Read the options from the process environment.
    #[cfg_attr(not(windows), allow(dead_code))]
    pub(crate) fn from_env() -> Result<Self, crate::EndpointError> {
        Self::from_lookup(|k| std::env::var(k).ok()).map_err(crate::EndpointError::Config)
    }

    /// Read the options through `get` (the environment, or a map in tests).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, &'static str> {
        let mut o = RioOptions::default();
        if let Some(v) = get("RINGQUIC_RIO_NOTIFY") {
            o.notify = match v.trim().to_ascii_lowercase().as_str() {
                "" | "event" => RioNotify::Event,
                "iocp" => RioNotify::Iocp,
                _ => return Err("RINGQUIC_RIO_NOTIFY must be \"event\" or \"iocp\""),
            };
        }
        if let Some(v) = get("RINGQUIC_RIO_SPIN_US") {
            let v = v.trim();
            if !v.is_empty() {
                let us: u64 = v
                    .parse()
                    .map_err(|_| "RINGQUIC_RIO_SPIN_US must be a number of microseconds")?;
                o.spin = Duration::from_micros(us).min(Self::MAX_SPIN);
            }
        }
        if let Some(v) = get("RINGQUIC_RIO_URO") {
            o.uro = match v.trim() {
                "" | "0" | "false" | "off" => false,
                "1" | "true" | "on" => true,
                _ => return Err("RINGQUIC_RIO_URO must be 0 or 1"),
            };
        }
        Ok(o)
    }
}

/// Milliseconds to wait until `deadline` for `WaitForMultipleObjects` /
/// `GetQueuedCompletionStatusEx`: `u32::MAX` (`INFINITE`) without a deadline, 0 once it has
/// passed, otherwise rounded **up** so the thread does not wake a little early and spin through
/// zero-timeout waits; capped just below `INFINITE`.
pub(crate) fn wait_millis(now: Instant, deadline: Option<Instant>) -> u32 {
    let Some(d) = deadline else { return u32::MAX };
    let left = d.saturating_duration_since(now);
    if left.is_zero() {
        return 0;
    }
    let ms = left.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX - 1).min(u32::MAX - 1)
}

// ─── Layout of the registered region ─────────────────────────────────────────────────────

/// A piece of the registered region, as a `RIO_BUF` names it (offset and length are `ULONG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: u32,
    pub len: u32,
}

impl Span {
    /// The byte range, for slicing.
    #[cfg(test)]
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.offset as usize..self.offset as usize + self.len as usize
    }
}

/// Room per slot for a `SOCKADDR_INET` (28 bytes), rounded to keep 8-byte alignment.
pub(crate) const ADDR_STRIDE: usize = 32;
/// Room per control area: `RIO_CMSG_BUFFER` header plus IN6_PKTINFO, ECN, coalescing info /
/// segment size and a hop limit, with slack (120 bytes on x64).
pub(crate) const CTRL_STRIDE: usize = 128;
/// Payload areas start on cache lines.
const PAYLOAD_ALIGN: usize = 64;

/// Why a region cannot be laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayoutError {
    /// No receive or no TX slots, or zero-sized payloads.
    Empty,
    /// Some offset would not fit the 32-bit fields of `RIO_BUF`.
    TooLarge,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutError::Empty => "the RIO buffer region would be empty",
            LayoutError::TooLarge => "the RIO buffer region would exceed 4 GiB (RIO_BUF offsets are 32-bit)",
        })
    }
}

/// Where everything sits in the one registered region:
///
/// ```text
///   [rx payload 0 .. rx payload N-1][tx payload 0 .. tx payload M-1]
///   [rx addr 0 .. N-1][tx addr 0 .. M-1]            (ADDR_STRIDE each)
///   [rx ctrl 0 .. N-1][tx ctrl 0,0 0,1 .. M-1,1]    (CTRL_STRIDE each; two per TX slot)
/// ```
///
/// A TX slot has two control areas, one for parts sent with a USO segment size and one for
/// single datagrams, because parts of one batch may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionLayout {
    rx_count: usize,
    rx_payload: usize,
    rx_payload_stride: usize,
    tx_count: usize,
    tx_payload: usize,
    tx_payload_stride: usize,
    tx_payload_base: usize,
    rx_addr_base: usize,
    tx_addr_base: usize,
    rx_ctrl_base: usize,
    tx_ctrl_base: usize,
    total: usize,
}

fn align_up(n: usize, a: usize) -> Option<usize> {
    Some(n.checked_add(a - 1)? & !(a - 1))
}

impl RegionLayout {
    /// Lay out `rx_count` receive slots of `rx_payload` bytes and `tx_count` TX slots of
    /// `tx_payload` bytes.
    pub(crate) fn new(
        rx_count: usize,
        rx_payload: usize,
        tx_count: usize,
        tx_payload: usize,
    ) -> Result<Self, LayoutError> {
        if rx_count == 0 || tx_count == 0 || rx_payload == 0 || tx_payload == 0 {
            return Err(LayoutError::Empty);
        }
        let too_large = LayoutError::TooLarge;
        let rx_payload_stride = align_up(rx_payload, PAYLOAD_ALIGN).ok_or(too_large)?;
        let tx_payload_stride = align_up(tx_payload, PAYLOAD_ALIGN).ok_or(too_large)?;
        let tx_payload_base = rx_count.checked_mul(rx_payload_stride).ok_or(too_large)?;
        let rx_addr_base = tx_count
            .checked_mul(tx_payload_stride)
            .and_then(|n| n.checked_add(tx_payload_base))
            .ok_or(too_large)?;
        let tx_addr_base = rx_count
            .checked_mul(ADDR_STRIDE)
            .and_then(|n| n.checked_add(rx_addr_base))
            .ok_or(too_large)?;
        let rx_ctrl_base = tx_count
            .checked_mul(ADDR_STRIDE)
            .and_then(|n| n.checked_add(tx_addr_base))
            .ok_or(too_large)?;
        let tx_ctrl_base = rx_count
            .checked_mul(CTRL_STRIDE)
            .and_then(|n| n.checked_add(rx_ctrl_base))
            .ok_or(too_large)?;
        let total = tx_count
            .checked_mul(2 * CTRL_STRIDE)
            .and_then(|n| n.checked_add(tx_ctrl_base))
            .ok_or(too_large)?;
        if u32::try_from(total).is_err() {
            return Err(too_large);
        }
        Ok(Self {
            rx_count,
            rx_payload,
            rx_payload_stride,
            tx_count,
            tx_payload,
            tx_payload_stride,
            tx_payload_base,
            rx_addr_base,
            tx_addr_base,
            rx_ctrl_base,
            tx_ctrl_base,
            total,
        })
    }

    /// Bytes to allocate and register.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Number of receive slots.
    #[cfg(test)]
    pub(crate) fn rx_count(&self) -> usize {
        self.rx_count
    }

    /// Number of TX slots.
    #[cfg(test)]
    pub(crate) fn tx_count(&self) -> usize {
        self.tx_count
    }

    // Every offset below is < total ≤ u32::MAX (checked in `new`), so the casts are lossless.
    fn span(offset: usize, len: usize) -> Span {
        Span {
            offset: offset as u32,
            len: len as u32,
        }
    }

    /// Receive payload of `slot`.
    pub(crate) fn rx_payload(&self, slot: usize) -> Option<Span> {
        (slot < self.rx_count).then(|| Self::span(slot * self.rx_payload_stride, self.rx_payload))
    }

    /// Where the kernel writes the sender's `SOCKADDR_INET` for receive `slot`.
    pub(crate) fn rx_addr(&self, slot: usize) -> Option<Span> {
        (slot < self.rx_count).then(|| Self::span(self.rx_addr_base + slot * ADDR_STRIDE, SOCKADDR_INET_LEN))
    }

    /// Where the kernel writes the control messages of receive `slot`.
    pub(crate) fn rx_ctrl(&self, slot: usize) -> Option<Span> {
        (slot < self.rx_count).then(|| Self::span(self.rx_ctrl_base + slot * CTRL_STRIDE, CTRL_STRIDE))
    }

    /// TX payload of `slot`.
    pub(crate) fn tx_payload(&self, slot: usize) -> Option<Span> {
        (slot < self.tx_count).then(|| {
            Self::span(
                self.tx_payload_base + slot * self.tx_payload_stride,
                self.tx_payload,
            )
        })
    }

    /// Destination `SOCKADDR_INET` of TX `slot`.
    pub(crate) fn tx_addr(&self, slot: usize) -> Option<Span> {
        (slot < self.tx_count).then(|| Self::span(self.tx_addr_base + slot * ADDR_STRIDE, SOCKADDR_INET_LEN))
    }

    /// Control area `variant` (0: with a USO segment size, 1: single datagrams) of TX `slot`.
    pub(crate) fn tx_ctrl(&self, slot: usize, variant: usize) -> Option<Span> {
        (slot < self.tx_count && variant < 2).then(|| {
            Self::span(
                self.tx_ctrl_base + (slot * 2 + variant) * CTRL_STRIDE,
                CTRL_STRIDE,
            )
        })
    }
}

// ─── Request contexts ────────────────────────────────────────────────────────────────────

/// What a request was, encoded in the top byte of its `RequestContext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqKind {
    Recv = 1,
    Send = 2,
}

const GEN_MASK: u32 = 0x00ff_ffff;

/// `RequestContext` of a request: kind (8 bits) | generation (24 bits) | slot (32 bits).
pub(crate) fn encode_ctx(kind: ReqKind, generation: u32, slot: u32) -> u64 {
    ((kind as u64) << 56) | (u64::from(generation & GEN_MASK) << 32) | u64::from(slot)
}

/// Split a `RequestContext` back; `None` for a kind we never use.
pub(crate) fn decode_ctx(ctx: u64) -> Option<(ReqKind, u32, u32)> {
    let kind = match ctx >> 56 {
        1 => ReqKind::Recv,
        2 => ReqKind::Send,
        _ => return None,
    };
    Some((kind, ((ctx >> 32) as u32) & GEN_MASK, ctx as u32))
}

/// A completion that does not match our books: logged and ignored, never trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BookError {
    /// Not a context we issue, or for the other kind of request.
    UnknownContext(u64),
    /// The slot number is out of range.
    NoSuchSlot(u32),
    /// The slot has no request outstanding (a duplicate completion) or a newer one (stale).
    NotOutstanding(u32),
}

impl fmt::Display for BookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BookError::UnknownContext(c) => write!(f, "unknown request context {c:#x}"),
            BookError::NoSuchSlot(s) => write!(f, "slot {s} out of range"),
            BookError::NotOutstanding(s) => write!(f, "slot {s} has no such request outstanding"),
        }
    }
}

// ─── Receive slots ───────────────────────────────────────────────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    /// Ours, waiting to be posted.
    Free,
    /// Posted; the kernel may write its areas.
    Posted,
    /// Completed; ours until [`RecvBook::release`].
    Held,
}

/// Which receive slots the kernel holds. A slot is `Free`, `Posted` or `Held`, and a
/// completion moves it from `Posted` to `Held` only if its context names the slot's current
/// generation.
#[derive(Debug)]
pub(crate) struct RecvBook {
    state: Vec<(RecvState, u32)>,
    /// Free slots, lowest on top.
    free: Vec<u32>,
    posted: usize,
}

impl RecvBook {
    /// `count` slots, all free.
    pub(crate) fn new(count: u32) -> Self {
        Self {
            state: vec![(RecvState::Free, 0); count as usize],
            free: (0..count).rev().collect(),
            posted: 0,
        }
    }

    /// Take a free slot to post: returns it with its `RequestContext`.
    pub(crate) fn next_to_post(&mut self) -> Option<(u32, u64)> {
        let slot = self.free.pop()?;
        let (st, generation) = &mut self.state[slot as usize];
        *generation = generation.wrapping_add(1) & GEN_MASK;
        *st = RecvState::Posted;
        self.posted += 1;
        Some((slot, encode_ctx(ReqKind::Recv, *generation, slot)))
    }

    /// Posting `slot` failed: it is free again.
    pub(crate) fn unpost(&mut self, slot: u32) {
        if let Some((st @ RecvState::Posted, _)) = self.state.get_mut(slot as usize) {
            *st = RecvState::Free;
            self.posted -= 1;
            self.free.push(slot);
        }
    }

    /// A receive completed: its slot is held by us until [`RecvBook::release`].
    pub(crate) fn complete(&mut self, ctx: u64) -> Result<u32, BookError> {
        let Some((ReqKind::Recv, generation, slot)) = decode_ctx(ctx) else {
            return Err(BookError::UnknownContext(ctx));
        };
        let (st, cur) = self
            .state
            .get_mut(slot as usize)
            .ok_or(BookError::NoSuchSlot(slot))?;
        if *st != RecvState::Posted || *cur != generation {
            return Err(BookError::NotOutstanding(slot));
        }
        *st = RecvState::Held;
        self.posted -= 1;
        Ok(slot)
    }

    /// We are done reading a held slot: it can be posted again.
    pub(crate) fn release(&mut self, slot: u32) {
        if let Some((st @ RecvState::Held, _)) = self.state.get_mut(slot as usize) {
            *st = RecvState::Free;
            self.free.push(slot);
        }
    }

    /// Receives the kernel holds.
    pub(crate) fn posted(&self) -> usize {
        self.posted
    }

    /// Slots waiting to be posted.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.free.len()
    }
}

// ─── TX slots and their parts ────────────────────────────────────────────────────────────

/// One `RIOSendEx` to make: bytes `offset..offset+len` of TX `slot`'s payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub slot: u32,
    pub offset: usize,
    pub len: usize,
    /// USO segment size for this part (`None`: one datagram).
    pub segment: Option<usize>,
    pub ctx: u64,
}

/// A send completion matched to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendDone {
    pub slot: u32,
    /// The segment size the batch was written with (`None`: one datagram).
    pub segment: Option<usize>,
    /// Every part of the slot has completed and none is left to post: the slot is free.
    pub slot_free: bool,
}

#[derive(Debug, Clone, Copy)]
struct TxActive {
    generation: u32,
    cursor: usize,
    end: usize,
    segment: Option<usize>,
    per_part: usize,
    outstanding: u32,
}

/// Which TX slots are in flight, and which parts of their batches are posted.
///
/// A slot's batch is cut into parts of at most `per_part` segments (1 without USO); parts are
/// handed out by [`SendBook::next_part`] while fewer than `capacity` requests are outstanding
/// (the request queue's send depth), oldest slot first. Bounded by construction: `waiting`
/// holds each slot at most once.
#[derive(Debug)]
pub(crate) struct SendBook {
    slots: Vec<Option<TxActive>>,
    generation: Vec<u32>,
    waiting: VecDeque<u32>,
    capacity: usize,
    outstanding: usize,
}

/// Segments per USO part for a batch of `segment`-byte datagrams when USO takes up to
/// `uso_segments` (1: no USO) and `max_bytes` per send.
pub(crate) fn segments_per_part(segment: usize, uso_segments: usize, max_bytes: usize) -> usize {
    if segment == 0 {
        return 1;
    }
    uso_segments.min(max_bytes / segment).max(1)
}

impl SendBook {
    /// `count` slots, at most `capacity` requests outstanding.
    pub(crate) fn new(count: u32, capacity: usize) -> Self {
        Self {
            slots: vec![None; count as usize],
            generation: vec![0; count as usize],
            waiting: VecDeque::with_capacity(count as usize),
            capacity: capacity.max(1),
            outstanding: 0,
        }
    }

    /// Queue the batch in `slot` (`len` bytes, datagrams of `segment` bytes) for sending in
    /// parts of `per_part` segments. Refused (`false`) if the slot is busy or out of range, or
    /// the batch is empty.
    pub(crate) fn start(&mut self, slot: u32, len: usize, segment: Option<usize>, per_part: usize) -> bool {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        if entry.is_some() || len == 0 {
            return false;
        }
        let generation = (self.generation[slot as usize].wrapping_add(1)) & GEN_MASK;
        self.generation[slot as usize] = generation;
        *entry = Some(TxActive {
            generation,
            cursor: 0,
            end: len,
            segment: segment.filter(|&s| s > 0 && s < len),
            per_part: per_part.max(1),
            outstanding: 0,
        });
        self.waiting.push_back(slot);
        true
    }

    /// The next part to post, if a request slot is free.
    pub(crate) fn next_part(&mut self) -> Option<Part> {
        if self.outstanding >= self.capacity {
            return None;
        }
        // A slot in `waiting` is always active (`abandon` removes it); skip one that is not
        // rather than trust that.
        let (slot, a) = loop {
            let slot = *self.waiting.front()?;
            match self.slots.get_mut(slot as usize) {
                Some(Some(a)) if a.cursor < a.end => break (slot, a),
                _ => {
                    self.waiting.pop_front();
                }
            }
        };
        let remaining = a.end - a.cursor;
        let (len, segment) = match a.segment {
            Some(s) => {
                let len = remaining.min(s.saturating_mul(a.per_part));
                (len, (len > s).then_some(s))
            }
            None => (remaining, None),
        };
        let part = Part {
            slot,
            offset: a.cursor,
            len,
            segment,
            ctx: encode_ctx(ReqKind::Send, a.generation, slot),
        };
        a.cursor += len;
        a.outstanding += 1;
        self.outstanding += 1;
        if a.cursor >= a.end {
            self.waiting.pop_front();
        }
        Some(part)
    }

    /// A send request completed (or could not be posted). When the slot's last part is done,
    /// the slot is free again (`slot_free`).
    pub(crate) fn complete(&mut self, ctx: u64) -> Result<SendDone, BookError> {
        let Some((ReqKind::Send, generation, slot)) = decode_ctx(ctx) else {
            return Err(BookError::UnknownContext(ctx));
        };
        let entry = self
            .slots
            .get_mut(slot as usize)
            .ok_or(BookError::NoSuchSlot(slot))?;
        let Some(a) = entry.as_mut() else {
            return Err(BookError::NotOutstanding(slot));
        };
        if a.generation != generation || a.outstanding == 0 {
            return Err(BookError::NotOutstanding(slot));
        }
        a.outstanding -= 1;
        self.outstanding -= 1;
        let done = SendDone {
            slot,
            segment: a.segment,
            slot_free: a.outstanding == 0 && a.cursor >= a.end,
        };
        if done.slot_free {
            *entry = None;
        }
        Ok(done)
    }

    /// Drop what of `slot`'s batch is not posted yet (after an error, or at shutdown). Returns
    /// true if the slot is free now (nothing of it outstanding).
    pub(crate) fn abandon(&mut self, slot: u32) -> bool {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        let Some(a) = entry.as_mut() else {
            return false;
        };
        a.cursor = a.end;
        self.waiting.retain(|&s| s != slot);
        if a.outstanding == 0 {
            *entry = None;
            true
        } else {
            false
        }
    }

    /// Drop every unposted part; returns the slots that are free now.
    pub(crate) fn abandon_all(&mut self) -> Vec<u32> {
        let waiting: Vec<u32> = self.waiting.iter().copied().collect();
        waiting.into_iter().filter(|&s| self.abandon(s)).collect()
    }

    /// From now on cut unposted parts into at most `per_part` segments (USO turned off).
    pub(crate) fn limit_per_part(&mut self, per_part: usize) {
        for a in self.slots.iter_mut().flatten() {
            a.per_part = a.per_part.min(per_part.max(1));
        }
    }

    /// Send requests the kernel holds.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Slots with a batch in flight or waiting.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether parts wait for request capacity.
    #[cfg(test)]
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

// ─── Socket addresses ────────────────────────────────────────────────────────────────────

/// Write `addr` as a `SOCKADDR_INET` (family in host order, port and address in network
/// order; `sin6_flowinfo` and `sin6_scope_id` as plain ULONGs, as std writes them).
pub(crate) fn encode_sockaddr_inet(addr: SocketAddr, out: &mut [u8; SOCKADDR_INET_LEN]) {
    out.fill(0);
    match addr {
        SocketAddr::V4(a) => {
            out[0..2].copy_from_slice(&AF_INET.to_le_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out[0..2].copy_from_slice(&AF_INET6.to_le_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_le_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_le_bytes());
        }
    }
}

/// Read a `SOCKADDR_INET` the kernel wrote; v4-mapped addresses come back as IPv4. `None` for
/// a short buffer or an unknown family.
pub(crate) fn parse_sockaddr_inet(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        AF_INET6 => {
            let flow = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_le_bytes(b.get(24..28)?.try_into().ok()?);
            Some(canonical(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            ))))
        }
        _ => None,
    }
}

// ─── Control messages (RIO_CMSG_BUFFER + WSACMSGHDR) ─────────────────────────────────────

/// The shape of `WSACMSGHDR` { SIZE_T cmsg_len; INT cmsg_level; INT cmsg_type; } and its
/// alignment (`WSA_CMSGHDR_ALIGN`/`WSA_CMSGDATA_ALIGN`), which differ between 64- and 32-bit
/// Windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CmsgLayout {
    /// `sizeof(SIZE_T)`.
    len_size: usize,
    /// `TYPE_ALIGNMENT(WSACMSGHDR)` = `MAX_NATURAL_ALIGNMENT`.
    align: usize,
}

impl CmsgLayout {
    /// 64-bit Windows: 16-byte header, 8-byte alignment.
    pub(crate) const WIN64: Self = Self {
        len_size: 8,
        align: 8,
    };
    /// 32-bit Windows: 12-byte header, 4-byte alignment.
    pub(crate) const WIN32: Self = Self {
        len_size: 4,
        align: 4,
    };
    /// The layout of the target being built.
    pub(crate) const NATIVE: Self = if cfg!(target_pointer_width = "64") {
        Self::WIN64
    } else {
        Self::WIN32
    };

    const fn al(&self, n: usize) -> usize {
        (n + self.align - 1) & !(self.align - 1)
    }

    /// `sizeof(WSACMSGHDR)`.
    pub(crate) const fn header(&self) -> usize {
        self.len_size + 8
    }

    /// Offset of the data in a message (`WSA_CMSG_DATA`).
    pub(crate) const fn data_offset(&self) -> usize {
        self.al(self.header())
    }

    /// `WSA_CMSG_LEN(n)`.
    pub(crate) const fn cmsg_len(&self, n: usize) -> usize {
        self.data_offset() + n
    }

    /// `WSA_CMSG_SPACE(n)`.
    pub(crate) const fn space(&self, n: usize) -> usize {
        self.al(self.header() + self.al(n))
    }

    /// `RIO_CMSG_BASE_SIZE`: the `ULONG TotalLength` header of a RIO control buffer, aligned.
    pub(crate) const fn rio_base(&self) -> usize {
        self.al(4)
    }
}

/// What the control messages of one RIO receive said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvControl {
    /// ECN bits of the IP header (`IP_ECN`/`IPV6_ECN`).
    pub ecn: Option<EcnCodepoint>,
    /// The datagram's destination address (`IP_PKTINFO`/`IPV6_PKTINFO`), v4-mapped as IPv4.
    pub dst_ip: Option<IpAddr>,
    /// URO: the payload holds datagrams of this size (`UDP_COALESCED_INFO`).
    pub segment_size: Option<usize>,
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_usize(b: &[u8], at: usize, size: usize) -> Option<usize> {
    let bytes = b.get(at..at.checked_add(size)?)?;
    let mut v: u64 = 0;
    for (i, &x) in bytes.iter().enumerate().take(8) {
        v |= u64::from(x) << (8 * i);
    }
    usize::try_from(v).ok()
}

/// Walk a RIO control buffer as the kernel filled it: `ULONG TotalLength` (the bytes used,
/// header included), then `WSACMSGHDR`s from [`CmsgLayout::rio_base`]. `TotalLength` is clamped
/// to the buffer, unknown messages are skipped, and a truncated or malformed message ends the
/// walk; nothing read from the buffer is trusted as a length without a bounds check.
pub(crate) fn parse_rio_control(buf: &[u8], layout: CmsgLayout) -> RecvControl {
    let mut out = RecvControl::default();
    let Some(total) = read_u32(buf, 0) else { return out };
    let total = (total as usize).min(buf.len());
    let mut pos = layout.rio_base();
    // Each step advances by at least one header, so this bound is never the one that stops it.
    for _ in 0..=buf.len() / layout.header() {
        let Some(hdr_end) = pos.checked_add(layout.header()) else {
            break;
        };
        if hdr_end > total {
            break;
        }
        let Some(len) = read_usize(buf, pos, layout.len_size) else {
            break;
        };
        let (Some(level), Some(ty)) = (
            read_u32(buf, pos + layout.len_size),
            read_u32(buf, pos + layout.len_size + 4),
        ) else {
            break;
        };
        let (level, ty) = (level as i32, ty as i32);
        let data_start = pos + layout.data_offset();
        let Some(end) = pos.checked_add(len) else { break };
        if len < layout.data_offset() || end > total {
            break;
        }
        let data = &buf[data_start..end];
        match (level, ty) {
            (IPPROTO_IP, IP_PKTINFO) => {
                if let Some(a) = data.get(0..4).and_then(|a| <[u8; 4]>::try_from(a).ok()) {
                    out.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(a)));
                }
            }
            (IPPROTO_IPV6, IPV6_PKTINFO) => {
                if let Some(a) = data.get(0..16).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
                    out.dst_ip = Some(canonical_ip(IpAddr::V6(Ipv6Addr::from(a))));
                }
            }
            (IPPROTO_IP, IP_ECN) | (IPPROTO_IPV6, IPV6_ECN) => {
                if let Some(v) = read_u32(data, 0) {
                    out.ecn = EcnCodepoint::from_bits((v & 0b11) as u8);
                }
            }
            (IPPROTO_UDP, UDP_COALESCED_INFO) => {
                if let Some(v) = read_u32(data, 0) {
                    out.segment_size = Some(v as usize).filter(|&s| s > 0);
                }
            }
            _ => {}
        }
        let Some(next) = end.checked_add(layout.align - 1).map(|n| n & !(layout.align - 1)) else {
            break;
        };
        if next <= pos {
            break;
        }
        pos = next;
    }
    out
}

/// The control messages of one RIO send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendControl {
    /// Source address (`IP_PKTINFO` / `IPV6_PKTINFO` by its family), already in the socket's
    /// family.
    pub src_ip: Option<IpAddr>,
    /// ECN codepoint to set; `IP_ECN` when `ecn_v4` (IPv4 or v4-mapped destination), else
    /// `IPV6_ECN`. Only written when set.
    pub ecn: Option<EcnCodepoint>,
    pub ecn_v4: bool,
    /// USO segment size (`UDP_SEND_MSG_SIZE`).
    pub segment_size: Option<u32>,
}

/// Space a [`SendControl`] can take at most.
pub(crate) const fn send_control_space(layout: CmsgLayout) -> usize {
    layout.rio_base() + layout.space(IN6_PKTINFO_LEN) + layout.space(4) + layout.space(4)
}

/// Write `c` into `buf` as a RIO control buffer (`TotalLength`, then messages) and return the
/// bytes used — [`CmsgLayout::rio_base`] when there is no message. `None` (nothing usable
/// written) if `buf` is too small. Padding is zeroed.
pub(crate) fn encode_rio_control(buf: &mut [u8], layout: CmsgLayout, c: &SendControl) -> Option<usize> {
    let need = send_control_space(layout);
    if buf.len() < need {
        return None;
    }
    buf[..need].fill(0);
    let mut pos = layout.rio_base();
    let mut push = |buf: &mut [u8], level: i32, ty: i32, data: &[u8]| {
        let len = layout.cmsg_len(data.len());
        buf[pos..pos + layout.len_size].copy_from_slice(&(len as u64).to_le_bytes()[..layout.len_size]);
        buf[pos + layout.len_size..pos + layout.len_size + 4].copy_from_slice(&level.to_le_bytes());
        buf[pos + layout.len_size + 4..pos + layout.len_size + 8].copy_from_slice(&ty.to_le_bytes());
        let d = pos + layout.data_offset();
        buf[d..d + data.len()].copy_from_slice(data);
        pos += layout.space(data.len());
    };
    match c.src_ip {
        Some(IpAddr::V4(ip)) => {
            let mut info = [0u8; IN_PKTINFO_LEN];
            info[0..4].copy_from_slice(&ip.octets());
            push(buf, IPPROTO_IP, IP_PKTINFO, &info);
        }
        Some(IpAddr::V6(ip)) => {
            let mut info = [0u8; IN6_PKTINFO_LEN];
            info[0..16].copy_from_slice(&ip.octets());
            push(buf, IPPROTO_IPV6, IPV6_PKTINFO, &info);
        }
        None => {}
    }
    if let Some(ecn) = c.ecn {
        let v = (ecn as u8 as i32).to_le_bytes();
        if c.ecn_v4 {
            push(buf, IPPROTO_IP, IP_ECN, &v);
        } else {
            push(buf, IPPROTO_IPV6, IPV6_ECN, &v);
        }
    }
    if let Some(s) = c.segment_size {
        push(buf, IPPROTO_UDP, UDP_SEND_MSG_SIZE, &s.to_le_bytes());
    }
    buf[0..4].copy_from_slice(&(pos as u32).to_le_bytes());
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: CmsgLayout = CmsgLayout::WIN64;

    #[test]
    fn cmsg_layout_matches_the_windows_macros() {
        // x64: WSACMSGHDR is 16 bytes, data at 16, WSA_CMSG_SPACE(20) = 16 + 24.
        assert_eq!(L.header(), 16);
        assert_eq!(L.data_offset(), 16);
        assert_eq!(L.cmsg_len(4), 20);
        assert_eq!(L.space(4), 24);
        assert_eq!(L.space(20), 40);
        assert_eq!(L.rio_base(), 8);
        // x86: 12-byte header, 4-byte alignment, RIO_CMSG_BASE_SIZE 4.
        let w32 = CmsgLayout::WIN32;
        assert_eq!(w32.header(), 12);
        assert_eq!(w32.data_offset(), 12);
        assert_eq!(w32.space(20), 32);
        assert_eq!(w32.rio_base(), 4);
        // msquic's send control buffer: base + IN6_PKTINFO + INT + DWORD.
        assert_eq!(send_control_space(L), 8 + 40 + 24 + 24);
        assert!(send_control_space(L) <= CTRL_STRIDE);
        assert!(send_control_space(CmsgLayout::NATIVE) <= CTRL_STRIDE);
    }

    /// Build a receive control buffer the way the Windows stack lays it out.
    fn rx_control(layout: CmsgLayout, msgs: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; layout.rio_base()];
        for (level, ty, data) in msgs {
            let start = b.len();
            let len = layout.cmsg_len(data.len());
            b.extend_from_slice(&(len as u64).to_le_bytes()[..layout.len_size]);
            b.extend_from_slice(&level.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.resize(start + layout.data_offset(), 0);
            b.extend_from_slice(data);
            b.resize(start + layout.space(data.len()), 0);
        }
        let total = b.len() as u32;
        b[0..4].copy_from_slice(&total.to_le_bytes());
        b
    }

    #[test]
    fn receive_control_v4_pktinfo_ecn_and_uro() {
        for layout in [CmsgLayout::WIN64, CmsgLayout::WIN32] {
            let b = rx_control(
                layout,
                &[
                    (IPPROTO_IP, IP_PKTINFO, &[127, 0, 0, 1, 7, 0, 0, 0]),
                    (IPPROTO_IP, IP_ECN, &2i32.to_le_bytes()),
                    (IPPROTO_UDP, UDP_COALESCED_INFO, &1200u32.to_le_bytes()),
                    (99, 99, &[1, 2, 3]),
                ],
            );
            let c = parse_rio_control(&b, layout);
            assert_eq!(c.dst_ip, Some("127.0.0.1".parse().unwrap()));
            assert_eq!(c.ecn, Some(EcnCodepoint::Ect0));
            assert_eq!(c.segment_size, Some(1200));
        }
    }

    #[test]
    fn receive_control_v6_and_mapped() {
        let mut info = [0u8; 20];
        info[..16].copy_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        let b = rx_control(
            L,
            &[
                (IPPROTO_IPV6, IPV6_PKTINFO, &info),
                (IPPROTO_IPV6, IPV6_ECN, &3i32.to_le_bytes()),
            ],
        );
        let c = parse_rio_control(&b, L);
        assert_eq!(c.dst_ip, Some("::1".parse().unwrap()));
        assert_eq!(c.ecn, Some(EcnCodepoint::Ce));
        assert_eq!(c.segment_size, None);
        // A v4-mapped destination (dual-stack socket) is reported as IPv4.
        info[..16].copy_from_slice(&Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets());
        let b = rx_control(L, &[(IPPROTO_IPV6, IPV6_PKTINFO, &info)]);
        assert_eq!(parse_rio_control(&b, L).dst_ip, Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn receive_control_never_trusts_lengths() {
        let good = rx_control(
            L,
            &[
                (IPPROTO_IP, IP_ECN, &1i32.to_le_bytes()),
                (IPPROTO_IP, IP_PKTINFO, &[1, 2, 3, 4, 0, 0, 0, 0]),
            ],
        );
        // Empty, tiny and header-only buffers.
        assert_eq!(parse_rio_control(&[], L), RecvControl::default());
        assert_eq!(parse_rio_control(&[1, 2], L), RecvControl::default());
        assert_eq!(parse_rio_control(&good[..8], L), RecvControl::default());
        // TotalLength larger than the buffer is clamped: every prefix parses without panicking,
        // and never yields a message that was cut.
        for n in 0..=good.len() {
            let c = parse_rio_control(&good[..n], L);
            if n < 8 + 20 {
                assert_eq!(c.ecn, None, "prefix {n}");
            }
            if n < 8 + 24 + 16 + 8 {
                assert_eq!(c.dst_ip, None, "prefix {n}");
            }
        }
        // TotalLength smaller than the messages: only what it covers counts.
        let mut short = good.clone();
        short[0..4].copy_from_slice(&(8u32 + 24).to_le_bytes());
        let c = parse_rio_control(&short, L);
        assert_eq!(c.ecn, Some(EcnCodepoint::Ect1));
        assert_eq!(c.dst_ip, None);
        // cmsg_len of zero, smaller than the header, huge, or pointing past the end: the walk
        // stops without reading out of bounds.
        for bad_len in [0u64, 3, 15, u64::MAX, u64::MAX / 2, 10_000] {
            let mut b = good.clone();
            b[8..16].copy_from_slice(&bad_len.to_le_bytes());
            let c = parse_rio_control(&b, L);
            assert_eq!(c.dst_ip, None, "cmsg_len {bad_len}");
        }
        // A known type with too little data is ignored.
        let b = rx_control(L, &[(IPPROTO_IP, IP_PKTINFO, &[1, 2])]);
        assert_eq!(parse_rio_control(&b, L), RecvControl::default());
        // Arbitrary bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut b = vec![0u8; 64 + (x as usize % 64)];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            b[0..4].copy_from_slice(&(x % 200).to_le_bytes());
            let _ = parse_rio_control(&b, L);
            let _ = parse_rio_control(&b, CmsgLayout::WIN32);
        }
    }

    #[test]
    fn send_control_round_trips() {
        let mut buf = [0xAAu8; CTRL_STRIDE];
        let c = SendControl {
            src_ip: Some("192.0.2.7".parse().unwrap()),
            ecn: Some(EcnCodepoint::Ect0),
            ecn_v4: true,
            segment_size: Some(1350),
        };
        let n = encode_rio_control(&mut buf, L, &c).unwrap();
        assert_eq!(n, 8 + 24 + 24 + 24);
        assert_eq!(u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize, n);
        // Header of the first message, byte by byte: len 24 (16 + IN_PKTINFO), IPPROTO_IP, 19.
        assert_eq!(&buf[8..16], &24u64.to_le_bytes());
        assert_eq!(&buf[16..20], &0i32.to_le_bytes());
        assert_eq!(&buf[20..24], &19i32.to_le_bytes());
        assert_eq!(&buf[24..28], &[192, 0, 2, 7]);
        // The ECN message says 2 (ECT(0)) at level IP, type 50.
        assert_eq!(&buf[32 + 8..32 + 12], &0i32.to_le_bytes());
        assert_eq!(&buf[32 + 12..32 + 16], &50i32.to_le_bytes());
        assert_eq!(&buf[32 + 16..32 + 20], &2i32.to_le_bytes());
        // UDP_SEND_MSG_SIZE: level 17, type 2, DWORD 1350.
        assert_eq!(&buf[56 + 8..56 + 12], &17i32.to_le_bytes());
        assert_eq!(&buf[56 + 12..56 + 16], &2i32.to_le_bytes());
        assert_eq!(&buf[56 + 16..56 + 20], &1350u32.to_le_bytes());
        // The parser reads the same buffer back (PKTINFO and ECN are symmetric).
        let back = parse_rio_control(&buf[..n], L);
        assert_eq!(back.dst_ip, c.src_ip);
        assert_eq!(back.ecn, c.ecn);

        // IPv6 source, ECN at level IPv6, no USO.
        let c6 = SendControl {
            src_ip: Some("2001:db8::1".parse().unwrap()),
            ecn: Some(EcnCodepoint::Ect1),
            ecn_v4: false,
            segment_size: None,
        };
        let n6 = encode_rio_control(&mut buf, L, &c6).unwrap();
        assert_eq!(n6, 8 + 40 + 24);
        let back = parse_rio_control(&buf[..n6], L);
        assert_eq!(back.dst_ip, c6.src_ip);
        assert_eq!(back.ecn, Some(EcnCodepoint::Ect1));
        assert_eq!(&buf[8 + 40 + 8..8 + 40 + 12], &41i32.to_le_bytes());

        // Nothing to say: just the header. Too small a buffer: refused.
        assert_eq!(encode_rio_control(&mut buf, L, &SendControl::default()), Some(8));
        assert_eq!(encode_rio_control(&mut buf[..40], L, &c), None);
        // 32-bit layout fits too.
        let n32 = encode_rio_control(&mut buf, CmsgLayout::WIN32, &c).unwrap();
        assert_eq!(n32, 4 + 20 + 16 + 16);
        assert_eq!(parse_rio_control(&buf[..n32], CmsgLayout::WIN32).dst_ip, c.src_ip);
    }

    #[test]
    fn sockaddr_inet_round_trips() {
        let mut b = [0u8; SOCKADDR_INET_LEN];
        for a in ["127.0.0.1:4433", "[::1]:443", "[2001:db8::5]:65535", "0.0.0.0:0"] {
            let addr: SocketAddr = a.parse().unwrap();
            encode_sockaddr_inet(addr, &mut b);
            assert_eq!(parse_sockaddr_inet(&b), Some(addr), "{a}");
        }
        // Byte layout of SOCKADDR_IN: family 2 LE, port BE, address.
        encode_sockaddr_inet("1.2.3.4:258".parse().unwrap(), &mut b);
        assert_eq!(&b[..8], &[2, 0, 1, 2, 1, 2, 3, 4]);
        // SOCKADDR_IN6: family 23, scope id at 24.
        let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, 5));
        encode_sockaddr_inet(v6, &mut b);
        assert_eq!(&b[..2], &[23, 0]);
        assert_eq!(&b[24..28], &[5, 0, 0, 0]);
        assert_eq!(parse_sockaddr_inet(&b), Some(v6));
        // A v4-mapped peer on a dual-stack socket is reported as IPv4.
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(),
            80,
            0,
            0,
        ));
        encode_sockaddr_inet(mapped, &mut b);
        assert_eq!(parse_sockaddr_inet(&b), Some("10.0.0.1:80".parse().unwrap()));
        // Short buffers, unknown families.
        assert_eq!(parse_sockaddr_inet(&b[..20]), None);
        assert_eq!(parse_sockaddr_inet(&[2, 0, 0]), None);
        assert_eq!(parse_sockaddr_inet(&[0u8; 28]), None);
        assert_eq!(parse_sockaddr_inet(&[10, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn region_layout_offsets_are_disjoint_and_aligned() {
        let l = RegionLayout::new(4, 2000, 3, 65536).unwrap();
        let mut spans = Vec::new();
        for i in 0..4 {
            spans.push(l.rx_payload(i).unwrap());
            spans.push(l.rx_addr(i).unwrap());
            spans.push(l.rx_ctrl(i).unwrap());
        }
        for i in 0..3 {
            spans.push(l.tx_payload(i).unwrap());
            spans.push(l.tx_addr(i).unwrap());
            spans.push(l.tx_ctrl(i, 0).unwrap());
            spans.push(l.tx_ctrl(i, 1).unwrap());
        }
        for s in &spans {
            assert!(s.range().end <= l.total(), "{s:?} past {}", l.total());
            assert_eq!(s.offset % 8, 0, "{s:?} misaligned");
        }
        spans.sort_by_key(|s| s.offset);
        for w in spans.windows(2) {
            assert!(
                w[0].range().end <= w[1].range().start,
                "{:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
        assert_eq!(l.rx_payload(1).unwrap().offset % 64, 0);
        assert_eq!(l.rx_payload(0).unwrap().len, 2000);
        assert_eq!(l.tx_payload(2).unwrap().len, 65536);
        assert_eq!(l.rx_addr(0).unwrap().len as usize, SOCKADDR_INET_LEN);
        assert_eq!((l.rx_count(), l.tx_count()), (4, 3));
        // Out of range.
        assert!(l.rx_payload(4).is_none() && l.tx_addr(3).is_none() && l.tx_ctrl(0, 2).is_none());
        // Limits.
        assert_eq!(RegionLayout::new(0, 1, 1, 1), Err(LayoutError::Empty));
        assert_eq!(RegionLayout::new(1, 1, 1, 0), Err(LayoutError::Empty));
        assert_eq!(
            RegionLayout::new(32768, 1 << 17, 1, 1),
            Err(LayoutError::TooLarge)
        );
        assert_eq!(
            RegionLayout::new(usize::MAX, usize::MAX, 1, 1),
            Err(LayoutError::TooLarge)
        );
        assert_eq!(
            RegionLayout::new(2, usize::MAX - 10, 1, 1),
            Err(LayoutError::TooLarge)
        );
        // The defaults fit: 256 × (64 KiB + 256) receive, 64 × 64 KiB TX.
        assert!(RegionLayout::new(256, 65536 + 256, 64, 65536).is_ok());
    }

    #[test]
    fn contexts_round_trip() {
        let c = encode_ctx(ReqKind::Send, 0x1ff_ffff, 7);
        assert_eq!(decode_ctx(c), Some((ReqKind::Send, 0xff_ffff, 7)));
        assert_eq!(
            decode_ctx(encode_ctx(ReqKind::Recv, 1, u32::MAX)),
            Some((ReqKind::Recv, 1, u32::MAX))
        );
        assert_eq!(decode_ctx(0), None);
        assert_eq!(decode_ctx(3 << 56), None);
    }

    #[test]
    fn recv_book_accounts_and_rejects_bad_completions() {
        let mut b = RecvBook::new(3);
        let posted: Vec<(u32, u64)> = std::iter::from_fn(|| b.next_to_post()).collect();
        assert_eq!(posted.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((b.posted(), b.free()), (3, 0));
        // Completion of slot 1.
        assert_eq!(b.complete(posted[1].1), Ok(1));
        assert_eq!(b.posted(), 2);
        // Duplicate: rejected, books unchanged.
        assert_eq!(b.complete(posted[1].1), Err(BookError::NotOutstanding(1)));
        assert_eq!(b.posted(), 2);
        // Not released yet: cannot be posted.
        assert_eq!(b.free(), 0);
        b.release(1);
        b.release(1); // a second release changes nothing
        assert_eq!(b.free(), 1);
        // Reposted with a new generation: the old context is stale now.
        let (slot, ctx) = b.next_to_post().unwrap();
        assert_eq!(slot, 1);
        assert_ne!(ctx, posted[1].1);
        assert_eq!(b.complete(posted[1].1), Err(BookError::NotOutstanding(1)));
        assert_eq!(b.complete(ctx), Ok(1));
        // Foreign contexts.
        assert_eq!(b.complete(0xdead), Err(BookError::UnknownContext(0xdead)));
        let send_ctx = encode_ctx(ReqKind::Send, 1, 0);
        assert_eq!(b.complete(send_ctx), Err(BookError::UnknownContext(send_ctx)));
        let far = encode_ctx(ReqKind::Recv, 1, 99);
        assert_eq!(b.complete(far), Err(BookError::NoSuchSlot(99)));
        // A failed post gives the slot back.
        b.release(1);
        let (slot, _) = b.next_to_post().unwrap();
        b.unpost(slot);
        b.unpost(slot);
        assert_eq!((b.posted(), b.free()), (2, 1));
        // Drain the rest.
        assert_eq!(b.complete(posted[0].1), Ok(0));
        assert_eq!(b.complete(posted[2].1), Ok(2));
        assert_eq!(b.posted(), 0);
    }

    #[test]
    fn send_book_single_parts_and_capacity() {
        let mut s = SendBook::new(3, 2);
        assert!(s.start(0, 1200, None, 1));
        assert!(!s.start(0, 10, None, 1), "busy slot refused");
        assert!(!s.start(9, 10, None, 1), "no such slot");
        assert!(!s.start(1, 0, None, 1), "empty batch refused");
        assert!(s.start(1, 500, None, 1));
        assert!(s.start(2, 100, None, 1));
        let a = s.next_part().unwrap();
        let b = s.next_part().unwrap();
        assert_eq!((a.slot, a.offset, a.len, a.segment), (0, 0, 1200, None));
        assert_eq!((b.slot, b.len), (1, 500));
        assert!(s.next_part().is_none(), "capacity 2 reached");
        assert_eq!(s.outstanding(), 2);
        let done = s.complete(a.ctx).unwrap();
        assert!(done.slot_free && done.slot == 0);
        assert_eq!(s.complete(a.ctx), Err(BookError::NotOutstanding(0)), "duplicate");
        let c = s.next_part().unwrap();
        assert_eq!(c.slot, 2);
        assert!(s.complete(b.ctx).unwrap().slot_free);
        assert!(s.complete(c.ctx).unwrap().slot_free);
        assert_eq!((s.outstanding(), s.active()), (0, 0));
        assert!(!s.has_waiting());
    }

    #[test]
    fn send_book_splits_batches() {
        // 10 datagrams of 1000 bytes, the last one 500: 9500 bytes, USO with 4 per part.
        let mut s = SendBook::new(1, 16);
        assert!(s.start(0, 9500, Some(1000), 4));
        let parts: Vec<Part> = std::iter::from_fn(|| s.next_part()).collect();
        let shape: Vec<(usize, usize, Option<usize>)> =
            parts.iter().map(|p| (p.offset, p.len, p.segment)).collect();
        assert_eq!(
            shape,
            [
                (0, 4000, Some(1000)),
                (4000, 4000, Some(1000)),
                (8000, 1500, Some(1000))
            ]
        );
        // The slot is free only after the last part completed, in any order.
        assert!(!s.complete(parts[2].ctx).unwrap().slot_free);
        assert!(!s.complete(parts[0].ctx).unwrap().slot_free);
        let last = s.complete(parts[1].ctx).unwrap();
        assert!(last.slot_free);
        assert_eq!(last.segment, Some(1000));

        // Without USO: one part per datagram; the short tail is a lone datagram.
        assert!(s.start(0, 2500, Some(1000), 1));
        let parts: Vec<Part> = std::iter::from_fn(|| s.next_part()).collect();
        let shape: Vec<(usize, usize, Option<usize>)> =
            parts.iter().map(|p| (p.offset, p.len, p.segment)).collect();
        assert_eq!(shape, [(0, 1000, None), (1000, 1000, None), (2000, 500, None)]);
        for p in &parts {
            s.complete(p.ctx).unwrap();
        }
        assert_eq!(s.active(), 0);

        // A segment size not smaller than the batch is one datagram.
        assert!(s.start(0, 1000, Some(1000), 8));
        let p = s.next_part().unwrap();
        assert_eq!((p.len, p.segment), (1000, None));
        assert!(s.complete(p.ctx).unwrap().slot_free);
    }

    #[test]
    fn send_book_capacity_interleaves_and_limits() {
        let mut s = SendBook::new(2, 1);
        assert!(s.start(0, 3000, Some(1000), 2));
        assert!(s.start(1, 100, None, 1));
        let p0 = s.next_part().unwrap();
        assert_eq!((p0.slot, p0.len), (0, 2000));
        assert!(s.next_part().is_none());
        // USO turned off meanwhile: the rest goes one datagram at a time.
        s.limit_per_part(1);
        assert!(!s.complete(p0.ctx).unwrap().slot_free);
        let p1 = s.next_part().unwrap();
        assert_eq!((p1.slot, p1.offset, p1.len, p1.segment), (0, 2000, 1000, None));
        assert!(s.complete(p1.ctx).unwrap().slot_free);
        let p2 = s.next_part().unwrap();
        assert_eq!(p2.slot, 1);
        // A stale context from the slot's previous batch is rejected.
        assert!(s.start(0, 10, None, 1));
        assert_eq!(s.complete(p0.ctx), Err(BookError::NotOutstanding(0)));
        assert!(s.complete(p2.ctx).unwrap().slot_free);
        let p3 = s.next_part().unwrap();
        assert!(s.complete(p3.ctx).unwrap().slot_free);
    }

    #[test]
    fn send_book_abandon() {
        let mut s = SendBook::new(3, 1);
        assert!(s.start(0, 3000, Some(1000), 1));
        assert!(s.start(1, 100, None, 1));
        let p = s.next_part().unwrap();
        assert_eq!(p.slot, 0);
        // Slot 0 has a part outstanding; slot 1 has nothing posted.
        let free = s.abandon_all();
        assert_eq!(free, [1]);
        assert!(!s.has_waiting());
        assert_eq!(s.active(), 1);
        let done = s.complete(p.ctx).unwrap();
        assert!(done.slot_free, "no more parts after abandon");
        assert_eq!(s.active(), 0);
        assert!(!s.abandon(0) && !s.abandon(7));
        // Abandoning an idle slot with nothing outstanding frees it at once.
        assert!(s.start(2, 10, None, 1));
        assert!(s.abandon(2));
        assert_eq!(s.active(), 0);
    }

    #[test]
    fn per_part_respects_uso_limits() {
        assert_eq!(segments_per_part(1200, 512, MAX_USO_BYTES), 54);
        assert_eq!(segments_per_part(1200, 10, MAX_USO_BYTES), 10);
        assert_eq!(segments_per_part(1200, 1, MAX_USO_BYTES), 1);
        assert_eq!(segments_per_part(70_000, 512, MAX_USO_BYTES), 1);
        assert_eq!(segments_per_part(0, 512, MAX_USO_BYTES), 1);
    }

    #[test]
    fn statuses() {
        assert_eq!(classify(0), Status::Ok);
        assert_eq!(classify(10040), Status::Truncated);
        assert_eq!(classify(10054), Status::Transient);
        assert_eq!(classify(1234), Status::Transient);
        assert_eq!(classify(995), Status::Aborted);
        assert_eq!(classify(10038), Status::Aborted);
        assert_eq!(classify(10022), Status::Refused);
        assert_eq!(classify(10045), Status::Refused);
        assert_eq!(classify(12345), Status::Other(12345));
    }

    #[test]
    fn wait_times_round_up() {
        let now = Instant::now();
        assert_eq!(wait_millis(now, None), u32::MAX);
        assert_eq!(wait_millis(now, Some(now)), 0);
        assert_eq!(wait_millis(now + Duration::from_secs(1), Some(now)), 0);
        assert_eq!(wait_millis(now, Some(now + Duration::from_micros(10))), 1);
        assert_eq!(wait_millis(now, Some(now + Duration::from_millis(20))), 20);
        assert_eq!(wait_millis(now, Some(now + Duration::from_micros(20_001))), 21);
        assert_eq!(
            wait_millis(now, Some(now + Duration::from_secs(100 * 86400))),
            u32::MAX - 1
        );
    }

    #[test]
    fn options_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(RioOptions::from_lookup(env(&[])), Ok(RioOptions::default()));
        let o = RioOptions::from_lookup(env(&[
            ("RINGQUIC_RIO_NOTIFY", "IOCP"),
            ("RINGQUIC_RIO_SPIN_US", "50"),
            ("RINGQUIC_RIO_URO", "1"),
        ]))
        .unwrap();
        assert_eq!(o.notify, RioNotify::Iocp);
        assert_eq!(o.spin, Duration::from_micros(50));
        assert!(o.uro);
        let o = RioOptions::from_lookup(env(&[("RINGQUIC_RIO_SPIN_US", "99999999")])).unwrap();
        assert_eq!(o.spin, RioOptions::MAX_SPIN);
        assert!(RioOptions::from_lookup(env(&[("RINGQUIC_RIO_NOTIFY", "epoll")])).is_err());
        assert!(RioOptions::from_lookup(env(&[("RINGQUIC_RIO_SPIN_US", "-1")])).is_err());
        assert!(RioOptions::from_lookup(env(&[("RINGQUIC_RIO_URO", "maybe")])).is_err());
    }
}
