//! The JSON form of a run: everything, every cell. Schema documented in README ("`run` JSON").

use serde::Serialize;

use crate::matrix::Placement;
use crate::model::{Family, ProbeTarget, Protocol};
use crate::run::timing::{Change, FlowFate, Race, StepTiming};
use crate::run::{RunResult, RunTotals, Status, Verdict};
use polygraph_agent::wire::Outcome;

#[derive(Debug, Serialize)]
pub struct RunJson {
    pub polygraph: &'static str,
    pub backend: String,
    pub passed: bool,
    pub elapsed_ms: f64,
    pub options: OptionsJson,
    /// What the cluster said of itself: server version, nodes, kernels, the CNI and its images.
    pub cluster: crate::backend::ClusterInfo,
    pub summary: SummaryJson,
    /// The precheck's verdict per policy API the scenarios use (`run --precheck`, the default on
    /// Kubernetes); absent when it did not run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<crate::run::precheck::ApiCheck>,
    /// Why the run never reached its first scenario (no cluster, a bad kubeconfig, RBAC); then
    /// `scenarios` is empty and `passed` false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_error: Option<String>,
    pub scenarios: Vec<ScenarioJson>,
}

#[derive(Debug, Serialize)]
pub struct OptionsJson {
    pub probe_timeout_ms: f64,
    pub step_deadline_ms: f64,
    /// Null when late cells never fail.
    pub max_latency_ms: Option<f64>,
    pub stability_ms: f64,
    /// The bounds probing kept (`--max-inflight`, `--max-inflight-per-node`, `--rate`,
    /// `--parallel`); `rate` null: no bound.
    pub pace: crate::run::PaceOptions,
    /// The hairpin rule the run judged by (`--service-hairpin`): `policy` or `exempt`.
    pub service_hairpin: crate::model::ServiceHairpin,
}

#[derive(Debug, Default, Serialize)]
pub struct CountsJson {
    pub pass: usize,
    pub fail: usize,
    pub late: usize,
    pub flapping: usize,
    /// Leaked under load, blocked at a low rate (`fail-open`).
    pub fail_open: usize,
    pub undefined: usize,
    pub unsupported: usize,
    pub error: usize,
    pub not_probed: usize,
    /// Refused where a cluster policy's Deny requires a silent drop.
    pub not_dropped: usize,
}

