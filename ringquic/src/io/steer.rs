//! Steering in the kernel (Linux): a classic BPF program on an `SO_REUSEPORT` group of UDP
//! sockets that picks, for each datagram, the socket its QUIC destination connection ID names.
//!
//! The group is several sockets bound to one address, one per endpoint (shard). Each endpoint
//! issues connection IDs with its shard number at a fixed offset: a `QuicLbCidGenerator` for
//! that shard (`QuicLbConfig::shard_offset`). The program reads that octet, short header or
//! long, and returns it modulo the number of shards as the index of the socket in the group.
//! So every packet of a connection reaches the endpoint that holds it, whatever the client's
//! address: a client that migrates or is rebound by a NAT keeps its connection. Hashing the
//! 4-tuple, which the kernel does without a program, would send it to another socket.
//!
//! A client's first Initial packets carry a DCID the client chose at random, so their shard
//! octet is random too: new connections spread evenly over the shards. Each is then served by
//! the shard that received it, which names itself in the CIDs it issues. A datagram too short
//! to hold the octet (or a long header whose DCID is) gets an out-of-range answer, which makes
//! the kernel fall back to its 4-tuple hash.
//!
//! The index is the socket's place in the group, in the order the sockets were bound; closing
//! one reorders the rest. So bind the shards' sockets in shard order and keep them all open
//! while the program is attached.
//!
//! Hand-written: no crate builds reuseport programs for QUIC; `setsockopt` through libc, as
//! socket2 has no call for `SO_ATTACH_REUSEPORT_CBPF`.

use std::{io, os::fd::AsRawFd};

use libc::sock_filter;

use super::cmsg::setsockopt_value;

/// Offsets in a QUIC packet (RFC 8999): a short header's DCID starts right after the first
/// octet; a long header has the version (4 octets) and the DCID length (1) first.
const SHORT_DCID: u32 = 1;
const LONG_DCID_LEN: u32 = 5;
const LONG_DCID: u32 = 6;

/// The answer that makes the kernel choose by its 4-tuple hash (any index past the group).
const BY_HASH: u32 = u32::MAX;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program: socket index = DCID octet `shard_offset` modulo `shards`.
pub(crate) fn program(shard_offset: u32, shards: u32) -> Vec<sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JGT, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LEN, BPF_MOD,
        BPF_RET, BPF_W,
    };
    let k = shard_offset;
    vec![
        // Jumps count instructions after the next one: `jt`/`jf` 4 from 1 lands on 6.
        // 0: A = first octet; the header form bit chooses the layout (long: 6).
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        jump(BPF_JMP | BPF_JSET | BPF_K, 0x80, 4, 0),
        // 2: short header: the octet is at 1 + k, if the datagram is that long (else 13).
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        jump(BPF_JMP | BPF_JGT | BPF_K, SHORT_DCID + k, 0, 9),
        stmt(BPF_LD | BPF_B | BPF_ABS, SHORT_DCID + k),
        jump(BPF_JMP | BPF_JA, 5, 0, 0),
        // 5 jumps to 11. 6: long header: the DCID must be longer than k, and the datagram hold
        // it (else 13).
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        jump(BPF_JMP | BPF_JGT | BPF_K, LONG_DCID + k, 0, 5),
        stmt(BPF_LD | BPF_B | BPF_ABS, LONG_DCID_LEN),
        jump(BPF_JMP | BPF_JGT | BPF_K, k, 0, 3),
        // 10: A = the shard octet (long header)
        stmt(BPF_LD | BPF_B | BPF_ABS, LONG_DCID + k),
        // 11: index = A mod shards
        stmt(BPF_ALU | BPF_MOD | BPF_K, shards),
        stmt(BPF_RET | BPF_A, 0),
        // 13: let the kernel hash
        stmt(BPF_RET | BPF_K, BY_HASH),
    ]
}

