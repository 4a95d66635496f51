//! Held connections in the simulation: an in-process stand-in for the agent's `hold`, speaking the
//! same protocol over an in-memory pipe, so the runner's `Held` bookkeeping is the real one.
//!
//! A connection opens if the dataplane lets a new connection through. At each `check` it still
//! carries traffic if it was established and either the dataplane tracks connections (replies of
//! established connections pass whatever the rules say, like conntrack) or, with the `stateless`
//! fault, the rules in effect still let both directions through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use polygraph_agent::wire::{Outcome, ProbeRequest, ProbeResult, Target};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::dataplane::Dataplane;
use super::lock;
use crate::backend::{BackendError, Held};
use crate::faults::Fault;
use crate::model::{PodRef, PortProtocol};

pub(super) async fn start(
    dataplane: Arc<Mutex<Dataplane>>,
    from: &PodRef,
    targets: &[Target],
    timeout: Duration,
) -> Result<Held, BackendError> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (agent_in, agent_out) = tokio::io::split(theirs);
    let session = tokio::spawn(serve(dataplane, from.clone(), agent_in, agent_out));
    let (stdout, stdin) = tokio::io::split(ours);
    // Aborting the task when the session is dropped closes the simulated connections.
    Held::start(
        from.clone(),
        targets,
        timeout,
        None,
        stdin,
        stdout,
        AbortOnDrop(session),
    )
    .await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(
    dataplane: Arc<Mutex<Dataplane>>,
    from: PodRef,
    input: impl tokio::io::AsyncRead + Unpin,
    mut output: impl tokio::io::AsyncWrite + Unpin,
) {
    let mut lines = BufReader::new(input).lines();
    let Ok(Some(first)) = lines.next_line().await else {
        return;
    };
    let Ok(request) = serde_json::from_str::<ProbeRequest>(&first) else {
        return;
    };
    let timeout = Duration::from_millis(request.timeout_ms);
    let opened: Vec<ProbeResult> = {
        let mut dataplane = lock(&dataplane);
        let judge = dataplane.judge(Instant::now());
        request
            .targets
            .iter()
            .map(|t| judge.probe(&from, t, timeout))
            .collect()
    };
    if write(&mut output, &opened).await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() != "check" {
            continue;
        }
        let checked: Vec<ProbeResult> = {
            let mut dataplane = lock(&dataplane);
            let stateless = dataplane.faults.has(Fault::Stateless);
            let judge = dataplane.judge(Instant::now());
            opened
                .iter()
                .map(|open| {
                    let mut result = open.clone();
                    let alive = open.outcome == Outcome::Connected
                        && (!stateless || {
                            let to = open.peer.as_deref().and_then(|p| p.parse().ok());
                            let route = judge.pod_at(&open.host, open.port).map(|(_, route)| route);
                            to.zip(route).is_some_and(|(to, route)| {
                                let pp = PortProtocol::new(open.port, open.protocol);
                                judge.passes(&from, &to, pp, route)
                            })
                        });
                    if !alive {
                        result.outcome = Outcome::Timeout;
                        result.elapsed_ms = timeout.as_secs_f64() * 1e3;
                        result.peer = None;
                    }
                    result
                })
                .collect()
        };
        if write(&mut output, &checked).await.is_err() {
            return;
        }
    }
}

async fn write(
    output: &mut (impl tokio::io::AsyncWrite + Unpin),
    results: &[ProbeResult],
) -> std::io::Result<()> {
    let mut text = String::new();
    for result in results {
        // Plain data: serialization cannot fail.
        text.push_str(&serde_json::to_string(result).unwrap_or_default());
        text.push('\n');
    }
    output.write_all(text.as_bytes()).await?;
    output.flush().await
}
