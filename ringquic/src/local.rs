//! Tasks on the I/O thread: [`Endpoint::spawn`](crate::Endpoint::spawn) and [`try_spawn`] run a
//! future next to the socket and the connections (thread-per-core style), and [`JoinHandle`]
//! gives its output back, or a [`JoinError`] if it was cancelled or panicked.
//!
//! The executor is `async-task`'s: this module only schedules a task's runnable into the
//! endpoint's task queue (`shared.rs`), which the I/O loop runs each turn, and registers every
//! live task so the exiting I/O thread can cancel it.

use std::{
    future::Future,
    io,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use crate::{shared::EndpointShared, sync::lock};

/// Spawn `future` onto `shared`'s I/O thread.
pub(crate) fn spawn_on<F>(shared: &Arc<EndpointShared>, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let weak = Arc::downgrade(shared);
    let schedule = move |runnable: async_task::Runnable| {
        if let Some(shared) = weak.upgrade() {
            shared.schedule_task(runnable);
        }
    };
    let future = Cancellable {
        fut: Box::pin(future),
        shared: Arc::downgrade(shared),
        key: None,
    };
    let (runnable, task) = async_task::spawn(future, schedule);
    runnable.schedule();
    JoinHandle(Some(task.fallible()))
}

/// Spawn `future` onto the I/O thread the caller is running on, next to the caller: call it
/// from a task started with [`Endpoint::spawn`] to start sibling tasks there (as
/// `tokio::spawn` does inside a runtime). Anywhere else the future is handed back.
pub fn try_spawn<F>(future: F) -> Result<JoinHandle<F::Output>, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match EndpointShared::current() {
        Some(shared) => Ok(spawn_on(&shared, future)),
        None => Err(future),
    }
}

/// A spawned task's future, registered with the endpoint so the exiting I/O thread can wake
/// (and thereby cancel) it. A panic while polling it is caught here and becomes the task's
/// output, so it ends that task only: the I/O thread, its connections and other tasks go on
/// (as with `tokio::spawn`).
struct Cancellable<F> {
    fut: Pin<Box<F>>,
    shared: std::sync::Weak<EndpointShared>,
    key: Option<u64>,
}

/// What a panicking task left behind.
type PanicPayload = Box<dyn std::any::Any + Send + 'static>;

impl<F: Future> Future for Cancellable<F> {
    type Output = Result<F::Output, PanicPayload>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.key.is_none() {
            // Every waker of one async-task task schedules that same task: one is enough.
            if let Some(shared) = self.shared.upgrade() {
                self.key = Some(shared.register_task(cx.waker()));
            }
        }
        // The future is not polled again after a panic (the task completes with the payload),
        // so whatever state the panic left it in is never observed: unwind safety holds.
        let fut = self.fut.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                tracing::debug!("a task spawned on the I/O thread panicked");
                Poll::Ready(Err(payload))
            }
        }
    }
}

impl<F> Drop for Cancellable<F> {
    fn drop(&mut self) {
        if let (Some(key), Some(shared)) = (self.key, self.shared.upgrade()) {
            shared.forget_task(key);
        }
    }
}

/// A task running on an endpoint's I/O thread ([`Endpoint::spawn`]). Await it for the task's
/// output; drop it to let the task run on.
#[must_use = "dropping a JoinHandle detaches the task"]
pub struct JoinHandle<T>(Option<async_task::FallibleTask<Result<T, PanicPayload>>>);

/// Why a task started with [`Endpoint::spawn`] produced no output: it was cancelled, or it
/// panicked (the panic ended that task only).
pub struct JoinError {
    /// `None`: cancelled. The payload sits behind a mutex only so `JoinError` is `Sync`.
    panic: Option<Mutex<PanicPayload>>,
}

impl JoinError {
    fn cancelled() -> Self {
        Self { panic: None }
    }

    /// The task was cancelled: [`JoinHandle::abort`], or its endpoint's I/O thread exited.
    pub fn is_cancelled(&self) -> bool {
        self.panic.is_none()
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// The panic's payload, to resume it with [`std::panic::resume_unwind`]; `Err(self)` if the
    /// task was cancelled instead.
    pub fn try_into_panic(self) -> Result<PanicPayload, JoinError> {
        match self.panic {
            Some(p) => Ok(p.into_inner().unwrap_or_else(|e| e.into_inner())),
            None => Err(self),
        }
    }

    /// The panic message, when the payload is a string (as with `panic!("...")`).
    fn message(&self) -> Option<String> {
        let p = self.panic.as_ref()?;
        let p = lock(p);
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
    }
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.panic, self.message()) {
            (None, _) => f.write_str("the task was cancelled"),
            (Some(_), Some(m)) => write!(f, "the task panicked: {m}"),
            (Some(_), None) => f.write_str("the task panicked"),
        }
    }
}

impl std::fmt::Debug for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.panic, self.message()) {
            (None, _) => f.write_str("JoinError::Cancelled"),
            (Some(_), m) => write!(f, "JoinError::Panic({:?})", m.as_deref().unwrap_or("...")),
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for io::Error {
    fn from(e: JoinError) -> Self {
        io::Error::other(e)
    }
}

impl<T> JoinHandle<T> {
    /// Cancel the task: its future is dropped (on the I/O thread, or here if it is not running).
    pub fn abort(mut self) {
        drop(self.0.take());
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(t) => Pin::new(t).poll(cx).map(|r| match r {
                Some(Ok(v)) => Ok(v),
                Some(Err(panic)) => Err(JoinError {
                    panic: Some(Mutex::new(panic)),
                }),
                None => Err(JoinError::cancelled()),
            }),
            None => Poll::Ready(Err(JoinError::cancelled())),
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.detach();
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle").finish_non_exhaustive()
    }
}
