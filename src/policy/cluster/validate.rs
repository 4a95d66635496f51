//! Validation as the CRDs do it (OpenAPI markers and CEL rules of
//! `policy.networking.k8s.io_clusternetworkpolicies.yaml` and the v1alpha1 ANP/BANP CRDs), with
//! the API server's field paths and words.
//!
//! polygraph validates against the *experimental* channel, the one that admits every field it
//! reads (`nodes`, `domainNames`), including that channel's rule that an egress rule may not mix
//! named ports with `networks`/`nodes`/`domainNames` peers: such a named port could never match.

use std::collections::HashSet;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ClusterKind;
use super::api::{
    ClusterNetworkPolicy, NamespacedPod, Peer, Port, ProtocolEntry, Subject, V1Alpha1Policy,
    V1Alpha1Port,
};
use crate::input::FieldProblem;
use crate::model::syntax;
use crate::policy::Direction;
use crate::policy::cidr;
use crate::policy::validate::{Problems, validate_selector};

/// The CRD's `DomainName` pattern as network-policy-api v0.2.1 fixed it (before, an `A-z` typo
/// admitted `[\]^_\``): polygraph accepts what the API server of a current release accepts.
static DOMAIN_NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$",
    )
    .unwrap_or_else(|e| unreachable!("the domain-name pattern is a valid regex: {e}"))
});

const PRIORITY_MAX: i64 = 1000;
const CIDR_MAX_LEN: usize = 43;
const RULE_NAME_MAX: usize = 100;
/// `networks` and `domainNames` lists: 1..25 in both versions.
const LIST_MAX: usize = 25;

/// What differs between the versions.
struct Limits {
    kind: ClusterKind,
    rules: usize,
    peers: usize,
    ports: usize,
    actions: &'static [&'static str],
    /// v1alpha1 `NamespacedPod` requires `namespaceSelector`; v1alpha2 defaults it to all.
    namespace_selector_required: bool,
}

