//! Established connections across a step: before an allow→deny step, hold a connection for every
//! cell the deny is about; after it, re-test each and record whether the deny cut it.

use std::collections::BTreeMap;

use polygraph_agent::wire::{Outcome, Target};

use super::paths::probe_target;
use super::result::{RunOptions, StepResult};
use super::timing::{Change, FlowFate, FlowSummary};
use crate::analyze::Analysis;
use crate::backend::{Backend, Held};
use crate::matrix::Grid;
use crate::model::{ProbePath, Protocol};

/// Connections one source holds across a step: the agent session and, per target, its cell.
pub(super) struct HeldFlows {
    held: Held,
    from: usize,
    /// Per target: (port/protocol index, destination).
    cells: Vec<(usize, usize)>,
    established: Vec<bool>,
}

/// Before an allow→deny step: opens a long-lived connection (TCP) or flow (UDP) for every cell
/// that goes from allowed to blocked, one agent session per source pod. `analysis` is the step's,
/// on `path` (pods at the path's addresses).
pub(super) async fn hold_flows<B: Backend>(
    backend: &B,
    analysis: &Analysis,
    path: ProbePath,
    changes: &Grid<Change>,
    options: &RunOptions,
) -> Vec<HeldFlows> {
    // Connections are held between pods; a path with a host outside the cluster holds none.
    if path.target.needs_outside() {
        return Vec::new();
    }
    let pods = analysis.cluster.pods();
    let pps = analysis.table.port_protocols();
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
        let Ok(Some(target)) = probe_target(backend, dst, false, pp, path) else {
            continue;
        };
        let entry = per_source.entry(cell.from).or_default();
        entry.0.push(target);
        entry.1.push((k, cell.to));
    }
    let opened = per_source
        .into_iter()
        .map(|(from, (targets, cells))| async move {
            let held = backend
                .hold(&pods[from].key(), &targets, options.probe_timeout)
                .await
                .ok()?;
            let established = held
                .established()
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
pub(super) async fn check_flows(
    flows: &mut [HeldFlows],
    result: &mut StepResult,
    options: &RunOptions,
) {
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
