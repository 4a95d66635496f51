//! The agent processes of the local cluster: one `serve` per pod (its listeners), one `session` per
//! source pod (its probe batches and held connections), and for the exec-per-probe design one
//! short-lived `probe` per batch, each run inside the pod's network namespace with `ip netns exec`.

use std::process::Stdio;
use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Ready};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::host;
use super::options::AgentCommand;
use crate::backend::session::Session;
use crate::backend::{BackendError, parse_probe_output};
use crate::model::{Pod, PodRef};

/// A pod's `serve` process.
pub(super) struct Agent {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    ready: Option<Ready>,
    /// The DNS server reads its records here; serving agents read nothing.
    stdin: Option<ChildStdin>,
}

/// The agent, run inside `netns`, ready for its subcommand; it dies with its handle.
fn command(agent: &AgentCommand, netns: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(&agent.program)
        .args(&agent.args)
        .kill_on_drop(true);
    command
}

impl Agent {
    /// Starts serving the pod's ports; `None` for a pod that serves none.
    pub(super) fn serve(
        agent: &AgentCommand,
        netns: &str,
        pod: &Pod,
    ) -> Result<Option<Agent>, BackendError> {
        if pod.ports.is_empty() {
            return Ok(None);
        }
        let listen: Vec<String> = pod
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        let mut child = command(agent, netns)
            .args([
                "serve",
                "--identity",
                &pod.key().to_string(),
                "--listen",
                &listen.join(","),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(BackendError::io(format!(
                "starting the agent of pod {}",
                pod.key()
            )))?;
        let stdout = child.stdout.take().ok_or_else(|| BackendError::Pod {
            pod: pod.key(),
            message: "agent has no stdout".into(),
        })?;
        Ok(Some(Agent {
            child,
            stdout: BufReader::new(stdout).lines(),
            ready: None,
            stdin: None,
        }))
    }

    /// Starts the cluster's DNS server as `pod` (the agent's `dns`), answering for `domain`; its
    /// names come through `send`.
    pub(super) fn dns(
        agent: &AgentCommand,
        netns: &str,
        pod: &Pod,
        domain: &str,
    ) -> Result<Agent, BackendError> {
        let mut child = command(agent, netns)
            .args([
                "dns",
                "--identity",
                &pod.key().to_string(),
                "--domain",
                domain,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(BackendError::io(format!(
                "starting the DNS server {}",
                pod.key()
            )))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(BackendError::Pod {
                pod: pod.key(),
                message: "DNS server without pipes".into(),
            });
        };
        Ok(Agent {
            child,
            stdout: BufReader::new(stdout).lines(),
            ready: None,
            stdin: Some(stdin),
        })
    }

    /// Writes one line to the agent's stdin (the DNS server's records).
    pub(super) async fn send(&mut self, pod: &PodRef, line: &str) -> Result<(), BackendError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Ok(());
        };
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        };
        written.await.map_err(|e| BackendError::Pod {
            pod: pod.clone(),
            message: format!("the DNS server stopped taking records: {e}"),
        })
    }

    /// Waits for the agent's ready line (every listener bound) until `deadline`.
    pub(super) async fn await_ready(
        &mut self,
        pod: &PodRef,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        if self.ready.is_some() {
            return Ok(());
        }
        let fail = |message: String| BackendError::Pod {
            pod: pod.clone(),
            message,
        };
        let line = tokio::time::timeout_at(deadline, self.stdout.next_line()).await;
        let ready = match line {
            Ok(Ok(Some(line))) => serde_json::from_str::<Ready>(&line)
                .map_err(|e| fail(format!("agent said {line:?}: {e}")))?,
            Ok(_) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr).await;
                }
                return Err(fail(format!(
                    "agent exited before it was ready: {}",
                    crate::input::one_line(&stderr)
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "agent not ready after {}",
                    humantime::format_duration(timeout)
                )));
            }
        };
        self.ready = Some(ready);
        Ok(())
    }

    /// Ends the agent, waiting a little for it to go.
    pub(super) async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }

    /// Ends the agent without waiting (from `Drop`).
    pub(super) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One probe batch: a `probe` process in the pod's namespace, fed one JSON request.
pub(super) async fn probe(
    agent: &AgentCommand,
    netns: &str,
    from: &PodRef,
    request: &str,
    targets: usize,
    timeout: Duration,
) -> Result<Vec<ProbeResult>, BackendError> {
    let program = agent.program.to_string_lossy().into_owned();
    let mut args: Vec<&str> = agent.args.iter().map(String::as_str).collect();
    args.push("probe");
    // The agent finishes within one timeout; allow generously for process start-up under load.
    let limit = timeout + super::AGENT_SLACK;
    let output = tokio::time::timeout(limit, host::exec_in(netns, &program, &args, Some(request)))
        .await
        .map_err(|_| BackendError::Probe {
            pod: from.clone(),
            message: format!(
                "the agent did not finish within {}",
                humantime::format_duration(limit)
            ),
        })??;
    parse_probe_output(from, &output, targets)
}

/// A `session` agent in the pod's namespace, for all of the pod's batches and holds
/// (`backend::session`); it dies with the session.
pub(super) async fn session(
    agent: &AgentCommand,
    netns: &str,
    from: &PodRef,
    limit: Duration,
) -> Result<Session, BackendError> {
    let mut child = command(agent, netns)
        .arg("session")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BackendError::io(format!(
            "starting the agent's session in {from}"
        )))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(BackendError::Probe {
            pod: from.clone(),
            message: "agent without pipes".into(),
        });
    };
    Session::open(
        from,
        stdout,
        stdin,
        Some(Box::new(stderr)),
        child,
        None,
        limit,
    )
    .await
}
