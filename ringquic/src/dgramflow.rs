//! Back-pressure for unreliable datagrams: when the application reads a connection's
//! datagrams slower than they arrive, the I/O thread stops feeding that connection's packets
//! to quinn-proto for a moment instead of letting quinn-proto drop the oldest datagrams.
//!
//! Why: quinn-proto acknowledges a packet as soon as it is processed, so datagrams it later
//! drops from a full receive buffer are invisible to the sender's congestion controller, which
//! keeps sending at a rate the receiving application cannot read (the bench's datagram loss).
//! In stock quinn the application and the endpoint share a thread: while the application
//! reads, packets wait in the socket, and what overflows there is a packet loss the sender's
//! congestion controller sees. Here the I/O thread runs on its own, so it does the waiting
//! itself: while the connection's backlog of unread datagrams is at least [`HOLD_AT`] and its
//! application is reading (a read within [`READER_ACTIVE`]), the connection's packets are
//! held, unprocessed and unacknowledged, up to [`HOLD_MAX`] of them and for at most
//! [`HOLD_MAX_AGE`]; more are dropped (`EndpointIoStats::datagram_backpressure_drops`), which
//! the sender's loss recovery and congestion control see as loss. The held packets are fed in
//! once the backlog is down to [`RESUME_AT`], the reader stops, or the age limit passes, so a
//! connection is never stalled for longer than that, and one whose application never reads
//! datagrams is never held at all.
//!
//! The backlog is counted without quinn-proto's help: DATAGRAM frames it received
//! (`ConnectionStats::frame_rx.datagram`) less those the application took; a read that finds
//! the buffer empty resets the count (quinn-proto may have dropped some the count still has).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Unread datagrams from which packets are held.
pub(crate) const HOLD_AT: u64 = 512;
/// Unread datagrams at which held packets are fed in again.
pub(crate) const RESUME_AT: u64 = 256;
/// Packets held per connection at most; more are dropped. Each is one received UDP datagram,
/// so this bounds the memory at `HOLD_MAX` × the largest UDP payload (about 380 KiB).
pub(crate) const HOLD_MAX: usize = 256;
/// How long a packet may be held at most.
pub(crate) const HOLD_MAX_AGE: Duration = Duration::from_millis(10);
/// A reader that read within this long is reading.
pub(crate) const READER_ACTIVE: Duration = Duration::from_millis(50);

/// One connection's datagram back-pressure state (inside its `ConnState`, behind its lock).
/// `E` is the held packet (quinn-proto's `ConnectionEvent`).
#[derive(Debug)]
pub(crate) struct DatagramFlow<E> {
    /// DATAGRAM frames counted as taken by the application.
    taken: u64,
    /// When the application last read (or tried to).
    reader_seen: Option<Instant>,
    held: VecDeque<E>,
    /// When the oldest held packet arrived.
    held_since: Option<Instant>,
}

impl<E> Default for DatagramFlow<E> {
    fn default() -> Self {
        Self {
            taken: 0,
            reader_seen: None,
            held: VecDeque::new(),
            held_since: None,
        }
    }
}

/// What to do with a packet that arrived for the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit<E> {
    /// Feed it to quinn-proto, after the held packets ([`DatagramFlow::take_held`]).
    Process(E),
    /// Held.
    Held,
    /// Dropped: the hold is full.
    Dropped,
}

impl<E> DatagramFlow<E> {
    // ---- the application's side ----

    /// The application took a datagram; `received` gives the count of DATAGRAM frames
    /// (asked only while packets are held). Returns whether the backlog is down to
    /// [`RESUME_AT`] with packets held: the I/O thread should feed them in now.
    pub(crate) fn took(&mut self, now: Instant, received: impl FnOnce() -> u64) -> bool {
        self.taken += 1;
        self.reader_seen = Some(now);
        !self.held.is_empty() && self.backlog(received()) <= RESUME_AT
    }

    /// Whether the application reads datagrams now (so packets may be held).
    pub(crate) fn reading(&self, now: Instant) -> bool {
        self.reader_seen
            .is_some_and(|t| now.saturating_duration_since(t) < READER_ACTIVE)
    }

    /// The application found no datagram: the backlog is zero, whatever the count says.
    /// Returns whether held packets should be fed in now.
    pub(crate) fn found_none(&mut self, received: u64, now: Instant) -> bool {
        self.taken = received;
        self.reader_seen = Some(now);
        !self.held.is_empty()
    }

    // ---- the I/O thread's side ----

