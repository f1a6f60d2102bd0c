//! Sends from the application's own thread (Linux): a second handle on the endpoint's socket
//! that a task which has just written to a stream uses to send what quinn-proto built, instead
//! of waking the I/O thread to do it (`crate::direct` decides when).
//!
//! One `sendmsg` per batch, with the same control messages the io_uring backend writes (GSO
//! segment size, ECN, source address): written with socket2's safe `sendmsg`, so no `unsafe`
//! here. The socket is a `dup` of the backend's, so it is the same socket in the kernel (same
//! port, same options); a rebind gives the endpoint a new sender for the new socket. Nothing is
//! queued: a send the kernel refuses (a full socket buffer) is a lost datagram, counted, which
//! QUIC's loss recovery repairs as it repairs any loss. An error that is not a full buffer turns
//! the direct path off for the endpoint (logged once): the I/O thread, which degrades GSO and
//! counts its own errors, sends everything from then on.

use std::{
    io::{self, IoSlice},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use quinn_proto::Transmit;
use socket2::{MsgHdr, SockAddr, SockRef, Socket};
use tracing::warn;

use super::cmsg::{self, SendCmsgs};

/// The application threads' sender for one socket of an endpoint.
#[derive(Debug)]
pub(crate) struct DirectSender {
    socket: Socket,
    socket_is_v6: bool,
    /// Datagrams one send may carry (GSO; 1 without it), as the I/O thread asks quinn-proto.
    max_segments: usize,
    disabled: AtomicBool,
    /// Batches the kernel took, their datagrams and bytes.
    sent: AtomicU64,
    datagrams: AtomicU64,
    bytes: AtomicU64,
    /// Batches refused (counted as lost datagrams).
    errors: AtomicU64,
}

/// What application threads sent through one or more senders.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectCounts {
    /// Sends the kernel took.
    pub batches: u64,
    /// Datagrams in them.
    pub datagrams: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Sends the kernel refused.
    pub errors: u64,
}

impl DirectCounts {
    /// Both counts together.
    pub(crate) fn add(self, o: Self) -> Self {
        Self {
            batches: self.batches + o.batches,
            datagrams: self.datagrams + o.datagrams,
            bytes: self.bytes + o.bytes,
            errors: self.errors + o.errors,
        }
    }

    /// Add these to an endpoint's counters: the sends to what the I/O thread sent (they are
    /// the endpoint's sends all the same), and on their own as `direct_sends`.
    pub(crate) fn add_to(self, before: Self, s: &mut crate::stats::EndpointIoStats) {
        let c = self.add(before);
        s.direct_sends = c.batches;
        s.direct_send_errors = c.errors;
        s.datagrams_sent += c.datagrams;
        s.bytes_sent += c.bytes;
    }
}

/// What [`DirectSender::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The kernel took the batch.
    Taken,
    /// Refused: the batch is lost (QUIC retransmits what it carried).
    Lost,
}

impl DirectSender {
    /// A sender on a duplicate of `socket`, whose GSO limit is `max_segments`.
    pub(crate) fn new(socket: SockRef<'_>, max_segments: usize) -> io::Result<Self> {
        let socket_is_v6 = socket.local_addr()?.is_ipv6();
        Ok(Self {
            socket: socket.try_clone()?,
            socket_is_v6,
            max_segments: max_segments.max(1),
            disabled: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Whether sends may go this way (an error other than a full buffer turned it off).
    pub(crate) fn usable(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
    }

    /// Datagrams quinn-proto may put in one batch for [`DirectSender::send`].
    pub(crate) fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// Send `buf[..t.size]` as `t` describes, without blocking.
    pub(crate) fn send(&self, buf: &[u8], t: &Transmit) -> Sent {
        let len = t.size.min(buf.len());
        let segment = t
            .segment_size
            .filter(|&s| s > 0 && s < len && self.max_segments > 1)
            .and_then(|s| u16::try_from(s).ok());
        let mut control = [0u8; cmsg::SEND_SPACE];
        let cm = SendCmsgs {
            segment_size: segment,
            ecn: t.ecn,
            src_ip: t.src_ip,
        };
        let clen = cmsg::encode(&mut control, t.destination.is_ipv4(), &cm);
        let dst = SockAddr::from(cmsg::wire_addr(t.destination, self.socket_is_v6));
        let iov = [IoSlice::new(&buf[..len])];
        let mut msg = MsgHdr::new().with_addr(&dst).with_buffers(&iov);
        if clen > 0 {
            msg = msg.with_control(&control[..clen]);
        }
        match self.socket.sendmsg(&msg, libc::MSG_DONTWAIT) {
            Ok(_) => {
                let datagrams = segment.map_or(1, |s| len.div_ceil(usize::from(s)));
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.datagrams.fetch_add(datagrams as u64, Ordering::Relaxed);
                self.bytes.fetch_add(len as u64, Ordering::Relaxed);
                Sent::Taken
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if e.kind() != io::ErrorKind::WouldBlock && !self.disabled.swap(true, Ordering::Relaxed) {
                    warn!(
                        "sending from the application's thread failed ({e}); the I/O thread sends \
                         everything from now on"
                    );
                }
                Sent::Lost
            }
        }
    }

    /// What this sender sent so far.
    pub(crate) fn counts(&self) -> DirectCounts {
        DirectCounts {
            batches: self.sent.load(Ordering::Relaxed),
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The local address of the socket this sender sends from.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::ErrorKind::InvalidData.into())
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    fn transmit(to: std::net::SocketAddr, size: usize, segment_size: Option<usize>) -> Transmit {
        Transmit {
            destination: to,
            ecn: None,
            size,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn sends_one_datagram_and_a_gso_batch_from_the_same_port() {
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let sender = DirectSender::new(SockRef::from(&ours), 8).unwrap();
        assert_eq!(sender.local_addr().unwrap(), ours.local_addr().unwrap());
        let to = peer.local_addr().unwrap();
        assert_eq!(sender.send(b"single", &transmit(to, 6, None)), Sent::Taken);
        let mut buf = [0u8; 2048];
        let (n, from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"single"[..], ours.local_addr().unwrap()));
        // Three datagrams of 100, 100 and 50 bytes in one send, where the kernel has GSO.
        let batch: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        assert_eq!(sender.send(&batch, &transmit(to, 250, Some(100))), Sent::Taken);
        let mut got = Vec::new();
        while got.len() < 250 {
            let (n, _) = peer.recv_from(&mut buf).unwrap();
            assert!(n == 100 || n == 250 || n == 50, "datagram of {n} bytes");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, batch);
        let c = sender.counts();
        assert_eq!((c.batches, c.datagrams, c.bytes, c.errors), (2, 4, 256, 0));
    }

    #[test]
    fn a_refused_send_is_counted_lost_and_turns_the_path_off() {
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = DirectSender::new(SockRef::from(&ours), 1).unwrap();
        // An IPv6 destination from an IPv4 socket: the kernel refuses it (not a full buffer).
        let v6: std::net::SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 9).into();
        assert_eq!(sender.send(b"x", &transmit(v6, 1, None)), Sent::Lost);
        assert!(!sender.usable());
        assert_eq!(
            sender.counts(),
            DirectCounts {
                errors: 1,
                ..DirectCounts::default()
            }
        );
    }
}
