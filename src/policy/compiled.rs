//! The meaning of a NetworkPolicy, after validation and defaulting: what the oracle evaluates and
//! what a dataplane enforces. Keeping one representation is how the oracle and the local
//! dataplane share the spec's semantics instead of writing them twice.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::selector::Selector;
use crate::input::Origin;
use crate::model::{Cluster, Pod, PortProtocol, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// The name of the rule list in the spec (`ingress`, `egress`).
    pub fn rules_field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The name of a rule's peer list (`from`, `to`).
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One NetworkPolicy, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub origin: Origin,
    /// The validated API object as written (namespace filled in): what a real cluster is given.
    pub object: NetworkPolicy,
    pub pod_selector: Selector,
    /// `Some` when `policyTypes` (after defaulting) has Ingress: selected pods are isolated for
    /// ingress and these rules are all that is allowed. `Some(vec![])` denies all ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Every rule of both directions, to rewrite them (the faults do).
    pub fn rules_mut(&mut self) -> impl Iterator<Item = &mut Rule> {
        [self.ingress.as_mut(), self.egress.as_mut()]
            .into_iter()
            .flatten()
            .flat_map(|rules| rules.iter_mut())
    }

    /// Whether this policy applies to `pod` (same namespace, selector matches). Never to a
    /// host-network pod: its traffic is the node's (what selects it is undefined in the spec,
    /// and the analysis says so: `analyze::host_network_cells`).
    pub fn selects(&self, pod: &Pod) -> bool {
        !pod.host_network
            && pod.namespace == self.namespace
            && self.pod_selector.matches(&pod.labels)
    }
}

/// One ingress or egress rule. `None` for peers or ports means the list was absent or empty:
/// every peer, every port.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortMatch>>,
}

impl Rule {
    /// The index of the first peer that matches `pod`, or `Some(None)` when the rule has no peer
    /// list (all peers match); `None` when no peer matches.
    pub fn matching_peer(
        &self,
        cluster: &Cluster,
        policy_namespace: &str,
        pod: &Pod,
    ) -> Option<Option<usize>> {
        match &self.peers {
            None => Some(None),
            Some(peers) => peers
                .iter()
                .position(|p| p.matches(cluster, policy_namespace, pod))
                .map(Some),
        }
    }

    /// Like `matching_peer` for ports: `dst` is the pod receiving the connection, where named
    /// ports are resolved.
    pub fn matching_port(&self, dst: &Pod, pp: PortProtocol) -> Option<Option<usize>> {
        match &self.ports {
            None => Some(None),
            Some(ports) => ports.iter().position(|p| p.matches(dst, pp)).map(Some),
        }
    }

    /// Whether any port entry names a port, so that matching depends on the destination pod.
    pub fn has_named_ports(&self) -> bool {
        self.ports
            .iter()
            .flatten()
            .any(|p| matches!(p, PortMatch::Named { .. }))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    PolicyNamespace,
    Selected(Selector),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` in one entry: both must hold (AND).
    Pods {
        namespaces: NamespaceScope,
        /// Absent `podSelector` compiles to "everything".
        pods: Selector,
    },
    /// Matched against pod IPs for pod-to-pod traffic.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

impl Peer {
    pub fn matches(&self, cluster: &Cluster, policy_namespace: &str, pod: &Pod) -> bool {
        match self {
            Peer::Pods { pods, .. } => {
                !pod.host_network
                    && self.selects_namespace(cluster, policy_namespace, &pod.namespace)
                    && pods.matches(&pod.labels)
            }
            Peer::IpBlock { cidr, except } => {
                cidr.contains(&pod.ip) && !except.iter().any(|e| e.contains(&pod.ip))
            }
        }
    }

    /// For pod peers: whether pods of `namespace` can match at all.
    pub fn selects_namespace(
        &self,
        cluster: &Cluster,
        policy_namespace: &str,
        namespace: &str,
    ) -> bool {
        match self {
            Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                ..
            } => namespace == policy_namespace,
            Peer::Pods {
                namespaces: NamespaceScope::Selected(selector),
                ..
            } => cluster
                .namespace(namespace)
                .is_some_and(|ns| selector.matches(&ns.labels)),
            Peer::IpBlock { .. } => true,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                pods,
            } => write!(f, "podSelector {pods}"),
            Peer::Pods {
                namespaces: NamespaceScope::Selected(ns),
                pods,
            } if pods.is_everything() => write!(f, "namespaceSelector {ns}"),
            Peer::Pods {
                namespaces: NamespaceScope::Selected(ns),
                pods,
            } => write!(f, "namespaceSelector {ns} AND podSelector {pods}"),
            Peer::IpBlock { cidr, except } if except.is_empty() => write!(f, "ipBlock {cidr}"),
            Peer::IpBlock { cidr, except } => {
                let except: Vec<String> = except.iter().map(ToString::to_string).collect();
                write!(f, "ipBlock {cidr} except {}", except.join(", "))
            }
        }
    }
}

/// One `ports` entry, protocol defaulted to TCP.
#[derive(Debug, Clone, PartialEq)]
pub enum PortMatch {
    /// Protocol only: every port of that protocol.
    AllPorts { protocol: Protocol },
    /// `port`, or `port`..=`endPort`.
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A named port, resolved on the destination pod: name and protocol must both match.
    Named { protocol: Protocol, name: String },
}

impl PortMatch {
    pub fn protocol(&self) -> Protocol {
        match self {
            PortMatch::AllPorts { protocol }
            | PortMatch::Range { protocol, .. }
            | PortMatch::Named { protocol, .. } => *protocol,
        }
    }

    pub fn matches(&self, dst: &Pod, pp: PortProtocol) -> bool {
        if self.protocol() != pp.protocol {
            return false;
        }
        match self {
            PortMatch::AllPorts { .. } => true,
            PortMatch::Range { start, end, .. } => (*start..=*end).contains(&pp.port),
            PortMatch::Named { name, protocol } => dst.named_port(name, *protocol) == Some(pp.port),
        }
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::AllPorts { protocol } => write!(f, "any {protocol} port"),
            PortMatch::Range {
                protocol,
                start,
                end,
            } if start == end => write!(f, "{start}/{protocol}"),
            PortMatch::Range {
                protocol,
                start,
                end,
            } => write!(f, "{start}-{end}/{protocol}"),
            PortMatch::Named { protocol, name } => write!(f, "{name}/{protocol}"),
        }
    }
}
