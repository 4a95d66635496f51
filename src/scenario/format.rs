//! The scenario file, as written. Deserialized straight from YAML (not through a generic value) so
//! that every error, including an unknown field or action, carries its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::model::{ClusterDescription, Labels, NamespaceDescription, PodDescription, ProbeTarget};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioDoc {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A built-in cluster model by name (`default`, `production`); ignored when `cluster` is given.
    #[serde(default)]
    pub model: Option<String>,
    /// An inline cluster description (the cluster description format, see README).
    #[serde(default)]
    pub cluster: Option<ClusterDescription>,
    #[serde(default)]
    pub probe: ProbeDoc,
    /// How probes reach their destinations: one target or a list (`pod-ip`, `service`).
    #[serde(default)]
    pub target: Option<OneOrMany<ProbeTarget>>,
    /// The IP families the scenario is about (`ipv4`, `ipv6`, `dual`): probed in each of them
    /// wherever the cluster gives pods those addresses, unsupported where it cannot. Left out:
    /// the run's families (`--ip-family`; IPv4 on polygraph's own clusters).
    #[serde(default, rename = "ip-family")]
    pub ip_family: Option<crate::model::IpFamilies>,
    pub steps: Vec<Spanned<StepDoc>>,
}

/// A value written alone or as a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDoc {
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// One step: exactly one action, an optional name and optional pinned expectations.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepDoc {
    #[serde(default)]
    pub name: Option<String>,
    /// Apply NetworkPolicy manifests (creating or replacing by namespace/name).
    #[serde(default)]
    pub apply: Option<Vec<Spanned<serde_json::Value>>>,
    /// Replace policies that must already exist.
    #[serde(default)]
    pub update: Option<Vec<Spanned<serde_json::Value>>>,
    /// Apply manifests from files, relative to the scenario file.
    #[serde(default)]
    pub apply_files: Option<Vec<String>>,
    #[serde(default)]
    pub delete_policy: Option<PolicyRefDoc>,
    /// Delete a cluster-scoped policy by name (and kind, when names are shared across kinds).
    #[serde(default)]
    pub delete_cluster_policy: Option<ClusterPolicyRefDoc>,
    #[serde(default)]
    pub set_namespace_labels: Option<NamespaceLabelsDoc>,
    #[serde(default)]
    pub remove_namespace_labels: Option<NamespaceKeysDoc>,
    #[serde(default)]
    pub set_pod_labels: Option<PodLabelsDoc>,
    #[serde(default)]
    pub remove_pod_labels: Option<PodKeysDoc>,
    #[serde(default)]
    pub create_pod: Option<PodDescription>,
    #[serde(default)]
    pub delete_pod: Option<String>,
    #[serde(default)]
    pub create_namespace: Option<NamespaceDescription>,
    #[serde(default)]
    pub delete_namespace: Option<String>,
    /// Just probe: no change.
    #[serde(default)]
    pub probe: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub expect: Option<Vec<Spanned<ExpectDoc>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRefDoc {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicyRefDoc {
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceLabelsDoc {
    pub namespace: String,
    pub labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceKeysDoc {
    pub namespace: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodLabelsDoc {
    pub pod: String,
    pub labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodKeysDoc {
    pub pod: String,
    pub keys: Vec<String>,
}

/// Cells expected blocked on some (or all) probed (port, protocol)s; every other cell is expected
/// allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectDoc {
    /// `80/TCP` entries; default: every probed (port, protocol).
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub blocked: Vec<String>,
}
