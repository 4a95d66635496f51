//! `session`: one agent per source pod for a whole run. It reads `SessionRequest` lines (probe
//! batches, holds, checks, releases) and answers each with one `SessionReply` line carrying the
//! request's id, so a runner can keep a single process (a single `kubectl exec` on Kubernetes) per
//! pod instead of starting one per round. Requests run concurrently: a check of held connections
//! need not wait for a probe batch.
//!
//! The first line out is a `SessionHello`. EOF on the input ends the session, closing every held
//! flow; so does `idle` without a request while nothing is in flight, so an agent whose runner
//! vanished without closing its stream (a broken exec) does not stay behind in the pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::hold::HeldFlows;
use crate::wire::{SESSION_PROTOCOL, SessionHello, SessionOp, SessionReply, SessionRequest};

/// The holds of a session by id (the map is locked only between awaits); a hold's own mutex lets a
/// check wait for its opening.
type Holds = Mutex<HashMap<u64, Arc<tokio::sync::Mutex<HeldFlows>>>>;

fn holds_of(
    holds: &Holds,
) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<tokio::sync::Mutex<HeldFlows>>>> {
    holds.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves requests from `input` until it ends, or until `idle` passes with no request and none in
/// flight.
pub async fn run<R, W>(input: R, mut output: W, idle: Duration) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = SessionHello {
        session: SESSION_PROTOCOL,
    };
    write_line(&mut output, &hello).await?;
    let holds = Holds::default();
    let mut lines = BufReader::new(input).lines();
    let mut in_flight = FuturesUnordered::new();
    let idle_since = tokio::time::sleep(idle);
    tokio::pin!(idle_since);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                idle_since.as_mut().reset(tokio::time::Instant::now() + idle);
                if line.trim().is_empty() {
                    continue;
                }
                in_flight.push(serve(line, &holds));
            }
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                write_line(&mut output, &reply).await?;
                idle_since.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            () = &mut idle_since, if in_flight.is_empty() => return Ok(()),
        }
    }
}

/// Writes `value` as one JSON line and flushes it: the session protocol's framing, also used by the
/// simulation's stand-in agent.
pub async fn write_line<W: AsyncWrite + Unpin>(
    output: &mut W,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    // Plain data of strings and numbers: serialization cannot fail.
    let mut line = serde_json::to_string(value).unwrap_or_default();
    line.push('\n');
    output.write_all(line.as_bytes()).await?;
    output.flush().await
}

/// Carries out one request line.
async fn serve(line: String, holds: &Holds) -> SessionReply {
    let request: SessionRequest = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            // Still answer the id, if there is one, so the runner is not left waiting.
            let id = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["id"].as_u64())
                .unwrap_or(0);
            return failed(id, format!("bad session request: {e}"));
        }
    };
    let id = request.id;
    let answer = |results| SessionReply {
        id,
        results,
        error: None,
    };
    match request.op {
        SessionOp::Probe(batch) => answer(crate::probe::run(&batch).await),
        SessionOp::Hold(batch) => {
            // Registered before it opens, so a check sent meanwhile waits for the opening.
            let slot = Arc::new(tokio::sync::Mutex::new(HeldFlows::default()));
            let Ok(mut guard) = slot.clone().try_lock_owned() else {
                return failed(id, "a new hold is never locked".into());
            };
            {
                let mut all = holds_of(holds);
                if all.contains_key(&id) {
                    return failed(id, format!("hold {id} exists already"));
                }
                all.insert(id, slot);
            }
            let (flows, results) = HeldFlows::open(&batch).await;
            *guard = flows;
            answer(results)
        }
        SessionOp::Check { hold } => {
            let Some(flows) = holds_of(holds).get(&hold).cloned() else {
                return failed(id, format!("no hold {hold}"));
            };
            let mut flows = flows.lock().await;
            answer(flows.check().await)
        }
        SessionOp::Release { hold } => {
            // The flows close when the last check of them is done.
            holds_of(holds).remove(&hold);
            answer(Vec::new())
        }
    }
}

fn failed(id: u64, error: String) -> SessionReply {
    SessionReply {
        id,
        results: Vec::new(),
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Outcome, ProbeRequest, Protocol, Target};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A greeting-then-echo TCP server on localhost, for as many connections as come.
    async fn server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    stream.write_all(b"polygraph x/b\n").await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    fn batch(port: u16) -> ProbeRequest {
        ProbeRequest {
            timeout_ms: 300,
            targets: vec![Target::new("127.0.0.1", port, Protocol::Tcp)],
            udp_source_base: None,
            nameserver: None,
            deadline_ms: None,
            attempts: None,
        }
    }

    #[tokio::test]
    async fn requests_are_answered_by_id_and_holds_live_until_released() {
        let port = server().await;
        let (mut to_agent, agent_in) = tokio::io::duplex(64 * 1024);
        let (agent_out, from_agent) = tokio::io::duplex(64 * 1024);
        let agent =
            tokio::spawn(async move { run(agent_in, agent_out, Duration::from_secs(30)).await });
        let mut replies = BufReader::new(from_agent).lines();
        let hello: SessionHello =
            serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(hello.session, SESSION_PROTOCOL);
        let mut send = async |id: u64, op: SessionOp| {
            let line = serde_json::to_string(&SessionRequest { id, op }).unwrap() + "\n";
            to_agent.write_all(line.as_bytes()).await.unwrap();
        };
        // A hold, a probe batch and a check of the hold, sent together.
        send(7, SessionOp::Hold(batch(port))).await;
        send(8, SessionOp::Probe(batch(port))).await;
        send(9, SessionOp::Check { hold: 7 }).await;
        send(10, SessionOp::Check { hold: 99 }).await;
        let mut by_id = HashMap::new();
        for _ in 0..4 {
            let reply: SessionReply =
                serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
            by_id.insert(reply.id, reply);
        }
        for id in [7, 8, 9] {
            assert_eq!(by_id[&id].error, None);
            assert_eq!(by_id[&id].results.len(), 1);
            assert_eq!(by_id[&id].results[0].outcome, Outcome::Connected, "{id}");
        }
        assert_eq!(
            by_id[&9].results[0].detail.as_deref(),
            Some("the connection still carries traffic")
        );
        assert_eq!(by_id[&10].error.as_deref(), Some("no hold 99"));
        send(11, SessionOp::Release { hold: 7 }).await;
        send(12, SessionOp::Check { hold: 7 }).await;
        let released: SessionReply =
            serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!((released.id, released.error), (11, None));
        let gone: SessionReply =
            serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(gone.error.as_deref(), Some("no hold 7"));
        to_agent
            .write_all(b"{\"id\": 13, \"probe\": 5}\n")
            .await
            .unwrap();
        let bad: SessionReply =
            serde_json::from_str(&replies.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(bad.id, 13);
        assert!(bad.error.unwrap().starts_with("bad session request"));
        // EOF ends the session.
        drop(to_agent);
        agent.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_session_ends_by_itself() {
        let (_to_agent, agent_in) = tokio::io::duplex(1024);
        let (agent_out, _from_agent) = tokio::io::duplex(1024);
        let idle = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        run(agent_in, agent_out, idle).await.unwrap();
        assert!(started.elapsed() >= idle);
    }
}
