//! The embedded local cluster: every pod is a network namespace with the probe agent serving its
//! ports; all pod traffic is routed through one private "node" namespace (`network`), where the
//! reference dataplane (nftables, `nft`, installed by `programmer`) enforces NetworkPolicy.
//!
//! Layout: `options` (what to run), `network` (namespaces and links), `agent` (the agent
//! processes), `nft` and `programmer` (the dataplane), `proxy` (the Services: DNAT, hairpin),
//! `host` (commands), `gc` (what killed runs left).

mod agent;
mod gc;
mod host;
mod network;
pub mod nft;
mod options;
mod programmer;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use polygraph_agent::wire::{DnsRecord, DnsRecords, ProbeResult, Target};

pub use gc::{GcReport, gc};
pub use host::NETNS_PREFIX;
pub use options::{AgentCommand, Dataplane, LocalOptions};

use agent::Agent;
use host::Names;
use programmer::Programmer;

use super::session::hold_request;
use super::{
    Backend, BackendError, Held, ProbeTiming, Sessions, UdpSourcePorts, batch_request,
    probe_request,
};
use crate::faults::Fault;
use crate::model::{
    Cluster, ClusterDescription, ClusterDns, ContainerPort, Family, IpFamilies, Labels,
    NAMESPACE_NAME_LABEL, Namespace, NamespaceDescription, OUTSIDE_NAMESPACE, Pod, PodDescription,
    PodId, PodRef, PortProtocol, ProbeTarget, Protocol,
};
use crate::policy::{ClusterKind, ClusterPolicy, Policy};
use crate::world::Mutation;

/// How much longer than the probe timeout an agent may take to answer a batch, and to start its
/// session: process start-up on a loaded machine.
const AGENT_SLACK: Duration = Duration::from_secs(10);

/// Where polygraph records which process owns a run, so `gc` leaves live runs alone.
const OWNER_DIR: &str = "/run/polygraph";

struct LocalPod {
    slot: usize,
    pod: Pod,
    /// One per family (`--ip-family`), from the model's address.
    addresses: Vec<IpAddr>,
    /// Per served (port, protocol), the NodePort of its Service.
    node_ports: Vec<(PortProtocol, u16)>,
    created: tokio::time::Instant,
    agent: Option<Agent>,
}

pub struct LocalBackend {
    names: Names,
    options: LocalOptions,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, LocalPod>,
    policies: BTreeMap<(String, String), Policy>,
    cluster_policies: BTreeMap<(ClusterKind, String), ClusterPolicy>,
    /// Deleted policies the `policy-deletion-ignored` fault keeps enforcing.
    ghosts: BTreeMap<(String, String), Policy>,
    next_slot: usize,
    /// `None` without a dataplane.
    programmer: Option<Programmer>,
    /// What the faults with a history remember.
    history: crate::faults::History,
    owner_file: Option<PathBuf>,
    cleaned: bool,
    udp_ports: UdpSourcePorts,
    /// The agent session of each source pod (and of the outside host).
    sessions: Sessions,
    next_node_port: u16,
    /// The host outside the cluster, once a path needs it.
    outside: Option<Outside>,
    /// The node as an endpoint (`--target node`), once a path needs it: an agent serving in the
    /// node namespace, at the node's addresses.
    node_host: Option<(Pod, Option<Agent>)>,
    /// The cluster's DNS, once a path resolves names.
    dns: Option<Dns>,
}

/// The cluster's DNS: a pod `kube-system/coredns` labelled `k8s-app: kube-dns`, as kind and most
/// clusters have it, running the agent's DNS server behind a Service of its own (the proxy gives
/// it a ClusterIP like any pod's), answering for `cluster.local`. Its network namespace is a pod's;
/// the dataplane knows it as a peer (policies allowing DNS egress select it by its labels) but
/// never as a subject: polygraph places no policy on the cluster's DNS, on Kubernetes either.
struct Dns {
    slot: usize,
    pod: Pod,
    addresses: Vec<IpAddr>,
    server: Agent,
}

/// Where the DNS pod lives and what it is called, as in a kind cluster.
const DNS_NAMESPACE: &str = "kube-system";
const DNS_POD: &str = "coredns";
const DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// In the pod CIDR (so `except: [10.244.0.0/16]` covers it, as it covers a real CoreDNS), far from
/// the addresses models use.
pub(crate) const DNS_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 255, 253);
/// The cluster domain the DNS server answers for.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The DNS pod, at its IPv4 address, as the analysis and the simulation see it.
pub(crate) fn dns_pod() -> Pod {
    Pod {
        namespace: DNS_NAMESPACE.into(),
        name: DNS_POD.into(),
        labels: Labels::from([(DNS_LABEL.0.into(), DNS_LABEL.1.into())]),
        ip: IpAddr::V4(DNS_V4),
        ports: [("dns", Protocol::Udp), ("dns-tcp", Protocol::Tcp)]
            .into_iter()
            .map(|(name, protocol)| ContainerPort {
                name: Some(name.into()),
                port: crate::model::DNS_PORT,
                protocol,
            })
            .collect(),
        host_network: false,
    }
}

