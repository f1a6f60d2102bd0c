//! Control messages and socket addresses in their kernel byte layout: GSO (`UDP_SEGMENT`), GRO
//! (`UDP_GRO`), ECN (`IP_TOS`/`IPV6_TCLASS`) and packet info (`IP_PKTINFO`/`IPV6_PKTINFO`).
//!
//! Parsing works on plain byte slices handed back by the kernel (the io_uring `recvmsg`
//! completion buffer) and never trusts a length it reads: a malformed control message ends the
//! walk instead of reading out of bounds, so this is safe code and a fuzz target.
//! Written by hand because `quinn-udp` keeps its cmsg helpers private and `libc`'s `CMSG_*`
//! macros need raw pointers into a `msghdr`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use quinn_proto::EcnCodepoint;

use crate::EndpointError;

/// `sizeof(struct cmsghdr)` and the alignment of control messages on Linux.
const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
const ALIGN: usize = std::mem::size_of::<usize>();

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Space one control message with `data` payload bytes takes (`CMSG_SPACE`).
pub(crate) const fn space(data: usize) -> usize {
    align(HDR) + align(data)
}

/// What the control messages of one received datagram said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvCmsgs {
    /// ECN bits of the IP header.
    pub ecn: Option<EcnCodepoint>,
    /// The destination address of the datagram (our local address).
    pub dst_ip: Option<IpAddr>,
    /// `UDP_GRO`: the payload holds datagrams of this size (the last one may be shorter).
    pub segment_size: Option<usize>,
}

/// Walk a control buffer. Unknown messages are skipped; a truncated or malformed one ends the
/// walk.
pub(crate) fn parse(control: &[u8]) -> RecvCmsgs {
    let mut out = RecvCmsgs::default();
    let mut off = 0usize;
    while off + HDR <= control.len() {
        let len = usize::from_ne_bytes(control[off..off + ALIGN].try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(
            control[off + ALIGN..off + ALIGN + 4]
                .try_into()
                .unwrap_or_default(),
        );
        let ty = i32::from_ne_bytes(
            control[off + ALIGN + 4..off + ALIGN + 8]
                .try_into()
                .unwrap_or_default(),
        );
        // `off + HDR <= control.len()` holds here, so the subtraction cannot underflow, and
        // comparing this way cannot overflow whatever length the buffer claims.
        if len < HDR || len > control.len() - off {
            break;
        }
        let data = &control[off + align(HDR)..off + len];
        match (level, ty) {
            (libc::IPPROTO_IP, libc::IP_TOS) => {
                if let Some(&tos) = data.first() {
                    out.ecn = EcnCodepoint::from_bits(tos & 0b11);
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                if let Some(v) = read_i32(data) {
                    out.ecn = EcnCodepoint::from_bits((v & 0b11) as u8);
                }
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                let addr = data.get(8..12).and_then(|a| <[u8; 4]>::try_from(a).ok());
                out.dst_ip = addr.map(|a| IpAddr::V4(Ipv4Addr::from(a))).or(out.dst_ip);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // struct in6_pktinfo { in6_addr addr; int ifindex; }
                let addr = data.get(..16).and_then(|a| <[u8; 16]>::try_from(a).ok());
                out.dst_ip = addr
                    .map(|a| IpAddr::V6(Ipv6Addr::from(a)).to_canonical())
                    .or(out.dst_ip);
            }
            (libc::SOL_UDP, libc::UDP_GRO) => {
                if let Some(v) = read_i32(data) {
                    if v > 0 {
                        out.segment_size = Some(v as usize);
                    }
                }
            }
            _ => {}
        }
        off += align(len);
    }
    out
}

fn read_i32(data: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

/// Control messages for one `sendmsg`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SendCmsgs {
    /// GSO segment size, when the buffer holds more than one datagram.
    pub segment_size: Option<u16>,
    pub ecn: Option<EcnCodepoint>,
    pub src_ip: Option<IpAddr>,
}

/// Largest encoding [`encode`] produces.
pub(crate) const SEND_SPACE: usize = space(2) + space(4) + space(20);

/// Write the control messages for a datagram to `dst` into `buf`; returns the length used.
/// IPv4 destinations (also as v4-mapped addresses on a dual-stack socket) use the `IPPROTO_IP`
/// messages, IPv6 destinations the `IPPROTO_IPV6` ones, which is what the kernel reads for each.
pub(crate) fn encode(buf: &mut [u8; SEND_SPACE], dst_is_v4: bool, c: &SendCmsgs) -> usize {
    let mut off = 0;
    let mut put = |level: i32, ty: i32, data: &[u8]| {
        let len = align(HDR) + data.len();
        buf[off..off + ALIGN].copy_from_slice(&len.to_ne_bytes());
        buf[off + ALIGN..off + ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
        buf[off + ALIGN + 4..off + ALIGN + 8].copy_from_slice(&ty.to_ne_bytes());
        let d = off + align(HDR);
        buf[d..d + data.len()].copy_from_slice(data);
        buf[d + data.len()..off + space(data.len())].fill(0);
        off += space(data.len());
    };
    if let Some(seg) = c.segment_size {
        put(libc::SOL_UDP, libc::UDP_SEGMENT, &seg.to_ne_bytes());
    }
    if let Some(ecn) = c.ecn {
        let tos = ecn as u8 as i32;
        if dst_is_v4 {
            put(libc::IPPROTO_IP, libc::IP_TOS, &tos.to_ne_bytes());
        } else {
            put(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &tos.to_ne_bytes());
        }
    }
    match c.src_ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(ip)) if dst_is_v4 => {
            let mut info = [0u8; 12];
            info[4..8].copy_from_slice(&ip.octets()); // ipi_spec_dst
            put(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        }
        Some(IpAddr::V6(ip)) if !dst_is_v4 => {
            let mut info = [0u8; 20];
            info[..16].copy_from_slice(&ip.octets());
            put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
        }
        _ => {}
    }
    off
}

/// Decode a `sockaddr_in`/`sockaddr_in6` as the kernel wrote it. v4-mapped IPv6 addresses come
/// back as IPv4, so a dual-stack socket reports IPv4 peers the way an IPv4 socket would.
pub(crate) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            let ip = Ipv6Addr::from(ip);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)),
            })
        }
        _ => None,
    }
}

