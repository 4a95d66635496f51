//! From documents to compiled policies: `kind: List` expansion, strict typing, validation,
//! defaulting, compilation.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::cluster::{self, ClusterKind};
use super::compiled::{NamespaceScope, Peer, Policy, PortMatch, Rule};
use super::error::InvalidPolicy;
use super::selector::Selector;
use super::{AnyPolicy, PolicySet};
use super::{PolicyError, cidr, validate};
use crate::input::{self, Document, FieldProblem, Origin};
use crate::model::{Protocol, syntax};

const API_VERSION: &str = "networking.k8s.io/v1";
const LIST_KINDS: [&str; 5] = [
    "List",
    "NetworkPolicyList",
    "ClusterNetworkPolicyList",
    "AdminNetworkPolicyList",
    "BaselineAdminNetworkPolicyList",
];

/// Reads every `-f` argument (file, directory or `-`) and compiles the policies in order.
/// Policies without `metadata.namespace` go to `default_namespace`, as with `kubectl -n`.
pub fn load_policies(args: &[String], default_namespace: &str) -> Result<PolicySet, PolicyError> {
    let mut policies = PolicySet::default();
    for arg in args {
        for document in input::read_documents(arg)? {
            policies.extend(compile_document(document, default_namespace)?);
        }
    }
    Ok(policies)
}

/// Parses policy text, as `load_policies` does for one file.
pub fn parse_policies(
    source: &str,
    text: &str,
    default_namespace: &str,
) -> Result<PolicySet, PolicyError> {
    let mut policies = PolicySet::default();
    for document in input::parse_documents(source, text)? {
        policies.extend(compile_document(document, default_namespace)?);
    }
    Ok(policies)
}

/// One document: a policy of any kind polygraph reads, or a list of them.
pub fn compile_document(
    document: Document,
    default_namespace: &str,
) -> Result<Vec<AnyPolicy>, PolicyError> {
    let Document { origin, value } = document;
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if LIST_KINDS.contains(&kind.as_str()) {
        let items = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                return Err(PolicyError::UnsupportedKind {
                    origin: Box::new(origin),
                    kind,
                    problem: "items: must be a list".into(),
                });
            }
        };
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let origin = Origin {
                    item: Some(i),
                    ..origin.clone()
                };
                compile_object(origin, item, default_namespace)
            })
            .collect();
    }
    compile_object(origin, value, default_namespace).map(|p| vec![p])
}

fn compile_object(
    origin: Origin,
    value: Value,
    default_namespace: &str,
) -> Result<AnyPolicy, PolicyError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(cluster_kind) = kind.as_deref().and_then(ClusterKind::from_kind) {
        return cluster::compile_object(origin, value, cluster_kind).map(AnyPolicy::Cluster);
    }
    match kind.as_deref() {
        Some("NetworkPolicy") => {}
        Some(other) => {
            let api_version = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("?");
            return Err(PolicyError::UnsupportedKind {
                origin: Box::new(origin),
                kind: format!("{other} ({api_version})"),
                problem: format!(
                    "not supported: polygraph reads {API_VERSION} NetworkPolicy, {} and {} ClusterNetworkPolicy and {} AdminNetworkPolicy/BaselineAdminNetworkPolicy objects",
                    cluster::api::V1BETA1,
                    cluster::api::V1ALPHA2,
                    cluster::api::V1ALPHA1
                ),
            });
        }
        None => {
            return Err(PolicyError::UnsupportedKind {
                origin: Box::new(origin),
                kind: "object".into(),
                problem: "kind: Required value: expected NetworkPolicy (or a List of them)".into(),
            });
        }
    }
    let named = display_name(&value, default_namespace);
    let invalid = |problem: FieldProblem, more: usize| {
        PolicyError::Invalid(Box::new(InvalidPolicy {
            origin: origin.clone(),
            kind: "NetworkPolicy",
            policy: named.clone(),
            problem,
            more,
        }))
    };
    if value.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        let found = value
            .get("apiVersion")
            .map(ToString::to_string)
            .unwrap_or("nothing".into());
        return Err(invalid(
            FieldProblem {
                field: "apiVersion".into(),
                message: format!("must be {API_VERSION}, found {found}"),
            },
            0,
        ));
    }
    let mut object: NetworkPolicy = input::from_value_strict(value).map_err(|p| invalid(p, 0))?;
    let problems = validate::validate(&object);
    if let Some(first) = problems.first() {
        return Err(invalid(first.clone(), problems.len() - 1));
    }
    if object.metadata.namespace.is_none() {
        if let Err(m) = syntax::dns1123_label(default_namespace) {
            return Err(invalid(
                FieldProblem {
                    field: "metadata.namespace".into(),
                    message: format!("default namespace {default_namespace:?}: {m}"),
                },
                0,
            ));
        }
        object.metadata.namespace = Some(default_namespace.to_string());
    }
    Ok(AnyPolicy::Network(compile(object, origin)))
}

