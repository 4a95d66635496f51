//! Socket creation shared by the server and the prober: dual-stack binding, and recognising a
//! kernel that lacks a protocol.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

/// IPPROTO_SCTP.
pub const IPPROTO_SCTP: i32 = 132;

/// errno values meaning "this kernel (or namespace) cannot do that protocol or family".
const PROTOCOL_UNAVAILABLE: [i32; 4] = [
    93, // EPROTONOSUPPORT
    94, // ESOCKTNOSUPPORT
    96, // EPFNOSUPPORT
    97, // EAFNOSUPPORT
];

pub fn is_protocol_unavailable(error: &io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| PROTOCOL_UNAVAILABLE.contains(&code))
}

/// A socket bound to `port` on every address: `[::]` accepting IPv4 too when the kernel has IPv6,
/// `0.0.0.0` otherwise.
pub fn bind_any(kind: Type, protocol: Option<SockProtocol>, port: u16) -> io::Result<Socket> {
    let dual = Socket::new(Domain::IPV6, kind, protocol).and_then(|socket| {
        socket.set_only_v6(false)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(SocketAddr::from((
            Ipv6Addr::UNSPECIFIED,
            port,
        ))))?;
        Ok(socket)
    });
    match dual {
        Ok(socket) => Ok(socket),
        // IPv6 disabled on this node: IPv4 only. A missing protocol fails the same way for v4.
        Err(e) if e.raw_os_error() == Some(97) => {
            let socket = Socket::new(Domain::IPV4, kind, protocol)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SockAddr::from(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))))?;
            Ok(socket)
        }
        Err(e) => Err(e),
    }
}

/// A stream socket for `protocol` (TCP or SCTP) of the address family of `target`.
pub fn stream_socket(target: &SocketAddr, protocol: SockProtocol) -> io::Result<Socket> {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    Socket::new(domain, Type::STREAM, Some(protocol))
}
