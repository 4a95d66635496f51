//! Held connections in the simulation: an in-process stand-in for the agent's `session`, speaking
//! the same protocol over an in-memory pipe, so the sessions and the runner's `Held` bookkeeping
//! are the real ones.
//!
//! A connection opens if the dataplane lets a new connection through. At each `check` it still
//! carries traffic if it was established and either the dataplane tracks connections (replies of
//! established connections pass whatever the rules say, like conntrack) or, with the `stateless`
//! fault, the rules in effect still let both directions through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polygraph_agent::session::write_line;
use polygraph_agent::wire::{
    Outcome, ProbeResult, SESSION_PROTOCOL, SessionHello, SessionOp, SessionReply, SessionRequest,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::dataplane::Dataplane;
use super::lock;
use crate::backend::BackendError;
use crate::backend::session::Session;
use crate::faults::Fault;
use crate::model::{PodRef, PortProtocol};

/// An in-process simulated agent session for `from` (it answers holds; the simulation answers
/// probe batches itself), over an in-memory pipe; dropping the session ends it.
pub(super) async fn session(
    dataplane: Arc<Mutex<Dataplane>>,
    from: &PodRef,
) -> Result<Session, BackendError> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (agent_in, agent_out) = tokio::io::split(theirs);
    let agent = tokio::spawn(serve(dataplane, from.clone(), agent_in, agent_out));
    let (stdout, stdin) = tokio::io::split(ours);
    Session::open(
        from,
        stdout,
        stdin,
        None,
        AbortOnDrop(agent),
        None,
        Duration::from_secs(10),
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
    let hello = SessionHello {
        session: SESSION_PROTOCOL,
    };
    if write_line(&mut output, &hello).await.is_err() {
        return;
    }
    // Each hold: how its flows opened, and the timeout its checks wait.
    let mut holds: HashMap<u64, (Vec<ProbeResult>, Duration)> = HashMap::new();
    let mut lines = BufReader::new(input).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(request) = serde_json::from_str::<SessionRequest>(&line) else {
            return;
        };
        let id = request.id;
        let reply = |results| SessionReply {
            id,
            results,
            error: None,
        };
        let reply = match request.op {
            SessionOp::Hold(request) => {
                let timeout = Duration::from_millis(request.timeout_ms);
                let opened: Vec<ProbeResult> = {
                    let mut dataplane = lock(&dataplane);
                    let judge = dataplane.judge(Instant::now());
                    request
                        .targets
                        .iter()
                        .map(|t| judge.probe(&from, t, timeout, super::dataplane::Queued::Judged))
                        .collect()
                };
                holds.insert(id, (opened.clone(), timeout));
                reply(opened)
            }
            SessionOp::Check { hold } => match holds.get(&hold) {
                Some((opened, timeout)) => reply(check(&dataplane, &from, opened, *timeout)),
                None => SessionReply {
                    id,
                    results: Vec::new(),
                    error: Some(format!("no hold {hold}")),
                },
            },
            SessionOp::Release { hold } => {
                holds.remove(&hold);
                reply(Vec::new())
            }
            SessionOp::Probe(_) => SessionReply {
                id,
                results: Vec::new(),
                error: Some("the simulation answers probe batches itself".into()),
            },
        };
        if write_line(&mut output, &reply).await.is_err() {
            return;
        }
    }
}

/// Which held flows still carry traffic.
fn check(
    dataplane: &Mutex<Dataplane>,
    from: &PodRef,
    opened: &[ProbeResult],
    timeout: Duration,
) -> Vec<ProbeResult> {
    let mut dataplane = lock(dataplane);
    let stateless = dataplane.faults.has(Fault::Stateless);
    let judge = dataplane.judge(Instant::now());
    opened
        .iter()
        .map(|open| {
            let mut result = open.clone();
            let alive = open.outcome == Outcome::Connected
                && (!stateless || {
                    let to = open.peer.as_deref().and_then(|p| p.parse().ok());
                    let route = judge
                        .pod_at(&open.host, open.port, open.protocol)
                        .map(|(_, route)| route);
                    to.zip(route).is_some_and(|(to, route)| {
                        let pp = PortProtocol::new(open.port, open.protocol);
                        judge.passes(from, &to, pp, route)
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
}
