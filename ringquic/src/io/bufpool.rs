//! Buffers made with the socket and reused for the endpoint's life (seed point 2).
//!
//! Three pools, all platform-independent bookkeeping:
//!
//! * [`RxArena`]: one allocation carved into `count` equal receive buffers, which the kernel
//!   writes into; buffer `i` starts at `i * size`. The RIO backend's registered region (one
//!   buffer holding every area). The arena is freed only by its owner's `Drop`, which runs after
//!   the backend has made sure the kernel no longer holds any of its buffers.
//! * [`RxSlots`]: the io_uring backend's provided buffers, each its own allocation, which can be
//!   lent out whole (zero-copy receive).
//! * [`TxPool`]: every backend's TX buffers, `count` of them, handed out as [`TxBuf`]s and
//!   taken back when their send completes. A slot is either free (its `Vec` is in the free
//!   list), taken (the driver or a backend's queue holds the `TxBuf`) or in flight (its `Vec` is
//!   parked in `in_flight[slot]` while the kernel may read it); [`TxPool::in_flight`] counts
//!   the last.
//!
//! ```text
//!   TxPool:  free: [TxBuf 3, TxBuf 0]      in_flight: [None, Some(vec), Some(vec), None]
//!            take() ─► driver writes a GSO batch ─► park(slot) ─► kernel ─► complete(slot)
//! ```

use std::{alloc::Layout, ptr::NonNull};

use bytes::BytesMut;
use tracing::debug;

use super::recv::Lender;
use crate::stats::EndpointIoStats as IoStats;

/// A TX buffer owned by the driver between [`IoBackend::take_tx`] and [`IoBackend::send`]
/// (or [`IoBackend::put_tx`]).
///
/// Ownership is explicit, as in tokio-uring: whoever holds the `TxBuf` may write into it; once it
/// is given to `send` the backend (and the kernel) own it until the send completes. Moving a
/// `TxBuf` never moves its heap memory, which is what the kernel points at.
#[derive(Debug)]
pub(crate) struct TxBuf {
    /// Backend-private slot number.
    pub(crate) slot: u32,
    /// The bytes to send; cleared when handed out, with at least the capacity the backend
    /// promised (`IoConfig::tx_buffer_size`).
    pub(crate) buf: Vec<u8>,
}

/// One aligned allocation split into fixed-size receive buffers (the RIO backend's registered
/// region; tested on every platform).
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) struct RxArena {
    ptr: NonNull<u8>,
    layout: Layout,
    size: usize,
    count: usize,
}

// SAFETY: the arena is plain memory owned by exactly one backend; nothing in it is tied to a
// thread. Access is mediated by the backend, which holds it by value.
unsafe impl Send for RxArena {}

#[cfg_attr(not(windows), allow(dead_code))]
impl RxArena {
    /// Allocate `count` buffers of `size` bytes each, zeroed, page-aligned.
    ///
    /// Fails (instead of aborting) when the size overflows or the allocator refuses.
    pub(crate) fn new(count: usize, size: usize) -> Option<Self> {
        let total = count.checked_mul(size)?;
        if total == 0 {
            return None;
        }
        let layout = Layout::from_size_align(total, 4096).ok()?;
        // SAFETY: the layout has a non-zero size (checked above).
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self {
            ptr,
            layout,
            size,
            count,
        })
    }

    /// Number of buffers.
    pub(crate) fn buf_count(&self) -> usize {
        self.count
    }

    /// Size of each buffer in bytes.
    pub(crate) fn buf_size(&self) -> usize {
        self.size
    }

    /// Address of buffer `id` (for the kernel). Panics if `id` is out of range: ids come from
    /// our own bookkeeping, never from the network.
    pub(crate) fn addr(&self, id: usize) -> *mut u8 {
        assert!(id < self.count, "receive buffer id out of range");
        // SAFETY: id < count, so the offset stays inside the allocation.
        unsafe { self.ptr.as_ptr().add(id * self.size) }
    }

    /// The first `len` bytes of buffer `id`, after the kernel has completed a write into it and
    /// before it is handed back to the kernel. Returns `None` when the id or the length reported
    /// by a completion is out of range (a bad completion is dropped, never trusted).
    pub(crate) fn filled(&self, id: usize, len: usize) -> Option<&[u8]> {
        if id >= self.count || len > self.size {
            return None;
        }
        // SAFETY: in range (checked above). The caller (the backend) only asks for buffers whose
        // ownership the kernel has returned through a completion, so nothing writes them now.
        Some(unsafe { std::slice::from_raw_parts(self.addr(id), len) })
    }
}

