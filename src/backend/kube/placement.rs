//! Where probe pods run. With two or more schedulable nodes, polygraph pins pods to nodes in turn
//! so the matrix holds both same-node pairs (traffic that never leaves the host: veth to veth, the
//! path some CNIs enforce differently) and cross-node pairs (through the overlay or the underlay).
//! Pinning uses required node affinity on `kubernetes.io/hostname` rather than `spec.nodeName`, so
//! the scheduler still checks taints, resources and the node selector.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Taint,
    Toleration,
};

const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

use super::BadOption;

/// A `--toleration` value, in `kubectl taint` syntax: `KEY[=VALUE][:EFFECT]`, or `*` for every
/// taint. Without a value the toleration matches any value (operator Exists); without an effect it
/// matches every effect.
pub fn parse_toleration(spec: &str) -> Result<Toleration, BadOption> {
    let spec = spec.trim();
    if spec == "*" {
        return Ok(Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        });
    }
    let (rest, effect) = match spec.rsplit_once(':') {
        Some((rest, effect)) => {
            if !EFFECTS.contains(&effect) {
                return Err(BadOption(format!(
                    "--toleration {spec:?}: the effect must be one of {}",
                    EFFECTS.join(", ")
                )));
            }
            (rest, Some(effect.to_string()))
        }
        None => (spec, None),
    };
    let (key, value) = match rest.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (rest, None),
    };
    if key.is_empty() {
        return Err(BadOption(format!(
            "--toleration {spec:?}: expected KEY[=VALUE][:EFFECT] or *"
        )));
    }
    crate::model::syntax::qualified_name(key)
        .map_err(|e| BadOption(format!("--toleration {spec:?}: key: {e}")))?;
    if let Some(value) = value {
        crate::model::syntax::label_value(value)
            .map_err(|e| BadOption(format!("--toleration {spec:?}: value: {e}")))?;
    }
    Ok(Toleration {
        key: Some(key.to_string()),
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
        value: value.map(str::to_string),
        effect,
        ..Toleration::default()
    })
}

/// Whether a toleration matches a taint, as the scheduler decides it.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let exists = toleration.operator.as_deref() == Some("Exists");
    match toleration.key.as_deref() {
        None | Some("") => exists,
        Some(key) if key != taint.key => false,
        Some(_) if exists => true,
        Some(_) => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Nodes a probe pod may land on: not cordoned, Ready, carrying every `node_selector` label, and
/// with no NoSchedule/NoExecute taint left untolerated (a kind control plane, usually). Returns
/// their `kubernetes.io/hostname` values (the node name where the label is missing), sorted.
pub fn schedulable(
    nodes: &[Node],
    node_selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|node| {
            let spec = node.spec.clone().unwrap_or_default();
            let labels = node.metadata.labels.clone().unwrap_or_default();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let selected = node_selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            let untolerated = spec.taints.iter().flatten().any(|taint| {
                taint.effect != "PreferNoSchedule"
                    && !tolerations.iter().any(|t| tolerates(t, taint))
            });
            ready && selected && !untolerated && spec.unschedulable != Some(true)
        })
        .filter_map(|node| {
            let labels = node.metadata.labels.as_ref();
            labels
                .and_then(|l| l.get(HOSTNAME_LABEL).cloned())
                .or_else(|| node.metadata.name.clone())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Deals pods out to nodes in turn, so with nodes n1, n2 the pods x/a, x/b, x/c, y/a … go to
/// n1, n2, n1, n2 …: every namespace and every pod pair spans both placements.
#[derive(Debug, Clone, Default)]
pub struct Spread {
    nodes: Vec<String>,
    next: usize,
}

impl Spread {
    /// Spreading needs at least two nodes; with fewer the scheduler decides.
    pub fn new(nodes: Vec<String>) -> Self {
        Spread { nodes, next: 0 }
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The affinity for the next pod, or `None` when there is nothing to spread over.
    pub fn next_affinity(&mut self) -> Option<Affinity> {
        if self.nodes.len() < 2 {
            return None;
        }
        let node = self.nodes[self.next % self.nodes.len()].clone();
        self.next += 1;
        Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ready: bool, taints: Vec<Taint>, cordoned: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    (HOSTNAME_LABEL.to_string(), name.to_string()),
                    ("pool".to_string(), "probe".to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                unschedulable: Some(cordoned),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    #[test]
    fn toleration_syntax() {
        let t = parse_toleration("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(t.operator.as_deref(), Some("Exists"));
        assert_eq!(t.effect.as_deref(), Some("NoSchedule"));
        let t = parse_toleration("dedicated=probe").unwrap();
        assert_eq!(
            (t.operator.as_deref(), t.value.as_deref(), t.effect),
            (Some("Equal"), Some("probe"), None)
        );
        let all = parse_toleration("*").unwrap();
        assert_eq!((all.key, all.operator.as_deref()), (None, Some("Exists")));
        for bad in ["", ":NoSchedule", "a:Sometimes", "bad key", "k=not ok"] {
            assert!(parse_toleration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn schedulable_nodes_honour_taints_readiness_cordons_and_selector() {
        let control = taint("node-role.kubernetes.io/control-plane", None, "NoSchedule");
        let nodes = vec![
            node("cp", true, vec![control.clone()], false),
            node("w1", true, vec![], false),
            node(
                "w2",
                true,
                vec![taint("soft", None, "PreferNoSchedule")],
                false,
            ),
            node("down", false, vec![], false),
            node("cordoned", true, vec![], true),
            node(
                "gpu",
                true,
                vec![taint("gpu", Some("yes"), "NoExecute")],
                false,
            ),
        ];
        let none = BTreeMap::new();
        assert_eq!(schedulable(&nodes, &none, &[]), ["w1", "w2"]);
        let cp = parse_toleration("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(schedulable(&nodes, &none, &[cp]), ["cp", "w1", "w2"]);
        let gpu_wrong = parse_toleration("gpu=no").unwrap();
        assert_eq!(schedulable(&nodes, &none, &[gpu_wrong]), ["w1", "w2"]);
        let all = parse_toleration("*").unwrap();
        assert_eq!(
            schedulable(&nodes, &none, &[all]),
            ["cp", "gpu", "w1", "w2"]
        );
        let other_pool = BTreeMap::from([("pool".to_string(), "other".to_string())]);
        assert!(schedulable(&nodes, &other_pool, &[]).is_empty());
    }

    #[test]
    fn spreads_in_turn_and_only_over_two_or_more_nodes() {
        let mut one = Spread::new(vec!["n1".into()]);
        assert!(one.next_affinity().is_none());
        let mut two = Spread::new(vec!["n1".into(), "n2".into()]);
        let picks: Vec<String> = (0..4)
            .map(|_| {
                let affinity = two.next_affinity().unwrap();
                let terms = affinity
                    .node_affinity
                    .unwrap()
                    .required_during_scheduling_ignored_during_execution
                    .unwrap()
                    .node_selector_terms;
                terms[0].match_expressions.as_ref().unwrap()[0]
                    .values
                    .as_ref()
                    .unwrap()[0]
                    .clone()
            })
            .collect();
        assert_eq!(picks, ["n1", "n2", "n1", "n2"]);
    }
}
