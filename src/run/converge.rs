//! `polygraph probe`'s rounds: probe every path until the matrix is what the spec says or a
//! deadline passes, as `run` does for each step. A cluster enforces a policy some time after it
//! was applied; one snapshot right after applying mixes that delay with the verdicts.

use std::collections::BTreeMap;
use std::time::Duration;

use polygraph_agent::wire::Outcome;
use serde::Serialize;

use super::{Pacer, PathPlan, observe};
use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError};
use crate::matrix::ObservedTable;
use crate::model::{Family, ProbePath, ProbeTarget, Protocol};

/// How `probe` waits for enforcement.
#[derive(Debug, Clone, Copy)]
pub struct ConvergeOptions {
    pub timeout: Duration,
    /// Rounds go on until this long after the first began; the last round's table is the answer.
    pub deadline: Duration,
    /// Between rounds.
    pub poll_interval: Duration,
    /// One round, whatever it shows (`--snapshot`).
    pub snapshot: bool,
}

/// What the rounds showed about convergence.
#[derive(Debug, Clone, Serialize)]
pub struct Convergence {
    pub rounds: usize,
    /// Every cell as the spec says in the last round. False after a snapshot that differed.
    pub converged: bool,
    /// One round only, by request.
    pub snapshot: bool,
    /// From the first round's start to the start of the round that matched (or the last one).
    pub elapsed_ms: f64,
    /// Cells wrong in an earlier round that matched by the last: enforcement lag, not a verdict.
    pub late: Vec<LateCell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LateCell {
    pub target: ProbeTarget,
    pub family: Family,
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// What the first round saw.
    pub first: Outcome,
    /// What it settled to, as the spec says.
    pub settled: Outcome,
    /// The start of the first round it matched in (and kept matching), from the first round's.
    pub matched_after_ms: f64,
}

/// Each path's analysis (as the cluster placed the pods) and what its last round observed.
pub type PathObservation = (ProbePath, Analysis, ObservedTable);

/// Probes every path of `plan` in rounds until no cell fails or the deadline passes.
pub async fn observe_until_converged<B: Backend>(
    backend: &B,
    analysis: &Analysis,
    plan: &PathPlan,
    pacer: &Pacer,
    options: ConvergeOptions,
) -> Result<(Vec<PathObservation>, Convergence), BackendError> {
    let began = tokio::time::Instant::now();
    // Per (path, pp index, from, to): the first outcome seen wrong, and when it last was.
    let mut wrong_once: BTreeMap<(usize, usize, usize, usize), (Outcome, f64)> = BTreeMap::new();
    let mut starts: Vec<f64> = Vec::new();
    loop {
        let round_began = began.elapsed().as_secs_f64() * 1e3;
        starts.push(round_began);
        let mut observed = Vec::new();
        for path in plan.paths(backend, analysis) {
            let (real, table) =
                observe(backend, analysis, plan, path, options.timeout, pacer).await?;
            observed.push((path, real, table));
        }
        let mut failing = 0;
        for (p, (_, real, table)) in observed.iter().enumerate() {
            for (k, cell, judgement, observation) in table.judged(&real.table) {
                if judgement.fails() {
                    failing += 1;
                    let outcome = observation.map_or(Outcome::Error, |o| o.outcome);
                    wrong_once
                        .entry((p, k, cell.from, cell.to))
                        .and_modify(|(_, last)| *last = round_began)
                        .or_insert((outcome, round_began));
                }
            }
        }
        let out_of_time = began.elapsed() + options.poll_interval >= options.deadline;
        if failing == 0 || options.snapshot || out_of_time {
            let late = late_cells(&observed, &wrong_once, &starts);
            let convergence = Convergence {
                rounds: starts.len(),
                converged: failing == 0,
                snapshot: options.snapshot,
                elapsed_ms: round_began,
                late,
            };
            return Ok((observed, convergence));
        }
        tokio::time::sleep(options.poll_interval).await;
    }
}

/// Cells once wrong that the last round saw as the spec says.
fn late_cells(
    observed: &[PathObservation],
    wrong_once: &BTreeMap<(usize, usize, usize, usize), (Outcome, f64)>,
    starts: &[f64],
) -> Vec<LateCell> {
    let last_round = starts.last().copied().unwrap_or_default();
    let mut late = Vec::new();
    for (&(p, k, from, to), &(first, last_wrong)) in wrong_once {
        if last_wrong >= last_round {
            continue; // still wrong in the last round
        }
        let Some((path, _, table)) = observed.get(p) else {
            continue;
        };
        let Some(observation) = table.get(k, from, to) else {
            continue;
        };
        let pods = table.pods();
        let pp = table.port_protocols()[k];
        late.push(LateCell {
            target: path.target,
            family: path.family,
            from: pods[from].to_string(),
            to: pods[to].to_string(),
            port: pp.port,
            protocol: pp.protocol,
            first,
            settled: observation.outcome,
            // It matched from the round after its last wrong one.
            matched_after_ms: starts
                .iter()
                .copied()
                .find(|start| *start > last_wrong)
                .unwrap_or(last_round),
        });
    }
    late
}
