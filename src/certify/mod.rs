//! Certification: a run's result judged by conformance profiles (`profile`), and the report a
//! vendor publishes (`report`). Everything here reads a `RunResult`; nothing probes and nothing
//! asks the oracle again: the verdicts are the run's, grouped into levels and features.

pub mod profile;
pub mod report;

use std::collections::BTreeSet;
use std::time::Duration;

pub use profile::{Criterion, Feature, Profile, ProfileName};

use crate::run::{RunResult, ScenarioResult, Status};

/// How one test (a scenario, or a timing criterion on a scenario) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatus {
    Passed,
    Failed,
    /// Not judged: the cluster could not serve it, or it was not run.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct TestResult {
    /// The scenario's name, or `Criterion/scenario` for the timing criteria.
    pub name: String,
    pub status: TestStatus,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
}

/// A level's verdict, in the words the field's conformance reports use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelStatus {
    /// Every test of the level (of its supported features, for an optional level) passed.
    Success,
    /// Nothing failed, but tests that count were skipped.
    Partial,
    Failure,
}

/// One optional feature: supported (its tests ran and passed), unsupported (none could run), or
/// failed.
#[derive(Debug, Clone)]
pub struct FeatureResult {
    pub name: &'static str,
    pub status: FeatureStatus,
    pub tests: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureStatus {
    Supported,
    Unsupported,
    Failed,
}

#[derive(Debug, Clone)]
pub struct LevelResult {
    /// `core`, `standard`, `extended` or `experimental`.
    pub name: &'static str,
    pub status: LevelStatus,
    /// Each test once, in the library's order.
    pub tests: Vec<TestResult>,
    /// The optional features, for an optional level.
    pub features: Vec<FeatureResult>,
}

impl LevelResult {
    pub fn count(&self, status: TestStatus) -> usize {
        self.tests.iter().filter(|t| t.status == status).count()
    }

    pub fn with_status(&self, status: TestStatus) -> impl Iterator<Item = &TestResult> {
        self.tests.iter().filter(move |t| t.status == status)
    }

    pub fn features_with(&self, status: FeatureStatus) -> Vec<&'static str> {
        self.features
            .iter()
            .filter(|f| f.status == status)
            .map(|f| f.name)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ProfileResult {
    pub profile: &'static Profile,
    pub core: LevelResult,
    /// None for a profile without optional features.
    pub extended: Option<LevelResult>,
}

impl ProfileResult {
    /// Nothing of the profile could be judged here (its API is not served): not a failure, and
    /// not a certification either.
    pub fn unsupported(&self) -> bool {
        let all_skipped =
            |level: &LevelResult| level.tests.iter().all(|t| t.status == TestStatus::Skipped);
        all_skipped(&self.core) && self.extended.as_ref().is_none_or(all_skipped)
    }

    /// One line: each level's verdict and counts.
    pub fn summary(&self) -> String {
        let level = |l: &LevelResult| {
            format!(
                "{} {} ({} passed, {} failed, {} skipped)",
                l.name,
                status_word(l.status),
                l.count(TestStatus::Passed),
                l.count(TestStatus::Failed),
                l.count(TestStatus::Skipped)
            )
        };
        let mut line = level(&self.core);
        if let Some(extended) = &self.extended {
            line.push_str(&format!(
                "; {}; features supported: {}, unsupported: {}, failed: {}",
                level(extended),
                extended.features_with(FeatureStatus::Supported).len(),
                extended.features_with(FeatureStatus::Unsupported).len(),
                extended.features_with(FeatureStatus::Failed).len(),
            ));
        }
        if self.unsupported() {
            line.push_str(" (nothing of this profile could run here)");
        }
        line
    }
}

pub fn status_word(status: LevelStatus) -> &'static str {
    match status {
        LevelStatus::Success => "success",
        LevelStatus::Partial => "partial",
        LevelStatus::Failure => "failure",
    }
}

/// What certification needs beyond the run: the latency bound the Timing profile judges by
/// (not the run's `--max-latency`, so that a late cell fails Timing and never NetworkPolicy).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_latency: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_latency: Duration::from_secs(5),
        }
    }
}

