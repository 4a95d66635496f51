//! `polygraph run` on the terminal: a line per step while it runs, then every failing step with its
//! expected and observed matrices and explained wrong cells, then summary tables per scenario and
//! per feature tag.

use std::collections::BTreeMap;
use std::fmt::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, Table};

use super::matrix_table::{self, truth_matrix};
use super::probe::{self, observed_matrix, wrong_cells};
use crate::run::scenarios::{RunResult, ScenarioResult, StepResult, Verdict};
use crate::scenario::Scenario;

/// Wrong cells listed per failing step; the JSON report has all.
const LISTED: usize = 20;

fn seconds(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One line per finished step, for plain (non-terminal) progress output.
pub fn step_line(scenario: &Scenario, step: &StepResult) -> String {
    let status = if step.passed() { "PASS" } else { "FAIL" };
    let mut line = format!(
        "{status}  {} › {}  ({} round{}, {})",
        scenario.name,
        step.name,
        step.rounds,
        if step.rounds == 1 { "" } else { "s" },
        seconds(step.elapsed)
    );
    let wrong = step.count(Verdict::Fail);
    if wrong > 0 {
        let cells = if wrong == 1 {
            "cell differs"
        } else {
            "cells differ"
        };
        let _ = write!(line, ": {wrong} {cells} from the spec");
    }
    let late = step.count(Verdict::Late);
    if late > 0 {
        let _ = write!(line, ", {late} late");
    }
    if let Some(e) = &step.error {
        let _ = write!(line, ": {e}");
    }
    line
}

fn failing_step(text: &mut String, scenario: &ScenarioResult, index: usize, color: bool) {
    let step = &scenario.steps[index];
    let spec = &step.expected;
    let _ = writeln!(
        text,
        "\nFAIL {} › {} ({})",
        scenario.scenario.name, step.name, step.origin
    );
    if let Some(e) = &step.error {
        let _ = writeln!(text, "  error: {e}");
    }
    let Some(observed) = &step.observed else {
        return;
    };
    let expected = &spec.table;
    for (k, pp) in expected.port_protocols().iter().enumerate() {
        let failing = (0..expected.pods().len())
            .any(|f| (0..expected.pods().len()).any(|t| step.verdicts.get(k, f, t).fails()));
        if !failing {
            continue;
        }
        let _ = writeln!(
            text,
            "  {pp} expected (the spec)\n{}",
            truth_matrix(expected, k, color)
        );
        let _ = writeln!(
            text,
            "  {pp} observed\n{}",
            observed_matrix(expected, observed, k, color)
        );
    }
    let _ = writeln!(text, "  {}\n  {}", matrix_table::LEGEND, probe::LEGEND);
    for line in wrong_cells(spec, observed, LISTED) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = probe::placement_line(spec, observed) {
        let _ = writeln!(text, "  {line}");
    }
}

fn table(color: bool) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    if !color {
        t.force_no_tty();
    }
    t
}

fn result_cell(passed: bool, color: bool) -> Cell {
    let cell = Cell::new(if passed { "pass" } else { "FAIL" });
    if color {
        cell.fg(if passed { Color::Green } else { Color::Red })
    } else {
        cell
    }
}

/// Everything after the run: failing steps in detail, then the summaries.
pub fn render(result: &RunResult, color: bool) -> String {
    let mut text = String::new();
    for scenario in &result.scenarios {
        if let (Some(e), true) = (&scenario.error, scenario.steps.is_empty()) {
            let _ = writeln!(text, "\nFAIL {}: {e}", scenario.scenario.name);
        }
        for index in 0..scenario.steps.len() {
            if !scenario.steps[index].passed() {
                failing_step(&mut text, scenario, index, color);
            }
        }
    }

    let mut per_scenario = table(color);
    per_scenario.set_header(vec![
        "scenario",
        "steps",
        "cells pass",
        "fail",
        "late",
        "unsupported",
        "time",
        "result",
    ]);
    let mut per_tag: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for scenario in &result.scenarios {
        let count = |v: Verdict| {
            scenario
                .steps
                .iter()
                .map(|s| s.count(v))
                .sum::<usize>()
                .to_string()
        };
        let steps_passed = scenario.steps.iter().filter(|s| s.passed()).count();
        per_scenario.add_row(vec![
            Cell::new(&scenario.scenario.name),
            Cell::new(format!("{steps_passed}/{}", scenario.scenario.steps.len())),
            Cell::new(count(Verdict::Pass)),
            Cell::new(count(Verdict::Fail)),
            Cell::new(count(Verdict::Late)),
            Cell::new(count(Verdict::Unsupported)),
            Cell::new(seconds(scenario.elapsed)),
            result_cell(scenario.passed(), color),
        ]);
        for tag in &scenario.scenario.tags {
            let entry = per_tag.entry(tag).or_default();
            if scenario.passed() {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let _ = writeln!(text, "\n{per_scenario}");
    if !per_tag.is_empty() {
        let mut tags = table(color);
        tags.set_header(vec![
            "feature tag",
            "scenarios",
            "passed",
            "failed",
            "result",
        ]);
        for (tag, (passed, failed)) in per_tag {
            tags.add_row(vec![
                Cell::new(tag),
                Cell::new(passed + failed),
                Cell::new(passed),
                Cell::new(failed),
                result_cell(failed == 0, color),
            ]);
        }
        let _ = writeln!(text, "{tags}");
    }
    let passed = result.scenarios.iter().filter(|s| s.passed()).count();
    let steps: usize = result.scenarios.iter().map(|s| s.steps.len()).sum();
    let _ = writeln!(
        text,
        "{} scenarios: {passed} passed, {} failed; {steps} steps in {} on {}",
        result.scenarios.len(),
        result.scenarios.len() - passed,
        seconds(result.elapsed),
        result.backend
    );
    text
}