impl Limits {
    fn of(kind: ClusterKind) -> Limits {
        match kind {
            ClusterKind::ClusterNetworkPolicy => Limits {
                kind,
                rules: 25,
                peers: 25,
                ports: 25,
                actions: &["Accept", "Deny", "Pass"],
                namespace_selector_required: false,
            },
            ClusterKind::AdminNetworkPolicy => Limits {
                kind,
                rules: 100,
                peers: 100,
                ports: 100,
                actions: &["Allow", "Deny", "Pass"],
                namespace_selector_required: true,
            },
            ClusterKind::BaselineAdminNetworkPolicy => Limits {
                kind,
                rules: 100,
                peers: 100,
                ports: 100,
                actions: &["Allow", "Deny"],
                namespace_selector_required: true,
            },
        }
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn validate_v1alpha2(policy: &ClusterNetworkPolicy) -> Vec<FieldProblem> {
    let limits = Limits::of(ClusterKind::ClusterNetworkPolicy);
    let mut problems = Problems(Vec::new());
    validate_metadata(&policy.metadata, limits.kind, &mut problems);
    let Some(spec) = &policy.spec else {
        problems.add("spec", "Required value");
        return problems.0;
    };
    match spec.tier.as_deref() {
        None => problems.add("spec.tier", "Required value"),
        Some("Admin" | "Baseline") => {}
        Some(other) => problems.add(
            "spec.tier",
            format!("Unsupported value: {other:?}: supported values: \"Admin\", \"Baseline\""),
        ),
    }
    validate_priority(spec.priority, true, &mut problems);
    validate_subject(spec.subject.as_ref(), &limits, &mut problems);
    let protocols =
        |protocols: &Option<Vec<ProtocolEntry>>, path: &str, problems: &mut Problems| {
            let protocols = protocols.as_deref()?;
            validate_protocols(protocols, &format!("{path}.protocols"), problems);
            Some(protocols.iter().any(|p| p.destination_named_port.is_some()))
        };
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    validate_rules(
        ingress,
        Direction::Ingress,
        &limits,
        &mut problems,
        |r| RuleHead::of(&r.name, &r.action, r.from.as_deref()),
        |r, path, problems| protocols(&r.protocols, path, problems),
    );
    let egress = spec.egress.as_deref().unwrap_or_default();
    validate_rules(
        egress,
        Direction::Egress,
        &limits,
        &mut problems,
        |r| RuleHead::of(&r.name, &r.action, r.to.as_deref()),
        |r, path, problems| protocols(&r.protocols, path, problems),
    );
    problems.0
}

pub fn validate_v1alpha1(policy: &V1Alpha1Policy, kind: ClusterKind) -> Vec<FieldProblem> {
    let limits = Limits::of(kind);
    let mut problems = Problems(Vec::new());
    validate_metadata(&policy.metadata, kind, &mut problems);
    if kind == ClusterKind::BaselineAdminNetworkPolicy
        && let Some(name) = policy.metadata.name.as_deref()
        && name != "default"
    {
        problems.add(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster"
            ),
        );
    }
    let Some(spec) = &policy.spec else {
        problems.add("spec", "Required value");
        return problems.0;
    };
    match kind {
        ClusterKind::BaselineAdminNetworkPolicy => {
            if spec.priority.is_some() {
                problems.add(
                    "spec.priority",
                    "unknown field (a BaselineAdminNetworkPolicy has no priority)",
                );
            }
        }
        _ => validate_priority(spec.priority, true, &mut problems),
    }
    validate_subject(spec.subject.as_ref(), &limits, &mut problems);
    let ports = |ports: &Option<Vec<V1Alpha1Port>>, path: &str, problems: &mut Problems| {
        let ports = ports.as_deref()?;
        validate_v1alpha1_ports(ports, &format!("{path}.ports"), &limits, problems);
        Some(ports.iter().any(|p| p.named_port.is_some()))
    };
    let ingress = spec.ingress.as_deref().unwrap_or_default();
    validate_rules(
        ingress,
        Direction::Ingress,
        &limits,
        &mut problems,
        |r| RuleHead::of(&r.name, &r.action, r.from.as_deref()),
        |r, path, problems| ports(&r.ports, path, problems),
    );
    let egress = spec.egress.as_deref().unwrap_or_default();
    validate_rules(
        egress,
        Direction::Egress,
        &limits,
        &mut problems,
        |r| RuleHead::of(&r.name, &r.action, r.to.as_deref()),
        |r, path, problems| ports(&r.ports, path, problems),
    );
    problems.0
}

/// What rules of both versions share: a name, an action and peers.
struct RuleHead<'a> {
    name: &'a Option<String>,
    action: &'a Option<String>,
    peers: Option<&'a [Peer]>,
}

impl<'a> RuleHead<'a> {
    fn of(name: &'a Option<String>, action: &'a Option<String>, peers: Option<&'a [Peer]>) -> Self {
        RuleHead {
            name,
            action,
            peers,
        }
    }
}

/// One direction's rules, in field order: name and action, peers, then the version's own port list
/// (`ports`, which validates it under the rule's path and says whether it names a port).
fn validate_rules<'a, R>(
    rules: &'a [R],
    direction: Direction,
    limits: &Limits,
    problems: &mut Problems,
    head: impl Fn(&'a R) -> RuleHead<'a>,
    ports: impl Fn(&'a R, &str, &mut Problems) -> Option<bool>,
) {
    let field = direction.rules_field();
    check_count(
        rules.len(),
        0,
        limits.rules,
        &format!("spec.{field}"),
        problems,
    );
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.{field}[{i}]");
        let head = head(rule);
        validate_rule_head(head.name, head.action, &path, limits, problems);
        let egress = direction == Direction::Egress;
        validate_peers(
            head.peers,
            &format!("{path}.{}", direction.peers_field()),
            egress,
            limits,
            problems,
        );
        if ports(rule, &path, problems) == Some(true) && egress {
            named_port_mix(head.peers, &path, problems);
        }
    }
}

