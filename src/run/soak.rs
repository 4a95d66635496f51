//! What a soak counts: every departure from a clean pass in a run on a dataplane known to be
//! correct (polygraph's own nftables one, with at most packet loss injected). Each is a false
//! verdict: a failing, late, flapping, not-dropped or errored cell, or a step or scenario that
//! could not run. `bench soak` repeats the library and reports them per run.

use super::{RunResult, Status, Verdict};

/// One departure, in one line: where, and what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Departure {
    pub scenario: String,
    pub step: Option<String>,
    pub what: String,
}

impl std::fmt::Display for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{} › {}: {}", self.scenario, step, self.what),
            None => write!(f, "{}: {}", self.scenario, self.what),
        }
    }
}

/// Verdicts that are false on a correct dataplane. `Late` never fails a run (without
/// `--max-latency`), but on a dataplane that installs every rule before the step's first round a
/// late cell is a probe that got it wrong.
fn is_false(verdict: Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Fail
            | Verdict::Late
            | Verdict::Flapping
            | Verdict::FailOpen
            | Verdict::NotDropped
            | Verdict::Error
    )
}

/// Every departure from a clean pass in `result`, in the run's order.
pub fn departures(result: &RunResult) -> Vec<Departure> {
    let mut found = Vec::new();
    for scenario in &result.scenarios {
        let name = scenario.scenario.name.clone();
        if let Some(error) = &scenario.error {
            found.push(Departure {
                scenario: name.clone(),
                step: None,
                what: error.clone(),
            });
        }
        if scenario.status() == Status::Unsupported {
            continue;
        }
        for step in &scenario.steps {
            let step_name = Some(format!("{} [{}]", step.name, step.path));
            if let Some(error) = &step.error {
                found.push(Departure {
                    scenario: name.clone(),
                    step: step_name.clone(),
                    what: error.clone(),
                });
            }
            let pods = step.expected.table.pods();
            for (k, cell, verdict) in step.verdicts.cells() {
                if !is_false(*verdict) {
                    continue;
                }
                let seen = step
                    .observed
                    .as_ref()
                    .and_then(|o| o.get(k, cell.from, cell.to))
                    .map_or("nothing".to_string(), |o| match &o.detail {
                        Some(detail) => format!("{} ({detail})", o.outcome),
                        None => o.outcome.to_string(),
                    });
                found.push(Departure {
                    scenario: name.clone(),
                    step: step_name.clone(),
                    what: format!(
                        "{} → {} {}: {verdict:?}, last seen {seen}",
                        pods[cell.from], pods[cell.to], cell.port_protocol
                    ),
                });
            }
        }
    }
    found
}
