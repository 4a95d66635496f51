//! The reference dataplane: NetworkPolicy compiled to nftables, the way a CNI would.
//!
//! Everything lives in one table in the node namespace, where all pod traffic is routed:
//!
//! ```text
//! table inet polygraph
//!   chain forward            hook forward: conntrack first, then per-pod dispatch
//!     ct state established,related accept      replies of allowed connections pass
//!     iifname "pgv3" jump egress-3             only for pods isolated for egress
//!     oifname "pgv5" jump ingress-5            only for pods isolated for ingress
//!   chain egress-3           allowed destinations `return` (on to the ingress check), rest drop
//!   chain ingress-5          allowed sources `accept`, rest drop
//! ```
//!
//! A pod selected by cluster-scoped policies gets three chains per direction, the tiers in order
//! (`policy::tiers`): `egress-3` holds the Admin tier's rules (Accept `return`s on to the
//! ingress check, Deny drops, Pass `goto`s the next tier), `egress-3-np` the NetworkPolicy tier
//! (its decision is final for a pod it isolates, otherwise `goto egress-3-bl`), `egress-3-bl` the
//! Baseline tier, ending in the default, allow. Ingress chains are the same with `accept`.
//! Replies of an accepted connection never reach a pod chain: conntrack passes them first.
//!
//! Peers are compiled like a CNI's IP sets: selectors are evaluated against the current pods and
//! namespaces (with the same `Peer`/`PortMatch` semantics as the oracle), never by asking the
//! oracle what a cell should be. Named ports resolve on the destination pod: for ingress that is the
//! chain's own pod; for egress each destination gets its own rule.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use crate::model::{Cluster, Pod, PodId};
use crate::policy::cluster::ProtocolMatch;
use crate::policy::{
    Action, ClusterPeer, ClusterPolicy, ClusterRule, Direction, Peer, Policy, PortMatch, Rule,
    Tier, tiers,
};

pub const TABLE: &str = "inet polygraph";

/// The chains polygraph wants, by name, and the dispatch rules of the forward chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Vec<String>>,
    pub dispatch: Vec<String>,
    /// The `stateless` fault: no conntrack shortcut for replies (see `faults`).
    pub stateless: bool,
    /// Rules a faulty dataplane applies before conntrack, each with its verdict:
    /// `meta l4proto udp ct direction reply drop` (`udp-replies-dropped`).
    pub before_conntrack: Vec<String>,
    /// Traffic a faulty dataplane lets past every policy, right after conntrack: `ct status dnat`
    /// (`service-traffic-unfiltered`), `meta nfproto ipv6` (`ipv6-unfiltered`).
    pub unfiltered: Vec<String>,
    /// Traffic a faulty dataplane drops whatever the policies say, right after conntrack (before
    /// `unfiltered`): DNS to the cluster's DNS pod (`dns-egress-blocked`).
    pub dropped: Vec<String>,
    /// The `input` chain's dispatch: traffic from a pod to the node's own addresses is never
    /// forwarded, so its egress check is dispatched there too (`node-egress-unfiltered` leaves it
    /// out).
    pub node_dispatch: Vec<String>,
}

impl Ruleset {
    /// This ruleset minus one pod's own chains: the pod is not isolated at all (the
    /// `new-pod-unprotected` fault).
    pub fn without_pod(self, slot: usize) -> Ruleset {
        self.without_direction(slot, Direction::Ingress)
            .without_direction(slot, Direction::Egress)
    }

    /// This ruleset minus one pod's chains of one direction (`direction-cleanup-clobbers` drops
    /// a pod's egress side).
    pub fn without_direction(mut self, slot: usize, direction: Direction) -> Ruleset {
        let name = chain_name(direction, slot);
        let tier_prefix = format!("{name}-");
        self.chains
            .retain(|chain, _| *chain != name && !chain.starts_with(&tier_prefix));
        let dispatch = format!("jump {name}");
        self.dispatch.retain(|rule| !rule.ends_with(&dispatch));
        self.node_dispatch.retain(|rule| !rule.ends_with(&dispatch));
        self
    }
}

