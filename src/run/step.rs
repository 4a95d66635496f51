//! One step: carry out its action through the backend, then probe the matrix until it matches the
//! spec (and stays so for the stability window) or the deadline passes, and give every cell its
//! verdict.

use std::time::Duration;

use tokio::time::Instant;

use super::held::{check_flows, hold_flows};
use super::result::{RunOptions, StepResult, Verdict};
use super::summary::summarize;
use super::timing::{CellTiming, Race, StepTiming, changes};
use super::{READY_TIMEOUT, at_real_addresses, probe_matrix};
use crate::backend::{Backend, BackendError};
use crate::matrix::{Grid, Judgement, TruthTable};
use crate::scenario::{Action, Scenario};

/// Carries out a step's action; returns the moment of the change (for a new pod: when the backend
/// created it, before it was ready, so the new-pod race counts from its first instant).
pub(super) async fn perform<B: Backend>(
    backend: &mut B,
    action: &Action,
) -> Result<Instant, BackendError> {
    let mutations = action.mutations();
    for mutation in &mutations {
        backend.apply(mutation).await?;
    }
    let changed = Instant::now();
    if mutations.iter().any(|m| m.creates_pod()) {
        backend.wait_ready(READY_TIMEOUT).await?;
    }
    Ok(changed)
}

/// Runs step `index`; `before` is what the spec said before it (the previous step's answer, or
/// the initial world's).
pub(super) async fn run_step<B: Backend>(
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
    result.expected = at_real_addresses(&*backend, &step.analysis);
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
                // A refusal is still a block: the step has converged, the verdict says how.
                Judgement::Match | Judgement::RefusedNotDropped => true,
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
                (Judgement::RefusedNotDropped, _) => Verdict::NotDropped,
                (Judgement::SelfDiffers | Judgement::Undefined, _) => Verdict::Undefined,
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
