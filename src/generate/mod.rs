//! The generated suite: scenarios drawn from the spec's combinations over the default model, as
//! cyclonus draws its cases, with expectations left to the oracle (a generated case pins nothing:
//! it tests the dataplane against the spec). Each case is a pure function of the seed and its
//! index, so `polygraph run --generated --seed S --case I` reruns exactly one case, and `polygraph
//! generate` writes the very files `run --generated` runs (the same YAML, parsed the same way).
//!
//! A case is small on purpose, which is what makes a failure readable: one to three policies
//! applied together, then up to two changes (a pod or namespace label set or removed, a policy
//! deleted, replaced or added), each described in words in the scenario's description and steps.

mod cluster;
mod policy;

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::scenario::{Scenario, ScenarioError, parse};
use cluster::ClusterGen;
use policy::{NAMESPACE_LABEL, NAMESPACES, POD_LABEL, PODS, PolicyGen};

/// The seed when none is given.
pub const DEFAULT_SEED: u64 = 1;

/// One generated case: where it comes from, and its scenario file.
#[derive(Debug, Clone)]
pub struct Case {
    pub seed: u64,
    pub index: usize,
    pub name: String,
    pub yaml: String,
}

impl Case {
    /// The scenario, parsed from the case's YAML exactly as its file would be.
    pub fn scenario(&self) -> Result<Scenario, ScenarioError> {
        parse(&source(self.seed, self.index), &self.yaml, None)
    }

    /// The file name `generate` gives it.
    pub fn file_name(&self) -> String {
        format!("{}.yaml", self.name)
    }
}

/// The `source` of a generated scenario: how reports name where it came from.
pub fn source(seed: u64, index: usize) -> String {
    format!("generated:seed={seed}:case={index}")
}

/// The seed and index of a scenario's source, when it is a generated one.
pub fn origin(source: &str) -> Option<(u64, usize)> {
    let rest = source.strip_prefix("generated:seed=")?;
    let (seed, index) = rest.split_once(":case=")?;
    Some((seed.parse().ok()?, index.parse().ok()?))
}

/// The command that reruns exactly one generated case.
pub fn rerun_command(seed: u64, index: usize) -> String {
    format!("polygraph run --generated --seed {seed} --case {index}")
}

/// Cases `0..count` of `seed`.
pub fn cases(seed: u64, count: usize) -> Vec<Case> {
    (0..count).map(|index| case(seed, index)).collect()
}

/// Case `index` of `seed`: its own random stream, so no case depends on how many came before.
pub fn case(seed: u64, index: usize) -> Case {
    // SplitMix64's mixing of (seed, index): neighbouring indices get unrelated streams.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut rng = fastrand::Rng::with_seed(z ^ (z >> 31));
    Draw::new(&mut rng).case(seed, index)
}

/// The scenario file of a case, as written.
#[derive(Debug, Serialize)]
struct Doc {
    name: String,
    description: String,
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'static str>,
    probe: ProbeDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Vec<&'static str>>,
    steps: Vec<StepDoc>,
}

