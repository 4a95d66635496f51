//! `polygraph analyze`: the oracle's truth table for a cluster and a set of policies, offline.

use std::collections::{BTreeMap, HashMap};

use std::net::IpAddr;

use crate::matrix::{Cell, TruthTable};
use crate::model::{Cluster, Pod, PodId, PortProtocol, ProbeTarget};
use crate::policy::{ClusterPolicy, Oracle, Policy, PolicySet};

/// The result of an analysis: the inputs as used, the table, and what the user should know.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub cluster: Cluster,
    /// After de-duplication: a later policy with the same namespace/name replaces an earlier one,
    /// as `kubectl apply` would.
    pub policies: Vec<Policy>,
    /// Cluster-scoped policies, de-duplicated by kind and name the same way.
    pub cluster_policies: Vec<ClusterPolicy>,
    pub table: TruthTable,
    pub warnings: Vec<String>,
    /// The cells are probes through Services: a pod's hairpin to itself is subject to cluster
    /// policies (`ProbeTarget::Service`).
    pub through_services: bool,
}

impl Analysis {
    pub fn oracle(&self) -> Oracle<'_> {
        let oracle = Oracle::tiered(&self.cluster, &self.policies, &self.cluster_policies);
        if self.through_services {
            oracle.through_services()
        } else {
            oracle
        }
    }

    /// The same question with pods at other addresses (a family's, or the ones a cluster
    /// assigned): ipBlock and networks answers depend on them. `None` keeps a pod's address.
    pub fn at_addresses(&self, address: impl Fn(&Pod) -> Option<IpAddr>) -> Analysis {
        let moved = self
            .cluster
            .pods()
            .iter()
            .any(|p| address(p).is_some_and(|ip| ip != p.ip));
        if !moved {
            return self.clone();
        }
        let mut description = self.cluster.description();
        for (pod, model) in description.pods.iter_mut().zip(self.cluster.pods()) {
            if let Some(ip) = address(model) {
                pod.ip = Some(ip.to_string());
            }
        }
        match description.build("real addresses") {
            Ok(cluster) => {
                let mut moved = analyze(cluster, self.policy_set(), self.table.port_protocols());
                if self.through_services {
                    moved = moved.for_target(ProbeTarget::Service);
                }
                moved
            }
            // Two pods claiming one address would be the cluster's bug; judge against the model.
            Err(_) => self.clone(),
        }
    }

    /// The analysis for probes through `target`. Through a Service the spec judges a cell at the
    /// backend pod, after DNAT, so only the hairpin cells change: a pod reaching itself is subject
    /// to cluster policies, and judged strictly where one decides it.
    pub fn for_target(&self, target: ProbeTarget) -> Analysis {
        if !target.through_cluster_ip() || self.through_services {
            return self.clone();
        }
        let mut analysis = self.clone();
        analysis.through_services = true;
        let oracle = analysis.oracle();
        let mut table = oracle.truth_table(self.table.port_protocols());
        host_network_cells(
            &self.cluster,
            &self.policies,
            &self.cluster_policies,
            &mut table,
        );
        for k in 0..table.port_protocols().len() {
            for pod in 0..table.pods().len() {
                let why = oracle.explain(Cell {
                    from: pod,
                    to: pod,
                    port_protocol: table.port_protocols()[k],
                });
                let by_cluster = |d: &crate::policy::DirectionExplanation| {
                    matches!(d.decider, crate::policy::Decider::Cluster(_))
                };
                if by_cluster(&why.egress) || by_cluster(&why.ingress) {
                    let mut decision = table.get(k, pod, pod);
                    decision.judged_self = true;
                    table.set(k, pod, pod, decision);
                }
            }
        }
        analysis.table = table;
        analysis
    }

    /// Both families, as they were analysed.
    pub fn policy_set(&self) -> PolicySet {
        PolicySet {
            network: self.policies.clone(),
            cluster: self.cluster_policies.clone(),
        }
    }
}

/// Runs the oracle over `port_protocols` (every served pair when empty).
pub fn analyze(cluster: Cluster, policies: PolicySet, port_protocols: &[PortProtocol]) -> Analysis {
    let mut warnings = Vec::new();
    let cluster_policies = dedupe_cluster(policies.cluster, &mut warnings);
    let policies = dedupe(policies.network, &mut warnings);
    for policy in &policies {
        if cluster.namespace(&policy.namespace).is_none() {
            warnings.push(format!(
                "{}: policy {} is in namespace {:?}, which the cluster model does not have: it selects no pods \
                 (set metadata.namespace, or -n)",
                policy.origin,
                policy.key(),
                policy.namespace
            ));
        }
    }
    let port_protocols = if port_protocols.is_empty() {
        cluster.served_port_protocols()
    } else {
        port_protocols.to_vec()
    };
    let oracle = Oracle::tiered(&cluster, &policies, &cluster_policies);
    let mut table = oracle.truth_table(&port_protocols);
    warnings.extend(undefined_warnings(&oracle, &table));
    warnings.extend(host_network_cells(
        &cluster,
        &policies,
        &cluster_policies,
        &mut table,
    ));
    Analysis {
        cluster,
        policies,
        cluster_policies,
        table,
        warnings,
        through_services: false,
    }
}

