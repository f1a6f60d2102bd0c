//! The I/O loop as a task on the application's tokio runtime
//! ([`EndpointBuilder::io_on_runtime`](crate::EndpointBuilder::io_on_runtime)), beside the
//! default, its own I/O thread (`driver.rs`).
//!
//! The turn is the same ([`Driver::plan`], then the backend's turn, then
//! [`Core::end_turn`](crate::core::Core::end_turn)); what differs is the wait. The I/O thread
//! sleeps inside the backend (`io_uring_enter`, `epoll_wait`). Here the backend's turn never
//! sleeps, and the task returns `Pending` instead, to be woken by one of three things:
//!
//! - the backend's readiness fd (the ring's fd, or the poll backend's epoll instance), which
//!   the runtime's reactor watches through [`AsyncFd`]: a completion, a datagram;
//! - a timer at the loop's deadline (`tokio::time::Sleep`): quinn-proto's timers;
//! - the mailbox's wakeup: a command from a handle wakes this task's [`Waker`] directly, no
//!   system call, so a task on the same runtime thread that writes a reply costs a run-queue
//!   push, not an `eventfd` write and a context switch.
//!
//! A received datagram is processed in this task and wakes the reading task on the same
//! runtime, which is the handoff the I/O thread pays a cross-thread wakeup for.
//!
//! No lost wakeup: the fd's readiness is cleared *before* the non-blocking turn that drains
//! it, so anything that arrives later sets it again; the mailbox waker is registered before
//! the mailbox is looked at; and the task sleeps only when the backend says it has nothing
//! waiting ([`IoBackend::sleep_until`](crate::io::IoBackend::sleep_until)).

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{mpsc, Arc, Mutex, Weak},
    task::{Context, Poll, Waker},
    time::Instant,
};

use crate::{
    driver::{exit_reason, Driver, DriverSetup, Plan},
    io::{reactor::Readiness, Wakeup},
    shared::InlineLoop,
    sync::lock,
    ConnectionError, EndpointError,
};

/// Turns per poll at most before the task yields to the runtime's other tasks (it asks to be
/// polled again at once), so a flood of datagrams cannot starve the application.
const TURNS_PER_POLL: usize = 16;

/// Open the backend on the calling thread and spawn the loop onto the tokio runtime it runs
/// in. Fails with [`EndpointError::Config`] outside a runtime, or in one without its I/O or
/// time driver.
pub(crate) fn spawn(setup: DriverSetup) -> Result<(), EndpointError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| EndpointError::Config("io_on_runtime: bind must be called inside a tokio runtime"))?;
    let _entered = runtime.enter();
    // Creating a timer panics in a runtime built without `enable_time` (as it does in quinn);
    // say so as an error instead.
    let sleep =
        std::panic::catch_unwind(|| tokio::time::sleep_until(tokio::time::Instant::now())).map_err(|_| {
            EndpointError::Config("io_on_runtime: the tokio runtime needs its time driver (enable_all)")
        })?;
    let shared = setup.shared.clone();
    let (driver, exited) = Driver::open(setup)?;
    let registered = match driver.io.readiness_fd() {
        Some(fd) => Readiness::register(fd),
        None => {
            drop(driver);
            return Err(EndpointError::Config(
                "io_on_runtime: this backend cannot run on a runtime",
            ));
        }
    };
    let fd = match registered {
        Ok(fd) => fd,
        Err(source) => {
            // No connection exists yet: dropping the backend shuts it down.
            drop(driver);
            return Err(EndpointError::Backend {
                what: "registering the backend with the tokio runtime's I/O driver",
                source,
            });
        }
    };
    let waker = Arc::new(TaskWakeup(Mutex::new(None)));
    shared.mailbox.set_waker_any_thread(waker.clone());
    let driver = Arc::new(Mutex::new(Some(driver)));
    shared.set_inline_loop(Box::new(Inline {
        driver: Arc::downgrade(&driver),
        waker: waker.clone(),
    }));
    runtime.spawn(DriverTask {
        fd: Some(fd),
        driver,
        sleep: Box::pin(sleep),
        sleep_armed: None,
        waker,
        _exited: exited,
    });
    Ok(())
}

/// The mailbox's wakeup for the loop on a runtime: the task's waker.
struct TaskWakeup(Mutex<Option<Waker>>);

impl TaskWakeup {
    fn register(&self, waker: &Waker) {
        let mut w = lock(&self.0);
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }
}

