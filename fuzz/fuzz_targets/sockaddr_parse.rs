//! Raw bytes as a kernel `sockaddr_in`/`sockaddr_in6` (the peer address of a received datagram).
//!
//! Checks: never panics; `None` exactly when the family is unknown or the buffer is too short
//! for it; the port and address are read from the right offsets in the right byte order; a
//! v4-mapped IPv6 address comes back as IPv4; and parsing what the kernel would write for the
//! result gives the result again.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The kernel layout of an address, field by field.
fn kernel_bytes(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(v4) => {
            let mut out = vec![0u8; 16];
            out[..2].copy_from_slice(&AF_INET.to_ne_bytes());
            out[2..4].copy_from_slice(&v4.port().to_be_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
            out
        }
        SocketAddr::V6(v6) => {
            let mut out = vec![0u8; 28];
            out[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            out[2..4].copy_from_slice(&v6.port().to_be_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            out
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = ringquic::fuzzing::parse_sockaddr(data);
    let family = data.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
    let expected_some = match family {
        Some(AF_INET) => data.len() >= 8,
        Some(AF_INET6) => data.len() >= 28,
        _ => false,
    };
    assert_eq!(parsed.is_some(), expected_some, "{data:02x?} -> {parsed:?}");
    let Some(addr) = parsed else { return };
    assert_eq!(addr.port(), u16::from_be_bytes([data[2], data[3]]));
    match (family, addr.ip()) {
        (Some(AF_INET), IpAddr::V4(ip)) => assert_eq!(ip.octets(), data[4..8]),
        (Some(AF_INET6), IpAddr::V4(ip)) => {
            let raw = Ipv6Addr::from(<[u8; 16]>::try_from(&data[8..24]).unwrap());
            assert_eq!(
                raw.to_ipv4_mapped(),
                Some(ip),
                "only a v4-mapped address comes back as IPv4"
            );
        }
        (Some(AF_INET6), IpAddr::V6(ip)) => {
            assert_eq!(ip.octets(), data[8..24]);
            assert!(
                ip.to_ipv4_mapped().is_none(),
                "v4-mapped address {ip} not canonicalised"
            );
        }
        (f, ip) => panic!("family {f:?} gave {ip}"),
    }
    assert_eq!(ringquic::fuzzing::parse_sockaddr(&kernel_bytes(addr)), Some(addr));
});
