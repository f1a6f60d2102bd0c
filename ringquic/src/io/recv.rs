//! What a received datagram may keep alive: the one place every backend hands received bytes
//! to the I/O loop through.
//!
//! quinn-proto keeps pieces of received datagrams: stream data until the application reads it,
//! unreliable datagrams until `read_datagram`. Each piece is a `Bytes` slice that keeps its whole
//! allocation alive. quinn-proto accounts for that (its stream reassembly compares the bytes it
//! buffers with the size of the packets they came in, and copies out small pieces when the
//! packets are mostly dead), but only if each datagram it is handed is its own allocation of
//! about its own size. A GRO batch received into one buffer and split per datagram breaks that:
//! a 1-byte piece of the last datagram keeps the other 40 datagrams' bytes alive too, which a
//! peer can use to make us hold 10 000× what it sent.
//!
//! So there are three ways in, and backends use only these:
//!
//! * [`deliver_copied`]: each datagram is copied into its own exact-size allocation (the rule
//!   quinn-proto's accounting assumes). The receive buffer stays with the backend. Used for a
//!   receive of one datagram, a batch smaller than the backend's threshold ([`POOLED_MIN`],
//!   `zero_copy_threshold`), and whenever the budget below is used up.
//! * [`Lender::copy_in`] then [`deliver_lent`]: a receive of several datagrams (a GRO batch) is
//!   copied into one pooled buffer, which is split per datagram and lent out.
//! * [`deliver_lent`] of the buffer the kernel filled (zero-copy receive, `RxSlots`: io_uring's
//!   provided buffers, the poll backend's `recvmmsg` buffers).
//!
//! A lent buffer lives until the last piece of it is dropped. [`Lender`] bounds how many are
//! out at once (the receive memory budget) and takes a buffer back for reuse once no piece of
//! it is held, so a steady stream of GRO batches allocates nothing, and what a peer can make
//! lent buffers hold is at most the budget, whatever it sends.
//!
//! Unreliable datagrams need nothing more: quinn-proto counts their payload against
//! `datagram_receive_buffer_size`, and a copied datagram keeps only its own packet alive.

use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
};

use bytes::BytesMut;
use quinn_proto::EcnCodepoint;

use crate::stats::EndpointIoStats as IoStats;

/// Where a received datagram came from and how it arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMeta {
    /// The peer's address (IPv4 peers on a dual-stack socket are reported as IPv4).
    pub remote: SocketAddr,
    /// The local address the datagram was sent to (`IP_PKTINFO` / `IPV6_PKTINFO`), if known.
    pub local_ip: Option<IpAddr>,
    /// ECN bits from the IP header, if any.
    pub ecn: Option<EcnCodepoint>,
}

/// Split a received payload into datagrams: a GRO (or URO) batch holds `segment_size`-byte
/// datagrams, the last one possibly shorter. Without a size, or with a zero one, the payload is
/// one datagram.
pub(crate) fn segments(
    payload_len: usize,
    segment_size: Option<usize>,
) -> impl Iterator<Item = Range<usize>> {
    let step = match segment_size {
        Some(s) if s > 0 => s,
        _ => payload_len.max(1),
    };
    (0..payload_len)
        .step_by(step)
        .map(move |start| start..(start + step).min(payload_len))
}

/// Hand each datagram of `payload` on in its own exact-size allocation (one allocation per
/// datagram; the backend keeps its buffer).
pub(crate) fn deliver_copied(
    payload: &[u8],
    segment_size: Option<usize>,
    meta: RecvMeta,
    stats: &mut IoStats,
    on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
) {
    each_datagram(payload.len(), segment_size, meta, stats, on_recv, |r| {
        BytesMut::from(&payload[r])
    });
}

/// Hand the datagrams of `data` on as slices of `data` itself, without copying. Only for
/// buffers lent through a [`Lender`] (see the module docs).
pub(crate) fn deliver_lent(
    mut data: BytesMut,
    segment_size: Option<usize>,
    meta: RecvMeta,
    stats: &mut IoStats,
    on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
) {
    each_datagram(data.len(), segment_size, meta, stats, on_recv, |r| {
        data.split_to(r.len())
    });
}

/// Count a receive of `len` bytes and hand on each of its datagrams, made by `take`.
fn each_datagram(
    len: usize,
    segment_size: Option<usize>,
    meta: RecvMeta,
    stats: &mut IoStats,
    on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
    mut take: impl FnMut(Range<usize>) -> BytesMut,
) {
    stats.bytes_received += len as u64;
    for range in segments(len, segment_size) {
        stats.datagrams_received += 1;
        on_recv(meta, take(range));
    }
}

/// Receives smaller than this are copied per datagram even when they hold several: a few
/// small allocations cost less than taking a whole pooled buffer, and a pooled buffer that is
/// lent carries at least a quarter of its (default 64 KiB) size.
pub(crate) const POOLED_MIN: usize = 16 * 1024;