fn validate_metadata(metadata: &ObjectMeta, kind: ClusterKind, problems: &mut Problems) {
    match metadata.name.as_deref() {
        None | Some("") => problems.add("metadata.name", "Required value: name is required"),
        Some(name) => {
            if let Err(m) = syntax::dns1123_subdomain(name) {
                problems.add("metadata.name", format!("Invalid value: {name:?}: {m}"));
            }
        }
    }
    // kubectl would drop it silently; a namespace on a cluster-scoped object means the author
    // expects a scope the object does not have, so it is worth stopping for.
    if let Some(namespace) = metadata.namespace.as_deref() {
        problems.add(
            "metadata.namespace",
            format!(
                "Forbidden: {kind} is cluster-scoped, it has no namespace (found {namespace:?}); select namespaces with spec.subject"
            ),
        );
    }
}

fn validate_priority(priority: Option<i64>, required: bool, problems: &mut Problems) {
    match priority {
        None if required => problems.add("spec.priority", "Required value"),
        None => {}
        Some(p) if !(0..=PRIORITY_MAX).contains(&p) => problems.add(
            "spec.priority",
            format!("Invalid value: {p}: must be between 0 and {PRIORITY_MAX}, inclusive"),
        ),
        Some(_) => {}
    }
}

fn check_count(len: usize, min: usize, max: usize, path: &str, problems: &mut Problems) {
    if len > max {
        problems.add(
            path,
            format!("Too many: {len}: must have at most {max} items"),
        );
    } else if len < min {
        problems.add(
            path,
            format!("Invalid value: {len}: must have at least {min} items"),
        );
    }
}

fn validate_subject(subject: Option<&Subject>, limits: &Limits, problems: &mut Problems) {
    let Some(subject) = subject else {
        problems.add("spec.subject", "Required value");
        return;
    };
    let set = usize::from(subject.namespaces.is_some()) + usize::from(subject.pods.is_some());
    if set != 1 {
        problems.add(
            "spec.subject",
            format!(
                "Invalid value: {set} fields set: must have exactly one of \"namespaces\", \"pods\""
            ),
        );
    }
    if let Some(namespaces) = &subject.namespaces {
        validate_selector(namespaces, "spec.subject.namespaces", problems);
    }
    if let Some(pods) = &subject.pods {
        validate_namespaced_pod(pods, "spec.subject.pods", limits, problems);
    }
}

fn validate_namespaced_pod(
    pods: &NamespacedPod,
    path: &str,
    limits: &Limits,
    problems: &mut Problems,
) {
    match &pods.namespace_selector {
        Some(selector) => {
            validate_selector(selector, &format!("{path}.namespaceSelector"), problems)
        }
        None if limits.namespace_selector_required => {
            problems.add(format!("{path}.namespaceSelector"), "Required value");
        }
        None => {}
    }
    match &pods.pod_selector {
        Some(selector) => validate_selector(selector, &format!("{path}.podSelector"), problems),
        None => problems.add(
            format!("{path}.podSelector"),
            "Required value (use {} to select every pod)",
        ),
    }
}

fn validate_rule_head(
    name: &Option<String>,
    action: &Option<String>,
    path: &str,
    limits: &Limits,
    problems: &mut Problems,
) {
    if let Some(name) = name
        && name.chars().count() > RULE_NAME_MAX
    {
        problems.add(
            format!("{path}.name"),
            format!("Too long: may not be more than {RULE_NAME_MAX} bytes"),
        );
    }
    match action.as_deref() {
        None => problems.add(format!("{path}.action"), "Required value"),
        Some(a) if limits.actions.contains(&a) => {}
        Some(other) => problems.add(
            format!("{path}.action"),
            format!(
                "Unsupported value: {other:?}: supported values: {}",
                quoted(limits.actions)
            ),
        ),
    }
}

