//! `polygraph run` and `smoke` on the local cluster. Needs root; otherwise says SKIPPED and passes.

mod common;

use common::require_local_cluster;
use common::schema::{RunJson, VERDICTS};

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn the_whole_library_passes_with_valid_junit_and_json() {
    require_local_cluster();
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

    common::validate_junit(&junit);
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn ignored_policies_fail_the_deny_scenarios() {
    require_local_cluster();
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
        assert_eq!(
            step.cells.len(),
            c.fail + c.error + c.late + c.flapping + c.not_dropped
        );
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
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn smoke_tells_enforcing_from_not_enforcing() {
    require_local_cluster();
    let enforcing = common::polygraph(&["smoke"], "");
    let text = String::from_utf8_lossy(&enforcing.stdout);
    assert_eq!(enforcing.status.code(), Some(0), "{text}");
    assert!(text.contains("\nENFORCING:"), "{text}");
    // The DNS check: names through the cluster's DNS fail where egress is denied, resolve where
    // DNS alone is allowed (and then the connection is blocked).
    assert!(
        text.contains("client-b → server: dns-failed (spec: dns-failed)"),
        "{text}"
    );
    assert!(
        text.contains("client-b may resolve names, and nothing else: client-a → server: connected (spec: allowed), client-b → server: timeout (spec: blocked)"),
        "{text}"
    );

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

/// Without a dataplane every cluster-policy scenario fails (each has a step with a blocked cell);
/// with the reference dataplane they all pass (`the_whole_library_passes_…` above).
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn ignored_cluster_policies_fail_every_cluster_policy_scenario() {
    require_local_cluster();
    let mut args = vec!["--tags", "cluster-network-policy"];
    args.extend(NO_DATAPLANE);
    let (code, stdout, report) = run_report(&args);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report.scenarios.len(), 18, "{stdout}");
    let passing: Vec<&str> = report
        .scenarios
        .iter()
        .filter(|s| s.status != "failed")
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        passing.is_empty(),
        "not caught without a dataplane: {passing:?}"
    );
}

/// The scenarios written for Services and dual-stack, and a plain deny one: probed through pod IPs
/// and through Services, in IPv4 and IPv6.
const EVERY_PATH: [&str; 4] = [
    "deny-all-ingress",
    "service-traffic-filtered",
    "cnp-hairpin-through-service",
    "dual-stack-ip-block-per-family",
];

/// `polygraph run ARGS --json FILE --json-cells none`: exit code, stdout and the report.
fn run_report(args: &[&str]) -> (Option<i32>, String, RunJson) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("run.json");
    let mut all = vec!["run"];
    all.extend(args);
    all.extend([
        "--json",
        json.to_str().expect("utf-8 path"),
        "--json-cells",
        "none",
    ]);
    let output = common::polygraph(&all, "");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report: RunJson =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("schema");
    (output.status.code(), stdout, report)
}

/// What a run without a dataplane needs to fail fast.
const NO_DATAPLANE: [&str; 7] = [
    "--dataplane",
    "none",
    "--probe-timeout",
    "300ms",
    "--step-deadline",
    "1s",
    "--skip-established",
];

fn paths_of(report: &RunJson, scenario: &str) -> Vec<(String, String)> {
    report
        .scenarios
        .iter()
        .filter(|s| s.name == scenario)
        .flat_map(|s| &s.steps)
        .map(|step| (format!("{:?}", step.target), format!("{:?}", step.family)))
        .collect()
}

