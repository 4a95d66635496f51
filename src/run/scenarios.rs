//! Running scenarios: deploy each cluster model once, run its scenarios' steps, reset in between
//! (back to each scenario's starting world, then probing until the cluster enforces it), and clean
//! up at the end.

use std::time::Duration;

use tokio::time::Instant;

use super::result::{RunOptions, RunResult, ScenarioResult, StepResult};
use super::step::run_step;
use super::summary::{RunTotals, ScenarioTotals};
use super::{Deadlines, PathPlan, probe_matrix, reconcile};
use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError};
use crate::matrix::Judgement;
use crate::policy::ClusterKind;
use crate::scenario::Scenario;
use crate::world::{Mutation, World};

/// What the runner reports while it works; the terminal display consumes these.
pub enum Event<'a> {
    ScenarioStarted {
        scenario: &'a Scenario,
    },
    /// Before the step's action is carried out.
    StepStarted {
        scenario: &'a Scenario,
        index: usize,
    },
    StepFinished {
        scenario: &'a Scenario,
        step: &'a StepResult,
    },
    ScenarioFinished {
        result: &'a ScenarioResult,
    },
    /// After the last scenario, before everything is removed.
    TearingDown,
}

/// Probes until the cluster enforces the scenario's initial world: a lagging dataplane may still
/// enforce the previous scenario, and the first step's timing must start from a clean baseline.
async fn await_baseline<B: Backend>(
    backend: &B,
    initial: &Analysis,
    plan: &PathPlan,
    options: &RunOptions,
    deadlines: &mut Deadlines,
) -> Result<(), String> {
    // The first path is enough: the question is which policies the dataplane enforces.
    let path = plan
        .paths(backend, initial)
        .first()
        .copied()
        .unwrap_or_default();
    let analysis = plan.analysis(backend, initial, path);
    let started = Instant::now();
    loop {
        let round_began = Instant::now();
        let timing = deadlines.timing();
        let observed = probe_matrix(
            backend,
            &analysis.cluster,
            analysis.table.port_protocols(),
            path,
            timing,
            &options.pacer,
        )
        .await
        .map_err(|e| e.to_string())?;
        deadlines.learn(&observed, timing);
        let wrong: Vec<String> = observed
            .judged(&analysis.table)
            .filter(|(_, _, j, _)| *j == Judgement::Wrong)
            .map(|(_, cell, _, observation)| {
                let pods = analysis.table.pods();
                let seen = observation.map_or("nothing".to_string(), |o| match &o.detail {
                    Some(detail) => format!("{} ({detail})", o.outcome),
                    None => o.outcome.to_string(),
                });
                format!(
                    "{} → {} {}: {seen}",
                    pods[cell.from], pods[cell.to], cell.port_protocol
                )
            })
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        if started.elapsed() + options.probe_timeout > options.step_deadline {
            // A few of the cells, so the line says what the dataplane did, not only how often.
            const SHOWN: usize = 3;
            let more = wrong.len().saturating_sub(SHOWN);
            return Err(format!(
                "the cluster did not return to the scenario's initial state: {} cells still differ after {:.1} s, e.g. {}{}",
                wrong.len(),
                started.elapsed().as_secs_f64(),
                wrong[..wrong.len().min(SHOWN)].join("; "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        tokio::time::sleep(options.poll_interval.saturating_sub(round_began.elapsed())).await;
    }
}

/// Runs scenarios, those sharing a cluster model one after the other on one deployment (reset in
/// between), models in the order they first appear; the results come back in the scenarios' order.
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
    let mut deployed = World::empty();
    // What the answers so far say a silent probe is worth waiting for: learnt over the whole run.
    let mut deadlines = Deadlines::new(options.probe_timeout);
    for key in order {
        for (index, scenario) in scenarios
            .iter()
            .enumerate()
            .filter(|(_, s)| s.model_key == key)
        {
            on_event(Event::ScenarioStarted { scenario });
            let scenario_start = Instant::now();
            let mut result = ScenarioResult {
                scenario: scenario.clone(),
                steps: Vec::new(),
                elapsed: Duration::ZERO,
                error: None,
                unsupported: None,
                not_enforced: None,
                warnings: Vec::new(),
                totals: ScenarioTotals::default(),
            };
            let plan = match prepare(backend, scenario, options).await {
                Ok((warnings, plan)) => {
                    result.warnings = warnings;
                    plan
                }
                Err(reason) => {
                    result.unsupported = Some(reason);
                    result.elapsed = scenario_start.elapsed();
                    on_event(Event::ScenarioFinished { result: &result });
                    results.push((index, result));
                    continue;
                }
            };
            let initial = initial_analysis(scenario);
            let set_up = match reconcile(backend, &deployed, &scenario.initial).await {
                Ok(()) => match missing_family(&*backend, scenario) {
                    // Deployed, but not in every family it is about: unsupported, never IPv4
                    // alone in silence.
                    Some(reason) => {
                        result.unsupported = Some(reason);
                        result.elapsed = scenario_start.elapsed();
                        deployed = scenario.initial.clone();
                        on_event(Event::ScenarioFinished { result: &result });
                        results.push((index, result));
                        continue;
                    }
                    None => {
                        await_baseline(&*backend, &initial, &plan, options, &mut deadlines).await
                    }
                },
                // The cluster refuses what the scenario needs (a host-network pod under Pod
                // Security): unsupported here, with the refusal as the reason.
                Err(e @ BackendError::Refused { .. }) => {
                    result.unsupported = Some(e.to_string());
                    result.elapsed = scenario_start.elapsed();
                    let _ = reconcile(backend, &scenario.initial, &World::empty()).await;
                    deployed = World::empty();
                    on_event(Event::ScenarioFinished { result: &result });
                    results.push((index, result));
                    continue;
                }
                Err(e) => Err(e.to_string()),
            };
            match set_up {
                Err(e) => {
                    result.error = Some(format!("setting up the cluster: {e}"));
                    // The deployment is in an unknown state: start the next scenario from scratch.
                    let _ = reconcile(backend, &scenario.initial, &World::empty()).await;
                    deployed = World::empty();
                }
                Ok(()) => {
                    for index in 0..scenario.steps.len() {
                        let before = match index.checked_sub(1) {
                            Some(previous) => &scenario.steps[previous].analysis,
                            None => &initial,
                        };
                        on_event(Event::StepStarted { scenario, index });
                        let steps = run_step(
                            backend,
                            scenario,
                            index,
                            before,
                            &plan,
                            options,
                            &mut deadlines,
                        )
                        .await;
                        let stop = steps.iter().any(|s| s.error.is_some());
                        for step in steps {
                            on_event(Event::StepFinished {
                                scenario,
                                step: &step,
                            });
                            result.steps.push(step);
                        }
                        if stop {
                            result.error = Some(
                                "a step could not be carried out; the rest were skipped".into(),
                            );
                            break;
                        }
                    }
                    // Where the cluster is now: every action the backend accepted, replayed.
                    let mut now = scenario.initial.clone();
                    for step in &scenario.steps {
                        let applied = result
                            .steps
                            .iter()
                            .any(|r| r.applied && r.name == step.name && r.origin == step.origin);
                        if applied {
                            let _ = now.apply_all(&step.action.mutations());
                        }
                    }
                    deployed = now;
                }
            }
            result.elapsed = scenario_start.elapsed();
            result.totals = ScenarioTotals::of(&result.steps);
            on_event(Event::ScenarioFinished { result: &result });
            results.push((index, result));
        }
    }
    results.sort_by_key(|(index, _)| *index);
    let results: Vec<ScenarioResult> = results.into_iter().map(|(_, r)| r).collect();
    on_event(Event::TearingDown);
    let _ = reconcile(backend, &deployed, &World::empty()).await;
    RunResult {
        backend: backend.describe(),
        sessions_broken: backend.sessions_broken(),
        totals: RunTotals::of(&results),
        scenarios: results,
        elapsed: started.elapsed(),
        pace: options.pacer.report(),
        options: options.clone(),
        apis: Vec::new(),
        // A lane's result: `run_in_parallel` asks the cluster once for the run.
        cluster: Default::default(),
    }
}

/// What a scenario needs from the backend before anything is deployed: the cluster-scoped kinds
/// it uses (with warnings about the cluster's own policies that could change the answers) and the
/// hosts outside the cluster its targets need (`--target` overrides the scenario's own).
/// `Err(reason)`: the scenario cannot run here, and is unsupported.
async fn prepare<B: Backend>(
    backend: &mut B,
    scenario: &Scenario,
    options: &RunOptions,
) -> Result<(Vec<String>, PathPlan), String> {
    if !scenario.chosen_addresses.is_empty() && !backend.chooses_addresses() {
        return Err(format!(
            "the scenario creates pods at addresses of its choosing ({}) and this cluster's IPAM picks pod addresses itself",
            scenario.chosen_addresses.join(", ")
        ));
    }
    let kinds = cluster_kinds(scenario);
    let warnings = if kinds.is_empty() {
        Vec::new()
    } else {
        let namespaces = scenario.initial.cluster().namespaces();
        let warnings = backend.cluster_policy_support(&kinds, namespaces).await?;
        // The standard channel has no named ports (experimental since network-policy-api
        // v0.2.1): the API server would prune them and apply what is left, another policy.
        for &kind in &kinds {
            if let Some(crd) = backend.cluster_policy_bundle(kind)
                && crd.is_standard()
                && uses_named_ports(scenario, kind)
            {
                return Err(format!(
                    "the scenario's {kind} names ports (destinationNamedPort), which the cluster's {crd} does not have: named ports are experimental since network-policy-api v0.2.1"
                ));
            }
        }
        warnings
    };
    let targets = if options.targets.is_empty() {
        &scenario.targets
    } else {
        &options.targets
    };
    let clusters: Vec<&crate::model::Cluster> = std::iter::once(scenario.initial.cluster())
        .chain(scenario.steps.iter().map(|s| &s.analysis.cluster))
        .collect();
    let mut plan = PathPlan::prepare(backend, targets, &scenario.port_protocols, &clusters).await?;
    plan.families = scenario
        .families
        .or(options.families)
        .map(|f| f.families().to_vec());
    plan.hairpin = options.service_hairpin;
    Ok((warnings, plan))
}

/// Why a scenario about IP families (`ip-family:`) cannot be judged here: a family it names in
/// which no pod of its cluster has an address.
fn missing_family<B: Backend>(backend: &B, scenario: &Scenario) -> Option<String> {
    let wanted = scenario.families?;
    let pods = scenario.initial.cluster().pods();
    let missing: Vec<String> = wanted
        .families()
        .iter()
        .filter(|&&f| {
            !pods
                .iter()
                .any(|p| super::pod_address(backend, p, f).is_some())
        })
        .map(ToString::to_string)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the scenario is about {} traffic and the cluster gives its pods no {} address (a single-stack cluster; on polygraph's own, --ip-family {})",
            wanted.families().iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
            missing.join(" or "),
            clap::ValueEnum::to_possible_value(&wanted)
                .map_or_else(String::new, |v| v.get_name().to_string())
        )
    })
}

/// Whether any of the scenario's `kind` policies, at its start or in any step, names a port.
fn uses_named_ports(scenario: &Scenario, kind: ClusterKind) -> bool {
    std::iter::once(&scenario.initial)
        .map(|w| w.cluster_policies().to_vec())
        .chain(
            scenario
                .steps
                .iter()
                .map(|s| s.analysis.cluster_policies.clone()),
        )
        .flatten()
        .filter(|p| p.kind == kind)
        .any(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .any(|rule| rule.has_named_ports())
        })
}

/// The cluster-scoped kinds a scenario uses, at its start or in any step.
fn cluster_kinds(scenario: &Scenario) -> Vec<ClusterKind> {
    let mut kinds: Vec<ClusterKind> = scenario
        .initial
        .cluster_policies()
        .iter()
        .map(|p| p.kind)
        .chain(scenario.steps.iter().flat_map(|step| {
            step.action.mutations().into_iter().filter_map(|m| match m {
                Mutation::ApplyClusterPolicy(p) => Some(p.kind),
                Mutation::DeleteClusterPolicy { kind, .. } => Some(kind),
                _ => None,
            })
        }))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The spec's answer for the scenario's initial world.
fn initial_analysis(scenario: &Scenario) -> Analysis {
    crate::analyze::analyze(
        scenario.initial.cluster().clone(),
        scenario.initial.policy_set(),
        &scenario.port_protocols,
    )
}
