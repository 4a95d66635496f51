//! JUnit XML for CI systems: one testsuite per scenario, one testcase per step; a failing step's
//! message counts the wrong cells and its text lists them (expected, observed, reason).
//!
//! quick-junit rather than junit-report: its output is deterministic (stable attribute order and
//! escaping), so reports can be diffed and snapshot-tested, and it is maintained with nextest.

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::probe::wrong_cells;
use crate::run::scenarios::{RunResult, Verdict};

pub fn report(result: &RunResult) -> Report {
    let mut report = Report::new("polygraph");
    report.set_time(result.elapsed);
    for scenario in &result.scenarios {
        let mut suite = TestSuite::new(scenario.scenario.name.as_str());
        suite.set_time(scenario.elapsed);
        suite.add_property(Property::new("backend", result.backend.as_str()));
        suite.add_property(Property::new("source", scenario.scenario.source.as_str()));
        suite.add_property(Property::new("tags", scenario.scenario.tags.join(",")));
        if let (Some(e), true) = (&scenario.error, scenario.steps.is_empty()) {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(e.as_str());
            let mut case = TestCase::new("set up the cluster", status);
            case.set_classname(scenario.scenario.name.as_str());
            suite.add_test_case(case);
        }
        for (index, step) in scenario.steps.iter().enumerate() {
            let status = if step.passed() {
                TestCaseStatus::success()
            } else if let Some(e) = &step.error {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(e.as_str());
                s
            } else {
                let wrong = step.count(Verdict::Fail);
                let errors = step.count(Verdict::Error);
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!(
                    "{wrong} cells differ from the spec, {errors} probe errors"
                ));
                s.set_type("enforcement");
                if let Some(observed) = &step.observed {
                    let lines = wrong_cells(
                        &scenario.scenario.steps[index].analysis,
                        observed,
                        usize::MAX,
                    );
                    s.set_description(lines.join("\n"));
                }
                s
            };
            let mut case = TestCase::new(step.name.as_str(), status);
            case.set_classname(scenario.scenario.name.as_str());
            case.set_time(step.elapsed);
            case.add_property(Property::new("origin", step.origin.as_str()));
            case.add_property(Property::new("rounds", step.rounds.to_string()));
            case.add_property(Property::new(
                "late_cells",
                step.count(Verdict::Late).to_string(),
            ));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report
}
