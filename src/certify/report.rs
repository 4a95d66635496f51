//! The conformance report: the shape Gateway API's and network-policy-api's `ConformanceReport`
//! use (implementation, date, mode, profiles with their levels' statuses and features), under
//! polygraph's own apiVersion, plus a `polygraph` block of what only polygraph measures (timing,
//! refused versus dropped, held connections, the cluster, how to reproduce). Its JSON schema is
//! `schemas/conformance-report.schema.json`; a test validates every report against it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Certification, FeatureStatus, LevelResult, LevelStatus, ProfileResult, TestStatus};
use crate::run::RunResult;
use crate::run::precheck::{ApiCheck, ApiVerdict, PolicyApi};
use crate::run::timing::{FlowSummary, LatencyStats};
use polygraph_agent::wire::Outcome;

pub const API_VERSION: &str = "polygraph.dev/v1alpha1";
pub const KIND: &str = "ConformanceReport";

/// Who is certified: read from `--implementation FILE` (YAML, these fields), else empty but for
/// the CNI polygraph recognised.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Implementation {
    #[serde(default)]
    pub organization: String,
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub contact: Vec<String>,
    #[serde(default)]
    pub additional_information: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConformanceReport {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub implementation: Implementation,
    /// RFC 3339, UTC.
    pub date: String,
    /// How the implementation was set up (`--mode`, default `default`).
    pub mode: String,
    pub profiles: Vec<ProfileReport>,
    pub polygraph: PolygraphBlock,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileReport {
    pub name: &'static str,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<StatusReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard: Option<StatusReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended: Option<StatusReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental: Option<StatusReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub result: LevelStatus,
    pub statistics: Statistics,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_tests: Vec<String>,
    /// Optional levels: the features whose tests ran and passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_features: Option<Vec<&'static str>>,
    /// Optional levels: the features none of whose tests could run here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported_features: Option<Vec<&'static str>>,
    /// Optional levels: the features with a failed test (polygraph's addition: the field's
    /// reports leave a claimed feature's failure to `failedTests` alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_features: Option<Vec<&'static str>>,
    /// Why each failed or skipped test did (polygraph's addition).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct Statistics {
    #[serde(rename = "Passed")]
    pub passed: usize,
    #[serde(rename = "Failed")]
    pub failed: usize,
    #[serde(rename = "Skipped")]
    pub skipped: usize,
}

/// What only polygraph knows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolygraphBlock {
    pub timing: TimingReport,
    /// Blocked cells by how they were blocked: the refused (RST, ICMP unreachable), the
    /// filtered (ICMP administratively prohibited) and the silently dropped.
    pub blocked: BlockedReport,
    /// What a new deny did to connections established before it (the spec leaves it open).
    pub established: EstablishedReport,
    pub cluster: ClusterReport,
    pub reproduce: Reproduce,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimingReport {
    /// The bound the Timing profile judged by.
    pub max_latency_ms: f64,
    pub stability_ms: f64,
    /// Latency by kind of change, over the whole run.
    pub allow_to_deny: LatencyReport,
    pub deny_to_allow: LatencyReport,
    pub new_pod: LatencyReport,
    /// The longest a new pod's forbidden traffic got through after it was created.
    pub new_pod_leak_max_ms: Option<f64>,
    /// The longest from a pod's creation to its first probe: the window polygraph could not see.
    pub new_pod_first_probe_max_ms: Option<f64>,
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    pub fail_open: usize,
    pub max_leak_ms: Option<f64>,
}

/// Latency percentiles by nearest rank, in milliseconds (null: no cell).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyReport {
    pub cells: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl From<&LatencyStats> for LatencyReport {
    fn from(s: &LatencyStats) -> Self {
        LatencyReport {
            cells: s.cells,
            p50_ms: s.p50_ms.map(round),
            p90_ms: s.p90_ms.map(round),
            p99_ms: s.p99_ms.map(round),
            max_ms: s.max_ms.map(round),
        }
    }
}

/// Milliseconds to the microsecond: the probes' resolution is coarser still.
fn round(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EstablishedReport {
    /// Connections and flows established before an allow→deny change.
    pub held: usize,
    pub survived: usize,
    pub cut: usize,
    pub tcp_survived: usize,
    pub udp_survived: usize,
}

impl From<&FlowSummary> for EstablishedReport {
    fn from(f: &FlowSummary) -> Self {
        EstablishedReport {
            held: f.held,
            survived: f.survived,
            cut: f.cut,
            tcp_survived: f.tcp_survived,
            udp_survived: f.udp_survived,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct BlockedReport {
    pub refused: usize,
    pub filtered: usize,
    pub dropped: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// The backend as the run described it.
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Nodes listed (0: not listable).
    pub nodes: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
    /// The CNI recognised (or polygraph's own dataplane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cni_images: Vec<String>,
    /// The policy APIs' prechecks, with their CRD bundle versions and channels where served.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<ApiReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiReport {
    pub api: PolicyApi,
    /// enforcing, not-enforcing, partial, not-served or error.
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl ApiReport {
    fn of(check: &ApiCheck) -> ApiReport {
        let (verdict, reason) = match &check.verdict {
            ApiVerdict::Enforcing => ("enforcing", None),
            ApiVerdict::NotEnforcing => ("not-enforcing", None),
            ApiVerdict::Partial => ("partial", None),
            ApiVerdict::NotServed(why) => ("not-served", Some(why.clone())),
            ApiVerdict::Error(why) => ("error", Some(why.clone())),
        };
        ApiReport {
            api: check.api,
            verdict: verdict.into(),
            reason,
            bundle_version: check.crd.as_ref().and_then(|c| c.bundle_version.clone()),
            channel: check.crd.as_ref().and_then(|c| c.channel.clone()),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reproduce {
    pub polygraph_version: &'static str,
    /// The command line that produced the report.
    pub command: String,
    pub scenarios: Vec<ScenarioDigest>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioDigest {
    pub name: String,
    pub source: String,
    pub sha256: String,
}

/// What the report says beyond the run: who, when, how set up, and the command.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub implementation: Implementation,
    pub date: String,
    pub mode: String,
    pub command: String,
}

pub fn build(
    result: &RunResult,
    certification: &Certification,
    context: Context,
) -> ConformanceReport {
    let totals = &result.totals;
    let steps = || result.scenarios.iter().flat_map(|s| &s.steps);
    let max = |values: &mut dyn Iterator<Item = f64>| {
        values.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
    };
    ConformanceReport {
        api_version: API_VERSION,
        kind: KIND,
        implementation: context.implementation,
        date: context.date,
        mode: if context.mode.is_empty() {
            "default".into()
        } else {
            context.mode
        },
        profiles: certification.profiles.iter().map(profile_report).collect(),
        polygraph: PolygraphBlock {
            timing: TimingReport {
                max_latency_ms: certification.bounds.max_latency.as_secs_f64() * 1e3,
                stability_ms: result.options.stability.as_secs_f64() * 1e3,
                allow_to_deny: (&totals.allow_to_deny).into(),
                deny_to_allow: (&totals.deny_to_allow).into(),
                new_pod: (&totals.new_pod).into(),
                new_pod_leak_max_ms: max(&mut steps().filter_map(|s| s.summary.new_pod_leak_ms))
                    .map(round),
                new_pod_first_probe_max_ms: max(
                    &mut steps().filter_map(|s| s.summary.new_pod_first_probe_ms)
                )
                .map(round),
                late_deny: totals.late_deny,
                late_allow: totals.late_allow,
                never_converged: totals.never_converged,
                flapping: totals.flapping,
                fail_open: totals.fail_open,
                max_leak_ms: totals.max_leak_ms.map(round),
            },
            blocked: blocked(result),
            established: (&totals.established).into(),
            cluster: ClusterReport {
                backend: result.backend.clone(),
                server_version: result.cluster.server_version.clone(),
                nodes: result.cluster.nodes,
                kernels: result.cluster.kernels.clone(),
                cni: result.cluster.cni.clone(),
                cni_images: result.cluster.cni_images.clone(),
                apis: result.apis.iter().map(ApiReport::of).collect(),
            },
            reproduce: Reproduce {
                polygraph_version: env!("CARGO_PKG_VERSION"),
                command: context.command,
                scenarios: result
                    .scenarios
                    .iter()
                    .map(|s| ScenarioDigest {
                        name: s.scenario.name.clone(),
                        source: s.scenario.source.clone(),
                        sha256: s.scenario.digest.clone(),
                    })
                    .collect(),
            },
        },
    }
}

/// The last observation of every cell the spec blocks, by how it was blocked.
fn blocked(result: &RunResult) -> BlockedReport {
    let mut counts = BlockedReport::default();
    for step in result.scenarios.iter().flat_map(|s| &s.steps) {
        let Some(observed) = &step.observed else {
            continue;
        };
        for (k, cell, _) in step.verdicts.cells() {
            if step.expected.table.get(k, cell.from, cell.to).allowed() || cell.from == cell.to {
                continue;
            }
            match observed.get(k, cell.from, cell.to).map(|o| o.outcome) {
                Some(Outcome::Refused) => counts.refused += 1,
                Some(Outcome::Filtered) => counts.filtered += 1,
                Some(Outcome::Timeout) => counts.dropped += 1,
                _ => {}
            }
        }
    }
    counts
}

fn profile_report(p: &ProfileResult) -> ProfileReport {
    let core = Some(status_report(&p.core));
    let optional = p.extended.as_ref().map(status_report);
    let mut report = ProfileReport {
        name: p.profile.name,
        summary: format!("{}: {}", p.profile.summary, p.summary()),
        core: None,
        standard: None,
        extended: None,
        experimental: None,
    };
    // network-policy-api names its levels standard and experimental; the rest core and extended.
    if p.profile.levels.0 == "standard" {
        (report.standard, report.experimental) = (core, optional);
    } else {
        (report.core, report.extended) = (core, optional);
    }
    report
}

fn status_report(level: &LevelResult) -> StatusReport {
    let names =
        |status| -> Vec<String> { level.with_status(status).map(|t| t.name.clone()).collect() };
    let optional = !level.features.is_empty();
    StatusReport {
        result: level.status,
        statistics: Statistics {
            passed: level.count(TestStatus::Passed),
            failed: level.count(TestStatus::Failed),
            skipped: level.count(TestStatus::Skipped),
        },
        failed_tests: names(TestStatus::Failed),
        skipped_tests: names(TestStatus::Skipped),
        supported_features: optional.then(|| level.features_with(FeatureStatus::Supported)),
        unsupported_features: optional.then(|| level.features_with(FeatureStatus::Unsupported)),
        failed_features: optional.then(|| level.features_with(FeatureStatus::Failed)),
        reasons: level
            .tests
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.reason.clone()?)))
            .collect(),
    }
}

/// The report as YAML.
pub fn to_yaml(report: &ConformanceReport) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(report)
}
