//! `polygraph certify` on the simulation, end to end from the command line: the whole library
//! gives a success report valid against `schemas/conformance-report.schema.json`; an injected
//! fault fails the feature it breaks and nothing else; the HTML page, opened in headless
//! Chromium, shows as many wrong cells as the JSON holds; the step summary stays under GitHub's
//! 1 MiB cap when the file it is appended to is nearly full.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Certifies on the simulation into a fresh directory: (exit code, stdout, the directory).
/// Short stability window, a short step deadline (a wrong cell waits it out) and four lanes: the
/// simulation's answers don't need more, and CI's time is counted.
fn certify(extra: &[&str]) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().display().to_string();
    let mut args = vec![
        "certify",
        "--backend",
        "sim",
        "--stability",
        "100ms",
        "--step-deadline",
        "3s",
        "--parallel-scenarios",
        "4",
        "--output-dir",
        &out,
    ];
    args.extend(extra);
    let output = common::polygraph(&args, "");
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), stdout, dir)
}

/// The report as JSON, after checking it against the schema (Python's jsonschema, which
/// `.ci/run` installs with kubernetes-validate).
fn validated_report(dir: &Path) -> Value {
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/conformance-report.schema.json");
    let report = dir.join("conformance-report.yaml");
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             report = yaml.safe_load(open(sys.argv[2]))\n\
             jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(report)\n\
             print(json.dumps(report))",
            &schema.display().to_string(),
            &report.display().to_string(),
        ])
        .output()
        .expect("python3 runs (jsonschema and PyYAML: .ci/run installs kubernetes-validate)");
    assert!(
        check.status.success(),
        "{} is not valid against the schema: {}",
        report.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    serde_json::from_slice(&check.stdout).expect("the validator prints JSON")
}