fn validate_peers(
    peers: Option<&[Peer]>,
    path: &str,
    egress: bool,
    limits: &Limits,
    problems: &mut Problems,
) {
    let Some(peers) = peers else {
        problems.add(path, "Required value");
        return;
    };
    check_count(peers.len(), 1, limits.peers, path, problems);
    for (i, peer) in peers.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let fields: [(&str, bool); 5] = [
            ("namespaces", peer.namespaces.is_some()),
            ("pods", peer.pods.is_some()),
            ("networks", peer.networks.is_some()),
            ("nodes", peer.nodes.is_some()),
            ("domainNames", peer.domain_names.is_some()),
        ];
        let set = fields.iter().filter(|(_, s)| *s).count();
        let allowed: &[&str] = match (egress, limits.kind) {
            (false, _) => &["namespaces", "pods"],
            (true, ClusterKind::BaselineAdminNetworkPolicy) => {
                &["namespaces", "pods", "networks", "nodes"]
            }
            (true, _) => &["namespaces", "pods", "networks", "nodes", "domainNames"],
        };
        for (field, present) in fields {
            if present && !allowed.contains(&field) {
                let why = if egress {
                    format!("not a field of a {} egress peer", limits.kind)
                } else {
                    "only egress peers may use it".to_string()
                };
                problems.add(format!("{path}.{field}"), format!("Forbidden: {why}"));
            }
        }
        if set != 1 {
            problems.add(
                &path,
                format!(
                    "Invalid value: {set} fields set: must have exactly one of {}",
                    quoted(allowed)
                ),
            );
        }
        if let Some(namespaces) = &peer.namespaces {
            validate_selector(namespaces, &format!("{path}.namespaces"), problems);
        }
        if let Some(pods) = &peer.pods {
            validate_namespaced_pod(pods, &format!("{path}.pods"), limits, problems);
        }
        if let Some(nodes) = &peer.nodes {
            validate_selector(nodes, &format!("{path}.nodes"), problems);
        }
        if let Some(networks) = &peer.networks {
            let path = format!("{path}.networks");
            validate_set(networks, &path, problems);
            for (j, network) in networks.iter().enumerate() {
                validate_cidr(network, &format!("{path}[{j}]"), problems);
            }
        }
        if let Some(names) = &peer.domain_names {
            let path = format!("{path}.domainNames");
            validate_set(names, &path, problems);
            for (j, name) in names.iter().enumerate() {
                if !DOMAIN_NAME.is_match(name) {
                    problems.add(
                        format!("{path}[{j}]"),
                        format!(
                            "Invalid value: {name:?}: should match '{}'",
                            DOMAIN_NAME.as_str()
                        ),
                    );
                }
            }
        }
    }
}

/// A `listType=set` of 1..25 strings.
fn validate_set(values: &[String], path: &str, problems: &mut Problems) {
    check_count(values.len(), 1, LIST_MAX, path, problems);
    let mut seen = HashSet::new();
    for (i, v) in values.iter().enumerate() {
        if !seen.insert(v) {
            problems.add(format!("{path}[{i}]"), format!("Duplicate value: {v:?}"));
        }
    }
}

fn validate_cidr(text: &str, path: &str, problems: &mut Problems) {
    if text.len() > CIDR_MAX_LEN {
        problems.add(
            path,
            format!("Too long: may not be more than {CIDR_MAX_LEN} bytes"),
        );
        return;
    }
    // isCIDR needs a prefix length; a bare address is not a CIDR.
    match cidr::parse(text) {
        Ok(net) if text.contains('/') => {
            // Since network-policy-api v0.2.1 (and so in v1beta1): the canonical, masked form
            // only. `10.1.2.3/8` names a host, not the network the rule means. (The address is
            // compared, not the text: `2001:DB8::/32` is canonical.)
            let written: Option<std::net::IpAddr> =
                text.split_once('/').and_then(|(a, _)| a.parse().ok());
            let canonical = net.to_string();
            if written != Some(net.network()) {
                problems.add(
                    path,
                    format!(
                        "Invalid value: {text:?}: CIDR must be in canonical form (host bits zero): use {canonical:?}"
                    ),
                );
            }
        }
        _ => problems.add(
            path,
            format!("Invalid value: {text:?}: Invalid CIDR format provided"),
        ),
    }
}

fn validate_protocols(protocols: &[ProtocolEntry], path: &str, problems: &mut Problems) {
    check_count(protocols.len(), 1, 25, path, problems);
    for (i, entry) in protocols.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let set = [
            entry.tcp.is_some(),
            entry.udp.is_some(),
            entry.sctp.is_some(),
            entry.destination_named_port.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            problems.add(
                &path,
                format!(
                    "Invalid value: {set} fields set: must have exactly one of \"tcp\", \"udp\", \"sctp\", \"destinationNamedPort\""
                ),
            );
        }
        for (field, port) in [
            ("tcp", &entry.tcp),
            ("udp", &entry.udp),
            ("sctp", &entry.sctp),
        ] {
            let Some(port) = port else { continue };
            match &port.destination_port {
                None => problems.add(
                    format!("{path}.{field}"),
                    "Invalid value: 0 fields set: must have at least 1 items (set destinationPort)",
                ),
                Some(p) => validate_port(p, &format!("{path}.{field}.destinationPort"), problems),
            }
        }
        if let Some(name) = &entry.destination_named_port
            && name.is_empty()
        {
            problems.add(format!("{path}.destinationNamedPort"), "Required value");
        }
    }
}