impl Drop for RxArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. Backends keep the arena alive until the
        // kernel has returned every buffer (see their `shutdown`).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Receive buffers that can leave the pool: the io_uring backend's provided buffers.
///
/// Each buffer is its own `BytesMut` allocation. While the kernel holds buffer `id` we only keep
/// its address; when a completion says the kernel filled it, the backend either copies the
/// bytes out and hands the same buffer back to the kernel ([`RxSlots::filled`]), or lends the
/// whole buffer to quinn-proto and the application ([`RxSlots::lend`], zero-copy receive) and
/// another buffer takes its place in the ring.
///
/// ```text
///   slot id ──► BytesMut (capacity `size`) ──► kernel writes ──► lend(id) ──► quinn-proto, app
///                      ▲                                          │ head kept in `lent`
///                      └── spare (a lent buffer no one holds any more) or a fresh one
/// ```
///
/// Lending is bounded by a [`Lender`]: at most `max_lent` buffers may be out at once, and a
/// lent buffer no one holds any more is taken back and reused instead of allocating a new one.
/// When the budget is used up, [`RxSlots::lend`] refuses and the backend copies instead:
/// whatever a peer sends, lent buffers never hold more than `max_lent × size` bytes.
///
/// A fresh buffer's first `zeroed` bytes are zeroed: the kernel leaves gaps in the header part
/// of a `recvmsg` buffer (a name or control area larger than what it wrote), and every byte a
/// completion's length covers must be initialised before we read it. The payload after that
/// prefix is written by the kernel in full. A reused buffer's bytes were all initialised in
/// its first life (zeroed, or written by the kernel), so it needs no zeroing again.
pub(crate) struct RxSlots {
    bufs: Vec<BytesMut>,
    size: usize,
    /// Bytes at the start of every buffer that are initialised whatever the kernel wrote (see
    /// [`RxSlots::initialised_mut`]).
    zeroed: usize,
    lender: Lender,
}

impl RxSlots {
    /// `count` buffers of `size` bytes each, the first `zeroed` bytes of each zeroed; at most
    /// `max_lent` lent at once. `None` for a zero count or size, or `zeroed > size`.
    pub(crate) fn new(count: usize, size: usize, zeroed: usize, max_lent: usize) -> Option<Self> {
        if count == 0 || size == 0 || zeroed > size {
            return None;
        }
        let mut lender = Lender::new(size, zeroed, max_lent);
        Some(Self {
            bufs: (0..count).map(|_| lender.buffer()).collect(),
            size,
            zeroed,
            lender,
        })
    }

    /// Buffers of `size` bytes (the first `zeroed` of each zeroed) and at most `max_lent` lent
    /// from now on: a socket that coalesces more per receive needs bigger ones. Every buffer in
    /// the pool is replaced by a fresh one. Buffers lent before still count against
    /// `max_lent` until no one holds them, and are freed then instead of reused, so lent
    /// memory stays within the budget across the change. `false` (nothing changed) for a zero
    /// size or `zeroed > size`.
    pub(crate) fn regrow(&mut self, size: usize, zeroed: usize, max_lent: usize) -> bool {
        if size == 0 || zeroed > size {
            return false;
        }
        self.lender.resize(size, zeroed, max_lent);
        for b in &mut self.bufs {
            *b = self.lender.buffer();
        }
        self.size = size;
        self.zeroed = zeroed;
        true
    }

