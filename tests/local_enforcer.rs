//! `polygraph bench enforcer` on real packets: the local dataplane's enforcer made to give way
//! beyond a rate of new connections, accepting (`queue-overflow`) or dropping
//! (`queue-overflow-closed`) what it cannot judge. The ramp must find the injected rate within
//! ±25%, and say which way enforcement gave way. Needs root.

mod common;

use common::{assert_knee, bench_enforcer, require_local_cluster};

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn bench_enforcer_finds_the_injected_knee_failing_open_and_failing_closed() {
    require_local_cluster();
    let (code, text, report) =
        bench_enforcer(&["--inject", "queue-overflow=1000/s", "--start-rate", "500/s"]);
    assert_eq!(code, Some(0), "{text}");
    assert_knee(&report, &text, "fails-open", 1000.0);
    assert!(
        text.contains("polygraph's default pace (5000 new connections/s per node) is above it"),
        "{text}"
    );

    let (code, text, report) = bench_enforcer(&[
        "--inject",
        "queue-overflow-closed=2000/s",
        "--start-rate",
        "900/s",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_knee(&report, &text, "fails-closed", 2000.0);
    // Failing closed leaks nothing.
    for step in report["nodes"][0]["steps"].as_array().expect("steps") {
        assert_eq!(step["blocked_connected"], 0, "{text}");
    }
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn bench_enforcer_without_a_knee_says_so_up_to_its_ceiling() {
    require_local_cluster();
    let (code, text, report) = bench_enforcer(&["--start-rate", "600/s", "--max-rate", "1500/s"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        report["nodes"][0]["knee"],
        serde_json::Value::Null,
        "{text}"
    );
    assert_eq!(report["nodes"][0]["stop"], "ceiling", "{text}");
    assert!(text.contains("no knee up to the ceiling"), "{text}");
}
