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

/// Expands one side of a pattern: comma-separated `ns/pod`, `ns/*`, `*/pod`, `*/*`, each
/// optionally prefixed with `!` to take pods away. Panics on a pattern that matches no pod,
/// which is always a typo in a hand-written case.
pub fn expand_side(side: &str, pods: &[String]) -> BTreeSet<String> {
    let mut add = BTreeSet::new();
    let mut remove = BTreeSet::new();
    for term in side.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (negated, term) = match term.strip_prefix('!') {
            Some(t) => (true, t),
            None => (false, term),
        };
        let (ns, name) = term
            .split_once('/')
            .unwrap_or_else(|| panic!("bad pattern term {term:?}"));
        let matched: Vec<&String> = pods
            .iter()
            .filter(|p| {
                let (pns, pname) = p.split_once('/').unwrap();
                (ns == "*" || ns == pns) && (name == "*" || name == pname)
            })
            .collect();
        assert!(
            !matched.is_empty(),
            "pattern term {term:?} matches no pod of {pods:?}"
        );
        let target = if negated { &mut remove } else { &mut add };
        target.extend(matched.into_iter().cloned());
    }
    add.difference(&remove).cloned().collect()
}

/// `FROM -> TO` into (from, to) pairs.
pub fn expand_pattern(pattern: &str, pods: &[String]) -> BTreeSet<(String, String)> {
    let (from, to) = pattern
        .split_once("->")
        .unwrap_or_else(|| panic!("pattern {pattern:?} lacks ->"));
    let froms = expand_side(from, pods);
    let tos = expand_side(to, pods);
    froms
        .iter()
        .flat_map(|f| tos.iter().map(move |t| (f.clone(), t.clone())))
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
