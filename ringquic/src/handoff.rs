//! What the application's threads and the I/O thread tell each other so that an application
//! thread can send a connection's packets itself (`direct.rs`) without the I/O thread losing
//! track of the connection's timers.
//!
//! The rule, in three parts:
//! * **Order.** The I/O thread records in each connection the turn it last queued sends for it
//!   (`ConnState::io_send_turn`) and publishes, before it hands a turn's sends to the kernel,
//!   that turn as submitted. An application thread sends directly only when the connection's
//!   last queued sends are submitted, so its packets never overtake the I/O thread's.
//! * **Timers.** After a direct send the connection's next timeout (loss detection, pacing) is
//!   one the I/O thread has not seen. The application thread adds the connection to
//!   [`Handoff::changed`], which the I/O thread drains every turn to drive those connections
//!   (and so learn their timers), and wakes the I/O thread only if it sleeps past that timeout.
//!   The I/O thread publishes its sleep ([`Handoff::sleeping_until`]) before it looks at the
//!   list a last time, and the application adds to the list before it reads the sleep
//!   (sequentially consistent on both sides): either the I/O thread sees the connection before
//!   it sleeps, or the application sees the sleep and wakes it if it is too long.
//! * **Flushes that do not run.** A flush is a task on the application's runtime, which may
//!   not run soon: a current-thread runtime nobody drives any more (`block_on` returned), a
//!   worker busy in a long task. Each scheduled flush is listed with its time
//!   ([`Handoff::flush_scheduled`]); the I/O thread drives every connection whose flush is
//!   [`FLUSH_GRACE`] overdue and sends for it, sleeping no longer than the oldest entry's grace,
//!   and an application thread wakes it if it sleeps past that. So a write is sent within
//!   about a millisecond whether or not its runtime runs the flush.
//! * **A short sleep while direct sends happen.** So that the common case needs no wakeup at all,
//!   the I/O thread sleeps at most [`DIRECT_TICK`] while connections keep being sent for
//!   directly: a new flight's loss-detection timer (one PTO, at least the peer's 25 ms ACK
//!   delay) is then later than the I/O thread's next look.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use quinn_proto::ConnectionHandle;

use crate::sync::lock;

/// The longest the I/O thread sleeps while connections are being sent for directly: much
/// shorter than a PTO (which includes the peer's `max_ack_delay`, 25 ms by default), so the
/// timers of direct sends need no wakeup; long enough that an idle-looking I/O thread costs
/// nothing (at most 500 turns a second while direct sends go on).
pub(crate) const DIRECT_TICK: Duration = Duration::from_millis(2);

/// How long a scheduled flush may wait for its runtime before the I/O thread sends instead.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_millis(1);

/// How long after the last direct send the I/O thread keeps its sleeps that short.
pub(crate) const DIRECT_ACTIVE: Duration = Duration::from_millis(100);

/// `sleep_until` while the I/O thread is awake: it will drain [`Handoff::changed`] before it
/// sleeps again.
const AWAKE: u64 = 0;
/// `sleep_until` for a sleep without a deadline.
const FOREVER: u64 = u64::MAX;

/// The application/I/O-thread handshake of direct sends, one per endpoint.
pub(crate) struct Handoff {
    epoch: Instant,
    /// When the I/O thread's current sleep ends, in nanoseconds after `epoch` plus one;
    /// [`AWAKE`] or [`FOREVER`].
    sleep_until: AtomicU64,
    /// The last I/O loop turn whose sends were handed to the kernel.
    submitted_turn: AtomicU64,
    /// Connections an application thread sent for directly since the I/O thread's last look
    /// (each at most once: `ConnectionInner`'s `changed` flag). Bounded by the endpoint's
    /// connections.
    changed: Mutex<Vec<ConnectionHandle>>,
    /// Flushes scheduled on application runtimes, oldest first: each connection at most once
    /// (`ConnectionInner`'s `flush_listed`), so bounded by the endpoint's connections.
    scheduled: Mutex<VecDeque<(ConnectionHandle, Instant)>>,
}

impl Default for Handoff {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            sleep_until: AtomicU64::new(AWAKE),
            submitted_turn: AtomicU64::new(0),
            changed: Mutex::new(Vec::new()),
            scheduled: Mutex::new(VecDeque::new()),
        }
    }
}

impl Handoff {
    /// `t` as a number, for an atomic; [`Handoff::instant`] turns it back.
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn stamp(&self, t: Instant) -> u64 {
        self.encode(t)
    }

    /// The time [`Handoff::stamp`] made `n` of.
    pub(crate) fn instant(&self, n: u64) -> Instant {
        self.epoch + Duration::from_nanos(n.saturating_sub(1))
    }

    fn encode(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(FOREVER - 1)
            .saturating_add(1)
            .min(FOREVER - 1)
    }

    // ---- the I/O thread's side ----

    /// The sends of turn `turn` and before go to the kernel now.
    pub(crate) fn submitted(&self, turn: u64) {
        self.submitted_turn.store(turn, Ordering::Release);
    }

    /// The I/O thread is about to sleep until `deadline` (`None`: no deadline). Returns whether
    /// connections were sent for directly meanwhile, in which case it must not sleep past
    /// their timers: it turns without sleeping and drains [`Handoff::take_changed`] first.
    pub(crate) fn going_to_sleep(&self, deadline: Option<Instant>) -> bool {
        let until = deadline.map_or(FOREVER, |d| self.encode(d));
        self.sleep_until.store(until, Ordering::SeqCst);
        !lock(&self.changed).is_empty()
            || self
                .flush_due()
                .is_some_and(|due| deadline.is_none_or(|d| due < d))
    }