/// Where a destination goes on the wire from a socket of the given family: IPv4 destinations are
/// v4-mapped on an IPv6 socket.
pub(crate) fn wire_addr(dst: SocketAddr, socket_is_v6: bool) -> SocketAddr {
    match dst {
        SocketAddr::V4(v4) if socket_is_v6 => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => other,
    }
}

/// Socket features the io_uring backend turned on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinuxFeatures {
    /// `UDP_GRO` is on: received datagrams may arrive coalesced, split by segment size.
    pub gro: bool,
    /// Datagrams one GSO send may carry (1: no GSO).
    pub gso_segments: usize,
}

/// A socket option set to an integer: level, name, value, and the name an error reports.
type IntOption = (libc::c_int, libc::c_int, libc::c_int, &'static str);

/// What QUIC needs of an IPv4 socket: ECN and packet-info control messages, no fragmentation
/// (path MTU discovery).
#[rustfmt::skip]
const IPV4_OPTIONS: [IntOption; 3] = [
    (libc::IPPROTO_IP, libc::IP_RECVTOS, 1, "IP_RECVTOS"),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO"),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE, "IP_MTU_DISCOVER"),
];

/// The same for IPv6.
#[rustfmt::skip]
const IPV6_OPTIONS: [IntOption; 3] = [
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS"),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO"),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_PROBE, "IPV6_MTU_DISCOVER"),
];

/// Set the options the io_uring backend relies on: [`IPV4_OPTIONS`] or [`IPV6_OPTIONS`] by the
/// socket's family, and GRO when `want_gro`. Options QUIC cannot work without make the call
/// fail with the option's name; GRO and GSO are probed and degrade.
pub(crate) fn configure_socket(
    socket: &std::net::UdpSocket,
    want_gro: bool,
) -> Result<LinuxFeatures, EndpointError> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let local = socket.local_addr().map_err(|source| EndpointError::Socket {
        option: "getsockname",
        source,
    })?;
    let set = |&(level, name, value, option): &IntOption| {
        setsockopt_int(fd, level, name, value).map_err(|source| (option, source))
    };
    let family = if local.is_ipv4() {
        &IPV4_OPTIONS
    } else {
        &IPV6_OPTIONS
    };
    family
        .iter()
        .try_for_each(set)
        .map_err(|(option, source)| EndpointError::Socket { option, source })?;
    if local.is_ipv6() {
        // A dual-stack socket also carries IPv4: ask for its control messages too. These fail on
        // an IPv6-only socket, which never sees IPv4, so failure is fine.
        for o in &IPV4_OPTIONS {
            let _ = set(o);
        }
    }
    let on: libc::c_int = 1;
    let gro = want_gro && setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, on).is_ok();
    // Probe GSO the way quinn-udp does: setting UDP_SEGMENT succeeds where it is supported.
    let gso_segments = if setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 1500).is_ok() {
        let _ = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0);
        64 // the kernel's UDP_MAX_SEGMENTS
    } else {
        1
    };
    Ok(LinuxFeatures { gro, gso_segments })
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a `c_int` points to no other memory.
    unsafe { setsockopt_value(fd, level, name, &value) }
}

