//! Zero-copy receive and allocations per packet, checked with a counting global allocator.
//!
//! * Pointer identity: every receive buffer the io_uring and poll backends give the kernel is
//!   an allocation of exactly `RX_SIZE` bytes (a size nothing else here uses). The allocator keeps a
//!   table of those that are live. A chunk the application gets from `read_chunk` that lies
//!   inside one of them was never copied: it is the memory the kernel wrote, decrypted in place.
//!   With the threshold at 0 every chunk must be such a slice; with zero-copy off none may be.
//! * Allocations per packet: the I/O threads count their own allocations (a thread-local flag
//!   set by a task spawned onto each of them) over a steady-state download.
//!
//! One `#[test]` runs the cases in turn, so nothing else in this process allocates buffers of
//! that size or disturbs the counts.
mod common;
use common::*;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use bytes::Bytes;
use ringquic::{BackendKind, Endpoint, EndpointIoStats};

/// Receive buffer size for these tests: at least 64 KiB + 256 (so GRO stays on) and unusual.
const RX_SIZE: usize = 65536 + 256 + 40;
const TABLE: usize = 8192;

/// Live allocations of `RX_SIZE` bytes: their addresses, 0 for a free entry.
static LIVE: [AtomicUsize; TABLE] = [const { AtomicUsize::new(0) }; TABLE];
/// Allocations made on threads that set `COUNTING`.
static COUNTED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

