//! What a run produces: per cell a verdict, per step and scenario a status, with timing and the
//! run's totals. Reports render these; they compute nothing of their own.

use std::time::Duration;

use super::summary::{RunTotals, ScenarioTotals};
use super::timing::{CellTiming, Change, FlowFate, StepTiming};
use crate::analyze::Analysis;
use crate::matrix::{Grid, ObservedTable};
use crate::model::{ProbePath, ProbeTarget};
use crate::scenario::Scenario;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long a probe waits before it counts as dropped.
    pub probe_timeout: Duration,
    /// How long a step may take to converge before unmatched cells fail.
    pub step_deadline: Duration,
    /// A late cell (one that matched only after differing) fails when it took longer than this.
    pub max_latency: Option<Duration>,
    /// After a step converges, keep probing this long and flag cells that change (flapping).
    pub stability: Duration,
    /// Hold connections open across allow→deny steps and report whether the deny cuts them.
    pub established: bool,
    /// The pace of every probe of the run (`--parallel`, `--max-inflight`, `--rate`): one pacer,
    /// shared by clones of these options, so lanes on one cluster share its bounds.
    pub pacer: super::Pacer,
    /// The least time between the starts of two probe rounds of a step: rounds that finish fast
    /// (everything connects) must not spin.
    pub poll_interval: Duration,
    /// How probes reach their destinations (`--target`); empty: each scenario's own `target:`,
    /// or pod IPs.
    pub targets: Vec<ProbeTarget>,
    /// The IP families probed in scenarios that name none (`ip-family:`): `--ip-family`, or IPv4
    /// on polygraph's own clusters; `None`: every family the pods have (Kubernetes).
    pub families: Option<crate::model::IpFamilies>,
    /// Check each policy API the scenarios use before running them (`run::precheck`), and fail
    /// the scenarios of an API that is not enforced at once.
    pub precheck: bool,
    /// The hairpin rule the cluster declares (`--service-hairpin`): whether a pod's traffic to
    /// its own Service is judged where a cluster policy decides it.
    pub service_hairpin: crate::model::ServiceHairpin,
}

/// `polygraph run`'s defaults: a 1 s probe timeout, 10 s to converge, no latency limit, no
/// stability window, held connections, 64 sources at once within the pacer's default bounds,
/// rounds at least 250 ms apart, each scenario's own targets.
impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            probe_timeout: Duration::from_secs(1),
            step_deadline: Duration::from_secs(10),
            max_latency: None,
            stability: Duration::ZERO,
            established: true,
            pacer: super::Pacer::new(super::PaceOptions::default()),
            poll_interval: Duration::from_millis(250),
            targets: Vec::new(),
            families: None,
            precheck: false,
            service_hairpin: Default::default(),
        }
    }
}

/// A cell's verdict at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Matched the spec, within the allowed latency.
    Pass,
    /// Never matched: an enforcement gap (or over-blocking).
    Fail,
    /// Matched, but only after differing first: a late deny (leak) or late allow; fails only
    /// beyond `--max-latency`.
    Late,
    /// Matched, then changed during the stability window.
    Flapping,
    /// Blocked traffic got through under load and was blocked at a low rate: the enforcer failed
    /// open (`Race::FailOpen`). A real leak: it fails.
    FailOpen,
    /// Blocked, but answered (refused or filtered) where a cluster policy's Deny requires a silent drop.
    NotDropped,
    /// Undefined by the spec: a pod to itself differing from the computed answer, or a cell
    /// the spec leaves to the implementation (same-priority cluster policies, DNS).
    Undefined,
    Unsupported,
    Error,
    NotProbed,
}

impl Verdict {
    pub fn fails(self) -> bool {
        matches!(
            self,
            Verdict::Fail
                | Verdict::Error
                | Verdict::Flapping
                | Verdict::NotDropped
                | Verdict::FailOpen
        )
    }

    /// Whether the cell was judged against the spec: what an unsupported step lacks.
    pub fn judged(self) -> bool {
        matches!(
            self,
            Verdict::Pass
                | Verdict::Fail
                | Verdict::Late
                | Verdict::Flapping
                | Verdict::FailOpen
                | Verdict::Error
                | Verdict::NotDropped
        )
    }
}

