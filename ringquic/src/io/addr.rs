//! Socket addresses between the kernel's view and quinn-proto's: a dual-stack IPv6 socket
//! reports IPv4 peers as v4-mapped IPv6 addresses, quinn-proto wants them as IPv4, and sends
//! must name the destination in the socket's own family. Shared by the poll and RIO backends
//! (io_uring has its own in `cmsg.rs`, in kernel layout).

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

/// IPv4 peers on a dual-stack socket are reported as IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// An IPv4-mapped IPv6 address as IPv4; any other unchanged.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The destination to give the socket: v4-mapped on an IPv6 socket, plain IPv4 on an IPv4
/// socket; `None` if an IPv4 socket is asked to reach a real IPv6 address.
pub(crate) fn addr_for_socket(addr: SocketAddr, socket_is_v6: bool) -> Option<SocketAddr> {
    match addr {
        SocketAddr::V4(v4) if socket_is_v6 => Some(SocketAddr::V6(SocketAddrV6::new(
            v4.ip().to_ipv6_mapped(),
            v4.port(),
            0,
            0,
        ))),
        SocketAddr::V6(_) if !socket_is_v6 => Some(canonical(addr)).filter(SocketAddr::is_ipv4),
        _ => Some(addr),
    }
}

/// The source address to ask for, in the socket's family (`None` when it cannot be).
pub(crate) fn ip_for_socket(ip: IpAddr, socket_is_v6: bool) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if socket_is_v6 => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) if !socket_is_v6 => Some(canonical_ip(ip)).filter(IpAddr::is_ipv4),
        _ => Some(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_socket_family() {
        let v4: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let mapped = addr_for_socket(v4, true).unwrap();
        assert_eq!(mapped.ip().to_string(), "::ffff:192.0.2.1");
        assert_eq!(addr_for_socket(mapped, false), Some(v4));
        assert_eq!(addr_for_socket(v4, false), Some(v4));
        assert_eq!(addr_for_socket("[::1]:5".parse().unwrap(), false), None);
        assert_eq!(
            ip_for_socket("192.0.2.1".parse().unwrap(), true),
            Some("::ffff:192.0.2.1".parse().unwrap())
        );
        assert_eq!(ip_for_socket("::1".parse().unwrap(), false), None);
    }

    #[test]
    fn canonical_forms() {
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:443".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        assert_eq!(addr_for_socket(v6, true), Some(v6));
        assert_eq!(canonical_ip(mapped.ip()), v4.ip());
    }
}
