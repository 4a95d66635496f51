//! The API objects as written: `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (and
//! `v1beta1`, network-policy-api v0.3's version of the same schema) and the v1alpha1
//! AdminNetworkPolicy / BaselineAdminNetworkPolicy it replaced.
//!
//! Enums and numbers are kept as the user wrote them (strings, `i64`) so that validation can
//! answer in the API server's words (`Unsupported value: "Allow"`) instead of a type error, and
//! every field is optional here so that a missing one is reported by validation with its path.
//! Unknown fields are found by `input::from_value_strict`, as for NetworkPolicy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.networking.k8s.io";
pub const V1BETA1: &str = "policy.networking.k8s.io/v1beta1";
pub const V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";
pub const V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";

/// `ClusterNetworkPolicy` (v1alpha2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<CnpSpec>,
    /// Written by implementations; accepted on input, never sent.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// The spec; `CustomResource` generates the CRD polygraph's dry-run objects are checked against
/// (`ClusterNetworkPolicyCrd::crd()`), so the schema is the one these types imply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    shortname = "cnp",
    root = "ClusterNetworkPolicyCrd"
)]
#[serde(rename_all = "camelCase")]
pub struct CnpSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Admin", "Baseline"]))]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<CnpIngressRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CnpEgressRule>>,
}

/// `spec.subject`, the same in both versions: exactly one of the two.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    #[schemars(schema_with = "label_selector")]
    pub namespaces: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    #[schemars(schema_with = "label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    #[schemars(schema_with = "label_selector")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CnpIngressRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Accept", "Deny", "Pass"]))]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolEntry>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CnpEgressRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Accept", "Deny", "Pass"]))]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolEntry>>,
}

/// A peer of either direction and either version. Ingress peers may only use `namespaces` and
/// `pods`; validation rejects the egress-only fields there with their path, which reads better
/// than "unknown field".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    #[schemars(schema_with = "label_selector")]
    pub namespaces: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    #[schemars(schema_with = "label_selector")]
    pub nodes: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// v1alpha2 `protocols[]` entry: exactly one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// A `LabelSelector`'s schema (k8s-openapi's types carry none without its `schemars` feature,
/// which would compile schemas for every Kubernetes type).
fn label_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        }
    })
}

/// `AdminNetworkPolicy` or `BaselineAdminNetworkPolicy` (v1alpha1): the kind says which. BANP has
/// no `priority`; validation rejects one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1Policy {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<V1Alpha1Spec>,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1Spec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<V1Alpha1IngressRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<V1Alpha1EgressRule>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1IngressRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Allow", "Deny", "Pass"]))]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<V1Alpha1Port>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1EgressRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Allow", "Deny", "Pass"]))]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<V1Alpha1Port>>,
}

/// v1alpha1 `ports[]` entry: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_number: Option<V1Alpha1PortNumber>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_range: Option<V1Alpha1PortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1PortNumber {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct V1Alpha1PortRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// The v1alpha1 kinds for CRD generation: both share `V1Alpha1Spec` (a BANP simply has no
/// priority, which validation checks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    shortname = "anp",
    root = "AdminNetworkPolicyCrd"
)]
pub struct AnpSpec {
    #[serde(flatten)]
    pub spec: V1Alpha1Spec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, CustomResource)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "BaselineAdminNetworkPolicy",
    plural = "baselineadminnetworkpolicies",
    shortname = "banp",
    root = "BaselineAdminNetworkPolicyCrd"
)]
pub struct BanpSpec {
    #[serde(flatten)]
    pub spec: V1Alpha1Spec,
}

/// The CRDs of the three kinds, generated from these types (`CustomResourceExt`).
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    // network-policy-api v0.3 serves ClusterNetworkPolicy as v1beta1 (stored) and v1alpha2, with
    // one schema.
    let mut cnp = ClusterNetworkPolicyCrd::crd();
    if let Some(alpha) = cnp.spec.versions.first().cloned() {
        for version in &mut cnp.spec.versions {
            version.storage = false;
        }
        let mut beta = alpha;
        beta.name = "v1beta1".into();
        beta.storage = true;
        cnp.spec.versions.insert(0, beta);
    }
    vec![
        cnp,
        AdminNetworkPolicyCrd::crd(),
        BaselineAdminNetworkPolicyCrd::crd(),
    ]
}