    fn backlog(&self, received: u64) -> u64 {
        received.saturating_sub(self.taken)
    }

    fn must_hold(&self, received: u64, now: Instant) -> bool {
        let reading = self.reading(now);
        let young = self
            .held_since
            .is_none_or(|t| now.saturating_duration_since(t) < HOLD_MAX_AGE);
        let backlog = self.backlog(received);
        let threshold = if self.held.is_empty() { HOLD_AT } else { RESUME_AT };
        reading && young && backlog > threshold
    }

    /// A packet arrived; `received` is the connection's count of DATAGRAM frames so far.
    pub(crate) fn admit(&mut self, ev: E, received: u64, now: Instant) -> Admit<E> {
        if self.must_hold(received, now) {
            if self.held.len() >= HOLD_MAX {
                return Admit::Dropped;
            }
            self.held_since.get_or_insert(now);
            self.held.push_back(ev);
            return Admit::Held;
        }
        self.held_since = None;
        Admit::Process(ev)
    }

    /// The held packets, oldest first, once [`DatagramFlow::admit`] said `Process` (they go
    /// in before the packet it returned). No allocation: the queue's own drain.
    pub(crate) fn take_held(&mut self) -> std::collections::vec_deque::Drain<'_, E> {
        self.held_since = None;
        self.held.drain(..)
    }

    /// Whether the held packets should be fed in now ([`DatagramFlow::take_held`]): the
    /// backlog went down, the reader stopped, or the oldest is [`HOLD_MAX_AGE`] old.
    pub(crate) fn due(&mut self, received: u64, now: Instant) -> bool {
        !self.held.is_empty() && !self.must_hold(received, now)
    }

    /// When the oldest held packet must be fed in at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD_MAX_AGE)
    }

    /// Whether packets are held.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_while_a_reader_is_behind() {
        let now = Instant::now();
        let mut f = DatagramFlow::<u32>::default();
        // Nobody reads datagrams: never held, whatever the count.
        assert_eq!(f.admit(1, 10_000, now), Admit::Process(1));
        // A reader far behind: held.
        f.found_none(0, now);
        assert_eq!(f.admit(2, HOLD_AT + 1, now), Admit::Held);
        assert_eq!(f.admit(3, HOLD_AT + 2, now), Admit::Held);
        assert_eq!(f.deadline(), Some(now + HOLD_MAX_AGE));
        // Not due while the backlog is above RESUME_AT...
        assert!(!f.due(HOLD_AT + 2, now));
        // ... due once the reader has caught up, in order.
        f.taken = HOLD_AT + 2 - RESUME_AT;
        assert!(f.due(HOLD_AT + 2, now));
        assert_eq!(f.take_held().collect::<Vec<_>>(), vec![2, 3]);
        assert!(!f.holding() && f.deadline().is_none());
    }

    #[test]
    fn the_hold_is_bounded_in_count_and_age() {
        let now = Instant::now();
        let mut f = DatagramFlow::<usize>::default();
        f.found_none(0, now);
        for i in 0..HOLD_MAX {
            assert_eq!(f.admit(i, HOLD_AT + 1, now), Admit::Held);
        }
        assert_eq!(f.admit(HOLD_MAX, HOLD_AT + 1, now), Admit::Dropped);
        // Past the age limit everything is fed in, the new packet last.
        let later = now + HOLD_MAX_AGE;
        f.reader_seen = Some(later);
        assert_eq!(f.admit(7, HOLD_AT + 1, later), Admit::Process(7));
        let held: Vec<_> = f.take_held().collect();
        assert_eq!((held.len(), held[0]), (HOLD_MAX, 0));
    }

    #[test]
    fn a_reader_that_stops_releases_the_hold() {
        let now = Instant::now();
        let mut f = DatagramFlow::<u8>::default();
        f.found_none(0, now);
        assert_eq!(f.admit(1, HOLD_AT + 1, now), Admit::Held);
        let later = now + READER_ACTIVE;
        assert!(f.due(HOLD_AT + 1, later));
        assert_eq!(f.take_held().collect::<Vec<_>>(), vec![1]);
        // Reads bring the backlog down: `took` says when to feed the held ones in.
        f.found_none(0, later);
        assert_eq!(f.admit(2, HOLD_AT + 1, later), Admit::Held);
        assert!(!f.took(later, || HOLD_AT + 1));
        f.taken = HOLD_AT + 1 - RESUME_AT - 1;
        assert!(f.took(later, || HOLD_AT + 1));
    }
}
