//! The validated, indexed cluster the oracle and the backends work on.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use super::{PortProtocol, Protocol};

/// Labels of a namespace or pod. Ordered so that output is stable.
pub type Labels = BTreeMap<String, String>;

/// Index of a pod in `Cluster::pods()`. Truth tables are indexed by it.
pub type PodId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Includes `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl ContainerPort {
    /// Unnamed ports serving each of `port_protocols`: a host that is no pod serving what a
    /// scenario probes (the outside host, the node).
    pub fn serving(port_protocols: &[super::PortProtocol]) -> Vec<ContainerPort> {
        port_protocols
            .iter()
            .map(|pp| ContainerPort {
                name: None,
                port: pp.port,
                protocol: pp.protocol,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: IpAddr,
    pub ports: Vec<ContainerPort>,
    /// In the node's network namespace, at the node's address (`hostNetwork: true`). Its traffic
    /// is the node's: no policy selects it and no pod or namespace selector matches it, only
    /// address peers and `nodes` peers do (what a dataplane sees; the spec leaves selectors over
    /// it undefined, see `Cluster::with_host_network_as_pods`).
    pub host_network: bool,
}

impl Pod {
    pub fn key(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// The port number a named port resolves to on this pod: name and protocol must both match.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }

    pub fn serves(&self, pp: PortProtocol) -> bool {
        self.ports
            .iter()
            .any(|p| p.port == pp.port && p.protocol == pp.protocol)
    }
}

/// `namespace/name`, the way polygraph names pods everywhere (reports, `--explain`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for PodRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a pod reference (expected NAMESPACE/POD)"
            )),
        }
    }
}

/// The namespace of hosts outside the cluster in a path's analysis (`Cluster::with_outside`): not a
/// valid namespace name, so no policy, selector or user namespace can ever name it.
pub const OUTSIDE_NAMESPACE: &str = "(outside)";

/// The namespace of the pods' node in a path's analysis (`ProbeTarget::Node`): like
/// `OUTSIDE_NAMESPACE`, no selector can name it, so only address peers (`ipBlock`, `networks`)
/// match the node; the analysis adds what is the node's alone (a pod's own node may always reach
/// it).
pub const NODE_NAMESPACE: &str = "(node)";

/// The labels of a model's node (and the embedded local cluster's), as a kubelet registers them:
/// `nodes` peers of cluster policies select by them.
pub fn node_labels() -> Labels {
    Labels::from([
        ("kubernetes.io/hostname".to_string(), "node".to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
    ])
}

/// The cluster's DNS as a name-resolving path's analysis needs it: the namespace its servers run
/// in (with its labels, `kubernetes.io/metadata.name` included) and the servers, as pods with
/// their labels and addresses. Policies judge a source's DNS egress against these, as a CNI does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub namespace: Namespace,
    pub servers: Vec<Pod>,
}

/// The port the cluster's DNS answers on; resolvers ask over UDP first.
pub const DNS_PORT: u16 = 53;

/// A consistent cluster: every pod's namespace exists, names and IPs are unique. Built from a
/// `ClusterDescription`, which does the checking. (`with_outside` adds hosts that are not pods.)
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    namespace_index: HashMap<String, usize>,
    pod_index: HashMap<PodRef, PodId>,
}

impl Cluster {
    /// Callers guarantee consistency (see `ClusterDescription::build`).
    pub(super) fn from_parts(namespaces: Vec<Namespace>, pods: Vec<Pod>) -> Self {
        let namespace_index = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns.name.clone(), i))
            .collect();
        let pod_index = pods.iter().enumerate().map(|(i, p)| (p.key(), i)).collect();
        Cluster {
            namespaces,
            pods,
            namespace_index,
            pod_index,
        }
    }

    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id]
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespace_index.get(name).map(|&i| &self.namespaces[i])
    }

    pub fn find_pod(&self, pod: &PodRef) -> Option<PodId> {
        self.pod_index.get(pod).copied()
    }

    /// The cluster plus hosts outside it, appended after the pods, in `OUTSIDE_NAMESPACE`, which the
    /// cluster does not have: no namespace or pod selector, no policy and no cluster policy subject
    /// can match them, so only `ipBlock` and `networks` peers do, by address — what the spec says
    /// of traffic from or to outside the cluster. Not a cluster a description could build.
    pub fn with_outside(&self, hosts: &[Pod]) -> Cluster {
        let mut pods = self.pods.clone();
        pods.extend(hosts.iter().map(|h| {
            Pod {
                namespace: if h.namespace == NODE_NAMESPACE {
                    NODE_NAMESPACE
                } else {
                    OUTSIDE_NAMESPACE
                }
                .to_string(),
                ..h.clone()
            }
        }));
        Cluster::from_parts(self.namespaces.clone(), pods)
    }

    /// The cluster plus its DNS servers, appended after the pods, in their own namespace. Callers
    /// make sure the cluster has no namespace of that name (a model's own `kube-system` would
    /// be a second one). The servers are peers like any pod; whether they are also subjects of
    /// policies is the caller's question (polygraph's never select them).
    pub fn with_dns(&self, dns: &ClusterDns) -> Cluster {
        let mut namespaces = self.namespaces.clone();
        if self.namespace(&dns.namespace.name).is_none() {
            namespaces.push(dns.namespace.clone());
        }
        let mut pods = self.pods.clone();
        pods.extend(
            dns.servers
                .iter()
                .filter(|p| self.find_pod(&p.key()).is_none())
                .cloned(),
        );
        Cluster::from_parts(namespaces, pods)
    }

    /// Whether the pod at `id` is no pod: a host outside the cluster, or the pods' node (see
    /// `with_outside`).
    pub fn is_outside(&self, id: PodId) -> bool {
        matches!(
            self.pods[id].namespace.as_str(),
            OUTSIDE_NAMESPACE | NODE_NAMESPACE
        )
    }

    /// Whether the pod at `id` is the pods' node.
    pub fn is_node(&self, id: PodId) -> bool {
        self.pods[id].namespace == NODE_NAMESPACE
    }

    /// The host-network pods.
    pub fn host_network(&self) -> impl Iterator<Item = PodId> + '_ {
        (0..self.pods.len()).filter(|&id| self.pods[id].host_network)
    }

    /// The cluster with its host-network pods taken for the pods their labels describe: selected
    /// by policies, matched by selectors. Not what NetworkPolicy's selectors do (they never match
    /// a host-network pod, whose traffic is the node's: `Pod::host_network`), but what some
    /// implementations do, and the spec leaves open.
    pub fn with_host_network_as_pods(&self) -> Cluster {
        let pods = self
            .pods
            .iter()
            .map(|p| Pod {
                host_network: false,
                ..p.clone()
            })
            .collect();
        Cluster::from_parts(self.namespaces.clone(), pods)
    }

    /// The cluster as a description again, every pod with its IP: to rebuild it with changes.
    pub fn description(&self) -> super::ClusterDescription {
        super::ClusterDescription {
            namespaces: self.namespaces.iter().map(Into::into).collect(),
            pods: self.pods.iter().map(Into::into).collect(),
        }
    }

    /// Every (port, protocol) some pod serves, sorted: the default probe set.
    pub fn served_port_protocols(&self) -> Vec<PortProtocol> {
        let mut all: Vec<PortProtocol> = self
            .pods
            .iter()
            .flat_map(|p| {
                p.ports
                    .iter()
                    .map(|c| PortProtocol::new(c.port, c.protocol))
            })
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
