//! Who waits for what on one connection: the application tasks parked on its streams,
//! datagrams, stream limits and end, and the rule for waking them.
//!
//! The handle layer registers a task's waker here (through `shared::ConnState`) when quinn-proto
//! says "not yet"; the I/O thread hands quinn-proto's events to [`Waiters::on_event`], which
//! takes the wakers an event concerns. Wakers are collected, not woken, so that the caller wakes
//! them after it has released the connection's lock (a woken task on another thread would
//! otherwise block on that lock at once).

use std::task::Waker;

use quinn_proto::{Dir, StreamEvent, StreamId};
use rustc_hash::FxHashMap;

/// Register `w` in `list` unless it is already there (a task polling twice adds one entry).
pub(crate) fn register(list: &mut Vec<Waker>, w: &Waker) {
    if !list.iter().any(|x| x.will_wake(w)) {
        list.push(w.clone());
    }
}

/// Wake every waker collected while a lock was held.
pub(crate) fn wake_all(woken: impl IntoIterator<Item = Waker>) {
    for w in woken {
        w.wake();
    }
}

fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

/// The tasks waiting on one connection. One waker per stream and purpose (a stream half has one
/// owner), lists where several tasks may wait (opening, accepting, datagrams, the end).
#[derive(Default)]
pub(crate) struct Waiters {
    /// `Connecting` and `ZeroRttAccepted` futures waiting for the handshake to complete.
    on_connected: Vec<Waker>,
    /// `Connecting::handshake_data` waiting for the peer's handshake parameters.
    handshake_data: Vec<Waker>,
    blocked_writers: FxHashMap<StreamId, Waker>,
    blocked_readers: FxHashMap<StreamId, Waker>,
    /// `SendStream::stopped` futures, several per stream (they may outlive the stream handle).
    stopped: FxHashMap<StreamId, Vec<Waker>>,
    open: [Vec<Waker>; 2],
    accept: [Vec<Waker>; 2],
    datagram_readers: Vec<Waker>,
    /// `send_datagram_wait` callers waiting for room in the datagram send buffer.
    datagram_senders: Vec<Waker>,
    closed: Vec<Waker>,
}

impl Waiters {
    pub(crate) fn connected(&mut self, w: &Waker) {
        register(&mut self.on_connected, w);
    }

    /// A waker handed over from elsewhere (the `Connecting`'s wait for the connection to exist).
    pub(crate) fn connected_owned(&mut self, w: Waker) {
        self.on_connected.push(w);
    }

    pub(crate) fn handshake_data(&mut self, w: &Waker) {
        register(&mut self.handshake_data, w);
    }

    pub(crate) fn writable(&mut self, id: StreamId, w: &Waker) {
        self.blocked_writers.insert(id, w.clone());
    }

    pub(crate) fn readable(&mut self, id: StreamId, w: &Waker) {
        self.blocked_readers.insert(id, w.clone());
    }

    pub(crate) fn stopped(&mut self, id: StreamId, w: &Waker) {
        register(self.stopped.entry(id).or_default(), w);
    }

    pub(crate) fn open(&mut self, dir: Dir, w: &Waker) {
        register(&mut self.open[dir_index(dir)], w);
    }

    pub(crate) fn accept(&mut self, dir: Dir, w: &Waker) {
        register(&mut self.accept[dir_index(dir)], w);
    }

    pub(crate) fn datagram(&mut self, w: &Waker) {
        register(&mut self.datagram_readers, w);
    }

    pub(crate) fn datagram_space(&mut self, w: &Waker) {
        register(&mut self.datagram_senders, w);
    }

    pub(crate) fn closed(&mut self, w: &Waker) {
        register(&mut self.closed, w);
    }

    /// A send half is gone: its writer's waker with it (`stopped` futures may outlive it; they
    /// are woken when the stream ends).
    pub(crate) fn forget_send(&mut self, id: StreamId) {
        self.blocked_writers.remove(&id);
    }

    /// A receive half is gone: its waker with it.
    pub(crate) fn forget_recv(&mut self, id: StreamId) {
        self.blocked_readers.remove(&id);
    }

    /// Take the wakers quinn-proto's `event` concerns (`Connected` and `ConnectionLost` are the
    /// connection state's to handle: see [`Waiters::handshake_done`] and [`Waiters::take_all`]).
    pub(crate) fn on_stream_event(&mut self, event: StreamEvent, woken: &mut Vec<Waker>) {
        match event {
            StreamEvent::Readable { id } => woken.extend(self.blocked_readers.remove(&id)),
            StreamEvent::Writable { id } => woken.extend(self.blocked_writers.remove(&id)),
            StreamEvent::Finished { id } => woken.extend(self.stopped.remove(&id).into_iter().flatten()),
            StreamEvent::Stopped { id, .. } => {
                woken.extend(self.stopped.remove(&id).into_iter().flatten());
                woken.extend(self.blocked_writers.remove(&id));
            }
            StreamEvent::Opened { dir } => woken.append(&mut self.accept[dir_index(dir)]),
            StreamEvent::Available { dir } => woken.append(&mut self.open[dir_index(dir)]),
        }
    }

    pub(crate) fn datagram_received(&mut self, woken: &mut Vec<Waker>) {
        woken.append(&mut self.datagram_readers);
    }

    pub(crate) fn datagrams_unblocked(&mut self, woken: &mut Vec<Waker>) {
        woken.append(&mut self.datagram_senders);
    }

    pub(crate) fn handshake_data_ready(&mut self, woken: &mut Vec<Waker>) {
        woken.append(&mut self.handshake_data);
    }

    /// Every task blocked on a stream (reading, writing, waiting for `stopped`): they look again
    /// (rejected 0-RTT streams then fail).
    pub(crate) fn stream_waiters(&mut self, woken: &mut Vec<Waker>) {
        woken.extend(self.blocked_writers.drain().map(|(_, w)| w));
        woken.extend(self.blocked_readers.drain().map(|(_, w)| w));
        woken.extend(self.stopped.drain().flat_map(|(_, w)| w));
    }

    pub(crate) fn handshake_done(&mut self, woken: &mut Vec<Waker>) {
        woken.append(&mut self.on_connected);
    }

    /// `stopped` waiters whose stream `freed` says is gone (quinn-proto frees a reset stream
    /// once the peer acknowledges the RESET_STREAM, silently, without an event).
    pub(crate) fn take_freed_stopped(
        &mut self,
        mut freed: impl FnMut(StreamId) -> bool,
        woken: &mut Vec<Waker>,
    ) {
        self.stopped.retain(|id, w| {
            if freed(*id) {
                woken.append(w);
                false
            } else {
                true
            }
        });
    }

    pub(crate) fn has_stopped(&self) -> bool {
        !self.stopped.is_empty()
    }

    /// Every waiter: the connection has ended.
    pub(crate) fn take_all(&mut self, woken: &mut Vec<Waker>) {
        woken.append(&mut self.on_connected);
        woken.append(&mut self.handshake_data);
        self.stream_waiters(woken);
        for l in self.open.iter_mut().chain(&mut self.accept) {
            woken.append(l);
        }
        woken.append(&mut self.datagram_readers);
        woken.append(&mut self.datagram_senders);
        woken.append(&mut self.closed);
    }
}
