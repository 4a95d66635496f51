//! Self-validation: polygraph must catch every bug it can inject into its own local dataplane.
//!
//! Each policy fault runs the whole built-in library and must fail it, with at least one failing
//! scenario tagged with the feature the fault breaks. The timed faults must be measured: an
//! injected delay D comes back as a latency within 20% of D plus the probe interval (the interval
//! between probe rounds, the measurement's resolution), a new pod left unprotected for D as a leak
//! of about D, and with `--max-latency` below D both fail the run. Without faults, no leak at all
//! (checked on the whole library by `local_run.rs`). Each policy fault also runs on the simulated
//! backend, which must fail exactly the same scenarios. Needs root (the tests are ignored without
//! it; `.ci/run` runs them as root).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use polygraph::faults::CATALOGUE;
use serde_json::Value;

use common::require_local_cluster;

/// The timing tests measure latencies: they must not share the machine with the fault runs.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fast settings: detection needs no long deadlines, and the whole suite runs once per fault,
/// in one lane (faults already run `CONCURRENCY` at a time).
const FAST: [&str; 6] = [
    "--probe-timeout",
    "500ms",
    "--step-deadline",
    "2s",
    "--parallel-scenarios",
    "1",
];
/// Faults run this many at a time (each on its own cluster; probing mostly waits on timeouts).
const CONCURRENCY: usize = 3;

fn run_json(args: &[&str]) -> (Option<i32>, Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("run.json");
    let json_arg = json.display().to_string();
    let mut all: Vec<&str> = vec!["run"];
    all.extend_from_slice(args);
    // The checks read scenario results and step timing only.
    all.extend(["--json", &json_arg, "--json-cells", "none"]);
    let output = common::polygraph(&all, "");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (output.status.code(), report, stdout)
}

/// Failing scenarios of a run report (unsupported ones neither pass nor fail), with their tags.
fn failing(report: &Value) -> BTreeMap<String, Vec<String>> {
    report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "failed")
        .map(|s| {
            let tags = s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            (s["name"].as_str().unwrap_or_default().to_string(), tags)
        })
        .collect()
}

/// The scenarios a fault is run against, as `run` arguments: the scenarios of its feature, the
/// library's claim to catch it (a cluster-tier fault, whose features are `cnp-*`, on the
/// `cluster-network-policy` scenarios). The whole library once per fault took most of CI's
/// 20 minutes; what a fault does to the rest is measured by hand (README's table).
fn fault_scope(fault: &polygraph::faults::FaultInfo) -> Vec<&'static str> {
    // No extra flags: every fault must show in a default run (IPv6 through the scenarios about
    // both families, which a default run probes in both).
    if fault.features.iter().all(|f| f.starts_with("cnp-")) {
        vec!["--tags", "cluster-network-policy"]
    } else {
        vec!["--tags", fault.features[0]]
    }
}

