//! What an ICMP error said. A refusal by ICMP reaches a socket as an errno, and the errno loses
//! what polygraph needs: IPv4's "communication administratively prohibited" (type 3, code 13) and
//! "host unreachable" (code 1) are both EHOSTUNREACH. A firewall that answers a denied packet with
//! an administratively-prohibited error (Cilium's `policyDenyResponse: icmp`) is a third kind of
//! "no", `filtered`, which a cluster policy's Deny (silence required) must not give. With
//! IP_RECVERR (IPV6_RECVERR) set, the kernel also queues the ICMP error itself, type and code, on
//! the socket's error queue, where this module reads it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// `SO_EE_ORIGIN_ICMP` and `SO_EE_ORIGIN_ICMP6`.
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;
/// ICMP destination unreachable: codes 9 (network administratively prohibited), 10 (host
/// administratively prohibited), 13 (communication administratively prohibited, RFC 1812).
const ICMP_UNREACH: u8 = 3;
const ICMP_PROHIBITED: [u8; 3] = [9, 10, 13];
/// ICMPv6 destination unreachable, code 1: communication administratively prohibited.
const ICMP6_UNREACH: u8 = 1;
const ICMP6_PROHIBITED: u8 = 1;

/// Asks the kernel to queue ICMP errors on `socket` (of the family `ipv6` says). Best effort: a
/// socket without it still classifies by errno, as before.
pub(crate) fn queue_errors(socket: &impl AsFd, ipv6: bool) {
    let _ = if ipv6 {
        setsockopt(socket, sockopt::Ipv6RecvErr, &true)
    } else {
        setsockopt(socket, sockopt::Ipv4RecvErr, &true)
    };
}

/// A second handle on `socket`, with ICMP errors queued: the error queue outlives a connect that
/// consumed (and closed) the first.
pub(crate) fn watch(socket: &impl AsFd, ipv6: bool) -> Option<OwnedFd> {
    queue_errors(socket, ipv6);
    socket.as_fd().try_clone_to_owned().ok()
}

/// Whether the oldest queued ICMP error of `socket` is an administratively-prohibited
/// destination unreachable, and what it was. Never blocks.
pub(crate) fn prohibited(socket: &impl AsFd) -> Option<String> {
    let mut data = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    let message = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    for cmsg in message.cmsgs().ok()? {
        match cmsg {
            ControlMessageOwned::Ipv4RecvErr(err, _)
                if err.ee_origin == ORIGIN_ICMP
                    && err.ee_type == ICMP_UNREACH
                    && ICMP_PROHIBITED.contains(&err.ee_code) =>
            {
                return Some(format!(
                    "ICMP destination unreachable, administratively prohibited (code {})",
                    err.ee_code
                ));
            }
            ControlMessageOwned::Ipv6RecvErr(err, _)
                if err.ee_origin == ORIGIN_ICMP6
                    && err.ee_type == ICMP6_UNREACH
                    && err.ee_code == ICMP6_PROHIBITED =>
            {
                return Some(
                    "ICMPv6 destination unreachable, administratively prohibited".to_string(),
                );
            }
            _ => {}
        }
    }
    None
}
