//! Matrices on the terminal: one table per (port, protocol), rows = from, columns = to.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Color, Table};

use crate::matrix::{TruthTable, Verdict};

/// Shown under the analyze matrices.
pub const LEGEND: &str = "legend: ✓ allowed · ✗ blocked (e: by the source's egress, i: by the destination's ingress) · \
                          ( ) a pod to itself: undefined by the spec, CNIs differ";

/// The glyph for an oracle verdict.
pub fn verdict_glyph(verdict: Verdict) -> &'static str {
    match (verdict.egress, verdict.ingress) {
        (true, true) => "✓",
        (false, true) => "✗e",
        (true, false) => "✗i",
        (false, false) => "✗ei",
    }
}

/// Renders the matrix of one (port, protocol) of a truth table.
pub fn truth_matrix(table: &TruthTable, pp_index: usize, color: bool) -> Table {
    let pods = table.pods();
    let mut out = Table::new();
    out.load_style(UTF8_FULL_CONDENSED);
    if !color {
        out.force_no_tty();
    }
    let mut header = vec![Cell::new("from \\ to")];
    header.extend(
        pods.iter()
            .map(|p| Cell::new(p.to_string()).set_alignment(CellAlignment::Center)),
    );
    out.set_header(header);
    for (from, from_pod) in pods.iter().enumerate() {
        let mut row = vec![Cell::new(from_pod.to_string())];
        for to in 0..pods.len() {
            let verdict = table.get(pp_index, from, to);
            let glyph = verdict_glyph(verdict);
            let text = if from == to {
                format!("({glyph})")
            } else {
                glyph.to_string()
            };
            let mut cell = Cell::new(text).set_alignment(CellAlignment::Center);
            if color {
                cell = cell.fg(match (from == to, verdict.allowed()) {
                    (true, _) => Color::DarkGrey,
                    (false, true) => Color::Green,
                    (false, false) => Color::Red,
                });
            }
            row.push(cell);
        }
        out.add_row(row);
    }
    out
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
        let v = |egress, ingress| verdict_glyph(Verdict { egress, ingress });
        assert_eq!(v(true, true), "✓");
        assert_eq!(v(false, true), "✗e");
        assert_eq!(v(true, false), "✗i");
        assert_eq!(v(false, false), "✗ei");
    }

    #[test]
    fn matrix_has_a_row_and_column_per_pod() {
        let pods = vec!["x/a".parse().unwrap(), "x/b".parse().unwrap()];
        let mut table = TruthTable::new(pods, vec![PortProtocol::new(80, Protocol::Tcp)]);
        table.set(
            0,
            0,
            1,
            Verdict {
                egress: true,
                ingress: true,
            },
        );
        let text = render_truth_table(&table, false);
        assert!(text.starts_with("80/TCP\n"));
        assert!(text.contains("from \\ to"));
        assert!(text.contains("(✗ei)"));
        assert!(text.contains("✓"));
        assert!(text.contains("legend:"));
    }
}
