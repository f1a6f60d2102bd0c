//! The perf protocol's request header (an 8-byte big-endian response size at the start of a
//! request stream) and the command line's size and duration parsers.
//!
//! Checks:
//! * `parse_header` never panics: `Ok` with the big-endian value of the first 8 bytes when there
//!   are 8, `ShortHeader(len)` otherwise; `encode_header` then `parse_header` gives the value back.
//! * `read_request` (the server's reading of a whole request) over a stream that hands the same
//!   bytes in arbitrary pieces gives the same answer however the bytes are cut, reads the upload
//!   to its end, and fails (never hangs or panics) when the stream fails part way.
//! * `parse_size` / `parse_duration` / `format_bytes` never panic on any text or number, and
//!   `parse_size` reads back what is written as digits with a K/M/G/T suffix exactly.
#![no_main]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use anyhow::{bail, Result};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringquic_perf::{
    perf::read_request,
    proto::{encode_header, format_bytes, parse_duration, parse_header, parse_size, ParseError, HEADER_LEN},
    system::RecvOps,
};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    stream: &'a [u8],
    /// Sizes of the pieces the stream arrives in (each 1..=16 bytes, the last piece repeating).
    pieces: Vec<u8>,
    /// Fail the stream after this many pieces instead of ending it.
    fail_after: Option<u8>,
    text: &'a str,
    value: u64,
    suffix: u8,
    float: f64,
}

/// A receive stream that hands out `data` in the given pieces, then ends or fails.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    pieces: Vec<usize>,
    served: usize,
    fail_after: Option<usize>,
}

impl Pieces {
    fn next(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.fail_after.is_some_and(|f| self.served >= f) {
            bail!("stream reset by the fuzzer");
        }
        if self.at == self.data.len() {
            if self.fail_after.is_some() {
                bail!("stream reset by the fuzzer");
            }
            return Ok(None);
        }
        let want = self
            .pieces
            .get(self.served)
            .or(self.pieces.last())
            .copied()
            .unwrap_or(16);
        let n = want.min(max).min(self.data.len() - self.at);
        let out = Bytes::copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.served += 1;
        Ok(Some(out))
    }
}

impl RecvOps for Pieces {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        self.next(max)
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        Ok(self.next(buf.len())?.map(|b| {
            buf[..b.len()].copy_from_slice(&b);
            b.len()
        }))
    }
}

/// Everything here is ready at once: one poll must finish it.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a future over an always-ready stream is pending"),
    }
}

fuzz_target!(|input: Input| {
    // The header on its own.
    let parsed = parse_header(input.stream);
    match input.stream.get(..HEADER_LEN) {
        Some(h) => assert_eq!(parsed, Ok(u64::from_be_bytes(h.try_into().unwrap()))),
        None => assert_eq!(parsed, Err(ParseError::ShortHeader(input.stream.len()))),
    }
    assert_eq!(parse_header(&encode_header(input.value)), Ok(input.value));

    // The header as the server reads it off a stream, cut into pieces.
    let stream = input.stream.get(..4096).unwrap_or(input.stream);
    let mut recv = Pieces {
        data: stream.to_vec(),
        at: 0,
        pieces: input
            .pieces
            .iter()
            .take(64)
            .map(|&p| usize::from(p % 16) + 1)
            .collect(),
        served: 0,
        fail_after: input.fail_after.map(usize::from),
    };
    let got = now(read_request(&mut recv));
    match (input.fail_after, parse_header(stream)) {
        (None, Ok(size)) => {
            assert_eq!(got.ok(), Some(size));
            assert_eq!(recv.at, stream.len(), "upload not read to its end");
        }
        _ => assert!(got.is_err(), "{got:?} from a short or failed stream"),
    }

    // Command-line values.
    let _ = parse_size(input.text);
    let _ = parse_duration(input.text);
    assert!(!format_bytes(input.float).is_empty());
    let v = input.value;
    assert_eq!(parse_size(&v.to_string()), Ok(v));
    let (suffix, shift) =
        [("K", 10), ("m", 20), ("GiB", 30), ("tb", 40), ("B", 0)][input.suffix as usize % 5];
    match v.checked_mul(1 << shift) {
        Some(n) => assert_eq!(parse_size(&format!("{v}{suffix}")), Ok(n)),
        None => assert!(parse_size(&format!("{v}{suffix}")).is_err()),
    }
});
