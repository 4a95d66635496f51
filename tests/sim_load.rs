//! Load on the simulation: an enforcer whose queue gives way beyond a rate of new connections
//! (`--inject queue-overflow=N/s`). polygraph's default pace stays under it; forced past it, the
//! leak is named `fail-open`, apart from the policy bugs. No root, no cluster.

mod common;

use serde_json::Value;

/// The simulation's queue runs on real time: a test loading the machine (the forced run, the
/// ramp) must not share it with another one, or the first's timings are the second's load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_json(args: &[&str]) -> (std::process::Output, Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (json, junit) = (dir.path().join("run.json"), dir.path().join("junit.xml"));
    let mut all = vec!["run", "--backend", "sim"];
    all.extend_from_slice(args);
    let (json_arg, junit_arg) = (json.display().to_string(), junit.display().to_string());
    all.extend_from_slice(&["--json", &json_arg, "--junit", &junit_arg]);
    let output = common::polygraph(&all, "");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    common::validate_junit(&junit);
    let junit = std::fs::read_to_string(&junit).expect("junit");
    (output, report, junit)
}

#[test]
fn the_default_pace_stays_under_an_enforcer_queue_and_says_so() {
    let _serial = serial();
    let (output, report, _) = run_json(&["--inject", "queue-overflow=5500/s"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    // The header and the JSON say what pace was kept.
    assert!(
        stdout.contains(
            "pace: at most 1024 new connections in flight (512 per node), 5000/s per node"
        ),
        "{stdout}"
    );
    let pace = &report["options"]["pace"];
    assert_eq!(pace["max_inflight"], 1024);
    assert_eq!(pace["max_inflight_per_node"], 512);
    assert_eq!(pace["rate"], 5000.0);
    let kept = &report["summary"]["pace"];
    assert!(kept["connections"].as_u64() > Some(10_000), "{kept}");
    assert!(kept["peak_inflight"].as_u64() <= Some(1024), "{kept}");
    assert_eq!(report["summary"]["totals"]["fail_open"], 0);
}

#[test]
fn forced_past_the_queue_the_leak_is_named_fail_open_not_a_policy_bug() {
    let _serial = serial();
    let (output, report, junit) = run_json(
        &[
            &common::FORCED_PAST_QUEUE[..],
            &["--inject", "queue-overflow=4000/s"],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a leak fails the run: {stdout}"
    );
    assert!(
        stdout.contains("enforcement failed open under load: "),
        "{stdout}"
    );
    assert!(stdout.contains("at 200/s they were blocked"), "{stdout}");
    let totals = &report["summary"]["totals"];
    let fail_open = totals["fail_open"].as_u64().expect("fail_open");
    let flapping = totals["flapping"].as_u64().expect("flapping");
    assert!(fail_open >= 10, "{totals}");
    // Never flapping, never a policy bug (cells the step changed that leaked before the step
    // showed the enforcer giving way are late denies).
    assert_eq!(flapping, 0, "{totals}");
    assert_eq!(report["summary"]["cells"]["fail"], 0, "{stdout}");
    assert_eq!(report["summary"]["cells"]["fail_open"], fail_open);
    // Its own JUnit type, where nothing else failed in the step.
    assert!(junit.contains(r#"type="fail-open""#), "{junit}");
}

#[test]
fn bench_enforcer_finds_the_injected_knee_on_the_simulation() {
    let _serial = serial();
    let (code, text, report) =
        common::bench_enforcer(&["--backend", "sim", "--inject", "queue-overflow=3000/s"]);
    assert_eq!(code, Some(0), "{text}");
    common::assert_knee(&report, &text, "fails-open", 3000.0);
    assert!(text.contains("fails open above ≈ "), "{text}");
    // The steps under the knee held: nothing leaked there.
    let steps = report["nodes"][0]["steps"].as_array().expect("steps");
    assert!(steps.len() >= 3, "{text}");
    assert_eq!(steps[0]["blocked_connected"], 0, "{text}");
}
