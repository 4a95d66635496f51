//! The oracle: which connections the NetworkPolicy spec allows in a cluster.
//!
//! The spec, in one paragraph: a pod is isolated for a direction only when some policy in its
//! namespace selects it and lists that direction in `policyTypes`; an isolated pod accepts (sends)
//! only what the union of those policies' rules allows; a non-isolated direction allows everything.
//! A connection is allowed iff the source's egress allows it AND the destination's ingress allows it.
//!
//! Cluster-scoped tiers wrap that answer (`tiers.rs` has the precedence): per direction, the Admin
//! tier first, then the NetworkPolicy answer above for pods it isolates, then the Baseline tier,
//! then allow. The oracle tracks what is *possible* per cell, so a cell that same-priority
//! policies (or DNS) leave to the implementation comes out `undefined`.
//!
//! `truth_table` answers every cell at once from an index: which policies select each pod, and for
//! every rule the set of peer pods as a bitset, so a cell costs a few bit lookups. `explain` answers
//! one cell the slow, direct way (it scans all policies), which is both the `--explain` text and an
//! independent check of the index (see the property tests).

use std::collections::HashMap;

use fixedbitset::FixedBitSet;

use super::cluster::{Action, ClusterPolicy, Tier};
use super::compiled::{Direction, Peer, Policy, Rule};
use super::explain::{
    CellExplanation, Decider, DirectionExplanation, RuleExplanation, RuleResult, TierStep,
};
use super::tiers::{self, Possible};
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
    cluster_policies: &'a [ClusterPolicy],
    /// Cluster policies in evaluation order (`tiers::ordered`).
    cluster_order: Vec<usize>,
    /// Per direction, per pod: the cluster policies with rules for that direction that select it,
    /// in evaluation order.
    cluster_subjects: [Vec<Vec<usize>>; 2],
    /// Per cluster policy, per direction, per rule: the pods its peers certainly match.
    cluster_peer_sets: Vec<[Vec<FixedBitSet>; 2]>,
    /// Whether a pod's traffic to itself goes through a Service (hairpin): then it is subject to
    /// cluster policies like any other cell. To its own IP it is not.
    hairpin: bool,
}

/// One direction's possibilities for every remote pod, from one subject's point of view.
struct DirectionSets {
    allow: FixedBitSet,
    deny: FixedBitSet,
    /// Possible denials by a cluster policy's Deny...
    cluster_deny: FixedBitSet,
    /// ...and by anything else (NetworkPolicy): a drop is required only without these.
    other_deny: FixedBitSet,
}

/// What constrains one direction of one pod.
enum Constraint {
    /// Nothing: everything allowed.
    None,
    /// NetworkPolicy alone: these remote pods allowed, the rest denied.
    Network(FixedBitSet),
    /// Cluster tiers too.
    Tiered(DirectionSets),
}

impl Constraint {
    /// (may allow, may deny, every possible denial is a cluster Deny) for `remote`.
    fn read(&self, remote: usize) -> (bool, bool, bool) {
        match self {
            Constraint::None => (true, false, false),
            Constraint::Network(allowed) => {
                let a = allowed.contains(remote);
                (a, !a, false)
            }
            Constraint::Tiered(s) => (
                s.allow.contains(remote),
                s.deny.contains(remote),
                s.cluster_deny.contains(remote) && !s.other_deny.contains(remote),
            ),
        }
    }
}

/// Per cluster policy, per egress rule with named ports: the destinations where its protocols
/// match on one (port, protocol); shared by every subject.
type NamedEgress = Vec<Vec<Option<FixedBitSet>>>;

impl<'a> Oracle<'a> {
    /// NetworkPolicy only.
    pub fn new(cluster: &'a Cluster, policies: &'a [Policy]) -> Self {
        Oracle::tiered(cluster, policies, &[])
    }

