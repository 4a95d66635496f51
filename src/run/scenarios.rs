//! Running scenarios: deploy each cluster model once, run its scenarios' steps, reset in between,
//! and after every step poll the matrix until it matches the spec or the step deadline passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use polygraph_agent::wire::{Outcome, Target};

use super::timing::{
    CellTiming, Change, FlowFate, FlowSummary, LatencyStats, Race, StepTiming, changes,
};
use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError, Held};
use crate::matrix::{Grid, Judgement, ObservedTable, TruthTable};
use crate::model::{ClusterDescription, Protocol};
use crate::scenario::{Action, Scenario, World};

use super::{READY_TIMEOUT, probe_matrix};

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
    /// Matched, but only after differing first: a late deny (leak) or late allow; fails only
    /// beyond `--max-latency`.
    Late,
    /// Matched, then changed during the stability window.
    Flapping,
    /// A pod to itself, differing from the computed answer: undefined by the spec.
    Undefined,
    Unsupported,
    Error,
    NotProbed,
}

impl Verdict {
    pub fn fails(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Error | Verdict::Flapping)
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

/// Carries out a step's action; returns the moment of the change (for a new pod: when the backend
/// created it, before it was ready, so the new-pod race counts from its first instant).
async fn perform<B: Backend>(backend: &mut B, action: &Action) -> Result<Instant, BackendError> {
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
            let created = Instant::now();
            backend.wait_ready(READY_TIMEOUT).await?;
            return Ok(created);
        }
        Action::DeletePod(pod) => backend.delete_pod(pod).await?,
        Action::CreateNamespace(ns) => backend.create_namespace(ns).await?,
        Action::DeleteNamespace(name) => backend.delete_namespace(name).await?,
        Action::Probe => {}
    }
    Ok(Instant::now())
}

/// The spec's answer for the scenario's initial world.
fn initial_analysis(scenario: &Scenario) -> Analysis {
    crate::analyze::analyze(
        scenario.initial.cluster().clone(),
        scenario.initial.policies().to_vec(),
        &scenario.port_protocols,
    )
}

