//! Which paths a step is probed on, and what the spec says on each: targets × families, each path
//! with its own analysis (pods at their family's addresses, a hairpin through a Service subject to
//! cluster policies, hosts outside the cluster where the path has one) and its own probe targets.

use std::net::IpAddr;

use polygraph_agent::wire::{AddressFamily, Target};

use crate::analyze::{Analysis, analyze};
use crate::backend::{Backend, BackendError};
use crate::matrix::Cell;
use crate::model::{
    Cluster, ClusterDns, DNS_PORT, Family, Pod, PodId, PortProtocol, ProbePath, ProbeTarget,
    Protocol,
};
use crate::policy::Oracle;

/// How a scenario is probed: its targets, and the hosts outside the cluster the backend provided
/// for the targets that need them (`Backend::outside`).
#[derive(Debug, Clone, Default)]
pub struct PathPlan {
    pub targets: Vec<ProbeTarget>,
    /// Per target that needs one: the hosts outside the cluster (the NodePort client, the external
    /// servers), in `model::OUTSIDE_NAMESPACE`.
    pub outside: Vec<(ProbeTarget, Vec<Pod>)>,
    /// The cluster's DNS, when a target resolves names (`Backend::dns`).
    pub dns: Option<ClusterDns>,
    /// The families probed, of those the pods have; `None`: every family they have.
    pub families: Option<Vec<Family>>,
    /// The hairpin rule the run judges by (`RunOptions::service_hairpin`).
    pub hairpin: crate::model::ServiceHairpin,
}

impl PathPlan {
    /// Pod IPs only: the plan of every run before targets existed.
    pub fn pod_ips() -> PathPlan {
        PathPlan::default()
    }

    /// A plan for targets that need nothing outside the cluster.
    pub fn of(targets: &[ProbeTarget]) -> PathPlan {
        PathPlan {
            targets: targets.to_vec(),
            outside: Vec::new(),
            dns: None,
            families: None,
            hairpin: Default::default(),
        }
    }

    /// The plan for `targets`, asking the backend for the hosts outside the cluster those that
    /// need one require (serving `port_protocols` where the backend runs them). `Err(reason)`: the
    /// backend cannot probe one of the targets. `namespaces` are every namespace the scenario
    /// has at some point: one named like the cluster DNS's own would make two of them.
    pub async fn prepare<B: Backend>(
        backend: &mut B,
        targets: &[ProbeTarget],
        port_protocols: &[PortProtocol],
        clusters: &[&Cluster],
    ) -> Result<PathPlan, String> {
        let mut namespaces: Vec<&str> = clusters
            .iter()
            .flat_map(|c| c.namespaces().iter().map(|n| n.name.as_str()))
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        // The node serves none of the ports a host-network pod of the scenario does: there the
        // pod answers.
        let host_network: Vec<PortProtocol> = clusters
            .iter()
            .flat_map(|c| c.host_network().map(|id| c.pod(id)))
            .flat_map(|p| {
                p.ports
                    .iter()
                    .map(|c| PortProtocol::new(c.port, c.protocol))
            })
            .collect();
        let mut plan = PathPlan::of(targets);
        for &target in targets.iter().filter(|t| t.needs_outside()) {
            let served: Vec<PortProtocol> = port_protocols
                .iter()
                .filter(|pp| target != ProbeTarget::Node || !host_network.contains(pp))
                .copied()
                .collect();
            let hosts = backend.outside(target, &served).await?;
            plan.outside.push((target, hosts));
        }
        if targets.iter().any(|t| t.needs_dns()) {
            let dns = backend.dns().await?;
            if namespaces.contains(&dns.namespace.name.as_str()) {
                return Err(format!(
                    "the scenario has a namespace {} of its own, where the cluster's DNS runs: \
                     names through cluster DNS cannot be judged (name the namespace otherwise)",
                    dns.namespace.name
                ));
            }
            plan.dns = Some(dns);
        }
        Ok(plan)
    }

    fn outside_hosts(&self, target: ProbeTarget) -> &[Pod] {
        self.outside
            .iter()
            .find(|(t, _)| *t == target)
            .map_or(&[], |(_, hosts)| hosts.as_slice())
    }

