//! Validation as the API server does it (`pkg/apis/networking/validation` and
//! `apimachinery/.../meta/v1/validation.ValidateLabelSelector`), so that polygraph rejects exactly
//! what `kubectl apply` would have rejected, with the same field paths.
//!
//! Every problem is collected, in field order; callers usually report the first.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cidr;
use super::compiled::Direction;
use crate::input::FieldProblem;
use crate::model::{Protocol, syntax};

/// The operators a label selector requirement may use.
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];
const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

pub(super) struct Problems(pub(super) Vec<FieldProblem>);

impl Problems {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldProblem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Validates metadata and spec. The namespace is checked by the caller, which may default it.
pub fn validate(policy: &NetworkPolicy) -> Vec<FieldProblem> {
    let mut problems = Problems(Vec::new());
    match policy.metadata.name.as_deref() {
        None | Some("") => problems.add("metadata.name", "Required value: name is required"),
        Some(name) => {
            if let Err(m) = syntax::dns1123_subdomain(name) {
                problems.add("metadata.name", format!("Invalid value: {name:?}: {m}"));
            }
        }
    }
    if let Some(namespace) = policy.metadata.namespace.as_deref()
        && let Err(m) = syntax::dns1123_label(namespace)
    {
        problems.add(
            "metadata.namespace",
            format!("Invalid value: {namespace:?}: {m}"),
        );
    }
    if let Some(spec) = &policy.spec {
        validate_spec(spec, &mut problems);
    }
    problems.0
}

fn validate_spec(spec: &NetworkPolicySpec, problems: &mut Problems) {
    if let Some(selector) = &spec.pod_selector {
        validate_selector(selector, "spec.podSelector", problems);
    }
    // Ingress and egress rules differ only in the name of their peer list (`from` / `to`).
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| (r.ports.as_deref(), r.from.as_deref()));
    let egress = spec
        .egress
        .iter()
        .flatten()
        .map(|r| (r.ports.as_deref(), r.to.as_deref()));
    let rules: [(Direction, Vec<_>); 2] = [
        (Direction::Ingress, ingress.collect()),
        (Direction::Egress, egress.collect()),
    ];
    for (direction, rules) in rules {
        for (i, (ports, peers)) in rules.into_iter().enumerate() {
            let path = format!("spec.{}[{i}]", direction.rules_field());
            for (j, port) in ports.into_iter().flatten().enumerate() {
                validate_port(port, &format!("{path}.ports[{j}]"), problems);
            }
            for (j, peer) in peers.into_iter().flatten().enumerate() {
                validate_peer(
                    peer,
                    &format!("{path}.{}[{j}]", direction.peers_field()),
                    problems,
                );
            }
        }
    }
    if let Some(types) = &spec.policy_types {
        // The API server allows a repeated type (["Ingress", "Ingress"]) but not a third entry.
        if types.len() > POLICY_TYPES.len() {
            problems.add(
                "spec.policyTypes",
                format!("Invalid value: {types:?}: may not specify more than two policyTypes"),
            );
            return;
        }
        for (i, t) in types.iter().enumerate() {
            if !POLICY_TYPES.contains(&t.as_str()) {
                problems.add(
                    format!("spec.policyTypes[{i}]"),
                    format!("Unsupported value: {t:?}: supported values: \"Ingress\", \"Egress\""),
                );
            }
        }
    }
}

