//! The local cluster's service proxy: what kube-proxy does in iptables or nftables mode, for the one
//! Service polygraph gives each pod.
//!
//! ```text
//! table inet polygraph-nat                    in the node namespace
//!   chain prerouting   hook prerouting, dstnat:  ClusterIP + served port → the pod (DNAT)
//!                                                node address + NodePort → the pod's port (DNAT)
//!   chain postrouting  hook postrouting, srcnat: a pod reaching itself → SNAT to the node address
//! ```
//!
//! NodePorts behave as with `externalTrafficPolicy: Local`: no SNAT, so the pod (and the policies)
//! see the client's own address. The cluster has one node, so every pod is local to it.
//!
//! DNAT happens before the forward hook, so the reference dataplane (`nft`) sees the backend pod as
//! the destination, as real CNIs do. Hairpin traffic (a pod to its own Service) is masqueraded to
//! the node's address like kube-proxy does, or the pod would answer itself over loopback and the
//! reply would never be un-DNATed; the SNAT comes after filtering, so the policies still judge the
//! pod reaching itself. The proxy works whatever the dataplane: a cluster that ignores policies
//! still has Services.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Family, Pod, PortProtocol, Protocol};

pub const NAT_TABLE: &str = "inet polygraph-nat";

/// The node's own addresses (on its loopback): the source of masqueraded hairpin traffic. Outside
/// every pod and Service range, like a kind node's address on its Docker network.
pub const NODE_V4: Ipv4Addr = crate::model::NODE_ADDRESS;
pub const NODE_V6: Ipv6Addr = crate::model::NODE_ADDRESS_V6;

/// The Service ranges, as kind's defaults.
pub const SERVICE_RANGES: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];
/// The first ClusterIPs of the Service ranges.
const SERVICE_V4_FIRST: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE_V6_FIRST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);

/// The ClusterIP of the Service of the pod in `slot`, in `family`.
pub fn cluster_ip(slot: usize, family: Family) -> IpAddr {
    let offset = u32::try_from(slot).unwrap_or(u32::MAX);
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(
            u32::from(SERVICE_V4_FIRST).wrapping_add(offset),
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(
            u128::from(SERVICE_V6_FIRST).wrapping_add(u128::from(offset)),
        )),
    }
}

/// A pod as the proxy sees it: its slot, its ports, its addresses, its Service's node ports.
pub struct Backend<'a> {
    pub slot: usize,
    pub pod: &'a Pod,
    pub addresses: &'a [IpAddr],
    /// Per served (port, protocol): the NodePort that reaches it.
    pub node_ports: &'a [(PortProtocol, u16)],
}

/// The first NodePort, as Kubernetes' default range (30000-32767) starts.
pub const NODE_PORT_FIRST: u16 = 30000;

/// The node's address in `family`.
pub fn node_address(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(NODE_V4),
        Family::V6 => IpAddr::V6(NODE_V6),
    }
}

/// The node's addresses on a cluster of `families`.
pub fn node_addresses(families: crate::model::IpFamilies) -> Vec<IpAddr> {
    families
        .families()
        .iter()
        .map(|&f| node_address(f))
        .collect()
}

/// The transaction that creates the NAT table (once, with the node).
pub fn install() -> String {
    format!(
        "add table {NAT_TABLE}\n\
         add chain {NAT_TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         add chain {NAT_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    )
}

/// The transaction that replaces every Service rule with those of `pods` (atomic with `nft -f`).
pub fn update<'a>(pods: impl IntoIterator<Item = Backend<'a>>) -> String {
    let mut tx =
        format!("flush chain {NAT_TABLE} prerouting\nflush chain {NAT_TABLE} postrouting\n");
    for backend in pods {
        let ports: Vec<String> = backend
            .pod
            .ports
            .iter()
            .map(|p| format!("{} . {}", l4proto(p.protocol), p.port))
            .collect();
        if ports.is_empty() {
            continue;
        }
        let ports = ports.join(", ");
        for &ip in backend.addresses {
            let family = Family::of(ip);
            let (fam, node) = match family {
                Family::V4 => ("ip", IpAddr::V4(NODE_V4)),
                Family::V6 => ("ip6", IpAddr::V6(NODE_V6)),
            };
            let service = cluster_ip(backend.slot, family);
            let _ = writeln!(
                tx,
                "add rule {NAT_TABLE} prerouting {fam} daddr {service} meta l4proto . th dport {{ {ports} }} dnat {fam} to {ip} comment \"service of {}\"",
                backend.pod.key()
            );
            let _ = writeln!(
                tx,
                "add rule {NAT_TABLE} postrouting {fam} saddr {ip} {fam} daddr {ip} ct status dnat snat {fam} to {node} comment \"hairpin of {}\"",
                backend.pod.key()
            );
            let to = match ip {
                IpAddr::V4(v4) => format!("{v4}"),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            for (pp, node_port) in backend.node_ports {
                let _ = writeln!(
                    tx,
                    "add rule {NAT_TABLE} prerouting {fam} daddr {node} meta l4proto {} th dport {node_port} dnat {fam} to {to}:{} comment \"node port of {} {pp}\"",
                    l4proto(pp.protocol),
                    pp.port,
                    backend.pod.key()
                );
            }
        }
    }
    tx
}

fn l4proto(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_model;

    #[test]
    fn cluster_ips_follow_the_slot() {
        assert_eq!(cluster_ip(0, Family::V4).to_string(), "10.96.0.10");
        assert_eq!(cluster_ip(300, Family::V4).to_string(), "10.96.1.54");
        assert_eq!(cluster_ip(1, Family::V6).to_string(), "fd00:10:96::11");
    }

    #[test]
    fn every_address_gets_its_service_and_hairpin() {
        let cluster = default_model().build("model").unwrap();
        let pod = &cluster.pods()[0];
        let addresses = [pod.ip, "fd00:10:244::1".parse().unwrap()];
        let node_ports = [(PortProtocol::new(80, Protocol::Tcp), 30007)];
        let tx = update([Backend {
            slot: 3,
            pod,
            addresses: &addresses,
            node_ports: &node_ports,
        }]);
        assert!(tx.starts_with("flush chain inet polygraph-nat prerouting\n"));
        assert!(tx.contains(&format!(
            "ip daddr 10.96.0.13 meta l4proto . th dport {{ tcp . 80, udp . 80, sctp . 80, tcp . 81, udp . 81, sctp . 81 }} dnat ip to {}",
            pod.ip
        )), "{tx}");
        assert!(tx.contains("ip6 daddr fd00:10:96::13"), "{tx}");
        assert!(tx.contains(&format!(
            "ip saddr {0} ip daddr {0} ct status dnat snat ip to 172.18.0.2",
            pod.ip
        )));
        assert!(
            tx.contains(&format!(
                "ip daddr 172.18.0.2 meta l4proto tcp th dport 30007 dnat ip to {}:80",
                pod.ip
            )),
            "{tx}"
        );
        assert!(tx.contains("ip6 daddr fd00:18::2 meta l4proto tcp th dport 30007 dnat ip6 to [fd00:10:244::1]:80"), "{tx}");
    }
}
