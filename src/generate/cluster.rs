//! Random ClusterNetworkPolicies (v1beta1 and v1alpha2 by turns) over the default model: the Admin and Baseline tiers,
//! priorities that order them (and now and then tie), subjects by namespace or by pod, rules whose
//! order matters, each action (Accept, Deny, Pass), peers by namespace, by pod and by network,
//! and the protocol forms (a port, a range, a named port, none).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::policy::{NAMESPACES, PODS};

/// A cluster policy as generated: its manifest, its words and its features.
#[derive(Debug, Clone)]
pub struct GeneratedCluster {
    pub name: String,
    pub priority: u32,
    pub manifest: Value,
    pub words: String,
    pub features: BTreeSet<&'static str>,
}

pub struct ClusterGen<'a> {
    rng: &'a mut fastrand::Rng,
    features: BTreeSet<&'static str>,
}

impl<'a> ClusterGen<'a> {
    pub fn new(rng: &'a mut fastrand::Rng) -> ClusterGen<'a> {
        ClusterGen {
            rng,
            features: BTreeSet::new(),
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    /// A namespace selector (all, or one `ns`), with its words.
    fn namespaces(&mut self) -> (Value, String) {
        if self.rng.u8(..3) == 0 {
            (json!({}), "all namespaces".into())
        } else {
            let ns = self.pick(&NAMESPACES);
            (
                json!({"matchLabels": {"ns": ns}}),
                format!("namespace {ns}"),
            )
        }
    }

    /// A pod selector (all, or one `pod`), with its words.
    fn pods(&mut self) -> (Value, String) {
        if self.rng.u8(..3) == 0 {
            (json!({}), "all pods".into())
        } else {
            let pod = self.pick(&PODS);
            (json!({"matchLabels": {"pod": pod}}), format!("pods {pod}"))
        }
    }

    fn subject(&mut self) -> (Value, String) {
        let (namespaces, ns_words) = self.namespaces();
        if self.rng.bool() {
            (json!({"namespaces": namespaces}), ns_words)
        } else {
            let (pods, pod_words) = self.pods();
            (
                json!({"pods": {"namespaceSelector": namespaces, "podSelector": pods}}),
                format!("{pod_words} of {ns_words}"),
            )
        }
    }

    fn peer(&mut self, egress: bool) -> (Value, String) {
        match self.rng.u8(..if egress { 5 } else { 4 }) {
            0 | 1 => {
                let (namespaces, words) = self.namespaces();
                (json!({"namespaces": namespaces}), words)
            }
            2 | 3 => {
                let (namespaces, ns_words) = self.namespaces();
                let (pods, pod_words) = self.pods();
                (
                    json!({"pods": {"namespaceSelector": namespaces, "podSelector": pods}}),
                    format!("{pod_words} of {ns_words}"),
                )
            }
            _ => {
                self.features.insert("cnp-networks");
                let (cidr, words) = self.pick(&[
                    ("10.244.1.0/29", "networks 10.244.1.0/29 (x/*, y/*, z/a)"),
                    ("10.244.1.4/30", "networks 10.244.1.4/30 (y/*, z/a)"),
                    ("0.0.0.0/0", "networks 0.0.0.0/0 (every pod too)"),
                ]);
                (json!({"networks": [cidr]}), words.to_string())
            }
        }
    }

    /// Protocols for a rule; a named port only where `named` (a networks peer has none).
    fn protocols(&mut self, named: bool) -> Option<(Value, String)> {
        let protocol = |rng: &mut fastrand::Rng| if rng.bool() { "tcp" } else { "udp" };
        match self.rng.u8(..if named { 6 } else { 5 }) {
            0 | 1 => None,
            2 | 3 => {
                let p = protocol(self.rng);
                let port = self.pick(&[80, 81]);
                Some((
                    json!([{p: {"destinationPort": {"number": port}}}]),
                    format!("{port}/{}", p.to_ascii_uppercase()),
                ))
            }
            4 => {
                let p = protocol(self.rng);
                Some((
                    json!([{p: {"destinationPort": {"range": {"start": 80, "end": 81}}}}]),
                    format!("80-81/{}", p.to_ascii_uppercase()),
                ))
            }
            _ => {
                let p = protocol(self.rng);
                let name = format!("serve-{}-{p}", self.pick(&[80, 81]));
                Some((
                    json!([{"destinationNamedPort": name}]),
                    format!("named port {name}"),
                ))
            }
        }
    }

    fn rule(&mut self, index: usize, egress: bool) -> (Value, String) {
        let action = self.pick(&["Accept", "Deny", "Deny", "Pass"]);
        self.features.insert(match action {
            "Accept" => "cnp-accept",
            "Deny" => "cnp-deny",
            _ => "cnp-pass",
        });
        let (peer, peer_words) = self.peer(egress);
        let networks = peer.get("networks").is_some();
        let mut rule = serde_json::Map::new();
        rule.insert("name".into(), json!(format!("r{index}")));
        rule.insert("action".into(), json!(action));
        rule.insert(
            if egress { "to" } else { "from" }.into(),
            Value::Array(vec![peer]),
        );
        let on = match self.protocols(!networks) {
            Some((protocols, words)) => {
                rule.insert("protocols".into(), protocols);
                words
            }
            None => "every port".into(),
        };
        let way = if egress { "to" } else { "from" };
        (
            Value::Object(rule),
            format!("{action} {way} {peer_words} on {on}"),
        )
    }

    /// A cluster policy named `name` at `priority`.
    pub fn policy(&mut self, name: &str, priority: u32) -> GeneratedCluster {
        self.features.clear();
        self.features.insert("cluster-network-policy");
        let tier = if self.rng.u8(..10) < 7 {
            "Admin"
        } else {
            "Baseline"
        };
        self.features.insert(if tier == "Admin" {
            "cnp-admin"
        } else {
            "cnp-baseline"
        });
        let (subject, subject_words) = self.subject();
        let mut spec = serde_json::Map::new();
        spec.insert("tier".into(), json!(tier));
        spec.insert("priority".into(), json!(priority));
        spec.insert("subject".into(), subject);
        let mut parts = Vec::new();
        let egress = self.rng.u8(..3) == 0;
        let count = if self.rng.bool() { 1 } else { 2 };
        if count > 1 {
            self.features.insert("cnp-rule-order");
        }
        let rules: Vec<(Value, String)> = (1..=count).map(|i| self.rule(i, egress)).collect();
        parts.extend(rules.iter().map(|(_, w)| w.clone()));
        spec.insert(
            if egress { "egress" } else { "ingress" }.into(),
            Value::Array(rules.into_iter().map(|(r, _)| r).collect()),
        );
        GeneratedCluster {
            name: name.to_string(),
            priority,
            manifest: json!({
                // Both versions polygraph reads, one schema: written in v1beta1 and v1alpha2 by
                // turns (by the name, so the random stream, and every seed's cases, stay as
                // they were).
                "apiVersion": if name.bytes().map(u32::from).sum::<u32>() % 2 == 0 {
                    crate::policy::cluster::api::V1BETA1
                } else {
                    crate::policy::cluster::api::V1ALPHA2
                },
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": name},
                "spec": spec,
            }),
            words: format!(
                "{name} ({tier} {priority}) on {subject_words}: {}",
                parts.join(", then ")
            ),
            features: self.features.clone(),
        }
    }
}

/// `of` again as `name` at `priority`, every rule's action turned around (Accept and Pass become
/// Deny, Deny becomes Accept): two policies of one tier that disagree on the same traffic, so
/// only their priorities decide it.
pub fn turned_around(of: &GeneratedCluster, name: &str, priority: u32) -> GeneratedCluster {
    let mut manifest = of.manifest.clone();
    manifest["metadata"]["name"] = json!(name);
    manifest["spec"]["priority"] = json!(priority);
    for direction in ["ingress", "egress"] {
        if let Some(rules) = manifest["spec"][direction].as_array_mut() {
            for rule in rules {
                let turned = match rule["action"].as_str() {
                    Some("Deny") => "Accept",
                    _ => "Deny",
                };
                rule["action"] = json!(turned);
            }
        }
    }
    let mut features = of.features.clone();
    features.extend(["cnp-priority", "cnp-accept", "cnp-deny"]);
    GeneratedCluster {
        name: name.to_string(),
        priority,
        manifest,
        words: format!(
            "{name} (priority {priority}): {}'s rules with every action turned around",
            of.name
        ),
        features,
    }
}
