//! A verdict per policy API: does the cluster enforce NetworkPolicy, ClusterNetworkPolicy,
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy at all? `smoke` reports it; a run checks the
//! APIs its scenarios use first (the precheck), so that a scenario of an API that is accepted but
//! ignored fails at once with that reason instead of waiting out every step's deadline.
//!
//! An API server accepts a policy whether or not anything enforces it: a cluster that serves the
//! AdminNetworkPolicy CRDs with an enforcer that implements only ClusterNetworkPolicy is the
//! Flannel case for one API. Each API's check is a small scenario (`scenario::library`) with a
//! Deny the spec says blocks one client: blocked is ENFORCING, never blocked NOT ENFORCING.

use std::fmt;

use serde::Serialize;

use super::{RunOptions, RunResult, ScenarioResult, Verdict, run_scenarios};
use crate::backend::Backend;
use crate::policy::ClusterKind;
use crate::scenario::{Scenario, ScenarioError, library};
use crate::world::Mutation;

/// A policy API, as the cluster serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyApi {
    NetworkPolicy,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl PolicyApi {
    pub const ALL: [PolicyApi; 4] = [
        PolicyApi::NetworkPolicy,
        PolicyApi::ClusterNetworkPolicy,
        PolicyApi::AdminNetworkPolicy,
        PolicyApi::BaselineAdminNetworkPolicy,
    ];

    fn of_kind(kind: ClusterKind) -> PolicyApi {
        match kind {
            ClusterKind::ClusterNetworkPolicy => PolicyApi::ClusterNetworkPolicy,
            ClusterKind::AdminNetworkPolicy => PolicyApi::AdminNetworkPolicy,
            ClusterKind::BaselineAdminNetworkPolicy => PolicyApi::BaselineAdminNetworkPolicy,
        }
    }

    /// The cluster-scoped kind, for the APIs that are one.
    pub fn kind(self) -> Option<ClusterKind> {
        match self {
            PolicyApi::NetworkPolicy => None,
            PolicyApi::ClusterNetworkPolicy => Some(ClusterKind::ClusterNetworkPolicy),
            PolicyApi::AdminNetworkPolicy => Some(ClusterKind::AdminNetworkPolicy),
            PolicyApi::BaselineAdminNetworkPolicy => Some(ClusterKind::BaselineAdminNetworkPolicy),
        }
    }

    /// `networking.k8s.io/v1`, `policy.networking.k8s.io/v1alpha2`, ...
    pub fn api_version(self) -> &'static str {
        match self {
            PolicyApi::NetworkPolicy => "networking.k8s.io/v1",
            PolicyApi::ClusterNetworkPolicy => ClusterKind::ClusterNetworkPolicy.api_version(),
            PolicyApi::AdminNetworkPolicy => ClusterKind::AdminNetworkPolicy.api_version(),
            PolicyApi::BaselineAdminNetworkPolicy => {
                ClusterKind::BaselineAdminNetworkPolicy.api_version()
            }
        }
    }

    /// The scenario that checks it.
    pub fn check(self) -> Result<Scenario, ScenarioError> {
        match self {
            PolicyApi::NetworkPolicy => library::smoke(),
            PolicyApi::ClusterNetworkPolicy => library::smoke_cnp(),
            PolicyApi::AdminNetworkPolicy => library::smoke_anp(),
            PolicyApi::BaselineAdminNetworkPolicy => library::smoke_banp(),
        }
    }

    /// The APIs whose objects a scenario creates or deletes, at its start or in any step.
    pub fn used_by(scenario: &Scenario) -> Vec<PolicyApi> {
        let mut apis: Vec<PolicyApi> = scenario
            .initial
            .cluster_policies()
            .iter()
            .map(|p| PolicyApi::of_kind(p.kind))
            .collect();
        if !scenario.initial.policies().is_empty() {
            apis.push(PolicyApi::NetworkPolicy);
        }
        for step in &scenario.steps {
            for mutation in step.action.mutations() {
                match mutation {
                    Mutation::ApplyPolicy(_) | Mutation::DeletePolicy { .. } => {
                        apis.push(PolicyApi::NetworkPolicy)
                    }
                    Mutation::ApplyClusterPolicy(p) => apis.push(PolicyApi::of_kind(p.kind)),
                    Mutation::DeleteClusterPolicy { kind, .. } => {
                        apis.push(PolicyApi::of_kind(kind))
                    }
                    _ => {}
                }
            }
        }
        apis.sort();
        apis.dedup();
        apis
    }
}

impl fmt::Display for PolicyApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            PolicyApi::NetworkPolicy => "NetworkPolicy",
            PolicyApi::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            PolicyApi::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyApi::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        };
        write!(f, "{kind} ({})", self.api_version())
    }
}

/// What the cluster does with one API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "reason")]
pub enum ApiVerdict {
    /// Every step of its check did what the spec says.
    Enforcing,
    /// Served and accepted, but nothing the spec blocks was ever blocked.
    NotEnforcing,
    /// Some of it enforced, not all.
    Partial,
    /// The cluster does not serve it (no CRD): its scenarios are unsupported, never failed.
    NotServed(String),
    /// The check itself could not run (deploying its pods failed, ...).
    Error(String),
}

