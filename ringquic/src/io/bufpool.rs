//! Buffers made with the socket and reused for the endpoint's life (seed point 2).
//!
//! Two pools, both platform-independent bookkeeping that every backend (io_uring, the poll
//! fallback, RIO on Windows) builds on:
//!
//! * [`RxArena`]: one allocation carved into `count` equal receive buffers. The kernel writes
//!   into them (through the provided-buffer ring, or a RIO registration); buffer `i` starts at
//!   `i * size`. The arena is freed only by its owner's `Drop`, which runs after the backend has
//!   made sure the kernel no longer holds any of its buffers.
//! * [`TxPool`]: `count` send buffers handed out as [`TxBuf`]s and taken back when their send
//!   completes. A slot is either free (its `Vec` is in the free list) or in flight (its `Vec`
//!   is parked in `in_flight[slot]`), never both; [`TxPool::in_flight`] counts the latter.
//!
//! ```text
//!   TxPool:  free: [TxBuf 3, TxBuf 0]      in_flight: [None, Some(vec), Some(vec), None]
//!            take() ─► driver writes a GSO batch ─► park(slot) ─► kernel ─► complete(slot)
//! ```

use std::{alloc::Layout, ptr::NonNull};

use bytes::BytesMut;

use super::TxBuf;

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
/// bytes out and hands the same buffer back to the kernel ([`RxSlots::filled`]), or takes the
/// whole buffer away for quinn-proto and the application ([`RxSlots::take`], zero-copy receive)
/// and a fresh allocation takes its place in the ring.
///
/// ```text
///   slot id ──► BytesMut (capacity `size`) ──► kernel writes ──► take(id, len) ──► quinn-proto
///                      ▲                                                      │
///                      └──────────── fresh BytesMut::with_capacity(size) ◄────┘
/// ```
///
/// A fresh buffer's first `zeroed` bytes are zeroed: the kernel leaves gaps in the header part
/// of a `recvmsg` buffer (a name or control area larger than what it wrote), and every byte a
/// completion's length covers must be initialised before we read it. The payload after that
/// prefix is written by the kernel in full, so the rest of the buffer is never touched by us.
pub(crate) struct RxSlots {
    bufs: Vec<BytesMut>,
    size: usize,
    zeroed: usize,
}

impl RxSlots {
    /// `count` buffers of `size` bytes each, the first `zeroed` bytes of each zeroed. `None`
    /// for a zero count or size, or `zeroed > size`.
    pub(crate) fn new(count: usize, size: usize, zeroed: usize) -> Option<Self> {
        if count == 0 || size == 0 || zeroed > size {
            return None;
        }
        Some(Self {
            bufs: (0..count).map(|_| fresh_buffer(size, zeroed)).collect(),
            size,
            zeroed,
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
        if !self.valid(id, len) {
            return None;
        }
        let buf = &self.bufs[id];
        // SAFETY: `len` ≤ capacity (checked); bytes below `zeroed` were initialised when the
        // buffer was made, the caller promises the kernel wrote the rest and writes no more.
        Some(unsafe { std::slice::from_raw_parts(buf.as_ptr(), len) })
    }

    /// Take buffer `id` with its first `len` bytes, leaving a fresh empty buffer in its place
    /// (whose address [`RxSlots::addr`] then gives). `None` when out of range.
    ///
    /// # Safety
    /// As for [`RxSlots::filled`].
    pub(crate) unsafe fn take(&mut self, id: usize, len: usize) -> Option<BytesMut> {
        if !self.valid(id, len) {
            return None;
        }
        let fresh = fresh_buffer(self.size, self.zeroed);
        let mut buf = std::mem::replace(&mut self.bufs[id], fresh);
        // SAFETY: as in `filled`: `len` ≤ capacity and every byte below it is initialised.
        unsafe { buf.set_len(len) };
        Some(buf)
    }
}

/// An empty buffer of capacity `size` whose first `zeroed` bytes are initialised to zero.
fn fresh_buffer(size: usize, zeroed: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(size);
    for byte in &mut b.spare_capacity_mut()[..zeroed] {
        byte.write(0);
    }
    b
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

    /// Give back a buffer that was not sent.
    pub(crate) fn put(&mut self, mut b: TxBuf) {
        debug_assert!(self.in_flight[b.slot as usize].is_none());
        if b.buf.capacity() < self.buf_size {
            // quinn-proto never shrinks a Vec, but keep the promise of `buf_size` regardless.
            b.buf.reserve(self.buf_size);
        }
        self.free.push(b);
    }

    /// Park a buffer while the kernel sends from it; returns a pointer to its bytes, which stay
    /// put until [`TxPool::complete`] is called for the slot.
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
    }

    #[test]
    fn rx_slots_take_replaces_the_buffer() {
        assert!(RxSlots::new(0, 10, 0).is_none());
        assert!(RxSlots::new(2, 0, 0).is_none());
        assert!(RxSlots::new(2, 8, 9).is_none());
        let mut s = RxSlots::new(2, 64, 0).unwrap();
        assert_eq!((s.buf_count(), s.buf_size()), (2, 64));
        let a = s.addr(0);
        // Stand in for the kernel: write into the buffer through the address it was given.
        // SAFETY: `a` points at 64 writable bytes owned by `s`.
        unsafe { std::ptr::copy_nonoverlapping(b"datagram".as_ptr(), a, 8) };
        // SAFETY: 8 bytes were just written and nothing else writes the buffer.
        assert_eq!(unsafe { s.filled(0, 8) }, Some(&b"datagram"[..]));
        // SAFETY: as above.
        let taken = unsafe { s.take(0, 8) }.unwrap();
        assert_eq!(&taken[..], b"datagram");
        assert_eq!(taken.as_ptr(), a as *const u8, "taken without a copy");
        assert_ne!(s.addr(0), a, "a fresh buffer took its place");
        // SAFETY: out-of-range requests are refused before any memory is touched.
        unsafe {
            assert!(s.take(2, 1).is_none());
            assert!(s.take(1, 65).is_none());
            assert!(s.filled(5, 1).is_none());
        }
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
