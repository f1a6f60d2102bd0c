//! Control messages both ways.
//!
//! Receive side: an arbitrary set of messages (ECN via `IP_TOS` or `IPV6_TCLASS`, packet info
//! for IPv4 or IPv6, `UDP_GRO`, and unknown messages in between, in any order) is laid out in
//! the kernel's `cmsghdr` layout, then parsed: the ECN codepoint, the destination address and
//! the segment size come back exactly. Every truncation of that buffer parses to what the
//! messages wholly inside it say (a cut message is ignored, never misread).
//!
//! Send side: `encode` is asked for the GSO size, ECN and source address of a datagram and
//! must use exactly the space of the messages the kernel expects for the destination family.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
const ALIGN: usize = std::mem::size_of::<usize>();

const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

const fn space(data: usize) -> usize {
    align(HDR) + align(data)
}

#[derive(Debug, Arbitrary)]
enum EcnMsg {
    /// `IP_TOS`: one byte on receive (an int when sent, which the parser also takes).
    Tos { tos: u8, as_int: bool },
    /// `IPV6_TCLASS`: an int.
    TClass(i32),
}

#[derive(Debug, Arbitrary)]
enum PktInfo {
    /// `struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }`
    V4 {
        ifindex: i32,
        spec_dst: [u8; 4],
        addr: [u8; 4],
    },
    /// `struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }`
    V6 { addr: [u8; 16], ifindex: i32 },
}

#[derive(Debug, Arbitrary)]
struct Unknown {
    level: i32,
    ty: i32,
    data: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    ecn: Option<EcnMsg>,
    pktinfo: Option<PktInfo>,
    gro: Option<i32>,
    unknown: Vec<Unknown>,
    /// Where each known message goes among the unknown ones.
    order: [u8; 3],
    /// Where to cut the buffer for the truncation check.
    cut: u16,
    send: SendSide,
}

#[derive(Debug, Arbitrary)]
struct SendSide {
    segment_size: Option<u16>,
    ecn: u8,
    src_ip: Option<IpAddr>,
    dst_v4: bool,
}

type Parsed = (Option<u8>, Option<IpAddr>, Option<usize>);

/// One message: its kernel bytes and what it tells the parser.
struct Msg {
    level: i32,
    ty: i32,
    data: Vec<u8>,
    apply: fn(&mut Parsed, &[u8]),
}