/// The DNS pod's namespace, with the label the API server gives every namespace.
pub(crate) fn dns_namespace() -> Namespace {
    Namespace {
        name: DNS_NAMESPACE.into(),
        labels: Labels::from([(NAMESPACE_NAME_LABEL.into(), DNS_NAMESPACE.into())]),
    }
}

/// The fully qualified name of `pod`'s Service in a cluster with `domain`, as the Kubernetes DNS
/// specification names it.
/// The local node's labels, as a kubelet registers them (`nodes` peers select by them).
pub use crate::model::node_labels;

/// The node as an endpoint: `model::NODE_NAMESPACE`, named `node`, with the node's labels, at its
/// first address, serving `port_protocols` (the local cluster's and the simulation's alike).
pub fn node_host(addresses: &[IpAddr], port_protocols: &[PortProtocol]) -> Pod {
    Pod {
        namespace: crate::model::NODE_NAMESPACE.into(),
        name: "node".into(),
        labels: node_labels(),
        ip: addresses
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(proxy::NODE_V4)),
        ports: ContainerPort::serving(port_protocols),
        host_network: false,
    }
}

pub fn service_fqdn(pod: &PodRef, domain: &str) -> String {
    format!(
        "{}.{}.svc.{domain}.",
        crate::backend::kube::manifests::service_name(&pod.name),
        pod.namespace
    )
}

/// A pod's own record: `10-244-1-10.x.pod.cluster.local.` (colons become dashes for IPv6).
fn pod_fqdn(ip: IpAddr, namespace: &str) -> String {
    let dashed = ip.to_string().replace(['.', ':'], "-");
    format!("{dashed}.{namespace}.pod.{CLUSTER_DOMAIN}.")
}

/// The host outside the cluster: a network namespace routed to the node like a pod, but no pod
/// (no policy selects it, nothing in the cluster knows it), at a documentation address
/// (203.0.113.10, 2001:db8::10). NodePort probes start there; external ones end there.
struct Outside {
    /// As the analysis sees it: `model::OUTSIDE_NAMESPACE`, its address, the ports it serves.
    host: Pod,
    addresses: Vec<IpAddr>,
    agent: Option<Agent>,
}

const OUTSIDE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 10);
const OUTSIDE_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

struct SlotTable {
    slots: Vec<usize>,
    families: IpFamilies,
}

impl nft::Slots for SlotTable {
    fn slot(&self, pod: PodId) -> usize {
        self.slots[pod]
    }

    fn addresses(&self, pod: &Pod) -> Vec<IpAddr> {
        self.families.addresses(pod.ip)
    }
}

impl LocalBackend {
    /// Checks the host, creates the node namespace and, for the nftables dataplane, its table.
    pub async fn start(options: LocalOptions) -> Result<Self, BackendError> {
        if !rustix::process::geteuid().is_root() {
            return Err(BackendError::NotRoot);
        }
        if !host::have("ip") {
            return Err(BackendError::MissingTool {
                tool: "ip",
                hint: "install iproute2 (apt-get install -y iproute2)",
            });
        }
        // The service proxy needs nft whatever the dataplane.
        if !host::have("nft") {
            return Err(BackendError::MissingTool {
                tool: "nft",
                hint: "install nftables (apt-get install -y nftables)",
            });
        }
        let existing = host::netns_list();
        let run_id = loop {
            let id = format!("{:06x}", fastrand::u32(..0x0100_0000));
            if !existing
                .iter()
                .any(|n| n.starts_with(&format!("{NETNS_PREFIX}{id}-")))
            {
                break id;
            }
        };
        let mut backend = LocalBackend {
            names: Names { run_id },
            options,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            cluster_policies: BTreeMap::new(),
            ghosts: BTreeMap::new(),
            next_slot: 0,
            programmer: None,
            history: Default::default(),
            owner_file: None,
            cleaned: false,
            udp_ports: UdpSourcePorts::default(),
            sessions: Sessions::default(),
            next_node_port: proxy::NODE_PORT_FIRST,
            outside: None,
            node_host: None,
            dns: None,
        };
        if let Err(e) = backend.create_node().await {
            backend.remove_everything().await;
            return Err(e);
        }
        Ok(backend)
    }