    /// When the oldest scheduled flush is overdue, if any is scheduled.
    pub(crate) fn flush_due(&self) -> Option<Instant> {
        lock(&self.scheduled).front().map(|&(_, t)| t + FLUSH_GRACE)
    }

    /// `ch`'s flush ran: take it off the list, so the I/O thread does not wake for it.
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn flush_ran(&self, ch: ConnectionHandle) {
        lock(&self.scheduled).retain(|&(c, _)| c != ch);
    }

    /// The I/O thread found `ch`'s flush scheduled at `since` but not overdue yet: list it again.
    pub(crate) fn relist(&self, ch: ConnectionHandle, since: Instant) {
        lock(&self.scheduled).push_back((ch, since));
    }

    /// The connections whose list entry is overdue at `now`, into `out`.
    pub(crate) fn take_overdue(&self, now: Instant, out: &mut Vec<ConnectionHandle>) {
        let mut q = lock(&self.scheduled);
        while let Some(&(ch, t)) = q.front() {
            if now.saturating_duration_since(t) < FLUSH_GRACE {
                break;
            }
            out.push(ch);
            q.pop_front();
        }
    }

    /// The I/O thread is awake again.
    pub(crate) fn woke(&self) {
        self.sleep_until.store(AWAKE, Ordering::SeqCst);
    }

    /// The connections sent for directly since the last call, into `out`.
    pub(crate) fn take_changed(&self, out: &mut Vec<ConnectionHandle>) {
        std::mem::swap(&mut *lock(&self.changed), out);
    }

    /// Whether the last submitted turn is at least `turn`.
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn is_submitted(&self, turn: u64) -> bool {
        self.submitted_turn.load(Ordering::Acquire) >= turn
    }

    // ---- the application's side ----

    /// A flush of `ch` was scheduled at `now`; `list` says whether `ch` is not listed yet.
    /// Returns whether the I/O thread must be woken: it sleeps past the flush's grace. (The
    /// I/O thread lists a connection again itself, [`Handoff::relist`].)
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn flush_scheduled(&self, ch: ConnectionHandle, list: bool, now: Instant) -> bool {
        if list {
            lock(&self.scheduled).push_back((ch, now));
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let until = self.sleep_until.load(Ordering::SeqCst);
        until != AWAKE && self.encode(now + FLUSH_GRACE) < until
    }

    /// An application thread sent for `ch` directly and its next timeout is `timeout`; `add`
    /// says whether `ch` still has to be listed (it is not listed yet). Returns whether the I/O
    /// thread must be woken: it sleeps past `timeout`.
    #[cfg_attr(not(all(target_os = "linux", feature = "tokio")), allow(dead_code))]
    pub(crate) fn sent_directly(&self, ch: ConnectionHandle, add: bool, timeout: Option<Instant>) -> bool {
        if add {
            lock(&self.changed).push(ch);
        }
        // Sequentially consistent with `going_to_sleep`: see the module docs.
        std::sync::atomic::fence(Ordering::SeqCst);
        let until = self.sleep_until.load(Ordering::SeqCst);
        match timeout {
            _ if until == AWAKE => false,
            Some(t) => self.encode(t) < until,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_only_a_sleep_past_the_timeout() {
        let h = Handoff::default();
        let ch = ConnectionHandle(3);
        let now = Instant::now();
        // Awake: it will look at the list before sleeping.
        assert!(!h.sent_directly(ch, true, Some(now)));
        // Asleep for 2 ms: a timeout 25 ms out needs no wakeup, one in 1 ms does.
        assert!(h.going_to_sleep(Some(now + DIRECT_TICK)));
        assert!(!h.sent_directly(ch, false, Some(now + Duration::from_millis(25))));
        assert!(h.sent_directly(ch, false, Some(now + Duration::from_millis(1))));
        // Asleep without a deadline: any timeout needs one; no timeout needs none.
        h.going_to_sleep(None);
        assert!(h.sent_directly(ch, false, Some(now + Duration::from_secs(3600))));
        assert!(!h.sent_directly(ch, false, None));
        let mut out = Vec::new();
        h.take_changed(&mut out);
        assert_eq!(out, vec![ch]);
        assert!(!h.going_to_sleep(None), "the list is empty after a take");
        h.woke();
        assert!(!h.sent_directly(ch, true, Some(now)));
    }

    #[test]
    fn overdue_flushes_are_taken_in_order_and_bound_the_sleep() {
        let h = Handoff::default();
        let now = Instant::now();
        let (a, b) = (ConnectionHandle(1), ConnectionHandle(2));
        // Awake: no wakeup needed.
        assert!(!h.flush_scheduled(a, true, now));
        // Asleep for an hour: the second one needs the I/O thread woken.
        h.going_to_sleep(Some(now + Duration::from_secs(3600)));
        assert!(h.flush_scheduled(b, true, now + FLUSH_GRACE / 2));
        assert_eq!(h.instant(h.stamp(now)), now);
        assert_eq!(h.flush_due(), Some(now + FLUSH_GRACE));
        assert!(
            h.going_to_sleep(Some(now + Duration::from_secs(1))),
            "not past the first's grace"
        );
        assert!(!h.going_to_sleep(Some(now)));
        let mut out = Vec::new();
        h.take_overdue(now, &mut out);
        assert!(out.is_empty());
        h.take_overdue(now + FLUSH_GRACE, &mut out);
        assert_eq!(out, vec![a]);
        h.take_overdue(now + FLUSH_GRACE * 2, &mut out);
        assert_eq!(out, vec![a, b]);
        assert_eq!(h.flush_due(), None);
    }

    #[test]
    fn submitted_turns() {
        let h = Handoff::default();
        assert!(h.is_submitted(0));
        assert!(!h.is_submitted(1));
        h.submitted(5);
        assert!(h.is_submitted(5) && !h.is_submitted(6));
    }
}