/// `setsockopt` with the bytes of `value` as the option.
///
/// # Safety
///
/// Memory `value` points to (a `sock_fprog`'s instructions) must stay valid for reads for the
/// whole call. A plain value (a `c_int`) points to nothing and needs no care.
pub(crate) unsafe fn setsockopt_value<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` for the duration of the call and its size is passed; the
    // kernel only reads (copies) it and, per the caller, what it points to. `fd` is a socket
    // the caller keeps open across the call (a bad one is `EBADF`, not undefined behaviour).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips_what_both_sides_know() {
        let mut buf = [0u8; SEND_SPACE];
        let n = encode(
            &mut buf,
            true,
            &SendCmsgs {
                segment_size: Some(1200),
                ecn: Some(EcnCodepoint::Ect0),
                src_ip: Some("127.0.0.2".parse().unwrap()),
            },
        );
        assert!(n <= SEND_SPACE);
        // The parser reads ECN from IP_TOS; the others are send-side only.
        let p = parse(&buf[..n]);
        assert_eq!(p.ecn, Some(EcnCodepoint::Ect0));
    }

    #[test]
    fn malformed_control_data_is_not_trusted() {
        // Length field says 1000 bytes in a 24-byte buffer.
        let mut buf = [0u8; 24];
        buf[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(parse(&buf), RecvCmsgs::default());
        // Length smaller than the header.
        buf[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(parse(&buf), RecvCmsgs::default());
        assert_eq!(parse(&[]), RecvCmsgs::default());
        assert_eq!(parse(&[1, 2, 3]), RecvCmsgs::default());
    }

    #[test]
    fn a_huge_length_field_does_not_overflow() {
        // Found by the cmsg_parse fuzz target: cmsg_len = usize::MAX.
        let mut buf = [0u8; 32];
        buf[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(parse(&buf), RecvCmsgs::default());
        buf[..8].copy_from_slice(&(usize::MAX - 3).to_ne_bytes());
        assert_eq!(parse(&buf), RecvCmsgs::default());
    }

    #[test]
    fn sockaddr_parsing() {
        let v4 = socket2::SockAddr::from("10.1.2.3:443".parse::<SocketAddr>().unwrap());
        let bytes = sockaddr_bytes(&v4);
        assert_eq!(parse_sockaddr(&bytes), Some("10.1.2.3:443".parse().unwrap()));
        let mapped = socket2::SockAddr::from(wire_addr("10.1.2.3:443".parse().unwrap(), true));
        assert_eq!(
            parse_sockaddr(&sockaddr_bytes(&mapped)),
            Some("10.1.2.3:443".parse().unwrap())
        );
        let v6 = socket2::SockAddr::from("[::1]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(
            parse_sockaddr(&sockaddr_bytes(&v6)),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_sockaddr(&[0, 0]), None);
        assert_eq!(parse_sockaddr(&[]), None);
    }

    fn sockaddr_bytes(a: &socket2::SockAddr) -> Vec<u8> {
        // The kernel layout of sockaddr_in / sockaddr_in6, written field by field.
        let mut out = vec![0u8; a.len() as usize];
        let family = if a.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u16;
        out[..2].copy_from_slice(&family.to_ne_bytes());
        match a.as_socket() {
            Some(SocketAddr::V4(v4)) => {
                out[2..4].copy_from_slice(&v4.port().to_be_bytes());
                out[4..8].copy_from_slice(&v4.ip().octets());
            }
            Some(SocketAddr::V6(v6)) => {
                out[2..4].copy_from_slice(&v6.port().to_be_bytes());
                out[8..24].copy_from_slice(&v6.ip().octets());
            }
            None => {}
        }
        out
    }
}