    pub fn run_id(&self) -> &str {
        &self.names.run_id
    }

    async fn create_node(&mut self) -> Result<(), BackendError> {
        std::fs::create_dir_all(OWNER_DIR).map_err(BackendError::io(format!(
            "creating {OWNER_DIR} (where runs record their owner)"
        )))?;
        let owner = PathBuf::from(OWNER_DIR).join(format!("{}.pid", self.names.run_id));
        std::fs::write(&owner, std::process::id().to_string())
            .map_err(BackendError::io(format!("writing {}", owner.display())))?;
        self.owner_file = Some(owner);
        let node = self.names.node();
        network::create_node(&node).await?;
        host::nft(&node, &proxy::install()).await?;
        if self.options.faults.loss_permille > 0 {
            host::nft(
                &node,
                &network::loss_table(self.options.faults.loss_permille),
            )
            .await?;
        }
        if self.options.dataplane == Dataplane::Nftables {
            self.programmer = Some(Programmer::start(node, self.options.faults.clone()).await?);
        }
        Ok(())
    }

    /// The DNS pod, while it is part of the cluster: not while a scenario's model has a namespace
    /// of the same name (the runner refuses names for such scenarios, and this one is being
    /// replaced).
    fn dns_in_cluster(&self) -> Option<&Dns> {
        self.dns
            .as_ref()
            .filter(|_| !self.namespaces.contains_key(DNS_NAMESPACE))
    }

