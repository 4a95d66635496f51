//! Load on real packets: the local dataplane's enforcer made to give way beyond a rate of new
//! connections (`--inject queue-overflow=N/s`, nftables `limit rate over`, accepting the excess
//! unjudged as a fail-open userspace queue does). Needs root.

mod common;

use common::require_local_cluster;
use serde_json::Value;

fn run(args: &[&str]) -> (Option<i32>, String, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("run.json");
    let json_arg = json.display().to_string();
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", &json_arg]);
    let output = common::polygraph(&all, "");
    let stdout = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (output.status.code(), stdout, report)
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn the_default_pace_passes_under_a_failing_open_queue_and_forced_past_it_names_fail_open() {
    require_local_cluster();
    // Twice the default rate: the defaults (with their confirming attempts) stay under it.
    let (code, stdout, report) = run(&["--inject", "queue-overflow=10000/s"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(report["summary"]["totals"]["fail_open"], 0, "{stdout}");

    // Forced far past it: blocked cells connect in a burst; probed again at 200/s they are
    // blocked, so the leak is the enforcer failing open, not flapping and not a policy bug.
    let (code, stdout, report) = run(&[
        &common::FORCED_PAST_QUEUE[..],
        &["--inject", "queue-overflow=1000/s"],
    ]
    .concat());
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("enforcement failed open under load: "),
        "{stdout}"
    );
    let totals = &report["summary"]["totals"];
    assert!(totals["fail_open"].as_u64() >= Some(20), "{totals}");
    assert_eq!(totals["flapping"], 0, "{totals}");
    assert_eq!(report["summary"]["cells"]["fail"], 0, "{stdout}");
}
