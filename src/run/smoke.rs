//! `polygraph smoke`: the quickest answer to "does this cluster enforce NetworkPolicy at all?",
//! and each cluster-scoped policy API it serves (`run::precheck`).

use std::fmt;

use super::{RunResult, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmokeVerdict {
    /// Every step did what the spec says.
    Enforcing,
    /// Policies were accepted, but nothing the spec blocks was ever blocked.
    NotEnforcing,
    /// Some enforcement, but not all of it.
    Partial,
}

impl fmt::Display for SmokeVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SmokeVerdict::Enforcing => "ENFORCING",
            SmokeVerdict::NotEnforcing => "NOT ENFORCING",
            SmokeVerdict::Partial => "PARTIAL",
        })
    }
}

/// Judges a smoke run. Cells the spec blocks (self traffic aside) decide: all blocked and the rest
/// as the spec says is enforcing; none blocked is not enforcing; anything else is partial.
pub fn classify(result: &RunResult) -> SmokeVerdict {
    if result.passed() {
        return SmokeVerdict::Enforcing;
    }
    let mut blocked_as_spec = 0;
    for scenario in &result.scenarios {
        for step in &scenario.steps {
            let expected = &step.expected.table;
            for (k, cell, verdict) in step.verdicts.cells() {
                let spec_blocks = !expected.get(k, cell.from, cell.to).allowed();
                if spec_blocks
                    && !cell.is_self()
                    && matches!(verdict, Verdict::Pass | Verdict::Late)
                {
                    blocked_as_spec += 1;
                }
            }
        }
    }
    if blocked_as_spec == 0 {
        SmokeVerdict::NotEnforcing
    } else {
        SmokeVerdict::Partial
    }
}

/// The answer over every policy API checked: enforcing when every API the cluster serves is
/// enforced (and the DNS check passed), not enforcing when none is, partial otherwise. APIs not
/// served, or whose check could not run, do not count.
pub fn overall(apis: &[super::precheck::ApiCheck], dns_passed: bool) -> SmokeVerdict {
    use super::precheck::ApiVerdict;
    let served: Vec<&ApiVerdict> = apis
        .iter()
        .map(|c| &c.verdict)
        .filter(|v| !matches!(v, ApiVerdict::NotServed(_) | ApiVerdict::Error(_)))
        .collect();
    if served.is_empty() || served.iter().all(|v| **v == ApiVerdict::NotEnforcing) {
        SmokeVerdict::NotEnforcing
    } else if served.iter().all(|v| **v == ApiVerdict::Enforcing) && dns_passed {
        SmokeVerdict::Enforcing
    } else {
        SmokeVerdict::Partial
    }
}
