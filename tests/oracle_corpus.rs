//! The known-answer corpus: hand-written cases from the NetworkPolicy spec and every policy
//! pattern in the project's seed documents, checked against `polygraph analyze -o json`.
//!
//! Each case lists the cells it expects BLOCKED; every other cell must be allowed. The
//! expectations were written from the spec, not produced by polygraph.

mod common;

use std::collections::BTreeSet;

use common::corpus::{Case, cell_key, load_cases, report_axes};

/// Runs one case; returns the list of wrong cells (empty when it passes).
fn run_case(case: &Case) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let args = case.args("analyze", dir.path());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = common::polygraph(&argv, "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("polygraph failed: {stderr}"));
    }
    for warning in &case.warnings {
        if !stderr.contains(warning.as_str()) {
            return Err(format!(
                "expected warning containing {warning:?}, stderr: {stderr}"
            ));
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("bad JSON: {e}"))?;
    let (pods, probed) = report_axes(&report)?;
    let expected = case.expected_blocked(&pods, &probed)?;
    let undefined = case.expected_undefined(&pods, &probed)?;
    let cells = report["cells"].as_array().ok_or("no cells")?;
    if cells.len() != pods.len() * pods.len() * probed.len() {
        return Err(format!(
            "{} cells for {} pods × {} port/protocols",
            cells.len(),
            pods.len(),
            probed.len()
        ));
    }
    let mut wrong = Vec::new();
    for cell in cells {
        let key = cell_key(cell);
        let allowed = cell["allowed"].as_bool().ok_or("cell without allowed")?;
        let is_undefined = cell["undefined"]
            .as_bool()
            .ok_or("cell without undefined")?;
        if is_undefined != undefined.contains(&key) {
            let (from, to, pp) = key;
            wrong.push(format!(
                "{from} -> {to} {pp}: expected {}, oracle says {} ({})",
                if is_undefined { "defined" } else { "undefined" },
                if is_undefined { "undefined" } else { "defined" },
                cell["reason"].as_str().unwrap_or_default()
            ));
            continue;
        }
        if is_undefined {
            continue;
        }
        let should_block = expected.contains(&key);
        if allowed == should_block {
            let (from, to, pp) = key;
            wrong.push(format!(
                "{from} -> {to} {pp}: expected {}, oracle says {} ({})",
                if should_block { "blocked" } else { "allowed" },
                if allowed { "allowed" } else { "blocked" },
                cell["reason"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(wrong)
}

#[test]
fn known_answer_corpus() {
    let cases = load_cases();
    assert!(
        cases.len() >= 40,
        "the corpus must hold at least 40 cases, has {}",
        cases.len()
    );
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for (file, case) in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case name {}",
            case.name
        );
        assert!(!case.covers.is_empty());
        match run_case(case) {
            Ok(wrong) if wrong.is_empty() => {}
            Ok(wrong) => {
                let shown: Vec<&String> = wrong.iter().take(8).collect();
                failures.push(format!(
                    "{file}/{}: {} wrong cells:\n    {}",
                    case.name,
                    wrong.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
            Err(e) => failures.push(format!("{file}/{}: {e}", case.name)),
        }
    }
    println!("{} corpus cases run", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
