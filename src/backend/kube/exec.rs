//! Probing through `exec` into the agent container: one long-lived exec per source pod running the
//! agent's `session` (every batch and hold of the run), and for the exec-per-probe design one exec
//! per batch (the agent's `probe` reads one JSON request and writes one result per line).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::Api;
use kube::api::AttachParams;
use polygraph_agent::wire::ProbeResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::call;
use crate::backend::session::Session;
use crate::backend::{BackendError, parse_probe_output};
use crate::model::PodRef;

const AGENT: &str = "/polygraph-agent";

/// An exec into the agent container with stdin and stdout (and stderr when asked for).
fn agent_exec(stderr: bool) -> AttachParams {
    AttachParams::default()
        .container("agent")
        .stdin(true)
        .stdout(true)
        .stderr(stderr)
}

/// One probe batch: `request` to the agent's `probe`, its results back; at most `limit` in all.
pub(super) async fn probe(
    api: &Api<KubePod>,
    from: &PodRef,
    request: &str,
    targets: usize,
    limit: Duration,
) -> Result<Vec<ProbeResult>, BackendError> {
    let fail = |message: String| BackendError::Probe {
        pod: from.clone(),
        message,
    };
    let params = agent_exec(true);
    let exec = async {
        let mut attached = call(&format!("exec into {from}"), || async {
            api.exec(&from.name, [AGENT, "probe"], &params).await
        })
        .await?;
        let mut stdin = attached
            .stdin()
            .ok_or_else(|| fail("exec has no stdin".into()))?;
        let mut stdout = attached
            .stdout()
            .ok_or_else(|| fail("exec has no stdout".into()))?;
        let mut stderr = attached
            .stderr()
            .ok_or_else(|| fail("exec has no stderr".into()))?;
        let status = attached.take_status();
        stdin
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| fail(format!("writing the request: {e}")))?;
        // stdin stays open until the exec is over: the agent reads one JSON request and needs
        // no EOF, and closing stdin over the v4 protocol would close the whole connection.
        let _stdin_open = stdin;
        // Both streams are drained together: a full stderr pipe must not stall stdout.
        let (mut out, mut err) = (String::new(), String::new());
        let (o, _) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        o.map_err(|e| fail(format!("reading output: {e}")))?;
        let status = match status {
            Some(status) => status.await,
            None => None,
        };
        attached
            .join()
            .await
            .map_err(|e| fail(format!("exec: {e}")))?;
        if let Some(status) = status
            && status.status.as_deref() == Some("Failure")
        {
            return Err(fail(format!(
                "the agent failed: {} {}",
                status.message.unwrap_or_default(),
                crate::input::one_line(&err)
            )));
        }
        Ok::<_, BackendError>(out)
    };
    let out = tokio::time::timeout(limit, exec).await.map_err(|_| {
        fail(format!(
            "exec did not finish within {}",
            humantime::format_duration(limit)
        ))
    })??;
    parse_probe_output(from, &out, targets)
}

/// A `session` agent over one interactive exec, for all of the pod's batches and holds
/// (`backend::session`); closing the exec ends it. Its stderr is kept to explain an end.
pub(super) async fn session(
    api: &Api<KubePod>,
    from: &PodRef,
    limit: Duration,
) -> Result<Session, BackendError> {
    let fail = |message: &str| BackendError::Probe {
        pod: from.clone(),
        message: message.into(),
    };
    let params = agent_exec(true);
    let open = async {
        let mut attached = call(&format!("exec into {from}"), || async {
            api.exec(&from.name, [AGENT, "session"], &params).await
        })
        .await?;
        let stdin = attached.stdin().ok_or_else(|| fail("exec has no stdin"))?;
        let stdout = attached
            .stdout()
            .ok_or_else(|| fail("exec has no stdout"))?;
        let stderr = attached
            .stderr()
            .ok_or_else(|| fail("exec has no stderr"))?;
        // kube-rs closes stdout when the exec ends cleanly, but not when its connection breaks:
        // the end of the exec's own task is what says the stream is gone. Dropping the watcher
        // drops the exec, which closes the connection, and the agent reads EOF.
        let ended_by = Box::pin(async move {
            match attached.join().await {
                Ok(()) => "the exec ended".to_string(),
                Err(e) => format!("the exec's stream broke: {e}"),
            }
        });
        Session::open(
            from,
            stdout,
            stdin,
            Some(Box::new(stderr)),
            (),
            Some(ended_by),
            limit,
        )
        .await
    };
    tokio::time::timeout(limit, open).await.map_err(|_| {
        fail(&format!(
            "the exec for the agent's session did not open within {}",
            humantime::format_duration(limit)
        ))
    })?
}