/// `namespace/name` for messages, read before typing so that even type errors can name it.
fn display_name(value: &Value, default_namespace: &str) -> String {
    let metadata = value.get("metadata");
    let field = |f: &str| metadata.and_then(|m| m.get(f)).and_then(Value::as_str);
    match field("name") {
        Some(name) => format!("{}/{name}", field("namespace").unwrap_or(default_namespace)),
        None => "(unnamed)".into(),
    }
}

/// Applies the API server's defaults and compiles. `object` is valid and has a namespace.
fn compile(object: NetworkPolicy, origin: Origin) -> Policy {
    let original = object.clone();
    let namespace = object.metadata.namespace.unwrap_or_default();
    let name = object.metadata.name.unwrap_or_default();
    let spec = object.spec.unwrap_or_default();
    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();

    // SetDefaults_NetworkPolicy: no policyTypes means Ingress, plus Egress when egress rules exist.
    let types = match spec.policy_types {
        Some(types) if !types.is_empty() => types,
        _ if egress_rules.is_empty() => vec!["Ingress".to_string()],
        _ => vec!["Ingress".to_string(), "Egress".to_string()],
    };
    let has = |t: &str| types.iter().any(|x| x == t);

    Policy {
        pod_selector: spec
            .pod_selector
            .as_ref()
            .map(Selector::compile)
            .unwrap_or_default(),
        ingress: has("Ingress").then(|| ingress_rules.iter().map(compile_ingress).collect()),
        egress: has("Egress").then(|| egress_rules.iter().map(compile_egress).collect()),
        namespace,
        name,
        origin,
        object: original,
    }
}

fn compile_ingress(rule: &NetworkPolicyIngressRule) -> Rule {
    compile_rule(rule.from.as_deref(), rule.ports.as_deref())
}

fn compile_egress(rule: &NetworkPolicyEgressRule) -> Rule {
    compile_rule(rule.to.as_deref(), rule.ports.as_deref())
}

fn compile_rule(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>) -> Rule {
    Rule {
        // A non-empty list stays a list even if an entry failed to compile, so that a bad entry
        // can only ever match less (fail closed), never turn into "all peers".
        peers: peers
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().filter_map(compile_peer).collect()),
        ports: ports
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().map(compile_port).collect()),
    }
}

/// `None` only for an unparsable CIDR, which validation has already rejected.
fn compile_peer(peer: &NetworkPolicyPeer) -> Option<Peer> {
    if let Some(block) = &peer.ip_block {
        let cidr = cidr::parse(&block.cidr).ok()?;
        let except = block
            .except
            .iter()
            .flatten()
            .map(|c| cidr::parse(c).ok())
            .collect::<Option<Vec<_>>>()?;
        return Some(Peer::IpBlock { cidr, except });
    }
    Some(Peer::Pods {
        namespaces: match &peer.namespace_selector {
            None => NamespaceScope::PolicyNamespace,
            Some(selector) => NamespaceScope::Selected(Selector::compile(selector)),
        },
        pods: peer
            .pod_selector
            .as_ref()
            .map(Selector::compile)
            .unwrap_or_default(),
    })
}

fn compile_port(port: &NetworkPolicyPort) -> PortMatch {
    // SetDefaults_NetworkPolicyPort: protocol TCP. Validation admitted only the three protocols.
    let protocol = port
        .protocol
        .as_deref()
        .and_then(Protocol::from_api)
        .unwrap_or(Protocol::Tcp);
    match &port.port {
        None => PortMatch::AllPorts { protocol },
        Some(IntOrString::String(name)) => PortMatch::Named {
            protocol,
            name: name.clone(),
        },
        Some(IntOrString::Int(number)) => {
            // Validated to 1..=65535; port 0 is never probed, so a fallback can't widen the rule.
            let start = u16::try_from(*number).unwrap_or(0);
            let end = port
                .end_port
                .and_then(|e| u16::try_from(e).ok())
                .unwrap_or(start);
            PortMatch::Range {
                protocol,
                start,
                end,
            }
        }
    }
}
