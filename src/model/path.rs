//! How a probe reaches its destination pod: the *target* (the pod's own IP, or its Service's
//! ClusterIP, where the service proxy DNATs to the pod) and the *address family*. A step is probed
//! once per path; each path has its own expectation, because the spec judges a cell at the
//! addresses the packets really carry (the destination pod after DNAT, the family's address).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How a probe addresses its destination pod.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeTarget {
    /// The pod's own address: what every NetworkPolicy tester probes.
    #[default]
    PodIp,
    /// The ClusterIP of a Service selecting only that pod: the packets are DNATed by the service
    /// proxy, and the policies judge them at the backend pod. A pod reaching itself this way
    /// (hairpin) is subject to cluster policies, unlike a pod's own IP.
    Service,
    /// The name of that Service (`<service>.<namespace>.svc.<domain>`), resolved by the source pod
    /// through the cluster's DNS, then probed like `service`. A source whose egress to the
    /// cluster DNS is blocked cannot resolve it: the cell's answer is `dns-failed`.
    ServiceName,
    /// A client outside the cluster reaching the pod through a NodePort on its node's address
    /// (`externalTrafficPolicy: Local`, so the pod sees the client's own address).
    NodePort,
    /// The other way out: pods reaching a server outside the cluster.
    External,
    /// The pods' node, at its own address, both ways: pods reach it (their egress judges that,
    /// where an `ipBlock` covering the node's address, or a cluster policy's `nodes` peer, can
    /// admit it) and it reaches them (always allowed: NetworkPolicy exempts a pod's own node).
    Node,
}

impl ProbeTarget {
    pub const ALL: [ProbeTarget; 6] = [
        ProbeTarget::PodIp,
        ProbeTarget::Service,
        ProbeTarget::ServiceName,
        ProbeTarget::NodePort,
        ProbeTarget::External,
        ProbeTarget::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeTarget::PodIp => "pod-ip",
            ProbeTarget::Service => "service",
            ProbeTarget::ServiceName => "service-name",
            ProbeTarget::NodePort => "node-port",
            ProbeTarget::External => "external",
            ProbeTarget::Node => "node",
        }
    }

    /// Whether the backend must create a Service per pod for this target.
    pub fn needs_services(self) -> bool {
        matches!(
            self,
            ProbeTarget::Service | ProbeTarget::ServiceName | ProbeTarget::NodePort
        )
    }

    /// Whether traffic goes through a Service's ClusterIP (DNATed to the pod; a pod's hairpin to
    /// itself is subject to cluster policies).
    pub fn through_cluster_ip(self) -> bool {
        matches!(self, ProbeTarget::Service | ProbeTarget::ServiceName)
    }

    /// Whether the source resolves a name through the cluster's DNS first.
    pub fn needs_dns(self) -> bool {
        self == ProbeTarget::ServiceName
    }

    /// Whether the path has a host that is no pod at one end: the client of a NodePort, the
    /// server of an external destination, the pods' node.
    pub fn needs_outside(self) -> bool {
        matches!(
            self,
            ProbeTarget::NodePort | ProbeTarget::External | ProbeTarget::Node
        )
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProbeTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProbeTarget::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown target {s:?} (expected pod-ip, service, service-name, node-port, external or node)"
                )
            })
    }
}

/// How an implementation treats a pod's traffic to its own Service when the Service load-balances
/// it back to the pod (hairpin). The ClusterNetworkPolicy docs make it subject to policy, unlike a
/// pod's traffic to its own IP; an open proposal exempts socket-level load balancers, which
/// rewrite the destination in the pod's own socket so that no dataplane ever sees the packet.
/// `--service-hairpin` says which rule the cluster declares, and polygraph judges it by that.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceHairpin {
    /// Subject to cluster policies, as the spec says: judged where one decides.
    #[default]
    Policy,
    /// Exempt (a socket-level load balancer): like a pod's traffic to its own IP, never judged.
    Exempt,
}

