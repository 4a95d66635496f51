//! `polygraph analyze`: the oracle's truth table for a cluster and a set of policies, offline.

use std::collections::{BTreeMap, HashMap};

use std::net::IpAddr;

use crate::matrix::{Cell, TruthTable};
use crate::model::{Cluster, Pod, PortProtocol, ProbeTarget};
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
    let table = oracle.truth_table(&port_protocols);
    warnings.extend(undefined_warnings(&oracle, &table));
    Analysis {
        cluster,
        policies,
        cluster_policies,
        table,
        warnings,
        through_services: false,
    }
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
