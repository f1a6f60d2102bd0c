//! What the backends' unit tests do alike, through [`IoBackend`] alone: build a transmit, send
//! bytes or a GSO batch, turn a backend until datagrams arrive or its sends have completed,
//! check that a wakeup ends a sleep, and shut down with sends in flight.
#![cfg(test)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use quinn_proto::{EcnCodepoint, Transmit};

use super::{IoBackend, RecvMeta};

/// The longest one turn of [`collect`] or [`turn_until`] may sleep.
const TURN: Duration = Duration::from_millis(20);

/// A transmit of `size` bytes to `to`, marked ECT(0); with `segment_size`, a GSO batch of
/// datagrams that size.
pub(crate) fn transmit(to: SocketAddr, size: usize, segment_size: Option<usize>) -> Transmit {
    Transmit {
        destination: to,
        ecn: Some(EcnCodepoint::Ect0),
        size,
        segment_size,
        src_ip: None,
    }
}

/// Send `payload` to `to` as quinn-proto would: written into a TX buffer taken from `b` (which
/// must be empty) and handed to `send` with [`transmit`].
pub(crate) fn send(b: &mut impl IoBackend, to: SocketAddr, payload: &[u8], segment_size: Option<usize>) {
    let mut tx = b.take_tx().expect("a free TX buffer");
    assert!(tx.buf.is_empty(), "take_tx hands out empty buffers");
    tx.buf.extend_from_slice(payload);
    b.send(tx, &transmit(to, payload.len(), segment_size));
}

/// Send a GSO batch of five 1200-byte datagrams, the `i`-th filled with byte `i`, from `a` to
/// `b`, submitted by a turn of `a`; returns what `b` receives of it within `within`.
pub(crate) fn send_gso_batch(
    a: &mut impl IoBackend,
    b: &mut impl IoBackend,
    within: Duration,
) -> Vec<(RecvMeta, BytesMut)> {
    let batch: Vec<u8> = (0..5 * 1200).map(|i| (i / 1200) as u8).collect();
    send(a, b.local_addr().unwrap(), &batch, Some(1200));
    a.turn(Some(Instant::now()), &mut |_, _| {}).unwrap();
    collect(b, 5, within)
}

/// Turn `b` until `want` datagrams have arrived or `within` has passed; returns what arrived.
pub(crate) fn collect(b: &mut impl IoBackend, want: usize, within: Duration) -> Vec<(RecvMeta, BytesMut)> {
    let mut got = Vec::new();
    let end = Instant::now() + within;
    while got.len() < want && Instant::now() < end {
        let deadline = (Instant::now() + TURN).min(end);
        b.turn(Some(deadline), &mut |m, d| got.push((m, d))).unwrap();
    }
    got
}

/// Turn `b`, dropping whatever it receives, until `done(b)` holds or `within` has passed (used to
/// wait for send completions).
pub(crate) fn turn_until<B: IoBackend>(b: &mut B, within: Duration, done: impl Fn(&B) -> bool) {
    let end = Instant::now() + within;
    while !done(b) && Instant::now() < end {
        b.turn(Some(Instant::now() + TURN), &mut |_, _| {}).unwrap();
    }
}

/// Leave four sends in flight (to the discard port) and shut `b` down; the caller checks that
/// nothing is outstanding any more and that the memory was freed, not leaked.
pub(crate) fn shut_down_with_sends_in_flight(b: &mut impl IoBackend) {
    let to = "127.0.0.1:9".parse().unwrap();
    for _ in 0..4 {
        send(b, to, &[0u8; 1200], None);
    }
    b.shutdown();
}

/// A wakeup from another thread ends a turn that has no deadline, well within 5 s.
pub(crate) fn assert_wakeup_ends_an_unbounded_turn(b: &mut impl IoBackend) {
    let w = b.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        w.wake();
    });
    let start = Instant::now();
    b.turn(None, &mut |_, _| {}).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}
