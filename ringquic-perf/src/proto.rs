//! The QUIC perf protocol (draft-banks-quic-performance-00) on the wire, and the small parsers
//! the command line needs (sizes with K/M/G suffixes, durations).
//!
//! A perf request is a stream that the client opens: its first 8 bytes are the number of bytes
//! the server must answer with, big-endian; the rest of the stream, up to FIN, is upload data
//! that the server reads and discards. The server then sends exactly the requested number of
//! bytes and FIN, on the same stream for a bidirectional request or on a new unidirectional
//! stream for a unidirectional one.
//!
//! Everything here is pure and never panics on bad input: malformed input is an [`Err`].

use std::{fmt, time::Duration};

/// The ALPN protocol identifier of the perf protocol.
pub const ALPN: &[u8] = b"perf";

/// The length of the request header: the response size as a big-endian `u64`.
pub const HEADER_LEN: usize = 8;

/// Why a perf header or a command-line value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The stream ended after this many header bytes (fewer than [`HEADER_LEN`]).
    ShortHeader(usize),
    /// A size or duration string that could not be parsed, with the reason.
    BadValue(String, &'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ShortHeader(n) => write!(
                f,
                "perf request header too short: stream ended after {n} of {HEADER_LEN} bytes"
            ),
            ParseError::BadValue(s, why) => write!(f, "invalid value {s:?}: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Encodes the request header asking the server for `response_size` bytes.
pub fn encode_header(response_size: u64) -> [u8; HEADER_LEN] {
    response_size.to_be_bytes()
}

/// Parses a request header from the first bytes of a request stream.
///
/// `buf` is everything that was read before the stream ended or [`HEADER_LEN`] bytes arrived;
/// bytes past the header are ignored (they are upload data). Fewer than [`HEADER_LEN`] bytes is
/// [`ParseError::ShortHeader`].
pub fn parse_header(buf: &[u8]) -> Result<u64, ParseError> {
    match buf.get(..HEADER_LEN) {
        Some(head) => {
            let mut bytes = [0u8; HEADER_LEN];
            bytes.copy_from_slice(head);
            Ok(u64::from_be_bytes(bytes))
        }
        None => Err(ParseError::ShortHeader(buf.len())),
    }
}

/// Parses a byte count such as `1024`, `64K`, `1M`, `1G`, `2GiB` or `512KB`.
///
/// Suffixes are powers of 1024 (`K`, `M`, `G`, `T`, case-insensitive, optionally followed by
/// `B` or `iB`); a trailing `B` alone means bytes.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let bad = |why| ParseError::BadValue(s.to_owned(), why);
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(bad("expected a number, optionally followed by K, M, G or T"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number out of range"))?;
    let suffix = suffix.trim().to_ascii_lowercase();
    let suffix = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    let shift = match suffix {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad("unknown suffix (use K, M, G or T, powers of 1024)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| bad("size out of range"))
}

/// Parses a duration such as `5s`, `500ms`, `2m`, `1.5s` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let bad = |why| ParseError::BadValue(s.to_owned(), why);
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let value: f64 = num
        .parse()
        .map_err(|_| bad("expected a number followed by ms, s or m"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        _ => return Err(bad("unknown unit (use us, ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad("duration out of range"))
}

/// Formats a byte count with a binary suffix, e.g. `1.00 GiB`.
pub fn format_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for n in [0, 1, 64, 1 << 20, 1 << 30, u64::MAX] {
            assert_eq!(parse_header(&encode_header(n)), Ok(n));
        }
        assert_eq!(encode_header(0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn header_ignores_upload_bytes() {
        let mut buf = encode_header(77).to_vec();
        buf.extend_from_slice(b"upload data");
        assert_eq!(parse_header(&buf), Ok(77));
    }

    #[test]
    fn short_header_is_an_error() {
        for len in 0..HEADER_LEN {
            let buf = vec![0xff; len];
            assert_eq!(parse_header(&buf), Err(ParseError::ShortHeader(len)));
        }
        assert!(parse_header(&[1, 2, 3])
            .unwrap_err()
            .to_string()
            .contains("3 of 8"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size(" 4M "), Ok(4 << 20));
        assert_eq!(parse_size("12B"), Ok(12));
    }

    #[test]
    fn bad_sizes_are_errors() {
        for s in ["", "K", "-1", "1.5G", "12X", "99999999999999999999", "20000000T"] {
            assert!(parse_size(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for s in ["", "s", "5h", "1..2s", "-1s", "1e999"] {
            assert!(parse_duration(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn byte_formatting() {
        assert_eq!(format_bytes(12.0), "12 B");
        assert_eq!(format_bytes(1536.0), "1.50 KiB");
        assert_eq!(format_bytes((1u64 << 30) as f64), "1.00 GiB");
    }
}
