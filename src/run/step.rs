//! One step: carry out its action through the backend, then probe the matrix until it matches the
//! spec (and stays so for the stability window) or the deadline passes, and give every cell its
//! verdict.

use std::collections::BTreeSet;
use std::time::Duration;

use polygraph_agent::wire::MAX_ATTEMPTS;
use tokio::time::Instant;

use super::held::{check_flows, hold_flows};
use super::result::{RunOptions, StepResult, Verdict};
use super::summary::summarize;
use super::timing::{CellTiming, Change, Race, StepTiming, changes};
use super::{Deadlines, Pacer, PathPlan, READY_TIMEOUT, probe_matrix};
use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError, ProbeTiming};
use crate::matrix::{Grid, Judgement, Observation, ObservedTable, TruthTable};
use crate::model::ProbePath;
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

/// Runs step `index` on every path of `targets` (one result per path, in order); `before` is what
/// the spec said before it (the previous step's analysis, or the initial world's). The action is
/// carried out once; the paths are then probed one after the other, each until it converges, so
/// timing races are measured on the first.
pub(super) async fn run_step<B: Backend>(
    backend: &mut B,
    scenario: &Scenario,
    index: usize,
    before: &Analysis,
    plan: &PathPlan,
    options: &RunOptions,
    deadlines: &mut Deadlines,
) -> Vec<StepResult> {
    let step = &scenario.steps[index];
    // Held connections go on the first path the cluster has before the change.
    let held_path = plan
        .paths(&*backend, before)
        .first()
        .copied()
        .unwrap_or_default();
    let held_after = plan.analysis(&*backend, &step.analysis, held_path);
    let held_changes = changes(
        &plan.analysis(&*backend, before, held_path).table,
        &held_after.table,
    );
    let mut flows = if options.established {
        hold_flows(&*backend, &held_after, held_path, &held_changes, options).await
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let performed = perform(backend, &step.action).await;
    let apply_time = started.elapsed();
    let changed = match performed {
        Ok(at) => at,
        Err(e) => {
            let mut result = blank(step, held_path, held_changes, before.table.clone());
            result.error = Some(e.to_string());
            result.elapsed = started.elapsed();
            result.apply_time = apply_time;
            return vec![result];
        }
    };
    let mut results = Vec::new();
    for (i, path) in plan
        .paths(&*backend, &step.analysis)
        .into_iter()
        .enumerate()
    {
        // Judge against the pods' addresses on this path (a Kubernetes cluster assigns its own).
        let expected = plan.analysis(&*backend, &step.analysis, path);
        let path_changes = changes(
            &plan.analysis(&*backend, before, path).table,
            &expected.table,
        );
        let mut result = blank(step, path, path_changes, expected.table.clone());
        result.expected = expected;
        result.applied = true;
        result.apply_time = changed.saturating_duration_since(started);
        probe_until_settled(&*backend, &mut result, changed, options, deadlines).await;
        result.elapsed = started.elapsed();
        if i == 0 {
            check_flows(&mut flows, &mut result, options).await;
        }
        let stop = result.error.is_some();
        results.push(result);
        if stop {
            break;
        }
    }
    results
}

/// A step's result before anything was observed on `path`.
fn blank(
    step: &crate::scenario::Step,
    path: ProbePath,
    changes: Grid<crate::run::timing::Change>,
    table: TruthTable,
) -> StepResult {
    let pods = table.pods().to_vec();
    let pps = table.port_protocols().to_vec();
    StepResult {
        expected: step.analysis.clone(),
        name: step.name.clone(),
        origin: step.origin.clone(),
        path,
        elapsed: Duration::ZERO,
        apply_time: Duration::ZERO,
        rounds: 0,
        deadline: None,
        confirmations: 0,
        attempts: 0,
        applied: false,
        observed: None,
        changes,
        timing: Grid::new(pods.clone(), pps.clone(), CellTiming::default()),
        established: Grid::new(pods.clone(), pps.clone(), None),
        verdicts: Grid::new(pods, pps, Verdict::NotProbed),
        summary: StepTiming::default(),
        error: None,
    }
}

/// Silences the spec does not expect (and names that did not resolve where the source may reach
/// the cluster's DNS), in cells this step did not change or that already matched in it, are
/// probed again with the whole timeout before they count (how many: the return value). Such a silence is either a dataplane that regressed or a probe that missed its
/// deadline on a loaded machine; only the second answers now, and its answer replaces the
/// silence, at the time it came. Cells the step changed are left alone until they first match:
/// their silence is what a late allow looks like, and timing it is the point. A connection whose
/// greeting never came (on a lossy network, TCP's retransmissions can outlast the timeout) is
/// probed again too, wherever it is: who answered is what it could not tell.
async fn recheck_silences<B: Backend>(
    backend: &B,
    result: &StepResult,
    observed: &mut ObservedTable,
    options: &RunOptions,
    round_began: Instant,
) -> usize {
    use polygraph_agent::wire::Outcome;
    let expected = &result.expected.table;
    let suspects: BTreeSet<(usize, usize, usize)> = observed
        .judged(expected)
        .filter_map(|(k, cell, judgement, observation)| {
            let observation = observation?;
            let silent = observation.outcome == Outcome::Timeout;
            let settled = *result.changes.get(k, cell.from, cell.to) == Change::Unchanged
                || result.timing.get(k, cell.from, cell.to).matched;
            let unexpected_silence = judgement == Judgement::Wrong
                && silent
                && settled
                && expected.get(k, cell.from, cell.to).allowed();
            // The name's twin of a silence: every lookup attempt lost on the way, in a cell whose
            // source the spec lets reach the cluster's DNS.
            let lost_lookup = judgement == Judgement::Wrong
                && observation.outcome == Outcome::DnsFailed
                && settled;
            let unidentified = judgement == Judgement::Error
                && observation.outcome == Outcome::Connected
                && observation.peer.is_none();
            (unexpected_silence || lost_lookup || unidentified).then_some((k, cell.from, cell.to))
        })
        .collect();
    if suspects.is_empty() {
        return 0;
    }
    // Every attempt the agent makes: the suspects are few, and the attempts go together after
    // the first deadline, so they cost no time. With the round's own count, a lossy network
    // whose loss the runner has not yet learnt (two attempts, the first rounds of a run) could
    // lose the recheck as well, and an allowed cell read as blocked once would stay so.
    let half = ProbeTiming::longest_deadline(options.probe_timeout);
    let whole = ProbeTiming {
        timeout: options.probe_timeout,
        deadline: (!half.is_zero()).then_some(half),
        attempts: MAX_ATTEMPTS,
    };
    let better = |o: &Observation| {
        let unidentified = o.outcome == Outcome::Connected && o.peer.is_none();
        !matches!(o.outcome, Outcome::Timeout | Outcome::DnsFailed) && !unidentified
    };
    probe_again(
        backend,
        result,
        observed,
        whole,
        &options.pacer,
        &suspects,
        round_began,
        better,
    )
    .await;
    suspects.len()
}

/// Probes `cells` of the step's path again with `timing`, at `pacer`'s pace, and puts each answer
/// `keep` accepts in place of the round's observation, timed from the round's start. Returns the
/// observations it replaced, by cell (none when the probe failed: the round's stand).
#[allow(clippy::too_many_arguments)]
async fn probe_again<B: Backend>(
    backend: &B,
    result: &StepResult,
    observed: &mut ObservedTable,
    timing: ProbeTiming,
    pacer: &Pacer,
    cells: &BTreeSet<(usize, usize, usize)>,
    round_began: Instant,
    keep: impl Fn(&Observation) -> bool,
) -> Vec<((usize, usize, usize), Observation)> {
    let offset_ms = round_began.elapsed().as_secs_f64() * 1e3;
    let Ok(again) = super::probe_cells(
        backend,
        &result.expected.cluster,
        result.expected.table.port_protocols(),
        result.path,
        timing,
        pacer,
        cells,
    )
    .await
    else {
        return Vec::new();
    };
    let mut replaced = Vec::new();
    for &(k, from, to) in cells {
        if let Some(answer) = again.get(k, from, to).filter(|o| keep(o)) {
            let mut answer = answer.clone();
            answer.started_ms += offset_ms;
            if let Some(old) = observed.get(k, from, to).cloned() {
                replaced.push(((k, from, to), old));
            }
            observed.set(k, from, to, answer);
        }
    }
    replaced
}

/// How long the load stops before leaks seen under it are probed again at a low rate: enough for
/// an overflowed queue to drain (or its bucket to refill), short against an enforcement gap, so
/// that the replay at load that follows a refutation falls before the next one.
const QUIET: Duration = Duration::from_millis(50);

/// Leaks the spec does not expect, in cells this step did not change or that already matched in
/// it, sent while many connections were in flight (`pace::LOW_LOAD`), are probed again at a low
/// rate (`PaceOptions::gentle`). A cell blocked then leaked because the enforcer gave way under
/// load, not because it misread a policy, if the matrix probed again at the run's pace leaks
/// again (a resync gap that ended meanwhile would not): it is marked failed open (the gentle
/// answer stands in its timeline, so it is neither flapping nor late) and the round's evidence
/// is kept. A leak
/// that persists at the low rate stays what it was. Cells the step changed and have not yet
/// matched leak the same way a late deny does, and timing that is the point: they are looked at
/// only once settled cells have leaked under load in the step, or in the step's `last` round.
/// There a late deny has had the whole deadline: a changed cell that leaks at load and not at a
/// low rate is the enforcer giving way, and judging it "never converged" would blame the policy
/// for a leak the load caused (the cells a queue overflows are the tail of every round, so they
/// may never have matched at all).
async fn confirm_leaks<B: Backend>(
    backend: &B,
    result: &mut StepResult,
    observed: &mut ObservedTable,
    timing: ProbeTiming,
    options: &RunOptions,
    round_began: Instant,
    last: bool,
) {
    use polygraph_agent::wire::Outcome;
    let expected = &result.expected.table;
    let suspects: Vec<((usize, usize, usize), bool)> = observed
        .judged(expected)
        .filter_map(|(k, cell, judgement, observation)| {
            let observation = observation?;
            let settled = *result.changes.get(k, cell.from, cell.to) == Change::Unchanged
                || result.timing.get(k, cell.from, cell.to).matched;
            let leak = judgement == Judgement::Wrong
                && observation.outcome == Outcome::Connected
                && !expected.get(k, cell.from, cell.to).allowed();
            (leak && observation.inflight > super::pace::LOW_LOAD)
                .then_some(((k, cell.from, cell.to), settled))
        })
        .collect();
    // Leaks in cells the step changed are what a late deny looks like: they are looked at only
    // once settled cells leak too, in this round or an earlier one of the step (the signature of
    // an enforcer giving way, which a lagging one does not have).
    let giving_way = result.summary.fail_open_evidence.is_some();
    if !giving_way && !last && !suspects.iter().any(|(_, settled)| *settled) {
        return;
    }
    let suspects: BTreeSet<(usize, usize, usize)> =
        suspects.into_iter().map(|(cell, _)| cell).collect();
    // The load the leaks met: the round's new connections per second, and the most in flight.
    let started: Vec<f64> = observed
        .observations()
        .map(|(_, _, o)| o.started_ms)
        .collect();
    let load_rate = started.len() as f64 / (span_ms(&started).max(1.0) / 1e3);
    let gentle = Pacer::new(options.pacer.options().gentle());
    // The load drops first: an enforcer that gave way drains its queue (or refills its bucket)
    // before it is asked again.
    tokio::time::sleep(QUIET).await;
    let blocked = |o: &Observation| o.outcome.is_blocked();
    let mut confirmed = observed.clone();
    let failed_open = probe_again(
        backend,
        result,
        &mut confirmed,
        timing,
        &gentle,
        &suspects,
        round_began,
        blocked,
    )
    .await;
    // Blocked at a low rate could also be an enforcement gap that just ended (a resync): only
    // load, with the enforcement left as it is, tells them apart. The matrix is probed again at
    // the run's pace; the enforcer failed open only if blocked cells leak at load again.
    if failed_open.is_empty() || !leaks_at_load(backend, result, timing, options).await {
        return;
    }
    *observed = confirmed;
    let leaked_at: Vec<f64> = failed_open.iter().map(|(_, o)| o.started_ms).collect();
    let inflight = failed_open
        .iter()
        .map(|(_, o)| o.inflight)
        .max()
        .unwrap_or(0);
    for &((k, from, to), _) in &failed_open {
        let mut cell = *result.timing.get(k, from, to);
        cell.failed_open = true;
        result.timing.set(k, from, to, cell);
    }
    if !failed_open.is_empty() {
        let burst_ms = span_ms(&leaked_at);
        let evidence = result.summary.fail_open_evidence.get_or_insert_default();
        evidence.cells += failed_open.len();
        if failed_open.len() > evidence.burst_cells {
            evidence.burst_cells = failed_open.len();
            evidence.burst_ms = burst_ms;
            evidence.load_rate = load_rate;
            evidence.load_inflight = inflight;
            evidence.gentle_rate = gentle.options().rate.unwrap_or(0.0);
        }
    }
}

/// Whether the step's matrix, probed at the run's pace, lets a blocked cell through while many
/// connections are in flight.
async fn leaks_at_load<B: Backend>(
    backend: &B,
    result: &StepResult,
    timing: ProbeTiming,
    options: &RunOptions,
) -> bool {
    use polygraph_agent::wire::Outcome;
    let expected = &result.expected.table;
    let Ok(replay) = probe_matrix(
        backend,
        &result.expected.cluster,
        expected.port_protocols(),
        result.path,
        timing,
        &options.pacer,
    )
    .await
    else {
        return false;
    };
    replay
        .judged(expected)
        .any(|(k, cell, judgement, observation)| {
            judgement == Judgement::Wrong
                && !expected.get(k, cell.from, cell.to).allowed()
                && observation.is_some_and(|o| {
                    o.outcome == Outcome::Connected && o.inflight > super::pace::LOW_LOAD
                })
        })
}

/// The time between the first and the last of `at` (ms; 0 for fewer than two).
fn span_ms(at: &[f64]) -> f64 {
    let first = at.iter().copied().fold(f64::INFINITY, f64::min);
    let last = at.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (last - first).max(0.0)
}

/// Probes `result.expected` on its path until every cell matches and stays so for the stability
/// window, or the deadline passes; then gives every cell its verdict.
async fn probe_until_settled<B: Backend>(
    backend: &B,
    result: &mut StepResult,
    changed: Instant,
    options: &RunOptions,
    deadlines: &mut Deadlines,
) {
    let analysis = result.expected.clone();
    let expected = &analysis.table;
    let mut round_starts: Vec<f64> = Vec::new();
    // Set once every cell matches: from then on, only the stability window remains.
    let mut settled_at: Option<Duration> = None;
    loop {
        let round_start = changed.elapsed();
        let round_began = Instant::now();
        let timing = deadlines.timing();
        let mut observed = match probe_matrix(
            backend,
            &analysis.cluster,
            expected.port_protocols(),
            result.path,
            timing,
            &options.pacer,
        )
        .await
        {
            Ok(o) => o,
            Err(e) => {
                result.error = Some(e.to_string());
                break;
            }
        };
        deadlines.learn(&observed, timing);
        // No round follows one that ends this late (unless every cell matched, and then nothing
        // leaked): its leaks get their last look here.
        let last = settled_at.is_none()
            && changed.elapsed() + options.probe_timeout > options.step_deadline;
        let rechecked =
            recheck_silences(backend, result, &mut observed, options, round_began).await;
        confirm_leaks(
            backend,
            result,
            &mut observed,
            timing,
            options,
            round_began,
            last,
        )
        .await;
        result.confirmations += rechecked;
        result.rounds += 1;
        result.deadline = result.deadline.max(timing.effective_deadline());
        result.confirmations += observed.confirmations();
        if timing.effective_deadline().is_some() {
            result.attempts = result.attempts.max(timing.attempts);
        }
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
                // Whatever the cell did later: it leaked under load.
                (_, Some(Race::FailOpen)) => Verdict::FailOpen,
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
        // Gathered round by round (`confirm_leaks`): the summary is computed anew.
        let evidence = result.summary.fail_open_evidence.take();
        result.summary = summarize(result, observed, &round_starts);
        result.summary.fail_open_evidence = evidence;
    }
}
