//! Random NetworkPolicies over the default model, each with the words that describe it and the
//! feature tags it exercises. The choices are the spec's corners, as cyclonus enumerates them:
//! target selectors (empty, labels, every `matchExpressions` operator), peers (pods, namespaces,
//! both, ipBlock with and without `except`), ports (number, named, range, protocol only, none,
//! protocol left to its default), and policy types (ingress, egress, both, left to their
//! defaulting).

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// The feature of a case whose named port means different numbers on different pods: it runs on
/// the built-in `mixed-ports` model.
pub const MIXED_PORTS: &str = "mixed-ports";

/// The default model's namespaces and pod names (`model::default_model`).
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The labels steps add and selectors may ask for, beyond the model's `pod` and `ns`.
pub const POD_LABEL: (&str, &str) = ("app", "web");
pub const NAMESPACE_LABEL: (&str, &str) = ("team", "blue");

/// `all pods`, or `pods pod=a`.
fn phrase(noun: &str, words: &str) -> String {
    if words == "all" {
        format!("all {noun}")
    } else {
        format!("{noun} {words}")
    }
}

/// A policy as generated: the manifest, what it says in words, and the features it touches.
#[derive(Debug, Clone)]
pub struct Generated {
    pub namespace: String,
    pub name: String,
    pub manifest: Value,
    pub words: String,
    pub features: BTreeSet<&'static str>,
}

/// Draws policies from one random stream.
pub struct PolicyGen<'a> {
    rng: &'a mut fastrand::Rng,
    features: BTreeSet<&'static str>,
}