/// Attach the steering program to the `SO_REUSEPORT` group `socket` belongs to: each datagram
/// to the group goes to the socket whose index the shard octet at `shard_offset` of its
/// destination connection ID names, modulo `shards` (see the module docs for the order of the
/// group and what happens to datagrams the program cannot place).
///
/// Fails with the kernel's error: `EINVAL` if `socket` is not in a reuseport group (or the
/// kernel predates `SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5), `EPERM` where a security policy
/// forbids it; and with `InvalidInput` for 0 shards, more than 256, or an offset past QUIC's
/// 20-octet connection IDs.
pub fn steer_by_shard(socket: &impl AsRawFd, shard_offset: usize, shards: usize) -> io::Result<()> {
    if shards == 0 || shards > 256 || shard_offset >= 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot steer by octet {shard_offset} of the DCID over {shards} shards"),
        ));
    }
    let mut filter = program(shard_offset as u32, shards as u32);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, a live vector of `prog.len` instructions, for the
    // whole call; the kernel copies the program during `setsockopt` and keeps no pointer to
    // our memory.
    unsafe {
        setsockopt_value(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &prog,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Duration};

    use socket2::{Domain, Protocol, Socket, Type};

    use super::*;

    /// `n` sockets in one reuseport group on a fresh loopback port, in index order.
    fn group(n: usize) -> Vec<UdpSocket> {
        let mut out: Vec<UdpSocket> = Vec::new();
        for _ in 0..n {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            let addr = match out.first() {
                Some(first) => first.local_addr().unwrap(),
                None => "127.0.0.1:0".parse().unwrap(),
            };
            s.bind(&addr.into()).unwrap();
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            out.push(s);
        }
        out
    }

    /// Which socket of `group` got `datagram` (sent from a fresh socket each time, so that
    /// the kernel's 4-tuple hash varies).
    fn lands_on(group: &[UdpSocket], datagram: &[u8]) -> usize {
        let from = UdpSocket::bind("127.0.0.1:0").unwrap();
        from.send_to(datagram, group[0].local_addr().unwrap()).unwrap();
        for _ in 0..25 {
            for (i, s) in group.iter().enumerate() {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(&buf[..n], datagram);
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(4));
        }
        panic!("the datagram arrived nowhere");
    }

    fn short(dcid: &[u8]) -> Vec<u8> {
        let mut d = vec![0x40];
        d.extend_from_slice(dcid);
        d.extend_from_slice(&[0u8; 20]);
        d
    }

    fn long(dcid: &[u8]) -> Vec<u8> {
        let mut d = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        d.extend_from_slice(dcid);
        d.extend_from_slice(&[0, 0, 0]);
        d
    }

    #[test]
    fn every_datagram_goes_to_the_socket_its_dcid_names() {
        let g = group(4);
        // Shard octet at offset 3 of the DCID (first octet, 2-octet server ID).
        steer_by_shard(&g[2], 3, 4).unwrap();
        for shard in 0..8u8 {
            let dcid = [0x21, 0x5a, 0x17, shard, 9, 9, 9, 9, 9, 9];
            let want = usize::from(shard) % 4;
            for _ in 0..3 {
                assert_eq!(lands_on(&g, &short(&dcid)), want, "short header, shard {shard}");
                assert_eq!(lands_on(&g, &long(&dcid)), want, "long header, shard {shard}");
            }
        }
    }

    #[test]
    fn datagrams_without_the_octet_fall_back_to_the_hash() {
        let g = group(4);
        steer_by_shard(&g[0], 3, 4).unwrap();
        // A long header whose DCID is too short for the octet, and a datagram too short for
        // it: without the fallback the program would fail and answer socket 0 every time.
        let mut seen = [0usize; 4];
        for _ in 0..40 {
            seen[lands_on(&g, &long(&[3, 3, 3]))] += 1;
            seen[lands_on(&g, &[0x40, 3, 3])] += 1;
        }
        assert!(seen.iter().filter(|&&n| n > 0).count() >= 2, "{seen:?}");
    }

    #[test]
    fn refuses_what_it_cannot_steer() {
        let g = group(1);
        for (offset, shards) in [(3, 0), (3, 257), (20, 4)] {
            let e = steer_by_shard(&g[0], offset, shards).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{offset} {shards}");
        }
        // Not in a reuseport group: the kernel refuses.
        let lone = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(steer_by_shard(&lone, 3, 4).is_err());
    }
}
