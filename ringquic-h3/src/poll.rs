//! Polling ringquic's futures from h3's poll-based traits.

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll},
};

/// Poll a future once and drop it. For ringquic's stateless futures (ringquic's crate docs,
/// "Polling a future and dropping it"): the waker a `Pending` poll left with the connection
/// stays there, and a new future made on the next poll takes up where this one was.
pub(crate) fn poll_once<F: Future>(future: F, cx: &mut Context<'_>) -> Poll<F::Output> {
    pin!(future).poll(cx)
}