/// Cells from or to a host-network pod, judged both ways the spec allows: as the pod its labels
/// describe (the policies that select it, the selectors that match it:
/// `Cluster::with_host_network_as_pods`), and as the node whose network it is in (no policy
/// selects it, only address peers match it, and a pod's own node may always reach it: what the
/// model's selectors do, `Pod::host_network`). Where the two agree that is the
/// answer; where they differ, NetworkPolicy leaves it to the implementation ("undefined",
/// holding the allowing reading). The warning says how many cells that is.
fn host_network_cells(
    cluster: &Cluster,
    policies: &[Policy],
    cluster_policies: &[ClusterPolicy],
    table: &mut TruthTable,
) -> Option<String> {
    let host_network: Vec<PodId> = cluster.host_network().collect();
    if host_network.is_empty() {
        return None;
    }
    let as_pods = cluster.with_host_network_as_pods();
    let pod_table =
        Oracle::tiered(&as_pods, policies, cluster_policies).truth_table(table.port_protocols());
    let is_host = |id: PodId| host_network.contains(&id);
    let mut undefined = 0;
    for k in 0..table.port_protocols().len() {
        for from in 0..table.pods().len() {
            for to in 0..table.pods().len() {
                if !is_host(from) && !is_host(to) {
                    continue;
                }
                let mut node = table.get(k, from, to);
                if is_host(from) && !cluster.is_outside(to) && !is_host(to) {
                    node = node.from_own_node();
                }
                let pod = pod_table.get(k, from, to);
                if pod.allowed() != node.allowed() && !node.undefined {
                    undefined += 1;
                    node.undefined = true;
                    node.drop = false;
                    if pod.allowed() {
                        node.egress = pod.egress;
                        node.ingress = pod.ingress;
                    }
                }
                table.set(k, from, to, node);
            }
        }
    }
    (undefined > 0).then(|| {
        let plural = if undefined == 1 { "" } else { "s" };
        format!(
            "undefined ({undefined} cell{plural}, shown as ~ and never failed): a host-network pod is the node to some \
             implementations and a selectable pod to others, and NetworkPolicy leaves it to them"
        )
    })
}

/// One warning per reason the spec leaves cells open (policies of equal priority that disagree,
/// rules that need DNS), with how many cells it affects.
fn undefined_warnings(oracle: &Oracle<'_>, table: &TruthTable) -> Vec<String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (cell, decision) in table.cells() {
        if !decision.undefined {
            continue;
        }
        let why = oracle.explain(cell);
        for d in [&why.egress, &why.ingress] {
            if let Some(reason) = &d.undefined {
                for part in reason.split("; ") {
                    *reasons.entry(part.to_string()).or_default() += 1;
                }
            }
        }
    }
    reasons
        .into_iter()
        .map(|(reason, cells)| {
            let plural = if cells == 1 { "" } else { "s" };
            format!("undefined ({cells} cell{plural}, shown as ~ and never failed): {reason}")
        })
        .collect()
}

fn dedupe_cluster(policies: Vec<ClusterPolicy>, warnings: &mut Vec<String>) -> Vec<ClusterPolicy> {
    let mut kept: Vec<ClusterPolicy> = Vec::with_capacity(policies.len());
    for policy in policies {
        match kept
            .iter_mut()
            .find(|k| k.kind == policy.kind && k.name == policy.name)
        {
            Some(existing) => {
                warnings.push(format!(
                    "{}: {} replaces the one from {}",
                    policy.origin,
                    policy.key(),
                    existing.origin
                ));
                *existing = policy;
            }
            None => kept.push(policy),
        }
    }
    kept
}

fn dedupe(policies: Vec<Policy>, warnings: &mut Vec<String>) -> Vec<Policy> {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Policy> = Vec::with_capacity(policies.len());
    for policy in policies {
        match position.get(&policy.key()) {
            Some(&i) => {
                warnings.push(format!(
                    "{}: policy {} replaces the one from {}",
                    policy.origin,
                    policy.key(),
                    kept[i].origin
                ));
                kept[i] = policy;
            }
            None => {
                position.insert(policy.key(), kept.len());
                kept.push(policy);
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use crate::model::{PortProtocol, Protocol};
    use crate::scenario::library;

    /// The library's `host-network-pods`, offline: a cell the two readings of a host-network pod
    /// (the pod its labels say, the node whose network it is in) answer alike is judged; one they
    /// answer apart is undefined.
    #[test]
    fn cells_of_a_host_network_pod_are_undefined_only_where_its_readings_differ() {
        let all = library::load_all().expect("the library loads");
        let scenario = all
            .iter()
            .find(|s| s.name == "host-network-pods")
            .expect("host-network-pods");
        let cell = |step: usize, from: &str, to: &str, port: u16| {
            let table = &scenario.steps[step].analysis.table;
            let id = |name: &str| {
                table
                    .pods()
                    .iter()
                    .position(|p| p.to_string() == name)
                    .expect("pod")
            };
            let k = table
                .port_protocols()
                .iter()
                .position(|pp| *pp == PortProtocol::new(port, Protocol::Tcp))
                .expect("port");
            table.get(k, id(from), id(to))
        };
        // Ingress denied in x: the node may reach its pods, the pod may not.
        let into_x = cell(0, "y/host", "x/a", 80);
        assert!(into_x.undefined && into_x.allowed(), "{into_x:?}");
        let plain = cell(0, "y/a", "x/a", 80);
        assert!(!plain.undefined && !plain.allowed());
        // Nothing selects y/host either way: x reaches it.
        let to_host = cell(0, "x/a", "y/host", 8080);
        assert!(!to_host.undefined && to_host.allowed());
        // Egress from x only to app=host-agent: the pod is, the node is not.
        let by_label = cell(1, "x/a", "y/host", 8080);
        assert!(by_label.undefined, "{by_label:?}");
        let other = cell(1, "x/a", "y/a", 80);
        assert!(!other.undefined && !other.allowed());
    }
}