    /// The paths a step is probed on: each target in each family some pod has (of the plan's
    /// `families`, when it names them), IPv4 first.
    pub fn paths<B: Backend>(&self, backend: &B, analysis: &Analysis) -> Vec<ProbePath> {
        let families: Vec<Family> = [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| {
                self.families
                    .as_ref()
                    .is_none_or(|wanted| wanted.contains(f))
            })
            .filter(|&f| {
                analysis
                    .cluster
                    .pods()
                    .iter()
                    .any(|p| pod_address(backend, p, f).is_some())
            })
            .collect();
        let targets = if self.targets.is_empty() {
            &[ProbeTarget::PodIp][..]
        } else {
            &self.targets
        };
        targets
            .iter()
            .flat_map(|&target| {
                families
                    .iter()
                    .map(move |&family| ProbePath { target, family })
            })
            // An outside host without an address in the family has nothing to probe there.
            .filter(|path| {
                !path.target.needs_outside()
                    || self
                        .outside_hosts(path.target)
                        .iter()
                        .any(|h| pod_address(backend, h, path.family).is_some())
            })
            .collect()
    }

    /// The spec's answer on one path: every pod at its address in the path's family (ipBlock
    /// answers depend on it), judged the way traffic through the path's target is, with the
    /// path's hosts outside the cluster added (`Cluster::with_outside`). Pods without an address
    /// in the family keep theirs and are not probed on this path.
    pub fn analysis<B: Backend>(
        &self,
        backend: &B,
        analysis: &Analysis,
        path: ProbePath,
    ) -> Analysis {
        let mut base = analysis
            .at_addresses(|pod| pod_address(backend, pod, path.family))
            .for_target(path.target);
        if self.hairpin == crate::model::ServiceHairpin::Exempt {
            // The declared exemption: a pod to itself through its Service is what it is through
            // its own IP, left to the implementation.
            base.table.unjudge_self();
        }
        if path.target.needs_dns() {
            return self.resolving(base);
        }
        if !path.target.needs_outside() {
            return base;
        }
        let hosts: Vec<Pod> = self
            .outside_hosts(path.target)
            .iter()
            .filter_map(|h| {
                let ip = pod_address(backend, h, path.family)?;
                Some(Pod { ip, ..h.clone() })
            })
            .collect();
        // External servers serve their own ports; a NodePort reaches the pods' own.
        let port_protocols: Vec<PortProtocol> = match path.target {
            ProbeTarget::External => {
                let mut served: Vec<PortProtocol> = hosts
                    .iter()
                    .flat_map(|h| {
                        h.ports
                            .iter()
                            .map(|p| PortProtocol::new(p.port, p.protocol))
                    })
                    .collect();
                served.sort();
                served.dedup();
                served
            }
            _ => base.table.port_protocols().to_vec(),
        };
        let mut outside = analyze(
            base.cluster.with_outside(&hosts),
            base.policy_set(),
            &port_protocols,
        );
        outside.warnings = base.warnings;
        if path.target == ProbeTarget::Node {
            own_node_exempt(&mut outside);
        }
        outside
    }
}

impl PathPlan {
    /// The analysis of a path that resolves names first: every cell from a source that cannot
    /// reach any DNS server on 53/UDP (its egress, judged by the same policies and cluster
    /// policies, with the DNS servers as peers) is `no_dns`: its answer is `dns-failed`. Only the
    /// source's egress is judged: the DNS servers' own ingress belongs to the cluster's
    /// administrator, and polygraph never places policy on them. Where the spec leaves that egress
    /// to the implementation, the cells are undefined.
    fn resolving(&self, base: Analysis) -> Analysis {
        let Some(dns) = &self.dns else {
            return base;
        };
        let cluster = base.cluster.with_dns(dns);
        let oracle = Oracle::tiered(&cluster, &base.policies, &base.cluster_policies);
        let servers: Vec<PodId> = dns
            .servers
            .iter()
            .filter_map(|s| cluster.find_pod(&s.key()))
            .collect();
        let mut table = base.table.clone();
        for src in 0..base.cluster.pods().len() {
            let egress = servers.iter().map(|&server| {
                oracle
                    .explain(Cell {
                        from: src,
                        to: server,
                        port_protocol: PortProtocol::new(DNS_PORT, Protocol::Udp),
                    })
                    .egress
            });
            let (mut resolves, mut undefined) = (false, false);
            for direction in egress {
                resolves |= direction.allowed();
                undefined |= direction.undefined.is_some();
            }
            if resolves && !undefined {
                continue;
            }
            for k in 0..table.port_protocols().len() {
                for dst in 0..table.pods().len() {
                    let mut decision = table.get(k, src, dst);
                    decision.no_dns = !resolves;
                    decision.undefined |= undefined;
                    table.set(k, src, dst, decision);
                }
            }
        }
        Analysis { table, ..base }
    }
}