fn known(level: i32, ty: i32) -> bool {
    matches!(
        (level, ty),
        (libc::IPPROTO_IP, libc::IP_TOS)
            | (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            | (libc::IPPROTO_IP, libc::IP_PKTINFO)
            | (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
            | (libc::SOL_UDP, libc::UDP_GRO)
    )
}

fn ecn_of(bits: u8) -> Option<u8> {
    Some(bits & 0b11).filter(|&b| b != 0)
}

fn i32_of(d: &[u8]) -> i32 {
    i32::from_ne_bytes(d[..4].try_into().unwrap())
}

fn messages(input: &Input) -> Vec<Msg> {
    let mut out: Vec<Msg> = input
        .unknown
        .iter()
        .take(8)
        .filter(|u| !known(u.level, u.ty))
        .map(|u| Msg {
            level: u.level,
            ty: u.ty,
            data: u.data.iter().copied().take(64).collect(),
            apply: |_, _| {},
        })
        .collect();
    let mut place = |slot: usize, m: Msg| {
        let at = input.order[slot] as usize % (out.len() + 1);
        out.insert(at, m);
    };
    match input.ecn {
        Some(EcnMsg::Tos { tos, as_int }) => place(
            0,
            Msg {
                level: libc::IPPROTO_IP,
                ty: libc::IP_TOS,
                data: if as_int {
                    i32::from(tos).to_ne_bytes().to_vec()
                } else {
                    vec![tos]
                },
                apply: |p, d| p.0 = ecn_of(d[0]),
            },
        ),
        Some(EcnMsg::TClass(v)) => place(
            0,
            Msg {
                level: libc::IPPROTO_IPV6,
                ty: libc::IPV6_TCLASS,
                data: v.to_ne_bytes().to_vec(),
                apply: |p, d| p.0 = ecn_of(i32_of(d) as u8),
            },
        ),
        None => {}
    }
    match input.pktinfo {
        Some(PktInfo::V4 {
            ifindex,
            spec_dst,
            addr,
        }) => {
            let mut data = ifindex.to_ne_bytes().to_vec();
            data.extend_from_slice(&spec_dst);
            data.extend_from_slice(&addr);
            place(
                1,
                Msg {
                    level: libc::IPPROTO_IP,
                    ty: libc::IP_PKTINFO,
                    data,
                    apply: |p, d| {
                        p.1 = Some(IpAddr::V4(Ipv4Addr::from(
                            <[u8; 4]>::try_from(&d[8..12]).unwrap(),
                        )))
                    },
                },
            )
        }
        Some(PktInfo::V6 { addr, ifindex }) => {
            let mut data = addr.to_vec();
            data.extend_from_slice(&ifindex.to_ne_bytes());
            place(
                1,
                Msg {
                    level: libc::IPPROTO_IPV6,
                    ty: libc::IPV6_PKTINFO,
                    data,
                    apply: |p, d| {
                        let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&d[..16]).unwrap());
                        p.1 = Some(IpAddr::V6(ip).to_canonical())
                    },
                },
            )
        }
        None => {}
    }
    if let Some(v) = input.gro {
        place(
            2,
            Msg {
                level: libc::SOL_UDP,
                ty: libc::UDP_GRO,
                data: v.to_ne_bytes().to_vec(),
                apply: |p, d| {
                    let v = i32_of(d);
                    if v > 0 {
                        p.2 = Some(v as usize)
                    }
                },
            },
        );
    }
    out
}

fuzz_target!(|input: Input| {
    // Receive side.
    let msgs = messages(&input);
    let mut buf = Vec::new();
    let mut ends = Vec::new(); // (offset + cmsg_len) of each message
    for m in &msgs {
        let len = align(HDR) + m.data.len();
        let off = buf.len();
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&m.level.to_ne_bytes());
        buf.extend_from_slice(&m.ty.to_ne_bytes());
        buf.resize(off + align(HDR), 0);
        buf.extend_from_slice(&m.data);
        buf.resize(off + space(m.data.len()), 0);
        ends.push(off + len);
    }
    let expect = |upto: usize| {
        let mut p: Parsed = (None, None, None);
        for (m, &end) in msgs.iter().zip(&ends) {
            if end > upto {
                break;
            }
            (m.apply)(&mut p, &m.data);
        }
        p
    };
    assert_eq!(
        ringquic::fuzzing::parse_cmsgs(&buf),
        expect(buf.len()),
        "{msgs_dbg:?}",
        msgs_dbg = input
    );
    let cut = input.cut as usize % (buf.len() + 1);
    assert_eq!(
        ringquic::fuzzing::parse_cmsgs(&buf[..cut]),
        expect(cut),
        "cut at {cut}: {input:?}"
    );

    // Send side.
    let s = &input.send;
    let n = ringquic::fuzzing::encode_cmsgs(s.segment_size, s.ecn, s.src_ip, s.dst_v4);
    let mut want = 0;
    if s.segment_size.is_some() {
        want += space(2); // UDP_SEGMENT: u16
    }
    if s.ecn & 0b11 != 0 {
        want += space(4); // IP_TOS / IPV6_TCLASS: int
    }
    match (s.src_ip.map(|ip| ip.to_canonical()), s.dst_v4) {
        (Some(IpAddr::V4(_)), true) => want += space(12), // in_pktinfo
        (Some(IpAddr::V6(_)), false) => want += space(20), // in6_pktinfo
        _ => {}
    }
    assert_eq!(n, want, "{s:?}");
});
