//! Splitting a GRO batch (one received buffer holding several same-size datagrams) by the
//! segment size the kernel reported in `UDP_GRO`.
//!
//! Checks: the ranges tile `0..len` exactly, in order, with no gap, overlap or empty range;
//! with a positive segment size every range is exactly that long except the last, which is
//! shorter or equal; with no segment size (or 0, which the parser never reports but the
//! splitter must survive) the payload is one datagram. The segment size is any `usize`; the
//! payload is bounded at 256 KiB (a GRO batch is at most 64 KiB) so every input runs fast.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const MAX_LEN: usize = 256 * 1024;

#[derive(Debug, Arbitrary)]
struct Input {
    len: u32,
    segment_size: Option<usize>,
}

fuzz_target!(|input: Input| {
    let len = input.len as usize % (MAX_LEN + 1);
    let seg = input.segment_size;
    let ranges = ringquic::fuzzing::split_segments(len, seg);

    let mut next = 0;
    for r in &ranges {
        assert_eq!(r.start, next, "gap or overlap: {len} by {seg:?}");
        assert!(r.end > r.start, "empty range {r:?}: {len} by {seg:?}");
        next = r.end;
    }
    assert_eq!(next, len, "ranges do not cover the payload: {len} by {seg:?}");

    match seg {
        Some(s) if s > 0 => {
            assert_eq!(ranges.len(), len.div_ceil(s), "{len} by {s}");
            if let Some((last, full)) = ranges.split_last() {
                assert!(full.iter().all(|r| r.len() == s), "{len} by {s}: {ranges:?}");
                assert!(last.len() <= s && last.len() > 0);
            }
        }
        _ => assert_eq!(ranges, if len == 0 { vec![] } else { vec![0..len] }),
    }
});
