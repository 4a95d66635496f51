//! The runner: deploy the cluster model through a backend, apply policies, probe the matrix.
//!
//! Layout: `scenarios` (the run: scenarios in order, resets, events), `step` (one step: action,
//! probe rounds, verdicts), `held` (connections held across a step), `timing` (per-cell timelines),
//! `summary` (step, scenario and run totals), `result` (what a run produces), `paths` (targets ×
//! families, each path's analysis and probes), `deadline` (how long a silent probe is waited for),
//! `smoke`,
//! `ramp` (`bench enforcer`'s load ramp), `converge` (`probe`'s rounds).

use std::time::Duration;

pub mod converge;
mod deadline;
mod held;
pub mod pace;
pub mod parallel;
pub mod paths;
pub mod precheck;
pub mod ramp;
mod result;
pub mod scenarios;
pub mod smoke;
pub mod soak;
mod step;
mod summary;
pub mod timing;

pub use deadline::Deadlines;
pub use pace::{PaceOptions, PaceReport, Pacer};
pub use parallel::run_in_parallel;
pub use paths::{PathPlan, pod_address};
pub use result::{RunOptions, RunResult, ScenarioResult, Status, StepResult, Verdict};
pub use scenarios::{Event, run_scenarios};
pub use summary::{RunTotals, ScenarioTotals, TagCounts};

use futures::StreamExt;
use polygraph_agent::wire::Target;

use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError, ProbeTiming};
use crate::matrix::{Observation, ObservedTable};
use crate::model::{Cluster, PortProtocol, ProbePath};
use crate::world::World;

/// How long pods may take to serve their ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Brings the backend from `from` to `to` (`World::changes_to`) and waits until every pod serves.
/// Deploying is reconciling from the empty world; tearing down is reconciling to it.
pub async fn reconcile<B: Backend>(
    backend: &mut B,
    from: &World,
    to: &World,
) -> Result<(), BackendError> {
    for mutation in from.changes_to(to) {
        backend.apply(&mutation).await?;
    }
    backend.wait_ready(READY_TIMEOUT).await
}

/// Probes the matrix of `analysis` on `path`; returns the path's analysis (the yardstick) with
/// what was observed.
pub async fn observe<B: Backend>(
    backend: &B,
    analysis: &Analysis,
    plan: &PathPlan,
    path: ProbePath,
    timeout: Duration,
    pacer: &Pacer,
) -> Result<(Analysis, ObservedTable), BackendError> {
    let real = plan.analysis(backend, analysis, path);
    let observed = probe_matrix(
        backend,
        &real.cluster,
        real.table.port_protocols(),
        path,
        timeout.into(),
        pacer,
    )
    .await?;
    Ok((real, observed))
}

/// How a matrix is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeDesign {
    /// polygraph's: one batch per source pod (every target concurrently, in chunks the pacer
    /// admits) on the pod's agent session, the pacer's `sources` at a time. A round costs about
    /// one timeout.
    Batched,
    /// The design of the tools before it (cyclonus, the upstream e2e suite): one probe per cell,
    /// each its own agent process (locally) or exec (on Kubernetes), `workers` at a time. Every
    /// blocked cell costs a whole timeout of one worker. Kept to measure the difference
    /// (`bench probe --design exec-per-probe`), never used to judge.
    PerCell { workers: usize },
}

/// Probes every (from, to, port/protocol) cell of `cluster` (a path's analysis) on `path` whose
/// destination serves that port, with both ends in the path's family (a single-stack IPv4 pod has
/// no route to an IPv6 one, whatever the policies say): one batch per source, sources in parallel
/// up to the pacer's `sources`, each batch in chunks the pacer admits. Hosts outside the cluster are sources of NodePort paths and destinations of
/// external ones.
pub async fn probe_matrix<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    path: ProbePath,
    timing: ProbeTiming,
    pacer: &Pacer,
) -> Result<ObservedTable, BackendError> {
    probe_matrix_with(
        backend,
        cluster,
        port_protocols,
        path,
        timing,
        pacer,
        ProbeDesign::Batched,
    )
    .await
}

/// `probe_matrix` in either design: the same cells, the same observations, different costs.
pub async fn probe_matrix_with<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    path: ProbePath,
    timing: ProbeTiming,
    pacer: &Pacer,
    design: ProbeDesign,
) -> Result<ObservedTable, BackendError> {
    probe_selected(
        backend,
        cluster,
        port_protocols,
        path,
        timing,
        pacer,
        design,
        |_, _, _| true,
    )
    .await
}

/// Probes again the cells `(pp index, from, to)` of `cells` only, in polygraph's design at the
/// pace of `pacer`: the confirmation of a silence the spec does not expect, or of a leak seen
/// under load (`step`).
pub async fn probe_cells<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    path: ProbePath,
    timing: ProbeTiming,
    pacer: &Pacer,
    cells: &std::collections::BTreeSet<(usize, usize, usize)>,
) -> Result<ObservedTable, BackendError> {
    probe_selected(
        backend,
        cluster,
        port_protocols,
        path,
        timing,
        pacer,
        ProbeDesign::Batched,
        |k, from, to| cells.contains(&(k, from, to)),
    )
    .await
}