    /// The always-initialised start of every buffer in the pool, `zeroed` bytes each, in slot
    /// order: for a receive call that writes into initialised memory (the poll backend's
    /// `recvmmsg` through quinn-udp, whose pool is made with `zeroed == size`). What a call
    /// writes there is initialised too, so [`RxSlots::filled`] and [`RxSlots::lend`] may then
    /// be called with any length up to `zeroed`.
    ///
    /// Why the slices are sound: every buffer in the pool has capacity for `size` ≥ `zeroed`
    /// bytes (made with that capacity by the lender, or reclaimed whole by it), and its first
    /// `zeroed` bytes are initialised: zeroed when the allocation was made, and only ever
    /// overwritten with initialised bytes since (by the kernel, by quinn-proto's in-place
    /// decryption, by these slices' writers). No piece of a buffer in the pool is lent: a lent
    /// buffer leaves the pool, and one is reclaimed only once no other handle to it exists.
    pub(crate) fn initialised_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let zeroed = self.zeroed;
        self.bufs.iter_mut().map(move |b| {
            // SAFETY: capacity ≥ `zeroed` and those bytes initialised, no lent piece (the doc
            // above); the `&mut self` borrow makes this slice the only access.
            unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr(), zeroed) }
        })
    }

    /// Number of buffers.
    pub(crate) fn buf_count(&self) -> usize {
        self.bufs.len()
    }

    /// Size of each buffer in bytes.
    pub(crate) fn buf_size(&self) -> usize {
        self.size
    }

    /// Buffers lent and not yet known to be back (see [`Lender::buffer`]).
    pub(crate) fn lent(&self) -> usize {
        self.lender.lent()
    }

    /// Address of buffer `id`, for the kernel. Panics if `id` is out of range: ids come from our
    /// own bookkeeping, never from the network.
    pub(crate) fn addr(&mut self, id: usize) -> *mut u8 {
        self.bufs[id].as_mut_ptr()
    }

    /// Whether `id` and `len`, as a completion reports them, name bytes inside one buffer.
    pub(crate) fn valid(&self, id: usize, len: usize) -> bool {
        id < self.bufs.len() && len <= self.size
    }

    /// The first `len` bytes of buffer `id`, which stays in the pool. `None` when `id` or `len`
    /// is out of range (a bad completion is dropped, never trusted).
    ///
    /// # Safety
    /// The kernel holds buffer `id` no longer (a completion returned it) and has written every
    /// byte of `[zeroed, len)` (the zeroed prefix needs no write).
    pub(crate) unsafe fn filled(&self, id: usize, len: usize) -> Option<&[u8]> {
        // SAFETY: the caller keeps this function's contract, which is `prefix`'s.
        unsafe { prefix(&self.bufs, self.size, id, len) }
    }

    /// [`RxSlots::filled`], with the pool's lender beside it: a receive that is not lent can be
    /// copied into a pooled buffer of the same pool and budget (`recv::deliver`).
    ///
    /// # Safety
    /// As for [`RxSlots::filled`].
    pub(crate) unsafe fn filled_with_lender(
        &mut self,
        id: usize,
        len: usize,
    ) -> Option<(&[u8], &mut Lender)> {
        // SAFETY: the caller keeps this function's contract, which is `prefix`'s.
        let bytes = unsafe { prefix(&self.bufs, self.size, id, len) }?;
        Some((bytes, &mut self.lender))
    }

    /// Lend buffer `id`: its bytes `[payload.start, payload.end)` go out as one `BytesMut`
    /// sharing the buffer's allocation, and a spare or fresh buffer takes its place (whose
    /// address [`RxSlots::addr`] then gives). `None` when out of range, or when `max_lent`
    /// buffers are still held (then the caller copies; the buffer stays in its slot).
    ///
    /// # Safety
    /// As for [`RxSlots::filled`], with `len = payload.end`.
    pub(crate) unsafe fn lend(&mut self, id: usize, payload: std::ops::Range<usize>) -> Option<BytesMut> {
        if !self.valid(id, payload.end) || payload.start > payload.end || !self.lender.has_room() {
            return None;
        }
        let next = self.lender.buffer();
        let mut buf = std::mem::replace(&mut self.bufs[id], next);
        // SAFETY: as in `filled`: `payload.end` ≤ capacity and every byte below it is
        // initialised.
        unsafe { buf.set_len(payload.end) };
        Some(self.lender.lend(buf, payload.start))
    }
}

