//! Real packets on the embedded local cluster (network namespaces + the nftables dataplane), driven
//! through the `polygraph` binary. Needs root; without it every test here says SKIPPED and passes.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::corpus::{Case, cell_key, load_cases, report_axes};
use common::{namespaces_of_run, require_local_cluster, run_id_of};

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
/// Short enough for a quick suite, long enough that an allowed connection never times out on a
/// loaded 2-core machine (they answer in about a millisecond).
const TIMEOUT: &str = "1s";

struct Probed {
    code: Option<i32>,
    report: serde_json::Value,
    run_id: String,
}

fn probe_case(case: &Case, extra: &[&str]) -> Result<Probed, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut args = case.args("probe", dir.path());
    args.extend(["--timeout".to_string(), TIMEOUT.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = common::polygraph(&argv, "");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "no JSON report ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let run_id =
        run_id_of(report["backend"].as_str().unwrap_or_default()).ok_or("no run id in report")?;
    Ok(Probed {
        code: output.status.code(),
        report,
        run_id,
    })
}

/// Compares observed TCP/UDP cells with the case's hand-written answers. Returns the number of
/// cells checked, or the differences.
fn check_against_case(case: &Case, probed: &Probed) -> Result<usize, String> {
    let (pods, pps) = report_axes(&probed.report)?;
    let blocked = case.expected_blocked(&pods, &pps)?;
    let undefined = case.expected_undefined(&pods, &pps)?;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for cell in probed.report["cells"].as_array().ok_or("no cells")? {
        let key = cell_key(cell);
        let observed = cell["observed"].as_str();
        let protocol = cell["protocol"].as_str().unwrap_or_default();
        match (observed, protocol) {
            (None, _) => continue, // not probed: nothing listens there
            (Some("unsupported"), "SCTP") => continue,
            (Some("unsupported" | "error"), _) => {
                wrong.push(format!("{key:?}: {observed:?} {}", cell["detail"]))
            }
            (Some(outcome), _) => {
                if key.0 == key.1 || undefined.contains(&key) {
                    continue; // self traffic, or left to the implementation by the spec
                }
                checked += 1;
                let connected = outcome == "connected";
                if connected == blocked.contains(&key) {
                    wrong.push(format!(
                        "{} -> {} {}: observed {outcome}, the case says {}",
                        key.0,
                        key.1,
                        key.2,
                        if blocked.contains(&key) {
                            "blocked"
                        } else {
                            "allowed"
                        }
                    ));
                }
            }
        }
    }
    if wrong.is_empty() {
        Ok(checked)
    } else {
        Err(format!(
            "{} cells differ:\n    {}",
            wrong.len(),
            wrong
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        ))
    }
}

/// Every known-answer case, on real packets: what gets through must be exactly what the
/// hand-written expectations allow (self traffic aside), the exit code 0, nothing left behind.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn corpus_on_real_packets_matches_the_known_answers() {
    require_local_cluster();
    let cases = load_cases();
    let queue = Mutex::new(cases.iter().collect::<Vec<_>>());
    let failures = Mutex::new(Vec::new());
    let run_ids = Mutex::new(BTreeSet::new());
    let checked_total = Mutex::new(0usize);
    let started = Instant::now();
    // Three cases at a time: runs in parallel must not collide.
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                loop {
                    // Its own statement: a `while let` would hold the queue's lock for the whole
                    // case, and the three workers would take turns.
                    let next = queue.lock().unwrap().pop();
                    let Some((file, case)) = next.map(|(f, c)| (f.clone(), c)) else {
                        break;
                    };
                    let verdict = probe_case(case, &[]).and_then(|probed| {
                        run_ids.lock().unwrap().insert(probed.run_id.clone());
                        let left = namespaces_of_run(&probed.run_id);
                        if !left.is_empty() {
                            return Err(format!("left behind: {left:?}"));
                        }
                        let checked = check_against_case(case, &probed)?;
                        if probed.code != Some(0) {
                            return Err(format!(
                                "exit code {:?}: {}",
                                probed.code, probed.report["probe_summary"]
                            ));
                        }
                        if checked == 0 {
                            return Err("no TCP or UDP cell was checked".into());
                        }
                        *checked_total.lock().unwrap() += checked;
                        Ok(())
                    });
                    if let Err(e) = verdict {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{file}/{}: {e}", case.name));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let run_ids = run_ids.into_inner().unwrap();
    println!(
        "{} cases, {} TCP/UDP cells checked on real packets in {:.1} s",
        cases.len(),
        checked_total.into_inner().unwrap(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(run_ids.len(), cases.len(), "every run gets its own id");
}

/// A dataplane that ignores policies (Flannel) is caught: every cell the spec blocks is observed
/// connected, and the exit code is 1.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn ignored_policies_are_caught() {
    require_local_cluster();
    let cases = load_cases();
    let mut tried = 0;
    for (_, case) in cases
        .iter()
        .filter(|(f, _)| f.starts_with("50-seed"))
        .take(6)
    {
        let probed = probe_case(case, &["--dataplane", "none"])
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (pods, pps) = report_axes(&probed.report).expect("axes");
        let blocked = case.expected_blocked(&pods, &pps).expect("expectations");
        let leaks: Vec<_> = probed.report["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .filter(|c| {
                blocked.contains(&cell_key(c))
                    && c["from"] != c["to"]
                    && c["protocol"] != "SCTP"
                    && c["observed"].is_string()
            })
            .collect();
        if leaks.is_empty() {
            continue;
        }
        tried += 1;
        assert!(
            leaks.iter().all(|c| c["observed"] == "connected"),
            "{}: a blocked cell was not connected",
            case.name
        );
        assert!(
            leaks.iter().all(|c| c["judgement"] == "wrong"),
            "{}",
            case.name
        );
        assert_eq!(probed.code, Some(1), "{}: exit code", case.name);
        assert!(namespaces_of_run(&probed.run_id).is_empty());
    }
    assert!(tried >= 3, "only {tried} cases had blocked cells");
}

/// The three kinds of "no" on real packets: a dataplane that answers denials with ICMP
/// administratively prohibited gives `filtered` cells (IPv4 and IPv6, TCP and UDP), which
/// NetworkPolicy accepts as blocked and a cluster policy's Deny does not; a refusal stays
/// `refused`, so the agent tells the two apart by the ICMP error, not the errno.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn an_administratively_prohibited_answer_is_filtered_and_fails_only_a_deny() {
    require_local_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let network = dir.path().join("deny.yaml");
    std::fs::write(&network, DENY_X).expect("write");
    let cluster = dir.path().join("cnp.yaml");
    std::fs::write(
        &cluster,
        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-x}\n\
         spec:\n  tier: Admin\n  priority: 10\n  subject: {namespaces: {matchLabels: {ns: x}}}\n\
         \x20 ingress:\n  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}\n",
    )
    .expect("write");
    let probe = |policy: &std::path::Path, fault: &str| {
        let output = common::polygraph(
            &[
                "probe",
                "-f",
                &policy.display().to_string(),
                "--inject",
                fault,
                "--protocol",
                "TCP",
                "--protocol",
                "UDP",
                "--port",
                "80",
                "--ip-family",
                "dual",
                "--timeout",
                TIMEOUT,
                "-o",
                "json",
            ],
            "",
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("JSON report");
        // Per (protocol, family, observed, judgement): how many cells into x from elsewhere.
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for c in report["cells"].as_array().expect("cells") {
            let to_x = c["to"].as_str().is_some_and(|t| t.starts_with("x/"));
            let from_x = c["from"].as_str().is_some_and(|f| f.starts_with("x/"));
            if to_x && !from_x {
                *seen
                    .entry(format!(
                        "{} {} {} {}",
                        c["protocol"].as_str().unwrap_or_default(),
                        c["family"].as_str().unwrap_or_default(),
                        c["observed"].as_str().unwrap_or_default(),
                        c["judgement"].as_str().unwrap_or_default()
                    ))
                    .or_default() += 1;
            }
        }
        (output.status.code(), seen)
    };
    // 6 sources outside x, 3 pods in x: 18 cells per protocol and family.
    let every = |observed: &str, judgement: &str| {
        ["TCP", "UDP"]
            .iter()
            .flat_map(|p| ["IPv4", "IPv6"].map(|f| (format!("{p} {f} {observed} {judgement}"), 18)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (code, seen) = probe(&network, "deny-as-icmp-filtered");
    assert_eq!(seen, every("filtered", "match"));
    assert_eq!(code, Some(0), "NetworkPolicy takes filtered as blocked");
    let (code, seen) = probe(&cluster, "deny-as-icmp-filtered");
    assert_eq!(seen, every("filtered", "refused_not_dropped"));
    assert_eq!(code, Some(1), "a Deny must be silent");
    let (code, seen) = probe(&cluster, "deny-as-reject");
    assert_eq!(seen, every("refused", "refused_not_dropped"));
    assert_eq!(code, Some(1));
}

/// Whether this kernel can open SCTP sockets, as the agent sees it.
fn kernel_has_sctp() -> bool {
    let output = common::polygraph(
        &["agent", "probe"],
        r#"{"timeout_ms":200,"targets":[{"host":"127.0.0.1","port":9,"protocol":"SCTP"}]}"#,
    );
    !String::from_utf8_lossy(&output.stdout).contains("\"unsupported\"")
}

/// SCTP on a kernel without it comes back `unsupported`, is never counted as blocked, and doesn't
/// fail the run.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn sctp_without_kernel_support_is_unsupported_not_blocked() {
    require_local_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("deny.yaml");
    std::fs::write(&policy, DENY_X).expect("write");
    let output = common::polygraph(
        &[
            "probe",
            "-f",
            &policy.display().to_string(),
            "--protocol",
            "SCTP",
            "--timeout",
            TIMEOUT,
            "-o",
            "json",
        ],
        "",
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let cells = report["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 9 * 9 * 2);
    if kernel_has_sctp() {
        println!("this kernel has SCTP: checking SCTP cells against the spec instead");
        assert_eq!(output.status.code(), Some(0), "{}", report["probe_summary"]);
        return;
    }
    assert!(
        cells
            .iter()
            .all(|c| c["observed"] == "unsupported" && c["judgement"] == "unsupported")
    );
    assert_eq!(report["probe_summary"]["unsupported"], 162);
    assert_eq!(report["probe_summary"]["wrong"], 0);
    assert_eq!(
        report["probe_summary"]["unsupported_protocols"],
        serde_json::json!(["SCTP"])
    );
    assert_eq!(output.status.code(), Some(0));
    // And the terminal says so.
    let table = common::polygraph(
        &[
            "probe",
            "-f",
            &policy.display().to_string(),
            "--protocol",
            "SCTP",
            "--port",
            "80",
            "--timeout",
            TIMEOUT,
        ],
        "",
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("81 unsupported (SCTP not available on this node)"),
        "{text}"
    );
}

/// Starts a probe that will hang on blocked cells for a long time; returns the child and its run id
/// once its cluster is up.
fn start_slow_probe(policy: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polygraph"))
        // Never into the summary of the CI job running these tests.
        .env_remove("GITHUB_STEP_SUMMARY")
        .args([
            "probe",
            "-f",
            &policy.display().to_string(),
            "--protocol",
            "TCP",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start polygraph");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let run_id = run_id_of(&first).unwrap_or_else(|| panic!("no run id in {first:?}"));
    // Wait until every pod exists (9 pods + the node), so the interruption lands mid-probe.
    let deadline = Instant::now() + Duration::from_secs(20);
    while namespaces_of_run(&run_id).len() < 10 {
        assert!(Instant::now() < deadline, "the cluster never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    (child, run_id)
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "polygraph did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, signal).expect("signal");
}

/// Ctrl-C mid-probe: polygraph removes its namespaces and agents, and exits 130.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn ctrl_c_removes_everything() {
    require_local_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("deny.yaml");
    std::fs::write(&policy, DENY_X).expect("write");
    let (mut child, run_id) = start_slow_probe(&policy);
    signal(&child, rustix::process::Signal::INT);
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_eq!(namespaces_of_run(&run_id), Vec::<String>::new());
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("pgv"),
        "a polygraph interface in the host namespace"
    );
}

/// SIGKILL leaves the cluster behind (nothing can run); `polygraph gc` removes it and its agents.
#[test]
#[ignore = "needs root: builds a local cluster (network namespaces, nftables); .ci/run runs it as root"]
fn gc_removes_what_a_killed_run_left() {
    require_local_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("deny.yaml");
    std::fs::write(&policy, DENY_X).expect("write");
    let (mut child, run_id) = start_slow_probe(&policy);
    signal(&child, rustix::process::Signal::KILL);
    wait_with_deadline(&mut child, Duration::from_secs(10));
    let left = namespaces_of_run(&run_id);
    assert_eq!(
        left.len(),
        10,
        "a killed run leaves its namespaces: {left:?}"
    );
    let agents: Vec<i32> = left
        .iter()
        .flat_map(|ns| {
            let out = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .expect("ip netns pids");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    // One agent per pod keeps serving, besides the probe batches still waiting out their timeout.
    assert!(agents.len() >= 9, "agents keep running: {agents:?}");

    let gc = common::polygraph(&["gc"], "");
    assert_eq!(gc.status.code(), Some(0));
    let said = String::from_utf8_lossy(&gc.stdout);
    assert!(
        said.contains(&format!("removed network namespace pg-{run_id}-node")),
        "{said}"
    );
    assert_eq!(namespaces_of_run(&run_id), Vec::<String>::new());
    // Killed agents are reaped by init; until then they are zombies, which are dead.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while agents.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "agents survived gc: {:?}",
            agents.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The issue's reproduction: an agent serving only SCTP in a network namespace of its own, on a
/// kernel without SCTP, must stay up (on Kubernetes an exit is a CrashLoopBackOff, and the
/// truthful "SCTP unsupported" becomes "pod not ready"), say on its ready line that the port is
/// unsupported, and end on SIGTERM as a pod's agent does.
#[test]
#[ignore = "needs root: creates a network namespace; .ci/run runs it as root"]
fn an_agent_serving_only_unsupported_ports_stays_up_until_sigterm() {
    require_local_cluster();
    let netns = format!("pgtest-agent-{}", std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(env!("CARGO_BIN_EXE_polygraph"))
        .args(["agent", "serve", "--identity", "x/a", "--listen", "80/SCTP"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let mut ready = String::new();
    BufReader::new(agent.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ready line");
    std::thread::sleep(Duration::from_secs(1));
    let alive = agent.try_wait().expect("try_wait").is_none();
    // `ip netns exec` execs the agent: this PID is the agent's.
    let pid = rustix::process::Pid::from_raw(agent.id() as i32).expect("pid");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let exited = agent.wait().expect("wait");
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    assert!(alive, "the agent exited with nothing to serve: {ready}");
    assert!(
        ready.contains("\"unsupported\":[{\"port\":80,\"protocol\":\"SCTP\"}]"),
        "{ready}"
    );
    assert!(exited.success(), "SIGTERM ends it cleanly: {exited:?}");
}
