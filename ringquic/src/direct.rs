//! Sends from the application's threads: after a stream write (or a read that frees
//! flow-control credit), the connection's packets are built and sent by the application's
//! own thread, once the writing task yields, instead of by the I/O thread after a wakeup.
//!
//! Why: with the application on its own runtime, every small message otherwise crosses two
//! threads before it leaves (application → I/O thread → socket), and on a machine with fewer
//! cores than busy threads each crossing is a context switch (docs/PERFORMANCE.md). When a
//! task writes, [`transmit_soon`] schedules one flush task on the same tokio runtime (at most
//! one per connection at a time); tokio runs it after the ready tasks (it yields once first),
//! so what they all wrote, a write and the `finish` after it included, leaves together, as it
//! does from the I/O thread. The flush asks quinn-proto for one batch of at most
//! [`MAX_DIRECT_SEGMENTS`] datagrams under the connection's lock and sends it on the
//! endpoint's socket (`io/direct.rs`); anything more, and every case it does not handle, goes
//! to the I/O thread as before ([`ConnectionInner::wake`]), and so does a flush its runtime
//! does not run within `handoff::FLUSH_GRACE`.
//!
//! What keeps the I/O thread's picture right is in `handoff.rs`: direct sends never overtake
//! the I/O thread's queued ones, and the I/O thread learns each connection's new timer before
//! it is due, woken only when it would otherwise sleep past it.

#[cfg(all(target_os = "linux", feature = "tokio"))]
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::shared::ConnectionInner;

/// Datagrams in one direct batch at most: a round of requests or responses fits; a fuller
/// batch means a transfer, which the I/O thread's batched io_uring sends carry better (it
/// takes the rest, measured in docs/PERFORMANCE.md).
#[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
pub(crate) const MAX_DIRECT_SEGMENTS: usize = 8;

/// Stream writes larger than this go to the I/O thread at once: bulk data, not a message.
pub(crate) const DIRECT_MAX_WRITE: usize = 16 * 1024;

/// `conn` has something to send: schedule a direct send on the current tokio runtime if the
/// endpoint allows it, or wake the I/O thread.
pub(crate) fn transmit_soon(conn: &Arc<ConnectionInner>) {
    #[cfg(all(target_os = "linux", feature = "tokio"))]
    if schedule(conn) {
        return;
    }
    conn.wake();
}

/// Schedule a flush of `conn` on this thread's tokio runtime. `false`: not possible here (no
/// runtime, the I/O thread itself, the endpoint offers no sender).
#[cfg(all(target_os = "linux", feature = "tokio"))]
fn schedule(conn: &Arc<ConnectionInner>) -> bool {
    let shared = conn.shared();
    if shared.on_io_thread() || shared.direct_sender().is_none() {
        return false;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    if conn.flush_scheduled.swap(true, Ordering::AcqRel) {
        // One is scheduled and has not started: it will send this too.
        return true;
    }
    // Listed, so the I/O thread sends if the runtime does not run the flush soon (handoff.rs).
    let now = std::time::Instant::now();
    conn.flush_since
        .store(shared.handoff.stamp(now), Ordering::Release);
    let list = !conn.flush_listed.swap(true, Ordering::AcqRel);
    if shared.handoff.flush_scheduled(conn.handle, list, now) {
        shared.mailbox.notify();
    }
    let flush = Flush(Some(conn.clone()));
    rt.spawn(async move {
        // Let every task that is ready run first, so that what they all write to this
        // connection leaves together (tokio defers a yielded task until the ready ones ran).
        tokio::task::yield_now().await;
        flush.run();
    });
    true
}

/// The scheduled flush of one connection. Dropped without running (its runtime shut down), it
/// wakes the I/O thread, so nothing written is left unsent.
#[cfg(all(target_os = "linux", feature = "tokio"))]
struct Flush(Option<Arc<ConnectionInner>>);

#[cfg(all(target_os = "linux", feature = "tokio"))]
impl Flush {
    fn run(mut self) {
        if let Some(conn) = self.0.take() {
            flush(&conn);
        }
    }
}

#[cfg(all(target_os = "linux", feature = "tokio"))]
impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.flush_scheduled.store(false, Ordering::Release);
            conn.wake();
        }
    }
}

#[cfg(all(target_os = "linux", feature = "tokio"))]
thread_local! {
    /// The buffer quinn-proto writes a batch into, one per application thread.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Send one batch of what `conn` has to send from this thread (at most
/// [`MAX_DIRECT_SEGMENTS`] datagrams); hand the rest, and every case this does not cover, to
/// the I/O thread.
#[cfg(all(target_os = "linux", feature = "tokio"))]
fn flush(conn: &Arc<ConnectionInner>) {
    use crate::io::direct::Sent;

    // Cleared first: a write after this point schedules another flush.
    conn.flush_scheduled.store(false, Ordering::Release);
    let shared = conn.shared();
    if conn.flush_listed.swap(false, Ordering::AcqRel) {
        shared.handoff.flush_ran(conn.handle);
    }
    let mut timeout = None;
    let mut more = false;
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut st = conn.lock();
        // Handshakes, closes and connections whose queued sends are not submitted yet stay
        // with the I/O thread.
        let ours = st.error().is_none()
            && !st.inner.is_handshaking()
            && !st.inner.is_closed()
            && shared.handoff.is_submitted(st.io_send_turn);
        // The sender is taken under the connection's lock: a rebind replaces it before it
        // tells the connections, so a packet built after that never leaves from the old socket.
        let sender = shared.direct_sender().filter(|_| ours);
        let Some(sender) = sender else {
            more = true;
            return;
        };
        buf.clear();
        let segments = sender.max_segments().min(MAX_DIRECT_SEGMENTS);
        let t = st
            .inner
            .poll_transmit(std::time::Instant::now(), segments, &mut buf);
        timeout = st.inner.poll_timeout();
        drop(st);
        let Some(t) = t else {
            return;
        };
        // A full batch: quinn-proto probably has more (a transfer), which the I/O thread sends.
        let datagrams = t.segment_size.map_or(1, |s| t.size.div_ceil(s.max(1)));
        more = datagrams >= segments;
        if sender.send(&buf, &t) == Sent::Lost && !sender.usable() {
            // The path is off now: the I/O thread takes over.
            more = true;
        }
    });
    if more {
        conn.wake();
    }
    // Even with nothing sent, quinn-proto may have armed a timer (pacing) the I/O thread must
    // know of.
    let add = !conn.changed.swap(true, Ordering::AcqRel);
    if shared.handoff.sent_directly(conn.handle, add, timeout) {
        shared.mailbox.notify();
    }
}
