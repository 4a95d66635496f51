//! The built-in library: `scenarios/*.yaml` and the named cluster models, embedded at build time.

use super::{Scenario, ScenarioError, parse};
use crate::model::{ClusterDescription, default_model, mixed_ports_model};

include!(concat!(env!("OUT_DIR"), "/library.rs"));

/// Names of the built-in cluster models a scenario can use with `model:`.
pub const MODELS: [&str; 3] = ["default", "production", "mixed-ports"];

const PRODUCTION: &str = include_str!("../../examples/production/cluster.yaml");

pub fn model(name: &str) -> Option<ClusterDescription> {
    match name {
        "default" => Some(default_model()),
        "mixed-ports" => Some(mixed_ports_model()),
        "production" => ClusterDescription::parse("built-in model production", PRODUCTION).ok(),
        _ => None,
    }
}

/// Every built-in scenario's file name and text.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    SCENARIOS
}

/// The text of a built-in scenario, by its name.
pub fn text(name: &str) -> Option<&'static str> {
    SCENARIOS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Loads every built-in scenario.
pub fn load_all() -> Result<Vec<Scenario>, ScenarioError> {
    SCENARIOS
        .iter()
        .map(|(name, text)| parse(&format!("built-in:{name}"), text, None))
        .collect()
}

/// The scenario behind `polygraph smoke`.
pub fn smoke() -> Result<Scenario, ScenarioError> {
    parse("built-in:smoke", include_str!("smoke.yaml"), None)
}

/// `polygraph smoke`'s ClusterNetworkPolicy check (and the run's precheck of that API).
pub fn smoke_cnp() -> Result<Scenario, ScenarioError> {
    parse("built-in:smoke-cnp", include_str!("smoke-cnp.yaml"), None)
}

/// The AdminNetworkPolicy (v1alpha1) check.
pub fn smoke_anp() -> Result<Scenario, ScenarioError> {
    parse("built-in:smoke-anp", include_str!("smoke-anp.yaml"), None)
}

/// The BaselineAdminNetworkPolicy (v1alpha1) check.
pub fn smoke_banp() -> Result<Scenario, ScenarioError> {
    parse("built-in:smoke-banp", include_str!("smoke-banp.yaml"), None)
}

/// `polygraph smoke`'s DNS check: names resolve only where DNS egress is allowed. Unsupported
/// where the cluster has no DNS polygraph can find.
pub fn smoke_dns() -> Result<Scenario, ScenarioError> {
    parse("built-in:smoke-dns", include_str!("smoke-dns.yaml"), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_built_in_scenario_loads_and_pins_every_step() {
        let scenarios = load_all().unwrap_or_else(|e| panic!("{e}"));
        assert!(scenarios.len() >= 30, "{} scenarios", scenarios.len());
        let mut names = BTreeSet::new();
        for ((file, text), scenario) in SCENARIOS.iter().zip(&scenarios) {
            assert_eq!(*file, scenario.name, "file name and scenario name differ");
            assert!(
                names.insert(scenario.name.clone()),
                "duplicate {}",
                scenario.name
            );
            assert!(
                !scenario.description.is_empty(),
                "{} has no description",
                scenario.name
            );
            assert!(
                scenario.tags.iter().any(|t| t == "core" || t == "extended"),
                "{} is neither core nor extended",
                scenario.name
            );
            // Pinned expectations are checked against the oracle at load; every step must have one.
            assert!(!text.is_empty());
            assert!(
                scenario.steps.iter().all(|s| s.pinned),
                "{}: every step needs a pinned expectation",
                scenario.name
            );
        }
        for tag in ["end-port", "named-ports", "sctp", "ip-block"] {
            assert!(
                scenarios
                    .iter()
                    .any(|s| s.tags.iter().any(|t| t == tag)
                        && s.tags.iter().any(|t| t == "extended")),
                "no extended scenario for {tag}"
            );
        }
        smoke().unwrap_or_else(|e| panic!("{e}"));
        smoke_dns().unwrap_or_else(|e| panic!("{e}"));
    }
}
