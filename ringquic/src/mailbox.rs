//! The application → I/O thread queue plus its wakeup (seed point 4).
//!
//! The I/O thread is not an async task, so the application cannot reach it through an async
//! channel. Instead commands go into a plain mutex-protected queue and the I/O thread is woken
//! through its backend's wakeup primitive (an eventfd the ring watches, or a `mio::Waker`).
//!
//! Wakeups are coalesced: [`Mailbox::push`] writes the eventfd only when the `notified` flag was
//! clear, and the I/O thread clears that flag just before it drains the queue. However many
//! commands the application pushes between two drains, they cost one wakeup system call.
//! (Written by hand: no crate offers "queue + arbitrary wakeup primitive + coalescing flag".)

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

// The handshake's primitives: std's, or loom's under `--cfg ringquic_loom` (see crate::sync).
use crate::io::Wakeup;
use crate::sync::{
    lock,
    thread::{self, ThreadId},
    AtomicBool, Mutex,
};

/// The queue of `T`s (the crate's `shared::Command`) and its wakeup. Generic so this module knows
/// nothing of what is queued: the commands carry connections and replies of the layer above.
pub(crate) struct Mailbox<T> {
    queue: Mutex<MailboxState<T>>,
    notified: AtomicBool,
    waker: OnceLock<Arc<dyn Wakeup>>,
    /// The I/O thread: a notify from it needs no system call, its loop checks the flag before
    /// sleeping.
    io_thread: OnceLock<ThreadId>,
    /// Mirrors `MailboxState::closed` for lock-free checks.
    closed: AtomicBool,
    wakeups: AtomicU64,
}

struct MailboxState<T> {
    commands: VecDeque<T>,
    /// Set when the I/O thread has exited; later pushes are refused.
    closed: bool,
}