/// The first `len` bytes of `bufs[id]`, a buffer of capacity ≥ `size`; `None` when `id` or
/// `len` is out of range (a bad completion is dropped, never trusted).
///
/// # Safety
/// Nothing writes buffer `id` any more (the kernel returned it) and every byte below `len` is
/// initialised: below the pool's `zeroed` prefix from its making, above it written by the kernel.
unsafe fn prefix(bufs: &[BytesMut], size: usize, id: usize, len: usize) -> Option<&[u8]> {
    let buf = bufs.get(id).filter(|_| len <= size)?;
    // SAFETY: `len` ≤ `size` ≤ capacity (checked); initialised and unwritten (the contract).
    Some(unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) })
}

/// The TX buffers of one endpoint.
pub(crate) struct TxPool {
    free: Vec<TxBuf>,
    in_flight: Vec<Option<Vec<u8>>>,
    busy: usize,
    buf_size: usize,
}

impl TxPool {
    /// `count` buffers, each with capacity `buf_size`.
    pub(crate) fn new(count: usize, buf_size: usize) -> Self {
        Self {
            free: (0..count as u32)
                .rev()
                .map(|slot| TxBuf {
                    slot,
                    buf: Vec::with_capacity(buf_size),
                })
                .collect(),
            in_flight: (0..count).map(|_| None).collect(),
            busy: 0,
            buf_size,
        }
    }

    /// A free buffer, cleared; `None` when all are taken or in flight.
    pub(crate) fn take(&mut self) -> Option<TxBuf> {
        let mut b = self.free.pop()?;
        b.buf.clear();
        Some(b)
    }

    /// [`TxPool::take`] as `IoBackend::take_tx` does it: finding every buffer taken or in flight
    /// is counted (`IoStats::tx_exhausted`).
    pub(crate) fn take_counted(&mut self, stats: &mut IoStats) -> Option<TxBuf> {
        let b = self.take();
        if b.is_none() {
            stats.tx_exhausted += 1;
        }
        b
    }

    /// Give back a buffer that was not sent. One the pool cannot be missing (every slot is free
    /// or in flight already: returned twice, or another pool's) is dropped.
    pub(crate) fn put(&mut self, mut b: TxBuf) {
        if self.free.len() + self.busy >= self.in_flight.len() {
            debug!(slot = b.slot, "TX buffer returned twice or foreign; dropped");
            return;
        }
        debug_assert!(self.in_flight[b.slot as usize].is_none());
        if b.buf.capacity() < self.buf_size {
            // quinn-proto never shrinks a Vec, but keep the promise of `buf_size` regardless.
            b.buf.reserve(self.buf_size);
        }
        self.free.push(b);
    }

    /// Park a buffer while the kernel sends from it; returns its bytes, which stay put until
    /// [`TxPool::complete`] is called for the slot.
    pub(crate) fn park(&mut self, b: TxBuf) -> &[u8] {
        let slot = b.slot as usize;
        debug_assert!(self.in_flight[slot].is_none());
        self.busy += 1;
        self.in_flight[slot].insert(b.buf).as_slice()
    }

    /// The kernel is done with `slot`: back to the free list. Returns false (and changes
    /// nothing) for a slot that was not in flight, so a duplicated completion cannot corrupt
    /// the pool.
    pub(crate) fn complete(&mut self, slot: u32) -> bool {
        match self.in_flight.get_mut(slot as usize).and_then(Option::take) {
            Some(buf) => {
                self.busy -= 1;
                self.free.push(TxBuf { slot, buf });
                true
            }
            None => false,
        }
    }

    /// The bytes of an in-flight slot.
    pub(crate) fn parked(&self, slot: u32) -> Option<&[u8]> {
        self.in_flight.get(slot as usize)?.as_deref()
    }