/// How the dataplane names a pod's interface and chains: by its stable slot, not by its position
/// in a cluster snapshot (which shifts when pods come and go).
pub trait Slots {
    fn slot(&self, pod: PodId) -> usize;
    /// Every address of a pod (one per family on a dual-stack cluster): a peer set holds them all.
    fn addresses(&self, pod: &Pod) -> Vec<IpAddr> {
        vec![pod.ip]
    }
}

pub fn veth_name(slot: usize) -> String {
    format!("pgv{slot}")
}

fn chain_name(direction: Direction, slot: usize) -> String {
    match direction {
        Direction::Ingress => format!("ingress-{slot}"),
        Direction::Egress => format!("egress-{slot}"),
    }
}

/// How the dataplane ends a cluster policy's Deny: a silent drop, as the spec requires, a
/// refusal (the `deny-as-reject` fault), or, for every denied packet, NetworkPolicy's too, an ICMP
/// administratively-prohibited answer (the `deny-as-icmp-filtered` fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyVerdict {
    #[default]
    Drop,
    Reject,
    Filtered,
}

/// How the dataplane compiles what it misreads on purpose (the faults that live in the rules
/// rather than in the policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dialect {
    pub deny: DenyVerdict,
    /// `nodeport-allow-all-broken`: an ipBlock of a whole family (`0.0.0.0/0`, `::/0`) does not
    /// match traffic that arrived through a NodePort.
    pub catch_all_skips_node_ports: bool,
    /// `service-named-targetport-bypass`: traffic to a ClusterIP passes a named port at any
    /// number the name has on any pod.
    pub service_named_ports_anywhere: bool,
}

/// `icmpx` picks ICMP type 3 code 13 for IPv4 and ICMPv6 type 1 code 1 for IPv6.
const ADMIN_PROHIBITED: &str = "reject with icmpx type admin-prohibited";

/// Compiles every pod's chains.
pub fn compile(
    cluster: &Cluster,
    policies: &[Policy],
    cluster_policies: &[ClusterPolicy],
    dialect: Dialect,
    slots: &dyn Slots,
) -> Ruleset {
    let deny = dialect.deny;
    let mut ruleset = Ruleset::default();
    let order = tiers::ordered(cluster_policies);
    for (id, pod) in cluster.pods().iter().enumerate() {
        let slot = slots.slot(id);
        for direction in [Direction::Egress, Direction::Ingress] {
            let selecting: Vec<&Policy> = policies
                .iter()
                .filter(|p| p.rules(direction).is_some() && p.selects(pod))
                .collect();
            let tiered: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| {
                    let p = &cluster_policies[i];
                    !p.rules(direction).is_empty() && p.selects(cluster, pod)
                })
                .collect();
            if selecting.is_empty() && tiered.is_empty() {
                continue;
            }
            let chain = chain_name(direction, slot);
            let allow = match direction {
                Direction::Egress => "return",
                Direction::Ingress => "accept",
            };
            let network_rules = |end: String| {
                let mut rules = Vec::new();
                for policy in &selecting {
                    for (index, rule) in policy
                        .rules(direction)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        let comment = comment(&format!(
                            "{} {}[{index}]",
                            policy.key(),
                            direction.rules_field()
                        ));
                        for matcher in
                            rule_matchers(cluster, slots, &dialect, policy, rule, direction, pod)
                        {
                            rules.push(format!("{matcher} {allow} comment {comment}"));
                        }
                    }
                }
                rules.push(end);
                rules
            };
            let isolated_end = format!(
                "counter {} comment {}",
                match deny {
                    DenyVerdict::Filtered => ADMIN_PROHIBITED,
                    DenyVerdict::Drop | DenyVerdict::Reject => "drop",
                },
                comment(&format!("{} isolated", pod.key()))
            );
            if tiered.is_empty() {
                ruleset
                    .chains
                    .insert(chain.clone(), network_rules(isolated_end));
            } else {
                let np_chain = format!("{chain}-np");
                let bl_chain = format!("{chain}-bl");
                let tier_rules = |tier: Tier, pass: &str| {
                    let mut rules = Vec::new();
                    for &i in tiered.iter().filter(|&&i| cluster_policies[i].tier == tier) {
                        let policy = &cluster_policies[i];
                        for (index, rule) in policy.rules(direction).iter().enumerate() {
                            let verdict = match rule.action {
                                Action::Accept => allow.to_string(),
                                // ICMP port unreachable: the probe sees a refusal.
                                Action::Deny => match deny {
                                    DenyVerdict::Reject => "reject".into(),
                                    DenyVerdict::Filtered => ADMIN_PROHIBITED.into(),
                                    DenyVerdict::Drop => "drop".into(),
                                },
                                Action::Pass => pass.to_string(),
                            };
                            let comment = comment(&format!(
                                "{} {}",
                                policy.key(),
                                rule.label(direction, index)
                            ));
                            for matcher in cluster_matchers(cluster, slots, rule, direction, pod) {
                                let counter = if rule.action == Action::Deny {
                                    "counter "
                                } else {
                                    ""
                                };
                                rules.push(
                                    format!("{matcher} {counter}{verdict} comment {comment}")
                                        .trim_start()
                                        .to_string(),
                                );
                            }
                        }
                    }
                    rules
                };
                let to_np = format!("goto {np_chain}");
                let mut admin = tier_rules(Tier::Admin, &to_np);
                admin.push(to_np);
                let network = if selecting.is_empty() {
                    vec![format!("goto {bl_chain}")]
                } else {
                    network_rules(isolated_end)
                };
                let mut baseline = tier_rules(Tier::Baseline, allow);
                baseline.push(allow.to_string());
                ruleset.chains.insert(chain.clone(), admin);
                ruleset.chains.insert(np_chain, network);
                ruleset.chains.insert(bl_chain, baseline);
            }
            let (keyword, iface) = match direction {
                Direction::Egress => ("iifname", veth_name(slot)),
                Direction::Ingress => ("oifname", veth_name(slot)),
            };
            if direction == Direction::Egress {
                // Only the transport protocols: neighbour discovery to the node must pass.
                ruleset.node_dispatch.push(format!(
                    "meta l4proto {{ tcp, udp, sctp }} {keyword} \"{iface}\" jump {chain}"
                ));
            }
            ruleset
                .dispatch
                .push(format!("{keyword} \"{iface}\" jump {chain}"));
        }
    }
    // Egress checks must come before ingress checks: an egress chain `return`s into the rest.
    ruleset.dispatch.sort_by_key(|r| !r.starts_with("iifname"));
    ruleset
}

