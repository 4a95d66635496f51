//! The oracle: which connections the NetworkPolicy spec allows in a cluster.
//!
//! The spec, in one paragraph: a pod is isolated for a direction only when some policy in its
//! namespace selects it and lists that direction in `policyTypes`; an isolated pod accepts (sends)
//! only what the union of those policies' rules allows; a non-isolated direction allows everything.
//! A connection is allowed iff the source's egress allows it AND the destination's ingress allows it.
//!
//! `truth_table` answers every cell at once from an index: which policies select each pod, and for
//! every rule the set of peer pods as a bitset, so a cell costs two bit lookups. `explain` answers
//! one cell the slow, direct way (it scans all policies), which is both the `--explain` text and an
//! independent check of the index (see the property tests).

use std::collections::HashMap;

use fixedbitset::FixedBitSet;

use super::compiled::{Direction, Policy, Rule};
use super::explain::{CellExplanation, DirectionExplanation, RuleExplanation, RuleResult};
use crate::matrix::{Cell, Decision, TruthTable};
use crate::model::{Cluster, Pod, PodId, PortProtocol};

/// Index into the policy slice the oracle was built with.
pub type PolicyId = usize;

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

pub struct Oracle<'a> {
    cluster: &'a Cluster,
    policies: &'a [Policy],
    /// Per direction, per pod: the policies that select it and list the direction.
    isolating: [Vec<Vec<PolicyId>>; 2],
    /// Per policy, per direction, per rule: the pods its peers match (ports aside).
    peer_sets: Vec<[Vec<FixedBitSet>; 2]>,
}