/// The cells `select(pp index, from, to)` picks, probed in `design`. This is where every probe
/// passes the pacer: each source's targets go in chunks of one destination node, each chunk sent
/// once the pacer admits it, its observations timed from the round's start.
#[allow(clippy::too_many_arguments)]
async fn probe_selected<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    path: ProbePath,
    timing: ProbeTiming,
    pacer: &Pacer,
    design: ProbeDesign,
    select: impl Fn(usize, usize, usize) -> bool,
) -> Result<ObservedTable, BackendError> {
    let pods = cluster.pods();
    let outside: Vec<bool> = (0..pods.len()).map(|id| cluster.is_outside(id)).collect();
    // Per source, the targets and where each result goes: (pp index, destination).
    let mut plan: Vec<(Target, usize, usize)> = Vec::new();
    for (k, &pp) in port_protocols.iter().enumerate() {
        for (to, dst) in pods.iter().enumerate() {
            if let Some(target) = paths::probe_target(backend, dst, outside[to], pp, path)? {
                plan.push((target, k, to));
            }
        }
    }
    let node_of: Vec<Option<String>> = pods
        .iter()
        .map(|p| backend.node(&p.key()).map(str::to_string))
        .collect();
    // The pacer's name for a destination's node: a backend that names no nodes is one node of
    // its own (each local lane is a cluster of its own, with an enforcer of its own).
    let cluster_name = backend.describe();
    let node_key = |to: usize| node_of[to].as_deref().unwrap_or(&cluster_name);
    let sources = pods
        .iter()
        .enumerate()
        .filter(|(id, _)| paths::is_source(pods, &outside, *id, path));
    // Each unit of work: a source and the chunks of `plan` it probes, each chunk one call to
    // one destination node.
    type Chunk = Vec<(Target, usize, usize)>;
    type Unit<'a> = (usize, &'a crate::model::Pod, Vec<Chunk>);
    let plan = &plan;
    let outside = &outside;
    let select = &select;
    let node_of = &node_of;
    let node_key = &node_key;
    let chunk_size = pacer.chunk();
    let chunked = move |from: usize| -> Vec<Chunk> {
        let mut by_node: std::collections::BTreeMap<&Option<String>, Chunk> = Default::default();
        for cell in plan.iter().filter(|(_, k, to)| {
            select(*k, from, *to) && paths::probes_cell(outside, from, *to, path)
        }) {
            by_node
                .entry(&node_of[cell.2])
                .or_default()
                .push(cell.clone());
        }
        by_node
            .into_values()
            .flat_map(|cells| {
                cells
                    .chunks(chunk_size)
                    .map(<[_]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let units: Vec<Unit> = match design {
        ProbeDesign::Batched => sources
            .map(|(from, src)| (from, src, chunked(from)))
            .filter(|(_, _, chunks)| !chunks.is_empty())
            .collect(),
        ProbeDesign::PerCell { .. } => sources
            .flat_map(|(from, src)| {
                chunked(from)
                    .into_iter()
                    .flatten()
                    .map(move |cell| (from, src, vec![vec![cell]]))
            })
            .collect(),
    };
    let concurrency = match design {
        ProbeDesign::Batched => pacer.sources(),
        ProbeDesign::PerCell { workers } => workers,
    };
    let round_began = tokio::time::Instant::now();
    let probe_chunk = |src: crate::model::PodRef, chunk: Chunk| async move {
        let targets: Vec<Target> = chunk.iter().map(|(t, _, _)| t.clone()).collect();
        let node = chunk.first().map_or("", |(_, _, to)| node_key(*to));
        let admission = pacer.admit(node, targets.len()).await;
        let inflight = admission.inflight;
        let offset_ms = round_began.elapsed().as_secs_f64() * 1e3;
        let results = match design {
            ProbeDesign::Batched => backend.probe(&src, &targets, timing).await,
            ProbeDesign::PerCell { .. } => backend.probe_alone(&src, &targets, timing).await,
        };
        if let Ok(results) = &results {
            admission.finish(results);
        }
        (chunk, results, offset_ms, inflight)
    };
    let mut batches = futures::stream::iter(units.into_iter().map(|(from, src, chunks)| {
        let probe_chunk = &probe_chunk;
        async move {
            let done = futures::future::join_all(
                chunks
                    .into_iter()
                    .map(|chunk| probe_chunk(src.key(), chunk)),
            )
            .await;
            (from, done)
        }
    }))
    .buffer_unordered(concurrency.max(1));

    let mut observed = ObservedTable::new(
        pods.iter().map(|p| p.key()).collect(),
        port_protocols.to_vec(),
    );
    for (index, node) in node_of.iter().enumerate() {
        observed.set_node(index, node.clone());
    }
    while let Some((from, done)) = batches.next().await {
        for (chunk, results, offset_ms, inflight) in done {
            for (result, (_, k, to)) in results?.into_iter().zip(chunk) {
                observed.set(
                    k,
                    from,
                    to,
                    Observation {
                        outcome: result.outcome,
                        started_ms: result.started_ms + offset_ms,
                        elapsed_ms: result.elapsed_ms,
                        peer: result.peer,
                        detail: result.detail,
                        attempts: result.attempts.unwrap_or(1),
                        answer_ms: result.answer_ms,
                        inflight,
                    },
                );
            }
        }
    }
    Ok(observed)
}