impl<T> Mailbox<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: Mutex::new(MailboxState {
                commands: VecDeque::new(),
                closed: false,
            }),
            notified: AtomicBool::new(false),
            waker: OnceLock::new(),
            io_thread: OnceLock::new(),
            closed: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        }
    }

    /// Install the backend's wakeup. Called once by the I/O thread before it serves commands.
    pub(crate) fn set_waker(&self, waker: Arc<dyn Wakeup>) {
        let _ = self.waker.set(waker);
        let _ = self.io_thread.set(thread::current().id());
    }

    /// Wake the loop with `waker`, from every thread: for the loop on a runtime, which no
    /// thread owns (a push from within its own turn wakes it once more, harmlessly).
    #[cfg_attr(not(all(unix, feature = "tokio")), allow(dead_code))]
    pub(crate) fn set_waker_any_thread(&self, waker: Arc<dyn Wakeup>) {
        let _ = self.waker.set(waker);
    }

    /// Queue a command and wake the I/O thread if no wakeup is pending yet.
    ///
    /// Gives the command back if the I/O thread has exited. (A large `Err` is fine here: it is
    /// the rare path, and boxing every command would cost an allocation on the common one.)
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, cmd: T) -> Result<(), T> {
        {
            let mut q = lock(&self.queue);
            if q.closed {
                return Err(cmd);
            }
            q.commands.push_back(cmd);
        }
        self.notify();
        Ok(())
    }

    /// Wake the I/O thread unless a wakeup is already on its way.
    pub(crate) fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if self.io_thread.get() == Some(&thread::current().id()) {
                // Called on the I/O thread itself (a task spawned there, or a waker it ran):
                // the loop is awake and checks `notified` before it sleeps.
                return;
            }
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = self.waker.get() {
                w.wake();
            }
        }
    }

    /// Take every queued command. Clears the `notified` flag first, so a push that races with
    /// the drain either lands in this batch or sends a fresh wakeup.
    pub(crate) fn drain(&self, out: &mut VecDeque<T>) {
        // A swap rather than a plain store: the same under C11 (an RMW or a store, every
        // later swap in `notify` reads this `false` or a later value), but loom 0.7.3 models
        // a plain store racing RMWs wrongly (tokio-rs/loom#254) and would report a false lost
        // wakeup; with the swap the model checks every case. Once per turn, so the locked
        // instruction costs nothing measurable.
        self.notified.swap(false, Ordering::AcqRel);
        let mut q = lock(&self.queue);
        std::mem::swap(&mut q.commands, out);
    }

    /// Whether a wakeup is pending (commands may be waiting).
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Refuse further commands and return those still queued (a queued `Connect`/`Accept`
    /// answers its `Connecting` with `LocallyClosed` when dropped).
    pub(crate) fn close(&self) -> VecDeque<T> {
        let mut q = lock(&self.queue);
        q.closed = true;
        self.closed.store(true, Ordering::Release);
        std::mem::take(&mut q.commands)
    }

    /// Whether the I/O thread has exited (no more commands or tasks are taken).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many wakeup system calls the application side has made.
    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

// Not under the loom cfg: a `Mailbox` built outside `loom::model` panics there.
#[cfg(all(test, not(ringquic_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWake(AtomicUsize);
    impl Wakeup for CountingWake {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn many_pushes_cost_one_wakeup() {
        let mb = Arc::new(Mailbox::new());
        let w = Arc::new(CountingWake(AtomicUsize::new(0)));
        // The waker is installed by the I/O thread; pushes come from another one.
        let (mb2, w2) = (mb.clone(), w.clone());
        std::thread::spawn(move || mb2.set_waker(w2)).join().unwrap();
        for i in 0..100 {
            assert!(mb.push(i).is_ok());
        }
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        let mut out = VecDeque::new();
        mb.drain(&mut out);
        assert_eq!(out.len(), 100);
        // After a drain the next push wakes again.
        assert!(mb.push(0).is_ok());
        assert_eq!(w.0.load(Ordering::SeqCst), 2);
        assert_eq!(mb.wakeups(), 2);
    }

    #[test]
    fn notify_from_the_io_thread_needs_no_wakeup() {
        let mb = Mailbox::new();
        let w = Arc::new(CountingWake(AtomicUsize::new(0)));
        mb.set_waker(w.clone());
        assert!(mb.push(0).is_ok());
        assert_eq!(
            w.0.load(Ordering::SeqCst),
            0,
            "no system call from the I/O thread"
        );
        assert!(mb.is_notified(), "but the loop sees there is work");
    }

    #[test]
    fn closed_mailbox_gives_commands_back() {
        let mb = Mailbox::new();
        assert!(mb.push(7).is_ok());
        let left = mb.close();
        assert_eq!(left.len(), 1);
        assert!(matches!(mb.push(1), Err(1)));
    }
}

/// A `loom` model of the handshake between [`Mailbox::push`]/[`Mailbox::notify`] on application
/// threads and the I/O thread's loop (`Driver::run`: drain, process, check `is_notified`, sleep
/// in the backend). The property: no wakeup is lost, i.e. the I/O thread never goes to sleep with
/// a command queued and no wakeup latched for it. A lost wakeup leaves the modelled I/O thread
/// blocked on its "eventfd" with every producer finished, which loom reports as a deadlock.
///
/// Run from the repository's root (test builds only; `ringquic/loom` is a small crate that
/// includes this file and `sync.rs`, so the cfg rebuilds loom's dependencies, not ringquic's):
/// `RUSTFLAGS="--cfg ringquic_loom" cargo test --manifest-path ringquic/loom/Cargo.toml --target-dir target/loom`
///
/// The `broken_*` tests run the same model against deliberately wrong orders (the flag cleared
/// after taking the queue; the flag swapped before queueing; the loop sleeping without checking
/// the flag) and expect loom to find the lost wakeup, so the model's power is checked every run.
/// See docs/RELIABILITY.md, "Loom model of the mailbox".
#[cfg(all(test, ringquic_loom))]
mod loom_model {
    use super::*;
    use loom::sync::{Condvar, Mutex as LoomMutex};

    /// The backend's wakeup, latching like an eventfd: a wake before the sleep is remembered.
    struct EventFd {
        pending: LoomMutex<usize>,
        cv: Condvar,
    }

    impl Wakeup for EventFd {
        fn wake(&self) {
            *lock(&self.pending) += 1;
            self.cv.notify_one();
        }
    }

    impl EventFd {
        /// The backend's sleep: block until a wakeup is pending, then consume it (an eventfd
        /// read takes the whole count).
        fn sleep(&self) {
            let mut n = lock(&self.pending);
            while *n == 0 {
                n = self.cv.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n = 0;
        }

        /// A turn that does not sleep (the loop is busy): still consumes a pending wakeup.
        fn poll(&self) {
            *lock(&self.pending) = 0;
        }
    }

    /// Each side of the protocol, so the model can also be run against broken versions.
    #[derive(Clone, Copy)]
    struct Protocol {
        push: fn(&Mailbox<usize>, usize),
        drain: fn(&Mailbox<usize>, &mut VecDeque<usize>),
        /// Whether the loop checks `is_notified()` before it sleeps.
        check_before_sleep: bool,
    }

    /// The real one.
    const MAILBOX: Protocol = Protocol {
        push: |mb, cmd| assert!(mb.push(cmd).is_ok()),
        drain: Mailbox::drain,
        check_before_sleep: true,
    };

    /// `producers` application threads push one command each and return; the model's main
    /// thread is the I/O thread. With `io_thread_pushes`, the I/O thread also pushes one command
    /// itself while processing its first batch (a waker or task run on it): the no-system-call
    /// path of `notify`, which relies on the loop checking the flag before it sleeps, and which
    /// leaves the flag set so that concurrent producers skip their wakeup too.
    ///
    /// `preemptions`: loom's bound on preemptive context switches (`None`: every interleaving);
    /// `LOOM_MAX_PREEMPTIONS` overrides it.
    fn check(producers: usize, io_thread_pushes: bool, preemptions: Option<usize>, p: Protocol) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = preemptions;
        }
        builder.check(move || {
            let mb = Arc::new(Mailbox::new());
            let fd = Arc::new(EventFd {
                pending: LoomMutex::new(0),
                cv: Condvar::new(),
            });
            // As in `Driver::run`: the I/O thread installs its wakeup before serving commands.
            mb.set_waker(fd.clone());
            let handles: Vec<_> = (0..producers)
                .map(|i| {
                    let mb = mb.clone();
                    loom::thread::spawn(move || (p.push)(&mb, i))
                })
                .collect();

            let expected = producers + usize::from(io_thread_pushes);
            let (mut got, mut out, mut pushed_self) = (0, VecDeque::new(), false);
            // Each turn that does not sleep needs a flag set after the previous drain and each
            // sleep a wakeup, both at most one per push: this many turns are always enough.
            for _turn in 0..=2 * expected + 1 {
                (p.drain)(&mb, &mut out);
                got += out.drain(..).count();
                if io_thread_pushes && !pushed_self {
                    pushed_self = true;
                    (p.push)(&mb, 99);
                }
                if got == expected {
                    break;
                }
                if p.check_before_sleep && mb.is_notified() {
                    fd.poll();
                } else {
                    // Blocks forever (loom: deadlock) if a command's wakeup was lost.
                    fd.sleep();
                }
            }
            assert_eq!(got, expected, "commands left in the mailbox");
            for h in handles {
                h.join().unwrap();
            }
            // The I/O thread's own push made no system call.
            assert!(mb.wakeups() <= producers as u64);
        });
    }

    // One producer: every interleaving (well under a second). Two producers: every interleaving
    // takes minutes (209 s for `two_producers`), so those are bounded to 4 preemptions.

    #[test]
    fn one_producer() {
        check(1, false, None, MAILBOX);
    }

    #[test]
    fn one_producer_and_io_thread_push() {
        check(1, true, None, MAILBOX);
    }

    #[test]
    fn two_producers() {
        check(2, false, Some(4), MAILBOX);
    }

    /// Two producers and the I/O thread's own push. (Under loom 0.7.3 this needs `drain` to
    /// clear the flag with a swap: with a plain store loom reports a deadlock that C11 rules
    /// out, its bug tokio-rs/loom#254. The trace: the I/O thread's push sets the flag, producer
    /// A swaps it (reads true), the I/O thread stores false and takes A's command, producer B,
    /// after that drain, swaps and loom lets it read A's older `true`.)
    #[test]
    fn two_producers_and_io_thread_push() {
        check(2, true, Some(4), MAILBOX);
    }

    /// Clearing the flag after taking the queue (and releasing the lock): producer A's wakeup
    /// is consumed, the I/O thread takes A's command, B pushes and sees A's flag still set (no
    /// wakeup), then the flag is cleared and the loop sleeps with B's command queued. Needs two
    /// producers (or one and the I/O thread's push). Clearing it after the take but still under
    /// the lock would be safe (no push fits in between), and loom agrees. Editing `drain` itself
    /// that way (`drop(q)` before the store) makes `two_producers` and
    /// `one_producer_and_io_thread_push` fail with the same deadlock.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn broken_drain_clears_flag_after_taking_the_queue() {
        check(
            2,
            false,
            Some(4),
            Protocol {
                drain: |mb, out| {
                    std::mem::swap(&mut lock(&mb.queue).commands, out);
                    mb.notified.store(false, Ordering::Release);
                },
                ..MAILBOX
            },
        );
    }

    /// Notifying before queueing: the wakeup can be consumed by a drain that finds nothing,
    /// and the command queued afterwards has no wakeup left.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn broken_push_notifies_before_queueing() {
        check(
            1,
            false,
            None,
            Protocol {
                push: |mb, cmd| {
                    mb.notify();
                    lock(&mb.queue).commands.push_back(cmd);
                },
                ..MAILBOX
            },
        );
    }

    /// A loop that sleeps without checking the flag loses the I/O thread's own (system-call
    /// free) notify.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn broken_loop_sleeps_without_checking_the_flag() {
        check(
            0,
            true,
            None,
            Protocol {
                check_before_sleep: false,
                ..MAILBOX
            },
        );
    }
}