    /// The cluster as it stands, for compiling rules; with each pod's slot (the DNS pod's last).
    fn snapshot(&self) -> Result<(Cluster, Vec<usize>), BackendError> {
        let dns = self.dns_in_cluster();
        let description = ClusterDescription {
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, labels)| NamespaceDescription {
                    name: name.clone(),
                    labels: labels.clone(),
                })
                .chain(dns.map(|_| NamespaceDescription::from(&dns_namespace())))
                .collect(),
            pods: self
                .pods
                .values()
                .map(|p| PodDescription::from(&p.pod))
                .chain(dns.map(|d| PodDescription::from(&d.pod)))
                .collect(),
        };
        let cluster = description
            .build("local cluster")
            .map_err(|e| BackendError::Rejected {
                mutation: "the local cluster's state".into(),
                source: e.into(),
            })?;
        let slots = self
            .pods
            .values()
            .map(|p| p.slot)
            .chain(dns.map(|d| d.slot))
            .collect();
        Ok((cluster, slots))
    }

    /// Brings the service proxy in line with the current pods (one transaction), and the DNS
    /// server's names with their Services.
    async fn sync_services(&mut self) -> Result<(), BackendError> {
        let backends = self
            .pods
            .values()
            .filter(|p| !p.pod.host_network)
            .map(|p| proxy::Backend {
                slot: p.slot,
                pod: &p.pod,
                addresses: &p.addresses,
                node_ports: &p.node_ports,
            })
            .chain(self.dns.iter().map(|d| proxy::Backend {
                slot: d.slot,
                pod: &d.pod,
                addresses: &d.addresses,
                node_ports: &[],
            }));
        host::nft(&self.names.node(), &proxy::update(backends)).await?;
        let records = self.dns_records();
        if let Some(dns) = &mut self.dns {
            let line = serde_json::to_string(&records).unwrap_or_default();
            dns.server.send(&dns.pod.key(), &line).await?;
        }
        Ok(())
    }

    /// Every name the DNS server answers: each pod's Service (the DNS's own as `kube-dns`) at its
    /// ClusterIPs, and each pod at its addresses.
    fn dns_records(&self) -> DnsRecords {
        let mut records = Vec::new();
        let service = |slot: usize, addresses: &[IpAddr]| -> Vec<IpAddr> {
            addresses
                .iter()
                .map(|ip| proxy::cluster_ip(slot, Family::of(*ip)))
                .collect()
        };
        for local in self.pods.values().filter(|p| !p.pod.host_network) {
            let key = local.pod.key();
            records.push(DnsRecord {
                name: service_fqdn(&key, CLUSTER_DOMAIN),
                addresses: service(local.slot, &local.addresses),
            });
            for ip in &local.addresses {
                records.push(DnsRecord {
                    name: pod_fqdn(*ip, &key.namespace),
                    addresses: vec![*ip],
                });
            }
        }
        if let Some(dns) = &self.dns {
            records.push(DnsRecord {
                name: format!("kube-dns.{DNS_NAMESPACE}.svc.{CLUSTER_DOMAIN}."),
                addresses: service(dns.slot, &dns.addresses),
            });
        }
        DnsRecords { records }
    }

    /// Where the pods' resolvers send queries: the DNS Service's ClusterIP (IPv4 when the
    /// cluster has it), as a pod's resolv.conf would name it.
    fn nameserver(&self) -> Option<std::net::SocketAddr> {
        let dns = self.dns.as_ref()?;
        let ip = dns.addresses.first()?;
        Some(std::net::SocketAddr::new(
            proxy::cluster_ip(dns.slot, Family::of(*ip)),
            crate::model::DNS_PORT,
        ))
    }

    /// Starts the cluster's DNS on first use.
    async fn ensure_dns(&mut self) -> Result<ClusterDns, BackendError> {
        if self.dns.is_none() {
            let addresses = self.options.families.addresses(IpAddr::V4(DNS_V4));
            let pod = Pod {
                ip: addresses[0],
                ..dns_pod()
            };
            if let Some(other) = self
                .pods
                .values()
                .find(|p| p.addresses.iter().any(|ip| addresses.contains(ip)))
            {
                return Err(BackendError::Pod {
                    pod: pod.key(),
                    message: format!("its address is already used by {}", other.pod.key()),
                });
            }
            let slot = self.next_slot;
            self.next_slot += 1;
            let netns = self.names.pod(slot);
            network::create_pod_link(&self.names.node(), &netns, slot, &addresses).await?;
            network::bring_up_pod(&netns, &addresses).await?;
            let mut server = Agent::dns(&self.options.agent, &netns, &pod, CLUSTER_DOMAIN)?;
            let timeout = Duration::from_secs(10);
            server
                .await_ready(&pod.key(), tokio::time::Instant::now() + timeout, timeout)
                .await?;
            self.dns = Some(Dns {
                slot,
                pod,
                addresses,
                server,
            });
            self.sync_services().await?;
            self.sync().await?;
        }
        let dns = self.dns.as_ref().map(|d| d.pod.clone());
        Ok(ClusterDns {
            namespace: dns_namespace(),
            servers: dns.into_iter().collect(),
        })
    }

    /// Brings the dataplane in line with the current pods, labels and policies: one atomic
    /// transaction touching only the chains that changed.
    async fn sync(&mut self) -> Result<(), BackendError> {
        let at = tokio::time::Instant::now();
        if self.programmer.is_none() {
            return Ok(());
        }
        let (cluster, slots) = self.snapshot()?;
        let enforced: Vec<Policy> = self
            .ghosts
            .iter()
            .filter(|(key, _)| !self.policies.contains_key(*key))
            .chain(&self.policies)
            .map(|(_, p)| p.clone())
            .collect();
        let crate::faults::Enforced {
            cluster,
            policies,
            egress_clobbered,
        } = self.history.enforce(
            &self.options.faults,
            self.options.families,
            &cluster,
            &enforced,
        );
        let egress_clobbered = self
            .pods
            .values()
            .filter(|p| egress_clobbered.contains(&p.pod.key()))
            .map(|p| p.slot)
            .collect();
        let state = programmer::State {
            at,
            policies,
            egress_clobbered,
            cluster_policies: self.options.faults.distort_cluster(
                &self.cluster_policies.values().cloned().collect::<Vec<_>>(),
                &cluster,
            ),
            created: self
                .pods
                .values()
                .map(|p| p.created)
                .chain(self.dns_in_cluster().map(|_| at))
                .collect(),
            infrastructure: self.dns_in_cluster().map(|d| d.slot).into_iter().collect(),
            cluster,
            slots,
            families: self.options.families,
        };
        match &mut self.programmer {
            Some(programmer) => programmer.program(state).await,
            None => Ok(()),
        }
    }

    /// Kills agents and deletes every namespace of this run. Safe to call more than once.
    async fn remove_everything(&mut self) {
        if let Some(programmer) = &mut self.programmer {
            programmer.stop().await;
        }
        for local in self.pods.values_mut() {
            if let Some(agent) = &mut local.agent {
                agent.stop().await;
            }
        }
        if let Some(agent) = self.outside.as_mut().and_then(|o| o.agent.as_mut()) {
            agent.stop().await;
        }
        if let Some((_, Some(agent))) = &mut self.node_host {
            agent.stop().await;
        }
        if let Some(dns) = &mut self.dns {
            dns.server.stop().await;
        }
        self.remove_namespaces_now();
    }

    fn remove_namespaces_now(&mut self) {
        self.sessions.clear();
        for local in self.pods.values() {
            host::netns_delete_now(&self.names.pod(local.slot));
        }
        if let Some(dns) = self.dns.take() {
            host::netns_delete_now(&self.names.pod(dns.slot));
        }
        // Unconditionally: a half-made outside host has a namespace but no record.
        self.outside = None;
        self.node_host = None;
        host::netns_delete_now(&self.names.outside());
        host::netns_delete_now(&self.names.node());
        if let Some(owner) = self.owner_file.take() {
            let _ = std::fs::remove_file(owner);
        }
        self.pods.clear();
        self.cleaned = true;
    }

    fn pod_mut(&mut self, pod: &PodRef) -> Result<&mut LocalPod, BackendError> {
        self.pods.get_mut(pod).ok_or_else(|| no_pod(pod))
    }

    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError> {
        if self.namespaces.contains_key(&namespace.name) {
            return Err(BackendError::Namespace {
                namespace: namespace.name.clone(),
                message: "already exists".into(),
            });
        }
        let mut labels = namespace.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.name.clone());
        self.namespaces.insert(namespace.name.clone(), labels);
        self.sync().await
    }

    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError> {
        if !self.namespaces.contains_key(name) {
            return Err(no_namespace(name));
        }
        // Pods first: the namespace must exist while each deletion re-syncs the dataplane.
        let doomed: Vec<PodRef> = self
            .pods
            .keys()
            .filter(|p| p.namespace == name)
            .cloned()
            .collect();
        for pod in doomed {
            self.delete_pod(&pod).await?;
        }
        self.policies.retain(|(ns, _), _| ns != name);
        self.ghosts.retain(|(ns, _), _| ns != name);
        self.namespaces.remove(name);
        self.sync().await
    }

    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError> {
        let current = self
            .namespaces
            .get_mut(name)
            .ok_or_else(|| no_namespace(name))?;
        *current = labels.clone();
        current.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.sync().await
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let key = pod.key();
        let fail = |message: String| BackendError::Pod {
            pod: key.clone(),
            message,
        };
        if !self.namespaces.contains_key(&pod.namespace) {
            return Err(fail(format!("namespace {} does not exist", pod.namespace)));
        }
        if self.pods.contains_key(&key) {
            return Err(fail("already exists".into()));
        }
        if pod.host_network {
            return self.create_host_network_pod(pod).await;
        }
        let addresses = self.options.families.addresses(pod.ip);
        let taken = self
            .pods
            .values()
            .filter(|p| !p.pod.host_network)
            .map(|p| (&p.pod, &p.addresses))
            .chain(self.dns.iter().map(|d| (&d.pod, &d.addresses)));
        for (other, used) in taken {
            if let Some(ip) = addresses.iter().find(|ip| used.contains(ip)) {
                return Err(fail(format!("IP {ip} is already used by {}", other.key())));
            }
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let mut node_ports = Vec::new();
        for port in &pod.ports {
            // The range is Kubernetes' (30000-32767); a run with more ports than that gets none.
            if self.next_node_port <= 32767 {
                node_ports.push((
                    PortProtocol::new(port.port, port.protocol),
                    self.next_node_port,
                ));
                self.next_node_port += 1;
            }
        }
        self.pods.insert(
            key.clone(),
            LocalPod {
                slot,
                pod: pod.clone(),
                addresses: addresses.clone(),
                node_ports,
                created: tokio::time::Instant::now(),
                agent: None,
            },
        );
        let netns = self.names.pod(slot);
        let started = async {
            network::create_pod_link(&self.names.node(), &netns, slot, &addresses).await?;
            // Rules first, link second: the reference dataplane never lets a new pod start
            // unprotected.
            self.sync().await?;
            self.sync_services().await?;
            network::bring_up_pod(&netns, &addresses).await?;
            Agent::serve(&self.options.agent, &netns, pod)
        }
        .await;
        match started {
            Ok(agent) => {
                self.pod_mut(&key)?.agent = agent;
                Ok(())
            }
            Err(e) => {
                self.pods.remove(&key);
                host::netns_delete_now(&netns);
                let _ = self.sync().await;
                let _ = self.sync_services().await;
                Err(e)
            }
        }
    }

    /// A host-network pod: an agent in the node's namespace, serving the pod's ports at the
    /// node's addresses under the pod's name. No link, no Service, no chain of its own: its
    /// traffic is the node's.
    async fn create_host_network_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let key = pod.key();
        // The first of the pod's ports `other` serves too (they share the node's sockets).
        let shared = |other: &Pod| {
            pod.ports.iter().find(|p| {
                other
                    .ports
                    .iter()
                    .any(|o| (o.port, o.protocol) == (p.port, p.protocol))
            })
        };
        let taken = self
            .pods
            .values()
            .filter(|p| p.pod.host_network)
            .map(|p| &p.pod);
        for other in taken {
            if let Some(port) = shared(other) {
                return Err(BackendError::Pod {
                    pod: key,
                    message: format!(
                        "{}/{} is already served on the node by {}",
                        port.port,
                        port.protocol,
                        other.key()
                    ),
                });
            }
        }
        // The node's own agent gives up the pod's ports (`ensure_node_host` restarts it with
        // the others on its next use).
        if self
            .node_host
            .as_ref()
            .is_some_and(|(host, _)| shared(host).is_some())
        {
            if let Some((_, Some(agent))) = &mut self.node_host {
                agent.stop().await;
            }
            self.node_host = None;
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let agent = Agent::serve(&self.options.agent, &self.names.node(), pod)?;
        self.pods.insert(
            key,
            LocalPod {
                slot,
                pod: pod.clone(),
                addresses: proxy::node_addresses(self.options.families),
                node_ports: Vec::new(),
                created: tokio::time::Instant::now(),
                agent,
            },
        );
        self.sync().await
    }

    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError> {
        let mut local = self.pods.remove(pod).ok_or_else(|| no_pod(pod))?;
        // Its session lives in its namespace: ended first, or it would keep the namespace alive.
        self.sessions.forget(pod);
        if let Some(agent) = &mut local.agent {
            agent.stop().await;
        }
        if local.pod.host_network {
            return self.sync().await;
        }
        host::netns_delete_now(&self.names.pod(local.slot));
        self.sync_services().await?;
        self.sync().await
    }

    async fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), BackendError> {
        self.pod_mut(pod)?.pod.labels = labels.clone();
        self.sync().await
    }

    async fn apply_policy(&mut self, policy: &Policy) -> Result<(), BackendError> {
        self.ghosts
            .remove(&(policy.namespace.clone(), policy.name.clone()));
        self.policies.insert(
            (policy.namespace.clone(), policy.name.clone()),
            policy.clone(),
        );
        self.sync().await
    }

    async fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), BackendError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(deleted) = self.policies.remove(&key) else {
            return Err(BackendError::Namespace {
                namespace: namespace.into(),
                message: format!("no NetworkPolicy {name}"),
            });
        };
        if self.options.faults.has(Fault::PolicyDeletionIgnored) {
            self.ghosts.insert(key, deleted);
        }
        self.sync().await
    }

    /// Creates the outside host on first use, serving `port_protocols` (restarted when they
    /// change).
    async fn ensure_outside(
        &mut self,
        port_protocols: &[PortProtocol],
    ) -> Result<Pod, BackendError> {
        let netns = self.names.outside();
        let outside = match self.outside {
            Some(ref mut outside) => outside,
            None => {
                let addresses: Vec<IpAddr> = match self.options.families {
                    IpFamilies::Ipv4 => vec![IpAddr::V4(OUTSIDE_V4)],
                    IpFamilies::Ipv6 => vec![IpAddr::V6(OUTSIDE_V6)],
                    IpFamilies::Dual => vec![IpAddr::V4(OUTSIDE_V4), IpAddr::V6(OUTSIDE_V6)],
                };
                network::create_outside_link(&self.names.node(), &netns, &addresses).await?;
                network::bring_up_pod(&netns, &addresses).await?;
                self.outside.insert(Outside {
                    host: Pod {
                        namespace: OUTSIDE_NAMESPACE.into(),
                        name: "host".into(),
                        labels: Labels::new(),
                        ip: addresses[0],
                        ports: Vec::new(),
                        host_network: false,
                    },
                    addresses,
                    agent: None,
                })
            }
        };
        let ports = ContainerPort::serving(port_protocols);
        if outside.host.ports != ports {
            if let Some(agent) = &mut outside.agent {
                agent.stop().await;
            }
            outside.host.ports = ports;
            outside.agent = Agent::serve(&self.options.agent, &netns, &outside.host)?;
            let timeout = Duration::from_secs(10);
            if let Some(agent) = &mut outside.agent {
                agent
                    .await_ready(
                        &outside.host.key(),
                        tokio::time::Instant::now() + timeout,
                        timeout,
                    )
                    .await?;
            }
        }
        Ok(outside.host.clone())
    }

    /// The node as an endpoint on first use, serving `port_protocols` in the node namespace
    /// (restarted when they change). Its ports must not be the node's own services': the local
    /// node has none but the NodePorts (30000 and up), which the proxy's DNAT takes first.
    async fn ensure_node_host(
        &mut self,
        port_protocols: &[PortProtocol],
    ) -> Result<Pod, BackendError> {
        // What host-network pods serve, they answer: the node's own agent serves the rest.
        let taken: Vec<PortProtocol> = self
            .pods
            .values()
            .filter(|p| p.pod.host_network)
            .flat_map(|p| {
                p.pod
                    .ports
                    .iter()
                    .map(|c| PortProtocol::new(c.port, c.protocol))
            })
            .collect();
        let free: Vec<PortProtocol> = port_protocols
            .iter()
            .filter(|pp| !taken.contains(pp))
            .copied()
            .collect();
        let wanted = node_host(&proxy::node_addresses(self.options.families), &free);
        if let Some((host, _)) = &self.node_host
            && host.ports == wanted.ports
        {
            return Ok(host.clone());
        }
        if let Some((_, Some(agent))) = &mut self.node_host {
            agent.stop().await;
        }
        let netns = self.names.node();
        let mut agent = Agent::serve(&self.options.agent, &netns, &wanted)?;
        if let Some(agent) = &mut agent {
            let timeout = Duration::from_secs(10);
            agent
                .await_ready(
                    &wanted.key(),
                    tokio::time::Instant::now() + timeout,
                    timeout,
                )
                .await?;
        }
        self.node_host = Some((wanted.clone(), agent));
        Ok(wanted)
    }

    fn netns_of(&self, pod: &PodRef) -> Result<String, BackendError> {
        if self.outside.as_ref().is_some_and(|o| o.host.key() == *pod) {
            return Ok(self.names.outside());
        }
        if self
            .node_host
            .as_ref()
            .is_some_and(|(h, _)| h.key() == *pod)
        {
            return Ok(self.names.node());
        }
        let local = self.pods.get(pod).ok_or_else(|| BackendError::Probe {
            pod: pod.clone(),
            message: "no such pod".into(),
        })?;
        if local.pod.host_network {
            return Ok(self.names.node());
        }
        Ok(self.names.pod(local.slot))
    }
}

