//! The HTML report (`--html FILE`): one self-contained page, no script, no network (inline CSS
//! and SVG), for a reviewer who reads in a browser. The profiles and features (certify), every
//! scenario, the latency distribution per kind of change, the leak windows on a time axis, and
//! per failing or late step the expected and observed matrices with the differing cells marked
//! and each wrong cell's reason. It renders the run's result; it judges nothing.
//!
//! Marked-up counts a test can read back: `td.wrong` is a cell whose verdict fails, and the body's
//! `data-wrong-cells` their total.

use std::fmt::Write;

use super::probe::glyph;
use crate::certify::{self, Certification, FeatureStatus, TestStatus};
use crate::matrix::Judgement;
use crate::run::timing::{Change, Race};
use crate::run::{RunResult, Status, StepResult, Verdict};

/// Wrong cells explained per step; the matrices show them all.
const EXPLAINED: usize = 50;
/// Leak windows drawn; the JSON report has them all.
const LEAKS_DRAWN: usize = 120;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
h1.pass{color:#1a7f37} h1.fail{color:#cf222e}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.passed,.success,.supported{color:#1a7f37} .failed,.failure{color:#cf222e;font-weight:bold}
.unsupported,.partial,.skipped{color:#9a6700}
table.matrix td{text-align:center;font-family:monospace;min-width:1.6em;padding:.1em .3em}
table.matrix th{font-family:monospace;font-size:.85em}
td.allow{color:#1a7f37} td.deny{color:#cf222e} td.self{color:#8c959f}
td.wrong{background:#ffd7d5;outline:2px solid #cf222e;font-weight:bold}
.matrices{display:flex;gap:2em;flex-wrap:wrap}
code{background:#f6f8fa;padding:0 .2em}
details{margin:.5em 0}
svg text{font-size:11px;font-family:system-ui,sans-serif}
";

pub fn render(result: &RunResult, certification: Option<&Certification>) -> String {
    let wrong: usize = result
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .map(StepResult::failing_cells)
        .sum();
    let passed = certification.map_or(result.passed(), Certification::passed);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>polygraph report</title><style>{STYLE}</style></head>\n<body data-wrong-cells=\"{wrong}\" data-scenarios=\"{}\">\n",
        result.scenarios.len()
    );
    let _ = writeln!(
        page,
        "<h1 class=\"{}\">polygraph: {}</h1>",
        if passed { "pass" } else { "fail" },
        if passed { "passed" } else { "FAILED" }
    );
    let _ = writeln!(
        page,
        "<p><code>{}</code> · {:.1} s · {} scenarios, {} steps, <span id=\"wrong-total\">{wrong}</span> wrong cells</p>",
        esc(&result.backend),
        result.elapsed.as_secs_f64(),
        result.scenarios.len(),
        result.totals.steps
    );
    cluster(&mut page, result);
    if let Some(certification) = certification {
        profiles(&mut page, certification);
    }
    scenarios(&mut page, result);
    latency(&mut page, result);
    leaks(&mut page, result);
    steps(&mut page, result);
    page.push_str("</body></html>\n");
    page
}

fn cluster(page: &mut String, result: &RunResult) {
    let c = &result.cluster;
    let mut facts: Vec<String> = Vec::new();
    if let Some(cni) = &c.cni {
        facts.push(format!("CNI: {}", esc(cni)));
    }
    if let Some(version) = &c.server_version {
        facts.push(format!("Kubernetes {}", esc(version)));
    }
    match c.nodes {
        0 => {}
        1 => facts.push("1 node".into()),
        n => facts.push(format!("{n} nodes")),
    }
    if !c.kernels.is_empty() {
        facts.push(format!("kernel {}", esc(&c.kernels.join(", "))));
    }
    for check in &result.apis {
        facts.push(format!(
            "{}: {}",
            check.api,
            esc(&check.verdict.to_string())
        ));
    }
    if !facts.is_empty() {
        let _ = writeln!(page, "<p id=\"cluster\">{}</p>", facts.join(" · "));
    }
}

fn profiles(page: &mut String, certification: &Certification) {
    page.push_str("<h2>Conformance profiles</h2>\n<table id=\"profiles\"><tr><th>profile</th><th>level</th><th>result</th><th>passed</th><th>failed</th><th>skipped</th><th>features</th></tr>\n");
    for profile in &certification.profiles {
        for level in std::iter::once(&profile.core).chain(profile.extended.as_ref()) {
            let word = certify::status_word(level.status);
            let features: String = level
                .features
                .iter()
                .map(|f| {
                    let class = match f.status {
                        FeatureStatus::Supported => "supported",
                        FeatureStatus::Unsupported => "unsupported",
                        FeatureStatus::Failed => "failed",
                    };
                    format!(
                        "<span class=\"{class}\" title=\"{class}\">{}</span>",
                        f.name
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"{word}\">{word}</td><td>{}</td><td>{}</td><td>{}</td><td>{features}</td></tr>",
                profile.profile.name,
                level.name,
                level.count(TestStatus::Passed),
                level.count(TestStatus::Failed),
                level.count(TestStatus::Skipped),
            );
        }
    }
    page.push_str("</table>\n");
}

fn scenarios(page: &mut String, result: &RunResult) {
    page.push_str("<h2>Scenarios</h2>\n<table id=\"scenarios\"><tr><th>scenario</th><th>status</th><th>steps passed</th><th>wrong cells</th><th>late deny</th><th>why</th></tr>\n");
    for s in &result.scenarios {
        let status = s.status();
        let word = status_word(status);
        let wrong: usize = s.steps.iter().map(StepResult::failing_cells).sum();
        let why = match status {
            Status::Failed => certify::failure_reason(s),
            Status::Unsupported => s.unsupported.clone().unwrap_or_default(),
            Status::Passed => String::new(),
        };
        // Only scenarios with a failing or late step have a section to link to.
        let name = if s.steps.iter().any(worth) {
            format!(
                "<a href=\"#{}\">{}</a>",
                anchor(&s.scenario.name),
                esc(&s.scenario.name)
            )
        } else {
            esc(&s.scenario.name)
        };
        let _ = writeln!(
            page,
            "<tr><td>{name}</td><td class=\"{word}\">{word}</td><td>{}/{}</td><td>{wrong}</td><td>{}</td><td>{}</td></tr>",
            s.totals.steps_passed,
            s.steps.len(),
            s.totals.late_deny,
            esc(&why)
        );
    }
    page.push_str("</table>\n");
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Passed => "passed",
        Status::Failed => "failed",
        Status::Unsupported => "unsupported",
    }
}

/// A histogram per kind of change: how long cells took to match the spec after it.
fn latency(page: &mut String, result: &RunResult) {
    let kinds = [
        (Change::AllowToDeny, "allow → deny"),
        (Change::DenyToAllow, "deny → allow"),
        (Change::NewPod, "new pod"),
    ];
    let mut values: [Vec<f64>; 3] = Default::default();
    for step in result.scenarios.iter().flat_map(|s| &s.steps) {
        for (k, cell, timing) in step.timing.cells() {
            let change = *step.changes.get(k, cell.from, cell.to);
            if let (Some(slot), Some(ms)) = (
                kinds.iter().position(|(c, _)| *c == change),
                timing.converged_ms,
            ) {
                values[slot].push(ms);
            }
        }
    }
    if values.iter().all(Vec::is_empty) {
        return;
    }
    page.push_str("<h2>Enforcement latency</h2>\n<p>Cells by the time from the change to the first observation that matched the spec and kept matching.</p>\n<div class=\"matrices\">\n");
    let totals = &result.totals;
    for ((_, label), (values, stats)) in kinds.iter().zip(values.iter().zip([
        &totals.allow_to_deny,
        &totals.deny_to_allow,
        &totals.new_pod,
    ])) {
        if values.is_empty() {
            continue;
        }
        let top = values.iter().copied().fold(1.0_f64, f64::max);
        const BINS: usize = 20;
        let mut bins = [0usize; BINS];
        for v in values {
            bins[((v / top * BINS as f64) as usize).min(BINS - 1)] += 1;
        }
        let highest = bins.iter().copied().max().unwrap_or(1).max(1);
        let (w, h) = (320.0, 120.0);
        let mut svg = format!(
            "<figure><svg width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"{label} latency\">",
            h + 30.0
        );
        for (i, count) in bins.iter().enumerate() {
            let bar = *count as f64 / highest as f64 * h;
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#0969da\"><title>{count} cells</title></rect>",
                i as f64 * w / BINS as f64,
                h - bar,
                w / BINS as f64 - 1.0
            );
        }
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">0</text><text x=\"{w}\" y=\"{}\" text-anchor=\"end\">{top:.0} ms</text></svg>",
            h + 14.0,
            h + 14.0
        );
        let _ = writeln!(
            page,
            "{svg}<figcaption>{label}: {} cells, p50 {}, p99 {}, max {}</figcaption></figure>",
            values.len(),
            opt_ms(stats.p50_ms),
            opt_ms(stats.p99_ms),
            opt_ms(stats.max_ms)
        );
    }
    page.push_str("</div>\n");
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.0} ms"))
}

/// Each late-deny cell as a bar from the change to the moment it was blocked: when forbidden
/// traffic got through.
fn leaks(page: &mut String, result: &RunResult) {
    let mut windows: Vec<(String, f64)> = Vec::new();
    for s in &result.scenarios {
        for step in &s.steps {
            let pods = step.expected.table.pods();
            for (k, cell, timing) in step.timing.cells() {
                let allowed = step.expected.table.get(k, cell.from, cell.to).allowed();
                if timing.race(allowed) == Some(Race::LateDeny)
                    && let Some(ms) = timing.converged_ms
                {
                    let pp = step.expected.table.port_protocols()[k];
                    windows.push((
                        format!(
                            "{} › {}: {} → {} {pp}",
                            s.scenario.name,
                            step.title(),
                            pods[cell.from],
                            pods[cell.to]
                        ),
                        ms,
                    ));
                }
            }
        }
    }
    if windows.is_empty() {
        return;
    }
    windows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let drawn = windows.len().min(LEAKS_DRAWN);
    let top = windows.first().map_or(1.0, |w| w.1.max(1.0));
    let (w, row) = (600.0, 6.0);
    let h = drawn as f64 * row;
    let _ = write!(
        page,
        "<h2>Leak windows</h2>\n<p>{} cells were allowed after the change that blocks them (late deny); the {drawn} longest, from the change (0) to the first blocked observation:</p>\n<svg id=\"leaks\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"leak windows\">",
        windows.len(),
        w + 10.0,
        h + 20.0
    );
    for (i, (label, ms)) in windows.iter().take(drawn).enumerate() {
        let _ = write!(
            page,
            "<rect x=\"0\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#cf222e\"><title>{} ({ms:.0} ms)</title></rect>",
            i as f64 * row,
            ms / top * w,
            row - 1.0,
            esc(label)
        );
    }
    let _ = writeln!(
        page,
        "<text x=\"0\" y=\"{}\">0</text><text x=\"{w}\" y=\"{}\" text-anchor=\"end\">{top:.0} ms</text></svg>",
        h + 14.0,
        h + 14.0
    );
}

/// A step the page shows in full: failed, or late.
fn worth(step: &StepResult) -> bool {
    step.status() == Status::Failed || step.summary.late_deny > 0 || step.summary.late_allow > 0
}

/// Every failing or late step: its matrices and wrong cells.
fn steps(page: &mut String, result: &RunResult) {
    if !result.scenarios.iter().flat_map(|s| &s.steps).any(worth) {
        return;
    }
    page.push_str("<h2>Failing and late steps</h2>\n<p>✓ connected · ✗ dropped · ⊘ refused · ⊗ filtered · ? unsupported · D did not resolve · ! probe error · · not probed; marked: differs from the spec. In the expected matrix ✓ is allowed and ✗ blocked; ( ) a pod to itself.</p>\n");
    for s in &result.scenarios {
        let mut first = true;
        for step in s.steps.iter().filter(|step| worth(step)) {
            if first {
                let _ = writeln!(
                    page,
                    "<h3 id=\"{}\">{}</h3><p><code>{}</code></p>",
                    anchor(&s.scenario.name),
                    esc(&s.scenario.name),
                    esc(&s.scenario.source)
                );
                first = false;
            }
            step_section(page, step);
        }
    }
}

fn step_section(page: &mut String, step: &StepResult) {
    let word = status_word(step.status());
    let _ = writeln!(
        page,
        "<h4>{} <span class=\"{word}\">{word}</span></h4><p><code>{}</code> {}</p>",
        esc(&step.title()),
        esc(&step.origin),
        esc(&super::run_terminal::timing_line(step))
    );
    if let Some(error) = &step.error {
        let _ = writeln!(page, "<p class=\"failed\">error: {}</p>", esc(error));
    }
    let Some(observed) = &step.observed else {
        return;
    };
    let expected = &step.expected.table;
    let pods = expected.pods();
    let n = pods.len();
    for (k, pp) in expected.port_protocols().iter().enumerate() {
        let failing = (0..n).any(|f| (0..n).any(|t| step.verdicts.get(k, f, t).fails()));
        let late = step.timing.cells().any(|(kk, cell, timing)| {
            kk == k
                && matches!(
                    timing.race(expected.get(k, cell.from, cell.to).allowed()),
                    Some(Race::LateDeny | Race::LateAllow)
                )
        });
        if !failing && !late {
            continue;
        }
        let header: String = pods
            .iter()
            .map(|p| format!("<th>{}</th>", esc(&p.to_string())))
            .collect();
        let mut spec = format!(
            "<table class=\"matrix expected\"><caption>{pp} expected</caption><tr><th></th>{header}</tr>"
        );
        let mut seen = format!(
            "<table class=\"matrix observed\"><caption>{pp} observed</caption><tr><th></th>{header}</tr>"
        );
        for (from, pod) in pods.iter().enumerate() {
            let row = format!("<tr><th>{}</th>", esc(&pod.to_string()));
            spec.push_str(&row);
            seen.push_str(&row);
            for to in 0..n {
                let decision = expected.get(k, from, to);
                let glyph_spec = super::matrix_table::decision_glyph(decision);
                let class = if from == to {
                    "self"
                } else if decision.allowed() {
                    "allow"
                } else {
                    "deny"
                };
                let _ = write!(spec, "<td class=\"{class}\">{glyph_spec}</td>");
                let verdict = *step.verdicts.get(k, from, to);
                let observation = observed.get(k, from, to);
                let text = observation.map_or("·", |o| glyph(o.outcome));
                let mut classes = vec![match observation
                    .map(|o| o.outcome == polygraph_agent::wire::Outcome::Connected)
                {
                    _ if from == to => "self",
                    Some(true) => "allow",
                    Some(false) => "deny",
                    None => "self",
                }];
                if verdict.fails() {
                    classes.push("wrong");
                }
                let title = match (verdict, observed.judge(expected, k, from, to)) {
                    (v, _) if v.fails() => format!(
                        "{v:?}: the spec says {}",
                        if decision.allowed() {
                            "allowed"
                        } else {
                            "blocked"
                        }
                    ),
                    (Verdict::Late, _) => "late: matched the spec only after differing".into(),
                    (_, Judgement::Undefined | Judgement::SelfDiffers) => {
                        "undefined by the spec".into()
                    }
                    _ => String::new(),
                };
                let _ = write!(
                    seen,
                    "<td class=\"{}\" title=\"{}\">{text}</td>",
                    classes.join(" "),
                    esc(&title)
                );
            }
            spec.push_str("</tr>");
            seen.push_str("</tr>");
        }
        let _ = writeln!(
            page,
            "<div class=\"matrices\">{spec}</table>{seen}</table></div>"
        );
    }
    let lines = super::probe::wrong_cells(&step.expected, observed, EXPLAINED);
    if !lines.is_empty() {
        page.push_str("<ul class=\"wrong-cells\">");
        for line in lines {
            let _ = write!(page, "<li>{}</li>", esc(&line));
        }
        page.push_str("</ul>\n");
    }
}

fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Text as HTML (the Markdown summary's HTML parts too).
pub(super) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