/// Hand one receive on: copied into a pooled buffer and lent when it is a batch of several
/// datagrams of at least [`POOLED_MIN`] bytes and the budget allows, else copied per datagram.
pub(crate) fn deliver(
    lender: &mut Lender,
    payload: &[u8],
    segment_size: Option<usize>,
    meta: RecvMeta,
    stats: &mut IoStats,
    on_recv: &mut dyn FnMut(RecvMeta, BytesMut),
) {
    let several = payload.len() >= POOLED_MIN && segment_size.is_some_and(|s| s > 0 && s < payload.len());
    match several.then(|| lender.copy_in(payload)).flatten() {
        Some(data) => deliver_lent(data, segment_size, meta, stats, on_recv),
        None => deliver_copied(payload, segment_size, meta, stats, on_recv),
    }
    stats.recv_buffers_lent = lender.lent() as u64;
}

/// Buffers of one size lent to quinn-proto and the application, at most `max_lent` at once,
/// and reused once they come back.
///
/// A lent buffer is tracked by a head split off its start (sharing its allocation) and kept
/// here. Once every other piece of the buffer is gone (the application read or dropped the
/// data), the head is the allocation's last handle and reclaims it whole
/// (`BytesMut::try_reclaim`, which succeeds only for a unique handle); [`Lender::sweep`] then
/// keeps it as a spare for the next buffer needed.
///
/// (Written by hand: no crate pools `bytes` buffers by reclaiming split handles.)
pub(crate) struct Lender {
    size: usize,
    /// Bytes at the start of a fresh buffer that are zeroed (io_uring reads a receive's header
    /// area, which the kernel may leave partly unwritten).
    zeroed: usize,
    /// The head of each lent buffer, with the size buffers had when it was lent (a
    /// [`Lender::resize`] since makes it smaller than `size`).
    lent: Vec<(BytesMut, usize)>,
    max_lent: usize,
    spare: Vec<BytesMut>,
}

/// Buffers that came back kept for reuse; more are freed.
const MAX_SPARE: usize = 16;

impl Lender {
    /// Buffers of `size` bytes, the first `zeroed` of a fresh one zeroed; at most `max_lent` out.
    pub(crate) fn new(size: usize, zeroed: usize, max_lent: usize) -> Self {
        Self {
            size,
            zeroed: zeroed.min(size),
            lent: Vec::new(),
            max_lent,
            spare: Vec::new(),
        }
    }

    /// Buffers lent and not yet known to be back (checked when a buffer is next needed).
    pub(crate) fn lent(&self) -> usize {
        self.lent.len()
    }

    /// Whether another buffer may be lent now (sweeps first when at the limit).
    pub(crate) fn has_room(&mut self) -> bool {
        if self.lent.len() >= self.max_lent {
            self.sweep();
        }
        self.lent.len() < self.max_lent
    }

    /// An empty buffer of `size` bytes: a spare (lent buffers that came back are looked for
    /// first when there is none), or a fresh allocation whose first `zeroed` bytes are zero.
    /// Every byte of a spare below what it held before is initialised.
    ///
    /// Sweeping here, when a buffer is needed, rather than on every turn keeps the cost off
    /// turns that lend nothing, and it is what every backend's lending goes through.
    pub(crate) fn buffer(&mut self) -> BytesMut {
        if self.spare.is_empty() {
            self.sweep();
        }
        self.spare.pop().unwrap_or_else(|| {
            let mut b = BytesMut::with_capacity(self.size);
            b.resize(self.zeroed, 0);
            b.clear();
            b
        })
    }

    /// Lend `buf` (a whole buffer from [`Lender::buffer`]): its bytes from `start` on go out,
    /// the head before `start` stays here to track it. The caller checked [`Lender::has_room`].
    pub(crate) fn lend(&mut self, mut buf: BytesMut, start: usize) -> BytesMut {
        let head = buf.split_to(start.min(buf.len()));
        self.lent.push((head, self.size));
        buf
    }

    /// Copy `payload` into a lent buffer; `None` if it does not fit one or the budget is used.
    pub(crate) fn copy_in(&mut self, payload: &[u8]) -> Option<BytesMut> {
        if payload.len() > self.size || !self.has_room() {
            return None;
        }
        let mut b = self.buffer();
        b.extend_from_slice(payload);
        Some(self.lend(b, 0))
    }

    /// Buffers of `size` bytes, the first `zeroed` of a fresh one zeroed, at most `max_lent`
    /// out, from now on. Spares are freed; buffers lent before still count until no one holds
    /// them, and are then freed instead of kept ([`Lender::sweep`]).
    pub(crate) fn resize(&mut self, size: usize, zeroed: usize, max_lent: usize) {
        self.size = size;
        self.zeroed = zeroed.min(size);
        self.max_lent = max_lent;
        self.spare.clear();
    }

