//! JUnit XML for CI systems: one testsuite per scenario, one testcase per step; a failing step's
//! message counts the wrong cells and its text lists them (expected, observed, reason).
//!
//! quick-junit rather than junit-report: its output is deterministic (stable attribute order and
//! escaping), so reports can be diffed and snapshot-tested, and it is maintained with nextest.

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::probe::wrong_cells;
use super::run_terminal;
use crate::run::{RunResult, Status, Verdict};

pub fn report(result: &RunResult) -> Report {
    let mut report = Report::new("polygraph");
    report.set_time(result.elapsed);
    for scenario in &result.scenarios {
        let mut suite = TestSuite::new(scenario.scenario.name.as_str());
        suite.set_time(scenario.elapsed);
        suite.add_property(Property::new("backend", result.backend.as_str()));
        suite.add_property(Property::new("source", scenario.scenario.source.as_str()));
        suite.add_property(Property::new("tags", scenario.scenario.tags.join(",")));
        // Timing over the scenario's steps, for dashboards that read properties.
        let totals = &scenario.totals;
        suite.add_property(Property::new(
            "late_deny_cells",
            totals.late_deny.to_string(),
        ));
        suite.add_property(Property::new(
            "late_allow_cells",
            totals.late_allow.to_string(),
        ));
        suite.add_property(Property::new("flapping_cells", totals.flapping.to_string()));
        suite.add_property(Property::new(
            "max_leak_ms",
            totals
                .max_leak_ms
                .map_or("none".to_string(), |ms| format!("{ms:.0}")),
        ));
        if let Some(reason) = &scenario.unsupported {
            let mut status = TestCaseStatus::skipped();
            status.set_message(format!("unsupported: {reason}"));
            let mut case = TestCase::new("cluster support", status);
            case.set_classname(scenario.scenario.name.as_str());
            suite.add_test_case(case);
        }
        if let Some(reason) = &scenario.not_enforced {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_type("not-enforced");
            status.set_message(reason.as_str());
            let mut case = TestCase::new("policy API enforced", status);
            case.set_classname(scenario.scenario.name.as_str());
            suite.add_test_case(case);
        }
        if let (Some(e), true) = (&scenario.error, scenario.steps.is_empty()) {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(e.as_str());
            let mut case = TestCase::new("set up the cluster", status);
            case.set_classname(scenario.scenario.name.as_str());
            suite.add_test_case(case);
        }
        for step in &scenario.steps {
            let status = if step.status() == Status::Passed {
                TestCaseStatus::success()
            } else if step.status() == Status::Unsupported {
                let mut s = TestCaseStatus::skipped();
                s.set_message(
                    "unsupported: no cell could be judged (every probe unsupported, undefined or not probed)",
                );
                s
            } else if let Some(e) = &step.error {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(e.as_str());
                s
            } else {
                let wrong = step.count(Verdict::Fail);
                let errors = step.count(Verdict::Error);
                let not_dropped = step.count(Verdict::NotDropped);
                let failed_open = step.count(Verdict::FailOpen);
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let timing = run_terminal::timing_line(step);
                let refused = if not_dropped > 0 {
                    format!(
                        ", {not_dropped} answered (refused or filtered) where a Deny requires a drop"
                    )
                } else {
                    String::new()
                };
                s.set_message(format!(
                    "{wrong} cells differ from the spec, {errors} probe errors, {} flapping{refused}{}{timing}",
                    step.count(Verdict::Flapping),
                    if timing.is_empty() { "" } else { "; " }
                ));
                // Its own failure type: tooling that tells drops from refusals can match on it.
                // `fail-open`: the enforcer gave way under load, not a misread policy.
                s.set_type(if failed_open > 0 && wrong == 0 {
                    "fail-open"
                } else if not_dropped > 0 && wrong == 0 {
                    "deny-not-dropped"
                } else {
                    "enforcement"
                });
                if let Some(observed) = &step.observed {
                    let lines = wrong_cells(&step.expected, observed, usize::MAX);
                    s.set_description(lines.join("\n"));
                }
                s
            };
            let mut case = TestCase::new(step.title().as_str(), status);
            case.set_classname(scenario.scenario.name.as_str());
            case.set_time(step.elapsed);
            // Where the step is written: CI annotators (dorny/test-reporter,
            // mikepenz/action-junit-report) put a failure on that line.
            if let Some((file, line)) = location(&step.origin) {
                case.extra.insert("file".into(), file.into());
                case.extra.insert("line".into(), line.to_string().into());
            }
            // The Surefire schema has no properties on a testcase: details go to its output.
            case.set_system_out(format!(
                "step: {}\nprobe rounds: {}\ncells: {} pass, {} fail, {} late, {} flapping, {} unsupported, {} errors\ntiming: {}",
                step.origin,
                step.rounds,
                step.count(Verdict::Pass),
                step.count(Verdict::Fail),
                step.count(Verdict::Late),
                step.count(Verdict::Flapping),
                step.count(Verdict::Unsupported),
                step.count(Verdict::Error),
                run_terminal::timing_line(step),
            ));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report
}

/// The report of a run that failed before its first scenario: one `setup` test case in error,
/// with the failure, so a CI dashboard always has a report to show.
pub fn setup_failure(result: &RunResult, error: &str) -> Report {
    let mut report = Report::new("polygraph");
    report.set_time(result.elapsed);
    let mut suite = TestSuite::new("setup");
    suite.set_time(result.elapsed);
    suite.add_property(Property::new("backend", result.backend.as_str()));
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
    status.set_type("setup");
    status.set_message(error);
    let mut case = TestCase::new("setup", status);
    case.set_classname("setup");
    case.set_time(result.elapsed);
    suite.add_test_case(case);
    report.add_test_suite(suite);
    report
}

/// Where a step (`StepResult::origin`, `SOURCE:LINE`) is written: its scenario file, a built-in
/// one's in polygraph's repository, and its line. A generated case has no file.
fn location(origin: &str) -> Option<(String, u32)> {
    let (source, line) = origin.rsplit_once(':')?;
    let line = line.parse().ok()?;
    let file = match source.strip_prefix("built-in:") {
        Some(name) if name.starts_with("smoke") => format!("src/scenario/{name}.yaml"),
        Some(name) => format!("scenarios/{name}.yaml"),
        None if source.starts_with("generated:") => return None,
        None => source.to_string(),
    };
    Some((file, line))
}

/// The report as XML valid against the Surefire/Jenkins JUnit schema (`tests/schemas/junit-10.xsd`,
/// with the `file` and `line` testcase attributes pytest's and the CI annotators' readers take).
/// quick-junit writes `skipped` on the root `<testsuites>`, which that schema does not allow; the
/// suites carry their own counts (unsupported steps are skipped test cases), so it is left out.
pub fn to_xml(result: &RunResult) -> Result<String, quick_junit::SerializeError> {
    schema_valid(report(result))
}

/// `setup_failure` as XML, valid like `to_xml`'s.
pub fn setup_failure_xml(
    result: &RunResult,
    error: &str,
) -> Result<String, quick_junit::SerializeError> {
    schema_valid(setup_failure(result, error))
}

fn schema_valid(report: Report) -> Result<String, quick_junit::SerializeError> {
    let xml = report.to_string()?;
    let Some(start) = xml.find("<testsuites") else {
        return Ok(xml);
    };
    let end = xml[start..].find('>').map_or(xml.len(), |e| start + e);
    let mut root = xml[start..end].to_string();
    if let Some(at) = root.find(" skipped=\"") {
        let value_end = root[at + 10..]
            .find('"')
            .map_or(root.len(), |e| at + 11 + e);
        root.replace_range(at..value_end, "");
    }
    Ok(format!("{}{root}{}", &xml[..start], &xml[end..]))
}

#[cfg(test)]
mod tests {
    use super::location;

    #[test]
    fn a_step_is_located_in_its_scenario_file() {
        assert_eq!(
            location("built-in:deny-all-ingress:5"),
            Some(("scenarios/deny-all-ingress.yaml".into(), 5))
        );
        assert_eq!(
            location("built-in:smoke-cnp:12"),
            Some(("src/scenario/smoke-cnp.yaml".into(), 12))
        );
        assert_eq!(
            location("ci/my scenarios/a:b.yaml:40"),
            Some(("ci/my scenarios/a:b.yaml".into(), 40))
        );
        assert_eq!(location("generated:seed=1:case=176:51"), None);
        assert_eq!(location("nowhere"), None);
    }
}
