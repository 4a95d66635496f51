//! Running scenarios: deploy each cluster model once, run its scenarios' steps, reset in between,
//! and after every step poll the matrix until it matches the spec or the step deadline passes.

use std::time::{Duration, Instant};

use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError};
use crate::matrix::{Grid, Judgement, ObservedTable};
use crate::model::ClusterDescription;
use crate::scenario::{Action, Scenario, World};

use super::{READY_TIMEOUT, probe_matrix};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long a probe waits before it counts as dropped.
    pub probe_timeout: Duration,
    /// How long a step may take to converge before unmatched cells fail.
    pub step_deadline: Duration,
    /// A cell that matches only after this long is `late`.
    pub allowed_latency: Duration,
    pub parallelism: usize,
    /// The least time between the starts of two probe rounds of a step: rounds that finish fast
    /// (everything connects) must not spin.
    pub poll_interval: Duration,
}

/// A cell's verdict at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Matched the spec, within the allowed latency.
    Pass,
    /// Never matched: an enforcement gap (or over-blocking).
    Fail,
    /// Matched, but only after the allowed latency.
    Late,
    /// A pod to itself, differing from the computed answer: undefined by the spec.
    Undefined,
    Unsupported,
    Error,
    NotProbed,
}

impl Verdict {
    pub fn fails(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Error)
    }
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: String,
    pub origin: String,
    /// From the start of the action to the end of the last probe round.
    pub elapsed: Duration,
    /// How long the action itself took (the backend accepting the change).
    pub apply_time: Duration,
    pub rounds: usize,
    /// What the spec says for this step, at the pods' real addresses: the yardstick of `verdicts`.
    pub expected: Analysis,
    /// Whether the backend accepted the step's action.
    pub applied: bool,
    /// The last round's observations.
    pub observed: Option<ObservedTable>,
    /// Per cell: ms from the change to the first observation matching the spec.
    pub converged_ms: Grid<Option<f64>>,
    pub verdicts: Grid<Verdict>,
    /// A backend failure that stopped the step.
    pub error: Option<String>,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.verdicts.values().iter().any(|v| v.fails())
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.verdicts
            .values()
            .iter()
            .filter(|v| **v == verdict)
            .count()
    }
}

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    pub steps: Vec<StepResult>,
    pub elapsed: Duration,
    /// A failure outside any step (deploying or resetting the cluster).
    pub error: Option<String>,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.steps.len() == self.scenario.steps.len()
            && self.steps.iter().all(StepResult::passed)
    }
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub backend: String,
    pub scenarios: Vec<ScenarioResult>,
    pub elapsed: Duration,
    pub options: RunOptions,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.scenarios.iter().all(ScenarioResult::passed)
    }
}

/// What the runner reports while it works; the terminal display consumes these.
pub enum Event<'a> {
    ScenarioStarted {
        scenario: &'a Scenario,
    },
    StepFinished {
        scenario: &'a Scenario,
        step: &'a StepResult,
    },
    ScenarioFinished {
        result: &'a ScenarioResult,
    },
}

/// Brings the backend from `from` to `to`: policies, namespaces, pods, labels. Deploying is
/// reconciling from the empty world; tearing down is reconciling to it.
pub async fn reconcile<B: Backend>(
    backend: &mut B,
    from: &World,
    to: &World,
) -> Result<(), BackendError> {
    for policy in from.policies() {
        if !to.has_policy(&policy.namespace, &policy.name) {
            backend
                .delete_policy(&policy.namespace, &policy.name)
                .await?;
        }
    }
    let (old, new) = (from.cluster(), to.cluster());
    for ns in old.namespaces() {
        if new.namespace(&ns.name).is_none() {
            backend.delete_namespace(&ns.name).await?;
        }
    }
    for ns in new.namespaces() {
        match old.namespace(&ns.name) {
            None => backend.create_namespace(ns).await?,
            Some(before) if before.labels != ns.labels => {
                backend.set_namespace_labels(&ns.name, &ns.labels).await?
            }
            Some(_) => {}
        }
    }
    for pod in old.pods() {
        // Pods of deleted namespaces are already gone.
        let Some(id) = new.find_pod(&pod.key()) else {
            if new.namespace(&pod.namespace).is_some() {
                backend.delete_pod(&pod.key()).await?;
            }
            continue;
        };
        if !same_pod(new.pod(id), pod) {
            backend.delete_pod(&pod.key()).await?;
        }
    }
    for pod in new.pods() {
        match old.find_pod(&pod.key()).map(|id| old.pod(id)) {
            Some(before) if same_pod(before, pod) => {
                if before.labels != pod.labels {
                    backend.set_pod_labels(&pod.key(), &pod.labels).await?;
                }
            }
            _ => backend.create_pod(pod).await?,
        }
    }
    for policy in to.policies() {
        backend.apply_policy(policy).await?;
    }
    backend.wait_ready(READY_TIMEOUT).await
}

