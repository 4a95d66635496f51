//! Scenarios: a cluster model, a probe selection and ordered steps, each a change followed by a probe
//! of the matrix. Loaded and checked entirely before anything is deployed.

mod action;
mod format;
pub mod library;
mod load;
pub mod patterns;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use crate::world::World;
pub use action::Action;
pub use load::parse;

use crate::analyze::Analysis;
use crate::model::{PortProtocol, ProbeTarget};

/// A scenario that can't be run, located: `file:line: message`, with the error beneath it when
/// something below the scenario failed (reading a file, a policy in it).
#[derive(Debug, Clone)]
pub struct ScenarioError {
    /// `file:line`, or empty when the message locates itself.
    pub origin: String,
    pub message: String,
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.origin, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// The file it came from, or `built-in`.
    pub source: String,
    /// Scenarios with the same key start from the same cluster and can share one deployment.
    pub model_key: String,
    pub initial: World,
    pub port_protocols: Vec<PortProtocol>,
    /// How its probes reach their destinations (`target:`); empty: pod IPs. `--target` overrides.
    pub targets: Vec<ProbeTarget>,
    /// The IP families it is about (`ip-family:`), probed whatever the run's default; `None`:
    /// the run's (`RunOptions::families`).
    pub families: Option<crate::model::IpFamilies>,
    /// Pods its steps create at an address of the scenario's choosing (`create-pod` with `ip:`,
    /// e.g. a deleted pod's address reused), as `ns/name at IP`: only a backend that can choose
    /// pod addresses (`Backend::chooses_addresses`) runs it.
    pub chosen_addresses: Vec<String>,
    pub steps: Vec<Step>,
    /// The SHA-256 of its YAML text (hex): a reproduction checks it ran the same scenario.
    pub digest: String,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// `file:line` of the step.
    pub origin: String,
    pub action: Action,
    /// Whether the step pins its expectation (checked against the oracle when loading).
    pub pinned: bool,
    /// The world after the action and the spec's answer for it.
    pub analysis: Analysis,
}

/// Every IP family one of `scenarios` is about (`ip-family:`); `None` when none names one.
/// polygraph's own clusters give pods all of them (`--ip-family` aside).
pub fn named_families(scenarios: &[Scenario]) -> Option<crate::model::IpFamilies> {
    scenarios
        .iter()
        .filter_map(|s| s.families)
        .reduce(crate::model::IpFamilies::union)
}

/// Loads a scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        origin: source.clone(),
        message: "reading the scenario".into(),
        cause: Some(Arc::new(e)),
    })?;
    parse(&source, &text, path.parent())
}