/// Probes until the cluster enforces the scenario's initial world: a lagging dataplane may still
/// enforce the previous scenario, and the first step's timing must start from a clean baseline.
async fn await_baseline<B: Backend>(
    backend: &B,
    initial: &Analysis,
    options: &RunOptions,
) -> Result<(), String> {
    let analysis = super::at_real_addresses(backend, initial);
    let started = Instant::now();
    loop {
        let round_began = Instant::now();
        let observed = probe_matrix(
            backend,
            &analysis.cluster,
            analysis.table.port_protocols(),
            options.probe_timeout,
            options.parallelism,
        )
        .await
        .map_err(|e| e.to_string())?;
        let wrong = observed
            .judged(&analysis.table)
            .filter(|(_, _, j, _)| *j == Judgement::Wrong)
            .count();
        if wrong == 0 {
            return Ok(());
        }
        if started.elapsed() + options.probe_timeout > options.step_deadline {
            return Err(format!(
                "the cluster did not return to the scenario's initial state: {wrong} cells still differ after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(options.poll_interval.saturating_sub(round_began.elapsed())).await;
    }
}

/// Runs step `index`; `before` is what the spec said before it (the previous step's answer, or
/// the initial world's).
async fn run_step<B: Backend>(
    backend: &mut B,
    scenario: &Scenario,
    index: usize,
    before: &TruthTable,
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
        changes: changes(before, &step.analysis.table),
        timing: Grid::new(pods.clone(), pps.clone(), CellTiming::default()),
        established: Grid::new(pods.clone(), pps.clone(), None),
        verdicts: Grid::new(pods, pps, Verdict::NotProbed),
        summary: StepTiming::default(),
        error: None,
    };
    let mut flows = if options.established {
        hold_flows(&*backend, &step.analysis, &result.changes, options).await
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let changed = match perform(backend, &step.action).await {
        Ok(at) => at,
        Err(e) => {
            result.error = Some(e.to_string());
            result.elapsed = started.elapsed();
            return result;
        }
    };
    result.applied = true;
    result.apply_time = changed.saturating_duration_since(started);
    // Judge against the pods' real addresses (a Kubernetes cluster assigns its own).
    result.expected = super::at_real_addresses(&*backend, &step.analysis);
    let analysis = result.expected.clone();
    let expected = &analysis.table;
    let mut round_starts: Vec<f64> = Vec::new();
    // Set once every cell matches: from then on, only the stability window remains.
    let mut settled_at: Option<Duration> = None;
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
        let round_ms = round_start.as_secs_f64() * 1e3;
        round_starts.push(round_ms);
        let mut all_match = true;
        for (k, cell, judgement, observation) in observed.judged(expected) {
            let matches = match judgement {
                Judgement::Match => true,
                Judgement::Wrong => false,
                _ => continue,
            };
            all_match &= matches;
            let at = round_ms + observation.map_or(0.0, |o| o.started_ms);
            let mut timing = *result.timing.get(k, cell.from, cell.to);
            timing.observe(at, matches);
            result.timing.set(k, cell.from, cell.to, timing);
        }
        result.observed = Some(observed);
        if all_match && settled_at.is_none() {
            settled_at = Some(changed.elapsed());
        }
        let done = match settled_at {
            Some(at) => changed.elapsed() >= at + options.stability,
            None => changed.elapsed() + options.probe_timeout > options.step_deadline,
        };
        if done {
            break;
        }
        tokio::time::sleep(options.poll_interval.saturating_sub(round_began.elapsed())).await;
    }
    result.elapsed = started.elapsed();
    if let Some(observed) = &result.observed {
        let max_ms = options.max_latency.map(|d| d.as_secs_f64() * 1e3);
        let cells: Vec<_> = observed
            .judged(expected)
            .map(|(k, cell, j, _)| (k, cell, j))
            .collect();
        for (k, cell, judgement) in cells {
            let timing = result.timing.get(k, cell.from, cell.to);
            let allowed = expected.get(k, cell.from, cell.to).allowed();
            let verdict = match (judgement, timing.race(allowed)) {
                (Judgement::Match | Judgement::Wrong, Some(Race::Flapping)) => Verdict::Flapping,
                (Judgement::Match, None) => Verdict::Pass,
                (Judgement::Match, Some(_)) => match (timing.converged_ms, max_ms) {
                    (Some(ms), Some(max)) if ms > max => Verdict::Fail,
                    _ => Verdict::Late,
                },
                (Judgement::Wrong, _) => Verdict::Fail,
                (Judgement::SelfDiffers, _) => Verdict::Undefined,
                (Judgement::Unsupported, _) => Verdict::Unsupported,
                (Judgement::Error, _) => Verdict::Error,
                (Judgement::NotProbed, _) => Verdict::NotProbed,
            };
            result.verdicts.set(k, cell.from, cell.to, verdict);
        }
        result.summary = summarize(&result, observed, &round_starts);
    }
    check_flows(&mut flows, &mut result, options).await;
    result
}

/// Connections one source holds across a step: the agent session and, per target, its cell.
struct HeldFlows {
    held: Held,
    from: usize,
    /// Per target: (port/protocol index, destination).
    cells: Vec<(usize, usize)>,
    established: Vec<bool>,
}

/// Before an allow→deny step: opens a long-lived connection (TCP) or flow (UDP) for every cell
/// that goes from allowed to blocked, one agent session per source pod.
async fn hold_flows<B: Backend>(
    backend: &B,
    analysis: &Analysis,
    changes: &Grid<Change>,
    options: &RunOptions,
) -> Vec<HeldFlows> {
    let pods = analysis.cluster.pods();
    let pps = analysis.table.port_protocols();
    let address = |id: usize| backend.address(&pods[id].key()).unwrap_or(pods[id].ip);
    // Per source: the targets, and each one's (port/protocol index, destination).
    type Plan = (Vec<Target>, Vec<(usize, usize)>);
    let mut per_source: BTreeMap<usize, Plan> = BTreeMap::new();
    for (k, cell, change) in changes.cells() {
        let pp = pps[k];
        let (src, dst) = (&pods[cell.from], &pods[cell.to]);
        if *change != Change::AllowToDeny
            || pp.protocol == Protocol::Sctp
            || cell.from == cell.to
            || !dst.serves(pp)
            || src.ip.is_ipv4() != dst.ip.is_ipv4()
        {
            continue;
        }
        let entry = per_source.entry(cell.from).or_default();
        entry.0.push(Target {
            host: address(cell.to).to_string(),
            port: pp.port,
            protocol: pp.protocol,
        });
        entry.1.push((k, cell.to));
    }
    let opened = per_source
        .into_iter()
        .map(|(from, (targets, cells))| async move {
            let mut held = backend
                .hold(&pods[from].key(), &targets, options.probe_timeout)
                .await
                .ok()?;
            let results = held.established(options.probe_timeout).await.ok()?;
            let established = results
                .iter()
                .map(|r| r.outcome == Outcome::Connected)
                .collect();
            Some(HeldFlows {
                held,
                from,
                cells,
                established,
            })
        });
    futures::future::join_all(opened)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// After the step: re-tests every held connection and records what the deny did to it.
async fn check_flows(flows: &mut [HeldFlows], result: &mut StepResult, options: &RunOptions) {
    let checks = flows.iter_mut().map(|flows| async {
        let results = flows.held.check(options.probe_timeout).await;
        (&*flows, results)
    });
    let mut summary = FlowSummary::default();
    for (flows, results) in futures::future::join_all(checks).await {
        let Ok(results) = results else { continue };
        for ((&(k, to), established), checked) in
            flows.cells.iter().zip(&flows.established).zip(results)
        {
            if !established {
                continue;
            }
            summary.held += 1;
            let fate = if checked.outcome == Outcome::Connected {
                summary.survived += 1;
                match checked.protocol {
                    Protocol::Tcp => summary.tcp_survived += 1,
                    _ => summary.udp_survived += 1,
                }
                FlowFate::Survived
            } else {
                summary.cut += 1;
                FlowFate::Cut
            };
            result.established.set(k, flows.from, to, Some(fate));
        }
    }
    result.summary.established = summary;
}

/// The step's timing figures from its cells' timelines.
fn summarize(result: &StepResult, observed: &ObservedTable, round_starts: &[f64]) -> StepTiming {
    let expected = &result.expected.table;
    let mut by_change: BTreeMap<Change, Vec<f64>> = BTreeMap::new();
    let mut per_node: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut summary = StepTiming::default();
    let max =
        |slot: &mut Option<f64>, value: f64| *slot = Some(slot.map_or(value, |v| v.max(value)));
    for (k, cell, timing) in result.timing.cells() {
        let change = *result.changes.get(k, cell.from, cell.to);
        let allowed = expected.get(k, cell.from, cell.to).allowed();
        if change == Change::NewPod
            && let Some(first) = timing.first_seen_ms
        {
            summary.new_pod_first_probe_ms = Some(
                summary
                    .new_pod_first_probe_ms
                    .map_or(first, |v: f64| v.min(first)),
            );
        }
        if let (Some(ms), true) = (timing.converged_ms, change != Change::Unchanged) {
            by_change.entry(change).or_default().push(ms);
            if let Some(node) = observed.node(cell.to) {
                per_node.entry(node.to_string()).or_default().push(ms);
            }
        }
        match timing.race(allowed) {
            Some(Race::LateDeny) => {
                summary.late_deny += 1;
                if let Some(ms) = timing.converged_ms {
                    max(&mut summary.max_leak_ms, ms);
                    if change == Change::NewPod {
                        max(&mut summary.new_pod_leak_ms, ms);
                    }
                }
            }
            Some(Race::LateAllow) => summary.late_allow += 1,
            Some(Race::NeverConverged) => summary.never_converged += 1,
            Some(Race::Flapping) => summary.flapping += 1,
            None => {}
        }
    }
    let mut stats = |change| LatencyStats::of(by_change.remove(&change).unwrap_or_default());
    summary.allow_to_deny = stats(Change::AllowToDeny);
    summary.deny_to_allow = stats(Change::DenyToAllow);
    summary.new_pod = stats(Change::NewPod);
    if let (Some(first), Some(last), true) = (
        round_starts.first(),
        round_starts.last(),
        round_starts.len() > 1,
    ) {
        summary.round_interval_ms = Some((last - first) / (round_starts.len() - 1) as f64);
    }
    summary.per_node = per_node
        .into_iter()
        .map(|(node, values)| (node, LatencyStats::of(values)))
        .collect();
    summary
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
            let initial = initial_analysis(scenario);
            let set_up = match reconcile(backend, &deployed, &scenario.initial).await {
                Ok(()) => await_baseline(&*backend, &initial, options).await,
                Err(e) => Err(e.to_string()),
            };
            match set_up {
                Err(e) => {
                    result.error = Some(format!("setting up the cluster: {e}"));
                    // The deployment is in an unknown state: start the next scenario from scratch.
                    let _ = reconcile(backend, &scenario.initial, &empty_world()).await;
                    deployed = empty_world();
                }
                Ok(()) => {
                    for index in 0..scenario.steps.len() {
                        let before = match index.checked_sub(1) {
                            Some(previous) => &scenario.steps[previous].analysis.table,
                            None => &initial.table,
                        };
                        let step = run_step(backend, scenario, index, before, options).await;
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