impl<'a> PolicyGen<'a> {
    pub fn new(rng: &'a mut fastrand::Rng) -> PolicyGen<'a> {
        PolicyGen {
            rng,
            features: BTreeSet::new(),
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    /// Two distinct values of `items`, in their order.
    fn two(&mut self, items: &[&'static str]) -> [&'static str; 2] {
        let first = self.rng.usize(..items.len());
        let second = (first + 1 + self.rng.usize(..items.len() - 1)) % items.len();
        let (a, b) = (first.min(second), first.max(second));
        [items[a], items[b]]
    }

    /// A label selector over `key` (whose values are `values`) or the extra `label` steps add:
    /// the selector and its words.
    fn selector(
        &mut self,
        key: &str,
        values: &[&'static str],
        label: (&str, &str),
    ) -> (Value, String) {
        match self.rng.u8(..8) {
            0 | 1 => (json!({}), "all".into()),
            2 | 3 => {
                let v = self.pick(values);
                (json!({"matchLabels": {key: v}}), format!("{key}={v}"))
            }
            4 => {
                self.features.insert("match-expressions");
                let [a, b] = self.two(values);
                (
                    json!({"matchExpressions": [{"key": key, "operator": "In", "values": [a, b]}]}),
                    format!("{key} in ({a},{b})"),
                )
            }
            5 => {
                self.features.insert("match-expressions");
                let v = self.pick(values);
                (
                    json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [v]}]}),
                    format!("{key} notin ({v})"),
                )
            }
            6 => {
                self.features.insert("match-expressions");
                let (name, _) = label;
                if self.rng.bool() {
                    (
                        json!({"matchExpressions": [{"key": name, "operator": "Exists"}]}),
                        format!("with {name}"),
                    )
                } else {
                    (
                        json!({"matchExpressions": [{"key": name, "operator": "DoesNotExist"}]}),
                        format!("without {name}"),
                    )
                }
            }
            _ => {
                self.features.insert("labels");
                let (name, value) = label;
                (
                    json!({"matchLabels": {name: value}}),
                    format!("{name}={value}"),
                )
            }
        }
    }

    /// A pod selector and its noun phrase (`all pods`, `pods pod=a`).
    fn pod_selector(&mut self) -> (Value, String) {
        let (selector, words) = self.selector("pod", &PODS, POD_LABEL);
        (selector, phrase("pods", &words))
    }

    /// A namespace selector and its noun phrase (`all namespaces`, `namespaces ns in (x,y)`).
    fn namespace_selector(&mut self) -> (Value, String) {
        let (selector, words) = self.selector("ns", &NAMESPACES, NAMESPACE_LABEL);
        (selector, phrase("namespaces", &words))
    }

    /// One peer of a rule in `namespace`: the peer and its words.
    fn peer(&mut self) -> (Value, String) {
        match self.rng.u8(..6) {
            0 | 1 => {
                let (pods, words) = self.pod_selector();
                (
                    json!({"podSelector": pods}),
                    format!("{words} of its namespace"),
                )
            }
            2 => {
                self.features.insert("namespace-selector");
                let (namespaces, words) = self.namespace_selector();
                (
                    json!({"namespaceSelector": namespaces}),
                    format!("every pod of {words}"),
                )
            }
            3 => {
                self.features.insert("namespace-selector");
                self.features.insert("and-or");
                let (pods, pod_words) = self.pod_selector();
                let (namespaces, ns_words) = self.namespace_selector();
                (
                    json!({"podSelector": pods, "namespaceSelector": namespaces}),
                    format!("{pod_words} of {ns_words}"),
                )
            }
            _ => {
                self.features.insert("ip-block");
                // The model's pods are 10.244.1.1-9 (x/a-c, y/a-c, z/a-c), in that order.
                let (block, words) = match self.rng.u8(..6) {
                    0 => (
                        json!({"cidr": "10.244.1.0/24"}),
                        "ipBlock 10.244.1.0/24 (every pod)",
                    ),
                    1 => (
                        json!({"cidr": "10.244.1.0/24", "except": ["10.244.1.4/30"]}),
                        "ipBlock 10.244.1.0/24 except 10.244.1.4/30 (not y/*, z/a)",
                    ),
                    2 => (
                        json!({"cidr": "10.244.1.0/29", "except": ["10.244.1.2/31"]}),
                        "ipBlock 10.244.1.0/29 except 10.244.1.2/31 (x/a, y/*, z/a)",
                    ),
                    3 => (
                        json!({"cidr": "10.244.1.8/29"}),
                        "ipBlock 10.244.1.8/29 (z/b, z/c)",
                    ),
                    4 => (
                        json!({"cidr": "10.244.1.5/32"}),
                        "ipBlock 10.244.1.5/32 (y/b)",
                    ),
                    _ => (
                        json!({"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}),
                        "ipBlock 0.0.0.0/0 except the pod range (no pod)",
                    ),
                };
                (json!({"ipBlock": block}), words.to_string())
            }
        }
    }

    /// One port entry and its words.
    fn port(&mut self) -> (Value, String) {
        let protocol = |rng: &mut fastrand::Rng| if rng.bool() { "TCP" } else { "UDP" };
        match self.rng.u8(..8) {
            0 => {
                self.features.insert("protocol-default");
                let port = self.pick(&[80, 81]);
                (json!({"port": port}), format!("{port} (TCP by default)"))
            }
            1 | 2 => {
                let port = self.pick(&[80, 81]);
                let protocol = protocol(self.rng);
                self.note_protocol(protocol);
                (
                    json!({"port": port, "protocol": protocol}),
                    format!("{port}/{protocol}"),
                )
            }
            3 => {
                self.features.insert("named-ports");
                let port = self.pick(&[80, 81]);
                let protocol = protocol(self.rng);
                self.note_protocol(protocol);
                let name = format!("serve-{port}-{}", protocol.to_ascii_lowercase());
                (
                    json!({"port": name, "protocol": protocol}),
                    format!("named port {name}"),
                )
            }
            4 => {
                // A name that means 80 on some pods and 81 on others: the case runs on the
                // `mixed-ports` model (the `mixed-ports` feature says so).
                self.features.insert("named-ports");
                self.features.insert("protocol-default");
                self.features.insert(MIXED_PORTS);
                let name = crate::model::MIXED_PORT_NAME;
                (
                    json!({"port": name}),
                    format!(
                        "named port {name} (TCP by default; 80 on the pods a, 81 on the pods b)"
                    ),
                )
            }
            5 => {
                self.features.insert("end-port");
                let protocol = protocol(self.rng);
                self.note_protocol(protocol);
                (
                    json!({"port": 80, "endPort": 81, "protocol": protocol}),
                    format!("80-81/{protocol}"),
                )
            }
            6 => {
                let protocol = protocol(self.rng);
                self.note_protocol(protocol);
                (
                    json!({"protocol": protocol}),
                    format!("every {protocol} port"),
                )
            }
            _ => {
                self.features.insert("sctp");
                (
                    json!({"port": 80, "protocol": "SCTP"}),
                    "80/SCTP".to_string(),
                )
            }
        }
    }

    fn note_protocol(&mut self, protocol: &str) {
        if protocol == "UDP" {
            self.features.insert("udp");
        }
    }

    /// A rule: peers (none: everyone; 1-2) and ports (none: every port; 1-2), and its words.
    fn rule(&mut self, peers_key: &str) -> (Value, String) {
        let mut rule = serde_json::Map::new();
        let peers: Vec<(Value, String)> = match self.rng.u8(..5) {
            0 => Vec::new(),
            1..=3 => vec![self.peer()],
            _ => vec![self.peer(), self.peer()],
        };
        let ports: Vec<(Value, String)> = match self.rng.u8(..5) {
            0 | 1 => Vec::new(),
            2 | 3 => vec![self.port()],
            _ => vec![self.port(), self.port()],
        };
        let who = if peers.is_empty() {
            "anyone".to_string()
        } else {
            rule.insert(
                peers_key.into(),
                Value::Array(peers.iter().map(|(p, _)| p.clone()).collect()),
            );
            peers
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let on = if ports.is_empty() {
            "every port".to_string()
        } else {
            rule.insert(
                "ports".into(),
                Value::Array(ports.iter().map(|(p, _)| p.clone()).collect()),
            );
            ports
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        (Value::Object(rule), format!("{who} on {on}"))
    }

    /// 0-2 rules of one direction, and their words (`none` for no rule: that direction denied).
    fn rules(&mut self, peers_key: &str) -> (Vec<Value>, String) {
        let count = match self.rng.u8(..6) {
            0 => 0,
            1..=3 => 1,
            _ => 2,
        };
        let rules: Vec<(Value, String)> = (0..count).map(|_| self.rule(peers_key)).collect();
        let words = if rules.is_empty() {
            "none".to_string()
        } else {
            rules
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("; or ")
        };
        (rules.into_iter().map(|(r, _)| r).collect(), words)
    }

    /// A whole policy named `name` in `namespace`.
    pub fn policy(&mut self, namespace: &str, name: &str) -> Generated {
        self.features.clear();
        let (selected, selected_words) = self.pod_selector();
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), selected);
        let mut parts = Vec::new();
        // Which directions it has, and whether `policyTypes` says so or is left to the default
        // (Ingress, plus Egress when there are egress rules).
        let (ingress, egress, written) = match self.rng.u8(..8) {
            0..=2 => (true, false, true),
            3 | 4 => (false, true, true),
            5 | 6 => (true, true, true),
            _ => (true, self.rng.bool(), false),
        };
        if ingress {
            self.features.insert("ingress");
            let (rules, words) = self.rules("from");
            if !rules.is_empty() || !written {
                spec.insert("ingress".into(), Value::Array(rules));
            }
            parts.push(format!("ingress from {words}"));
        }
        if egress {
            self.features.insert("egress");
            let (mut rules, words) = self.rules("to");
            if rules.is_empty() && !written {
                // Defaulting adds Egress only for egress rules: give it one.
                let (rule, words) = self.rule("to");
                rules.push(rule);
                parts.push(format!("egress to {words}"));
            } else {
                parts.push(format!("egress to {words}"));
            }
            if !rules.is_empty() || !written {
                spec.insert("egress".into(), Value::Array(rules));
            }
        }
        let types = if written {
            let mut types = Vec::new();
            if ingress {
                types.push("Ingress");
            }
            if egress {
                types.push("Egress");
            }
            spec.insert("policyTypes".into(), json!(types));
            types.join("+")
        } else {
            self.features.insert("policy-types-default");
            "types by default".to_string()
        };
        let manifest = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        Generated {
            namespace: namespace.to_string(),
            name: name.to_string(),
            manifest,
            words: format!(
                "{namespace}/{name} ({types}) selects {selected_words}: {}",
                parts.join("; ")
            ),
            features: self.features.clone(),
        }
    }
}
