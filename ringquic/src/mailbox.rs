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
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread::ThreadId,
};

use bytes::Bytes;
use quinn_proto::{ConnectionHandle, ServerConfig, VarInt};

use crate::io::Wakeup;

/// What the application asks of the I/O thread.
pub(crate) enum Command {
    /// A connection's application-side state changed (data written, stream opened, …): drive it.
    Drive(ConnectionHandle),
    /// Refuse an incoming connection (the peer gets CONNECTION_REFUSED).
    Refuse(quinn_proto::Incoming),
    /// Answer an incoming connection with a Retry packet.
    Retry(quinn_proto::Incoming),
    /// Drop an incoming connection silently.
    Ignore(quinn_proto::Incoming),
    /// Replace the server configuration (`None`: stop accepting).
    SetServerConfig(Option<Arc<ServerConfig>>),
    /// Close every connection with this code and reason.
    Close { code: VarInt, reason: Bytes },
    /// Every handle is gone: close what is left, cancel in-flight I/O and exit.
    Shutdown,
    /// Panic on the I/O thread, to test that a panic fails futures instead of hanging them.
    #[cfg(test)]
    Panic,
}

/// The queue and its wakeup.
pub(crate) struct Mailbox {
    queue: Mutex<MailboxState>,
    notified: AtomicBool,
    waker: OnceLock<Arc<dyn Wakeup>>,
    /// The I/O thread: a notify from it needs no system call, its loop checks the flag before
    /// sleeping.
    io_thread: OnceLock<ThreadId>,
    /// Mirrors `MailboxState::closed` for lock-free checks.
    closed: AtomicBool,
    wakeups: AtomicU64,
}

struct MailboxState {
    commands: VecDeque<Command>,
    /// Set when the I/O thread has exited; later pushes are refused.
    closed: bool,
}

impl Mailbox {
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
        let _ = self.io_thread.set(std::thread::current().id());
    }

    /// Queue a command and wake the I/O thread if no wakeup is pending yet.
    ///
    /// Gives the command back if the I/O thread has exited. (A large `Err` is fine here: it is
    /// the rare path, and boxing every command would cost an allocation on the common one.)
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, cmd: Command) -> Result<(), Command> {
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
            if self.io_thread.get() == Some(&std::thread::current().id()) {
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
    pub(crate) fn drain(&self, out: &mut VecDeque<Command>) {
        self.notified.store(false, Ordering::Release);
        let mut q = lock(&self.queue);
        std::mem::swap(&mut q.commands, out);
    }

    /// Whether a wakeup is pending (commands may be waiting).
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Refuse further commands and return those still queued, so their reply channels close.
    pub(crate) fn close(&self) -> VecDeque<Command> {
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

/// Lock a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything that could panic, and a panic on the I/O thread is reported to
/// the application through connection errors, not through poisoned locks.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
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
            assert!(mb.push(Command::Drive(ConnectionHandle(i))).is_ok());
        }
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        let mut out = VecDeque::new();
        mb.drain(&mut out);
        assert_eq!(out.len(), 100);
        // After a drain the next push wakes again.
        assert!(mb.push(Command::Drive(ConnectionHandle(0))).is_ok());
        assert_eq!(w.0.load(Ordering::SeqCst), 2);
        assert_eq!(mb.wakeups(), 2);
    }

    #[test]
    fn notify_from_the_io_thread_needs_no_wakeup() {
        let mb = Mailbox::new();
        let w = Arc::new(CountingWake(AtomicUsize::new(0)));
        mb.set_waker(w.clone());
        assert!(mb.push(Command::Drive(ConnectionHandle(0))).is_ok());
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
        assert!(mb.push(Command::Shutdown).is_ok());
        let left = mb.close();
        assert_eq!(left.len(), 1);
        assert!(matches!(
            mb.push(Command::Drive(ConnectionHandle(1))),
            Err(Command::Drive(_))
        ));
    }
}