/// The scenarios the library (the part `scope` selects, in the families it asks for) fails on the
/// simulated backend with
/// `fault` injected, with the `FAST` settings, on paused tokio time.
fn simulated_failures(fault: &str, scope: &[&str]) -> BTreeSet<String> {
    use polygraph::backend::Backend;
    use polygraph::backend::sim::{SimBackend, SimOptions};
    use polygraph::run::{RunOptions, Status, run_scenarios};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let library: Vec<_> = polygraph::scenario::library::load_all()
            .expect("library")
            .into_iter()
            .filter(|s| {
                let tagged = |t: &str| s.tags.iter().any(|x| x == t);
                match scope {
                    ["--tags", t, ..] => tagged(t),
                    ["--exclude-tags", t, ..] => !tagged(t),
                    _ => true,
                }
            })
            .collect();
        // The families a default `run` gives the cluster: every one a scenario is about.
        let families = polygraph::scenario::named_families(&library)
            .map_or(polygraph::model::IpFamilies::Ipv4, |named| {
                polygraph::model::IpFamilies::Ipv4.union(named)
            });
        let mut backend = SimBackend::new(SimOptions {
            faults: polygraph::faults::Faults::parse(&[fault]).expect("fault"),
            // Like this kernel: no SCTP.
            sctp: false,
            families,
            no_dataplane: false,
        });
        let options = RunOptions {
            probe_timeout: std::time::Duration::from_millis(500),
            step_deadline: std::time::Duration::from_secs(2),
            max_latency: None,
            stability: std::time::Duration::ZERO,
            established: true,
            pacer: polygraph::run::Pacer::new(Default::default()),
            poll_interval: std::time::Duration::from_millis(250),
            targets: Vec::new(),
            // As a default run: IPv4 unless a scenario is about more.
            families: Some(polygraph::model::IpFamilies::Ipv4),
            precheck: false,
            service_hairpin: Default::default(),
        };
        let result = run_scenarios(&mut backend, &library, &options, &mut |_| {}).await;
        backend.cleanup().await.expect("cleanup");
        result
            .scenarios
            .iter()
            .filter(|s| s.status() == Status::Failed)
            .map(|s| s.scenario.name.clone())
            .collect()
    })
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn every_injected_policy_fault_is_caught_by_the_right_feature() {
    require_local_cluster();
    let _serial = serial();
    let faults: Vec<_> = CATALOGUE.iter().filter(|f| f.fault.is_some()).collect();
    assert!(faults.len() >= 10);
    // Per fault: its feature, the failing scenarios with that feature, how many others failed.
    let mut table: Vec<(String, String, Vec<String>, usize)> = Vec::new();
    let mut problems = Vec::new();
    // The same faults on the simulated backend, through the library on paused time (a failing
    // step's deadline costs no real time), with the same settings as the local runs.
    let simulated: BTreeMap<&str, BTreeSet<String>> = faults
        .iter()
        .map(|fault| {
            (
                fault.name,
                simulated_failures(fault.name, &fault_scope(fault)),
            )
        })
        .collect();
    // A pool of `CONCURRENCY` workers, each taking the next fault as it finishes one (a fault on
    // the whole library takes several times one on a tag's scenarios: chunks would wait on it).
    // Whole-library faults go first, so the short ones fill in at the end.
    let mut queue: Vec<_> = faults.clone();
    queue.sort_by_key(|fault| !fault_scope(fault).is_empty());
    let queue = std::sync::Mutex::new(queue.into_iter());
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(fault) = next else { return done };
                        let mut args = vec!["--inject", fault.name];
                        args.extend(FAST);
                        args.extend(fault_scope(fault));
                        done.push((fault, run_json(&args)));
                    }
                })
            })
            .collect();
        let mut all: Vec<_> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("run thread"))
            .collect();
        // Reported in the catalogue's order, whatever order they finished in.
        all.sort_by_key(|(fault, _)| faults.iter().position(|f| f.name == fault.name));
        all
    });
    {
        for (fault, (code, report, stdout)) in results {
            let caught = failing(&report);
            // The simulation imitates the same fault the same way: the same scenarios fail. Three
            // local clusters at once on two cores can push a 500 ms probe past its timeout, so a
            // difference is confirmed by running the fault alone once more before it counts.
            let simulated = &simulated[fault.name];
            let mut local = caught.clone();
            if simulated.iter().ne(local.keys()) {
                let mut args = vec!["--inject", fault.name];
                args.extend(FAST);
                args.extend(fault_scope(fault));
                let alone = failing(&run_json(&args).1);
                println!(
                    "{}: the loaded local run failed {:?}; alone it failed {:?}",
                    fault.name,
                    local.keys().collect::<Vec<_>>(),
                    alone.keys().collect::<Vec<_>>()
                );
                local = alone;
            }
            if simulated.iter().ne(local.keys()) {
                problems.push(format!(
                    "{}: the local dataplane failed {:?}, the simulation {simulated:?}",
                    fault.name,
                    local.keys().collect::<Vec<_>>(),
                ));
            }
            if code != Some(1) {
                problems.push(format!(
                    "{}: exit {code:?}, expected 1 (detected)\n{stdout}",
                    fault.name
                ));
            }
            let named = caught
                .values()
                .any(|tags| tags.iter().any(|t| fault.features.contains(&t.as_str())));
            if !named {
                problems.push(format!(
                    "{}: no failing scenario is tagged {:?}; failing: {:?}",
                    fault.name,
                    fault.features,
                    caught.keys().collect::<Vec<_>>()
                ));
            }
            let (right, other): (Vec<_>, Vec<_>) = caught
                .iter()
                .partition(|(_, tags)| tags.iter().any(|t| fault.features.contains(&t.as_str())));
            table.push((
                fault.name.to_string(),
                fault.features.join(", "),
                right.into_iter().map(|(name, _)| name.clone()).collect(),
                other.len(),
            ));
        }
    }
    // The detection table, as README shows it.
    println!(
        "| injected fault | feature | caught by (scenarios with that feature) | other failing scenarios |\n|---|---|---|---|"
    );
    for (fault, feature, right, others) in &table {
        println!(
            "| `{fault}` | {feature} | {} | {others} |",
            right.join(", ")
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The step of `scenario` named `step` in a run report.
fn step<'a>(report: &'a Value, scenario: &str, step: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == scenario))
        .and_then(|s| s["steps"].as_array())
        .and_then(|steps| steps.iter().find(|s| s["name"] == step))
        .unwrap_or_else(|| panic!("no step {scenario} › {step} in {report}"))
}

