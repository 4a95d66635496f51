//! The runner: deploy the cluster model through a backend, apply policies, probe the matrix.
//!
//! Layout: `scenarios` (the run: scenarios in order, resets, events), `step` (one step: action,
//! probe rounds, verdicts), `held` (connections held across a step), `timing` (per-cell timelines),
//! `summary` (step, scenario and run totals), `result` (what a run produces), `smoke`.

use std::net::IpAddr;
use std::time::Duration;

mod held;
mod result;
pub mod scenarios;
pub mod smoke;
mod step;
mod summary;
pub mod timing;

pub use result::{RunOptions, RunResult, ScenarioResult, Status, StepResult, Verdict};
pub use scenarios::{Event, run_scenarios};
pub use summary::{RunTotals, ScenarioTotals, TagCounts};

use futures::StreamExt;
use polygraph_agent::wire::Target;

use crate::analyze::Analysis;
use crate::backend::{Backend, BackendError};
use crate::matrix::{Observation, ObservedTable};
use crate::model::{Cluster, Family, Pod, PortProtocol, ProbePath, ProbeTarget};
use crate::world::World;

/// How long pods may take to serve their ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod's address in `family`, where the backend put it (Kubernetes assigns its own; the local
/// cluster adds an IPv6 one when dual-stack); the model's address when the backend has none.
pub fn pod_address<B: Backend>(backend: &B, pod: &Pod, family: Family) -> Option<IpAddr> {
    let real = backend.addresses(&pod.key());
    if real.is_empty() {
        return (Family::of(pod.ip) == family).then_some(pod.ip);
    }
    real.into_iter().find(|ip| Family::of(*ip) == family)
}

/// The paths a step is probed on: each target in each family some pod has, IPv4 first.
pub fn paths<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    targets: &[ProbeTarget],
) -> Vec<ProbePath> {
    let families: Vec<Family> = [Family::V4, Family::V6]
        .into_iter()
        .filter(|&f| {
            cluster
                .pods()
                .iter()
                .any(|p| pod_address(backend, p, f).is_some())
        })
        .collect();
    let targets = if targets.is_empty() {
        &[ProbeTarget::PodIp][..]
    } else {
        targets
    };
    targets
        .iter()
        .flat_map(|&target| {
            families
                .iter()
                .map(move |&family| ProbePath { target, family })
        })
        .collect()
}

/// The analysis of one path: every pod at its address in the path's family (ipBlock answers
/// depend on it), judged the way traffic through the path's target is. Pods without an address in
/// the family keep theirs and are not probed on this path.
pub fn path_analysis<B: Backend>(backend: &B, analysis: &Analysis, path: ProbePath) -> Analysis {
    analysis
        .at_addresses(|pod| pod_address(backend, pod, path.family))
        .for_target(path.target)
}

/// Where a probe on `path` to `dst` (a pod of the path's analysis) goes: its own address, or its
/// Service's address in the family. `Ok(None)`: the pod has no address in the family, or serves
/// nothing.
pub fn target_host<B: Backend>(
    backend: &B,
    dst: &Pod,
    path: ProbePath,
) -> Result<Option<IpAddr>, BackendError> {
    // A pod serving nothing is never a destination (and has no Service).
    if Family::of(dst.ip) != path.family || dst.ports.is_empty() {
        return Ok(None);
    }
    match path.target {
        ProbeTarget::PodIp => Ok(Some(dst.ip)),
        ProbeTarget::Service => backend
            .service_addresses(&dst.key())
            .into_iter()
            .find(|ip| Family::of(*ip) == path.family)
            .map(Some)
            .ok_or_else(|| BackendError::Pod {
                pod: dst.key(),
                message: format!(
                    "no {} Service address to probe (--target service)",
                    path.family
                ),
            }),
    }
}

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
    path: ProbePath,
    timeout: Duration,
    parallelism: usize,
) -> Result<(Analysis, ObservedTable), BackendError> {
    let real = path_analysis(backend, analysis, path);
    let observed = probe_matrix(
        backend,
        &real.cluster,
        real.table.port_protocols(),
        path,
        timeout,
        parallelism,
    )
    .await?;
    Ok((real, observed))
}

/// Probes every (from, to, port/protocol) cell on `path` whose destination serves that port, with
/// both pods in the path's family (`cluster` is the path's analysis: pods at their family's
/// addresses; a single-stack IPv4 pod has no route to an IPv6 one, whatever the policies say): one
/// batch per source pod, sources in parallel up to `parallelism`.
pub async fn probe_matrix<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    path: ProbePath,
    timeout: Duration,
    parallelism: usize,
) -> Result<ObservedTable, BackendError> {
    let pods = cluster.pods();
    let hosts: Vec<Option<IpAddr>> = pods
        .iter()
        .map(|dst| target_host(backend, dst, path))
        .collect::<Result<_, _>>()?;
    // Per source, the targets and where each result goes: (pp index, destination).
    let mut plan: Vec<(Target, usize, usize)> = Vec::new();
    for (k, &pp) in port_protocols.iter().enumerate() {
        for (to, dst) in pods.iter().enumerate() {
            if let (true, Some(host)) = (dst.serves(pp), hosts[to]) {
                let target = Target {
                    host: host.to_string(),
                    port: pp.port,
                    protocol: pp.protocol,
                };
                plan.push((target, k, to));
            }
        }
    }
    let sources = pods
        .iter()
        .enumerate()
        .filter(|(_, src)| Family::of(src.ip) == path.family);
    let plan = &plan;
    let mut batches = futures::stream::iter(sources.map(|(from, src)| async move {
        let targets: Vec<Target> = plan.iter().map(|(t, _, _)| t.clone()).collect();
        (
            from,
            plan,
            backend.probe(&src.key(), &targets, timeout).await,
        )
    }))
    .buffer_unordered(parallelism.max(1));

    let mut observed = ObservedTable::new(
        pods.iter().map(|p| p.key()).collect(),
        port_protocols.to_vec(),
    );
    for (index, pod) in pods.iter().enumerate() {
        observed.set_node(index, backend.node(&pod.key()).map(str::to_string));
    }
    while let Some((from, plan, results)) = batches.next().await {
        for (result, (_, k, to)) in results?.into_iter().zip(plan) {
            observed.set(
                *k,
                from,
                *to,
                Observation {
                    outcome: result.outcome,
                    started_ms: result.started_ms,
                    elapsed_ms: result.elapsed_ms,
                    peer: result.peer,
                    detail: result.detail,
                },
            );
        }
    }
    Ok(observed)
}