#[derive(Debug, Serialize)]
struct ProbeDoc {
    protocols: Vec<&'static str>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
struct StepDoc {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    apply: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    update: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_policy: Option<PolicyRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_cluster_policy: Option<ClusterPolicyRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_pod_labels: Option<Labels>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remove_pod_labels: Option<Keys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_namespace_labels: Option<NamespaceLabels>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remove_namespace_labels: Option<NamespaceKeys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_pod: Option<crate::model::PodDescription>,
}

#[derive(Debug, Serialize)]
struct PolicyRef {
    namespace: String,
    name: String,
}

#[derive(Debug, Serialize)]
struct ClusterPolicyRef {
    name: String,
}

#[derive(Debug, Serialize)]
struct Labels {
    pod: String,
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Keys {
    pod: String,
    keys: Vec<String>,
}

#[derive(Debug, Serialize)]
struct NamespaceLabels {
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct NamespaceKeys {
    namespace: String,
    keys: Vec<String>,
}

/// One case being drawn: the random stream, and the cluster's state as the steps change it.
struct Draw<'a> {
    rng: &'a mut fastrand::Rng,
    /// Policies in place, by (namespace, name).
    policies: Vec<(String, String)>,
    /// Cluster policies in place, by name.
    cluster_policies: Vec<String>,
    labelled_pods: BTreeSet<String>,
    labelled_namespaces: BTreeSet<String>,
    features: BTreeSet<&'static str>,
    next_policy: usize,
}

impl<'a> Draw<'a> {
    fn new(rng: &'a mut fastrand::Rng) -> Draw<'a> {
        Draw {
            rng,
            policies: Vec::new(),
            cluster_policies: Vec::new(),
            labelled_pods: BTreeSet::new(),
            labelled_namespaces: BTreeSet::new(),
            features: BTreeSet::new(),
            next_policy: 1,
        }
    }

    /// Namespace `x` half the time: policies meet each other there.
    fn namespace(&mut self) -> &'static str {
        match self.rng.u8(..4) {
            0 | 1 => "x",
            2 => "y",
            _ => "z",
        }
    }

    fn new_policy(&mut self) -> policy::Generated {
        let namespace = self.namespace();
        let name = format!("gen-{}", self.next_policy);
        self.next_policy += 1;
        let generated = PolicyGen::new(self.rng).policy(namespace, &name);
        self.features.extend(generated.features.iter().copied());
        self.policies
            .push((generated.namespace.clone(), generated.name.clone()));
        generated
    }

    fn case(mut self, seed: u64, index: usize) -> Case {
        let mut steps = Vec::new();
        let mut words = Vec::new();
        // First: one to three policies together.
        let count = match self.rng.u8(..10) {
            0..=4 => 1,
            5..=7 => 2,
            _ => 3,
        };
        // A third of the cases have cluster policies too (then perhaps no NetworkPolicy at all).
        let cluster_count = match self.rng.u8(..20) {
            0..=11 => 0,
            12..=16 => 1,
            _ => 2,
        };
        let count = if cluster_count > 0 && self.rng.u8(..3) == 0 {
            0
        } else {
            count
        };
        let mut clustered: Vec<cluster::GeneratedCluster> = Vec::new();
        for i in 0..cluster_count {
            let name = format!("gen-cnp-{}", i + 1);
            let priority = self.rng.u32(1..=3) * 10;
            // Half the pairs disagree on the same traffic at different priorities: only the
            // order of priorities decides, which is what a tier's implementation must get right.
            let generated = match clustered.first() {
                Some(first) if self.rng.bool() => {
                    let other = if priority == first.priority {
                        priority + 5
                    } else {
                        priority
                    };
                    cluster::turned_around(first, &name, other)
                }
                _ => ClusterGen::new(self.rng).policy(&name, priority),
            };
            self.features.extend(generated.features.iter().copied());
            self.cluster_policies.push(generated.name.clone());
            clustered.push(generated);
        }
        if cluster_count > 1 {
            self.features.insert("cnp-priority");
        }
        let first: Vec<policy::Generated> = (0..count).map(|_| self.new_policy()).collect();
        if count > 1 {
            self.features.insert("union");
        }
        let names: Vec<String> = clustered
            .iter()
            .map(|p| p.name.clone())
            .chain(first.iter().map(|p| format!("{}/{}", p.namespace, p.name)))
            .collect();
        steps.push(StepDoc {
            name: format!("apply {}", names.join(", ")),
            apply: Some(
                clustered
                    .iter()
                    .map(|p| p.manifest.clone())
                    .chain(first.iter().map(|p| p.manifest.clone()))
                    .collect(),
            ),
            ..StepDoc::default()
        });
        words.extend(clustered.iter().map(|p| p.words.clone()));
        words.extend(first.iter().map(|p| p.words.clone()));
        // Then up to two changes.
        let changes = match self.rng.u8(..20) {
            0..=5 => 0,
            6..=14 => 1,
            _ => 2,
        };
        for n in 0..changes {
            let (changed, said) = self.change(n + 1 == changes);
            steps.extend(changed);
            words.push(format!("then {said}"));
        }
        if steps.len() > 1 {
            self.features.insert("multi-step");
        }
        let mut protocols = vec!["TCP", "UDP"];
        if self.features.contains("sctp") {
            protocols.push("SCTP");
        }
        // Now and then through other paths too: Services (the policies must hold after the
        // proxy's DNAT), their names (through the cluster's DNS, which egress policies may cut
        // off), NodePorts (from outside the cluster) and the node itself (pods' egress to it,
        // its own way in).
        let target = match self.rng.u8(..20) {
            0 | 1 => {
                self.features.insert("service");
                Some(vec!["pod-ip", "service"])
            }
            2 => {
                self.features.insert("dns");
                Some(vec!["pod-ip", "service-name"])
            }
            3 => {
                self.features.insert("node-port");
                Some(vec!["pod-ip", "node-port"])
            }
            4 => {
                self.features.insert("node");
                // With a host-network pod first, labelled like one of the pods: the node's
                // address is never that pod to a selector.
                self.features.insert("host-network");
                let (host, label) = self.host_network_pod();
                let (to_host, said) = self.egress_by_label(label);
                steps.splice(0..0, [host, to_host]);
                words.insert(
                    0,
                    format!("with a host-network pod y/host (pod={label}); {said}"),
                );
                Some(vec!["pod-ip", "node"])
            }
            _ => None,
        };
        let name = format!("gen-{seed}-{index:04}");
        let mut tags = vec!["generated".to_string()];
        tags.extend(self.features.iter().map(|f| f.to_string()));
        let doc = Doc {
            name: name.clone(),
            description: words.join("; "),
            tags,
            model: self
                .features
                .contains(policy::MIXED_PORTS)
                .then_some("mixed-ports"),
            probe: ProbeDoc { protocols },
            target,
            steps,
        };
        // Plain strings, numbers and maps: serialization cannot fail.
        let yaml = serde_saphyr::to_string(&doc).unwrap_or_default();
        let header = format!(
            "# Generated by polygraph (seed {seed}, case {index}); rerun: {}\n",
            rerun_command(seed, index)
        );
        Case {
            seed,
            index,
            name,
            yaml: header + &yaml,
        }
    }

