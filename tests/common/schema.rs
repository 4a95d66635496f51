//! The `run` JSON as README documents it, as typed structs that reject unknown fields: a report
//! that drifts from the documentation fails the tests that parse it.
#![allow(dead_code)]

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RunJson {
    pub polygraph: String,
    pub backend: String,
    pub passed: bool,
    pub elapsed_ms: f64,
    pub options: Options,
    pub cluster: ClusterJson,
    pub summary: Summary,
    /// Only when the precheck ran.
    #[serde(default)]
    pub apis: Vec<ApiCheck>,
    /// Only when the run failed before its first scenario.
    #[serde(default)]
    pub setup_error: Option<String>,
    pub scenarios: Vec<ScenarioJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ApiCheck {
    pub api: String,
    /// enforcing, not-enforcing, partial, not-served, error.
    pub verdict: String,
    /// Only for not-served and error.
    #[serde(default)]
    pub reason: Option<String>,
    pub scenario: String,
    /// The CRD's network-policy-api annotations, on Kubernetes where readable.
    #[serde(default)]
    pub crd: Option<CrdJson>,
}

/// What the cluster said of itself; every field but `nodes` only when known.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterJson {
    #[serde(default)]
    pub server_version: Option<String>,
    pub nodes: usize,
    #[serde(default)]
    pub kernels: Vec<String>,
    #[serde(default)]
    pub cni: Option<String>,
    #[serde(default)]
    pub cni_images: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdJson {
    pub bundle_version: Option<String>,
    pub channel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Options {
    pub probe_timeout_ms: f64,
    pub step_deadline_ms: f64,
    pub max_latency_ms: Option<f64>,
    pub stability_ms: f64,
    pub pace: PaceBounds,
    /// `policy` or `exempt`.
    pub service_hairpin: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub late: usize,
    pub flapping: usize,
    pub fail_open: usize,
    pub undefined: usize,
    pub unsupported: usize,
    pub error: usize,
    pub not_probed: usize,
    pub not_dropped: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TagCounts {
    pub passed: usize,
    pub failed: usize,
    pub unsupported: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Totals {
    pub allow_to_deny: Stats,
    pub deny_to_allow: Stats,
    pub new_pod: Stats,
    pub per_node: std::collections::BTreeMap<String, Stats>,
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    pub fail_open: usize,
    pub max_leak_ms: Option<f64>,
    pub established: Flows,
    pub scenarios_passed: usize,
    pub scenarios_failed: usize,
    pub scenarios_unsupported: usize,
    pub steps: usize,
    pub per_tag: std::collections::BTreeMap<String, TagCounts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Summary {
    pub scenarios: usize,
    pub passed: usize,
    pub failed: usize,
    pub unsupported: usize,
    pub steps: usize,
    pub cells: Counts,
    pub totals: Totals,
    pub sessions_broken: u64,
    pub pace: Pace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PaceBounds {
    pub max_inflight: usize,
    pub max_inflight_per_node: usize,
    pub rate: Option<f64>,
    pub sources: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Pace {
    pub max_inflight: usize,
    pub max_inflight_per_node: usize,
    pub rate: Option<f64>,
    pub sources: usize,
    pub connections: u64,
    pub peak_inflight: usize,
    pub peak_rate: f64,
    pub backoffs: usize,
    pub min_window: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ScenarioJson {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub source: String,
    pub digest: String,
    pub passed: bool,
    pub status: String,
    pub elapsed_ms: f64,
    pub error: Option<String>,
    /// Only when the cluster cannot run the scenario (e.g. an unserved CRD).
    #[serde(default)]
    pub unsupported: Option<String>,
    /// Only when the precheck found an API it uses not enforced.
    #[serde(default)]
    pub not_enforced: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub steps: Vec<StepJson>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    PodIp,
    Service,
    ServiceName,
    NodePort,
    External,
    Node,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub enum FamilyJson {
    IPv4,
    IPv6,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct StepJson {
    pub name: String,
    pub origin: String,
    pub target: Target,
    pub family: FamilyJson,
    pub passed: bool,
    pub status: String,
    pub elapsed_ms: f64,
    pub apply_ms: f64,
    pub rounds: usize,
    pub deadline_ms: Option<f64>,
    pub confirmations: usize,
    pub attempts: u32,
    pub error: Option<String>,
    pub counts: Counts,
    pub timing: Timing,
    pub cells: Vec<CellJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Stats {
    pub cells: usize,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Flows {
    pub held: usize,
    pub survived: usize,
    pub cut: usize,
    pub tcp_survived: usize,
    pub udp_survived: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Timing {
    pub allow_to_deny: Stats,
    pub deny_to_allow: Stats,
    pub new_pod: Stats,
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    pub fail_open: usize,
    #[serde(default)]
    pub fail_open_evidence: Option<FailOpenEvidence>,
    pub max_leak_ms: Option<f64>,
    pub new_pod_leak_ms: Option<f64>,
    pub new_pod_first_probe_ms: Option<f64>,
    pub round_interval_ms: Option<f64>,
    pub established: Flows,
    #[serde(default)]
    pub per_node: std::collections::BTreeMap<String, Stats>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CellJson {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
    #[serde(default)]
    pub dns_failed: bool,
    pub observed: Option<String>,
    pub verdict: String,
    pub latency_ms: Option<f64>,
    pub change: String,
    pub race: Option<String>,
    #[serde(default)]
    pub last_wrong_ms: Option<f64>,
    #[serde(default)]
    pub established: Option<String>,
    /// Only where the backend knows nodes; the local cluster is one host.
    #[serde(default)]
    pub placement: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

pub const VERDICTS: [&str; 10] = [
    "pass",
    "fail",
    "late",
    "flapping",
    "fail_open",
    "undefined",
    "unsupported",
    "error",
    "not_probed",
    "not_dropped",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FailOpenEvidence {
    pub cells: usize,
    pub burst_cells: usize,
    pub burst_ms: f64,
    pub load_rate: f64,
    pub load_inflight: usize,
    pub gentle_rate: f64,
}