struct Tracking;

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// reads the returned pointers and uses atomics and a const-initialised thread-local (no
// allocation, no re-entry).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        note_alloc(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        note_alloc(p, layout.size());
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(ptr, layout.size());
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        note_alloc(p, new_size);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(ptr, layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

fn note_alloc(p: *mut u8, size: usize) {
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        COUNTED.fetch_add(1, Ordering::Relaxed);
    }
    if size == RX_SIZE && !p.is_null() {
        for slot in &LIVE {
            if slot
                .compare_exchange(0, p as usize, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

fn note_free(p: *mut u8, size: usize) {
    if size == RX_SIZE {
        for slot in &LIVE {
            if slot
                .compare_exchange(p as usize, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Whether `bytes` lies inside a live receive buffer.
fn in_rx_buffer(bytes: &[u8]) -> bool {
    let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    LIVE.iter().any(|slot| {
        let base = slot.load(Ordering::Acquire);
        base != 0 && start >= base && end <= base + RX_SIZE
    })
}

struct Download {
    chunks: usize,
    uncopied: usize,
    client: EndpointIoStats,
    /// Allocations on both I/O threads per datagram they sent or received, over the part of
    /// the download after the first MiB.
    allocs_per_datagram: f64,
}

/// The server sends `total` bytes on one stream; the client (receive side) reads them with
/// `read_chunk` and checks where every chunk lives.
async fn download(backend: BackendKind, threshold: usize, budget: usize, total: usize) -> Download {
    let (server, client) = pair_with(
        backend,
        |s| s,
        |c| {
            c.recv_buffer_size(RX_SIZE)
                .zero_copy_threshold(threshold)
                .recv_memory_budget(budget)
        },
    );
    for ep in [&server, &client] {
        // Runs on the endpoint's I/O thread: from now on its allocations are counted.
        within(10, ep.spawn(async { COUNTING.with(|c| c.set(true)) }))
            .await
            .expect("spawn");
    }
    let (server_conn, conn) = connected(&server, &client).await;
    let sender = tokio::spawn(async move {
        let mut send = server_conn.open_uni().await.expect("open");
        let block = Bytes::from(vec![0x5au8; 1 << 20]);
        let mut sent = 0;
        while sent < total {
            let n = block.len().min(total - sent);
            send.write_chunk(block.slice(..n)).await.expect("write");
            sent += n;
        }
        send.finish().expect("finish");
        server_conn
    });
    let mut recv = within(10, conn.accept_uni()).await.expect("accept_uni");
    let (mut chunks, mut uncopied, mut received) = (0, 0, 0);
    let mut mark = None;
    within(60, async {
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
            assert!(chunk.bytes.iter().all(|&b| b == 0x5a), "data corrupted");
            chunks += 1;
            uncopied += usize::from(in_rx_buffer(&chunk.bytes));
            received += chunk.bytes.len();
            if mark.is_none() && received >= 1 << 20 {
                mark = Some((COUNTED.load(Ordering::Relaxed), datagrams(&server, &client)));
            }
        }
    })
    .await;
    let (allocs0, dgrams0) = mark.expect("more than 1 MiB received");
    let allocs = COUNTED.load(Ordering::Relaxed) - allocs0;
    let dgrams = datagrams(&server, &client) - dgrams0;
    assert_eq!(received, total);
    let server_conn = within(10, sender).await.expect("sender");
    conn.close(0u32.into(), b"done");
    server_conn.close(0u32.into(), b"done");
    within(10, client.wait_idle()).await;
    for ep in [&server, &client] {
        within(10, ep.spawn(async { COUNTING.with(|c| c.set(false)) }))
            .await
            .expect("spawn");
    }
    Download {
        chunks,
        uncopied,
        client: client.io_stats(),
        allocs_per_datagram: allocs as f64 / dgrams.max(1) as f64,
    }
}

fn datagrams(a: &Endpoint, b: &Endpoint) -> u64 {
    [a.io_stats(), b.io_stats()]
        .iter()
        .map(|s| s.datagrams_sent + s.datagrams_received)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_chunks_are_the_kernels_buffers_and_packets_do_not_allocate() {
    const TOTAL: usize = 32 << 20;
    for backend in backends() {
        // Zero-copy for every receive: every chunk must be a slice of a receive buffer.
        let budget = ringquic::DEFAULT_RECV_MEMORY_BUDGET;
        let all = download(backend, 0, budget, TOTAL).await;
        eprintln!(
            "{backend}: threshold 0: {} of {} chunks uncopied, {} zero-copy receives, {:.3} allocations per datagram",
            all.uncopied, all.chunks, all.client.recv_zero_copy, all.allocs_per_datagram
        );
        // Nothing may be lent (budget 0): every datagram is copied on its own, and no chunk
        // may look uncopied (a control that shows the check can fail).
        let unlent = download(backend, 0, 0, TOTAL).await;
        eprintln!(
            "{backend}: budget 0: {} of {} chunks uncopied, {:.3} allocations per datagram",
            unlent.uncopied, unlent.chunks, unlent.allocs_per_datagram
        );
        assert_eq!(unlent.uncopied, 0, "{backend}: a copied chunk looked uncopied");
        assert_eq!(unlent.client.recv_zero_copy, 0);
        // Zero-copy off: GRO batches are copied into pooled buffers. On io_uring those are
        // another pool's, smaller than `RX_SIZE`, so no chunk may lie in a receive buffer; the
        // poll backend's come from its receive pool (same size), so only the count says.
        let none = download(backend, usize::MAX, budget, TOTAL).await;
        eprintln!(
            "{backend}: zero-copy off: {} of {} chunks uncopied, {:.3} allocations per datagram",
            none.uncopied, none.chunks, none.allocs_per_datagram
        );
        if backend != BackendKind::Poll {
            assert_eq!(none.uncopied, 0, "{backend}: a copied chunk looked uncopied");
        }
        assert_eq!(none.client.recv_zero_copy, 0);
        // The default threshold: GRO batches of 16 KiB or more go uncopied.
        let default = download(backend, ringquic::DEFAULT_ZERO_COPY_THRESHOLD, budget, TOTAL).await;
        eprintln!(
            "{backend}: default: {} of {} chunks uncopied, {} zero-copy receives of {} datagrams, {:.3} allocations per datagram",
            default.uncopied,
            default.chunks,
            default.client.recv_zero_copy,
            default.client.datagrams_received,
            default.allocs_per_datagram
        );
        match backend {
            // Off Linux the poll backend may lack GRO, so the default threshold may lend
            // nothing there; its checks are the control and the allocation count.
            BackendKind::IoUring | BackendKind::Poll if cfg!(target_os = "linux") => {
                assert!(all.chunks > 0);
                assert_eq!(all.uncopied, all.chunks, "{backend}: some chunks were copied");
                assert!(all.client.recv_zero_copy > 0);
                assert!(default.client.recv_zero_copy > 0, "{backend}: default threshold");
            }
            BackendKind::Poll => {}
            _ => {
                // RIO always copies (its buffers are one registered region).
                assert_eq!(all.uncopied, 0, "{backend}");
                assert_eq!(all.client.recv_zero_copy, 0, "{backend}");
            }
        }
        // The bound holds where the kernel batches datagrams (GRO/GSO, Linux); the poll
        // backend's plain mode (Wine) allocates per datagram like any recvfrom loop.
        for d in [&all, &none, &default]
            .into_iter()
            .filter(|_| cfg!(target_os = "linux"))
        {
            assert!(
                d.allocs_per_datagram < 0.5,
                "{backend}: {:.3} allocations per datagram on the I/O threads",
                d.allocs_per_datagram
            );
        }
    }
}
