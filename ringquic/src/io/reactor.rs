//! A backend's readiness fd ([`IoBackend::readiness_fd`](super::IoBackend::readiness_fd))
//! registered with the tokio runtime's reactor, for the I/O loop that runs as a task on the
//! application's runtime (`driver_task.rs`). The reactor watches its own duplicate of the fd,
//! so what it watches stays open for as long as it is registered, whatever the backend does.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use tokio::io::{unix::AsyncFd, Interest};

/// The readiness fd in the reactor of the runtime it was registered in.
pub(crate) struct Readiness(AsyncFd<OwnedFd>);

impl Readiness {
    /// Register a duplicate of `fd` for readability with the current tokio runtime. Fails
    /// outside a runtime or in one without its I/O driver (where tokio would panic).
    pub(crate) fn register(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let owned = fd.try_clone_to_owned()?;
        // tokio asks that the fd stay open, and the same, for the `AsyncFd`'s whole life. It
        // owns `owned` from here on and never hands it back (`into_inner` is not called).
        let registered = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `owned` is open and an `OwnedFd`'s fd never changes; only the `AsyncFd`
            // closes it, when dropped, after deregistering it.
            unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
        }));
        match registered {
            Ok(Ok(fd)) => Ok(Self(fd)),
            Ok(Err(e)) => Err(e.into_parts().1),
            Err(_) => Err(io::Error::other(
                "no tokio runtime with its I/O driver enabled (enable_all) is running here",
            )),
        }
    }

    /// Forget the readiness seen so far, and say whether there was any: call before draining
    /// the backend, so that whatever arrives after it makes [`Readiness::poll_ready`] ready
    /// again.
    pub(crate) fn clear(&self, cx: &mut Context<'_>) -> io::Result<bool> {
        match self.0.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    /// Ready once the fd has become readable since the last [`Readiness::clear`]; `Pending`
    /// registers `cx`'s waker with the reactor.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_ready(cx).map_ok(|_| ())
    }
}