/// Whether a pod can stay as it is (relabelled at most) or must be recreated: its address and ports
/// are fixed at creation.
fn same_pod(a: &crate::model::Pod, b: &crate::model::Pod) -> bool {
    (a.ip, &a.ports) == (b.ip, &b.ports)
}

pub fn empty_world() -> World {
    // An empty description is always valid.
    World::new(&ClusterDescription::default(), "empty")
        .unwrap_or_else(|e| unreachable!("empty world: {e}"))
}

async fn perform<B: Backend>(backend: &mut B, action: &Action) -> Result<(), BackendError> {
    match action {
        Action::Apply(policies) => {
            for policy in policies {
                backend.apply_policy(policy).await?;
            }
        }
        Action::DeletePolicy { namespace, name } => backend.delete_policy(namespace, name).await?,
        Action::SetNamespaceLabels { namespace, labels } => {
            backend.set_namespace_labels(namespace, labels).await?
        }
        Action::SetPodLabels { pod, labels } => backend.set_pod_labels(pod, labels).await?,
        Action::CreatePod(pod) => {
            backend.create_pod(pod).await?;
            backend.wait_ready(READY_TIMEOUT).await?;
        }
        Action::DeletePod(pod) => backend.delete_pod(pod).await?,
        Action::CreateNamespace(ns) => backend.create_namespace(ns).await?,
        Action::DeleteNamespace(name) => backend.delete_namespace(name).await?,
        Action::Probe => {}
    }
    Ok(())
}

async fn run_step<B: Backend>(
    backend: &mut B,
    scenario: &Scenario,
    index: usize,
    options: &RunOptions,
) -> StepResult {
    let step = &scenario.steps[index];
    let pods = step.analysis.table.pods().to_vec();
    let pps = step.analysis.table.port_protocols().to_vec();
    let mut result = StepResult {
        expected: step.analysis.clone(),
        name: step.name.clone(),
        origin: step.origin.clone(),
        elapsed: Duration::ZERO,
        apply_time: Duration::ZERO,
        rounds: 0,
        applied: false,
        observed: None,
        converged_ms: Grid::new(pods.clone(), pps.clone(), None),
        verdicts: Grid::new(pods, pps, Verdict::NotProbed),
        error: None,
    };
    let started = Instant::now();
    if let Err(e) = perform(backend, &step.action).await {
        result.error = Some(e.to_string());
        result.elapsed = started.elapsed();
        return result;
    }
    let changed = Instant::now();
    result.applied = true;
    result.apply_time = changed - started;
    // Judge against the pods' real addresses (a Kubernetes cluster assigns its own).
    result.expected = super::at_real_addresses(&*backend, &step.analysis);
    let analysis = result.expected.clone();
    let expected = &analysis.table;
    loop {
        let round_start = changed.elapsed();
        let round_began = Instant::now();
        let observed = match probe_matrix(
            &*backend,
            &analysis.cluster,
            expected.port_protocols(),
            options.probe_timeout,
            options.parallelism,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                result.error = Some(e.to_string());
                break;
            }
        };
        result.rounds += 1;
        let mut settled = true;
        for (k, cell, judgement, observation) in observed.judged(expected) {
            match judgement {
                // First match: the moment this round's probe of the cell started.
                Judgement::Match if result.converged_ms.get(k, cell.from, cell.to).is_none() => {
                    let offset = observation.map_or(0.0, |o| o.started_ms);
                    let at = round_start.as_secs_f64() * 1e3 + offset;
                    result.converged_ms.set(k, cell.from, cell.to, Some(at));
                }
                Judgement::Wrong => {
                    settled = false;
                    // A cell that matched and no longer does has not converged.
                    result.converged_ms.set(k, cell.from, cell.to, None);
                }
                _ => {}
            }
        }
        result.observed = Some(observed);
        if settled || changed.elapsed() + options.probe_timeout > options.step_deadline {
            break;
        }
        tokio::time::sleep(options.poll_interval.saturating_sub(round_began.elapsed())).await;
    }
    result.elapsed = started.elapsed();
    if let Some(observed) = &result.observed {
        let allowed_ms = options.allowed_latency.as_secs_f64() * 1e3;
        let cells: Vec<_> = observed
            .judged(expected)
            .map(|(k, cell, j, _)| (k, cell, j))
            .collect();
        for (k, cell, judgement) in cells {
            let verdict = match judgement {
                Judgement::Match => match result.converged_ms.get(k, cell.from, cell.to) {
                    Some(ms) if *ms > allowed_ms => Verdict::Late,
                    _ => Verdict::Pass,
                },
                Judgement::Wrong => Verdict::Fail,
                Judgement::SelfDiffers => Verdict::Undefined,
                Judgement::Unsupported => Verdict::Unsupported,
                Judgement::Error => Verdict::Error,
                Judgement::NotProbed => Verdict::NotProbed,
            };
            result.verdicts.set(k, cell.from, cell.to, verdict);
        }
    }
    result
}

