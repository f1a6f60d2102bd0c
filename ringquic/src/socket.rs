//! Sockets made with the options ringquic needs, and adopted sockets checked (seed point 6).
//!
//! The seed's Windows POC needed `WSA_FLAG_REGISTERED_IO` at creation time and asked whether the
//! library should make every socket itself. ringquic does both: [`create`] makes a socket with
//! everything set, and [`adopt`] takes an application's `std::net::UdpSocket`, checks that it is a
//! bound UDP socket and sets the options on it; if one cannot be set, the error names it.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::EndpointError;

/// Make a non-blocking UDP socket bound to `addr`. An IPv6 wildcard address is dual-stack
/// (`IPV6_V6ONLY` off) so IPv4 peers reach it too.
///
/// On Windows the socket is made with `WSA_FLAG_REGISTERED_IO` (`registered`), so the RIO
/// backend can use it; the poll backend serves such a socket just as well.
pub(crate) fn create(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    create_with(addr, |_| Ok(()))
}

/// [`create`], with `prepare` run on the socket before it is bound.
fn create_with(
    addr: SocketAddr,
    prepare: impl FnOnce(&Socket) -> Result<(), EndpointError>,
) -> Result<std::net::UdpSocket, EndpointError> {
    let bind_err = |source| EndpointError::Bind { addr, source };
    #[cfg(windows)]
    let socket = registered(Domain::for_address(addr), Type::DGRAM, Protocol::UDP).map_err(bind_err)?;
    #[cfg(not(windows))]
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    if addr.is_ipv6() {
        // Dual-stack only for the wildcard: a specific IPv6 address cannot receive IPv4 anyway.
        let only_v6 = !addr.ip().is_unspecified();
        socket
            .set_only_v6(only_v6)
            .map_err(|source| EndpointError::Socket {
                option: "IPV6_V6ONLY",
                source,
            })?;
    }
    prepare(&socket)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    let socket: std::net::UdpSocket = socket.into();
    adopt(&socket)?;
    Ok(socket)
}

/// `n` sockets on `addr` in one `SO_REUSEPORT` group, bound in order (a sharded endpoint, shard
/// `i` on socket `i`): the first binds `addr` (picking the port if it is 0), the others the
/// address it got.
#[cfg(target_os = "linux")]
pub(crate) fn create_group(addr: SocketAddr, n: usize) -> Result<Vec<std::net::UdpSocket>, EndpointError> {
    let mut out: Vec<std::net::UdpSocket> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = match out.first() {
            Some(first) => first.local_addr().map_err(|source| EndpointError::Socket {
                option: "getsockname",
                source,
            })?,
            None => addr,
        };
        out.push(create_with(at, |s| {
            s.set_reuse_port(true).map_err(|source| EndpointError::Socket {
                option: "SO_REUSEPORT",
                source,
            })
        })?);
    }
    Ok(out)
}

/// Elsewhere a sharded endpoint is refused (the kernel steering is Linux's).
#[cfg(not(target_os = "linux"))]
pub(crate) fn create_group(_addr: SocketAddr, _n: usize) -> Result<Vec<std::net::UdpSocket>, EndpointError> {
    Err(EndpointError::Config(
        "shards(n > 1) needs Linux (SO_REUSEPORT steering by connection ID)",
    ))
}

/// `Socket::new`, but created with `WSASocketW(..., WSA_FLAG_OVERLAPPED |
/// WSA_FLAG_REGISTERED_IO)` (seed point 6): RIO request queues can only be created on sockets
/// that carry the flag from birth. The system call lives in `io::rio` (this file has no unsafe
/// code).
#[cfg(windows)]
fn registered(domain: Domain, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    crate::io::rio::registered_socket(domain, ty, protocol)
}

/// Check that an application-supplied socket can serve an endpoint, and make it non-blocking.
///
/// On Windows an adopted socket may lack `WSA_FLAG_REGISTERED_IO`, and there is no cheap way to
/// ask a socket for its creation flags, so it is not checked here: RIO setup on it then fails
/// (at `RIOCreateRequestQueue`) before anything is posted, and the endpoint falls back to the
/// poll backend (logged once), or fails with `BackendUnavailable` if RIO was asked for
/// explicitly. To get RIO on an adopted socket, create it with `WSASocketW(AF_INET[6],
/// SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_REGISTERED_IO)`.
pub(crate) fn adopt(socket: &std::net::UdpSocket) -> Result<SocketAddr, EndpointError> {
    let sock = SockRef::from(socket);
    let ty = sock.r#type().map_err(|source| EndpointError::Socket {
        option: "SO_TYPE",
        source,
    })?;
    if ty != Type::DGRAM {
        return Err(EndpointError::Socket {
            option: "SO_TYPE",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a datagram socket"),
        });
    }
    let not_bound = || EndpointError::Socket {
        option: "bind",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket is not bound: bind it before handing it to ringquic",
        ),
    };
    let local = match socket.local_addr() {
        Ok(a) => a,
        // Windows answers getsockname on an unbound socket with WSAEINVAL.
        #[cfg(windows)]
        Err(e) if e.raw_os_error() == Some(10022) => return Err(not_bound()),
        Err(source) => {
            return Err(EndpointError::Socket {
                option: "getsockname",
                source,
            })
        }
    };
    if local.port() == 0 {
        return Err(not_bound());
    }
    socket
        .set_nonblocking(true)
        .map_err(|source| EndpointError::Socket {
            option: "O_NONBLOCK",
            source,
        })?;
    // Bigger kernel buffers absorb bursts between two turns of the I/O loop. Best effort: the
    // kernel caps them at net.core.{r,w}mem_max and a smaller buffer only costs speed.
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_v4_and_dual_stack() {
        let s = create("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(s.local_addr().unwrap().port(), 0);
        let s6 = create("[::]:0".parse().unwrap()).unwrap();
        // Wine answers IPV6_V6ONLY with one byte, which socket2 rejects; check on the others.
        #[cfg(not(windows))]
        assert!(!SockRef::from(&s6).only_v6().unwrap());
        assert!(s6.local_addr().unwrap().is_ipv6());
    }

    #[test]
    fn unbound_socket_is_refused_with_a_reason() {
        let raw = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let std_sock: std::net::UdpSocket = raw.into();
        let err = adopt(&std_sock).unwrap_err();
        assert!(err.to_string().contains("not bound"), "{err}");
    }

    #[test]
    fn stream_socket_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock: Socket = listener.into();
        let fake: std::net::UdpSocket = sock.into();
        let err = adopt(&fake).unwrap_err();
        assert!(err.to_string().contains("SO_TYPE"), "{err}");
    }

    #[test]
    fn bind_conflict_is_a_bind_error() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = create(a.local_addr().unwrap()).unwrap_err();
        assert!(matches!(err, EndpointError::Bind { .. }), "{err}");
    }
}