    /// One change after the first step (two steps for a pod replaced), and its words. `last`:
    /// nothing comes after it, so it may replace a pod the later changes could have named.
    fn change(&mut self, last: bool) -> (Vec<StepDoc>, String) {
        let (step, said) = match self.rng.u8(..6) {
            0 | 1 => {
                self.features.insert("labels");
                let (namespace, name) = (self.rng.usize(..3), self.rng.usize(..3));
                let pod = format!("{}/{}", NAMESPACES[namespace], PODS[name]);
                if last && !self.labelled_pods.contains(&pod) && self.rng.u8(..3) == 0 {
                    return self.replace_pod(namespace, name);
                }
                let (key, value) = POD_LABEL;
                if self.labelled_pods.remove(&pod) {
                    let said = format!("remove {key} from {pod}");
                    let step = StepDoc {
                        name: said.clone(),
                        remove_pod_labels: Some(Keys {
                            pod,
                            keys: vec![key.into()],
                        }),
                        ..StepDoc::default()
                    };
                    (step, said)
                } else {
                    self.labelled_pods.insert(pod.clone());
                    let said = format!("label {pod} {key}={value}");
                    let step = StepDoc {
                        name: said.clone(),
                        set_pod_labels: Some(Labels {
                            pod,
                            labels: [(key.to_string(), value.to_string())].into(),
                        }),
                        ..StepDoc::default()
                    };
                    (step, said)
                }
            }
            2 => {
                self.features.insert("labels");
                self.features.insert("namespace-selector");
                let namespace = NAMESPACES[self.rng.usize(..3)].to_string();
                let (key, value) = NAMESPACE_LABEL;
                if self.labelled_namespaces.remove(&namespace) {
                    let said = format!("remove {key} from namespace {namespace}");
                    let step = StepDoc {
                        name: said.clone(),
                        remove_namespace_labels: Some(NamespaceKeys {
                            namespace,
                            keys: vec![key.into()],
                        }),
                        ..StepDoc::default()
                    };
                    (step, said)
                } else {
                    self.labelled_namespaces.insert(namespace.clone());
                    let said = format!("label namespace {namespace} {key}={value}");
                    let step = StepDoc {
                        name: said.clone(),
                        set_namespace_labels: Some(NamespaceLabels {
                            namespace,
                            labels: [(key.to_string(), value.to_string())].into(),
                        }),
                        ..StepDoc::default()
                    };
                    (step, said)
                }
            }
            3 if !self.cluster_policies.is_empty() && self.rng.bool() => {
                self.features.insert("delete");
                let name = self
                    .cluster_policies
                    .remove(self.rng.usize(..self.cluster_policies.len()));
                let said = format!("delete {name}");
                let step = StepDoc {
                    name: said.clone(),
                    delete_cluster_policy: Some(ClusterPolicyRef { name }),
                    ..StepDoc::default()
                };
                (step, said)
            }
            3 if !self.policies.is_empty() => {
                self.features.insert("delete");
                let (namespace, name) = self.policies.remove(self.rng.usize(..self.policies.len()));
                let said = format!("delete {namespace}/{name}");
                let step = StepDoc {
                    name: said.clone(),
                    delete_policy: Some(PolicyRef { namespace, name }),
                    ..StepDoc::default()
                };
                (step, said)
            }
            4 if !self.policies.is_empty() => {
                self.features.insert("update");
                let (namespace, name) =
                    self.policies[self.rng.usize(..self.policies.len())].clone();
                let generated = PolicyGen::new(self.rng).policy(&namespace, &name);
                self.features.extend(generated.features.iter().copied());
                let said = format!("replace it: {}", generated.words);
                let step = StepDoc {
                    name: format!("replace {namespace}/{name}"),
                    update: Some(vec![generated.manifest]),
                    ..StepDoc::default()
                };
                (step, said)
            }
            _ => {
                self.features.insert("union");
                let generated = self.new_policy();
                let said = format!("add {}", generated.words);
                let step = StepDoc {
                    name: format!("add {}/{}", generated.namespace, generated.name),
                    apply: Some(vec![generated.manifest]),
                    ..StepDoc::default()
                };
                (step, said)
            }
        };
        (vec![step], said)
    }

