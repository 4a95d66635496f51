//! Helpers shared by the integration tests: run the real binary, expand cell patterns.
#![allow(dead_code)]

pub mod corpus;
pub mod schema;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// `run` arguments that probe far past an injected enforcer queue (`--inject queue-overflow=N/s`,
/// given beside them): two scenarios with settled and changed cells, a rate and in-flight bounds
/// far above any queue the tests inject, and a stability window (a step that converges in its
/// first round would otherwise never probe a matched cell at load again).
pub const FORCED_PAST_QUEUE: [&str; 12] = [
    "deny-all-ingress",
    "namespace-isolation",
    "--rate",
    "20000/s",
    "--max-inflight",
    "10000",
    "--max-inflight-per-node",
    "10000",
    "--step-deadline",
    "3s",
    "--stability",
    "2s",
];

/// Validates a JUnit report against the Surefire/Jenkins schema in `tests/schemas/` with xmllint.
pub fn validate_junit(path: &std::path::Path) {
    let xsd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemas/junit-10.xsd");
    let lint = Command::new("xmllint")
        .args([
            "--noout",
            "--schema",
            &xsd.display().to_string(),
            &path.display().to_string(),
        ])
        .output()
        .expect("xmllint is installed (libxml2-utils; .ci/run installs it)");
    assert!(
        lint.status.success(),
        "JUnit does not validate: {}",
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// Runs `polygraph` with `args`, feeding `stdin`.
pub fn polygraph(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polygraph"))
        // Never into the summary of the CI job running these tests.
        .env_remove("GITHUB_STEP_SUMMARY")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("polygraph binary runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("stdin accepts input");
    child.wait_with_output().expect("polygraph finishes")
}

/// `polygraph ARGS --json FILE`: the exit code, the report (`Null` when none was written) and
/// stdout.
#[allow(dead_code)] // Not every test binary that includes `common` uses it.
/// `polygraph run deny-all-ingress --backend kube` against `kubeconfig`, its JUnit and JSON
/// written into `dir`: the output, and the two reports' paths (written or not).
pub fn run_on_kubeconfig(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
) -> (Output, std::path::PathBuf, std::path::PathBuf) {
    let (junit, json) = (dir.join("junit.xml"), dir.join("run.json"));
    let output = polygraph(
        &[
            "run",
            "deny-all-ingress",
            "--backend",
            "kube",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--junit",
            &junit.display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
        "",
    );
    (output, junit, json)
}

pub fn polygraph_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().expect("utf-8 path")]);
    let output = polygraph(&all, "");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        output.status.code(),
        report,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `FROM -> TO` into (from, to) pod-name pairs, with the library's pattern syntax
/// (`ns/pod`, `ns/*`, `*/pod`, `*/*`, `!` to exclude). Panics on a pattern that matches no pod,
/// which is always a typo in a hand-written case.
pub fn expand_pattern(pattern: &str, pods: &[String]) -> BTreeSet<(String, String)> {
    let refs: Vec<polygraph::model::PodRef> = pods
        .iter()
        .map(|p| p.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    polygraph::scenario::patterns::expand_pattern(pattern, &refs)
        .unwrap_or_else(|e| panic!("pattern {pattern:?}: {e}"))
        .into_iter()
        .map(|(f, t)| (pods[f].clone(), pods[t].clone()))
        .collect()
}

/// The local cluster tests are `#[ignore]`d (they need root); run with `--include-ignored` (as
/// `.ci/run` does, as root) they must find what they need, or fail saying what is missing.
pub fn require_local_cluster() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (it builds a local cluster): run it as root"
    );
    for tool in ["ip", "nft"] {
        assert!(
            std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file())),
            "this test needs `{tool}` (apt-get install iproute2 nftables)"
        );
    }
}

/// The run id in a backend description such as `local (nftables dataplane, run 0a1b2c)`.
pub fn run_id_of(backend: &str) -> Option<String> {
    let at = backend.find("run ")? + 4;
    let id: String = backend[at..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (id.len() == 6).then_some(id)
}

/// Network namespaces of a run that still exist.
pub fn namespaces_of_run(run_id: &str) -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("pg-{run_id}-")))
        .map(str::to_string)
        .collect()
}

/// `polygraph bench enforcer ARGS --json FILE`: the exit code, the output, and each node's ramp.
pub fn bench_enforcer(args: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("enforcer.json");
    let json_arg = json.display().to_string();
    let mut all = vec!["bench", "enforcer"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", &json_arg]);
    let output = polygraph(&all, "");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    (output.status.code(), text, report)
}

/// Asserts `bench enforcer` found one node's knee in `mode` within ±25% of `injected`.
pub fn assert_knee(report: &serde_json::Value, text: &str, mode: &str, injected: f64) {
    let knee = &report["nodes"][0]["knee"];
    assert_eq!(knee["mode"], mode, "{text}");
    let estimate = knee["estimate"].as_f64().unwrap_or(0.0);
    assert!(
        (estimate - injected).abs() <= injected * 0.25,
        "the knee {estimate:.0}/s is not within 25% of the injected {injected}/s: {text}"
    );
    assert_eq!(report["nodes"][0]["stop"], "gave-way", "{text}");
}
