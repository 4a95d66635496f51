//! Why a cell is allowed or blocked: which policy and rule allowed it, or which policies isolated
//! the pod and why none of their rules matched.

use std::fmt::Write;

use super::cluster::{Action, Tier};
use super::compiled::{Direction, NamespaceScope, Peer, Policy};
use crate::matrix::Cell;
use crate::model::{Cluster, Pod, PodRef};

#[derive(Debug, Clone, PartialEq)]
pub struct CellExplanation {
    pub cell: Cell,
    pub from: PodRef,
    pub to: PodRef,
    pub egress: DirectionExplanation,
    pub ingress: DirectionExplanation,
    /// The cell is a pod's hairpin through its own Service (subject to cluster policies).
    pub hairpin: bool,
}

impl CellExplanation {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }

    /// Whether the spec leaves this cell to the implementation: some reading allows it and some
    /// blocks it (an undefined direction matters only if the other direction can allow).
    pub fn undefined(&self) -> bool {
        let may_block = |d: &DirectionExplanation| d.undefined.is_some() || !d.allowed();
        (self.egress.undefined.is_some() || self.ingress.undefined.is_some())
            && self.allowed()
            && (may_block(&self.egress) || may_block(&self.ingress))
    }

    /// A cluster policy's Deny blocks the cell, whichever reading applies: a drop is required.
    pub fn drop_required(&self) -> bool {
        !self.allowed() && !self.undefined() && (self.egress.drop || self.ingress.drop)
    }

    /// One line: the verdict and the deciding direction(s).
    pub fn summary(&self) -> String {
        let verdict = if self.undefined() {
            "undefined"
        } else if self.allowed() {
            "allowed"
        } else {
            "blocked"
        };
        format!("{verdict}: {}", self.reason())
    }

    /// The deciding direction(s), without the verdict word.
    pub fn reason(&self) -> String {
        let mut parts = Vec::new();
        for d in [&self.egress, &self.ingress] {
            // When blocked, only the blocking side(s) explain it.
            if self.allowed() || !d.allowed() || d.undefined.is_some() {
                parts.push(d.summary());
            }
        }
        let mut line = parts.join("; ");
        line.push_str(self.self_note());
        line
    }

    /// What the spec says about a pod reaching itself, when it does.
    fn self_note(&self) -> &'static str {
        let by_cluster = |d: &DirectionExplanation| matches!(d.decider, Decider::Cluster(_));
        match (self.cell.is_self(), self.hairpin) {
            (false, _) => "",
            (true, false) => " (self traffic: undefined by the spec, CNIs differ)",
            (true, true) if by_cluster(&self.egress) || by_cluster(&self.ingress) => {
                " (a pod's hairpin through its own Service: subject to cluster policies)"
            }
            (true, true) => {
                " (a pod's hairpin through its own Service: NetworkPolicy leaves it undefined, CNIs differ)"
            }
        }
    }

    /// Several lines: the verdict, then every isolating policy's rules and why they (don't) match.
    pub fn detail(&self) -> String {
        let mut text = format!(
            "{} -> {} on {}: {}\n",
            self.from,
            self.to,
            self.cell.port_protocol,
            if self.undefined() {
                "UNDEFINED"
            } else if self.allowed() {
                "ALLOWED"
            } else {
                "BLOCKED"
            }
        );
        if self.cell.is_self() {
            let _ = writeln!(text, "  note:{}", self.self_note());
        }
        for d in [&self.egress, &self.ingress] {
            let _ = writeln!(text, "  {}", d.summary());
            for rule in &d.rules {
                let _ = writeln!(text, "    {}", rule.describe());
            }
        }
        text
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DirectionExplanation {
    pub direction: Direction,
    /// The pod whose isolation decides: the source for egress, the destination for ingress.
    pub subject: PodRef,
    /// The other end.
    pub peer: PodRef,
    /// Policies selecting `subject` with this direction in `policyTypes` (`namespace/name`).
    pub isolated_by: Vec<String>,
    /// Every rule of those policies, in order, with its result for this cell.
    pub rules: Vec<RuleExplanation>,
    /// Cluster-scoped rules met on the way, in evaluation order: a `domainNames` rule that might
    /// match, then the rule(s) of the first priority with a certain match, per tier.
    pub cluster: Vec<TierStep>,
    /// Whether evaluation got as far as the NetworkPolicy tier.
    pub reached_network_policy: bool,
    pub decider: Decider,
    /// Why the spec leaves this direction to the implementation, when it does.
    pub undefined: Option<String>,
    /// Every way this direction can block is a cluster policy's Deny: a silent drop is required.
    pub drop: bool,
}

/// What settled a direction.
#[derive(Debug, Clone, PartialEq)]
pub enum Decider {
    /// A cluster policy's rule: Accept or Deny, or Pass in the Baseline tier (on to allow).
    Cluster(TierStep),
    /// The NetworkPolicies isolating the pod (allowed iff one of their rules matches).
    NetworkPolicy,
    /// Nothing decided: the default, allow.
    Default,
    /// Left to the implementation; `undefined` says why.
    Undefined,
}

/// One cluster-scoped rule met while evaluating a direction.
#[derive(Debug, Clone, PartialEq)]
pub struct TierStep {
    pub tier: Tier,
    /// `cnp/deny-db`.
    pub policy: String,
    pub priority: u32,
    /// `egress[1] "to-db"`.
    pub rule: String,
    pub rule_index: usize,
    pub action: Action,
    /// The rule might match (a `domainNames` peer): the answer needs DNS.
    pub maybe: bool,
}

impl TierStep {
    /// `Admin cnp/deny-db (priority 10) egress[1] "to-db": Pass`.
    pub fn describe(&self) -> String {
        let maybe = if self.maybe { " if DNS says so" } else { "" };
        format!(
            "{} {} (priority {}) {}: {}{maybe}",
            self.tier, self.policy, self.priority, self.rule, self.action
        )
    }
}

impl DirectionExplanation {
    pub fn isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }

    /// The direction's answer; for an undefined one, the allowing reading (as the truth table).
    pub fn allowed(&self) -> bool {
        match &self.decider {
            Decider::Cluster(step) => step.action != Action::Deny,
            Decider::NetworkPolicy => self.allowed_by_network_policy(),
            Decider::Default | Decider::Undefined => true,
        }
    }

    /// NetworkPolicy's answer alone: not isolated, or some rule allows.
    pub fn allowed_by_network_policy(&self) -> bool {
        !self.isolated() || self.allowing_rules().next().is_some()
    }

    /// The cluster tiers' chain as text, e.g. `Admin cnp/a (priority 10) egress[0]: Pass → `.
    fn chain(&self) -> String {
        let mut chain = String::new();
        for step in &self.cluster {
            let _ = write!(chain, "{} → ", step.describe());
        }
        chain
    }

    pub fn allowing_rules(&self) -> impl Iterator<Item = &RuleExplanation> {
        self.rules
            .iter()
            .filter(|r| matches!(r.result, RuleResult::Allows { .. }))
    }

    fn label(&self) -> String {
        match self.direction {
            Direction::Egress => format!("egress of {}", self.subject),
            Direction::Ingress => format!("ingress of {}", self.subject),
        }
    }

    pub fn summary(&self) -> String {
        let chain = self.chain();
        match &self.decider {
            Decider::Undefined => {
                return format!(
                    "{} is undefined: {chain}{}",
                    self.label(),
                    self.undefined
                        .as_deref()
                        .unwrap_or("the spec leaves it open")
                );
            }
            Decider::Cluster(step) => {
                let verdict = match step.action {
                    Action::Deny => "blocks (a drop)",
                    Action::Accept => "allows",
                    Action::Pass => "allows (passed by the Baseline tier: default)",
                };
                let chain = chain.trim_end_matches(" → ");
                return format!("{} {verdict}: {chain}", self.label());
            }
            Decider::NetworkPolicy | Decider::Default if !chain.is_empty() => {
                let rest = self.network_summary();
                return format!("{}: {chain}NetworkPolicy: {rest}", self.label());
            }
            _ => {}
        }
        format!("{} {}", self.label(), self.network_summary())
    }

    /// NetworkPolicy's part of the summary, without the direction's label.
    fn network_summary(&self) -> String {
        if !self.isolated() {
            return format!(
                "allows: no policy selects {} for {}",
                self.subject, self.direction
            );
        }
        let allowing: Vec<String> = self.allowing_rules().map(RuleExplanation::name).collect();
        if allowing.is_empty() {
            let what = match self.direction {
                Direction::Egress => format!("to {}", self.peer),
                Direction::Ingress => format!("from {}", self.peer),
            };
            format!(
                "blocks: isolated by {} and no rule allows traffic {what} on this port",
                self.isolated_by.join(", ")
            )
        } else {
            format!("allows: {}", allowing.join(", "))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleExplanation {
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
    pub result: RuleResult,
}

impl RuleExplanation {
    /// `x/allow-web ingress[0]`.
    pub fn name(&self) -> String {
        format!(
            "{} {}[{}]",
            self.policy,
            self.direction.rules_field(),
            self.index
        )
    }

    /// `from[1]` / `to[0]` of the matching peer, `ports[2]` of the matching port.
    pub fn location(&self) -> Option<String> {
        let RuleResult::Allows { peer, port } = &self.result else {
            return None;
        };
        let mut parts = Vec::new();
        if let Some(p) = peer {
            parts.push(format!("{}[{p}]", self.direction.peers_field()));
        }
        if let Some(p) = port {
            parts.push(format!("ports[{p}]"));
        }
        Some(parts.join(", "))
    }

    pub fn describe(&self) -> String {
        let peers = self.direction.peers_field();
        match &self.result {
            RuleResult::Allows { peer, port } => {
                let peer = peer.map_or(format!("no {peers} list: every peer"), |p| {
                    format!("{peers}[{p}] matches")
                });
                let port = port.map_or("no ports list: every port".into(), |p| {
                    format!("ports[{p}] matches")
                });
                format!("{}: allows ({peer}; {port})", self.name())
            }
            RuleResult::PeerMismatch { reasons } if reasons.is_empty() => {
                format!("{}: no {peers} entry matches", self.name())
            }
            RuleResult::PeerMismatch { reasons } => {
                let reasons: Vec<String> = reasons
                    .iter()
                    .enumerate()
                    .map(|(i, r)| format!("{peers}[{i}]: {r}"))
                    .collect();
                format!(
                    "{}: peer does not match ({})",
                    self.name(),
                    reasons.join("; ")
                )
            }
            RuleResult::PortMismatch { peer, ports } => {
                let peer = peer.map_or("every peer".into(), |p| format!("{peers}[{p}]"));
                format!(
                    "{}: peer matches ({peer}) but the port does not (ports: {})",
                    self.name(),
                    ports.join(", ")
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleResult {
    /// The rule allows the cell: index of the matching peer and port (`None`: list absent).
    Allows {
        peer: Option<usize>,
        port: Option<usize>,
    },
    /// No peer matches; why, for each peer in order.
    PeerMismatch { reasons: Vec<String> },
    /// A peer matches but no port entry does.
    PortMismatch {
        peer: Option<usize>,
        ports: Vec<String>,
    },
}

/// Why `peer` doesn't select `pod`, in words.
pub fn peer_mismatch(cluster: &Cluster, policy: &Policy, peer: &Peer, pod: &Pod) -> String {
    match peer {
        Peer::Pods {
            namespaces: NamespaceScope::PolicyNamespace,
            pods,
        } => {
            if pod.namespace != policy.namespace {
                format!(
                    "{peer} only selects pods in the policy's namespace {}, not {}",
                    policy.namespace, pod.namespace
                )
            } else {
                format!("podSelector {pods} does not match {}", pod_labels(pod))
            }
        }
        Peer::Pods {
            namespaces: NamespaceScope::Selected(ns_selector),
            pods,
        } => {
            if !peer.selects_namespace(cluster, &policy.namespace, &pod.namespace) {
                let labels = cluster
                    .namespace(&pod.namespace)
                    .map(|ns| format_labels(&ns.labels))
                    .unwrap_or_default();
                format!(
                    "namespaceSelector {ns_selector} does not match namespace {} {labels}",
                    pod.namespace
                )
            } else {
                format!("podSelector {pods} does not match {}", pod_labels(pod))
            }
        }
        Peer::IpBlock { cidr, except } => match except.iter().find(|e| e.contains(&pod.ip)) {
            Some(e) if cidr.contains(&pod.ip) => {
                format!(
                    "{} ({}) is in ipBlock {cidr} but excepted by {e}",
                    pod.key(),
                    pod.ip
                )
            }
            _ => format!("ipBlock {cidr} does not contain {} ({})", pod.key(), pod.ip),
        },
    }
}

fn pod_labels(pod: &Pod) -> String {
    format!("{} {}", pod.key(), format_labels(&pod.labels))
}

fn format_labels(labels: &crate::model::Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(","))
}
