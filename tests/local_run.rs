//! `polygraph run` and `smoke` on the local cluster. Needs root; otherwise says SKIPPED and passes.

mod common;

use std::process::Command;

use serde::Deserialize;

use common::local_cluster_or_skip;

/// The `run` JSON as README documents it; unknown fields are errors, so drift fails the test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RunJson {
    polygraph: String,
    backend: String,
    passed: bool,
    elapsed_ms: f64,
    options: Options,
    summary: Summary,
    scenarios: Vec<ScenarioJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Options {
    probe_timeout_ms: f64,
    step_deadline_ms: f64,
    max_latency_ms: Option<f64>,
    stability_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Counts {
    pass: usize,
    fail: usize,
    late: usize,
    flapping: usize,
    undefined: usize,
    unsupported: usize,
    error: usize,
    not_probed: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Summary {
    scenarios: usize,
    passed: usize,
    failed: usize,
    steps: usize,
    cells: Counts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ScenarioJson {
    name: String,
    description: String,
    tags: Vec<String>,
    source: String,
    passed: bool,
    elapsed_ms: f64,
    error: Option<String>,
    steps: Vec<StepJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StepJson {
    name: String,
    origin: String,
    passed: bool,
    elapsed_ms: f64,
    apply_ms: f64,
    rounds: usize,
    error: Option<String>,
    counts: Counts,
    timing: Timing,
    cells: Vec<CellJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Stats {
    cells: usize,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    max_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Flows {
    held: usize,
    survived: usize,
    cut: usize,
    tcp_survived: usize,
    udp_survived: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Timing {
    allow_to_deny: Stats,
    deny_to_allow: Stats,
    new_pod: Stats,
    late_deny: usize,
    late_allow: usize,
    never_converged: usize,
    flapping: usize,
    max_leak_ms: Option<f64>,
    new_pod_leak_ms: Option<f64>,
    new_pod_first_probe_ms: Option<f64>,
    round_interval_ms: Option<f64>,
    established: Flows,
    #[serde(default)]
    per_node: std::collections::BTreeMap<String, Stats>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CellJson {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    allowed: bool,
    observed: Option<String>,
    verdict: String,
    latency_ms: Option<f64>,
    change: String,
    race: Option<String>,
    #[serde(default)]
    last_wrong_ms: Option<f64>,
    #[serde(default)]
    established: Option<String>,
    /// Only where the backend knows nodes; the local cluster is one host.
    #[serde(default)]
    placement: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

const VERDICTS: [&str; 8] = [
    "pass",
    "fail",
    "late",
    "flapping",
    "undefined",
    "unsupported",
    "error",
    "not_probed",
];

#[test]
fn the_whole_library_passes_with_valid_junit_and_json() {
    if !local_cluster_or_skip("the_whole_library_passes_with_valid_junit_and_json") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("run.json");
    let output = common::polygraph(
        &[
            "run",
            "--junit",
            &junit.display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    println!("{}", stdout.lines().last().unwrap_or_default());

    let report: RunJson =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("documented schema");
    assert!(report.passed);
    assert_eq!(report.summary.failed, 0);
    assert!(report.summary.scenarios >= 30);
    // The reference dataplane is stateful: connections established before a deny live on.
    let held: usize = report
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| s.timing.established.held)
        .sum();
    let cut: usize = report
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| s.timing.established.cut)
        .sum();
    assert!(held > 500, "{held} connections held across denies");
    assert_eq!(cut, 0, "conntrack keeps established connections");
    for scenario in &report.scenarios {
        for step in &scenario.steps {
            // The reference dataplane installs every change before the backend call returns:
            // without injected faults there is no race to report.
            let t = &step.timing;
            assert_eq!(
                (
                    t.late_deny,
                    t.late_allow,
                    t.never_converged,
                    t.flapping,
                    t.max_leak_ms
                ),
                (0, 0, 0, 0, None),
                "{} › {}",
                scenario.name,
                step.name
            );
            for cell in &step.cells {
                assert!(
                    ["unchanged", "allow_to_deny", "deny_to_allow", "new_pod"]
                        .contains(&cell.change.as_str())
                );
                assert_eq!(cell.race, None, "{cell:?}");
                assert!(
                    VERDICTS.contains(&cell.verdict.as_str()),
                    "{}",
                    cell.verdict
                );
                assert!(["TCP", "UDP", "SCTP"].contains(&cell.protocol.as_str()));
                if cell.verdict == "pass" {
                    assert!(
                        cell.latency_ms.is_some(),
                        "a passing cell has a convergence time"
                    );
                }
            }
        }
    }

    let xsd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas/junit-10.xsd");
    let lint = Command::new("xmllint")
        .args([
            "--noout",
            "--schema",
            &xsd.display().to_string(),
            &junit.display().to_string(),
        ])
        .output()
        .expect("xmllint is installed (libxml2-utils; .ci/run installs it)");
    assert!(
        lint.status.success(),
        "JUnit does not validate: {}",
        String::from_utf8_lossy(&lint.stderr)
    );
}

#[test]
fn ignored_policies_fail_the_deny_scenarios() {
    if !local_cluster_or_skip("ignored_policies_fail_the_deny_scenarios") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("run.json");
    let output = common::polygraph(
        &[
            "run",
            "--tags",
            "deny",
            "--dataplane",
            "none",
            "--step-deadline",
            "1s",
            "--junit",
            &junit.display().to_string(),
            "--json",
            &json.display().to_string(),
            "--json-cells",
            "notable",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    // Only the cells with something to say are listed; the counts still cover all of them.
    let report: RunJson =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("schema");
    for step in report.scenarios.iter().flat_map(|s| &s.steps) {
        let c = &step.counts;
        assert_eq!(step.cells.len(), c.fail + c.error + c.late + c.flapping);
        assert!(step.cells.iter().all(|cell| cell.verdict != "pass"));
    }
    for name in ["deny-all-ingress", "deny-all-egress", "deny-all-both"] {
        assert!(
            stdout.contains(&format!("FAIL {name} › ")),
            "{name} should fail: {stdout}"
        );
    }
    assert!(
        stdout.contains("observed connected; the spec says blocked"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("<failure message=\""), "{xml}");
}

#[test]
fn smoke_tells_enforcing_from_not_enforcing() {
    if !local_cluster_or_skip("smoke_tells_enforcing_from_not_enforcing") {
        return;
    }
    let enforcing = common::polygraph(&["smoke"], "");
    let text = String::from_utf8_lossy(&enforcing.stdout);
    assert_eq!(enforcing.status.code(), Some(0), "{text}");
    assert!(text.contains("\nENFORCING:"), "{text}");

    let ignored = common::polygraph(
        &["smoke", "--dataplane", "none", "--step-deadline", "1s"],
        "",
    );
    let text = String::from_utf8_lossy(&ignored.stdout);
    assert_eq!(ignored.status.code(), Some(1), "{text}");
    assert!(text.contains("\nNOT ENFORCING:"), "{text}");
    assert!(
        text.contains("client-b → server: connected (spec: blocked) ✗"),
        "{text}"
    );
}
