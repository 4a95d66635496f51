//! The known-answer corpus: hand-written cases from the NetworkPolicy spec and every policy
//! pattern in the project's seed documents, checked against `polygraph analyze -o json`.
//!
//! Each case lists the cells it expects BLOCKED; every other cell must be allowed. The
//! expectations were written from the spec, not produced by polygraph.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The spec rule or seed pattern under test.
    covers: String,
    /// A file in tests/corpus/clusters (default: the built-in model).
    #[serde(default)]
    cluster: Option<String>,
    /// Passed as -n.
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    protocols: Vec<String>,
    /// Policies as one multi-document YAML text, or...
    #[serde(default)]
    policies: Option<String>,
    /// ...as files of a directory applied together (`-f DIR`), name -> text.
    #[serde(default)]
    policy_files: BTreeMap<String, String>,
    /// ...or as a directory of the repository (`-f DIR`), e.g. the examples.
    #[serde(default)]
    policy_dir: Option<String>,
    expect: Vec<Expectation>,
    /// Warnings polygraph must print (substring match).
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// `80/TCP` entries; default: every probed (port, protocol).
    #[serde(default)]
    on: Vec<String>,
    #[serde(default)]
    blocked: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn load_cases() -> Vec<(String, Case)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read case file");
        let options = serde_saphyr::options! { strict_booleans: true };
        let parsed: Vec<Case> = serde_saphyr::from_str_with_options(&text, options)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        cases.extend(parsed.into_iter().map(|c| (stem.clone(), c)));
    }
    cases
}

/// Runs one case; returns the list of wrong cells (empty when it passes).
fn run_case(case: &Case) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut args: Vec<String> = vec!["analyze".into(), "-o".into(), "json".into()];
    if let Some(text) = &case.policies {
        let path = dir.path().join("policies.yaml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        args.extend(["-f".into(), path.display().to_string()]);
    }
    if !case.policy_files.is_empty() {
        let sub = dir.path().join("policies");
        std::fs::create_dir(&sub).map_err(|e| e.to_string())?;
        for (name, text) in &case.policy_files {
            std::fs::write(sub.join(name), text).map_err(|e| e.to_string())?;
        }
        args.extend(["-f".into(), sub.display().to_string()]);
    }
    if let Some(policy_dir) = &case.policy_dir {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(policy_dir);
        args.extend(["-f".into(), path.display().to_string()]);
    }
    if let Some(cluster) = &case.cluster {
        let path = corpus_dir().join("clusters").join(cluster);
        args.extend(["--cluster".into(), path.display().to_string()]);
    }
    if let Some(ns) = &case.namespace {
        args.extend(["-n".into(), ns.clone()]);
    }
    for p in &case.ports {
        args.extend(["--port".into(), p.to_string()]);
    }
    for p in &case.protocols {
        args.extend(["--protocol".into(), p.clone()]);
    }
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
    let pods: Vec<String> = report["pods"]
        .as_array()
        .ok_or("no pods in report")?
        .iter()
        .map(|p| p["pod"].as_str().unwrap_or_default().to_string())
        .collect();
    let probed: Vec<String> = report["port_protocols"]
        .as_array()
        .ok_or("no port_protocols")?
        .iter()
        .map(|pp| {
            format!(
                "{}/{}",
                pp["port"],
                pp["protocol"].as_str().unwrap_or_default()
            )
        })
        .collect();

    // Expected blocked cells: (from, to, "port/PROTO").
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    for expectation in &case.expect {
        let on = if expectation.on.is_empty() {
            &probed
        } else {
            &expectation.on
        };
        for pp in on {
            if !probed.contains(pp) {
                return Err(format!(
                    "expectation names {pp}, which is not probed ({probed:?})"
                ));
            }
            for pattern in &expectation.blocked {
                for (f, t) in common::expand_pattern(pattern, &pods) {
                    expected.insert((f, t, pp.clone()));
                }
            }
        }
    }

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
        let from = cell["from"].as_str().unwrap_or_default().to_string();
        let to = cell["to"].as_str().unwrap_or_default().to_string();
        let pp = format!(
            "{}/{}",
            cell["port"],
            cell["protocol"].as_str().unwrap_or_default()
        );
        let allowed = cell["allowed"].as_bool().ok_or("cell without allowed")?;
        let should_block = expected.contains(&(from.clone(), to.clone(), pp.clone()));
        if allowed == should_block {
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