    /// NetworkPolicy and the cluster-scoped tiers around it.
    pub fn tiered(
        cluster: &'a Cluster,
        policies: &'a [Policy],
        cluster_policies: &'a [ClusterPolicy],
    ) -> Self {
        let n = cluster.pods().len();
        // What selectors can pick, by namespace: never a host-network pod, whose traffic is the
        // node's (`Pod::host_network`; address peers still match it, over every pod).
        let mut pods_by_namespace: HashMap<&str, Vec<PodId>> = HashMap::new();
        for (id, pod) in cluster.pods().iter().enumerate() {
            if pod.host_network {
                continue;
            }
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

        let cluster_order = tiers::ordered(cluster_policies);
        let mut cluster_subjects = [vec![Vec::new(); n], vec![Vec::new(); n]];
        let mut cluster_peer_sets = Vec::with_capacity(cluster_policies.len());
        let mut cluster_selected: Vec<Vec<PodId>> = Vec::with_capacity(cluster_policies.len());
        for policy in cluster_policies {
            let selected: Vec<PodId> = (0..n)
                .filter(|&id| policy.selects(cluster, cluster.pod(id)))
                .collect();
            let mut sets: [Vec<FixedBitSet>; 2] = [Vec::new(), Vec::new()];
            for direction in DIRECTIONS {
                if selected.is_empty() || policy.rules(direction).is_empty() {
                    continue;
                }
                sets[slot(direction)] = policy
                    .rules(direction)
                    .iter()
                    .map(|rule| cluster_peer_set(cluster, &pods_by_namespace, rule))
                    .collect();
            }
            cluster_peer_sets.push(sets);
            cluster_selected.push(selected);
        }
        for &cp in &cluster_order {
            for direction in DIRECTIONS {
                if cluster_peer_sets[cp][slot(direction)].is_empty() {
                    continue;
                }
                for &id in &cluster_selected[cp] {
                    cluster_subjects[slot(direction)][id].push(cp);
                }
            }
        }
        Oracle {
            cluster,
            policies,
            isolating,
            peer_sets,
            cluster_policies,
            cluster_order,
            cluster_subjects,
            cluster_peer_sets,
            hairpin: false,
        }
    }

    /// The same oracle for traffic through Services: a pod reaching itself through its own
    /// Service's address is subject to cluster policies (the ClusterNetworkPolicy docs' hairpin
    /// rule), where its own IP is not.
    pub fn through_services(mut self) -> Self {
        self.hairpin = true;
        self
    }

    pub fn cluster_policies(&self) -> &[ClusterPolicy] {
        self.cluster_policies
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
            let named = self.named_egress(pp);
            let mut named_port_cache = HashMap::new();
            let ingress_from: Vec<Constraint> = (0..n)
                .map(|dst| {
                    self.constraint(Direction::Ingress, dst, pp, &named, &mut named_port_cache)
                })
                .collect();
            let mut named_port_cache = HashMap::new();
            let egress_to: Vec<Constraint> = (0..n)
                .map(|src| {
                    self.constraint(Direction::Egress, src, pp, &named, &mut named_port_cache)
                })
                .collect();
            for (src, egress) in egress_to.iter().enumerate() {
                for (dst, ingress) in ingress_from.iter().enumerate() {
                    let (ea, ed, ec) = egress.read(dst);
                    let (ia, id, ic) = ingress.read(src);
                    let may_allow = ea && ia;
                    let may_block = ed || id;
                    let decision = Decision {
                        egress: ea,
                        ingress: ia,
                        undefined: may_allow && may_block,
                        drop: !may_allow && ((ed && !ea && ec) || (id && !ia && ic)),
                        judged_self: false,
                        no_dns: false,
                    };
                    table.set(k, src, dst, decision);
                }
            }
        }
        table
    }