fn validate_port(port: &Port, path: &str, problems: &mut Problems) {
    let set = usize::from(port.number.is_some()) + usize::from(port.range.is_some());
    if set != 1 {
        problems.add(
            path,
            format!(
                "Invalid value: {set} fields set: must have exactly one of \"number\", \"range\""
            ),
        );
    }
    if let Some(number) = port.number {
        port_bound(number, &format!("{path}.number"), problems);
    }
    if let Some(range) = &port.range {
        range_check(range.start, range.end, &format!("{path}.range"), problems);
    }
}

fn port_bound(value: i64, path: &str, problems: &mut Problems) -> bool {
    match syntax::port_number(value) {
        Ok(_) => true,
        Err(m) => {
            problems.add(path, format!("Invalid value: {value}: {m}"));
            false
        }
    }
}

fn range_check(start: Option<i64>, end: Option<i64>, path: &str, problems: &mut Problems) {
    let (Some(start), Some(end)) = (start, end) else {
        if start.is_none() {
            problems.add(format!("{path}.start"), "Required value");
        }
        if end.is_none() {
            problems.add(format!("{path}.end"), "Required value");
        }
        return;
    };
    let ok = port_bound(start, &format!("{path}.start"), problems)
        & port_bound(end, &format!("{path}.end"), problems);
    if ok && start >= end {
        problems.add(
            path,
            format!("Invalid value: {start}-{end}: Start port must be less than End port"),
        );
    }
}

fn validate_v1alpha1_ports(
    ports: &[V1Alpha1Port],
    path: &str,
    limits: &Limits,
    problems: &mut Problems,
) {
    check_count(ports.len(), 1, limits.ports, path, problems);
    for (i, port) in ports.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let set = [
            port.port_number.is_some(),
            port.named_port.is_some(),
            port.port_range.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            problems.add(
                &path,
                format!(
                    "Invalid value: {set} fields set: must have exactly one of \"portNumber\", \"namedPort\", \"portRange\""
                ),
            );
        }
        if let Some(number) = &port.port_number {
            validate_v1alpha1_protocol(
                number.protocol.as_deref(),
                &format!("{path}.portNumber"),
                problems,
            );
            match number.port {
                None => problems.add(format!("{path}.portNumber.port"), "Required value"),
                Some(p) => {
                    port_bound(p, &format!("{path}.portNumber.port"), problems);
                }
            }
        }
        if let Some(range) = &port.port_range {
            validate_v1alpha1_protocol(
                range.protocol.as_deref(),
                &format!("{path}.portRange"),
                problems,
            );
            range_check(
                range.start,
                range.end,
                &format!("{path}.portRange"),
                problems,
            );
        }
        if let Some(name) = &port.named_port
            && name.is_empty()
        {
            problems.add(format!("{path}.namedPort"), "Required value");
        }
    }
}

fn validate_v1alpha1_protocol(protocol: Option<&str>, path: &str, problems: &mut Problems) {
    if let Some(p) = protocol
        && !["TCP", "UDP", "SCTP"].contains(&p)
    {
        problems.add(
            format!("{path}.protocol"),
            format!("Unsupported value: {p:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""),
        );
    }
}

/// The experimental CRD's CEL rule on egress rules that name a port.
fn named_port_mix(peers: Option<&[Peer]>, path: &str, problems: &mut Problems) {
    let cidr_like = peers
        .into_iter()
        .flatten()
        .any(|p| p.networks.is_some() || p.nodes.is_some() || p.domain_names.is_some());
    if cidr_like {
        problems.add(
            path,
            "Invalid value: networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
        );
    }
}