/// The run judged by the profiles.
#[derive(Debug, Clone)]
pub struct Certification {
    pub profiles: Vec<ProfileResult>,
    pub bounds: Bounds,
}

impl Certification {
    pub fn of(result: &RunResult, profiles: &[ProfileName], bounds: Bounds) -> Certification {
        Certification {
            profiles: profiles
                .iter()
                .map(|name| judge(result, name.profile(), bounds))
                .collect(),
            bounds,
        }
    }

    /// Every profile that could run has its mandatory level at `success`.
    pub fn passed(&self) -> bool {
        self.profiles
            .iter()
            .all(|p| p.unsupported() || p.core.status == LevelStatus::Success)
    }
}

fn judge(result: &RunResult, profile: &'static Profile, bounds: Bounds) -> ProfileResult {
    let in_scope: Vec<&ScenarioResult> = result
        .scenarios
        .iter()
        .filter(|s| profile.in_scope(&s.scenario))
        .collect();
    let core = if profile.core.is_empty() {
        let tests = in_scope
            .iter()
            .filter(|s| profile.is_core(&s.scenario))
            .map(|s| scenario_test(s))
            .collect();
        level(profile.levels.0, tests, Vec::new())
    } else {
        let tests = profile
            .core
            .iter()
            .flat_map(|feature| {
                in_scope
                    .iter()
                    .filter_map(move |s| criterion_test(s, feature, result, bounds))
            })
            .collect();
        level(profile.levels.0, tests, Vec::new())
    };
    let extended = (!profile.extended.is_empty()).then(|| {
        let mut seen = BTreeSet::new();
        let mut tests = Vec::new();
        let features = profile
            .extended
            .iter()
            .map(|feature| {
                let mine: Vec<TestResult> = in_scope
                    .iter()
                    .filter(|s| feature.covers(&s.scenario))
                    .map(|s| feature_test(s, feature))
                    .collect();
                let status = if mine.iter().any(|t| t.status == TestStatus::Failed) {
                    FeatureStatus::Failed
                } else if mine.iter().any(|t| t.status == TestStatus::Passed) {
                    FeatureStatus::Supported
                } else {
                    FeatureStatus::Unsupported
                };
                let names = mine.iter().map(|t| t.name.clone()).collect();
                for test in mine {
                    if seen.insert(test.name.clone()) {
                        tests.push(test);
                    }
                }
                FeatureResult {
                    name: feature.name,
                    status,
                    tests: names,
                }
            })
            .collect();
        level(profile.levels.1, tests, features)
    });
    ProfileResult {
        profile,
        core,
        extended,
    }
}

/// A level's verdict: failure if a test failed; partial if a test that counts was skipped (of the
/// mandatory level any; of an optional level, one of a supported feature: an unsupported
/// feature's skipped tests are what makes it unsupported, not a gap); success otherwise.
fn level(name: &'static str, tests: Vec<TestResult>, features: Vec<FeatureResult>) -> LevelResult {
    let failed = tests.iter().any(|t| t.status == TestStatus::Failed);
    let skipped_counts = if features.is_empty() {
        tests.iter().any(|t| t.status == TestStatus::Skipped)
    } else {
        features
            .iter()
            .filter(|f| f.status == FeatureStatus::Supported)
            .flat_map(|f| &f.tests)
            .any(|name| {
                tests
                    .iter()
                    .any(|t| &t.name == name && t.status == TestStatus::Skipped)
            })
    };
    let status = if failed {
        LevelStatus::Failure
    } else if skipped_counts {
        LevelStatus::Partial
    } else {
        LevelStatus::Success
    };
    LevelResult {
        name,
        status,
        tests,
        features,
    }
}