impl CountsJson {
    fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Pass => self.pass += 1,
            Verdict::Fail => self.fail += 1,
            Verdict::Late => self.late += 1,
            Verdict::Flapping => self.flapping += 1,
            Verdict::FailOpen => self.fail_open += 1,
            Verdict::Undefined => self.undefined += 1,
            Verdict::Unsupported => self.unsupported += 1,
            Verdict::Error => self.error += 1,
            Verdict::NotProbed => self.not_probed += 1,
            Verdict::NotDropped => self.not_dropped += 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SummaryJson {
    pub scenarios: usize,
    pub passed: usize,
    pub failed: usize,
    /// Scenarios with no judged cell: neither passed nor failed.
    pub unsupported: usize,
    pub steps: usize,
    pub cells: CountsJson,
    /// Latency by kind of change and by node, races, leaks and held connections over the run.
    pub totals: RunTotals,
    /// Agent sessions whose stream broke and were reopened (their batches sent again).
    pub sessions_broken: u64,
    /// The pace probing kept: its bounds, the new connections started, the peak in flight and
    /// rate, and how often congestion halved the window.
    pub pace: crate::run::PaceReport,
}

#[derive(Debug, Serialize)]
pub struct ScenarioJson {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub source: String,
    /// The SHA-256 of the scenario's YAML (hex): a rerun can check it ran the same scenario.
    pub digest: String,
    pub passed: bool,
    /// passed, failed or unsupported (no cell could be judged).
    pub status: Status,
    pub elapsed_ms: f64,
    pub error: Option<String>,
    /// Why the scenario could not run on this cluster (additive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
    /// A policy API the scenario uses is accepted but not enforced (the precheck): it failed at
    /// once, no step run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_enforced: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub steps: Vec<StepJson>,
}

#[derive(Debug, Serialize)]
pub struct StepJson {
    pub name: String,
    pub origin: String,
    /// How this result's probes reached their destinations: `pod-ip` or `service`. A step probed
    /// on several paths has one entry per path, with the same name and origin.
    pub target: ProbeTarget,
    /// `IPv4` or `IPv6`.
    pub family: Family,
    pub passed: bool,
    /// passed, failed or unsupported (no cell could be judged).
    pub status: Status,
    pub elapsed_ms: f64,
    pub apply_ms: f64,
    pub rounds: usize,
    /// The longest a silent probe was waited for before its confirming attempt (a drop was then
    /// judged after twice this); null when every probe waited the whole probe timeout.
    pub deadline_ms: Option<f64>,
    /// Probes whose silence further, independent attempts confirmed, over the step's rounds.
    pub confirmations: usize,
    /// The most attempts a silent probe got (2 unless the network lost packets; 0: the whole
    /// timeout, one attempt).
    pub attempts: u32,
    pub error: Option<String>,
    pub counts: CountsJson,
    pub timing: StepTiming,
    pub cells: Vec<CellJson>,
}

#[derive(Debug, Serialize)]
pub struct CellJson {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The spec's answer.
    pub allowed: bool,
    /// The spec's answer is `dns-failed`: the probe goes by name and the source cannot reach the
    /// cluster's DNS. Present only then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dns_failed: bool,
    /// The last observation's outcome; null when not probed.
    pub observed: Option<Outcome>,
    pub verdict: Verdict,
    /// Ms from the change to the first observation matching the spec (and matching from then
    /// on); null if none did.
    pub latency_ms: Option<f64>,
    /// How the spec's answer changed at this step.
    pub change: Change,
    /// The timing race the cell showed, if any.
    pub race: Option<Race>,
    /// For a connection held open across an allow→deny change: `survived` or `cut`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<FlowFate>,
    /// Ms from the change to the last observation that differed from the spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_wrong_ms: Option<f64>,
    /// `same-node` or `cross-node`, when the backend knows where pods run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Why the spec decides as it does; given for failing cells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Which cells the report lists (counts and timing always cover all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CellSelection {
    /// Every cell of every step.
    All,
    /// Cells with something to say: failing, late, flapping, probe errors, or a cut connection.
    Notable,
    /// No cells: counts and timing only.
    None,
}

impl CellSelection {
    fn keeps(self, cell: &CellJson) -> bool {
        match self {
            CellSelection::All => true,
            CellSelection::None => false,
            CellSelection::Notable => {
                !matches!(
                    cell.verdict,
                    Verdict::Pass | Verdict::Undefined | Verdict::Unsupported | Verdict::NotProbed
                ) || cell.race.is_some()
                    || cell.established == Some(FlowFate::Cut)
            }
        }
    }
}

/// The report of a run that failed before its first scenario (`RunResult::not_started`): the
/// failure in `setup_error`, not passed.
pub fn setup_failure(result: &RunResult, error: &str) -> RunJson {
    RunJson {
        passed: false,
        setup_error: Some(error.to_string()),
        ..report(result, CellSelection::None)
    }
}

pub fn report(result: &RunResult, selection: CellSelection) -> RunJson {
    let mut total = CountsJson::default();
    let scenarios = result
        .scenarios
        .iter()
        .map(|scenario| ScenarioJson {
            name: scenario.scenario.name.clone(),
            description: scenario.scenario.description.clone(),
            tags: scenario.scenario.tags.clone(),
            source: scenario.scenario.source.clone(),
            digest: scenario.scenario.digest.clone(),
            passed: scenario.passed(),
            status: scenario.status(),
            elapsed_ms: ms(scenario.elapsed),
            error: scenario.error.clone(),
            unsupported: scenario.unsupported.clone(),
            not_enforced: scenario.not_enforced.clone(),
            warnings: scenario.warnings.clone(),
            steps: scenario
                .steps
                .iter()
                .map(|step| {
                    let analysis = &step.expected;
                    let oracle = analysis.oracle();
                    let mut counts = CountsJson::default();
                    let cells = analysis
                        .table
                        .cells()
                        .zip(step.verdicts.cells())
                        .map(|((cell, spec), (k, _, verdict))| {
                            counts.add(*verdict);
                            total.add(*verdict);
                            let observation = step
                                .observed
                                .as_ref()
                                .and_then(|o| o.get(k, cell.from, cell.to));
                            let pods = analysis.table.pods();
                            let timing = step.timing.get(k, cell.from, cell.to);
                            CellJson {
                                from: pods[cell.from].to_string(),
                                to: pods[cell.to].to_string(),
                                port: cell.port_protocol.port,
                                protocol: cell.port_protocol.protocol,
                                allowed: spec.allowed(),
                                dns_failed: spec.no_dns,
                                observed: observation.map(|o| o.outcome),
                                verdict: *verdict,
                                latency_ms: timing.converged_ms,
                                change: *step.changes.get(k, cell.from, cell.to),
                                race: timing.race(spec.allowed()),
                                last_wrong_ms: timing.last_wrong_ms,
                                established: *step.established.get(k, cell.from, cell.to),
                                placement: step
                                    .observed
                                    .as_ref()
                                    .and_then(|o| o.placement(cell.from, cell.to)),
                                reason: verdict.fails().then(|| oracle.explain(cell).reason()),
                            }
                        })
                        .filter(|cell| selection.keeps(cell))
                        .collect();
                    StepJson {
                        name: step.name.clone(),
                        origin: step.origin.clone(),
                        target: step.path.target,
                        family: step.path.family,
                        passed: step.passed(),
                        status: step.status(),
                        elapsed_ms: ms(step.elapsed),
                        apply_ms: ms(step.apply_time),
                        rounds: step.rounds,
                        deadline_ms: step.deadline.map(ms),
                        confirmations: step.confirmations,
                        attempts: step.attempts,
                        error: step.error.clone(),
                        counts,
                        timing: step.summary.clone(),
                        cells,
                    }
                })
                .collect(),
        })
        .collect();
    let totals = &result.totals;
    RunJson {
        polygraph: env!("CARGO_PKG_VERSION"),
        backend: result.backend.clone(),
        passed: result.passed(),
        elapsed_ms: ms(result.elapsed),
        apis: result.apis.clone(),
        cluster: result.cluster.clone(),
        setup_error: None,
        options: OptionsJson {
            probe_timeout_ms: ms(result.options.probe_timeout),
            step_deadline_ms: ms(result.options.step_deadline),
            max_latency_ms: result.options.max_latency.map(ms),
            stability_ms: ms(result.options.stability),
            pace: result.pace.options,
            service_hairpin: result.options.service_hairpin,
        },
        summary: SummaryJson {
            scenarios: result.scenarios.len(),
            passed: totals.scenarios_passed,
            failed: totals.scenarios_failed,
            unsupported: totals.scenarios_unsupported,
            steps: totals.steps,
            cells: total,
            totals: totals.clone(),
            sessions_broken: result.sessions_broken,
            pace: result.pace,
        },
        scenarios,
    }
}
