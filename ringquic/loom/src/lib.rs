//! ringquic's mailbox and its sync primitives, compiled alone for the loom model.
//!
//! The model lives in `ringquic/src/mailbox.rs` (`mod loom_model`); this crate only gives it a
//! small crate to be built in (see Cargo.toml for why). Nothing here is a copy of ringquic's
//! code: both modules are ringquic's own files, included by path, so the model always checks the
//! code that ships.

// The mailbox's API is used by ringquic's driver, not here.
#![allow(dead_code)]

/// The one item of ringquic's `io` layer the mailbox names: the backend's wakeup. Declared here
/// with the same signature as `ringquic/src/io/seam.rs`'s (that module needs the whole crate);
/// a mailbox that called anything more would not compile against it.
mod io {
    pub(crate) trait Wakeup: Send + Sync + 'static {
        fn wake(&self);
    }
}

#[path = "../../src/sync.rs"]
mod sync;

#[path = "../../src/mailbox.rs"]
mod mailbox;