/// A scenario as a test: its status, with the reason it failed or was skipped.
fn scenario_test(s: &ScenarioResult) -> TestResult {
    let (status, reason) = match s.status() {
        Status::Passed => (TestStatus::Passed, None),
        Status::Unsupported => (
            TestStatus::Skipped,
            Some(
                s.unsupported
                    .clone()
                    .unwrap_or_else(|| "no cell could be judged here".into()),
            ),
        ),
        Status::Failed => (TestStatus::Failed, Some(failure_reason(s))),
    };
    TestResult {
        name: s.scenario.name.clone(),
        status,
        reason,
    }
}

/// A scenario as a test of an optional feature: as `scenario_test`, except that a passed
/// scenario judged no cell of the feature's protocol is skipped (it showed nothing of it).
fn feature_test(s: &ScenarioResult, feature: &Feature) -> TestResult {
    let mut test = scenario_test(s);
    if let (TestStatus::Passed, Some(protocol)) = (test.status, feature.protocol) {
        let judged = s.steps.iter().any(|step| {
            step.verdicts.cells().any(|(_, cell, verdict)| {
                cell.port_protocol.protocol == protocol && verdict.judged()
            })
        });
        if !judged {
            test.status = TestStatus::Skipped;
            test.reason = Some(format!(
                "no {protocol} cell could be probed here (unsupported: e.g. no {protocol} in the nodes' kernel)"
            ));
        }
    }
    test
}

/// The first thing that went wrong in a failed scenario, in a line.
pub fn failure_reason(s: &ScenarioResult) -> String {
    if let Some(reason) = &s.not_enforced {
        return reason.clone();
    }
    if let Some(error) = &s.error {
        return error.clone();
    }
    match s.steps.iter().find(|step| step.status() == Status::Failed) {
        Some(step) => match &step.error {
            Some(error) => format!("{}: {error}", step.title()),
            None => {
                let wrong = step.failing_cells();
                format!("{}: {wrong} wrong cells", step.title())
            }
        },
        None => "not every step ran".into(),
    }
}