/// Every target in both families on real packets: the reference dataplane passes each path (a
/// pod's hairpin through its own Service included), and without a dataplane every path of the
/// deny step fails, so each target and family has its failing case.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn every_target_in_both_families_passes_and_each_fails_without_a_dataplane() {
    require_local_cluster();
    let run = |extra: &[&str]| {
        let mut args = EVERY_PATH.to_vec();
        args.extend(["--target", "pod-ip,service", "--ip-family", "dual"]);
        args.extend(extra);
        run_report(&args)
    };
    let (code, stdout, report) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(report.passed);
    let four: Vec<(String, String)> = [
        ("PodIp", "IPv4"),
        ("PodIp", "IPv6"),
        ("Service", "IPv4"),
        ("Service", "IPv6"),
    ]
    .iter()
    .map(|(t, f)| (t.to_string(), f.to_string()))
    .collect();
    assert_eq!(paths_of(&report, "deny-all-ingress"), four);
    println!("{}", stdout.lines().last().unwrap_or_default());

    let (code, stdout, report) = run(&NO_DATAPLANE);
    assert_eq!(code, Some(1), "{stdout}");
    let deny = report
        .scenarios
        .iter()
        .find(|s| s.name == "deny-all-ingress")
        .expect("deny-all-ingress");
    assert_eq!(deny.steps.len(), 4);
    for step in &deny.steps {
        assert_eq!(
            step.status, "failed",
            "{:?} {:?} passed without a dataplane",
            step.target, step.family
        );
        assert!(step.counts.fail > 0);
    }
    for line in [
        "FAIL deny-all-ingress › deny all ingress in x (built-in",
        "FAIL deny-all-ingress › deny all ingress in x (through pod-ip IPv6)",
        "FAIL deny-all-ingress › deny all ingress in x (through service IPv4)",
        "FAIL deny-all-ingress › deny all ingress in x (through service IPv6)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in {stdout}");
    }
}

/// Names through the local cluster's DNS pod, in both families: the DNS-egress scenario passes on
/// real packets (a denied source's names do not resolve, an allowed one's do), and fails without
/// a dataplane and with a dataplane that drops DNS (`dns-egress-blocked`).
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn names_resolve_only_where_dns_egress_is_allowed_and_each_failure_is_caught() {
    require_local_cluster();
    let run = |extra: &[&str]| {
        let mut args = vec!["seed-dns-egress", "--ip-family", "dual"];
        args.extend(extra);
        run_report(&args)
    };
    let (code, stdout, report) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    let paths = paths_of(&report, "seed-dns-egress");
    assert_eq!(paths.len(), 8, "{paths:?}");
    assert!(paths.iter().all(|(t, _)| t == "ServiceName"), "{paths:?}");
    assert!(paths.iter().any(|(_, f)| f == "IPv6"), "{paths:?}");
    println!("{}", stdout.lines().last().unwrap_or_default());

    let (code, stdout, report) = run(&NO_DATAPLANE);
    assert_eq!(code, Some(1), "{stdout}");
    let first = &report.scenarios[0].steps[0];
    assert_eq!(first.status, "failed", "{stdout}");
    assert!(
        stdout.contains("the spec says dns-failed"),
        "the failing cells say why: {stdout}"
    );

    let mut blocked = vec!["--inject", "dns-egress-blocked"];
    blocked.extend(&NO_DATAPLANE[2..]);
    let (code, stdout, report) = run(&blocked);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report.scenarios[0].status, "failed", "{stdout}");
}

