//! Cluster-scoped policy tiers: ClusterNetworkPolicy (v1alpha2) and the v1alpha1
//! AdminNetworkPolicy / BaselineAdminNetworkPolicy, compiled into one model.
//!
//! v1alpha1 objects are mapped onto v1alpha2 (ANP → `Admin`, BANP → `Baseline`, `Allow` →
//! `Accept`), but keep the kind they were written as: reports name the object as the user wrote it
//! and a cluster is given the object in its own version.

pub mod api;
mod load;
mod validate;

use std::fmt;

use ipnet::IpNet;

use super::selector::Selector;
use crate::input::Origin;
use crate::model::{Cluster, Pod, PortProtocol, Protocol};

pub use load::compile_object;

/// The kind an object was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl ClusterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    /// The short name used in explanations (`cnp/deny-db`), as kubectl's short names.
    pub fn short(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "cnp",
            ClusterKind::AdminNetworkPolicy => "anp",
            ClusterKind::BaselineAdminNetworkPolicy => "banp",
        }
    }

    /// The version polygraph writes and names by default: v1alpha2 for ClusterNetworkPolicy (the
    /// version every release since v0.2 serves), v1alpha1 for the other two.
    pub fn api_version(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => api::V1ALPHA2,
            _ => api::V1ALPHA1,
        }
    }

    /// Every version polygraph reads, the cluster's preferred first: ClusterNetworkPolicy
    /// `v1beta1` (network-policy-api v0.3, the storage version) and `v1alpha2`, with the same
    /// schema; AdminNetworkPolicy and BaselineAdminNetworkPolicy `v1alpha1`.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            ClusterKind::ClusterNetworkPolicy => &[api::V1BETA1, api::V1ALPHA2],
            _ => &[api::V1ALPHA1],
        }
    }

    /// The resource's plural, for API paths and messages.
    pub fn plural(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "clusternetworkpolicies",
            ClusterKind::AdminNetworkPolicy => "adminnetworkpolicies",
            ClusterKind::BaselineAdminNetworkPolicy => "baselineadminnetworkpolicies",
        }
    }

    pub const ALL: [ClusterKind; 3] = [
        ClusterKind::ClusterNetworkPolicy,
        ClusterKind::AdminNetworkPolicy,
        ClusterKind::BaselineAdminNetworkPolicy,
    ];

    pub fn from_kind(kind: &str) -> Option<ClusterKind> {
        ClusterKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for ClusterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cluster-scoped policy, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPolicy {
    pub name: String,
    pub kind: ClusterKind,
    pub origin: Origin,
    pub tier: Tier,
    /// Lower first. A BANP (a singleton) has none in v1alpha1; it is given 0.
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// The validated object as written, in its own version: what a real cluster is given.
    pub object: serde_json::Value,
}

impl ClusterPolicy {
    /// `cnp/deny-db`, `anp/x`, `banp/default`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.short(), self.name)
    }

    pub fn rules(&self, direction: super::Direction) -> &[ClusterRule] {
        match direction {
            super::Direction::Ingress => &self.ingress,
            super::Direction::Egress => &self.egress,
        }
    }

    /// Whether `pod` is a subject. Host-network pods never are (their traffic is the node's).
    pub fn selects(&self, cluster: &Cluster, pod: &Pod) -> bool {
        !pod.host_network && self.subject.matches(cluster, pod)
    }
}

/// `spec.subject`: the pods a policy applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl Subject {
    pub fn matches(&self, cluster: &Cluster, pod: &Pod) -> bool {
        let namespace_matches = |selector: &Selector| {
            cluster
                .namespace(&pod.namespace)
                .is_some_and(|ns| selector.matches(&ns.labels))
        };
        match self {
            Subject::Namespaces(namespaces) => namespace_matches(namespaces),
            Subject::Pods { namespaces, pods } => {
                namespace_matches(namespaces) && pods.matches(&pod.labels)
            }
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Namespaces(ns) => write!(f, "namespaces {ns}"),
            Subject::Pods { namespaces, pods } => {
                write!(f, "pods in namespaces {namespaces} with {pods}")
            }
        }
    }
}

/// One rule: its action applies when some peer matches AND (no protocols OR some protocol does).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    /// `None`: every port and protocol.
    pub protocols: Option<Vec<ProtocolMatch>>,
}

impl ClusterRule {
    /// Whether some peer matches the pod at the other end (`remote`), ignoring ports.
    pub fn peer_matches(&self, cluster: &Cluster, remote: &Pod) -> bool {
        self.peers.iter().any(|p| p.matches(cluster, remote))
    }

