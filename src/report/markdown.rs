//! The CI step summary: GitHub-flavoured Markdown for `$GITHUB_STEP_SUMMARY` (`--summary-md`).
//! Its first line answers the first question (are policies enforced here at all, and by which
//! CNI); then the profiles (certify), the scenarios by status, and each failing scenario with its
//! first wrong cells. GitHub refuses a step summary over 1024 KiB, so whole sections are cut from
//! the end until it fits, and the summary says what was cut.

use std::fmt::Write;

use super::html::esc;
use super::probe::wrong_cells;
use crate::certify::{self, Certification, FeatureStatus, TestStatus};
use crate::run::precheck::ApiVerdict;
use crate::run::{RunResult, Status};

/// GitHub's limit on one step's summary.
pub const GITHUB_LIMIT: usize = 1024 * 1024;

/// Wrong cells listed per failing step; the JSON report has them all.
const LISTED: usize = 5;

/// The summary, at most `limit` bytes.
pub fn summary(result: &RunResult, certification: Option<&Certification>, limit: usize) -> String {
    let passed = certification.map_or(result.passed(), Certification::passed);
    let mut kept = headline(result, passed);
    let mut sections = Vec::new();
    if let Some(certification) = certification {
        sections.push(profiles(certification));
    }
    sections.push(scenario_counts(result));
    sections.extend(
        result
            .scenarios
            .iter()
            .filter(|s| s.status() == Status::Failed)
            .map(failing_scenario),
    );
    let total = sections.len();
    // Room for the note saying what was cut, whatever the numbers in it.
    let reserve = 200;
    let mut cut = 0;
    for section in sections {
        if cut == 0 && kept.len() + section.len() + reserve <= limit {
            kept.push_str(&section);
        } else {
            cut += 1;
        }
    }
    if cut > 0 {
        let _ = writeln!(
            kept,
            "\n> **{cut} of {total} sections cut** to keep this summary under GitHub's {} KiB limit: the JSON and HTML reports have everything.",
            limit / 1024
        );
    }
    kept
}

/// The first line: whether the policy APIs are enforced at all (the precheck's verdicts), the
/// CNI, and how the scenarios went; its mark is the whole run's (certification's) verdict.
fn headline(result: &RunResult, passed: bool) -> String {
    let cni = result
        .cluster
        .cni
        .as_deref()
        .map_or(String::new(), |cni| format!(" · CNI: {cni}"));
    let checks: Vec<String> = result
        .apis
        .iter()
        .map(|check| format!("{} {}", check.api, check.verdict))
        .collect();
    let not_enforced = result
        .apis
        .iter()
        .any(|c| matches!(c.verdict, ApiVerdict::NotEnforcing | ApiVerdict::Partial));
    let mark = if passed { "✅" } else { "❌" };
    let totals = &result.totals;
    let scenarios = format!(
        "{} of {} scenarios passed",
        totals.scenarios_passed,
        result.scenarios.len()
    );
    let mut line = if result.apis.is_empty() {
        format!("## {mark} polygraph: {scenarios} (enforcement not prechecked){cni}\n")
    } else if not_enforced {
        format!(
            "## ❌ Policies are NOT enforced here: {}{cni} · {scenarios}\n",
            checks.join(", ")
        )
    } else {
        format!(
            "## {mark} Policies are enforced: {}{cni} · {scenarios}\n",
            checks.join(", ")
        )
    };
    let _ = writeln!(
        line,
        "\n`{}` · {:.1} s",
        result.backend,
        result.elapsed.as_secs_f64()
    );
    line
}

fn profiles(certification: &Certification) -> String {
    let mut text = String::from(
        "\n### Conformance profiles\n\n| profile | level | result | passed | failed | skipped | features |\n|---|---|---|---|---|---|---|\n",
    );
    for profile in &certification.profiles {
        let levels = std::iter::once(&profile.core).chain(profile.extended.as_ref());
        for level in levels {
            let features = if level.features.is_empty() {
                String::new()
            } else {
                let list = |status| level.features_with(status).join(", ");
                let mut parts = vec![format!("supported: {}", list(FeatureStatus::Supported))];
                for (status, word) in [
                    (FeatureStatus::Failed, "**failed**"),
                    (FeatureStatus::Unsupported, "unsupported"),
                ] {
                    if !level.features_with(status).is_empty() {
                        parts.push(format!("{word}: {}", list(status)));
                    }
                }
                parts.join("; ")
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} {} | {} | {} | {} | {} |",
                profile.profile.name,
                level.name,
                match level.status {
                    certify::LevelStatus::Success => "✅",
                    certify::LevelStatus::Partial => "⚠️",
                    certify::LevelStatus::Failure => "❌",
                },
                certify::status_word(level.status),
                level.count(TestStatus::Passed),
                level.count(TestStatus::Failed),
                level.count(TestStatus::Skipped),
                escape(&features),
            );
        }
    }
    text
}

fn scenario_counts(result: &RunResult) -> String {
    let t = &result.totals;
    let mut text = format!(
        "\n### Scenarios\n\n| passed | failed | unsupported | steps | late deny | never converged | fail-open |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} |\n",
        t.scenarios_passed,
        t.scenarios_failed,
        t.scenarios_unsupported,
        t.steps,
        t.late_deny,
        t.never_converged,
        t.fail_open
    );
    let failed: Vec<&str> = result
        .scenarios
        .iter()
        .filter(|s| s.status() == Status::Failed)
        .map(|s| s.scenario.name.as_str())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(text, "\nFailed: {}", failed.join(", "));
    }
    text
}

fn failing_scenario(s: &crate::run::ScenarioResult) -> String {
    let mut text = format!(
        "\n<details><summary>❌ <b>{}</b>: {}</summary>\n\n",
        esc(&s.scenario.name),
        esc(&certify::failure_reason(s))
    );
    let _ = writeln!(text, "`{}`\n", s.scenario.source);
    for step in s
        .steps
        .iter()
        .filter(|step| step.status() == Status::Failed)
    {
        let _ = writeln!(text, "**{}** (`{}`)\n", escape(&step.title()), step.origin);
        if let Some(error) = &step.error {
            let _ = writeln!(text, "error: {}\n", escape(error));
        }
        if let Some(observed) = &step.observed {
            let lines = wrong_cells(&step.expected, observed, LISTED);
            if !lines.is_empty() {
                text.push_str("```\n");
                for line in lines {
                    let _ = writeln!(text, "{}", line.replace("```", "'''"));
                }
                text.push_str("```\n\n");
            }
        }
    }
    text.push_str("</details>\n");
    text
}

/// A table cell's text: pipes would end the cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
