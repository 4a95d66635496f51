//! From a document to a compiled `ClusterPolicy`: version check, strict typing, validation, and
//! the mapping of v1alpha1 onto the v1alpha2 model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::api::{
    self, ClusterNetworkPolicy, NamespacedPod, Peer, ProtocolEntry, V1Alpha1Policy, V1Alpha1Port,
};
use super::validate::{validate_v1alpha1, validate_v1alpha2};
use super::{
    Action, ClusterKind, ClusterPeer, ClusterPolicy, ClusterRule, ProtocolMatch, Subject, Tier,
};
use crate::input::{self, FieldProblem, Origin};
use crate::model::Protocol;
use crate::policy::error::InvalidPolicy;
use crate::policy::selector::Selector;
use crate::policy::{PolicyError, cidr};

/// Compiles one object whose `kind` is one of the three cluster-scoped kinds.
pub fn compile_object(
    origin: Origin,
    value: Value,
    kind: ClusterKind,
) -> Result<ClusterPolicy, PolicyError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    let invalid = |problem: FieldProblem, more: usize| {
        PolicyError::Invalid(Box::new(InvalidPolicy {
            origin: origin.clone(),
            kind: kind.as_str(),
            policy: name.clone(),
            problem,
            more,
        }))
    };
    let found = value.get("apiVersion").and_then(Value::as_str);
    if !found.is_some_and(|v| kind.api_versions().contains(&v)) {
        let found = value
            .get("apiVersion")
            .map(ToString::to_string)
            .unwrap_or("nothing".into());
        let hint = match kind {
            ClusterKind::ClusterNetworkPolicy => "",
            _ => " (in v1alpha2 it became a ClusterNetworkPolicy)",
        };
        return Err(invalid(
            FieldProblem {
                field: "apiVersion".into(),
                message: format!(
                    "must be {}, found {found}{hint}",
                    kind.api_versions().join(" or ")
                ),
            },
            0,
        ));
    }
    let first = |problems: Vec<FieldProblem>| match problems.first() {
        Some(p) => Err(invalid(p.clone(), problems.len() - 1)),
        None => Ok(()),
    };
    match kind {
        ClusterKind::ClusterNetworkPolicy => {
            let object: ClusterNetworkPolicy =
                input::from_value_strict(value).map_err(|p| invalid(p, 0))?;
            first(validate_v1alpha2(&object))?;
            Ok(from_v1alpha2(object, origin))
        }
        _ => {
            let object: V1Alpha1Policy =
                input::from_value_strict(value).map_err(|p| invalid(p, 0))?;
            first(validate_v1alpha1(&object, kind))?;
            Ok(from_v1alpha1(object, kind, origin))
        }
    }
}

fn selector(s: Option<&LabelSelector>) -> Selector {
    s.map(Selector::compile).unwrap_or_default()
}

fn subject(subject: Option<&api::Subject>) -> Subject {
    match subject {
        Some(api::Subject {
            pods: Some(pods), ..
        }) => Subject::Pods {
            namespaces: selector(pods.namespace_selector.as_ref()),
            pods: selector(pods.pod_selector.as_ref()),
        },
        Some(api::Subject {
            namespaces: Some(ns),
            ..
        }) => Subject::Namespaces(Selector::compile(ns)),
        // Validation requires exactly one; unreachable for a validated object.
        _ => Subject::Namespaces(Selector::everything()),
    }
}

fn namespaced(pods: &NamespacedPod) -> ClusterPeer {
    ClusterPeer::Pods {
        namespaces: selector(pods.namespace_selector.as_ref()),
        pods: selector(pods.pod_selector.as_ref()),
    }
}

fn peers(peers: Option<&[Peer]>) -> Vec<ClusterPeer> {
    peers
        .into_iter()
        .flatten()
        .filter_map(|peer| {
            if let Some(ns) = &peer.namespaces {
                return Some(ClusterPeer::Namespaces(Selector::compile(ns)));
            }
            if let Some(pods) = &peer.pods {
                return Some(namespaced(pods));
            }
            if let Some(networks) = &peer.networks {
                // Validated: every entry parses.
                let nets = networks
                    .iter()
                    .filter_map(|n| cidr::parse(n).ok())
                    .collect();
                return Some(ClusterPeer::Networks(nets));
            }
            if let Some(nodes) = &peer.nodes {
                return Some(ClusterPeer::Nodes(Selector::compile(nodes)));
            }
            peer.domain_names
                .as_ref()
                .map(|names| ClusterPeer::DomainNames(names.clone()))
        })
        .collect()
}

fn action(text: Option<&str>) -> Action {
    match text {
        Some("Accept" | "Allow") => Action::Accept,
        Some("Pass") => Action::Pass,
        // Validated; anything else is Deny, failing closed.
        _ => Action::Deny,
    }
}

