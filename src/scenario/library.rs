//! The built-in library: `scenarios/*.yaml` and the named cluster models, embedded at build time.

use super::{Scenario, ScenarioError, parse};
use crate::model::{ClusterDescription, default_model};

include!(concat!(env!("OUT_DIR"), "/library.rs"));

/// Names of the built-in cluster models a scenario can use with `model:`.
pub const MODELS: [&str; 2] = ["default", "production"];

const PRODUCTION: &str = include_str!("../../examples/production/cluster.yaml");

pub fn model(name: &str) -> Option<ClusterDescription> {
    match name {
        "default" => Some(default_model()),
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