impl fmt::Display for ApiVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiVerdict::Enforcing => f.write_str("ENFORCING"),
            ApiVerdict::NotEnforcing => f.write_str("NOT ENFORCING"),
            ApiVerdict::Partial => f.write_str("PARTIAL"),
            ApiVerdict::NotServed(_) => f.write_str("not served"),
            ApiVerdict::Error(_) => f.write_str("not checked"),
        }
    }
}

/// One API's check.
#[derive(Debug, Clone, Serialize)]
pub struct ApiCheck {
    pub api: PolicyApi,
    #[serde(flatten)]
    pub verdict: ApiVerdict,
    /// The check's scenario, as reports name it.
    pub scenario: String,
    /// What the cluster's CRD for the kind says of itself (Kubernetes, where readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crd: Option<crate::backend::CrdBundle>,
}

impl ApiCheck {
    /// The reason a scenario of this API fails at once, when the API is not enforced.
    pub fn not_enforced(&self) -> Option<String> {
        (self.verdict == ApiVerdict::NotEnforcing).then(|| {
            format!(
                "{} is accepted here but nothing enforces it: the precheck ({}) saw no cell it denies blocked (--no-precheck runs the scenario anyway)",
                self.api, self.scenario
            )
        })
    }
}

/// Judges one API's check. Cells the spec blocks (self traffic aside) decide: all blocked and
/// the rest as the spec says is enforcing; none blocked is not enforcing; anything else partial.
pub fn classify(result: &ScenarioResult) -> ApiVerdict {
    if let Some(reason) = &result.unsupported {
        return ApiVerdict::NotServed(reason.clone());
    }
    if let Some(error) = &result.error
        && result.steps.is_empty()
    {
        return ApiVerdict::Error(error.clone());
    }
    if result.passed() {
        return ApiVerdict::Enforcing;
    }
    let blocked_as_spec = result
        .steps
        .iter()
        .flat_map(|step| {
            let expected = &step.expected.table;
            step.verdicts.cells().filter(move |(k, cell, verdict)| {
                !expected.get(*k, cell.from, cell.to).allowed()
                    && !cell.is_self()
                    && matches!(verdict, Verdict::Pass | Verdict::Late)
            })
        })
        .count();
    if blocked_as_spec == 0 {
        ApiVerdict::NotEnforcing
    } else {
        ApiVerdict::Partial
    }
}

/// Checks `apis` on `backend` (their scenarios share one small deployment, removed afterwards).
/// `first_step_only`: each check's first step alone (its Deny applied; the run's precheck, where
/// every step costs time on a real cluster), not the deletions after it (`smoke`).
pub async fn check_apis<B: Backend>(
    backend: &mut B,
    apis: &[PolicyApi],
    options: &RunOptions,
    first_step_only: bool,
) -> Result<(Vec<ApiCheck>, RunResult), ScenarioError> {
    let mut scenarios = apis
        .iter()
        .map(|api| api.check())
        .collect::<Result<Vec<_>, _>>()?;
    if first_step_only {
        for scenario in &mut scenarios {
            scenario.steps.truncate(1);
        }
    }
    let result = run_scenarios(backend, &scenarios, options, &mut |_| {}).await;
    let mut checks = checks_of(apis, &result.scenarios);
    for check in &mut checks {
        check.crd = check
            .api
            .kind()
            .and_then(|kind| backend.cluster_policy_bundle(kind));
    }
    Ok((checks, result))
}

/// Each API's verdict from the results of its check, `apis` and `results` in the same order.
pub fn checks_of(apis: &[PolicyApi], results: &[ScenarioResult]) -> Vec<ApiCheck> {
    apis.iter()
        .zip(results)
        .map(|(&api, scenario)| ApiCheck {
            api,
            verdict: classify(scenario),
            scenario: scenario.scenario.name.clone(),
            crd: None,
        })
        .collect()
}

/// The APIs `scenarios` use, in `PolicyApi::ALL`'s order.
pub fn apis_used(scenarios: &[Scenario]) -> Vec<PolicyApi> {
    let mut used: Vec<PolicyApi> = scenarios.iter().flat_map(PolicyApi::used_by).collect();
    used.sort();
    used.dedup();
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apis_a_scenario_uses_are_found_in_its_start_and_its_steps() {
        let all = library::load_all().expect("the library");
        let by_name = |name: &str| {
            all.iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(
            PolicyApi::used_by(by_name("deny-all-ingress")),
            vec![PolicyApi::NetworkPolicy]
        );
        assert_eq!(
            PolicyApi::used_by(by_name("cnp-admin-deny-over-np-allow")),
            vec![PolicyApi::NetworkPolicy, PolicyApi::ClusterNetworkPolicy]
        );
        assert_eq!(
            PolicyApi::used_by(by_name("anp-banp-v1alpha1")),
            vec![
                PolicyApi::AdminNetworkPolicy,
                PolicyApi::BaselineAdminNetworkPolicy
            ]
        );
        assert_eq!(apis_used(&all), PolicyApi::ALL.to_vec());
    }

    #[test]
    fn every_api_has_a_check_that_loads() {
        for api in PolicyApi::ALL {
            let check = api.check().unwrap_or_else(|e| panic!("{api}: {e}"));
            assert_eq!(
                PolicyApi::used_by(&check),
                vec![api],
                "{api}'s check uses only it"
            );
        }
    }
}
