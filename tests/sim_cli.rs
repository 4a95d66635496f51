//! The simulated backend from the command line: the whole library, an unsupported scenario,
//! smoke's wrong cells, and an interrupt. No root, no cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn the_whole_library_passes_on_the_simulation_in_seconds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (junit, json) = (dir.path().join("junit.xml"), dir.path().join("run.json"));
    let started = Instant::now();
    let output = common::polygraph(
        &[
            "run",
            "--backend",
            "sim",
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
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("on sim (oracle answers"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    let scenarios = report["summary"]["scenarios"].as_u64().expect("count");
    assert!(scenarios >= 32);
    assert_eq!(report["summary"]["passed"], scenarios);
    assert_eq!(report["summary"]["unsupported"], 0);
    assert!(report["summary"]["totals"]["established"]["held"].as_u64() > Some(1000));
    common::validate_junit(&junit);
    // Each step's test case points at its line in the scenario's file, for CI annotations.
    let xml = std::fs::read_to_string(&junit).expect("junit");
    let library = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let located = xml.matches(r#" file="scenarios/"#).count();
    assert!(located as u64 >= scenarios, "{located} located test cases");
    let text = std::fs::read_to_string(library.join("deny-all-ingress.yaml")).expect("scenario");
    let at = xml
        .split(r#"file="scenarios/deny-all-ingress.yaml" line=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<usize>().ok())
        .expect("deny-all-ingress's step located");
    assert!(
        text.lines()
            .nth(at - 1)
            .is_some_and(|l| l.contains("- name:")),
        "line {at} of deny-all-ingress.yaml is not a step"
    );
    // Informational: a debug build on 2 cores takes about a second.
    println!(
        "whole library on sim: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// A scenario whose every cell is unsupported is `unsupported`: not failed, not passed, in the
/// terminal, JUnit (skipped) and JSON.
#[test]
fn a_scenario_with_no_judged_cell_is_unsupported_everywhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("sctp-only.yaml");
    std::fs::write(
        &scenario,
        r#"name: sctp-only
description: Only SCTP is probed.
tags: [sctp]
probe: {protocols: [SCTP]}
steps:
  - name: deny all ingress in x
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
    )
    .expect("write");
    let (junit, json) = (dir.path().join("junit.xml"), dir.path().join("run.json"));
    let output = common::polygraph(
        &[
            "run",
            "--backend",
            "sim",
            "--sim-sctp",
            "unsupported",
            &scenario.display().to_string(),
            "--junit",
            &junit.display().to_string(),
            "--json",
            &json.display().to_string(),
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "never failed\n{stdout}");
    assert!(stdout.contains("UNSUPPORTED  sctp-only"), "{stdout}");
    assert!(
        stdout.contains("1 scenarios: 0 passed, 0 failed, 1 unsupported"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    assert_eq!(report["scenarios"][0]["status"], "unsupported");
    assert_eq!(report["scenarios"][0]["passed"], false);
    assert_eq!(report["scenarios"][0]["steps"][0]["status"], "unsupported");
    assert_eq!(report["summary"]["unsupported"], 1);
    assert_eq!(report["summary"]["passed"], 0);
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("<skipped"), "{xml}");
    common::validate_junit(&junit);

    // With SCTP served, the same scenario is judged and passes.
    let output = common::polygraph(
        &["run", "--backend", "sim", &scenario.display().to_string()],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("1 scenarios: 1 passed, 0 failed;"),
        "{stdout}"
    );
}

/// A PARTIAL smoke verdict prints every wrong cell, including replies from the server to a client
/// (dropped replies are what a stateless dataplane gets wrong).
#[test]
fn smoke_prints_every_wrong_cell_whatever_its_direction() {
    let output = common::polygraph(&["smoke", "--backend", "sim", "--inject", "stateless"], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PARTIAL"), "{stdout}");
    assert!(
        stdout.contains("also wrong: server → client-a: timeout (spec: allowed) ✗"),
        "{stdout}"
    );
    let output = common::polygraph(&["smoke", "--backend", "sim"], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ENFORCING") && !stdout.contains("also wrong"),
        "{stdout}"
    );
    assert!(
        stdout.contains("client-b → server: dns-failed (spec: dns-failed)"),
        "the DNS check: {stdout}"
    );
    // A dataplane that drops DNS: names never resolve, so the DNS check cannot pass.
    let output = common::polygraph(
        &[
            "smoke",
            "--backend",
            "sim",
            "--inject",
            "dns-egress-blocked",
            "--step-deadline",
            "1s",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("smoke-dns: ✗ setting up the cluster"),
        "{stdout}"
    );
}

/// Ctrl-C during a run: the backend cleans up and says what it removed, in its own words.
#[test]
fn an_interrupt_names_what_the_backend_cleaned_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polygraph"))
        // Never into the summary of the CI job running these tests.
        .env_remove("GITHUB_STEP_SUMMARY")
        .args([
            "run",
            "--backend",
            "sim",
            "--inject",
            "delay=1h",
            "--step-deadline",
            "2h",
            "deny-all-ingress",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start polygraph");
    let mut first = String::new();
    // Kept open until the end: a reader that goes away ends a run quietly (exit 0), and the
    // header has more lines than this one.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("first line");
    assert!(first.starts_with("backend: sim"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("signal");
    let output = child.wait_with_output().expect("exit");
    drop(stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT: the simulated cluster was discarded"),
        "{stderr}"
    );
}

/// `polygraph analyze ... | head`: a reader that goes away is not an error.
#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polygraph"))
        // Never into the summary of the CI job running these tests.
        .env_remove("GITHUB_STEP_SUMMARY")
        .args(["run", "--backend", "sim"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start polygraph");
    // Read nothing and close the pipe: every write polygraph makes fails.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("exit");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `probe` on the simulation: the spec's table observed, and a fault shown as wrong cells.
#[test]
fn probe_on_the_simulation_matches_the_spec_and_shows_a_fault() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cluster = format!("{root}/examples/production/cluster.yaml");
    let policies = format!("{root}/examples/production/policies");
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "probe".to_string(),
            "--backend".into(),
            "sim".into(),
            "--cluster".into(),
            cluster.clone(),
            "-f".into(),
            policies.clone(),
            "-o".into(),
            "json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |extra: &[&'static str]| {
        let args = args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = common::polygraph(&refs, "");
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), report)
    };
    let (code, report) = run(&[]);
    assert_eq!(code, Some(0), "{}", report["probe_summary"]);
    assert_eq!(report["probe_summary"]["wrong"], 0);
    assert!(
        report["backend"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sim")
    );
    let (code, report) = run(&["--inject", "ingress-ignored"]);
    assert_eq!(code, Some(1), "{}", report["probe_summary"]);
    assert!(report["probe_summary"]["wrong"].as_u64() > Some(0));
}

/// `bench probe --design exec-per-probe` times polygraph's batched design first and the
/// one-probe-per-cell design against it, on the same matrix, each checked against the spec.
#[test]
fn bench_probe_times_both_designs_on_the_same_matrix() {
    let output = common::polygraph(
        &[
            "bench",
            "probe",
            "--backend",
            "sim",
            "--design",
            "exec-per-probe",
            "--workers",
            "4",
            "--iterations",
            "2",
            "--timeout",
            "200ms",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(" cells, ")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("pod-ip IPv4 [batched]: 486 cells"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("pod-ip IPv4 [exec-per-probe (4 workers)]: 486 cells")
            && lines[1].ends_with("× polygraph's batched round"),
        "{stdout}"
    );
    let output = common::polygraph(
        &["bench", "probe", "--backend", "sim", "--workers", "0"],
        "",
    );
    assert_eq!(output.status.code(), Some(2));
}

/// The generated suite end to end: `generate` writes the very cases `run --generated` runs; a
/// failing case prints the command that reruns exactly it, and that command fails the same way;
/// shards split the cases without overlap.
#[test]
fn generated_cases_run_as_written_and_a_failure_names_its_rerun() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("utf-8 path");
    let output = common::polygraph(
        &["generate", "--seed", "5", "--count", "12", "--out", out],
        "",
    );
    assert!(output.status.success(), "{output:?}");
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 12);
    let written = std::fs::read_to_string(&files[3]).expect("a case file");
    assert!(written.contains("rerun: polygraph run --generated --seed 5 --case 3"));

    let summary = |args: &[&str]| {
        let output = common::polygraph(args, "");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), stdout)
    };
    let (code, from_files) = summary(&[
        "run",
        "--backend",
        "sim",
        files[3].to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(0), "{from_files}");
    let (code, generated) = summary(&[
        "run",
        "--backend",
        "sim",
        "--generated",
        "--seed",
        "5",
        "--case",
        "3",
    ]);
    assert_eq!(code, Some(0), "{generated}");
    let last = |text: &str| {
        // The summary line without the run's id and time.
        text.lines()
            .last()
            .unwrap_or_default()
            .split(" steps in ")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(last(&from_files), last(&generated));

    // Under a fault, failing cases name their rerun, and it fails alone.
    const FAULTY: [&str; 6] = [
        "--backend",
        "sim",
        "--inject",
        "ingress-ignored",
        "--step-deadline",
        "1s",
    ];
    let mut broken = vec!["run", "--generated", "--seed", "5", "--count", "12"];
    broken.extend(FAULTY);
    let (code, stdout) = summary(&broken);
    assert_eq!(code, Some(1), "{stdout}");
    let rerun = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rerun: polygraph "))
        .expect("a rerun line")
        .to_string();
    let mut args: Vec<&str> = rerun.split(' ').collect();
    args.extend(FAULTY);
    let (code, again) = summary(&args);
    assert_eq!(code, Some(1), "{again}");
    assert!(again.contains("1 scenarios: 0 passed, 1 failed"), "{again}");

    // Shards: 1/3, 2/3 and 3/3 together are the 12 cases, each once.
    let mut total = 0;
    for shard in ["1/3", "2/3", "3/3"] {
        let (code, stdout) = summary(&[
            "run",
            "--backend",
            "sim",
            "--generated",
            "--seed",
            "5",
            "--count",
            "12",
            "--shard",
            shard,
        ]);
        assert_eq!(code, Some(0), "{stdout}");
        assert!(
            stdout.contains("4 scenarios: 4 passed"),
            "{shard}: {stdout}"
        );
        total += 4;
    }
    assert_eq!(total, 12);
    let (code, stdout) = summary(&["run", "--backend", "sim", "--seed", "5"]);
    assert_eq!(code, Some(2), "--seed alone is a usage error: {stdout}");
}

/// Lanes change how long a run takes, never what it finds: three lanes report the library in its
/// order with the same verdicts as one.
#[test]
fn parallel_lanes_report_the_library_in_order_with_the_same_verdicts() {
    let report = |lanes: &str| {
        let dir = tempfile::tempdir().expect("temp dir");
        let json = dir.path().join("run.json");
        let output = common::polygraph(
            &[
                "run",
                "--backend",
                "sim",
                "--parallel-scenarios",
                lanes,
                "--json",
                json.to_str().expect("utf-8 path"),
                "--json-cells",
                "none",
            ],
            "",
        );
        assert!(output.status.success(), "{output:?}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (report, stdout)
    };
    let (one, _) = report("1");
    let (three, stdout) = report("3");
    assert!(stdout.contains("2 more in parallel (3 lanes)"), "{stdout}");
    let names = |r: &serde_json::Value| -> Vec<String> {
        r["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&one), names(&three));
    assert_eq!(one["summary"]["cells"], three["summary"]["cells"]);
    let (code, stdout) = {
        let output = common::polygraph(
            &["run", "--backend", "sim", "--parallel-scenarios", "0"],
            "",
        );
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{stdout}");
}

/// `probe` waits for enforcement as `run` does: under a CNI that applies policies 1.5 s late, the
/// rounds go on until the matrix is the spec's, and the lag is reported as late cells, not as
/// wrong ones; `--snapshot` keeps the one look right after applying; a fault that never
/// converges is wrong at the deadline.
#[test]
fn probe_converges_and_reports_late_cells_apart_from_wrong_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deny = dir.path().join("deny.yaml");
    std::fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .expect("policy file");
    let deny = deny.display().to_string();
    let probe = |extra: &[&str]| {
        let mut args = vec!["probe", "--backend", "sim", "-f", &deny, "-o", "json"];
        args.extend_from_slice(extra);
        let output = common::polygraph(&args, "");
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code(), report)
    };
    let (code, report) = probe(&["--inject", "delay=1500ms"]);
    let convergence = &report["convergence"];
    assert_eq!(code, Some(0), "{convergence}");
    assert_eq!(convergence["converged"], true);
    assert!(convergence["rounds"].as_u64() > Some(1), "{convergence}");
    assert!(
        convergence["elapsed_ms"].as_f64() >= Some(1400.0),
        "{convergence}"
    );
    let late = convergence["late"].as_array().expect("late cells");
    // Every cell into x, from every pod, on every port: 9 × 3 × 6 less x's own 3 × 6.
    assert_eq!(late.len(), 144, "{convergence}");
    assert_eq!(late[0]["first"], "connected");
    assert_eq!(late[0]["settled"], "timeout");

    let (code, report) = probe(&["--inject", "delay=1500ms", "--snapshot"]);
    assert_eq!(
        code,
        Some(1),
        "one look right after applying sees the lag as wrong cells"
    );
    assert_eq!(report["convergence"]["rounds"], 1);
    assert_eq!(report["convergence"]["snapshot"], true);

    let (code, report) = probe(&["--inject", "ingress-ignored", "--deadline", "1s"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["convergence"]["converged"], false);
    assert!(report["probe_summary"]["wrong"].as_u64() > Some(0));
}

/// `smoke` gives a verdict per policy API: here the Admin tier is ignored, so AdminNetworkPolicy
/// is not enforced at all and ClusterNetworkPolicy only in part (its Baseline tier works), and
/// the answer is PARTIAL, naming the API that is accepted and ignored. `run --precheck` then
/// fails that API's scenarios at once with the reason, above any cell detail.
#[test]
fn smoke_and_the_precheck_give_a_verdict_per_policy_api() {
    let output = common::polygraph(
        &["smoke", "--backend", "sim", "--inject", "admin-ignored"],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {stdout}"))
            .to_string()
    };
    assert!(line("NetworkPolicy (networking.k8s.io/v1)").ends_with("ENFORCING"));
    assert!(line("ClusterNetworkPolicy (").contains("PARTIAL"));
    assert!(line("AdminNetworkPolicy (").contains("NOT ENFORCING: served and accepted"));
    assert!(line("BaselineAdminNetworkPolicy (").ends_with("ENFORCING"));
    assert!(
        stdout.contains("\nPARTIAL: accepted but not enforced: AdminNetworkPolicy"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("run.json");
    let started = std::time::Instant::now();
    let output = common::polygraph(
        &[
            "run",
            "--json",
            &json.display().to_string(),
            "anp-banp-v1alpha1",
            "deny-all-ingress",
            "--backend",
            "sim",
            "--precheck",
            "--inject",
            "admin-ignored",
            "--step-deadline",
            "2s",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("policy APIs (precheck): NetworkPolicy (networking.k8s.io/v1) ENFORCING"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nFAIL anp-banp-v1alpha1: AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1) is accepted here but nothing enforces it"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
    // The precheck waited one step deadline for AdminNetworkPolicy; the scenario's two steps
    // waited none.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{stdout}"
    );
    // The JSON as the README documents it.
    let report: common::schema::RunJson =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("schema");
    let anp = report
        .apis
        .iter()
        .find(|c| c.api == "AdminNetworkPolicy")
        .expect("checked");
    assert_eq!(anp.verdict, "not-enforcing");
    assert!(report.scenarios[0].not_enforced.is_some());

    // --no-precheck runs it anyway: its steps wait out their deadlines and fail on the cells.
    let output = common::polygraph(
        &[
            "run",
            "anp-banp-v1alpha1",
            "--backend",
            "sim",
            "--no-precheck",
            "--inject",
            "admin-ignored",
            "--step-deadline",
            "1s",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("precheck"), "{stdout}");
    assert!(stdout.contains("cells differ from the spec"), "{stdout}");
}

/// `--list-faults` lists every fault, name first in one column, and each bug a CNI shipped with
/// where it shipped: the catalogue a vendor reads to see whether their last bug is in it.
#[test]
fn list_faults_names_every_fault_and_where_the_shipped_ones_come_from() {
    let output = common::polygraph(&["run", "--list-faults"], "");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), polygraph::faults::CATALOGUE.len());
    assert!(lines.len() >= 42, "{} faults", lines.len());
    // One column: every description starts where the longest name's ends, plus two spaces.
    let width = polygraph::faults::CATALOGUE
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0)
        + 2;
    for (line, fault) in lines.iter().zip(polygraph::faults::CATALOGUE) {
        assert!(line.starts_with(fault.name), "{line}");
        assert!(line[width..].starts_with(fault.imitates), "{line}");
        if !fault.provenance.is_empty() {
            assert!(
                line.ends_with(&format!("[shipped: {}]", fault.provenance)),
                "{line}"
            );
        }
    }
    // The bugs issue 22 names, each with its provenance.
    for name in [
        "ipblock-misses-pods",
        "ipblock-only-opens-namespace",
        "named-port-first-pod",
        "named-port-any-number",
        "except-spills-to-peers",
        "reused-ip-stale",
        "ipv6-sets-frozen",
        "recreated-pod-ipv4-missing",
        "sctp-rules-dropped",
        "service-named-targetport-bypass",
        "udp-replies-dropped",
        "direction-cleanup-clobbers",
        "node-egress-unfiltered",
        "nodeport-allow-all-broken",
        "deny-as-icmp-filtered",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains("[shipped: ")),
            "{name} is not listed with its provenance"
        );
    }
}

/// `--service-hairpin`: a socket-level load balancer (`service-hairpin-exempt`) fails the spec's
/// rule, that a pod's traffic to its own Service is subject to cluster policies, and passes the
/// exemption a cluster may declare; the report says which rule it was judged by.
#[test]
fn a_declared_hairpin_exemption_is_judged_by_the_rule_declared() {
    let run = |hairpin: &str| {
        common::polygraph_json(&[
            "run",
            "--backend",
            "sim",
            "--inject",
            "service-hairpin-exempt",
            "--service-hairpin",
            hairpin,
            "--step-deadline",
            "2s",
            "cnp-hairpin-through-service",
        ])
    };
    let (code, report, stdout) = run("policy");
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report["options"]["service_hairpin"], "policy");
    assert!(
        stdout.contains("judged as subject to cluster policies (--service-hairpin policy)"),
        "{stdout}"
    );
    let (code, report, stdout) = run("exempt");
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(report["options"]["service_hairpin"], "exempt");
    assert!(
        stdout.contains("never judged (a socket-level load balancer) (--service-hairpin exempt)"),
        "{stdout}"
    );
}