fn within_tolerance(what: &str, measured: f64, injected_ms: f64, interval_ms: f64) {
    let tolerance = 0.2 * injected_ms + interval_ms;
    assert!(
        (measured - injected_ms).abs() <= tolerance,
        "{what}: measured {measured:.0} ms for an injected {injected_ms:.0} ms (tolerance {tolerance:.0} ms)"
    );
    println!(
        "{what}: injected {injected_ms:.0} ms, measured {measured:.0} ms (tolerance ±{tolerance:.0} ms; \
         resolution: a round every {interval_ms:.0} ms)"
    );
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn injected_delays_are_measured_within_tolerance_and_fail_beyond_max_latency() {
    require_local_cluster();
    let _serial = serial();
    let injected_ms = 2000.0;
    let (code, report, stdout) = run_json(&[
        "--inject",
        "delay=2s",
        "--step-deadline",
        "6s",
        "deny-all-ingress",
        "policy-deleted",
    ]);
    assert_eq!(
        code,
        Some(0),
        "late cells only fail with --max-latency\n{stdout}"
    );
    let deny = &step(&report, "deny-all-ingress", "deny all ingress in x")["timing"];
    let interval = deny["round_interval_ms"].as_f64().expect("several rounds");
    assert!(deny["late_deny"].as_u64().unwrap_or(0) > 0, "{deny}");
    for q in ["p50_ms", "max_ms"] {
        let measured = deny["allow_to_deny"][q].as_f64().expect("latency");
        within_tolerance(&format!("allow→deny {q}"), measured, injected_ms, interval);
    }
    // The leak window is the late denies' latency: about D.
    let leak = deny["max_leak_ms"].as_f64().expect("a leak");
    within_tolerance("leak window", leak, injected_ms, interval);

    let allow = &step(&report, "policy-deleted", "delete policy x/deny")["timing"];
    let interval = allow["round_interval_ms"].as_f64().expect("several rounds");
    assert!(allow["late_allow"].as_u64().unwrap_or(0) > 0, "{allow}");
    let measured = allow["deny_to_allow"]["max_ms"].as_f64().expect("latency");
    within_tolerance("deny→allow max", measured, injected_ms, interval);
    assert!(stdout.contains("late deny (leak window up to"), "{stdout}");

    let (code, report, stdout) = run_json(&[
        "--inject",
        "delay=2s",
        "--max-latency",
        "1s",
        "deny-all-ingress",
    ]);
    assert_eq!(code, Some(1), "late beyond --max-latency fails\n{stdout}");
    assert!(failing(&report).contains_key("deny-all-ingress"));
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn the_new_pod_race_is_measured_and_zero_without_the_fault() {
    require_local_cluster();
    let _serial = serial();
    let created = "create pod x/d";
    let (code, report, stdout) = run_json(&["new-pod-under-policy"]);
    assert_eq!(code, Some(0), "{stdout}");
    let clean = &step(&report, "new-pod-under-policy", created)["timing"];
    assert_eq!(clean["new_pod_leak_ms"], Value::Null, "{clean}");
    assert_eq!(clean["late_deny"], 0, "{clean}");
    assert!(clean["new_pod"]["cells"].as_u64().unwrap_or(0) > 0);
    assert!(
        stdout.contains("new pod: nothing forbidden got through"),
        "{stdout}"
    );

    let injected_ms = 2000.0;
    let (code, report, stdout) = run_json(&[
        "--inject",
        "new-pod-unprotected=2s",
        "--step-deadline",
        "6s",
        "new-pod-under-policy",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    let raced = &step(&report, "new-pod-under-policy", created)["timing"];
    let leak = raced["new_pod_leak_ms"].as_f64().expect("a new-pod leak");
    let interval = raced["round_interval_ms"].as_f64().expect("several rounds");
    within_tolerance("new-pod leak", leak, injected_ms, interval);
    assert!(stdout.contains("new pod leaked for up to"), "{stdout}");

    let (code, report, stdout) = run_json(&[
        "--inject",
        "new-pod-unprotected=2s",
        "--max-latency",
        "1s",
        "new-pod-under-policy",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    let caught = failing(&report);
    assert!(
        caught
            .get("new-pod-under-policy")
            .is_some_and(|tags| tags.iter().any(|t| t == "new-pod")),
        "{caught:?}"
    );
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn established_connections_are_reported_as_surviving_or_cut() {
    require_local_cluster();
    let _serial = serial();
    let flows = |report: &Value| -> (u64, u64, u64) {
        let f = &step(report, "deny-all-ingress", "deny all ingress in x")["timing"]["established"];
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        (n("held"), n("survived"), n("cut"))
    };
    // Conntrack lets established connections through a new deny: reported, and the run passes.
    let (code, report, stdout) = run_json(&["deny-all-ingress"]);
    assert_eq!(code, Some(0), "{stdout}");
    let (held, survived, cut) = flows(&report);
    assert!(
        held > 0 && survived == held && cut == 0,
        "{held} {survived} {cut}"
    );
    assert!(stdout.contains("survived the deny"), "{stdout}");
    // Without conntrack (the stateless fault) the same connections are cut.
    let (_, report, stdout) = run_json(&[
        "--inject",
        "stateless",
        "--step-deadline",
        "2s",
        "deny-all-ingress",
    ]);
    let (held, survived, cut) = flows(&report);
    assert!(
        held > 0 && cut == held && survived == 0,
        "{held} {survived} {cut}\n{stdout}"
    );
}

#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn a_dataplane_that_flaps_is_caught_and_a_stable_one_is_not() {
    require_local_cluster();
    let _serial = serial();
    let flapping = |report: &Value| {
        step(report, "deny-all-ingress", "deny all ingress in x")["timing"]["flapping"]
            .as_u64()
            .unwrap_or(0)
    };
    let (code, report, stdout) = run_json(&["--stability", "3s", "deny-all-ingress"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(flapping(&report), 0);
    let (code, report, stdout) = run_json(&[
        "--inject",
        "resync-gap=2s",
        "--stability",
        "3s",
        "deny-all-ingress",
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(flapping(&report) > 0, "{stdout}");
    assert!(stdout.contains("flapping"), "{stdout}");
}