    /// Take back every lent buffer no one holds any more. O(lent), at most `max_lent`.
    pub(crate) fn sweep(&mut self) {
        let size = self.size;
        let spare = &mut self.spare;
        self.lent.retain_mut(|(head, lent_size)| {
            head.clear();
            // Succeeds only when the head is the allocation's last handle; it then covers the
            // whole buffer again, from its start.
            if !head.try_reclaim(*lent_size) {
                return true;
            }
            if *lent_size != size {
                // Lent before a `resize`: freed, not kept.
                return false;
            }
            if spare.len() < MAX_SPARE {
                spare.push(std::mem::take(head));
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_by_size_with_a_short_last_one() {
        let v: Vec<_> = segments(3000, Some(1200)).collect();
        assert_eq!(v, [0..1200, 1200..2400, 2400..3000]);
        assert_eq!(segments(500, None).collect::<Vec<_>>(), vec![0..500usize; 1]);
        assert_eq!(segments(500, Some(0)).collect::<Vec<_>>(), vec![0..500usize; 1]);
        assert_eq!(segments(0, Some(1200)).count(), 0);
        assert_eq!(segments(0, None).count(), 0);
    }

    fn meta() -> RecvMeta {
        RecvMeta {
            remote: "127.0.0.1:1".parse().unwrap(),
            local_ip: None,
            ecn: None,
        }
    }

    /// A copied datagram owns an allocation of its own size: dropping the others frees them.
    #[test]
    fn copied_datagrams_are_separate_exact_allocations() {
        let payload: Vec<u8> = (0..4100u32).map(|i| i as u8).collect();
        let mut stats = IoStats::default();
        let mut got = Vec::new();
        deliver_copied(&payload, Some(1400), meta(), &mut stats, &mut |_, d| got.push(d));
        assert_eq!(
            got.iter().map(|d| d.len()).collect::<Vec<_>>(),
            [1400, 1400, 1300]
        );
        assert_eq!(
            got.iter().map(|d| d.capacity()).collect::<Vec<_>>(),
            [1400, 1400, 1300]
        );
        assert_eq!(&got[2][..], &payload[2800..]);
        let mut last = got.pop().unwrap();
        drop(got);
        // Unique: reclaiming its own capacity succeeds, nothing else shares it.
        last.clear();
        assert!(last.try_reclaim(1300));
        assert_eq!((stats.datagrams_received, stats.bytes_received), (3, 4100));
    }

    /// Lent datagrams are slices of the one buffer: the buffer lives while any piece does.
    #[test]
    fn lent_datagrams_share_the_buffer() {
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(&[7u8; 4100]);
        let base = buf.as_ptr();
        let mut stats = IoStats::default();
        let mut got = Vec::new();
        deliver_lent(buf, Some(1400), meta(), &mut stats, &mut |_, d| got.push(d));
        assert_eq!(got.len(), 3);
        // Addresses compared only, nothing dereferenced.
        assert_eq!(got[1].as_ptr() as usize - base as usize, 1400);
        assert_eq!((stats.datagrams_received, stats.bytes_received), (3, 4100));
    }

    /// At most `max_lent` buffers are out; one no one holds any more comes back and is reused
    /// (the same allocation), and a batch over the budget is copied per datagram instead.
    #[test]
    fn lending_is_bounded_and_buffers_come_back() {
        let mut l = Lender::new(8192, 0, 2);
        let batch = [1u8; 4200];
        let a = l.copy_in(&batch).unwrap();
        let a_base = a.as_ptr();
        let b = l.copy_in(&batch).unwrap();
        assert!(l.copy_in(&batch).is_none(), "over the budget");
        assert!(l.copy_in(&[0u8; 8193]).is_none(), "larger than a buffer");
        // A piece still held keeps its buffer lent.
        let piece = a.freeze().slice(4000..4001);
        l.sweep();
        assert_eq!(l.lent(), 2);
        drop(piece);
        l.sweep();
        assert_eq!(l.lent(), 1, "the first buffer came back");
        let c = l.copy_in(&batch).unwrap();
        assert_eq!(c.as_ptr(), a_base, "and was reused, not reallocated");
        drop((b, c));

        // Through `deliver`: a big batch is lent; one over the budget, a small batch and a
        // single datagram are copied per datagram.
        let big = vec![3u8; 14 * 1400];
        let mut stats = IoStats::default();
        let mut l = Lender::new(65536, 0, 1);
        let mut got = Vec::new();
        let mut push = |_: RecvMeta, d: BytesMut| got.push(d);
        deliver(&mut l, &big, Some(1400), meta(), &mut stats, &mut push);
        assert_eq!((l.lent(), stats.recv_buffers_lent), (1, 1));
        deliver(&mut l, &big, Some(1400), meta(), &mut stats, &mut push);
        deliver(&mut l, &batch, Some(1400), meta(), &mut stats, &mut push);
        deliver(&mut l, &batch[..1200], Some(1400), meta(), &mut stats, &mut push);
        assert_eq!(got.len(), 14 + 14 + 3 + 1);
        // Addresses compared only: lent datagrams lie back to back in one buffer; copies each
        // have an allocation of their own (malloc's headers sit between any two).
        let adjacent = |i: usize| got[i + 1].as_ptr() as usize == got[i].as_ptr() as usize + 1400;
        assert!((0..13).all(adjacent), "lent: slices of one buffer");
        assert!(!(14..30).any(adjacent), "exact copies");
        assert_eq!(got[31].capacity(), 1200, "one datagram: an exact copy");
    }
}
