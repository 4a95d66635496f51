//! Scenarios on several clusters at once (`--parallel-scenarios`): each backend is a lane of its
//! own (a local cluster of its own, or its own namespace set on Kubernetes), so lanes share no
//! state. Scenarios are dealt to lanes by their steps, each lane runs its share in order with
//! `run_scenarios`, and the results come back in the library's order, the run's totals computed
//! over all of them.

use std::cell::RefCell;

use tokio::time::Instant;

use super::precheck::{ApiCheck, ApiVerdict, PolicyApi, apis_used, check_apis};
use super::scenarios::{Event, run_scenarios};
use super::{RunOptions, RunResult, RunTotals, ScenarioResult};
use crate::backend::Backend;
use crate::scenario::Scenario;

/// Which lane runs which scenario: each in turn to the lane with the fewest steps so far (the
/// first such lane), so lanes finish close together. Returns the scenarios' indices per lane.
pub fn deal(scenarios: &[Scenario], lanes: usize) -> Vec<Vec<usize>> {
    let lanes = lanes.max(1);
    let mut dealt: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    let mut load = vec![0usize; lanes];
    for (index, scenario) in scenarios.iter().enumerate() {
        let lane = (0..lanes).min_by_key(|&l| load[l]).unwrap_or(0);
        dealt[lane].push(index);
        // A scenario costs its steps and its reset.
        load[lane] += scenario.steps.len() + 1;
    }
    dealt
}

/// Runs `scenarios` on `backends`, one lane each, concurrently on this task (backends need not
/// be `Send`); events from all lanes reach `on_event` as they happen. With `options.precheck`,
/// the policy APIs the scenarios use are checked first on the first lane, and the scenarios of
/// an API nothing enforces fail at once (`run::precheck`).
pub async fn run_in_parallel<B: Backend>(
    backends: &mut [B],
    scenarios: &[Scenario],
    options: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> RunResult {
    let started = Instant::now();
    let cluster = match backends.first_mut() {
        Some(first) => first.cluster_info().await,
        None => Default::default(),
    };
    let apis = match backends.first_mut() {
        Some(first) if options.precheck => precheck(first, scenarios, options).await,
        _ => Vec::new(),
    };
    let mut failed_at_once: Vec<(usize, ScenarioResult)> = Vec::new();
    let mut to_run: Vec<usize> = Vec::new();
    for (index, scenario) in scenarios.iter().enumerate() {
        let reason = PolicyApi::used_by(scenario).into_iter().find_map(|api| {
            apis.iter()
                .find(|check| check.api == api)
                .and_then(ApiCheck::not_enforced)
        });
        match reason {
            Some(reason) => {
                let result = ScenarioResult {
                    scenario: scenario.clone(),
                    steps: Vec::new(),
                    elapsed: std::time::Duration::ZERO,
                    error: None,
                    unsupported: None,
                    not_enforced: Some(reason),
                    warnings: Vec::new(),
                    totals: Default::default(),
                };
                on_event(Event::ScenarioStarted { scenario });
                on_event(Event::ScenarioFinished { result: &result });
                failed_at_once.push((index, result));
            }
            None => to_run.push(index),
        }
    }
    let runnable: Vec<Scenario> = to_run.iter().map(|&i| scenarios[i].clone()).collect();
    let dealt: Vec<Vec<usize>> = deal(&runnable, backends.len())
        .into_iter()
        .map(|lane| lane.into_iter().map(|i| to_run[i]).collect())
        .collect();
    let shares: Vec<Vec<Scenario>> = dealt
        .iter()
        .map(|lane| lane.iter().map(|&i| scenarios[i].clone()).collect())
        .collect();
    // One callback for every lane: lanes run on one task, so a call ends before another starts.
    let shared = RefCell::new(on_event);
    let lanes = backends.iter_mut().zip(&shares).map(|(backend, share)| {
        let shared = &shared;
        async move {
            let mut forward = |event: Event<'_>| (shared.borrow_mut())(event);
            run_scenarios(backend, share, options, &mut forward).await
        }
    });
    let results = futures::future::join_all(lanes).await;
    // Back in the library's order.
    let mut ordered: Vec<Option<_>> = (0..scenarios.len()).map(|_| None).collect();
    for (index, result) in failed_at_once {
        ordered[index] = Some(result);
    }
    let mut described = Vec::new();
    let mut sessions_broken = 0;
    for (lane, result) in dealt.iter().zip(results) {
        described.push(result.backend.clone());
        sessions_broken += result.sessions_broken;
        for (&index, scenario) in lane.iter().zip(result.scenarios) {
            ordered[index] = Some(scenario);
        }
    }
    let scenarios: Vec<_> = ordered.into_iter().flatten().collect();
    RunResult {
        backend: lanes_description(&described),
        sessions_broken,
        totals: RunTotals::of(&scenarios),
        scenarios,
        elapsed: started.elapsed(),
        pace: options.pacer.report(),
        options: options.clone(),
        apis,
        cluster,
    }
}

/// Checks every policy API `scenarios` use; an API whose check could not even load is reported
/// as not checked (the run goes on without it).
async fn precheck<B: Backend>(
    backend: &mut B,
    scenarios: &[Scenario],
    options: &RunOptions,
) -> Vec<ApiCheck> {
    let apis = apis_used(scenarios);
    let options = RunOptions {
        stability: std::time::Duration::ZERO,
        established: false,
        max_latency: None,
        targets: Vec::new(),
        precheck: false,
        service_hairpin: Default::default(),
        ..options.clone()
    };
    match check_apis(backend, &apis, &options, true).await {
        Ok((checks, _)) => checks,
        Err(e) => apis
            .into_iter()
            .map(|api| ApiCheck {
                api,
                verdict: ApiVerdict::Error(e.to_string()),
                scenario: String::new(),
                crd: None,
            })
            .collect(),
    }
}

/// `local (nftables dataplane, run a1b2c3) and 1 more in parallel (2 lanes)`: the lanes'
/// backends, as a report header names them.
pub fn lanes_description(described: &[String]) -> String {
    match described {
        [] => String::new(),
        [one] => one.clone(),
        [first, rest @ ..] => format!(
            "{first} and {} more in parallel ({} lanes)",
            rest.len(),
            described.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::library;

    #[test]
    fn scenarios_are_dealt_by_their_steps_and_each_runs_once() {
        let all = library::load_all().expect("the library");
        let dealt = deal(&all, 3);
        let mut seen: Vec<usize> = dealt.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..all.len()).collect::<Vec<_>>());
        let loads: Vec<usize> = dealt
            .iter()
            .map(|lane| lane.iter().map(|&i| all[i].steps.len() + 1).sum())
            .collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 4, "{loads:?}");
        assert_eq!(deal(&all, 1), vec![(0..all.len()).collect::<Vec<_>>()]);
    }
}
