//! `polygraph gc`: remove what a killed run left behind: namespaces named `pg-<run id>-…` whose
//! owning polygraph process is gone, and the agent processes still running inside them.

use std::path::Path;

use super::OWNER_DIR;
use super::host::{NETNS_PREFIX, netns_delete_now, netns_list, netns_pids};
use crate::backend::BackendError;

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub killed: Vec<i32>,
    /// Namespaces left alone because the run that owns them is alive: (namespace, owner PID).
    pub live: Vec<(String, i32)>,
}

/// The run id of a namespace polygraph made: `pg-<6 hex digits>-<node, outside or slot>`.
fn run_id(netns: &str) -> Option<&str> {
    let rest = netns.strip_prefix(NETNS_PREFIX)?;
    let (id, suffix) = rest.split_once('-')?;
    let id_ok = id.len() == 6 && id.chars().all(|c| c.is_ascii_hexdigit());
    let suffix_ok = suffix == "node"
        || suffix == "outside"
        || (!suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_digit()));
    (id_ok && suffix_ok).then_some(id)
}

/// The PID of the live polygraph process that owns `run`, if any.
fn live_owner(run: &str) -> Option<i32> {
    let text = std::fs::read_to_string(Path::new(OWNER_DIR).join(format!("{run}.pid"))).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // A reused PID belongs to some other program: only a polygraph process counts.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("polygraph")
        .then_some(pid)
}

pub fn gc() -> Result<GcReport, BackendError> {
    if !rustix::process::geteuid().is_root() {
        return Err(BackendError::NotRoot);
    }
    let mut report = GcReport::default();
    let mut dead_runs = Vec::new();
    for netns in netns_list() {
        let Some(run) = run_id(&netns).map(str::to_string) else {
            continue;
        };
        if let Some(pid) = live_owner(&run) {
            report.live.push((netns.clone(), pid));
            continue;
        }
        for pid in netns_pids(&netns) {
            // Only processes inside polygraph's own namespaces: agents of the dead run.
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                report.killed.push(pid.as_raw_nonzero().get());
            }
        }
        netns_delete_now(&netns);
        report.removed.push(netns);
        dead_runs.push(run);
    }
    for run in dead_runs {
        let _ = std::fs::remove_file(Path::new(OWNER_DIR).join(format!("{run}.pid")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::run_id;

    #[test]
    fn only_polygraph_names_are_recognised() {
        assert_eq!(run_id("pg-0a1b2c-node"), Some("0a1b2c"));
        assert_eq!(run_id("pg-0a1b2c-17"), Some("0a1b2c"));
        assert_eq!(run_id("pg-0a1b2c-"), None);
        assert_eq!(run_id("pg-xyz123-node"), None);
        assert_eq!(run_id("pgt-a"), None);
        assert_eq!(run_id("cni-1234"), None);
        assert_eq!(run_id("pg-0a1b2c-node-extra"), None);
    }
}