/// The node's cells into its pods: "the only allowed connections into the pod are those from the
/// pod's node and those allowed by the ingress list" (NetworkPolicy), so allowed whatever the
/// NetworkPolicies say. Every pod polygraph's own clusters run is on their one node. Where a
/// cluster policy's Deny would block the node, the cell is undefined: the cluster-scoped API says
/// nothing of traffic from a pod's own node.
pub fn own_node_exempt(analysis: &mut Analysis) {
    let cluster = &analysis.cluster;
    let nodes: Vec<PodId> = (0..cluster.pods().len())
        .filter(|&id| cluster.is_node(id))
        .collect();
    let pods: Vec<PodId> = (0..cluster.pods().len())
        .filter(|&id| !cluster.is_outside(id))
        .collect();
    for k in 0..analysis.table.port_protocols().len() {
        for &node in &nodes {
            for &pod in &pods {
                let decision = analysis.table.get(k, node, pod).from_own_node();
                analysis.table.set(k, node, pod, decision);
            }
        }
    }
}

/// A pod's address in `family`, where the backend put it (Kubernetes assigns its own; the local
/// cluster adds an IPv6 one when dual-stack); the model's address when the backend has none.
pub fn pod_address<B: Backend>(backend: &B, pod: &Pod, family: Family) -> Option<IpAddr> {
    let real = backend.addresses(&pod.key());
    if real.is_empty() {
        return (Family::of(pod.ip) == family).then_some(pod.ip);
    }
    real.into_iter().find(|ip| Family::of(*ip) == family)
}

/// Whether the pod at `id` of a path's analysis probes on that path: hosts outside the cluster
/// only as NodePort clients, the node on its own path, pods otherwise; in the path's family
/// either way.
pub fn is_source(analysis_pods: &[Pod], outside: &[bool], id: PodId, path: ProbePath) -> bool {
    Family::of(analysis_pods[id].ip) == path.family
        && match path.target {
            ProbeTarget::NodePort => outside[id],
            ProbeTarget::Node => true,
            _ => !outside[id],
        }
}

/// Whether the cell `from` → `to` is probed on `path`: on a path with a host that is no pod,
/// only the cells between it and the pods (the pods among themselves are the pod-IP path's).
pub fn probes_cell(outside: &[bool], from: usize, to: usize, path: ProbePath) -> bool {
    !path.target.needs_outside() || outside[from] != outside[to]
}

/// The probe for destination `dst` (a pod of the path's analysis, `outside` if it is a host beyond
/// the cluster) on `pp`: its own address, its Service's, its node's NodePort, or the outside
/// server's. `Ok(None)`: not a destination on this path (another family, the wrong side of the
/// cluster's edge, nothing served).
pub fn probe_target<B: Backend>(
    backend: &B,
    dst: &Pod,
    outside: bool,
    pp: PortProtocol,
    path: ProbePath,
) -> Result<Option<Target>, BackendError> {
    if Family::of(dst.ip) != path.family || !dst.serves(pp) {
        return Ok(None);
    }
    let to = |host: IpAddr, port: u16| Ok(Some(Target::new(host.to_string(), port, pp.protocol)));
    let missing = |what: &str| BackendError::Pod {
        pod: dst.key(),
        message: format!(
            "no {} {what} to probe (--target {})",
            path.family, path.target
        ),
    };
    match (path.target, outside) {
        (ProbeTarget::External | ProbeTarget::Node, true) => to(dst.ip, pp.port),
        (ProbeTarget::Node, false) => to(dst.ip, pp.port),
        (ProbeTarget::External, false) | (_, true) => Ok(None),
        (ProbeTarget::PodIp, false) => to(dst.ip, pp.port),
        (ProbeTarget::ServiceName, false) => {
            let name = backend
                .service_name(&dst.key())
                .ok_or_else(|| missing("Service name"))?;
            Ok(Some(Target {
                host: name,
                port: pp.port,
                protocol: pp.protocol,
                family: Some(match path.family {
                    Family::V4 => AddressFamily::Ipv4,
                    Family::V6 => AddressFamily::Ipv6,
                }),
            }))
        }
        (ProbeTarget::Service, false) => {
            let service = backend
                .service_addresses(&dst.key())
                .into_iter()
                .find(|ip| Family::of(*ip) == path.family)
                .ok_or_else(|| missing("Service address"))?;
            to(service, pp.port)
        }
        (ProbeTarget::NodePort, false) => {
            let (node, port) = backend
                .node_port(&dst.key(), pp, path.family)
                .ok_or_else(|| missing("NodePort"))?;
            to(node, port)
        }
    }
}
