//! Running the host tools the local cluster is built with: `ip`, `nft`, `sysctl`. Every command runs
//! either in a network namespace polygraph created or creates/deletes one; none touches the host's
//! own interfaces.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::backend::BackendError;

/// Every namespace polygraph creates is named `pg-<run id>-<node|slot>`.
pub const NETNS_PREFIX: &str = "pg-";

#[derive(Debug, Clone)]
pub struct Names {
    pub run_id: String,
}

impl Names {
    pub fn node(&self) -> String {
        format!("{NETNS_PREFIX}{}-node", self.run_id)
    }

    /// The host outside the cluster: NodePort client, external server.
    pub fn outside(&self) -> String {
        format!("{NETNS_PREFIX}{}-outside", self.run_id)
    }

    pub fn pod(&self, slot: usize) -> String {
        format!("{NETNS_PREFIX}{}-{slot}", self.run_id)
    }
}

/// Runs a command to completion, feeding `stdin`; its stdout on success, a readable error otherwise.
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, BackendError> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(BackendError::io(format!("starting `{}`", shown())))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(BackendError::io(format!("writing to `{}`", shown())))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(BackendError::io(format!("waiting for `{}`", shown())))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(BackendError::Command {
            command: shown(),
            message: crate::input::one_line(&stderr),
        })
    }
}

/// `ip -n NETNS -batch -` with one command per line.
pub async fn ip_batch(netns: &str, lines: &[String]) -> Result<(), BackendError> {
    run("ip", &["-n", netns, "-batch", "-"], Some(&lines.join("\n")))
        .await
        .map(drop)
}

pub async fn netns_add(name: &str) -> Result<(), BackendError> {
    run("ip", &["netns", "add", name], None).await.map(drop)
}

/// Runs `program args` inside `netns`.
pub async fn exec_in(
    netns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, BackendError> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full, stdin).await
}

pub async fn nft(netns: &str, transaction: &str) -> Result<(), BackendError> {
    exec_in(netns, "nft", &["-f", "-"], Some(transaction))
        .await
        .map(drop)
}

/// Deletes a namespace, synchronously: also used from `Drop` and by `gc`. Missing is fine.
pub fn netns_delete_now(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "delete", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Namespaces that exist now (names only).
pub fn netns_list() -> Vec<String> {
    let Ok(output) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// PIDs of the processes inside a namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    let Ok(output) = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether a tool is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}
