//! `polygraph diff OLD.json NEW.json`: what changed between two runs' JSON reports (a CNI upgrade,
//! a new polygraph): scenarios and steps that regressed or were fixed, cells whose verdict
//! changed, and latency that moved beyond a threshold. It reads the reports as `run --json` writes
//! them (README's JSON contract), keeping only what it compares, so reports from other versions
//! of polygraph still compare as long as those fields are there.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub struct RunDoc {
    #[serde(default)]
    pub polygraph: String,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub scenarios: Vec<ScenarioDoc>,
}

#[derive(Debug, Deserialize)]
pub struct ScenarioDoc {
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepDoc>,
}

#[derive(Debug, Deserialize)]
pub struct StepDoc {
    pub name: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub family: String,
    pub status: String,
    #[serde(default)]
    pub timing: TimingDoc,
    #[serde(default)]
    pub cells: Vec<CellDoc>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TimingDoc {
    #[serde(default)]
    pub allow_to_deny: StatsDoc,
    #[serde(default)]
    pub deny_to_allow: StatsDoc,
    #[serde(default)]
    pub new_pod: StatsDoc,
}

#[derive(Debug, Default, Deserialize)]
pub struct StatsDoc {
    #[serde(default)]
    pub max_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct CellDoc {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub verdict: String,
}

/// How a scenario, step or cell moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    /// Passed before, fails now.
    Regressed,
    /// Failed before, passes now.
    Fixed,
    /// Neither: e.g. unsupported now, or another kind of failure.
    Changed,
    /// Only in the new run.
    Added,
    /// Only in the old run.
    Removed,
}

#[derive(Debug, Serialize)]
pub struct Change {
    /// `scenario`, `scenario › step (path)`, or `scenario › step (path): from → to port/protocol`.
    pub what: String,
    pub movement: Movement,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LatencyMove {
    pub step: String,
    /// `allow_to_deny`, `deny_to_allow` or `new_pod`.
    pub kind: &'static str,
    pub old_max_ms: f64,
    pub new_max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub old: String,
    pub new: String,
    pub scenarios: Vec<Change>,
    pub steps: Vec<Change>,
    pub cells: Vec<Change>,
    /// Steps whose slowest cell of a kind of change moved by more than the threshold.
    pub latency: Vec<LatencyMove>,
    pub latency_threshold_ms: f64,
    /// Scenarios whose YAML differs between the runs (their verdicts compare different tests).
    pub scenarios_edited: Vec<String>,
}

impl Diff {
    /// Something that passed fails now (a scenario, a step or a cell).
    pub fn regressed(&self) -> bool {
        [&self.scenarios, &self.steps, &self.cells]
            .iter()
            .any(|changes| changes.iter().any(|c| c.movement == Movement::Regressed))
    }