    /// Whether some protocol entry matches `pp` at destination `dst` (where named ports resolve).
    pub fn protocol_matches(&self, dst: &Pod, pp: PortProtocol) -> bool {
        match &self.protocols {
            None => true,
            Some(entries) => entries.iter().any(|e| e.matches(dst, pp)),
        }
    }

    pub fn has_named_ports(&self) -> bool {
        self.protocols
            .iter()
            .flatten()
            .any(|p| matches!(p, ProtocolMatch::Named(_)))
    }

    /// Whether a `domainNames` peer could match: the answer needs DNS, which the model lacks.
    pub fn has_domain_names(&self) -> bool {
        self.peers
            .iter()
            .any(|p| matches!(p, ClusterPeer::DomainNames(_)))
    }

    /// `egress[1] "to-db"`: the rule as explanations and nft comments name it.
    pub fn label(&self, direction: super::Direction, index: usize) -> String {
        match &self.name {
            Some(name) => format!("{}[{index}] {name:?}", direction.rules_field()),
            None => format!("{}[{index}]", direction.rules_field()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterPeer {
    /// Every pod in the selected namespaces.
    Namespaces(Selector),
    /// Pods matching both selectors; an absent namespaceSelector selects every namespace.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Egress only: destination addresses, pods' included.
    Networks(Vec<IpNet>),
    /// Egress only: node addresses, by the nodes' labels. Pods are never a node's address here;
    /// the pods' node is an endpoint on the `node` path (`model::NODE_NAMESPACE`).
    Nodes(Selector),
    /// Egress only: names resolved by DNS; the model cannot say which pods they reach.
    DomainNames(Vec<String>),
}

impl ClusterPeer {
    pub fn matches(&self, cluster: &Cluster, remote: &Pod) -> bool {
        let namespace_matches = |selector: &Selector| {
            cluster
                .namespace(&remote.namespace)
                .is_some_and(|ns| selector.matches(&ns.labels))
        };
        match self {
            // A host-network pod is the node to selectors of pods: they never match it.
            ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } if remote.host_network => false,
            ClusterPeer::Namespaces(namespaces) => namespace_matches(namespaces),
            ClusterPeer::Pods { namespaces, pods } => {
                namespace_matches(namespaces) && pods.matches(&remote.labels)
            }
            // A CIDR matches only addresses of its own family.
            ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&remote.ip)),
            // A host-network pod is at the node's address: the node's peers match it.
            ClusterPeer::Nodes(nodes) if remote.host_network => {
                nodes.matches(&crate::model::node_labels())
            }
            ClusterPeer::Nodes(nodes) => {
                remote.namespace == crate::model::NODE_NAMESPACE && nodes.matches(&remote.labels)
            }
            ClusterPeer::DomainNames(_) => false,
        }
    }
}

impl fmt::Display for ClusterPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPeer::Namespaces(ns) => write!(f, "namespaces {ns}"),
            ClusterPeer::Pods { namespaces, pods } => {
                write!(f, "pods {pods} in namespaces {namespaces}")
            }
            ClusterPeer::Networks(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "networks {}", nets.join(", "))
            }
            ClusterPeer::Nodes(nodes) => write!(f, "nodes {nodes}"),
            ClusterPeer::DomainNames(names) => write!(f, "domainNames {}", names.join(", ")),
        }
    }
}

/// One protocol entry (v1alpha2 `protocols[]`, v1alpha1 `ports[]`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolMatch {
    /// A port or an inclusive range of one protocol.
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A container port name on the destination pod, with that port's own number and protocol.
    Named(String),
}

impl ProtocolMatch {
    pub fn matches(&self, dst: &Pod, pp: PortProtocol) -> bool {
        match self {
            ProtocolMatch::Range {
                protocol,
                start,
                end,
            } => *protocol == pp.protocol && (*start..=*end).contains(&pp.port),
            ProtocolMatch::Named(name) => dst.ports.iter().any(|p| {
                p.name.as_deref() == Some(name) && p.port == pp.port && p.protocol == pp.protocol
            }),
        }
    }
}

impl fmt::Display for ProtocolMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolMatch::Range {
                protocol,
                start,
                end,
            } if start == end => write!(f, "{start}/{protocol}"),
            ProtocolMatch::Range {
                protocol,
                start,
                end,
            } => write!(f, "{start}-{end}/{protocol}"),
            ProtocolMatch::Named(name) => write!(f, "named port {name}"),
        }
    }
}