/// The address a chain matches peers on: the source for ingress, the destination for egress.
fn side(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    }
}

/// One destination pod on one of its ports: how egress named ports are resolved, per destination.
fn destination_port(
    slots: &dyn Slots,
    dst: &Pod,
    protocol: crate::model::Protocol,
    port: u16,
) -> Vec<String> {
    let proto = protocol.as_str().to_ascii_lowercase();
    slots
        .addresses(dst)
        .into_iter()
        .map(|ip| {
            format!(
                "{} daddr {ip} meta l4proto {proto} th dport {port}",
                family(ip)
            )
        })
        .collect()
}

/// The match expressions of one cluster rule for the chain of `subject`: peers × protocols. An
/// empty list means the rule matches nothing here (e.g. only `nodes` or `domainNames` peers,
/// which never hold a pod's address).
fn cluster_matchers(
    cluster: &Cluster,
    slots: &dyn Slots,
    rule: &ClusterRule,
    direction: Direction,
    subject: &Pod,
) -> Vec<String> {
    let side = side(direction);
    let mut peer_exprs = Vec::new();
    for peer in &rule.peers {
        match peer {
            ClusterPeer::Networks(nets) => {
                for fam in ["ip", "ip6"] {
                    let nets: Vec<String> = nets
                        .iter()
                        .filter(|n| family(n.addr()) == fam)
                        .map(ToString::to_string)
                        .collect();
                    if !nets.is_empty() {
                        peer_exprs.push(format!("{fam} {side} {{ {} }}", nets.join(", ")));
                    }
                }
            }
            // The one node, where its labels match: its own addresses, never a pod's.
            ClusterPeer::Nodes(nodes) if nodes.matches(&super::node_labels()) => {
                for (fam, node) in [
                    ("ip", super::proxy::NODE_V4.to_string()),
                    ("ip6", super::proxy::NODE_V6.to_string()),
                ] {
                    peer_exprs.push(format!("{fam} {side} {node}"));
                }
            }
            ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_) => {}
            ClusterPeer::Namespaces(_) | ClusterPeer::Pods { .. } => {
                let pods: Vec<&Pod> = cluster
                    .pods()
                    .iter()
                    .filter(|p| peer.matches(cluster, p))
                    .collect();
                peer_exprs.extend(address_sets(slots, &pods, side));
            }
        }
    }
    let Some(protocols) = &rule.protocols else {
        return peer_exprs;
    };
    let mut matchers = Vec::new();
    for protocol in protocols {
        match protocol {
            ProtocolMatch::Range {
                protocol,
                start,
                end,
            } => {
                let port = PortMatch::Range {
                    protocol: *protocol,
                    start: *start,
                    end: *end,
                };
                matchers.extend(cross(&peer_exprs, &port_expr(&port)));
            }
            ProtocolMatch::Named(name) if direction == Direction::Ingress => {
                // Resolved on the subject, the destination.
                for port in subject
                    .ports
                    .iter()
                    .filter(|p| p.name.as_deref() == Some(name))
                {
                    let port = PortMatch::Range {
                        protocol: port.protocol,
                        start: port.port,
                        end: port.port,
                    };
                    matchers.extend(cross(&peer_exprs, &port_expr(&port)));
                }
            }
            ProtocolMatch::Named(name) => {
                // Resolved on each destination pod the rule's peers match.
                for dst in cluster.pods() {
                    if !rule.peer_matches(cluster, dst) {
                        continue;
                    }
                    for port in dst.ports.iter().filter(|p| p.name.as_deref() == Some(name)) {
                        matchers.extend(destination_port(slots, dst, port.protocol, port.port));
                    }
                }
            }
        }
    }
    matchers
}