    /// Pod churn: the pod `NAMESPACES[namespace]/PODS[name]` deleted, then either created
    /// again as it was (as a StatefulSet's pod is, on whatever address the cluster gives it), or
    /// replaced by a pod with other labels on its address (the model's pods are 10.244.1.1-9 in
    /// order), which a dataplane keyed by address must not take for the old one.
    /// A step creating `y/host`, a host-network pod serving 8080 (TCP and UDP) at the node's
    /// address, labelled `pod=` one of the pods' names, so selectors of pods pick it.
    fn host_network_pod(&mut self) -> (StepDoc, &'static str) {
        let label = PODS[self.rng.usize(..PODS.len())];
        let step = StepDoc {
            name: format!("create the host-network pod y/host (pod={label})"),
            create_pod: Some(crate::model::PodDescription {
                namespace: "y".into(),
                name: "host".into(),
                labels: [("pod".to_string(), label.to_string())].into(),
                ip: None,
                ports: [crate::model::Protocol::Tcp, crate::model::Protocol::Udp]
                    .iter()
                    .map(|p| crate::model::PortDescription {
                        name: None,
                        port: 8080,
                        protocol: Some(p.as_str().into()),
                    })
                    .collect(),
                host_network: true,
            }),
            ..StepDoc::default()
        };
        (step, label)
    }

