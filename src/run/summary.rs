//! Timing figures: per step from its cells' timelines, and the totals of a scenario and a run, so
//! that reports only render.

use std::collections::BTreeMap;

use serde::Serialize;

use super::result::{ScenarioResult, Status, StepResult, Verdict};
use super::timing::{Change, FlowSummary, LatencyStats, Race, StepTiming};
use crate::matrix::ObservedTable;

/// The step's timing figures from its cells' timelines.
pub(super) fn summarize(
    result: &StepResult,
    observed: &ObservedTable,
    round_starts: &[f64],
) -> StepTiming {
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
            Some(Race::FailOpen) => summary.fail_open += 1,
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

/// A scenario's races and cell counts over its steps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioTotals {
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    /// Cells that leaked under load only (`fail-open`): not a policy bug, still a leak.
    pub fail_open: usize,
    pub max_leak_ms: Option<f64>,
    pub established: FlowSummary,
    /// Cells by verdict over all steps.
    pub cells: BTreeMap<Verdict, usize>,
    pub steps_passed: usize,
}

impl ScenarioTotals {
    pub fn of(steps: &[StepResult]) -> ScenarioTotals {
        let mut totals = ScenarioTotals::default();
        for step in steps {
            let t = &step.summary;
            totals.late_deny += t.late_deny;
            totals.late_allow += t.late_allow;
            totals.never_converged += t.never_converged;
            totals.flapping += t.flapping;
            totals.fail_open += t.fail_open;
            totals.max_leak_ms = max_of(totals.max_leak_ms, t.max_leak_ms);
            totals.established.add(&t.established);
            for verdict in step.verdicts.values() {
                *totals.cells.entry(*verdict).or_default() += 1;
            }
            totals.steps_passed += usize::from(step.passed());
        }
        totals
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.cells.get(&verdict).copied().unwrap_or(0)
    }
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The whole run's enforcement timing, races, held connections and scenario counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunTotals {
    pub allow_to_deny: LatencyStats,
    pub deny_to_allow: LatencyStats,
    pub new_pod: LatencyStats,
    /// Latency of changed cells by destination node, where the backend knows nodes.
    pub per_node: BTreeMap<String, LatencyStats>,
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    /// Cells that leaked under load only (`fail-open`), kept apart from the policy bugs.
    pub fail_open: usize,
    pub max_leak_ms: Option<f64>,
    pub established: FlowSummary,
    pub scenarios_passed: usize,
    pub scenarios_failed: usize,
    pub scenarios_unsupported: usize,
    pub steps: usize,
    /// Scenarios by status, per feature tag.
    pub per_tag: BTreeMap<String, TagCounts>,
}

/// Scenarios of one feature tag, by status.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TagCounts {
    pub passed: usize,
    pub failed: usize,
    pub unsupported: usize,
}

impl TagCounts {
    pub fn add(&mut self, status: Status) {
        match status {
            Status::Passed => self.passed += 1,
            Status::Failed => self.failed += 1,
            Status::Unsupported => self.unsupported += 1,
        }
    }

    /// Failed if any failed, passed if any passed, unsupported otherwise.
    pub fn status(&self) -> Status {
        if self.failed > 0 {
            Status::Failed
        } else if self.passed > 0 {
            Status::Passed
        } else {
            Status::Unsupported
        }
    }
}

impl RunTotals {
    /// From the scenarios' own totals (races, held connections) and their cells' timelines
    /// (latency percentiles need every value).
    pub fn of(scenarios: &[ScenarioResult]) -> RunTotals {
        let mut totals = RunTotals::default();
        let mut counts = TagCounts::default();
        let mut by_change: [Vec<f64>; 3] = Default::default();
        let mut by_node: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for scenario in scenarios {
            let status = scenario.status();
            counts.add(status);
            for tag in &scenario.scenario.tags {
                totals.per_tag.entry(tag.clone()).or_default().add(status);
            }
            totals.steps += scenario.steps.len();
            let t = &scenario.totals;
            totals.late_deny += t.late_deny;
            totals.late_allow += t.late_allow;
            totals.never_converged += t.never_converged;
            totals.flapping += t.flapping;
            totals.fail_open += t.fail_open;
            totals.max_leak_ms = max_of(totals.max_leak_ms, t.max_leak_ms);
            totals.established.add(&t.established);
            for step in &scenario.steps {
                for (k, cell, timing) in step.timing.cells() {
                    let slot = match step.changes.get(k, cell.from, cell.to) {
                        Change::AllowToDeny => 0,
                        Change::DenyToAllow => 1,
                        Change::NewPod => 2,
                        Change::Unchanged => continue,
                    };
                    by_change[slot].extend(timing.converged_ms);
                    let node = step.observed.as_ref().and_then(|o| o.node(cell.to));
                    if let (Some(node), Some(ms)) = (node, timing.converged_ms) {
                        by_node.entry(node.to_string()).or_default().push(ms);
                    }
                }
            }
        }
        totals.scenarios_passed = counts.passed;
        totals.scenarios_failed = counts.failed;
        totals.scenarios_unsupported = counts.unsupported;
        let [deny, allow, new] = by_change.map(LatencyStats::of);
        totals.allow_to_deny = deny;
        totals.deny_to_allow = allow;
        totals.new_pod = new;
        totals.per_node = by_node
            .into_iter()
            .map(|(node, values)| (node, LatencyStats::of(values)))
            .collect();
        totals
    }
}
