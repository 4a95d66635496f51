//! `polygraph probe` output: observed matrices with wrong cells marked against the oracle, a summary,
//! the wrong cells explained; and the JSON form (analyze's cells plus what was observed).

use std::collections::BTreeMap;
use std::fmt::Write;

use comfy_table::{Color, Table};
use polygraph_agent::wire::Outcome;
use serde::Serialize;

use super::analyze_json::{self, AnalyzeReport, CellJson};
use super::matrix_table::pod_matrix;
use crate::analyze::Analysis;
use crate::matrix::{Judgement, ObservedTable, Placement, TruthTable};
use crate::model::{Family, ProbePath, ProbeTarget};

pub const LEGEND: &str = "legend: ✓ connected · ✗ timed out (dropped) · ⊘ refused · ⊗ filtered (ICMP administratively prohibited) · ? unsupported here · D the name did not resolve (dns-failed) · ! probe error · \
                          · not probed (nothing listens, or another IP family) · * differs from the spec · ( ) a pod to itself: undefined by the spec (through its own Service: judged where a cluster policy decides)";

/// Counts of each judgement.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProbeSummary {
    pub cells: usize,
    pub probed: usize,
    pub matching: usize,
    pub wrong: usize,
    pub unsupported: usize,
    pub errors: usize,
    pub self_differs: usize,
    /// Left to the implementation by the spec (cluster policy ties, DNS).
    pub undefined: usize,
    /// Refused where a cluster policy's Deny requires a drop.
    pub not_dropped: usize,
    pub not_probed: usize,
    /// Unsupported cells per protocol, to say which protocol this node lacks.
    pub unsupported_protocols: Vec<String>,
}

