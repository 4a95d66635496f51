//! The local cluster's plumbing: the node namespace, and per pod a network namespace with a veth
//! pair routed through the node. Routed rather than bridged, like Calico: each pod has a /32 (or
//! /128) on `eth0`, a default route to a link-local gateway, and a veth peer `pgv<slot>` in the node
//! namespace with a route to the pod. Filtering bridged traffic with conntrack would need
//! `br_netfilter`, a host-wide module; routing needs nothing outside our own namespaces. Nothing is
//! linked to the host's interfaces.

use std::net::IpAddr;

use super::{host, nft, proxy};
use crate::backend::BackendError;

/// The MAC every node-side veth carries; pods reach their gateway through a static neighbour entry.
const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";

/// Creates the node namespace, with forwarding on and ICMP errors not rate-limited: a refusal the
/// dataplane sends (the `deny-as-reject` and `deny-as-icmp-filtered` faults) must reach every probe, or a rate-limited one would
/// look like a drop. Both sysctls are per network namespace: the host is untouched. The node's own
/// addresses sit on its loopback: the service proxy masquerades hairpin traffic to them.
pub(super) async fn create_node(node: &str) -> Result<(), BackendError> {
    host::netns_add(node).await?;
    host::ip_batch(
        node,
        &[
            "link set lo up".into(),
            format!("addr add {}/32 dev lo", proxy::NODE_V4),
            format!("addr add {}/128 dev lo", proxy::NODE_V6),
        ],
    )
    .await?;
    host::exec_in(
        node,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            // Besides the per-destination limit, the kernel caps every ICMP error type the
            // ratemask names at 1000/s with a burst of 50 (`icmp_msgs_per_sec`), which a round
            // of denials answered by ICMP (`deny-as-icmp-filtered`) overran: exempt every type
            // (IPv6's mask names type 255 only, which nothing sends).
            "net.ipv4.icmp_ratemask=0",
            "net.ipv6.icmp.ratemask=255",
        ],
        None,
    )
    .await?;
    Ok(())
}

/// `--inject loss=P%`: a table of its own in the node namespace that drops `permille` thousandths
/// of the packets crossing any of the cluster's links (the pods' `pgv*` and the outside host's
/// `pgout`), each way: on the way in before anything else sees them (conntrack included, so a
/// lost packet leaves no state), on the way out after everything else. nftables `numgen random`
/// draws for each packet, since this kernel has no netem. A pod-to-pod round trip crosses four
/// links.
pub(super) fn loss_table(permille: u16) -> String {
    // Traffic and the ICMP errors that answer it; not IPv6 neighbour discovery, whose loss would
    // stall a link for seconds rather than lose a packet.
    let traffic = [
        "meta l4proto { tcp, udp, sctp, icmp }",
        "icmpv6 type { destination-unreachable, echo-request, echo-reply }",
    ];
    let mut transaction = String::from(
        "add table inet polygraph_loss\n\
         add chain inet polygraph_loss links_in { type filter hook prerouting priority -400; policy accept; }\n\
         add chain inet polygraph_loss links_out { type filter hook postrouting priority 400; policy accept; }\n",
    );
    for (chain, link) in [("links_in", "iifname"), ("links_out", "oifname")] {
        for matcher in traffic {
            transaction.push_str(&format!(
                "add rule inet polygraph_loss {chain} {link} \"pg*\" {matcher} numgen random mod 1000 < {permille} counter drop\n"
            ));
        }
    }
    transaction
}

/// The pod's namespace and the node's side of its link (down on the pod's side until
/// `bring_up_pod`), with a route to each of the pod's addresses (one per family).
pub(super) async fn create_pod_link(
    node: &str,
    netns: &str,
    slot: usize,
    addresses: &[IpAddr],
) -> Result<(), BackendError> {
    create_link(node, netns, &nft::veth_name(slot), addresses).await
}

/// The namespace of a host outside the cluster and its link to the node (`OUTSIDE_VETH`): routed
/// like a pod's, so the node is its only way anywhere, and nothing links it to the host's network.
pub(super) async fn create_outside_link(
    node: &str,
    netns: &str,
    addresses: &[IpAddr],
) -> Result<(), BackendError> {
    create_link(node, netns, OUTSIDE_VETH, addresses).await
}

/// The node's side of the outside host's link.
pub(super) const OUTSIDE_VETH: &str = "pgout";

async fn create_link(
    node: &str,
    netns: &str,
    veth: &str,
    addresses: &[IpAddr],
) -> Result<(), BackendError> {
    host::netns_add(netns).await?;
    let mut node_lines = vec![
        format!("link add {veth} type veth peer name eth0 netns {netns}"),
        format!("link set {veth} address {GATEWAY_MAC} up"),
    ];
    // `replace`, not `add`: a pod deleted a moment ago may have had this address, and the kernel
    // tears its namespace (and so its link and route) down asynchronously, after `ip netns delete`
    // returns. The next scenario's model may well reuse the address.
    for ip in addresses {
        match ip {
            IpAddr::V4(ip) => node_lines.push(format!("route replace {ip}/32 dev {veth}")),
            IpAddr::V6(ip) => node_lines.extend([
                format!("addr add {GATEWAY_V6}/64 dev {veth} nodad"),
                format!("route replace {ip}/128 dev {veth}"),
            ]),
        }
    }
    host::ip_batch(node, &node_lines).await
}

/// Addresses and routes inside the pod: from here on it can send and receive.
pub(super) async fn bring_up_pod(netns: &str, addresses: &[IpAddr]) -> Result<(), BackendError> {
    let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
    for ip in addresses {
        match ip {
            IpAddr::V4(ip) => lines.extend([
                format!("addr add {ip}/32 dev eth0"),
                format!("route add {GATEWAY_V4} dev eth0 scope link"),
                format!("route add default via {GATEWAY_V4} dev eth0"),
                format!("neigh add {GATEWAY_V4} lladdr {GATEWAY_MAC} dev eth0 nud permanent"),
            ]),
            IpAddr::V6(ip) => lines.extend([
                format!("addr add {ip}/128 dev eth0 nodad"),
                format!("route add ::/0 via {GATEWAY_V6} dev eth0"),
            ]),
        }
    }
    host::ip_batch(netns, &lines).await
}