/// How a step or scenario ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// Nothing could be judged (every cell unsupported, undefined or not probed): never failed,
    /// never counted as passed.
    Unsupported,
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: String,
    pub origin: String,
    /// How this result's probes reached their destinations (target, family): a step has one
    /// result per path.
    pub path: ProbePath,
    /// From the start of the action to the end of the last probe round.
    pub elapsed: Duration,
    /// How long the action itself took (the backend accepting the change).
    pub apply_time: Duration,
    pub rounds: usize,
    /// The longest a silent probe was waited for before its confirming attempt, in the step's
    /// rounds (`run::Deadlines`); `None`: every probe waited the whole timeout.
    pub deadline: Option<Duration>,
    /// Probes whose silence further, independent attempts confirmed, over the step's rounds.
    pub confirmations: usize,
    /// The most attempts a silent probe got in the step's rounds (2 unless the network lost
    /// packets; see `run::Deadlines`); 0 when every probe waited the whole timeout.
    pub attempts: u32,
    /// What the spec says for this step, at the pods' real addresses: the yardstick of `verdicts`.
    pub expected: Analysis,
    /// Whether the backend accepted the step's action.
    pub applied: bool,
    /// The last round's observations.
    pub observed: Option<ObservedTable>,
    /// Per cell: how the spec's answer changed at this step.
    pub changes: Grid<Change>,
    /// Per cell: its timeline (convergence, last wrong observation, flapping).
    pub timing: Grid<CellTiming>,
    pub verdicts: Grid<Verdict>,
    /// Latency percentiles, races and leak windows of the step.
    pub summary: StepTiming,
    /// Per allow→deny cell whose connection was held across the step: what the deny did to it.
    pub established: Grid<Option<FlowFate>>,
    /// A backend failure that stopped the step.
    pub error: Option<String>,
}

impl StepResult {
    /// The step's name, with the path when it is not the plain one (pod IPs over IPv4), e.g.
    /// `deny all ingress in x (through service IPv6)`.
    pub fn title(&self) -> String {
        if self.path.is_plain() {
            self.name.clone()
        } else {
            format!("{} (through {})", self.name, self.path)
        }
    }

    pub fn passed(&self) -> bool {
        self.status() == Status::Passed
    }

    pub fn status(&self) -> Status {
        let verdicts = self.verdicts.values();
        if self.error.is_some() || verdicts.iter().any(|v| v.fails()) {
            Status::Failed
        } else if verdicts.iter().any(|v| v.judged()) {
            Status::Passed
        } else {
            Status::Unsupported
        }
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.verdicts
            .values()
            .iter()
            .filter(|v| **v == verdict)
            .count()
    }

    /// Cells whose verdict fails the step (wrong, flapping, fail-open, not dropped, errors).
    pub fn failing_cells(&self) -> usize {
        self.verdicts.values().iter().filter(|v| v.fails()).count()
    }
}

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub steps: Vec<StepResult>,
    pub elapsed: Duration,
    /// A failure outside any step (deploying or resetting the cluster).
    pub error: Option<String>,
    /// Why the scenario could not run here at all (the cluster does not serve a kind it needs).
    pub unsupported: Option<String>,
    /// A policy API it uses is accepted but not enforced (the precheck): it failed at once, its
    /// steps not run.
    pub not_enforced: Option<String>,
    /// What the user should know about the answers (e.g. the cluster's own cluster policies).
    pub warnings: Vec<String>,
    /// Races and verdict counts over its steps.
    pub totals: ScenarioTotals,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.status() == Status::Passed
    }

    /// Failed if anything failed; unsupported if no step could be judged; passed otherwise.
    pub fn status(&self) -> Status {
        if self.not_enforced.is_some() {
            return Status::Failed;
        }
        if self.unsupported.is_some() && self.error.is_none() {
            return Status::Unsupported;
        }
        let statuses: Vec<Status> = self.steps.iter().map(StepResult::status).collect();
        let all_run = self.scenario.steps.iter().all(|step| {
            self.steps
                .iter()
                .any(|r| r.name == step.name && r.origin == step.origin)
        });
        if self.error.is_some() || !all_run || statuses.contains(&Status::Failed) {
            Status::Failed
        } else if statuses.contains(&Status::Passed) {
            Status::Passed
        } else {
            Status::Unsupported
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub backend: String,
    pub scenarios: Vec<ScenarioResult>,
    pub elapsed: Duration,
    pub options: RunOptions,
    /// Latency, races, held connections and scenario counts over the whole run.
    pub totals: RunTotals,
    /// Agent sessions whose stream broke during the run (`Backend::sessions_broken`): their
    /// batches were sent again on new sessions, never judged from the broken stream.
    pub sessions_broken: u64,
    /// The pace probing kept, and what congestion did to it (`run::Pacer`).
    pub pace: super::PaceReport,
    /// The precheck's verdict per policy API, when it ran.
    pub apis: Vec<super::precheck::ApiCheck>,
    /// What the cluster said of itself (`Backend::cluster_info`).
    pub cluster: crate::backend::ClusterInfo,
}

impl RunResult {
    /// A run that never reached its first scenario (no cluster, a bad kubeconfig, RBAC): no
    /// scenario, and the reports say why (`setup_error`).
    pub fn not_started(backend: String, options: &RunOptions, elapsed: Duration) -> RunResult {
        RunResult {
            backend,
            scenarios: Vec::new(),
            elapsed,
            options: options.clone(),
            totals: RunTotals::of(&[]),
            sessions_broken: 0,
            pace: options.pacer.report(),
            apis: Vec::new(),
            cluster: Default::default(),
        }
    }

    /// No scenario failed (unsupported ones don't fail a run).
    pub fn passed(&self) -> bool {
        self.scenarios.iter().all(|s| s.status() != Status::Failed)
    }
}
