//! The sync primitives of the mailbox handshake, switchable to `loom`'s model-checked ones.
//!
//! Normally these are `std`'s. Built with `RUSTFLAGS="--cfg ringquic_loom"` (test builds only,
//! see docs/RELIABILITY.md) they are `loom`'s, so the model in `mailbox.rs` explores every
//! interleaving of `Mailbox::push`/`notify` against the I/O thread's `drain`/`is_notified`. The
//! cfg is not plain `loom` because tokio and other dependencies change their internals on that.
//!
//! Only what the handshake itself uses is routed here: the queue's `Mutex`, the `notified` (and
//! `closed`) `AtomicBool`, and `thread::current` (loom runs its threads as coroutines on one OS
//! thread, so `std::thread::current()` would call every model thread "the I/O thread"). The rest
//! stays `std` even under the cfg: `OnceLock` (loom has none; it is set once before the model's
//! threads race), the `wakeups` statistics counter (`AtomicU64`, relaxed, not part of the
//! protocol), and `Arc` (commands carry `std::sync::Arc`s shared with the rest of the crate, and
//! the waker is an `Arc<dyn Wakeup>`).

#[cfg(not(all(test, ringquic_loom)))]
pub(crate) use std::{
    sync::{atomic::AtomicBool, Mutex},
    thread,
};

#[cfg(all(test, ringquic_loom))]
pub(crate) use loom::{
    sync::{atomic::AtomicBool, Mutex},
    thread,
};

/// A mutex whose lock ignores poisoning: `std`'s, and under the loom cfg also `loom`'s (whose
/// `lock()` returns a `LockResult` too). Behind [`lock`].
pub(crate) trait Lock {
    /// The guard `lock()` returns.
    type Guard<'a>
    where
        Self: 'a;
    /// Lock, taking the guard out of a poison error.
    fn lock_ignoring_poison(&self) -> Self::Guard<'_>;
}

/// One `Lock` impl per mutex type: `std`'s and `loom`'s guards have the same API but no common
/// trait to write a single generic impl against.
macro_rules! impl_lock {
    ($($sync:ident)::+) => {
        impl<T: ?Sized> Lock for $($sync)::+::Mutex<T> {
            type Guard<'a>
                = $($sync)::+::MutexGuard<'a, T>
            where
                Self: 'a;
            fn lock_ignoring_poison(&self) -> Self::Guard<'_> {
                self.lock().unwrap_or_else(|e| e.into_inner())
            }
        }
    };
}

impl_lock!(std::sync);
#[cfg(all(test, ringquic_loom))]
impl_lock!(loom::sync);

/// Lock a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything that could panic, and a panic on the I/O thread is reported to
/// the application through connection errors, not through poisoned locks.
pub(crate) fn lock<M: Lock + ?Sized>(m: &M) -> M::Guard<'_> {
    m.lock_ignoring_poison()
}