/// An IP address family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which families the pods of a cluster polygraph builds get (`--ip-family`), or a scenario is
/// about (`ip-family:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamilies {
    /// Every pod at its model address (IPv4 unless the model says otherwise).
    #[default]
    Ipv4,
    /// Every pod at an IPv6 address: the model's, or the one derived from its IPv4 address.
    Ipv6,
    /// Every pod at both: its model IPv4 address and the IPv6 address derived from it.
    Dual,
}

impl IpFamilies {
    /// The families, IPv4 first.
    pub fn families(self) -> &'static [Family] {
        match self {
            IpFamilies::Ipv4 => &[Family::V4],
            IpFamilies::Ipv6 => &[Family::V6],
            IpFamilies::Dual => &[Family::V4, Family::V6],
        }
    }

    /// The families of both, as a cluster that must give pods every family either needs.
    pub fn union(self, other: IpFamilies) -> IpFamilies {
        let v4 = self.families().contains(&Family::V4) || other.families().contains(&Family::V4);
        let v6 = self.families().contains(&Family::V6) || other.families().contains(&Family::V6);
        match (v4, v6) {
            (true, true) => IpFamilies::Dual,
            (false, true) => IpFamilies::Ipv6,
            _ => IpFamilies::Ipv4,
        }
    }

    /// A pod's addresses, from its model address. The derived IPv6 address embeds the IPv4 one in
    /// `fd00:10:244::/96` (10.244.1.10 → fd00:10:244::af4:10a), so a reader can map one to the other.
    /// A model address that is already IPv6 stays the pod's only one: nothing derives an IPv4
    /// address from it.
    pub fn addresses(self, model: IpAddr) -> Vec<IpAddr> {
        // The node's (a host-network pod's) IPv6 address is the node's, not a pod's.
        let v6 = |v4: Ipv4Addr| match v4 == super::NODE_ADDRESS {
            true => super::NODE_ADDRESS_V6,
            false => embed_v4(POD_V6_PREFIX, v4),
        };
        match (self, model) {
            (IpFamilies::Ipv4, ip) | (_, ip @ IpAddr::V6(_)) => vec![ip],
            (IpFamilies::Ipv6, IpAddr::V4(v4)) => vec![IpAddr::V6(v6(v4))],
            (IpFamilies::Dual, IpAddr::V4(v4)) => vec![IpAddr::V4(v4), IpAddr::V6(v6(v4))],
        }
    }
}

/// Where derived IPv6 pod addresses live.
const POD_V6_PREFIX: [u16; 3] = [0xfd00, 0x10, 0x244];

/// An IPv4 address in the last 32 bits of a /96.
pub fn embed_v4(prefix: [u16; 3], v4: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(
        prefix[0],
        prefix[1],
        prefix[2],
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

/// One way of probing a step: a target in a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbePath {
    pub target: ProbeTarget,
    pub family: Family,
}

impl Default for ProbePath {
    fn default() -> Self {
        ProbePath {
            target: ProbeTarget::PodIp,
            family: Family::V4,
        }
    }
}

impl ProbePath {
    /// The path every step had before targets and families: IPv4 pod IPs. Reports name a path
    /// only when it is not this one.
    pub fn is_plain(&self) -> bool {
        *self == ProbePath::default()
    }
}

impl fmt::Display for ProbePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.target, self.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_addresses_embed_the_ipv4_one() {
        let v4: IpAddr = "10.244.1.10".parse().unwrap();
        assert_eq!(
            IpFamilies::Dual.addresses(v4),
            vec![v4, "fd00:10:244::af4:10a".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            IpFamilies::Ipv6.addresses(v4),
            vec!["fd00:10:244::af4:10a".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(IpFamilies::Ipv4.addresses(v4), vec![v4]);
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(IpFamilies::Dual.addresses(v6), vec![v6]);
    }

    #[test]
    fn targets_parse_as_written() {
        assert_eq!("service".parse::<ProbeTarget>(), Ok(ProbeTarget::Service));
        assert!("Service".parse::<ProbeTarget>().is_err());
    }
}