/// Runs scenarios in order; those sharing a cluster model run on one deployment, reset in between.
pub async fn run_scenarios<B: Backend>(
    backend: &mut B,
    scenarios: &[Scenario],
    options: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> RunResult {
    let started = Instant::now();
    let mut results = Vec::with_capacity(scenarios.len());
    // Group by model, keeping the order in which models first appear.
    let mut order: Vec<&str> = Vec::new();
    for s in scenarios {
        if !order.contains(&s.model_key.as_str()) {
            order.push(&s.model_key);
        }
    }
    let mut deployed = empty_world();
    for key in order {
        for scenario in scenarios.iter().filter(|s| s.model_key == key) {
            on_event(Event::ScenarioStarted { scenario });
            let scenario_start = Instant::now();
            let mut result = ScenarioResult {
                scenario: scenario.clone(),
                steps: Vec::new(),
                elapsed: Duration::ZERO,
                error: None,
            };
            match reconcile(backend, &deployed, &scenario.initial).await {
                Err(e) => {
                    result.error = Some(format!("setting up the cluster: {e}"));
                    // The deployment is in an unknown state: start the next scenario from scratch.
                    let _ = reconcile(backend, &scenario.initial, &empty_world()).await;
                    deployed = empty_world();
                }
                Ok(()) => {
                    for index in 0..scenario.steps.len() {
                        let step = run_step(backend, scenario, index, options).await;
                        let stop = step.error.is_some();
                        on_event(Event::StepFinished {
                            scenario,
                            step: &step,
                        });
                        result.steps.push(step);
                        if stop {
                            result.error = Some(
                                "a step could not be carried out; the rest were skipped".into(),
                            );
                            break;
                        }
                    }
                    // Where the cluster is now: every action the backend accepted, replayed.
                    let mut now = scenario.initial.clone();
                    for (step, done) in scenario.steps.iter().zip(&result.steps) {
                        if done.applied {
                            let _ = now.apply(&step.action);
                        }
                    }
                    deployed = now;
                }
            }
            result.elapsed = scenario_start.elapsed();
            on_event(Event::ScenarioFinished { result: &result });
            results.push(result);
        }
    }
    let _ = reconcile(backend, &deployed, &empty_world()).await;
    RunResult {
        backend: backend.describe(),
        scenarios: results,
        elapsed: started.elapsed(),
        options: options.clone(),
    }
}