fn validate_port(port: &NetworkPolicyPort, path: &str, problems: &mut Problems) {
    if let Some(protocol) = &port.protocol
        && Protocol::from_api(protocol).is_none()
    {
        problems.add(
            format!("{path}.protocol"),
            format!(
                "Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            ),
        );
    }
    match &port.port {
        Some(IntOrString::Int(number)) => {
            if let Err(m) = syntax::port_number(i64::from(*number)) {
                problems.add(
                    format!("{path}.port"),
                    format!("Invalid value: {number}: {m}"),
                );
            }
            if let Some(end) = port.end_port {
                if end < *number {
                    problems.add(
                        format!("{path}.endPort"),
                        format!("Invalid value: {end}: must be greater than or equal to `port` ({number})"),
                    );
                }
                if let Err(m) = syntax::port_number(i64::from(end)) {
                    problems.add(
                        format!("{path}.endPort"),
                        format!("Invalid value: {end}: {m}"),
                    );
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = port.end_port {
                problems.add(
                    format!("{path}.endPort"),
                    format!(
                        "Invalid value: {end}: may not be specified when `port` is non-numeric"
                    ),
                );
            }
            if let Err(m) = syntax::port_name(name) {
                problems.add(
                    format!("{path}.port"),
                    format!("Invalid value: {name:?}: {m}"),
                );
            }
        }
        None => {
            if let Some(end) = port.end_port {
                problems.add(
                    format!("{path}.endPort"),
                    format!(
                        "Invalid value: {end}: may not be specified when `port` is not specified"
                    ),
                );
            }
        }
    }
}

fn validate_peer(peer: &NetworkPolicyPeer, path: &str, problems: &mut Problems) {
    let mut count = 0;
    if let Some(selector) = &peer.pod_selector {
        count += 1;
        validate_selector(selector, &format!("{path}.podSelector"), problems);
    }
    if let Some(selector) = &peer.namespace_selector {
        count += 1;
        validate_selector(selector, &format!("{path}.namespaceSelector"), problems);
    }
    if let Some(block) = &peer.ip_block {
        count += 1;
        validate_ip_block(block, &format!("{path}.ipBlock"), problems);
    }
    if count == 0 {
        problems.add(path, "Required value: must specify a peer");
    } else if count > 1 && peer.ip_block.is_some() {
        problems.add(
            path,
            "Forbidden: may not specify both ipBlock and another peer",
        );
    }
}

fn validate_ip_block(block: &IPBlock, path: &str, problems: &mut Problems) {
    if block.cidr.is_empty() {
        problems.add(format!("{path}.cidr"), "Required value");
        return;
    }
    let net = match cidr::parse(&block.cidr) {
        Ok(net) => net,
        Err(m) => {
            problems.add(
                format!("{path}.cidr"),
                format!("Invalid value: {:?}: {m}", block.cidr),
            );
            return;
        }
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        match cidr::parse(except) {
            Err(m) => problems.add(except_path, format!("Invalid value: {except:?}: {m}")),
            Ok(inner) => {
                if !cidr::strict_subset(&inner, &net) {
                    problems.add(
                        except_path,
                        format!(
                            "Invalid value: {except:?}: must be a strict subset of `cidr` ({})",
                            block.cidr
                        ),
                    );
                }
            }
        }
    }
}

pub(super) fn validate_selector(selector: &LabelSelector, path: &str, problems: &mut Problems) {
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let req_path = format!("{path}.matchExpressions[{i}]");
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    problems.add(
                        format!("{req_path}.values"),
                        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    problems.add(
                        format!("{req_path}.values"),
                        "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            other => problems.add(
                format!("{req_path}.operator"),
                format!(
                    "Invalid value: {other:?}: not a valid selector operator (expected one of {})",
                    OPERATORS.join(", ")
                ),
            ),
        }
        if let Err(m) = syntax::qualified_name(&requirement.key) {
            problems.add(
                format!("{req_path}.key"),
                format!("Invalid value: {:?}: {m}", requirement.key),
            );
        }
        for (j, value) in values.iter().enumerate() {
            if let Err(m) = syntax::label_value(value) {
                problems.add(
                    format!("{req_path}.values[{j}]"),
                    format!("Invalid value: {value:?}: {m}"),
                );
            }
        }
    }
    for (key, value) in selector.match_labels.iter().flatten() {
        if let Err(m) = syntax::qualified_name(key) {
            problems.add(
                format!("{path}.matchLabels"),
                format!("Invalid value: {key:?}: key {m}"),
            );
        }
        if let Err(m) = syntax::label_value(value) {
            problems.add(
                format!("{path}.matchLabels.{key}"),
                format!("Invalid value: {value:?}: {m}"),
            );
        }
    }
}