fn profile<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["profiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("profile {name} in {report}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_whole_library_certifies_on_the_simulation_with_every_report_valid() {
    let (code, stdout, dir) = certify(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    let report = validated_report(dir.path());
    for (name, level) in [
        ("NetworkPolicy", "core"),
        ("NetworkPolicy", "extended"),
        ("ClusterNetworkPolicy", "standard"),
        ("ClusterNetworkPolicy", "experimental"),
        ("Timing", "core"),
    ] {
        let status = &profile(&report, name)[level];
        assert_eq!(status["result"], "success", "{name} {level}: {status}");
        assert!(
            status["statistics"]["Passed"].as_u64() > Some(0),
            "{name} {level}"
        );
    }
    // Every scenario named with its digest, and the command that reproduces it.
    let scenarios = report["polygraph"]["reproduce"]["scenarios"]
        .as_array()
        .expect("scenarios");
    assert!(scenarios.len() >= 60, "{} scenarios", scenarios.len());
    assert!(
        report["polygraph"]["reproduce"]["command"]
            .as_str()
            .is_some_and(|c| c.contains("certify --backend sim")),
        "{}",
        report["polygraph"]["reproduce"]
    );
    // The other four reports, each valid in its own way.
    common::validate_junit(&dir.path().join("junit.xml"));
    let json = std::fs::read_to_string(dir.path().join("run.json")).expect("run.json");
    let run: common::schema::RunJson = serde_json::from_str(&json).expect("run.json as documented");
    assert_eq!(run.scenarios.len(), scenarios.len());
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(
        summary.starts_with("## ✅ Policies are enforced: NetworkPolicy"),
        "{summary}"
    );
    assert!(
        summary.contains("| Timing | core | ✅ success |"),
        "{summary}"
    );
    let html = std::fs::metadata(dir.path().join("report.html")).expect("report.html");
    assert!(
        html.len() < 2 * 1024 * 1024,
        "the whole library's page is {} bytes",
        html.len()
    );
}

#[test]
fn an_injected_fault_fails_the_feature_it_breaks_and_nothing_else() {
    let (code, stdout, dir) = certify(&["--inject", "endport-ignored"]);
    // Only an optional feature broke: the core levels pass, and so does the exit code.
    assert_eq!(code, Some(0), "{stdout}");
    let report = validated_report(dir.path());
    let np = profile(&report, "NetworkPolicy");
    assert_eq!(np["core"]["result"], "success", "{np}");
    assert_eq!(np["extended"]["result"], "failure", "{np}");
    assert_eq!(strings(&np["extended"]["failedFeatures"]), ["EndPort"]);
    assert_eq!(strings(&np["extended"]["failedTests"]), ["end-port-range"]);
    assert!(
        !strings(&np["extended"]["supportedFeatures"]).contains(&"EndPort".to_string()),
        "{np}"
    );
    for (name, level) in [
        ("ClusterNetworkPolicy", "standard"),
        ("ClusterNetworkPolicy", "experimental"),
        ("Timing", "core"),
    ] {
        assert_eq!(profile(&report, name)[level]["result"], "success", "{name}");
    }

    // The page, as a browser renders it, marks every wrong cell the JSON holds.
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run.json")).expect("run.json"),
    )
    .expect("JSON");
    let failing = ["fail", "error", "flapping", "not_dropped", "fail_open"];
    let wrong = run["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["steps"].as_array().into_iter().flatten())
        .flat_map(|step| step["cells"].as_array().into_iter().flatten())
        .filter(|cell| failing.iter().any(|v| cell["verdict"] == *v))
        .count();
    assert!(wrong > 0, "the fault made no wrong cell");
    let page = dir.path().join("report.html");
    let dom = chromium(&["--dump-dom"], &page);
    let marked = dom.matches(" wrong\"").count();
    assert_eq!(marked, wrong, "cells marked wrong in the rendered page");
    assert!(dom.contains(&format!("<span id=\"wrong-total\">{wrong}</span>")));
    assert!(dom.contains("end-port-range"));
    // The screenshot README points at: CI keeps it as an artifact.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polygraph-report.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// Headless Chromium on a local file (Debian's `chromium`; `.ci/run` installs it): its stdout.
fn chromium(args: &[&str], page: &Path) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_slow_dataplane_fails_timing_alone() {
    let vendor = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        vendor.path(),
        "organization: ACME\nproject: acme-cni\nurl: https://example.com/cni\nversion: v1.2.3\ncontact: [netpol@example.com]\n",
    )
    .expect("write");
    let (code, stdout, dir) = certify(&[
        "--inject",
        "delay=1500ms",
        "--max-latency",
        "1s",
        "--profile",
        "Timing,NetworkPolicy",
        "--implementation",
        &vendor.path().display().to_string(),
        "--mode",
        "ebpf",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    let report = validated_report(dir.path());
    let timing = profile(&report, "Timing");
    assert_eq!(timing["core"]["result"], "failure", "{timing}");
    let failed = strings(&timing["core"]["failedTests"]);
    assert!(
        failed.contains(&"EnforcementLatency/policy-updated".to_string()),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"NewPodProtection/new-pod-under-policy".to_string()),
        "{failed:?}"
    );
    assert!(
        timing["core"]["reasons"]["EnforcementLatency/policy-updated"]
            .as_str()
            .is_some_and(|r| r.contains("bound 1000 ms")),
        "{timing}"
    );
    // Late is not wrong: the semantics held once the changes arrived.
    assert_eq!(
        profile(&report, "NetworkPolicy")["core"]["result"],
        "success"
    );
    assert!(report["polygraph"]["timing"]["lateDeny"].as_u64() > Some(0));
    assert_eq!(report["profiles"].as_array().map(Vec::len), Some(2));
    // Who was certified, as the implementation file says, and how it was set up.
    assert_eq!(report["implementation"]["project"], "acme-cni");
    assert_eq!(
        report["implementation"]["contact"],
        serde_json::json!(["netpol@example.com"])
    );
    assert_eq!(report["implementation"]["additionalInformation"], "");
    assert_eq!(report["mode"], "ebpf");
}

#[test]
fn the_step_summary_is_cut_to_fit_under_githubs_cap() {
    const CAP: usize = 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = dir.path().join("step-summary.md");
    // Another step's tool left the file nearly full: 1 KiB and a little of room remains.
    let earlier = "x".repeat(CAP - 1500) + "\n";
    std::fs::write(&summary, &earlier).expect("write");
    let out = dir.path().join("certification");
    let output = Command::new(env!("CARGO_BIN_EXE_polygraph"))
        .args([
            "certify",
            "--backend",
            "sim",
            "--profile",
            "NetworkPolicy",
            "--stability",
            "0s",
            "--step-deadline",
            "2s",
            "--parallel-scenarios",
            "4",
            "--inject",
            "egress-ignored",
            "--output-dir",
        ])
        .arg(&out)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .expect("polygraph runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = std::fs::read_to_string(&summary).expect("summary");
    assert!(text.len() <= CAP, "{} bytes: over GitHub's cap", text.len());
    assert!(text.starts_with(&earlier), "what was there is kept");
    let ours = &text[earlier.len()..];
    // The smoke check (ingress) passes, egress is ignored: enforced at all, and failing.
    assert!(
        ours.starts_with("## ❌ Policies are enforced: NetworkPolicy"),
        "{ours}"
    );
    assert!(ours.contains("sections cut"), "{ours}");
    // The file written to the output directory had the whole cap: nothing cut there.
    let full = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(!full.contains("sections cut"), "{full}");
    assert!(full.len() > ours.len());
    assert!(
        full.contains("<details><summary>❌ <b>deny-all-egress</b>"),
        "{full}"
    );
}

#[test]
fn diff_names_what_a_cni_upgrade_broke_and_exits_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str, inject: &[&str]| {
        let json = dir.path().join(name);
        let mut args = vec![
            "run",
            "--backend",
            "sim",
            "deny-all-ingress",
            "namespace-isolation",
            "--step-deadline",
            "2s",
            "--json",
        ];
        let path = json.display().to_string();
        args.push(&path);
        args.extend(inject);
        common::polygraph(&args, "");
        json
    };
    let before = run("before.json", &[]);
    let (html, md) = (dir.path().join("after.html"), dir.path().join("after.md"));
    let (html_arg, md_arg) = (html.display().to_string(), md.display().to_string());
    let after = run(
        "after.json",
        &[
            "--inject",
            "ingress-ignored",
            "--html",
            &html_arg,
            "--summary-md",
            &md_arg,
        ],
    );
    // `run` writes the page and the summary too (no certification: no profile table).
    let page = std::fs::read_to_string(&html).expect("run --html");
    assert!(page.contains("<h1 class=\"fail\">polygraph: FAILED</h1>"));
    assert!(!page.contains("Conformance profiles"));
    let summary = std::fs::read_to_string(&md).expect("run --summary-md");
    assert!(
        summary
            .starts_with("## ❌ polygraph: 0 of 2 scenarios passed (enforcement not prechecked)"),
        "{summary}"
    );
    let diff = |old: &Path, new: &Path, format: &str| {
        let output = common::polygraph(
            &[
                "diff",
                &old.display().to_string(),
                &new.display().to_string(),
                "--format",
                format,
            ],
            "",
        );
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, table) = diff(&before, &after, "table");
    assert_eq!(code, Some(1), "{table}");
    assert!(
        table.contains("REGRESSED deny-all-ingress: passed → failed"),
        "{table}"
    );
    assert!(
        table.contains("deny-all-ingress › deny all ingress in x: y/a → x/a 80/TCP: pass → fail"),
        "{table}"
    );
    let (code, json) = diff(&before, &after, "json");
    assert_eq!(code, Some(1));
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert!(json["cells"].as_array().is_some_and(|c| !c.is_empty()));
    // The other way round, the upgrade fixed it: nothing regressed.
    let (code, markdown) = diff(&after, &before, "markdown");
    assert_eq!(code, Some(0), "{markdown}");
    assert!(markdown.starts_with("## ✅ polygraph diff"), "{markdown}");
    assert!(
        markdown.contains("| fixed | deny-all-ingress | failed | passed |"),
        "{markdown}"
    );
}

#[test]
fn without_a_dataplane_every_profiles_core_fails() {
    let (code, stdout, dir) = certify(&["--dataplane", "none"]);
    assert_eq!(code, Some(1), "{stdout}");
    let report = validated_report(dir.path());
    for (name, level) in [
        ("NetworkPolicy", "core"),
        ("ClusterNetworkPolicy", "standard"),
        ("Timing", "core"),
    ] {
        let status = &profile(&report, name)[level];
        assert_eq!(status["result"], "failure", "{name}: {status}");
        assert_eq!(status["statistics"]["Passed"], 0, "{name}: {status}");
    }
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(
        summary.starts_with("## ❌ Policies are NOT enforced here: NetworkPolicy (networking.k8s.io/v1) NOT ENFORCING"),
        "{summary}"
    );
    assert_eq!(
        report["polygraph"]["cluster"]["cni"], "none (policies ignored)",
        "{report}"
    );
}

#[test]
fn list_profiles_names_each_features_scenarios() {
    let output = common::polygraph(&["certify", "--list-profiles"], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("    EndPort: port ranges (endPort) (end-port-range, seed-api-policy)"),
        "{stdout}"
    );
    assert!(stdout.contains("  standard (12 scenarios): "), "{stdout}");
    assert!(stdout.contains("    Stability: "), "{stdout}");
}