    /// The destinations of every egress rule with named ports, on `pp`.
    fn named_egress(&self, pp: PortProtocol) -> NamedEgress {
        self.cluster_policies
            .iter()
            .enumerate()
            .map(|(cp, policy)| {
                if self.cluster_peer_sets[cp][slot(Direction::Egress)].is_empty() {
                    return Vec::new();
                }
                policy
                    .egress
                    .iter()
                    .map(|rule| {
                        rule.has_named_ports().then(|| {
                            self.cluster
                                .pods()
                                .iter()
                                .enumerate()
                                .filter(|(_, dst)| rule.protocol_matches(dst, pp))
                                .map(|(id, _)| id)
                                .collect()
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// One direction of one subject pod: for every remote pod, what the tiers make possible.
    fn constraint(
        &self,
        direction: Direction,
        subject: PodId,
        pp: PortProtocol,
        named: &NamedEgress,
        named_port_cache: &mut HashMap<(PolicyId, usize), FixedBitSet>,
    ) -> Constraint {
        let n = self.cluster.pods().len();
        let network = match direction {
            Direction::Ingress => self.allowed_sources(subject, pp),
            Direction::Egress => self.allowed_destinations(subject, pp, named_port_cache),
        };
        let cluster = &self.cluster_subjects[slot(direction)][subject];
        if cluster.is_empty() {
            return match network {
                None => Constraint::None,
                Some(allowed) => Constraint::Network(allowed),
            };
        }
        let mut sets = DirectionSets {
            allow: FixedBitSet::with_capacity(n),
            deny: FixedBitSet::with_capacity(n),
            cluster_deny: FixedBitSet::with_capacity(n),
            other_deny: FixedBitSet::with_capacity(n),
        };
        // A pod to its own IP is not subject to cluster policies (through a Service it is).
        let mut undecided = FixedBitSet::with_capacity(n);
        undecided.insert_range(..);
        undecided.set(subject, self.hairpin);
        // In evaluation order, so the Admin tier comes first.
        let (admin, baseline) = cluster
            .split_at(cluster.partition_point(|&cp| self.cluster_policies[cp].tier == Tier::Admin));
        let mut to_network = self.tier_sets(
            admin,
            (direction, subject, pp),
            named,
            &mut undecided,
            &mut sets,
        );
        to_network.union_with(&undecided);
        if !self.hairpin {
            to_network.insert(subject);
        }
        let mut to_baseline = match network {
            Some(allowed) => {
                let mut allow = to_network.clone();
                allow.intersect_with(&allowed);
                sets.allow.union_with(&allow);
                to_network.difference_with(&allowed);
                sets.deny.union_with(&to_network);
                sets.other_deny.union_with(&to_network);
                FixedBitSet::with_capacity(n)
            }
            None => to_network,
        };
        if !self.hairpin && to_baseline.contains(subject) {
            to_baseline.set(subject, false);
            sets.allow.insert(subject);
        }
        let passed = self.tier_sets(
            baseline,
            (direction, subject, pp),
            named,
            &mut to_baseline,
            &mut sets,
        );
        sets.allow.union_with(&passed);
        sets.allow.union_with(&to_baseline);
        Constraint::Tiered(sets)
    }

    /// Runs one tier's policies (in evaluation order) over the `undecided` remote pods: Accept and
    /// Deny add to `sets`, certain matches leave `undecided`; returns the pods passed on.
    fn tier_sets(
        &self,
        tier: &[usize],
        (direction, subject, pp): (Direction, PodId, PortProtocol),
        named: &NamedEgress,
        undecided: &mut FixedBitSet,
        sets: &mut DirectionSets,
    ) -> FixedBitSet {
        let n = self.cluster.pods().len();
        let subject_pod = self.cluster.pod(subject);
        let mut passed = FixedBitSet::with_capacity(n);
        // Buffers reused across rules: a cell costs bit operations, not allocations.
        let mut remaining = FixedBitSet::with_capacity(n);
        let mut matched = FixedBitSet::with_capacity(n);
        let mut maybe = FixedBitSet::with_capacity(n);
        let mut decided = FixedBitSet::with_capacity(n);
        for group in tiers::groups(self.cluster_policies, tier) {
            if undecided.is_clear() {
                break;
            }
            decided.clear();
            for &cp in group {
                let policy = &self.cluster_policies[cp];
                remaining.clone_from(undecided);
                for (r, rule) in policy.rules(direction).iter().enumerate() {
                    // Where the rule's protocols match: named egress ports resolve on each
                    // destination; otherwise on the destination, which for ingress is the subject
                    // and for egress plays no part.
                    let ports = match named.get(cp).and_then(|rules| rules.get(r)) {
                        Some(Some(set)) if direction == Direction::Egress => Some(set),
                        _ if rule.protocol_matches(subject_pod, pp) => None,
                        _ => continue,
                    };
                    matched.clone_from(&self.cluster_peer_sets[cp][slot(direction)][r]);
                    matched.intersect_with(&remaining);
                    if let Some(ports) = ports {
                        matched.intersect_with(ports);
                    }
                    let target = match rule.action {
                        Action::Accept => &mut sets.allow,
                        Action::Deny => {
                            sets.cluster_deny.union_with(&matched);
                            &mut sets.deny
                        }
                        Action::Pass => &mut passed,
                    };
                    target.union_with(&matched);
                    if rule.has_domain_names() {
                        // Might match (DNS decides): the action is possible, evaluation goes on.
                        maybe.clone_from(&remaining);
                        if let Some(ports) = ports {
                            maybe.intersect_with(ports);
                        }
                        target.union_with(&maybe);
                        if rule.action == Action::Deny {
                            sets.cluster_deny.union_with(&maybe);
                        }
                    }
                    remaining.difference_with(&matched);
                    decided.union_with(&matched);
                    if remaining.is_clear() {
                        break;
                    }
                }
            }
            undecided.difference_with(&decided);
        }
        passed
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
            hairpin: self.hairpin,
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
        let mut explanation = DirectionExplanation {
            direction,
            subject: subject.key(),
            peer: peer.key(),
            isolated_by,
            rules,
            cluster: Vec::new(),
            reached_network_policy: true,
            decider: Decider::Default,
            undefined: None,
            drop: false,
        };
        self.walk_tiers(&mut explanation, subject, peer, dst, cell);
        explanation
    }

    /// The tiers for one direction of one cell, directly from the policies: the cluster rules met
    /// on the way, the decider, and whether the answer is left to the implementation.
    fn walk_tiers(
        &self,
        explanation: &mut DirectionExplanation,
        subject: &Pod,
        peer: &Pod,
        dst: &Pod,
        cell: Cell,
    ) {
        let view = View {
            direction: explanation.direction,
            subject,
            peer,
            dst,
            cell,
        };
        let mut possible = Possible::default();
        let mut reasons = Vec::new();
        let admin = self.walk_tier(Tier::Admin, &view, &mut reasons);
        for step in &admin.steps {
            possible.add(step.action);
        }
        let to_network = admin.continues;
        explanation.reached_network_policy = to_network;
        let network_decides = to_network && explanation.isolated();
        if network_decides {
            if explanation.allowed_by_network_policy() {
                possible.allow = true;
            } else {
                possible.deny = true;
                possible.other_deny = true;
            }
        }
        let baseline = if to_network && !network_decides {
            self.walk_tier(Tier::Baseline, &view, &mut reasons)
        } else {
            TierWalk::default()
        };
        for step in &baseline.steps {
            possible.add(step.action);
        }
        if to_network && !network_decides && baseline.continues {
            possible.allow = true;
        }
        let final_step = |walk: &TierWalk| {
            walk.steps
                .iter()
                .find(|s| !s.maybe && s.action != Action::Pass)
                .cloned()
        };
        explanation.decider = if possible.allow && possible.deny {
            explanation.undefined = Some(reasons.join("; "));
            Decider::Undefined
        } else if let Some(step) = final_step(&admin) {
            Decider::Cluster(step)
        } else if network_decides {
            Decider::NetworkPolicy
        } else if let Some(step) = baseline.steps.iter().find(|s| !s.maybe).cloned() {
            Decider::Cluster(step)
        } else {
            Decider::Default
        };
        explanation.drop =
            possible.deny && !possible.allow && possible.cluster_deny && !possible.other_deny;
        explanation.cluster = admin.steps;
        explanation.cluster.extend(baseline.steps);
    }

    /// One tier: every rule that might match (domainNames) on the way, then the first priority
    /// group with a certain match; whether evaluation goes on past the tier.
    fn walk_tier(&self, tier: Tier, view: &View<'_>, reasons: &mut Vec<String>) -> TierWalk {
        let View {
            direction,
            subject,
            peer,
            dst,
            cell,
        } = *view;
        let mut walk = TierWalk {
            steps: Vec::new(),
            continues: true,
        };
        // A pod connecting to its own IP is not subject to cluster policies (through a Service
        // it is).
        if cell.is_self() && !self.hairpin {
            return walk;
        }
        let order: Vec<usize> = self
            .cluster_order
            .iter()
            .copied()
            .filter(|&cp| {
                let p = &self.cluster_policies[cp];
                p.tier == tier && !p.rules(direction).is_empty() && p.selects(self.cluster, subject)
            })
            .collect();
        for group in tiers::groups(self.cluster_policies, &order) {
            let mut decided = Vec::new();
            for &cp in group {
                let m = tiers::first_match(
                    self.cluster,
                    &self.cluster_policies[cp],
                    direction,
                    peer,
                    dst,
                    cell.port_protocol,
                );
                for &(rule, action) in &m.maybe {
                    let step = self.step(cp, direction, rule, action, true);
                    reasons.push(format!(
                        "needs DNS: {} {} has domainNames, which the model cannot resolve",
                        step.policy, step.rule
                    ));
                    walk.steps.push(step);
                }
                if let Some((rule, action)) = m.decided {
                    decided.push(self.step(cp, direction, rule, action, false));
                }
            }
            if decided.is_empty() {
                continue;
            }
            if decided.iter().any(|d| d.action != decided[0].action) {
                let names: Vec<String> = decided
                    .iter()
                    .map(|d| format!("{} {}: {}", d.policy, d.rule, d.action))
                    .collect();
                reasons.push(format!(
                    "same priority {} in the {tier} tier: {} disagree, and the spec lets an implementation apply either",
                    decided[0].priority,
                    names.join(" and ")
                ));
            }
            // Past a certain match, evaluation goes on only by Pass (or a maybe's Pass).
            walk.continues = false;
            walk.steps.extend(decided);
            break;
        }
        if walk.steps.iter().any(|s| s.action == Action::Pass) {
            walk.continues = true;
        }
        walk
    }

    fn step(
        &self,
        cp: usize,
        direction: Direction,
        rule: usize,
        action: Action,
        maybe: bool,
    ) -> TierStep {
        let policy = &self.cluster_policies[cp];
        TierStep {
            tier: policy.tier,
            policy: policy.key(),
            priority: policy.priority,
            rule: policy.rules(direction)[rule].label(direction, rule),
            rule_index: rule,
            action,
            maybe,
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

/// One direction of one cell, as an explanation looks at it.
#[derive(Clone, Copy)]
struct View<'a> {
    direction: Direction,
    /// The pod whose policies decide.
    subject: &'a Pod,
    /// The other end.
    peer: &'a Pod,
    /// Where named ports resolve.
    dst: &'a Pod,
    cell: Cell,
}

/// One tier's part of an explanation.
#[derive(Default)]
struct TierWalk {
    steps: Vec<TierStep>,
    continues: bool,
}

/// Pods any of a cluster rule's peers match, as a bitset over pod ids. Namespace selectors are
/// evaluated once per namespace, not once per pod; `ClusterPeer::matches` is the per-pod
/// definition the explanation uses (the property tests hold the two equal).
fn cluster_peer_set(
    cluster: &Cluster,
    pods_by_namespace: &HashMap<&str, Vec<PodId>>,
    rule: &super::cluster::ClusterRule,
) -> FixedBitSet {
    use super::cluster::ClusterPeer;
    let n = cluster.pods().len();
    let mut set = FixedBitSet::with_capacity(n);
    let in_namespace = |name: &str| pods_by_namespace.get(name).into_iter().flatten().copied();
    for peer in &rule.peers {
        match peer {
            ClusterPeer::Namespaces(selector) => {
                for ns in cluster
                    .namespaces()
                    .iter()
                    .filter(|ns| selector.matches(&ns.labels))
                {
                    set.extend(in_namespace(&ns.name));
                }
            }
            ClusterPeer::Pods { namespaces, pods } => {
                for ns in cluster
                    .namespaces()
                    .iter()
                    .filter(|ns| namespaces.matches(&ns.labels))
                {
                    set.extend(
                        in_namespace(&ns.name).filter(|&id| pods.matches(&cluster.pod(id).labels)),
                    );
                }
            }
            // Addresses; the node endpoint by its labels.
            ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) => {
                set.extend((0..n).filter(|&id| peer.matches(cluster, cluster.pod(id))));
            }
            // Unknowable without DNS.
            ClusterPeer::DomainNames(_) => {}
        }
    }
    set
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
        // An ipBlock matches by address alone: every pod, and hosts outside the cluster (which
        // belong to no namespace of it), are candidates.
        if let Peer::IpBlock { .. } = peer {
            set.extend(
                (0..n).filter(|&id| peer.matches(cluster, &policy.namespace, cluster.pod(id))),
            );
            continue;
        }
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
