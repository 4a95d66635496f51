//! Helpers shared by the integration tests: run the real binary, expand cell patterns.
#![allow(dead_code)]

pub mod corpus;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `polygraph` with `args`, feeding `stdin`.
pub fn polygraph(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polygraph"))
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

/// Whether the local cluster can run here (root, iproute2, nftables). When it can't, the calling
/// test says so loudly and passes without testing: CI runs as root and has the tools.
pub fn local_cluster_or_skip(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["ip", "nft"].iter().all(|tool| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
    });
    if root && tools {
        return true;
    }
    let why = if root {
        "iproute2 or nftables is not installed"
    } else {
        "not running as root"
    };
    let banner = format!(
        "\n!!!!! SKIPPED {test}: {why}; the local cluster tests need root, iproute2 and nftables (CI has them) !!!!!\n"
    );
    // Straight to file descriptor 2: the test harness captures print!, eprint! and io::stderr(),
    // and a skip must show in every CI log.
    // SAFETY: descriptor 2 stays open for the whole life of the process.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let _ = rustix::io::write(stderr, banner.as_bytes());
    false
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