    /// A step applying `<namespace>/to-pod-<label>`: the pods of x or z may send only to the pods
    /// of y labelled `pod=<label>`, on every port. A host-network pod so labelled is the node to
    /// a dataplane: the node's own ports stay closed to them.
    fn egress_by_label(&mut self, label: &str) -> (StepDoc, String) {
        let namespace = ["x", "z"][self.rng.usize(..2)];
        let name = format!("to-pod-{label}");
        let said = format!(
            "{namespace}/{name} (Egress) selects all pods: egress to pods pod={label} of namespace y"
        );
        let manifest = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{
                    "namespaceSelector": {"matchLabels": {"ns": "y"}},
                    "podSelector": {"matchLabels": {"pod": label}},
                }]}],
            },
        });
        let step = StepDoc {
            name: format!("apply {namespace}/{name}"),
            apply: Some(vec![manifest]),
            ..StepDoc::default()
        };
        (step, said)
    }

    fn replace_pod(&mut self, namespace: usize, name: usize) -> (Vec<StepDoc>, String) {
        self.features.insert("pod-churn");
        let ns = NAMESPACES[namespace];
        let old = format!("{ns}/{}", PODS[name]);
        if self.rng.bool() {
            let said = format!("delete {old} and create it again");
            let delete = StepDoc {
                name: format!("delete pod {old}"),
                delete_pod: Some(old.clone()),
                ..StepDoc::default()
            };
            let create = StepDoc {
                name: format!("create {old} again"),
                create_pod: Some(crate::model::PodDescription {
                    namespace: ns.to_string(),
                    name: PODS[name].to_string(),
                    labels: [("pod".to_string(), PODS[name].to_string())].into(),
                    ip: None,
                    ports: Vec::new(),
                    host_network: false,
                }),
                ..StepDoc::default()
            };
            return (vec![delete, create], said);
        }
        let new = format!("{}-new", PODS[name]);
        let ip = format!("10.244.1.{}", namespace * 3 + name + 1);
        let said = format!("replace {old} by {ns}/{new} (pod=new) on its address {ip}");
        let delete = StepDoc {
            name: format!("delete pod {old}"),
            delete_pod: Some(old),
            ..StepDoc::default()
        };
        let create = StepDoc {
            name: format!("create {ns}/{new} on {ip}"),
            create_pod: Some(crate::model::PodDescription {
                namespace: ns.to_string(),
                name: new,
                labels: [("pod".to_string(), "new".to_string())].into(),
                ip: Some(ip),
                ports: Vec::new(),
                host_network: false,
            }),
            ..StepDoc::default()
        };
        (vec![delete, create], said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_a_function_of_its_seed_and_index_alone() {
        let ten = cases(7, 10);
        assert_eq!(case(7, 3).yaml, ten[3].yaml);
        assert_ne!(case(7, 3).yaml, case(8, 3).yaml);
        assert_ne!(ten[3].yaml, ten[4].yaml);
        assert_eq!(origin(&source(7, 3)), Some((7, 3)));
        assert_eq!(origin("built-in:x"), None);
    }

    #[test]
    fn every_case_parses_and_the_families_are_all_drawn() {
        let mut tags = BTreeSet::new();
        for case in cases(DEFAULT_SEED, 500) {
            let scenario = case
                .scenario()
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", case.name, case.yaml));
            assert_eq!(scenario.name, case.name);
            assert!(!scenario.description.is_empty());
            tags.extend(scenario.tags.clone());
        }
        for family in [
            "ingress",
            "egress",
            "policy-types-default",
            "match-expressions",
            "namespace-selector",
            "and-or",
            "ip-block",
            "named-ports",
            "end-port",
            "protocol-default",
            "udp",
            "sctp",
            "union",
            "multi-step",
            "labels",
            "delete",
            "update",
            "service",
            "dns",
            "node-port",
            "cluster-network-policy",
            "cnp-admin",
            "cnp-baseline",
            "cnp-pass",
            "cnp-deny",
            "cnp-networks",
            "cnp-priority",
            "cnp-rule-order",
        ] {
            assert!(tags.contains(family), "no case of {family}: {tags:?}");
        }
    }
}