fn no_pod(pod: &PodRef) -> BackendError {
    BackendError::Pod {
        pod: pod.clone(),
        message: "no such pod".into(),
    }
}

fn no_namespace(name: &str) -> BackendError {
    BackendError::Namespace {
        namespace: name.into(),
        message: "no such namespace".into(),
    }
}

impl Backend for LocalBackend {
    /// One node (the host's kernel) and polygraph's own dataplane, faults named.
    async fn cluster_info(&mut self) -> super::ClusterInfo {
        let dataplane = match self.options.dataplane {
            Dataplane::Nftables => "polygraph reference dataplane (nftables)",
            Dataplane::None => "none (policies ignored)",
        };
        let faults = &self.options.faults;
        super::ClusterInfo {
            server_version: None,
            nodes: 1,
            kernels: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|release| vec![release.trim().to_string()])
                .unwrap_or_default(),
            cni: Some(if faults.is_empty() {
                dataplane.to_string()
            } else {
                format!("{dataplane}, injected faults: {faults}")
            }),
            cni_images: Vec::new(),
        }
    }
    fn describe(&self) -> String {
        let dataplane = match self.options.dataplane {
            Dataplane::Nftables => "nftables dataplane",
            Dataplane::None => "no dataplane: policies are ignored",
        };
        let faults = &self.options.faults;
        if faults.is_empty() {
            format!("local ({dataplane}, run {})", self.names.run_id)
        } else {
            format!(
                "local ({dataplane}, injected faults: {faults}, run {})",
                self.names.run_id
            )
        }
    }

    fn cleanup_message(&self) -> String {
        "the local cluster was removed".into()
    }

    fn addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        if let Some(outside) = self.outside.as_ref().filter(|o| o.host.key() == *pod) {
            return outside.addresses.clone();
        }
        if self
            .node_host
            .as_ref()
            .is_some_and(|(h, _)| h.key() == *pod)
        {
            return proxy::node_addresses(self.options.families);
        }
        self.pods
            .get(pod)
            .map(|p| p.addresses.clone())
            .unwrap_or_default()
    }

    fn node_port(&self, pod: &PodRef, pp: PortProtocol, family: Family) -> Option<(IpAddr, u16)> {
        let local = self.pods.get(pod)?;
        if !local.addresses.iter().any(|ip| Family::of(*ip) == family) {
            return None;
        }
        let (_, port) = local.node_ports.iter().find(|(p, _)| *p == pp)?;
        Some((proxy::node_address(family), *port))
    }

    /// The outside namespace, for both NodePort clients and external servers; the node
    /// namespace for `node`.
    async fn outside(
        &mut self,
        target: ProbeTarget,
        port_protocols: &[PortProtocol],
    ) -> Result<Vec<Pod>, String> {
        if target == ProbeTarget::Node {
            return match self.ensure_node_host(port_protocols).await {
                Ok(host) => Ok(vec![host]),
                Err(e) => Err(format!("the node could not serve as an endpoint: {e}")),
            };
        }
        match self.ensure_outside(port_protocols).await {
            Ok(host) => Ok(vec![host]),
            Err(e) => Err(format!("the outside host could not be set up: {e}")),
        }
    }

    fn service_name(&self, pod: &PodRef) -> Option<String> {
        self.pods
            .contains_key(pod)
            .then(|| service_fqdn(pod, CLUSTER_DOMAIN))
    }

    /// The DNS pod, started on first use.
    async fn dns(&mut self) -> Result<ClusterDns, String> {
        self.ensure_dns()
            .await
            .map_err(|e| format!("the cluster DNS could not be set up: {e}"))
    }

    fn service_addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        self.pods
            .get(pod)
            .map(|p| {
                p.addresses
                    .iter()
                    .map(|ip| proxy::cluster_ip(p.slot, Family::of(*ip)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError> {
        match mutation {
            Mutation::CreateNamespace(ns) => self.create_namespace(ns).await,
            Mutation::DeleteNamespace(name) => self.delete_namespace(name).await,
            Mutation::SetNamespaceLabels { namespace, labels } => {
                self.set_namespace_labels(namespace, labels).await
            }
            Mutation::CreatePod(pod) => self.create_pod(pod).await,
            Mutation::DeletePod(pod) => self.delete_pod(pod).await,
            Mutation::SetPodLabels { pod, labels } => self.set_pod_labels(pod, labels).await,
            Mutation::ApplyPolicy(policy) => self.apply_policy(policy).await,
            Mutation::DeletePolicy { namespace, name } => self.delete_policy(namespace, name).await,
            Mutation::ApplyClusterPolicy(policy) => {
                self.cluster_policies
                    .insert((policy.kind, policy.name.clone()), policy.clone());
                self.sync().await
            }
            Mutation::DeleteClusterPolicy { kind, name } => {
                if self
                    .cluster_policies
                    .remove(&(*kind, name.clone()))
                    .is_none()
                {
                    return Err(BackendError::Rejected {
                        mutation: mutation.to_string(),
                        source: crate::world::WorldError::Missing {
                            what: kind.as_str(),
                            name: name.clone(),
                        },
                    });
                }
                self.sync().await
            }
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for (key, local) in &mut self.pods {
            if let Some(agent) = &mut local.agent {
                agent.await_ready(key, deadline, timeout).await?;
            }
        }
        Ok(())
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let netns = self.netns_of(from)?;
        let request = || {
            batch_request(
                targets,
                timing,
                Some((&self.udp_ports, from)),
                self.nameserver(),
            )
        };
        // The agent finishes within one timeout; allow generously for a loaded machine.
        let limit = timing.timeout + AGENT_SLACK;
        self.sessions
            .probe(
                from,
                || agent::session(&self.options.agent, &netns, from, AGENT_SLACK),
                request,
                targets.len(),
                limit,
            )
            .await
    }

    fn sessions_broken(&self) -> u64 {
        self.sessions.broken()
    }

    async fn probe_alone(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let netns = self.netns_of(from)?;
        let request = probe_request(
            targets,
            timing,
            Some((&self.udp_ports, from)),
            self.nameserver(),
        );
        agent::probe(
            &self.options.agent,
            &netns,
            from,
            &request,
            targets.len(),
            timing.timeout,
        )
        .await
    }

    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        let netns = self.netns_of(from)?;
        self.sessions
            .hold(
                from,
                || agent::session(&self.options.agent, &netns, from, AGENT_SLACK),
                hold_request(targets, timeout, self.nameserver()),
                timeout + AGENT_SLACK,
            )
            .await
    }

    async fn cleanup(&mut self) -> Result<(), BackendError> {
        if !self.cleaned {
            self.remove_everything().await;
        }
        Ok(())
    }
}

/// The last line of defence: a backend dropped without `cleanup` (an error path, a panic) still
/// removes its namespaces. Agents die with `kill_on_drop`.
impl Drop for LocalBackend {
    fn drop(&mut self) {
        if !self.cleaned {
            for local in self.pods.values_mut() {
                if let Some(agent) = &mut local.agent {
                    agent.kill();
                }
            }
            if let Some(agent) = self.outside.as_mut().and_then(|o| o.agent.as_mut()) {
                agent.kill();
            }
            if let Some((_, Some(agent))) = &mut self.node_host {
                agent.kill();
            }
            if let Some(dns) = &mut self.dns {
                dns.server.kill();
            }
            self.remove_namespaces_now();
        }
    }
}