    /// Start and capacity of every free buffer, by slot: what the kernel registers as fixed
    /// buffers (call before any buffer is handed out). `None` for a slot in use.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn regions(&mut self) -> Vec<Option<(*mut u8, usize)>> {
        let mut out = vec![None; self.in_flight.len()];
        for b in &mut self.free {
            out[b.slot as usize] = Some((b.buf.as_mut_ptr(), b.buf.capacity()));
        }
        out
    }

    /// Whether a buffer is free.
    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Number of free buffers.
    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Number of buffers the kernel holds.
    pub(crate) fn in_flight(&self) -> usize {
        self.busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_pool_cycle() {
        let mut p = TxPool::new(2, 100);
        let a = p.take().unwrap();
        let mut b = p.take().unwrap();
        assert!(p.take().is_none());
        assert!(a.buf.capacity() >= 100);
        b.buf.extend_from_slice(b"hello");
        let slot = b.slot;
        assert_eq!(p.park(b), b"hello");
        assert_eq!(p.in_flight(), 1);
        assert_eq!(p.parked(slot), Some(&b"hello"[..]));
        p.put(a);
        assert!(p.complete(slot));
        assert!(!p.complete(slot), "a duplicate completion is ignored");
        assert_eq!(p.in_flight(), 0);
        let c = p.take().unwrap();
        assert!(c.buf.is_empty());
        let slot = c.slot;
        p.put(c);
        assert_eq!(p.free_count(), 2);
        // A buffer the pool is not missing is dropped, never handed out twice.
        p.put(TxBuf {
            slot,
            buf: Vec::new(),
        });
        assert_eq!(p.free_count(), 2);
        let mut stats = IoStats::default();
        let taken = [p.take_counted(&mut stats), p.take_counted(&mut stats)];
        assert!(taken.iter().all(Option::is_some));
        assert!(p.take_counted(&mut stats).is_none());
        assert_eq!(stats.tx_exhausted, 1);
    }

    #[test]
    fn rx_slots_lend_replaces_the_buffer() {
        assert!(RxSlots::new(0, 10, 0, 1).is_none());
        assert!(RxSlots::new(2, 0, 0, 1).is_none());
        assert!(RxSlots::new(2, 8, 9, 1).is_none());
        let mut s = RxSlots::new(2, 64, 0, 4).unwrap();
        assert_eq!((s.buf_count(), s.buf_size()), (2, 64));
        let a = s.addr(0);
        // Stand in for the kernel: write into the buffer through the address it was given.
        // SAFETY: `a` points at 64 writable bytes owned by `s`.
        unsafe { std::ptr::copy_nonoverlapping(b"hdr:datagram".as_ptr(), a, 12) };
        // SAFETY: 12 bytes were just written and nothing else writes the buffer.
        assert_eq!(unsafe { s.filled(0, 12) }, Some(&b"hdr:datagram"[..]));
        // SAFETY: as above.
        let lent = unsafe { s.lend(0, 4..12) }.unwrap();
        assert_eq!(&lent[..], b"datagram");
        assert_eq!(
            lent.as_ptr(),
            a.wrapping_add(4) as *const u8,
            "lent without a copy"
        );
        assert_ne!(s.addr(0), a, "another buffer took its place");
        assert_eq!(s.lent(), 1);
        // SAFETY: out-of-range requests are refused before any memory is touched.
        unsafe {
            assert!(s.lend(2, 0..1).is_none());
            assert!(s.lend(1, 0..65).is_none());
            assert!(s.filled(5, 1).is_none());
        }
    }

    /// At most `max_lent` buffers are out at once; a buffer no one holds any more is reclaimed
    /// whole and reused for the next slot that needs one, without a new allocation.
    #[test]
    fn rx_slots_lending_is_bounded_and_buffers_come_back() {
        let mut s = RxSlots::new(4, 64, 8, 2).unwrap();
        let first = s.addr(0);
        // SAFETY: the buffers' first 8 bytes are zeroed, the lengths are within the 64-byte
        // buffers, and nothing else writes them (the same for every `lend` below).
        let a = unsafe { s.lend(0, 8..8) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { s.lend(1, 8..8) }.unwrap();
        // SAFETY: as above.
        let over = unsafe { s.lend(2, 8..8) };
        assert!(over.is_none(), "over the budget: the caller copies");
        assert_eq!(s.lent(), 2);
        // A piece of `a` still held keeps it lent; dropping every piece brings it back.
        let piece = a.freeze();
        // SAFETY: as above.
        let still_over = unsafe { s.lend(2, 8..8) };
        assert!(still_over.is_none(), "a piece still held keeps buffer 0 lent");
        drop(piece);
        let b_piece = b.freeze();
        // SAFETY: as above.
        let c = unsafe { s.lend(2, 8..8) }.unwrap();
        assert_eq!(s.addr(2), first, "slot 2 now holds buffer 0's allocation, reused");
        assert_eq!(s.lent(), 2);
        drop((b_piece, c));
    }

    /// A pool made with every byte zeroed gives out initialised slices of the whole buffer;
    /// what is written through them is what `filled` and `lend` read.
    #[test]
    fn rx_slots_initialised_slices_cover_what_is_zeroed() {
        let mut s = RxSlots::new(3, 64, 64, 1).unwrap();
        let mut n = 0;
        for (i, b) in s.initialised_mut().enumerate() {
            assert_eq!(b.len(), 64);
            assert!(b.iter().all(|&x| x == 0));
            b[..5].copy_from_slice(&[i as u8; 5]);
            n += 1;
        }
        assert_eq!(n, 3);
        // SAFETY: every byte of every buffer is initialised (zeroed == size).
        assert_eq!(unsafe { s.filled(2, 5) }, Some(&[2u8; 5][..]));
        // SAFETY: as above.
        let lent = unsafe { s.lend(1, 0..64) }.unwrap();
        assert_eq!(&lent[..5], &[1u8; 5]);
        // Its replacement is initialised too: a fresh, zeroed buffer.
        assert!(s.initialised_mut().nth(1).unwrap().iter().all(|&x| x == 0));
        // A pool for the kernel (io_uring) only promises its zeroed prefix.
        let mut k = RxSlots::new(2, 64, 8, 1).unwrap();
        assert!(k.initialised_mut().all(|b| b.len() == 8));
    }

    /// After `regrow`, every buffer in the pool has the new size; buffers lent before still
    /// count against the budget until their pieces are dropped, and are then freed, not
    /// handed out again.
    #[test]
    fn rx_slots_regrow_keeps_lent_buffers_in_the_budget() {
        let mut s = RxSlots::new(2, 64, 64, 2).unwrap();
        // SAFETY: every byte is initialised (zeroed == size); the same below.
        let old = unsafe { s.lend(0, 0..64) }.unwrap();
        assert!(
            !s.regrow(0, 0, 2) && !s.regrow(8, 9, 2),
            "refused, nothing changed"
        );
        assert_eq!(s.buf_size(), 64);
        assert!(s.regrow(128, 128, 2));
        assert_eq!(s.buf_size(), 128);
        assert!(s
            .initialised_mut()
            .all(|b| b.len() == 128 && b.iter().all(|&x| x == 0)));
        assert_eq!(s.lent(), 1, "the old buffer still counts");
        // SAFETY: as above.
        let new = unsafe { s.lend(0, 0..128) }.unwrap();
        assert_eq!(new.len(), 128);
        // SAFETY: as above.
        assert!(unsafe { s.lend(1, 0..128) }.is_none(), "two lent: the budget");
        drop(old);
        // SAFETY: as above.
        let again = unsafe { s.lend(1, 0..128) }.unwrap();
        assert_eq!(s.lent(), 2, "the old one was freed, the new ones count");
        // Whatever took slot 1's place is of the new size.
        assert!(s.initialised_mut().all(|b| b.len() == 128));
        drop((new, again));
    }

    #[test]
    fn rx_arena_bounds() {
        let a = RxArena::new(4, 256).unwrap();
        assert_eq!(a.buf_size(), 256);
        assert_eq!(a.addr(1) as usize - a.addr(0) as usize, 256);
        assert_eq!(a.addr(0) as usize % 4096, 0);
        assert!(a.filled(3, 256).is_some());
        assert!(a.filled(4, 1).is_none());
        assert!(a.filled(0, 257).is_none());
        assert!(RxArena::new(0, 10).is_none());
        assert!(RxArena::new(usize::MAX, 2).is_none());
    }
}