impl<'a> Oracle<'a> {
    pub fn new(cluster: &'a Cluster, policies: &'a [Policy]) -> Self {
        let n = cluster.pods().len();
        let mut pods_by_namespace: HashMap<&str, Vec<PodId>> = HashMap::new();
        for (id, pod) in cluster.pods().iter().enumerate() {
            pods_by_namespace
                .entry(&pod.namespace)
                .or_default()
                .push(id);
        }

        let mut isolating = [vec![Vec::new(); n], vec![Vec::new(); n]];
        let mut peer_sets = Vec::with_capacity(policies.len());
        for (pid, policy) in policies.iter().enumerate() {
            let selected: Vec<PodId> = pods_by_namespace
                .get(policy.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|&id| policy.pod_selector.matches(&cluster.pod(id).labels))
                .collect();
            let mut sets: [Vec<FixedBitSet>; 2] = [Vec::new(), Vec::new()];
            for direction in DIRECTIONS {
                let Some(rules) = policy.rules(direction) else {
                    continue;
                };
                for &id in &selected {
                    isolating[slot(direction)][id].push(pid);
                }
                // Rules of a policy that selects nobody can never matter: skip their peer sets.
                if !selected.is_empty() {
                    sets[slot(direction)] = rules
                        .iter()
                        .map(|rule| peer_set(cluster, &pods_by_namespace, policy, rule))
                        .collect();
                }
            }
            peer_sets.push(sets);
        }
        Oracle {
            cluster,
            policies,
            isolating,
            peer_sets,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster
    }

    pub fn policies(&self) -> &[Policy] {
        self.policies
    }

    /// Policies that isolate `pod` in `direction` (empty: not isolated).
    pub fn isolating_policies(&self, pod: PodId, direction: Direction) -> &[PolicyId] {
        &self.isolating[slot(direction)][pod]
    }

    /// Every cell for the given (port, protocol) pairs.
    pub fn truth_table(&self, port_protocols: &[PortProtocol]) -> TruthTable {
        let pods = self.cluster.pods();
        let n = pods.len();
        let mut table =
            TruthTable::new(pods.iter().map(Pod::key).collect(), port_protocols.to_vec());
        for (k, &pp) in port_protocols.iter().enumerate() {
            // `None`: not isolated, everything allowed.
            let ingress_from: Vec<Option<FixedBitSet>> =
                (0..n).map(|dst| self.allowed_sources(dst, pp)).collect();
            let mut named_port_cache = HashMap::new();
            let egress_to: Vec<Option<FixedBitSet>> = (0..n)
                .map(|src| self.allowed_destinations(src, pp, &mut named_port_cache))
                .collect();
            for (src, egress) in egress_to.iter().enumerate() {
                for (dst, ingress) in ingress_from.iter().enumerate() {
                    let verdict = Decision {
                        egress: egress.as_ref().is_none_or(|s| s.contains(dst)),
                        ingress: ingress.as_ref().is_none_or(|s| s.contains(src)),
                    };
                    table.set(k, src, dst, verdict);
                }
            }
        }
        table
    }

    /// Sources the ingress of `dst` accepts on `pp`; `None` when `dst` isn't ingress-isolated.
    fn allowed_sources(&self, dst: PodId, pp: PortProtocol) -> Option<FixedBitSet> {
        let policies = &self.isolating[slot(Direction::Ingress)][dst];
        if policies.is_empty() {
            return None;
        }
        let dst_pod = self.cluster.pod(dst);
        let mut allowed = FixedBitSet::with_capacity(self.cluster.pods().len());
        for &pid in policies {
            let rules = self.policies[pid].ingress.as_deref().unwrap_or_default();
            for (r, rule) in rules.iter().enumerate() {
                if rule.matching_port(dst_pod, pp).is_some() {
                    allowed.union_with(&self.peer_sets[pid][slot(Direction::Ingress)][r]);
                }
            }
        }
        Some(allowed)
    }

    /// Destinations the egress of `src` allows on `pp`; `None` when `src` isn't egress-isolated.
    /// Named ports resolve on each destination, so such rules need a per-destination port set,
    /// cached per rule because every pod a policy selects shares it.
    fn allowed_destinations(
        &self,
        src: PodId,
        pp: PortProtocol,
        named_port_cache: &mut HashMap<(PolicyId, usize), FixedBitSet>,
    ) -> Option<FixedBitSet> {
        let policies = &self.isolating[slot(Direction::Egress)][src];
        if policies.is_empty() {
            return None;
        }
        let n = self.cluster.pods().len();
        let mut allowed = FixedBitSet::with_capacity(n);
        for &pid in policies {
            let rules = self.policies[pid].egress.as_deref().unwrap_or_default();
            for (r, rule) in rules.iter().enumerate() {
                let peers = &self.peer_sets[pid][slot(Direction::Egress)][r];
                if rule.has_named_ports() {
                    let ports = named_port_cache.entry((pid, r)).or_insert_with(|| {
                        (0..n)
                            .filter(|&dst| rule.matching_port(self.cluster.pod(dst), pp).is_some())
                            .collect()
                    });
                    let mut both = peers.clone();
                    both.intersect_with(ports);
                    allowed.union_with(&both);
                } else if rule.matching_port(self.cluster.pod(src), pp).is_some() {
                    // Without named ports the destination pod plays no part in port matching.
                    allowed.union_with(peers);
                }
            }
        }
        Some(allowed)
    }

    /// Why one cell is allowed or blocked, computed directly from the policies.
    pub fn explain(&self, cell: Cell) -> CellExplanation {
        CellExplanation {
            cell,
            from: self.cluster.pod(cell.from).key(),
            to: self.cluster.pod(cell.to).key(),
            egress: self.explain_direction(Direction::Egress, cell),
            ingress: self.explain_direction(Direction::Ingress, cell),
        }
    }

    fn explain_direction(&self, direction: Direction, cell: Cell) -> DirectionExplanation {
        let src = self.cluster.pod(cell.from);
        let dst = self.cluster.pod(cell.to);
        // The pod whose policies decide, and the pod on the other end.
        let (subject, peer) = match direction {
            Direction::Ingress => (dst, src),
            Direction::Egress => (src, dst),
        };
        let mut isolated_by = Vec::new();
        let mut rules = Vec::new();
        for policy in self.policies {
            let Some(policy_rules) = policy.rules(direction) else {
                continue;
            };
            if !policy.selects(subject) {
                continue;
            }
            isolated_by.push(policy.key());
            for (index, rule) in policy_rules.iter().enumerate() {
                rules.push(RuleExplanation {
                    policy: policy.key(),
                    direction,
                    index,
                    result: self.rule_result(policy, rule, peer, dst, cell.port_protocol),
                });
            }
        }
        DirectionExplanation {
            direction,
            subject: subject.key(),
            peer: peer.key(),
            isolated_by,
            rules,
        }
    }

    fn rule_result(
        &self,
        policy: &Policy,
        rule: &Rule,
        peer: &Pod,
        dst: &Pod,
        pp: PortProtocol,
    ) -> RuleResult {
        let Some(peer_index) = rule.matching_peer(self.cluster, &policy.namespace, peer) else {
            let reasons = rule
                .peers
                .iter()
                .flatten()
                .map(|p| super::explain::peer_mismatch(self.cluster, policy, p, peer))
                .collect();
            return RuleResult::PeerMismatch { reasons };
        };
        match rule.matching_port(dst, pp) {
            Some(port_index) => RuleResult::Allows {
                peer: peer_index,
                port: port_index,
            },
            None => RuleResult::PortMismatch {
                peer: peer_index,
                ports: rule
                    .ports
                    .iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
            },
        }
    }
}

/// Pods any of the rule's peers match, as a bitset over pod ids.
fn peer_set(
    cluster: &Cluster,
    pods_by_namespace: &HashMap<&str, Vec<PodId>>,
    policy: &Policy,
    rule: &Rule,
) -> FixedBitSet {
    let n = cluster.pods().len();
    let mut set = FixedBitSet::with_capacity(n);
    let Some(peers) = &rule.peers else {
        set.insert_range(..);
        return set;
    };
    for peer in peers {
        // Narrow by namespace first: most peers name one namespace, so most pods are never visited.
        for ns in cluster.namespaces() {
            if !peer.selects_namespace(cluster, &policy.namespace, &ns.name) {
                continue;
            }
            for &id in pods_by_namespace
                .get(ns.name.as_str())
                .into_iter()
                .flatten()
            {
                if peer.matches(cluster, &policy.namespace, cluster.pod(id)) {
                    set.insert(id);
                }
            }
        }
    }
    set
}
