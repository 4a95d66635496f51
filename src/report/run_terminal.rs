//! `polygraph run` on the terminal: a line per step while it runs, then every failing step with its
//! expected and observed matrices and explained wrong cells, then summary tables per scenario and
//! per feature tag.

use std::fmt::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, Table};

use super::matrix_table::{self, truth_matrix};
use super::probe::{self, observed_matrix, wrong_cells};
use crate::run::timing::LatencyStats;
use crate::run::{RunResult, ScenarioResult, Status, StepResult, Verdict};
use crate::scenario::Scenario;

/// Wrong cells listed per failing step; the JSON report has all.
const LISTED: usize = 20;

fn seconds(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(value: f64) -> String {
    if value >= 1000.0 {
        format!("{:.2} s", value / 1e3)
    } else {
        format!("{value:.0} ms")
    }
}

fn stats(label: &str, s: &LatencyStats) -> Option<String> {
    let (p50, p90, max) = (s.p50_ms?, s.p90_ms?, s.max_ms?);
    Some(format!(
        "{label} p50 {} p90 {} max {} ({} cells)",
        ms(p50),
        ms(p90),
        ms(max),
        s.cells
    ))
}

/// The step's timing in one line: latency per kind of change, races, leak windows, resolution.
/// Empty when nothing changed and nothing raced.
pub fn timing_line(step: &StepResult) -> String {
    let t = &step.summary;
    let mut parts: Vec<String> = [
        stats("allow→deny", &t.allow_to_deny),
        stats("deny→allow", &t.deny_to_allow),
        stats("new pod", &t.new_pod),
    ]
    .into_iter()
    .flatten()
    .collect();
    if t.late_deny > 0 {
        parts.push(format!(
            "{} late deny (leak window up to {})",
            t.late_deny,
            t.max_leak_ms.map_or("?".into(), ms)
        ));
    }
    if t.late_allow > 0 {
        parts.push(format!("{} late allow", t.late_allow));
    }
    if t.never_converged > 0 {
        parts.push(format!("{} never converged", t.never_converged));
    }
    if t.flapping > 0 {
        parts.push(format!("{} flapping", t.flapping));
    }
    if let Some(evidence) = &t.fail_open_evidence {
        parts.push(evidence.describe());
    }
    if t.new_pod.cells > 0 {
        parts.push(match t.new_pod_leak_ms {
            Some(leak) => format!("new pod leaked for up to {} after creation", ms(leak)),
            None => format!(
                "new pod: nothing forbidden got through (first probed {} after creation)",
                t.new_pod_first_probe_ms.map_or("?".into(), ms)
            ),
        });
    }
    let flows = &t.established;
    if flows.held > 0 {
        parts.push(format!(
            "established connections: {} of {} survived the deny (TCP {}, UDP {})",
            flows.survived, flows.held, flows.tcp_survived, flows.udp_survived
        ));
    }
    if parts.is_empty() {
        return String::new();
    }
    if let Some(interval) = t.round_interval_ms {
        parts.push(format!("resolution {}", ms(interval)));
    }
    parts.join("; ")
}

/// How a step's silent probes were judged, when not by the whole timeout: `silent after 2 × 100
/// ms: 162 confirmed` (each confirmed by a second, independent attempt), and with more attempts
/// on a lossy network `silent after 2 × 100 ms, 16 attempts: 162 confirmed`.
fn silence_note(step: &StepResult) -> String {
    match step.deadline {
        Some(deadline) => format!(
            "; silent after 2 × {}{}: {} confirmed",
            ms(deadline.as_secs_f64() * 1e3),
            if step.attempts > 2 {
                format!(", {} attempts", step.attempts)
            } else {
                String::new()
            },
            step.confirmations
        ),
        None => String::new(),
    }
}

/// One line per finished step, for plain (non-terminal) progress output.
pub fn step_line(scenario: &Scenario, step: &StepResult) -> String {
    let status = match step.status() {
        Status::Passed => "PASS",
        Status::Failed => "FAIL",
        Status::Unsupported => "UNSUPPORTED",
    };
    let mut line = format!(
        "{status}  {} › {}  ({} round{}, {}{})",
        scenario.name,
        step.title(),
        step.rounds,
        if step.rounds == 1 { "" } else { "s" },
        seconds(step.elapsed),
        silence_note(step)
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
    let not_dropped = step.count(Verdict::NotDropped);
    if not_dropped > 0 {
        let _ = write!(
            line,
            ": {not_dropped} answered (refused or filtered) where a Deny requires a silent drop"
        );
    }
    let late = step.count(Verdict::Late);
    if late > 0 {
        let _ = write!(line, ", {late} late");
    }
    let t = &step.summary;
    if t.late_deny + t.late_allow + t.flapping + t.fail_open > 0
        || t.new_pod.cells > 0
        || t.established.held > 0
    {
        let _ = write!(line, " [{}]", timing_line(step));
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
        scenario.scenario.name,
        step.title(),
        step.origin
    );
    if let Some(e) = &step.error {
        let _ = writeln!(text, "  error: {e}");
    }
    let timing = timing_line(step);
    if !timing.is_empty() {
        let _ = writeln!(text, "  timing: {timing}");
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

fn status_cell(status: Status, color: bool) -> Cell {
    let (word, colour) = match status {
        Status::Passed => ("pass", Color::Green),
        Status::Failed => ("FAIL", Color::Red),
        Status::Unsupported => ("unsupported", Color::Yellow),
    };
    let cell = Cell::new(word);
    if color { cell.fg(colour) } else { cell }
}

/// Enforcement timing over the whole run, then every step that showed a race.
fn timing_section(text: &mut String, result: &RunResult, color: bool) {
    let totals = &result.totals;
    let mut racing = table(color);
    racing.set_header(vec![
        "step with races",
        "late deny",
        "longest leak",
        "late allow",
        "never converged",
        "flapping",
        "resolution",
    ]);
    let mut any_race = false;
    for scenario in &result.scenarios {
        for step in &scenario.steps {
            let t = &step.summary;
            if t.late_deny + t.late_allow + t.never_converged + t.flapping > 0 {
                any_race = true;
                racing.add_row(vec![
                    Cell::new(format!("{} › {}", scenario.scenario.name, step.title())),
                    Cell::new(t.late_deny),
                    Cell::new(t.max_leak_ms.map_or("-".into(), ms)),
                    Cell::new(t.late_allow),
                    Cell::new(t.never_converged),
                    Cell::new(t.flapping),
                    Cell::new(t.round_interval_ms.map_or("-".into(), ms)),
                ]);
            }
        }
    }
    let parts: Vec<String> = [
        stats("allow→deny", &totals.allow_to_deny),
        stats("deny→allow", &totals.deny_to_allow),
        stats("new pod", &totals.new_pod),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        return;
    }
    let _ = writeln!(text, "enforcement latency: {}", parts.join("; "));
    let nodes: Vec<String> = totals
        .per_node
        .iter()
        .filter_map(|(node, values)| stats(node, values))
        .collect();
    if !nodes.is_empty() {
        let _ = writeln!(text, "by destination node: {}", nodes.join("; "));
    }
    let _ = match totals.max_leak_ms {
        Some(leak) => writeln!(
            text,
            "leaks: {} late-deny cells let forbidden traffic through, the longest for up to {}",
            totals.late_deny,
            ms(leak)
        ),
        None => writeln!(
            text,
            "leaks: none (no forbidden connection got through after a change)"
        ),
    };
    let flows = &totals.established;
    if flows.held > 0 {
        let _ = writeln!(
            text,
            "established connections: {} of {} held across a deny survived it (TCP {}, UDP {}); the spec leaves this open, so it is reported, never failed",
            flows.survived, flows.held, flows.tcp_survived, flows.udp_survived
        );
    }
    if any_race {
        let _ = writeln!(text, "{racing}");
    }
}

/// Everything after the run: failing steps in detail, then the summaries.
pub fn render(result: &RunResult, color: bool) -> String {
    let mut text = String::new();
    if !result.apis.is_empty() {
        let checks: Vec<String> = result
            .apis
            .iter()
            .map(|c| match &c.crd {
                Some(crd) => format!("{} {} ({crd})", c.api, c.verdict),
                None => format!("{} {}", c.api, c.verdict),
            })
            .collect();
        let _ = writeln!(text, "\npolicy APIs (precheck): {}", checks.join(" · "));
    }
    for scenario in &result.scenarios {
        if let Some(reason) = &scenario.not_enforced {
            let _ = writeln!(text, "\nFAIL {}: {reason}", scenario.scenario.name);
        }
        // A failing scenario of an API the precheck found only partly enforced says so before
        // its cells.
        if scenario.status() == Status::Failed {
            for api in crate::run::precheck::PolicyApi::used_by(&scenario.scenario) {
                if let Some(check) = result.apis.iter().find(|c| {
                    c.api == api && c.verdict == crate::run::precheck::ApiVerdict::Partial
                }) {
                    let _ = writeln!(
                        text,
                        "\nnote: {}: {} is only partly enforced here (the precheck, {}, saw some of its denies blocked, not all)",
                        scenario.scenario.name, check.api, check.scenario
                    );
                }
            }
        }
        if let (Some(e), true) = (&scenario.error, scenario.steps.is_empty()) {
            let _ = writeln!(text, "\nFAIL {}: {e}", scenario.scenario.name);
        }
        if let Some(reason) = &scenario.unsupported {
            let _ = writeln!(text, "\nUNSUPPORTED {}: {reason}", scenario.scenario.name);
        }
        for warning in &scenario.warnings {
            let _ = writeln!(text, "warning: {}: {warning}", scenario.scenario.name);
        }
        for index in 0..scenario.steps.len() {
            if scenario.steps[index].status() == Status::Failed {
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
    for scenario in &result.scenarios {
        let count = |v: Verdict| scenario.totals.count(v).to_string();
        let steps_passed = scenario.totals.steps_passed;
        per_scenario.add_row(vec![
            Cell::new(&scenario.scenario.name),
            Cell::new(format!("{steps_passed}/{}", scenario.scenario.steps.len())),
            Cell::new(count(Verdict::Pass)),
            Cell::new(count(Verdict::Fail)),
            Cell::new(count(Verdict::Late)),
            Cell::new(count(Verdict::Unsupported)),
            Cell::new(seconds(scenario.elapsed)),
            status_cell(scenario.status(), color),
        ]);
    }
    let _ = writeln!(text, "\n{per_scenario}");
    if !result.totals.per_tag.is_empty() {
        let mut tags = table(color);
        tags.set_header(vec![
            "feature tag",
            "scenarios",
            "passed",
            "failed",
            "unsupported",
            "result",
        ]);
        for (tag, counts) in &result.totals.per_tag {
            tags.add_row(vec![
                Cell::new(tag),
                Cell::new(counts.passed + counts.failed + counts.unsupported),
                Cell::new(counts.passed),
                Cell::new(counts.failed),
                Cell::new(counts.unsupported),
                status_cell(counts.status(), color),
            ]);
        }
        let _ = writeln!(text, "{tags}");
    }
    timing_section(&mut text, result, color);
    let t = &result.totals;
    let unsupported = if t.scenarios_unsupported > 0 {
        format!(", {} unsupported", t.scenarios_unsupported)
    } else {
        String::new()
    };
    let _ = writeln!(text, "{}", pace_line(&result.pace));
    let through_services = result.scenarios.iter().any(|s| {
        s.steps
            .iter()
            .any(|step| step.path.target.through_cluster_ip())
    });
    if through_services {
        let _ = writeln!(
            text,
            "service hairpin: {} (--service-hairpin {})",
            match result.options.service_hairpin {
                crate::model::ServiceHairpin::Policy =>
                    "a pod's traffic to its own Service judged as subject to cluster policies",
                crate::model::ServiceHairpin::Exempt =>
                    "a pod's traffic to its own Service exempt, never judged (a socket-level load balancer)",
            },
            clap::ValueEnum::to_possible_value(&result.options.service_hairpin)
                .map_or_else(String::new, |v| v.get_name().to_string())
        );
    }
    if result.sessions_broken > 0 {
        let _ = writeln!(
            text,
            "agent sessions: {} broke and were reopened (their batches sent again; a broken stream is never an outcome)",
            result.sessions_broken
        );
    }
    let _ = writeln!(
        text,
        "{} scenarios: {} passed, {} failed{unsupported}; {} steps in {} on {}",
        result.scenarios.len(),
        t.scenarios_passed,
        t.scenarios_failed,
        t.steps,
        seconds(result.elapsed),
        result.backend
    );
    text
}

/// `pace: 12840 new connections, at most 486 in flight, peak 4870/s (bounds: …); congestion never
/// slowed it` — what the pacer did over the run.
pub fn pace_line(pace: &crate::run::PaceReport) -> String {
    let congestion = match pace.backoffs {
        0 => "congestion never slowed it".to_string(),
        n => format!(
            "congestion halved the window {n} time{} (down to {} in flight)",
            if n == 1 { "" } else { "s" },
            pace.min_window
        ),
    };
    format!(
        "pace: {} new connections, at most {} in flight, peak {:.0}/s ({}); {congestion}",
        pace.connections,
        pace.peak_inflight,
        pace.peak_rate,
        pace.options.describe()
    )
}
