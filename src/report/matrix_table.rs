//! Matrices on the terminal: one table per (port, protocol), rows = from, columns = to.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Color, Table};

use crate::matrix::{Decision, TruthTable};
use crate::model::PodRef;

/// Shown under the analyze matrices.
pub const LEGEND: &str = "legend: ✓ allowed · ✗ blocked (e: by the source's egress, i: by the destination's ingress) · \
                          ~ undefined: left to the implementation by the spec (--explain says why) · \
                          D the name cannot resolve: the source's egress to the cluster DNS is blocked · \
                          ( ) a pod to itself: undefined by the spec, CNIs differ";

/// The glyph for an oracle verdict.
pub fn decision_glyph(verdict: Decision) -> &'static str {
    if verdict.undefined {
        return "~";
    }
    if verdict.no_dns {
        return "D";
    }
    match (verdict.egress, verdict.ingress) {
        (true, true) => "✓",
        (false, true) => "✗e",
        (true, false) => "✗i",
        (false, false) => "✗ei",
    }
}

/// Width a matrix may take before its columns are numbered instead of named.
const MAX_WIDTH: usize = 120;

/// Whether pod names fit as column headers: each column is as wide as its name plus padding.
fn names_fit(pods: &[PodRef]) -> bool {
    let row_label = pods.iter().map(|p| p.to_string().len()).max().unwrap_or(0);
    let columns: usize = pods.iter().map(|p| p.to_string().len() + 3).sum();
    row_label + columns + 4 <= MAX_WIDTH
}

/// Renders a pods × pods matrix: `cell(from, to)` gives each cell's text and colour. Columns carry
/// pod names when they fit, numbers otherwise (each row then starts with its number, so the key is
/// in the table). A pod's cell to itself is wrapped in parentheses: the spec leaves it undefined.
pub fn pod_matrix(
    pods: &[PodRef],
    color: bool,
    cell: impl Fn(usize, usize) -> (String, Option<Color>),
) -> Table {
    let numbered = !names_fit(pods);
    let mut out = Table::new();
    out.load_style(UTF8_FULL_CONDENSED);
    if !color {
        out.force_no_tty();
    }
    let mut header = vec![Cell::new("from \\ to")];
    header.extend(pods.iter().enumerate().map(|(i, p)| {
        let label = if numbered {
            (i + 1).to_string()
        } else {
            p.to_string()
        };
        Cell::new(label).set_alignment(CellAlignment::Center)
    }));
    out.set_header(header);
    for (from, from_pod) in pods.iter().enumerate() {
        let label = if numbered {
            format!("{:>2} {from_pod}", from + 1)
        } else {
            from_pod.to_string()
        };
        let mut row = vec![Cell::new(label)];
        for to in 0..pods.len() {
            let (glyph, fg) = cell(from, to);
            let text = if from == to {
                format!("({glyph})")
            } else {
                glyph
            };
            let mut c = Cell::new(text).set_alignment(CellAlignment::Center);
            if let (true, Some(fg)) = (color, fg) {
                c = c.fg(fg);
            }
            row.push(c);
        }
        out.add_row(row);
    }
    out
}

/// Renders the matrix of one (port, protocol) of a truth table.
pub fn truth_matrix(table: &TruthTable, pp_index: usize, color: bool) -> Table {
    pod_matrix(table.pods(), color, |from, to| {
        let verdict = table.get(pp_index, from, to);
        let fg = match (from == to, verdict.allowed()) {
            (true, _) => Color::DarkGrey,
            (false, true) => Color::Green,
            (false, false) => Color::Red,
        };
        (decision_glyph(verdict).to_string(), Some(fg))
    })
}

/// Every matrix of the table, titled, followed by the legend.
pub fn render_truth_table(table: &TruthTable, color: bool) -> String {
    let mut text = String::new();
    for (k, pp) in table.port_protocols().iter().enumerate() {
        text.push_str(&format!("{pp}\n{}\n\n", truth_matrix(table, k, color)));
    }
    text.push_str(LEGEND);
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortProtocol, Protocol};

    #[test]
    fn glyphs_name_the_blocking_side() {
        let v = |egress, ingress| decision_glyph(Decision::new(egress, ingress));
        assert_eq!(v(true, true), "✓");
        assert_eq!(v(false, true), "✗e");
        assert_eq!(v(true, false), "✗i");
        assert_eq!(v(false, false), "✗ei");
    }

    #[test]
    fn matrix_has_a_row_and_column_per_pod() {
        let pods = vec!["x/a".parse().unwrap(), "x/b".parse().unwrap()];
        let mut table = TruthTable::new(pods, vec![PortProtocol::new(80, Protocol::Tcp)]);
        table.set(0, 0, 1, Decision::new(true, true));
        let text = render_truth_table(&table, false);
        assert!(text.starts_with("80/TCP\n"));
        assert!(text.contains("from \\ to"));
        assert!(text.contains("(✗ei)"));
        assert!(text.contains("✓"));
        assert!(text.contains("legend:"));
    }

    #[test]
    fn wide_matrices_number_their_columns() {
        let pods: Vec<PodRef> = (0..15)
            .map(|i| format!("production/pod-number-{i}").parse().unwrap())
            .collect();
        let table = TruthTable::new(pods, vec![PortProtocol::new(80, Protocol::Tcp)]);
        let text = truth_matrix(&table, 0, false).to_string();
        assert!(text.contains(" 1 production/pod-number-0"));
        assert!(text.contains("15 production/pod-number-14"));
        // Each column is as wide as its number, not as its pod's name.
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest < 15 * 8 + 40, "{text}");
    }
}
