//! What every backend does alike with a send: read what a `quinn_proto::Transmit` asks of the
//! [`TxBuf`] quinn-proto wrote, and count what the kernel took. The send side's counterpart of
//! `recv.rs`; how a batch then reaches the kernel (one `sendmsg` with GSO, `quinn-udp` calls,
//! `RIOSendEx` parts) stays with each backend.

use quinn_proto::Transmit;

use super::{IoStats, TxBuf};

/// The bytes of a [`TxBuf`] that one `Transmit` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Bytes to send: `transmit.size`, or fewer if the buffer holds fewer.
    pub len: usize,
    /// The GSO segment size when the batch holds several datagrams (a size smaller than `len`;
    /// the last datagram may be shorter). `None`: one datagram.
    pub segment_size: Option<usize>,
}

impl Batch {
    /// What `transmit` asks to send from `buf`.
    pub(crate) fn new(buf: &TxBuf, transmit: &Transmit) -> Self {
        let len = transmit.size.min(buf.buf.len());
        Self {
            len,
            segment_size: transmit.segment_size.filter(|&s| s > 0 && s < len),
        }
    }
}

/// Datagrams in a send of `bytes` bytes with GSO segment size `segment_size` (`None`: one
/// datagram); at least one.
fn datagrams(bytes: usize, segment_size: Option<usize>) -> usize {
    match segment_size {
        Some(s) if s > 0 => bytes.div_ceil(s).max(1),
        _ => 1,
    }
}

impl IoStats {
    /// Count a send the kernel took: `bytes` bytes in datagrams of `segment_size` bytes (the
    /// last one possibly shorter; `None`: one datagram).
    pub(crate) fn count_sent(&mut self, bytes: usize, segment_size: Option<usize>) {
        self.bytes_sent += bytes as u64;
        self.datagrams_sent += datagrams(bytes, segment_size) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(size: usize, segment_size: Option<usize>) -> Transmit {
        Transmit {
            destination: "127.0.0.1:1".parse().unwrap(),
            ecn: None,
            size,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn a_batch_is_what_the_buffer_holds_and_has_a_segment_size_only_if_it_is_several() {
        let buf = TxBuf {
            slot: 0,
            buf: vec![0; 3000],
        };
        let b = |size, seg| Batch::new(&buf, &transmit(size, seg));
        assert_eq!(
            b(3000, Some(1200)),
            Batch {
                len: 3000,
                segment_size: Some(1200)
            }
        );
        assert_eq!(
            b(1200, Some(1200)),
            Batch {
                len: 1200,
                segment_size: None
            }
        );
        assert_eq!(
            b(1000, None),
            Batch {
                len: 1000,
                segment_size: None
            }
        );
        assert_eq!(
            b(3000, Some(0)),
            Batch {
                len: 3000,
                segment_size: None
            }
        );
        // A transmit larger than its buffer sends what is there.
        assert_eq!(
            b(4000, Some(1200)),
            Batch {
                len: 3000,
                segment_size: Some(1200)
            }
        );
    }

    #[test]
    fn sends_count_their_datagrams() {
        let mut s = IoStats::default();
        s.count_sent(3000, Some(1200));
        assert_eq!((s.datagrams_sent, s.bytes_sent), (3, 3000));
        s.count_sent(1200, Some(1200));
        s.count_sent(500, None);
        s.count_sent(500, Some(1200));
        assert_eq!((s.datagrams_sent, s.bytes_sent), (6, 5200));
    }
}