/// One timing criterion judged on one scenario; `None` where it does not apply (no pod created,
/// for `NewPodProtected`).
fn criterion_test(
    s: &ScenarioResult,
    feature: &Feature,
    result: &RunResult,
    bounds: Bounds,
) -> Option<TestResult> {
    let creates_pods = s.steps.iter().any(|step| {
        step.summary.new_pod_first_probe_ms.is_some() || step.summary.new_pod.cells > 0
    });
    if feature.criterion == Criterion::NewPodProtected
        && !creates_pods
        && !s.scenario.tags.iter().any(|t| t == "new-pod")
    {
        return None;
    }
    let name = format!("{}/{}", feature.name, s.scenario.name);
    let test = |status, reason: Option<String>| TestResult {
        name: name.clone(),
        status,
        reason,
    };
    match s.status() {
        Status::Unsupported => {
            return Some(test(
                TestStatus::Skipped,
                Some(
                    s.unsupported
                        .clone()
                        .unwrap_or_else(|| "nothing judged".into()),
                ),
            ));
        }
        _ if s.not_enforced.is_some() || s.error.is_some() || s.steps.is_empty() => {
            return Some(test(TestStatus::Failed, Some(failure_reason(s))));
        }
        _ => {}
    }
    let bound_ms = bounds.max_latency.as_secs_f64() * 1e3;
    let failure = match feature.criterion {
        Criterion::Cells => None,
        Criterion::Latency => s.steps.iter().find_map(|step| {
            let t = &step.summary;
            let slowest = [t.allow_to_deny.max_ms, t.deny_to_allow.max_ms, t.new_pod.max_ms]
                .into_iter()
                .flatten()
                .fold(None, |acc: Option<f64>, v| Some(acc.map_or(v, |a| a.max(v))));
            if t.never_converged > 0 {
                Some(format!(
                    "{}: {} cells never converged within the step deadline",
                    step.title(),
                    t.never_converged
                ))
            } else {
                slowest.filter(|ms| *ms > bound_ms).map(|ms| {
                    format!(
                        "{}: the slowest cell converged after {ms:.0} ms (bound {bound_ms:.0} ms)",
                        step.title()
                    )
                })
            }
        }),
        Criterion::NewPodProtected => s.steps.iter().find_map(|step| {
            step.summary.new_pod_leak_ms.map(|ms| {
                format!(
                    "{}: forbidden traffic of a new pod got through for {ms:.0} ms after it was created",
                    step.title()
                )
            })
        }),
        Criterion::Stable => {
            if result.options.stability.is_zero() {
                return Some(test(
                    TestStatus::Skipped,
                    Some("no stability window (--stability 0s)".into()),
                ));
            }
            s.steps.iter().find_map(|step| {
                (step.summary.flapping > 0).then(|| {
                    format!(
                        "{}: {} cells changed within the stability window",
                        step.title(),
                        step.summary.flapping
                    )
                })
            })
        }
    };
    Some(match failure {
        Some(reason) => test(TestStatus::Failed, Some(reason)),
        None => test(TestStatus::Passed, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(name: &str, status: TestStatus) -> TestResult {
        TestResult {
            name: name.into(),
            status,
            reason: None,
        }
    }

    fn feature(name: &'static str, status: FeatureStatus, tests: &[&str]) -> FeatureResult {
        FeatureResult {
            name,
            status,
            tests: tests.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_mandatory_level_is_partial_when_any_test_was_skipped() {
        use TestStatus::*;
        let status = |tests| level("core", tests, Vec::new()).status;
        assert_eq!(
            status(vec![test("a", Passed), test("b", Passed)]),
            LevelStatus::Success
        );
        assert_eq!(
            status(vec![test("a", Passed), test("b", Skipped)]),
            LevelStatus::Partial
        );
        assert_eq!(
            status(vec![test("a", Skipped), test("b", Failed)]),
            LevelStatus::Failure
        );
    }

    #[test]
    fn an_unsupported_features_skipped_tests_leave_an_optional_level_a_success() {
        use TestStatus::*;
        let tests = vec![test("end-port", Passed), test("sctp", Skipped)];
        let features = vec![
            feature("EndPort", FeatureStatus::Supported, &["end-port"]),
            feature("SCTP", FeatureStatus::Unsupported, &["sctp"]),
        ];
        assert_eq!(
            level("extended", tests.clone(), features).status,
            LevelStatus::Success
        );
        // A supported feature with a test that could not run is only partly shown.
        let mut more = tests;
        more.push(test("end-port-two", Skipped));
        let features = vec![feature(
            "EndPort",
            FeatureStatus::Supported,
            &["end-port", "end-port-two"],
        )];
        assert_eq!(
            level("extended", more, features).status,
            LevelStatus::Partial
        );
    }

    #[test]
    fn a_profile_nothing_of_which_could_run_does_not_fail_the_certification() {
        use TestStatus::*;
        let unserved = ProfileResult {
            profile: ProfileName::ClusterNetworkPolicy.profile(),
            core: level("standard", vec![test("cnp-a", Skipped)], Vec::new()),
            extended: Some(level(
                "experimental",
                vec![test("cnp-b", Skipped)],
                vec![feature("X", FeatureStatus::Unsupported, &["cnp-b"])],
            )),
        };
        assert!(unserved.unsupported());
        assert_eq!(unserved.core.status, LevelStatus::Partial);
        let passing = ProfileResult {
            profile: ProfileName::NetworkPolicy.profile(),
            core: level("core", vec![test("np", Passed)], Vec::new()),
            extended: None,
        };
        let certification = |profiles| Certification {
            profiles,
            bounds: Bounds::default(),
        };
        assert!(certification(vec![unserved.clone(), passing.clone()]).passed());
        let partial = ProfileResult {
            core: level(
                "core",
                vec![test("np", Passed), test("np2", Skipped)],
                Vec::new(),
            ),
            ..passing
        };
        assert!(!certification(vec![unserved, partial]).passed());
    }
}