/// `ip saddr { … }` / `ip6 saddr { … }` for a set of pods: one expression per family present.
fn address_sets(slots: &dyn Slots, pods: &[&Pod], side: &str) -> Vec<String> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in pods.iter().flat_map(|pod| slots.addresses(pod)) {
        match ip {
            IpAddr::V4(ip) => v4.push(ip.to_string()),
            IpAddr::V6(ip) => v6.push(ip.to_string()),
        }
    }
    let mut exprs = Vec::new();
    if !v4.is_empty() {
        exprs.push(format!("ip {side} {{ {} }}", v4.join(", ")));
    }
    if !v6.is_empty() {
        exprs.push(format!("ip6 {side} {{ {} }}", v6.join(", ")));
    }
    exprs
}

/// nft comments are quoted strings of at most 128 bytes.
fn comment(text: &str) -> String {
    let mut text: String = text.chars().filter(|c| *c != '"' && *c != '\\').collect();
    if text.len() > 120 {
        let mut cut = 120;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    format!("\"{text}\"")
}

/// The match expressions of one rule for the chain of `subject`: the cross product of its peer and
/// port expressions. An empty list means the rule allows nothing here.
fn rule_matchers(
    cluster: &Cluster,
    slots: &dyn Slots,
    dialect: &Dialect,
    policy: &Policy,
    rule: &Rule,
    direction: Direction,
    subject: &Pod,
) -> Vec<String> {
    let side = side(direction);
    let any_peer = || vec![String::new()];
    let peer_exprs: Vec<String> = match &rule.peers {
        None => any_peer(),
        Some(peers) => peers
            .iter()
            .flat_map(|peer| peer_exprs(cluster, slots, dialect, policy, peer, side))
            .collect(),
    };
    let Some(ports) = &rule.ports else {
        return peer_exprs;
    };
    let mut matchers = Vec::new();
    for port in ports {
        match port {
            PortMatch::Named { name, protocol } if direction == Direction::Egress => {
                // Resolve on each destination the rule's peers allow: one rule per destination.
                for dst in cluster.pods() {
                    let allowed_peer = match &rule.peers {
                        None => true,
                        Some(peers) => peers
                            .iter()
                            .any(|p| p.matches(cluster, &policy.namespace, dst)),
                    };
                    if !allowed_peer {
                        continue;
                    }
                    let own = dst.named_port(name, *protocol);
                    if let Some(number) = own {
                        matchers.extend(destination_port(slots, dst, *protocol, number));
                    }
                    if dialect.service_named_ports_anywhere {
                        for number in numbers_anywhere(cluster, name, *protocol, own) {
                            for exact in destination_port(slots, dst, *protocol, number) {
                                matchers.extend(cross(&through_cluster_ips(), &exact));
                            }
                        }
                    }
                }
            }
            PortMatch::Named { name, protocol } => {
                let own = subject.named_port(name, *protocol);
                if let Some(number) = own {
                    let port = PortMatch::Range {
                        protocol: *protocol,
                        start: number,
                        end: number,
                    };
                    matchers.extend(cross(&peer_exprs, &port_expr(&port)));
                }
                if dialect.service_named_ports_anywhere {
                    for number in numbers_anywhere(cluster, name, *protocol, own) {
                        let port = PortMatch::Range {
                            protocol: *protocol,
                            start: number,
                            end: number,
                        };
                        for via in through_cluster_ips() {
                            let port = format!("{via} {}", port_expr(&port));
                            matchers.extend(cross(&peer_exprs, &port));
                        }
                    }
                }
            }
            other => matchers.extend(cross(&peer_exprs, &port_expr(other))),
        }
    }
    matchers
}

/// Every number the port name has on any pod of `cluster`, but `own`
/// (`service-named-targetport-bypass`).
fn numbers_anywhere(
    cluster: &Cluster,
    name: &str,
    protocol: crate::model::Protocol,
    own: Option<u16>,
) -> std::collections::BTreeSet<u16> {
    cluster
        .pods()
        .iter()
        .filter_map(|pod| pod.named_port(name, protocol))
        .filter(|n| Some(*n) != own)
        .collect()
}

/// Matches for traffic sent to a ClusterIP (before the proxy's DNAT), one per family.
fn through_cluster_ips() -> Vec<String> {
    super::proxy::SERVICE_RANGES
        .iter()
        .map(|range| {
            let fam = if range.contains(':') { "ip6" } else { "ip" };
            format!("ct original {fam} daddr {range}")
        })
        .collect()
}

fn cross(peers: &[String], port: &str) -> Vec<String> {
    peers
        .iter()
        .map(|peer| {
            [peer.as_str(), port]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

fn port_expr(port: &PortMatch) -> String {
    let proto = port.protocol().as_str().to_ascii_lowercase();
    match port {
        PortMatch::AllPorts { .. } => format!("meta l4proto {proto}"),
        PortMatch::Range { start, end, .. } if start == end => {
            format!("meta l4proto {proto} th dport {start}")
        }
        PortMatch::Range { start, end, .. } => {
            format!("meta l4proto {proto} th dport {start}-{end}")
        }
        // Named ports are resolved before this point.
        PortMatch::Named { .. } => String::new(),
    }
}

/// Expressions matching the addresses a peer selects: one per address family present.
fn peer_exprs(
    cluster: &Cluster,
    slots: &dyn Slots,
    dialect: &Dialect,
    policy: &Policy,
    peer: &Peer,
    side: &str,
) -> Vec<String> {
    match peer {
        Peer::IpBlock { cidr, except } => {
            let fam = family(cidr.addr());
            let mut expr = format!("{fam} {side} {cidr}");
            for e in except {
                // Each `!=` is its own match so overlapping excepts need no interval merging.
                let _ = write!(expr, " {fam} {side} != {e}");
            }
            if dialect.catch_all_skips_node_ports && cidr.prefix_len() == 0 {
                let node = super::proxy::node_address(crate::model::Family::of(cidr.addr()));
                let _ = write!(expr, " ct original {fam} daddr != {node}");
            }
            vec![expr]
        }
        Peer::Pods { .. } => {
            let pods: Vec<&Pod> = cluster
                .pods()
                .iter()
                .filter(|pod| peer.matches(cluster, &policy.namespace, pod))
                .collect();
            address_sets(slots, &pods, side)
        }
    }
}

const FORWARD_BASE: [&str; 2] = [
    "ct state established,related accept",
    "ct state invalid drop",
];

/// The transaction that creates the table from nothing.
pub fn install(ruleset: &Ruleset) -> String {
    let mut tx = format!(
        "add table {TABLE}\nadd chain {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}\n\
         add chain {TABLE} input {{ type filter hook input priority filter; policy accept; }}\n"
    );
    tx.push_str(&update(&Ruleset::default(), ruleset).unwrap_or_default());
    if ruleset.node_dispatch.is_empty() {
        tx.push_str(&input_rules(ruleset));
    }
    if ruleset.dispatch.is_empty()
        && ruleset.unfiltered.is_empty()
        && ruleset.dropped.is_empty()
        && ruleset.before_conntrack.is_empty()
    {
        // `update` writes the forward chain only when dispatch changes; a fresh table needs it.
        tx.push_str(&forward_rules(ruleset));
    }
    tx
}

/// The node's own traffic from pods: replies of what the node sent pass, then each isolated
/// pod's egress check.
fn input_rules(ruleset: &Ruleset) -> String {
    let mut tx = format!("flush chain {TABLE} input\n");
    for rule in std::iter::once(&FORWARD_BASE[0].to_string()).chain(&ruleset.node_dispatch) {
        let _ = writeln!(tx, "add rule {TABLE} input {rule}");
    }
    tx
}

fn forward_rules(ruleset: &Ruleset) -> String {
    let mut tx = format!("flush chain {TABLE} forward\n");
    let base = FORWARD_BASE
        .iter()
        .filter(|r| !(ruleset.stateless && r.starts_with("ct state established")));
    let dropped = ruleset.dropped.iter().map(|r| format!("{r} drop"));
    let unfiltered = ruleset.unfiltered.iter().map(|r| format!("{r} accept"));
    for rule in ruleset
        .before_conntrack
        .iter()
        .cloned()
        .chain(base.map(|r| r.to_string()))
        .chain(dropped)
        .chain(unfiltered)
        .chain(ruleset.dispatch.iter().cloned())
    {
        let _ = writeln!(tx, "add rule {TABLE} forward {rule}");
    }
    tx
}

/// The transaction that turns `old` into `new`, touching only chains that changed; `None` when
/// nothing did. Applied with `nft -f`, it is atomic.
pub fn update(old: &Ruleset, new: &Ruleset) -> Option<String> {
    let mut tx = String::new();
    // Every new chain exists before any rule `goto`s it.
    for name in new.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
        let _ = writeln!(tx, "add chain {TABLE} {name}");
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(previous) if previous == rules => continue,
            Some(_) => {
                let _ = writeln!(tx, "flush chain {TABLE} {name}");
            }
            None => {}
        }
        for rule in rules {
            let _ = writeln!(tx, "add rule {TABLE} {name} {rule}");
        }
    }
    if (
        &old.dispatch,
        old.stateless,
        &old.before_conntrack,
        &old.unfiltered,
        &old.dropped,
    ) != (
        &new.dispatch,
        new.stateless,
        &new.before_conntrack,
        &new.unfiltered,
        &new.dropped,
    ) {
        tx.push_str(&forward_rules(new));
    }
    if old.node_dispatch != new.node_dispatch {
        tx.push_str(&input_rules(new));
    }
    // Stale chains go last, once the forward chain no longer jumps to them; emptied first, since
    // one stale tier chain may still `goto` another.
    let stale: Vec<&String> = old
        .chains
        .keys()
        .filter(|name| !new.chains.contains_key(*name))
        .collect();
    for name in &stale {
        let _ = writeln!(tx, "flush chain {TABLE} {name}");
    }
    for name in &stale {
        let _ = writeln!(tx, "delete chain {TABLE} {name}");
    }
    (!tx.is_empty()).then_some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_model;
    use crate::policy::parse_policies;

    struct Identity;
    impl Slots for Identity {
        fn slot(&self, pod: PodId) -> usize {
            pod
        }
    }

    fn ruleset(yaml: &str) -> Ruleset {
        let cluster = default_model().build("model").unwrap();
        let policies = parse_policies("p.yaml", yaml, "x").unwrap();
        compile(
            &cluster,
            &policies.network,
            &policies.cluster,
            Dialect::default(),
            &Identity,
        )
    }

    #[test]
    fn no_policies_no_chains() {
        assert_eq!(ruleset(""), Ruleset::default());
    }

    #[test]
    fn ingress_rule_with_selector_and_named_port() {
        let r = ruleset(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: serve-81-udp, protocol: UDP}]\n",
        );
        assert_eq!(r.dispatch, vec!["oifname \"pgv0\" jump ingress-0"]);
        let rules = &r.chains["ingress-0"];
        assert_eq!(rules.len(), 2, "{rules:?}");
        // y/a, y/b, y/c are pods 3, 4, 5 of the default model.
        assert!(rules[0].starts_with("ip saddr { 10.244.1.4, 10.244.1.5, 10.244.1.6 } meta l4proto udp th dport 81 accept"), "{}", rules[0]);
        assert!(rules[1].starts_with("counter drop"));
    }

    #[test]
    fn egress_named_ports_resolve_per_destination_and_ip_blocks_keep_excepts() {
        let r = ruleset(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: c}}}]\n    ports: [{port: serve-80-tcp}]\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.1.0/30, 10.244.1.8/29]}}]\n",
        );
        assert_eq!(r.dispatch, vec!["iifname \"pgv1\" jump egress-1"]);
        let rules = &r.chains["egress-1"];
        assert!(
            rules[0].starts_with("ip daddr 10.244.1.3 meta l4proto tcp th dport 80 return"),
            "{}",
            rules[0]
        );
        assert!(
            rules[1].starts_with(
                "ip daddr 10.0.0.0/8 ip daddr != 10.244.1.0/30 ip daddr != 10.244.1.8/29 return"
            ),
            "{}",
            rules[1]
        );
    }

    #[test]
    fn updates_touch_only_changed_chains() {
        let deny_x = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}}\n";
        let old = ruleset(deny_x);
        let new =
            ruleset(&deny_x.replace("podSelector: {}", "podSelector: {matchLabels: {pod: a}}"));
        let tx = update(&old, &new).unwrap();
        assert!(tx.contains("delete chain inet polygraph ingress-1"));
        assert!(tx.contains("delete chain inet polygraph ingress-2"));
        assert!(
            !tx.contains("ingress-0 "),
            "unchanged chain rewritten: {tx}"
        );
        assert!(tx.find("flush chain inet polygraph forward") < tx.find("delete chain"));
        assert_eq!(update(&new, &new), None);
        assert!(install(&Ruleset::default()).contains("ct state established,related accept"));
        let stateless = Ruleset {
            stateless: true,
            ..Ruleset::default()
        };
        // Stateless forwarding; the node's own connections keep their replies (its input).
        let installed = install(&stateless);
        assert!(
            !installed.contains("forward ct state established"),
            "{installed}"
        );
        assert!(
            installed.contains("input ct state established"),
            "{installed}"
        );
    }

    #[test]
    fn a_pods_egress_is_checked_on_the_way_to_the_node_too() {
        let r = ruleset(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
        );
        assert_eq!(r.node_dispatch.len(), 3, "{:?}", r.node_dispatch);
        assert!(
            r.node_dispatch
                .iter()
                .all(|d| d.starts_with("meta l4proto { tcp, udp, sctp } iifname"))
        );
        let tx = install(&r);
        assert!(tx.contains("add rule inet polygraph input meta l4proto { tcp, udp, sctp } iifname \"pgv0\" jump egress-0"), "{tx}");
        assert!(
            r.clone()
                .without_direction(0, Direction::Egress)
                .node_dispatch
                .len()
                == 2
        );
    }

    #[test]
    fn a_pod_can_be_left_without_its_own_rules() {
        let r = ruleset(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
        );
        let without = r.clone().without_pod(1);
        assert!(
            !without.chains.contains_key("ingress-1") && !without.chains.contains_key("egress-1")
        );
        assert!(without.chains.contains_key("ingress-2"));
        assert!(without.dispatch.iter().all(|d| !d.contains("\"pgv1\"")));
        assert_eq!(without.dispatch.len(), r.dispatch.len() - 2);
    }
}
