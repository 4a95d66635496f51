//! The runner: deploy the cluster model through a backend, apply policies, probe the matrix.
//!
//! Layout: `scenarios` (the run: scenarios in order, resets, events), `step` (one step: action,
//! probe rounds, verdicts), `held` (connections held across a step), `timing` (per-cell timelines),
//! `summary` (step, scenario and run totals), `result` (what a run produces), `smoke`.

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

use crate::analyze::{Analysis, analyze};
use crate::backend::{Backend, BackendError};
use crate::matrix::{Observation, ObservedTable};
use crate::model::{Cluster, PortProtocol};
use crate::world::World;

/// How long pods may take to serve their ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The analysis with every pod at the address the backend gave it. Kubernetes assigns its own pod
/// IPs, and ipBlock answers depend on them; the local backend uses the model's, so this is a no-op
/// there.
pub fn at_real_addresses<B: Backend>(backend: &B, analysis: &Analysis) -> Analysis {
    let moved = analysis
        .cluster
        .pods()
        .iter()
        .any(|p| backend.address(&p.key()).is_some_and(|ip| ip != p.ip));
    if !moved {
        return analysis.clone();
    }
    let mut description = analysis.cluster.description();
    for pod in &mut description.pods {
        let key = crate::model::PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        };
        if let Some(ip) = backend.address(&key) {
            pod.ip = Some(ip.to_string());
        }
    }
    match description.build("real addresses") {
        Ok(cluster) => analyze(
            cluster,
            analysis.policy_set(),
            analysis.table.port_protocols(),
        ),
        // Two pods claiming one address would be the cluster's bug; judge against the model then.
        Err(_) => analysis.clone(),
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

/// Probes the matrix of `analysis` at the pods' real addresses; returns the analysis at those
/// addresses (the yardstick) with what was observed.
pub async fn observe<B: Backend>(
    backend: &B,
    analysis: &Analysis,
    timeout: Duration,
    parallelism: usize,
) -> Result<(Analysis, ObservedTable), BackendError> {
    let real = at_real_addresses(backend, analysis);
    let observed = probe_matrix(
        backend,
        &real.cluster,
        real.table.port_protocols(),
        timeout,
        parallelism,
    )
    .await?;
    Ok((real, observed))
}

/// Probes every (from, to, port/protocol) cell whose destination serves that port and shares the
/// source's IP family (a single-stack IPv4 pod has no route to an IPv6 one, whatever the policies
/// say): one batch per source pod, sources in parallel up to `parallelism`.
pub async fn probe_matrix<B: Backend>(
    backend: &B,
    cluster: &Cluster,
    port_protocols: &[PortProtocol],
    timeout: Duration,
    parallelism: usize,
) -> Result<ObservedTable, BackendError> {
    let pods = cluster.pods();
    // Per source, the targets and where each result goes: (pp index, destination).
    let mut plan: Vec<(Target, usize, usize)> = Vec::new();
    for (k, &pp) in port_protocols.iter().enumerate() {
        for (to, dst) in pods.iter().enumerate() {
            if dst.serves(pp) {
                // The address the cluster gave the pod: the model's may belong to another pod.
                let host = backend.address(&dst.key()).unwrap_or(dst.ip);
                let target = Target {
                    host: host.to_string(),
                    port: pp.port,
                    protocol: pp.protocol,
                };
                plan.push((target, k, to));
            }
        }
    }
    // The plan per address family; each source uses its own family's.
    let family_plan = |v4: bool| -> Vec<(Target, usize, usize)> {
        plan.iter()
            .filter(|(_, _, to)| pods[*to].ip.is_ipv4() == v4)
            .cloned()
            .collect()
    };
    let plans = [family_plan(true), family_plan(false)];
    let mut batches = futures::stream::iter(pods.iter().enumerate().map(|(from, src)| {
        let plan = &plans[usize::from(!src.ip.is_ipv4())];
        async move {
            let targets: Vec<Target> = plan.iter().map(|(t, _, _)| t.clone()).collect();
            (
                from,
                plan,
                backend.probe(&src.key(), &targets, timeout).await,
            )
        }
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