/// The design of the tools before polygraph, one probe process per cell, 15 at a time, measured
/// against polygraph's batches on real packets: every blocked cell costs one worker a whole
/// timeout, so it cannot come close (108 blocked TCP/UDP cells × 200 ms / 15 workers ≥ 1.4 s,
/// against about one 200 ms timeout).
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn exec_per_probe_is_measured_against_batches_and_is_several_times_slower() {
    require_local_cluster();
    let output = common::polygraph(
        &[
            "bench",
            "probe",
            "--design",
            "exec-per-probe",
            "--iterations",
            "1",
            "--timeout",
            "200ms",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("[exec-per-probe (15 workers)]"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let ratio: f64 = line
        .rsplit(", ")
        .next()
        .and_then(|r| r.split('×').next())
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {line}"));
    assert!(ratio > 3.0, "{line}");
    println!("{stdout}");
}

/// Through a NodePort from outside the cluster, and out to a server beyond it, in both families:
/// the reference dataplane passes every path, and without a dataplane the NodePort and external
/// paths fail too (each has its failing case).
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn node_ports_and_external_destinations_pass_and_each_fails_without_a_dataplane() {
    require_local_cluster();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "node-port-ingress",
            "external-egress",
            "--ip-family",
            "dual",
        ];
        args.extend(extra);
        run_report(&args)
    };
    let (code, stdout, report) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    let targets: std::collections::BTreeSet<String> = report
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .map(|s| format!("{:?} {:?}", s.target, s.family))
        .collect();
    for path in [
        "NodePort IPv4",
        "NodePort IPv6",
        "External IPv4",
        "External IPv6",
    ] {
        assert!(targets.contains(path), "no {path} results: {targets:?}");
    }
    println!("{}", stdout.lines().last().unwrap_or_default());

    let (code, stdout, report) = run(&NO_DATAPLANE);
    assert_eq!(code, Some(1), "{stdout}");
    let failed: std::collections::BTreeSet<String> = report
        .scenarios
        .iter()
        .flat_map(|s| &s.steps)
        .filter(|s| s.status == "failed")
        .map(|s| format!("{:?} {:?}", s.target, s.family))
        .collect();
    for path in ["NodePort IPv4", "NodePort IPv6", "External IPv4"] {
        assert!(
            failed.contains(path),
            "{path} never failed without a dataplane: {stdout}"
        );
    }
}

/// Packet loss on every link (nftables `numgen random`): the verdicts must not change. The runner
/// sees answers that only a confirming attempt got, asks for more attempts, and a soak of
/// scenarios with TCP, UDP and names finds no false verdict. With two attempts per silent target
/// (the design without loss), a third of the allowed cells' attempts are lost and some cells
/// would read as blocked.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn under_ten_percent_loss_the_verdicts_do_not_change() {
    require_local_cluster();
    let output = common::polygraph(
        &[
            "bench",
            "soak",
            "--runs",
            "1",
            "--inject",
            "loss=10%",
            "allow-from-namespace",
            "udp-port",
            "seed-dns-egress",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("run 1/1: 0 false verdicts"), "{stdout}");
    let attempts: u32 = stdout
        .split("attempts up to ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("the attempts used");
    assert!(
        attempts > 2,
        "the loss was seen and more attempts asked for: {stdout}"
    );
}

/// The generated smoke set on real packets: 50 cases of the default seed (NetworkPolicies and
/// cluster policies of every family, label and policy changes, Services, names and NodePorts)
/// pass on the reference dataplane, and fail without one.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn the_generated_smoke_set_passes_on_real_packets() {
    require_local_cluster();
    let (code, stdout, report) = run_report(&["--generated", "--count", "50"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(report.scenarios.len(), 50);
    println!("{}", stdout.lines().last().unwrap_or_default());

    let mut broken = vec!["--generated", "--count", "10"];
    broken.extend(NO_DATAPLANE);
    let (code, stdout, _) = run_report(&broken);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("rerun: polygraph run --generated --seed 1 --case "),
        "a failing case names its rerun: {stdout}"
    );
}

/// The agent session processes `polygraph` (process `pid`) started: its children whose command
/// line runs `agent session`.
fn session_children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("session"))
        })
        .collect()
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn a_killed_agent_session_is_reopened_and_the_run_still_passes() {
    require_local_cluster();
    let scenarios = [
        "deny-all-ingress",
        "policy-deleted",
        "allow-from-namespace",
        "deny-all-egress",
        "namespace-labels-move",
        "egress-to-namespace",
        "udp-port",
        "and-selector",
    ];
    let mut args = vec!["run", "--parallel-scenarios", "1"];
    args.extend(scenarios);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_polygraph"))
        // Never into the summary of the CI job running these tests.
        .env_remove("GITHUB_STEP_SUMMARY")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("polygraph runs");
    // Sessions start with the first probe round; kill them all once, a moment after they are up,
    // while the run goes on.
    let started = std::time::Instant::now();
    let mut killed = Vec::new();
    while killed.is_empty() && started.elapsed() < std::time::Duration::from_secs(20) {
        let sessions = session_children(child.id());
        if sessions.len() >= 3 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            for pid in session_children(child.id()) {
                let status = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .expect("kill runs");
                if status.success() {
                    killed.push(pid);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("polygraph finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!killed.is_empty(), "no agent session to kill\n{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "killed sessions {killed:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains("ERROR") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    // The run says how many sessions it reopened: a session killed between two batches is found
    // broken by the next one.
    assert!(
        stdout.contains("broke and were reopened (their batches sent again"),
        "{stdout}"
    );
    let reopened = stdout
        .lines()
        .find(|l| l.starts_with("agent sessions:"))
        .unwrap_or_default();
    println!(
        "killed {} agent sessions mid-run; {reopened}; {}",
        killed.len(),
        stdout.lines().last().unwrap_or_default()
    );
}