impl Wakeup for TaskWakeup {
    fn wake(&self) {
        let w = lock(&self.0).clone();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The loop for a call that needs its commands taken at once (`into_0rtt`): weak, since the
/// loop's own state holds the endpoint's shared state that holds this.
struct Inline {
    driver: Weak<Mutex<Option<Driver>>>,
    waker: Arc<TaskWakeup>,
}

impl InlineLoop for Inline {
    /// Only if no turn runs right now (`try_lock`): a turn on another thread takes the
    /// commands itself, and a caller inside the turn must not wait for it. Then the task is
    /// woken, so what the commands started (sends, timers) goes on in its next turn.
    fn take_commands(&self) -> bool {
        let Some(driver) = self.driver.upgrade() else {
            return false;
        };
        let Ok(mut guard) = driver.try_lock() else {
            return false;
        };
        let Some(d) = guard.as_mut() else {
            return false;
        };
        d.take_commands();
        drop(guard);
        self.waker.wake();
        true
    }
}

/// The loop's task. The driver is `None` once the loop has finished; it is locked for each
/// poll, and by [`Inline::take_commands`] between polls.
struct DriverTask {
    /// Dropped before `driver` (`finish`): deregistered before the backend shuts down.
    fd: Option<Readiness>,
    driver: Arc<Mutex<Option<Driver>>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When `sleep` fires, while it has not yet (`None`: fired, or never set).
    sleep_armed: Option<Instant>,
    waker: Arc<TaskWakeup>,
    /// Dropped with the task: the loop is done.
    _exited: mpsc::Sender<()>,
}

/// What one poll of the loop came to.
enum Step {
    /// Nothing to do until the fd, the timer or the mailbox wakes the task.
    Sleep,
    /// The turn budget is used up: poll again after the runtime's other tasks.
    Yield,
    /// The loop ended; connections still open fail with this.
    Done(ConnectionError),
}

impl DriverTask {
    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        let mut guard = lock(&*self.driver);
        let (Some(fd), Some(driver)) = (self.fd.as_ref(), guard.as_mut()) else {
            return Step::Done(ConnectionError::LocallyClosed);
        };
        let shared = driver.core.shared().clone();
        let _current = shared.enter_current();
        // Before the mailbox is looked at (in `plan`): a command pushed after that look wakes
        // this waker.
        self.waker.register(cx.waker());
        for _ in 0..TURNS_PER_POLL {
            let deadline = match driver.plan() {
                Ok(Plan::Exit) => return Step::Done(ConnectionError::LocallyClosed),
                Ok(Plan::Wait { deadline, .. }) => deadline,
                Err(e) => return Step::Done(exit_reason(Ok(Err(e)))),
            };
            // Clear the readiness this turn consumes before the turn: whatever arrives after
            // the clear makes the fd ready again.
            let ready = match fd.clear(cx) {
                Ok(r) => r,
                Err(e) => return Step::Done(exit_reason(Ok(Err(e)))),
            };
            let core = &mut driver.core;
            let io = &mut *driver.io;
            // Without new readiness and with nothing queued the backend has nothing to report:
            // skip its system call.
            if ready || io.needs_turn() {
                if let Err(e) = io.turn(Some(Instant::now()), &mut |meta, data| core.receive(meta, data)) {
                    return Step::Done(exit_reason(Ok(Err(e))));
                }
            }
            core.end_turn(io);
            let now = Instant::now();
            let work = core.has_dirty()
                || core.has_received()
                || core.shared().mailbox.is_notified()
                || core.shared().has_tasks();
            let until = if work { Some(now) } else { io.sleep_until(deadline) };
            if until.is_some_and(|d| d <= now) {
                continue;
            }
            if let Some(d) = until {
                // Moving a timer costs a trip into the runtime's timer wheel, and quinn-proto's
                // next timeout moves later with nearly every packet (idle, loss detection): keep
                // a timer that is armed and not later than `d`; firing early costs one turn.
                if self.sleep_armed.is_none_or(|armed| armed > d) {
                    self.sleep.as_mut().reset(d.into());
                    self.sleep_armed = Some(d);
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.sleep_armed = None;
                    continue;
                }
            }
            match fd.poll_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Step::Done(exit_reason(Ok(Err(e)))),
                Poll::Pending => return Step::Sleep,
            }
        }
        Step::Yield
    }

    /// The loop is over: fail what is left and shut the backend down (`Driver::finish`).
    fn finish(&mut self, reason: ConnectionError) {
        drop(self.fd.take());
        let driver = lock(&*self.driver).take();
        if let Some(mut driver) = driver {
            driver.finish(reason);
        }
    }
}

impl Future for DriverTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // A panic in the loop (not in an application task: those are caught in `local.rs`)
        // fails every connection, as on the I/O thread; it does not unwind into the runtime.
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.step(cx))) {
            Ok(Step::Sleep) => Poll::Pending,
            Ok(Step::Yield) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Ok(Step::Done(reason)) => {
                this.finish(reason);
                Poll::Ready(())
            }
            Err(payload) => {
                this.finish(exit_reason(Err(payload)));
                Poll::Ready(())
            }
        }
    }
}

impl Drop for DriverTask {
    /// The runtime dropped the task before the loop ended (the runtime shut down): nothing
    /// will drive the connections any more, so fail them and shut the backend down here.
    fn drop(&mut self) {
        self.finish(ConnectionError::LocallyClosed);
    }
}