    pub fn slower(&self) -> bool {
        self.latency.iter().any(|m| m.new_max_ms > m.old_max_ms)
    }
}

const FAILING: [&str; 5] = ["fail", "error", "flapping", "not_dropped", "fail_open"];

fn movement(old: &str, new: &str, passing: &[&str], failing: &[&str]) -> Movement {
    if passing.contains(&old) && failing.contains(&new) {
        Movement::Regressed
    } else if failing.contains(&old) && passing.contains(&new) {
        Movement::Fixed
    } else {
        Movement::Changed
    }
}

fn status_movement(old: &str, new: &str) -> Movement {
    movement(old, new, &["passed"], &["failed"])
}

fn step_key(scenario: &str, step: &StepDoc) -> String {
    let path = if step.target.is_empty() || (step.target == "pod-ip" && step.family == "IPv4") {
        String::new()
    } else {
        format!(" ({} {})", step.target, step.family)
    };
    format!("{scenario} › {}{path}", step.name)
}

pub fn diff(old: &RunDoc, new: &RunDoc, latency_threshold_ms: f64) -> Diff {
    let mut result = Diff {
        old: describe(old),
        new: describe(new),
        scenarios: Vec::new(),
        steps: Vec::new(),
        cells: Vec::new(),
        latency: Vec::new(),
        latency_threshold_ms,
        scenarios_edited: Vec::new(),
    };
    let olds: BTreeMap<&str, &ScenarioDoc> =
        old.scenarios.iter().map(|s| (s.name.as_str(), s)).collect();
    let news: BTreeMap<&str, &ScenarioDoc> =
        new.scenarios.iter().map(|s| (s.name.as_str(), s)).collect();
    for (name, o) in &olds {
        if !news.contains_key(name) {
            result.scenarios.push(Change {
                what: name.to_string(),
                movement: Movement::Removed,
                old: Some(o.status.clone()),
                new: None,
            });
        }
    }
    for n in &new.scenarios {
        let Some(o) = olds.get(n.name.as_str()) else {
            result.scenarios.push(Change {
                what: n.name.clone(),
                movement: Movement::Added,
                old: None,
                new: Some(n.status.clone()),
            });
            continue;
        };
        if let (Some(a), Some(b)) = (&o.digest, &n.digest)
            && a != b
        {
            result.scenarios_edited.push(n.name.clone());
        }
        if o.status != n.status {
            result.scenarios.push(Change {
                what: n.name.clone(),
                movement: status_movement(&o.status, &n.status),
                old: Some(o.status.clone()),
                new: Some(n.status.clone()),
            });
        }
        compare_steps(&mut result, o, n, latency_threshold_ms);
    }
    result
}

fn compare_steps(result: &mut Diff, o: &ScenarioDoc, n: &ScenarioDoc, threshold: f64) {
    let old_steps: BTreeMap<String, &StepDoc> =
        o.steps.iter().map(|s| (step_key(&o.name, s), s)).collect();
    for step in &n.steps {
        let key = step_key(&n.name, step);
        let Some(before) = old_steps.get(&key) else {
            continue;
        };
        if before.status != step.status {
            result.steps.push(Change {
                what: key.clone(),
                movement: status_movement(&before.status, &step.status),
                old: Some(before.status.clone()),
                new: Some(step.status.clone()),
            });
        }
        let cell_key = |c: &CellDoc| format!("{} → {} {}/{}", c.from, c.to, c.port, c.protocol);
        let old_cells: BTreeMap<String, &str> = before
            .cells
            .iter()
            .map(|c| (cell_key(c), c.verdict.as_str()))
            .collect();
        for cell in &step.cells {
            let what = cell_key(cell);
            // A cell the old report left out (`--json-cells notable`) was unremarkable: a pass.
            let was = old_cells.get(&what).copied().unwrap_or("pass");
            // A pod to itself, or a cell the spec leaves open, seen another way: not a change.
            let quiet = |v: &str| v == "pass" || v == "undefined";
            if was != cell.verdict && !(quiet(was) && quiet(&cell.verdict)) {
                result.cells.push(Change {
                    what: format!("{key}: {what}"),
                    movement: movement(was, &cell.verdict, &["pass", "late"], &FAILING),
                    old: Some(was.to_string()),
                    new: Some(cell.verdict.clone()),
                });
            }
        }
        let new_cells: BTreeMap<String, ()> =
            step.cells.iter().map(|c| (cell_key(c), ())).collect();
        for cell in &before.cells {
            let what = cell_key(cell);
            if !new_cells.contains_key(&what) && FAILING.contains(&cell.verdict.as_str()) {
                // Left out of the new report: it passes now.
                result.cells.push(Change {
                    what: format!("{key}: {what}"),
                    movement: Movement::Fixed,
                    old: Some(cell.verdict.clone()),
                    new: Some("pass".into()),
                });
            }
        }
        for (kind, a, b) in [
            (
                "allow_to_deny",
                before.timing.allow_to_deny.max_ms,
                step.timing.allow_to_deny.max_ms,
            ),
            (
                "deny_to_allow",
                before.timing.deny_to_allow.max_ms,
                step.timing.deny_to_allow.max_ms,
            ),
            (
                "new_pod",
                before.timing.new_pod.max_ms,
                step.timing.new_pod.max_ms,
            ),
        ] {
            if let (Some(a), Some(b)) = (a, b)
                && (b - a).abs() > threshold
            {
                result.latency.push(LatencyMove {
                    step: key.clone(),
                    kind,
                    old_max_ms: a,
                    new_max_ms: b,
                });
            }
        }
    }
}

fn describe(doc: &RunDoc) -> String {
    format!("polygraph {} on {}", doc.polygraph, doc.backend)
}

fn word(m: Movement) -> &'static str {
    match m {
        Movement::Regressed => "REGRESSED",
        Movement::Fixed => "fixed",
        Movement::Changed => "changed",
        Movement::Added => "added",
        Movement::Removed => "removed",
    }
}

/// Changes listed per kind in text and Markdown; the JSON has them all.
const LISTED: usize = 50;

pub fn render_text(d: &Diff) -> String {
    let mut text = format!("old: {}\nnew: {}\n", d.old, d.new);
    for (title, changes) in [
        ("scenarios", &d.scenarios),
        ("steps", &d.steps),
        ("cells", &d.cells),
    ] {
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(text, "\n{title} ({}):", changes.len());
        for c in changes.iter().take(LISTED) {
            let _ = writeln!(
                text,
                "  {:<9} {}: {} → {}",
                word(c.movement),
                c.what,
                c.old.as_deref().unwrap_or("-"),
                c.new.as_deref().unwrap_or("-")
            );
        }
        if changes.len() > LISTED {
            let _ = writeln!(
                text,
                "  … and {} more (--format json lists all)",
                changes.len() - LISTED
            );
        }
    }
    if !d.latency.is_empty() {
        let _ = writeln!(
            text,
            "\nlatency moved by more than {:.0} ms ({}):",
            d.latency_threshold_ms,
            d.latency.len()
        );
        for m in d.latency.iter().take(LISTED) {
            let _ = writeln!(
                text,
                "  {} {}: slowest cell {:.0} ms → {:.0} ms",
                m.step, m.kind, m.old_max_ms, m.new_max_ms
            );
        }
    }
    if !d.scenarios_edited.is_empty() {
        let _ = writeln!(
            text,
            "\nedited between the runs (different YAML): {}",
            d.scenarios_edited.join(", ")
        );
    }
    let _ = writeln!(text, "\n{}", verdict_line(d));
    text
}

fn verdict_line(d: &Diff) -> String {
    let count = |m: Movement| {
        [&d.scenarios, &d.steps, &d.cells]
            .iter()
            .flat_map(|c| c.iter())
            .filter(|c| c.movement == m)
            .count()
    };
    format!(
        "{}: {} regressed, {} fixed, {} otherwise changed; {} latency moves",
        if d.regressed() {
            "REGRESSION"
        } else {
            "no regression"
        },
        count(Movement::Regressed),
        count(Movement::Fixed),
        count(Movement::Changed) + count(Movement::Added) + count(Movement::Removed),
        d.latency.len()
    )
}

pub fn render_markdown(d: &Diff) -> String {
    let mut text = format!(
        "## {} polygraph diff\n\nold: `{}` · new: `{}`\n\n",
        if d.regressed() { "❌" } else { "✅" },
        d.old,
        d.new
    );
    for (title, changes) in [
        ("Scenarios", &d.scenarios),
        ("Steps", &d.steps),
        ("Cells", &d.cells),
    ] {
        if changes.is_empty() {
            continue;
        }
        let _ = writeln!(
            text,
            "### {title}\n\n| | what | old | new |\n|---|---|---|---|"
        );
        for c in changes.iter().take(LISTED) {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} |",
                word(c.movement),
                c.what.replace('|', "\\|"),
                c.old.as_deref().unwrap_or("–"),
                c.new.as_deref().unwrap_or("–")
            );
        }
        text.push('\n');
    }
    if !d.latency.is_empty() {
        text.push_str("### Latency\n\n| step | change | old max | new max |\n|---|---|---|---|\n");
        for m in d.latency.iter().take(LISTED) {
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} ms | {:.0} ms |",
                m.step.replace('|', "\\|"),
                m.kind,
                m.old_max_ms,
                m.new_max_ms
            );
        }
        text.push('\n');
    }
    let _ = writeln!(text, "{}", verdict_line(d));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(status: &str, verdict: &str, max_ms: f64) -> RunDoc {
        serde_json::from_value(serde_json::json!({
            "polygraph": "0.1.0", "backend": "sim",
            "scenarios": [{
                "name": "s", "status": status, "digest": "abc",
                "steps": [{
                    "name": "deny", "target": "pod-ip", "family": "IPv4", "status": status,
                    "timing": {"allow_to_deny": {"max_ms": max_ms}},
                    "cells": [{"from": "x/a", "to": "x/b", "port": 80, "protocol": "TCP", "verdict": verdict}]
                }]
            }]
        }))
        .expect("a run document")
    }

    #[test]
    fn a_cell_that_passed_and_fails_now_is_a_regression() {
        let d = diff(
            &doc("passed", "pass", 100.0),
            &doc("failed", "fail", 100.0),
            500.0,
        );
        assert!(d.regressed());
        assert_eq!(d.scenarios[0].movement, Movement::Regressed);
        assert_eq!(d.cells[0].what, "s › deny: x/a → x/b 80/TCP");
        let back = diff(
            &doc("failed", "fail", 100.0),
            &doc("passed", "pass", 100.0),
            500.0,
        );
        assert!(!back.regressed());
        assert_eq!(back.cells[0].movement, Movement::Fixed);
    }

    #[test]
    fn latency_moves_only_beyond_the_threshold() {
        let d = diff(
            &doc("passed", "pass", 100.0),
            &doc("passed", "pass", 550.0),
            500.0,
        );
        assert!(d.latency.is_empty());
        let d = diff(
            &doc("passed", "pass", 100.0),
            &doc("passed", "pass", 700.0),
            500.0,
        );
        assert_eq!(d.latency.len(), 1);
        assert!(d.slower() && !d.regressed());
    }
}