impl ProbeSummary {
    /// Adds another path's counts.
    pub fn add(&mut self, other: &ProbeSummary) {
        self.cells += other.cells;
        self.probed += other.probed;
        self.matching += other.matching;
        self.wrong += other.wrong;
        self.unsupported += other.unsupported;
        self.errors += other.errors;
        self.self_differs += other.self_differs;
        self.undefined += other.undefined;
        self.not_dropped += other.not_dropped;
        self.not_probed += other.not_probed;
        for protocol in &other.unsupported_protocols {
            if !self.unsupported_protocols.contains(protocol) {
                self.unsupported_protocols.push(protocol.clone());
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.wrong > 0 || self.errors > 0 || self.not_dropped > 0
    }
}

pub fn summarize(analysis: &Analysis, observed: &ObservedTable) -> ProbeSummary {
    let mut s = ProbeSummary::default();
    let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
    for (_, cell, judgement, _) in observed.judged(&analysis.table) {
        s.cells += 1;
        match judgement {
            Judgement::Match => s.matching += 1,
            Judgement::Wrong => s.wrong += 1,
            Judgement::SelfDiffers => s.self_differs += 1,
            Judgement::Undefined => s.undefined += 1,
            Judgement::RefusedNotDropped => s.not_dropped += 1,
            Judgement::Unsupported => {
                s.unsupported += 1;
                *unsupported
                    .entry(cell.port_protocol.protocol.to_string())
                    .or_default() += 1;
            }
            Judgement::Error => s.errors += 1,
            Judgement::NotProbed => s.not_probed += 1,
        }
    }
    s.probed = s.cells - s.not_probed;
    s.unsupported_protocols = unsupported.into_keys().collect();
    s
}

/// The glyph for an observed outcome (the terminal's and the HTML report's).
pub fn glyph(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Connected => "✓",
        Outcome::Timeout => "✗",
        Outcome::Refused => "⊘",
        Outcome::Filtered => "⊗",
        Outcome::Unsupported => "?",
        Outcome::DnsFailed => "D",
        Outcome::Error => "!",
    }
}

/// The observed matrix of one (port, protocol), cells that differ from the spec marked.
pub fn observed_matrix(
    expected: &TruthTable,
    observed: &ObservedTable,
    pp_index: usize,
    color: bool,
) -> Table {
    pod_matrix(observed.pods(), color, |from, to| {
        let judgement = observed.judge(expected, pp_index, from, to);
        let Some(observation) = observed.get(pp_index, from, to) else {
            return ("·".into(), Some(Color::DarkGrey));
        };
        let base = glyph(observation.outcome);
        match judgement {
            Judgement::Match => (base.into(), Some(Color::Green)),
            Judgement::Wrong => (format!("{base}*"), Some(Color::Red)),
            Judgement::SelfDiffers | Judgement::Undefined => {
                (format!("{base}~"), Some(Color::DarkGrey))
            }
            Judgement::RefusedNotDropped => (format!("{base}*"), Some(Color::Red)),
            Judgement::Unsupported => (base.into(), Some(Color::Yellow)),
            Judgement::Error => ("!".into(), Some(Color::Red)),
            Judgement::NotProbed => ("·".into(), Some(Color::DarkGrey)),
        }
    })
}

/// One line per cell that fails (wrong or probe error), with the oracle's reason; at most `max`.
pub fn wrong_cells(analysis: &Analysis, observed: &ObservedTable, max: usize) -> Vec<String> {
    let oracle = analysis.oracle();
    let pods = observed.pods();
    let failing: Vec<_> = observed
        .judged(&analysis.table)
        .filter(|(_, _, j, _)| j.fails())
        .collect();
    let mut lines: Vec<String> = failing
        .iter()
        .take(max)
        .map(|(k, cell, judgement, observation)| {
            let (from, to) = (&pods[cell.from], &pods[cell.to]);
            let seen = observation.map_or("nothing".to_string(), |o| match &o.detail {
                Some(d) => format!("{} ({d})", o.outcome),
                None => o.outcome.to_string(),
            });
            if *judgement == Judgement::Error {
                return format!("{from} -> {to} {}: probe error: {seen}", cell.port_protocol);
            }
            let explanation = oracle.explain(*cell);
            let decision = analysis.table.get(*k, cell.from, cell.to);
            let placement = observed
                .placement(cell.from, cell.to)
                .map_or(String::new(), |p| format!(" [{p}]"));
            if decision.no_dns {
                return format!(
                    "{from} -> {to} {}{placement}: observed {seen}; the spec says dns-failed: \
                     {from}'s egress to the cluster's DNS (53/UDP) is blocked, so the name cannot resolve",
                    cell.port_protocol
                );
            }
            if *judgement == Judgement::RefusedNotDropped {
                return format!(
                    "{from} -> {to} {}: refused, but a cluster policy's Deny requires a silent drop: {}",
                    cell.port_protocol,
                    explanation.reason()
                );
            }
            let expected = if explanation.allowed() {
                "allowed"
            } else {
                "blocked"
            };
            if observation.is_some_and(|o| o.outcome == Outcome::DnsFailed) {
                return format!(
                    "{from} -> {to} {}{placement}: the name did not resolve ({seen}), but {from} may reach the cluster's DNS; the spec says {expected}: {}",
                    cell.port_protocol,
                    explanation.reason()
                );
            }
            format!(
                "{from} -> {to} {}{placement}: observed {seen}; the spec says {expected}: {}",
                cell.port_protocol,
                explanation.reason()
            )
        })
        .collect();
    if failing.len() > max {
        lines.push(format!(
            "… and {} more (the JSON report lists every cell)",
            failing.len() - max
        ));
    }
    lines
}

/// How the wrong cells split between same-node and cross-node pairs, when the backend knows nodes:
/// failures on one path only point at how the CNI enforces that path.
pub fn placement_line(analysis: &Analysis, observed: &ObservedTable) -> Option<String> {
    let (mut same, mut cross, mut known) = (0, 0, false);
    for (_, cell, judgement, _) in observed.judged(&analysis.table) {
        let placement = observed.placement(cell.from, cell.to);
        known |= placement.is_some();
        if judgement.fails() {
            match placement {
                Some(Placement::SameNode) => same += 1,
                Some(Placement::CrossNode) => cross += 1,
                None => {}
            }
        }
    }
    (known && same + cross > 0)
        .then(|| format!("wrong cells by placement: {same} same-node, {cross} cross-node"))
}

/// Matrices, summary and explained wrong cells.
pub fn render(
    analysis: &Analysis,
    observed: &ObservedTable,
    summary: &ProbeSummary,
    color: bool,
    max_listed: usize,
) -> String {
    let mut text = String::new();
    for (k, pp) in observed.port_protocols().iter().enumerate() {
        let _ = writeln!(
            text,
            "{pp}\n{}\n",
            observed_matrix(&analysis.table, observed, k, color)
        );
    }
    let _ = writeln!(text, "{LEGEND}");
    let _ = writeln!(text, "{}", summary_line(summary));
    let lines = wrong_cells(analysis, observed, max_listed);
    if !lines.is_empty() {
        let _ = writeln!(text, "\ncells that differ from the spec:");
    }
    for line in lines {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = placement_line(analysis, observed) {
        let _ = writeln!(text, "  {line}");
    }
    text
}

pub fn summary_line(s: &ProbeSummary) -> String {
    let mut line = format!(
        "{} cells probed: {} as the spec says, {} wrong",
        s.probed, s.matching, s.wrong
    );
    if s.errors > 0 {
        let _ = write!(line, ", {} probe errors", s.errors);
    }
    if s.unsupported > 0 {
        let _ = write!(
            line,
            ", {} unsupported ({} not available on this node)",
            s.unsupported,
            s.unsupported_protocols.join(", ")
        );
    }
    if s.not_dropped > 0 {
        let _ = write!(
            line,
            ", {} answered (refused or filtered) where a Deny requires a drop",
            s.not_dropped
        );
    }
    if s.self_differs > 0 {
        let _ = write!(
            line,
            "; {} self-traffic cells differ (undefined by the spec)",
            s.self_differs
        );
    }
    if s.undefined > 0 {
        let _ = write!(
            line,
            "; {} cells left to the implementation by the spec (not judged)",
            s.undefined
        );
    }
    if s.not_probed > 0 {
        let _ = write!(
            line,
            "; {} not probed (nothing listens, or another IP family)",
            s.not_probed
        );
    }
    line
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub backend: String,
    pub cells: Vec<ProbeCellJson>,
    #[serde(flatten)]
    pub model: ModelJson,
    pub probe_summary: ProbeSummary,
    /// How the rounds went (`probe` waits for enforcement to converge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence: Option<crate::run::converge::Convergence>,
}

/// The analyze report's other parts, unchanged.
#[derive(Debug, Serialize)]
pub struct ModelJson {
    pub port_protocols: Vec<analyze_json::PortProtocolJson>,
    pub pods: Vec<analyze_json::PodJson>,
    pub policies: Vec<analyze_json::PolicyJson>,
    pub summary: analyze_json::SummaryJson,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbeCellJson {
    #[serde(flatten)]
    pub spec: CellJson,
    /// How the probe reached the destination: `pod-ip`, `service`, `service-name`, ...
    pub target: ProbeTarget,
    /// The spec's answer is `dns-failed`: the probe goes by name and the source cannot reach the
    /// cluster's DNS (the connection itself is what `allowed` says). Present only then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dns_failed: bool,
    /// `IPv4` or `IPv6`.
    pub family: Family,
    /// The outcome word (`connected`, `refused`, `timeout`, `unsupported`, `dns-failed`, `error`);
    /// null when not probed.
    pub observed: Option<Outcome>,
    /// Whether the observation matches the spec's `allowed`.
    pub matches: bool,
    pub judgement: Judgement,
    /// `same-node` or `cross-node`, when the backend knows where pods run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One path's probe (target and family), as `probe` keeps it.
pub struct PathProbe {
    pub path: ProbePath,
    pub analysis: Analysis,
    pub observed: ObservedTable,
}

/// The JSON report of every path: the cells of all of them (each with its target and family), the
/// counts summed, the model as the first path saw it.
pub fn report_paths(paths: &[PathProbe], backend: String) -> Option<ProbeReport> {
    let (first, rest) = paths.split_first()?;
    let mut report = report(first.path, &first.analysis, &first.observed, backend);
    for other in rest {
        let more = self::report(other.path, &other.analysis, &other.observed, String::new());
        report.cells.extend(more.cells);
        report.probe_summary.add(&more.probe_summary);
    }
    Some(report)
}

pub fn report(
    path: ProbePath,
    analysis: &Analysis,
    observed: &ObservedTable,
    backend: String,
) -> ProbeReport {
    let AnalyzeReport {
        cells,
        port_protocols,
        pods,
        policies,
        summary,
        warnings,
    } = analyze_json::report(analysis);
    // Both iterate (port/protocol, from, to) in the same order.
    let cells = cells
        .into_iter()
        .zip(observed.judged(&analysis.table))
        .map(|(spec, (k, cell, judgement, observation))| ProbeCellJson {
            spec,
            target: path.target,
            dns_failed: analysis.table.get(k, cell.from, cell.to).no_dns,
            family: path.family,
            placement: observed.placement(cell.from, cell.to),
            observed: observation.map(|o| o.outcome),
            matches: judgement == Judgement::Match,
            judgement,
            elapsed_ms: observation.map(|o| o.elapsed_ms),
            peer: observation.and_then(|o| o.peer.clone()),
            detail: observation.and_then(|o| o.detail.clone()),
        })
        .collect();
    ProbeReport {
        backend,
        cells,
        model: ModelJson {
            port_protocols,
            pods,
            policies,
            summary,
            warnings,
        },
        probe_summary: summarize(analysis, observed),
        convergence: None,
    }
}