fn port_u16(value: Option<i64>) -> u16 {
    value.and_then(|v| u16::try_from(v).ok()).unwrap_or(0)
}

fn protocol(text: Option<&str>) -> Protocol {
    text.and_then(Protocol::from_api).unwrap_or(Protocol::Tcp)
}

fn v1alpha2_protocols(entries: &[ProtocolEntry]) -> Vec<ProtocolMatch> {
    entries
        .iter()
        .filter_map(|entry| {
            if let Some(name) = &entry.destination_named_port {
                return Some(ProtocolMatch::Named(name.clone()));
            }
            let (protocol, port) = [
                (Protocol::Tcp, &entry.tcp),
                (Protocol::Udp, &entry.udp),
                (Protocol::Sctp, &entry.sctp),
            ]
            .into_iter()
            .find_map(|(p, port)| port.as_ref().map(|port| (p, port)))?;
            let port = port.destination_port.as_ref()?;
            let (start, end) = match (&port.number, &port.range) {
                (Some(n), _) => (port_u16(Some(*n)), port_u16(Some(*n))),
                (None, Some(r)) => (port_u16(r.start), port_u16(r.end)),
                (None, None) => return None,
            };
            Some(ProtocolMatch::Range {
                protocol,
                start,
                end,
            })
        })
        .collect()
}

fn v1alpha1_ports(entries: &[V1Alpha1Port]) -> Vec<ProtocolMatch> {
    entries
        .iter()
        .filter_map(|entry| {
            if let Some(name) = &entry.named_port {
                return Some(ProtocolMatch::Named(name.clone()));
            }
            if let Some(n) = &entry.port_number {
                let port = port_u16(n.port);
                return Some(ProtocolMatch::Range {
                    protocol: protocol(n.protocol.as_deref()),
                    start: port,
                    end: port,
                });
            }
            entry.port_range.as_ref().map(|r| ProtocolMatch::Range {
                protocol: protocol(r.protocol.as_deref()),
                start: port_u16(r.start),
                end: port_u16(r.end),
            })
        })
        .collect()
}

/// A compiled rule from what both versions' rules have.
fn rule(
    name: &Option<String>,
    act: &Option<String>,
    p: Option<&[Peer]>,
    protocols: Option<Vec<ProtocolMatch>>,
) -> ClusterRule {
    ClusterRule {
        name: name.clone(),
        action: action(act.as_deref()),
        peers: peers(p),
        protocols,
    }
}

fn priority(value: Option<i64>) -> u32 {
    value.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)
}

fn from_v1alpha2(object: ClusterNetworkPolicy, origin: Origin) -> ClusterPolicy {
    let written = serde_json::to_value(&object).unwrap_or(Value::Null);
    let spec = object.spec.unwrap_or_default();
    let protocols = |p: &Option<Vec<ProtocolEntry>>| p.as_deref().map(v1alpha2_protocols);
    ClusterPolicy {
        name: object.metadata.name.unwrap_or_default(),
        kind: ClusterKind::ClusterNetworkPolicy,
        origin,
        tier: match spec.tier.as_deref() {
            Some("Baseline") => Tier::Baseline,
            _ => Tier::Admin,
        },
        priority: priority(spec.priority),
        subject: subject(spec.subject.as_ref()),
        ingress: (spec.ingress.iter().flatten())
            .map(|r| {
                rule(
                    &r.name,
                    &r.action,
                    r.from.as_deref(),
                    protocols(&r.protocols),
                )
            })
            .collect(),
        egress: (spec.egress.iter().flatten())
            .map(|r| rule(&r.name, &r.action, r.to.as_deref(), protocols(&r.protocols)))
            .collect(),
        object: written,
    }
}

fn from_v1alpha1(object: V1Alpha1Policy, kind: ClusterKind, origin: Origin) -> ClusterPolicy {
    let written = serde_json::to_value(&object).unwrap_or(Value::Null);
    let spec = object.spec.unwrap_or_default();
    let ports = |p: &Option<Vec<V1Alpha1Port>>| p.as_deref().map(v1alpha1_ports);
    ClusterPolicy {
        name: object.metadata.name.unwrap_or_default(),
        kind,
        origin,
        tier: match kind {
            ClusterKind::BaselineAdminNetworkPolicy => Tier::Baseline,
            _ => Tier::Admin,
        },
        priority: priority(spec.priority),
        subject: subject(spec.subject.as_ref()),
        ingress: (spec.ingress.iter().flatten())
            .map(|r| rule(&r.name, &r.action, r.from.as_deref(), ports(&r.ports)))
            .collect(),
        egress: (spec.egress.iter().flatten())
            .map(|r| rule(&r.name, &r.action, r.to.as_deref(), ports(&r.ports)))
            .collect(),
        object: written,
    }
}
