//! Probing through pods/exec against a fake API server that really speaks the websocket channel
//! protocol (v5.channel.k8s.io): stdout, stderr, exit status, and an exec that never answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kube::Client;
use polygraph::backend::Backend;
use polygraph::backend::kube::KubeBackend;
use polygraph::backend::kube::manifests::{KubeOptions, RunNames};
use polygraph::model::{PodRef, Protocol};
use polygraph_agent::wire::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[derive(Clone)]
enum Reply {
    /// stdout, stderr, the status object.
    Finish(String, String, serde_json::Value),
    /// Accept the exec, then never answer.
    Hang,
    /// An interactive session (the agent's `hold`): answer the n-th stdin line with the n-th text.
    Script(Vec<String>),
}

/// A fake API server on localhost. Returns its URL and what the exec received on stdin.
// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn fake_server(reply: Reply) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let stdin = Arc::new(Mutex::new(Vec::new()));
    let captured = stdin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            let captured = captured.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let n = stream.peek(&mut head).await.unwrap_or(0);
                if !String::from_utf8_lossy(&head[..n]).contains("/exec?") {
                    // Anything else (the CNI lookup): not found, and close.
                    let mut request = vec![0u8; n];
                    let _ = stream.read_exact(&mut request).await;
                    let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                    let response = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    return;
                }
                let choose = |request: &Request, mut response: Response| {
                    let offered = request
                        .headers()
                        .get_all("sec-websocket-protocol")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| v.contains("v5.channel.k8s.io"));
                    assert!(offered, "the client offers v5.channel.k8s.io");
                    response.headers_mut().insert(
                        "sec-websocket-protocol",
                        "v5.channel.k8s.io".parse().expect("header"),
                    );
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, choose).await else {
                    return;
                };
                let (mut write, mut read) = ws.split();
                // Like the API server and the agent: read client frames all along, answer once a
                // whole request line has arrived (the agent needs no stdin EOF).
                let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                tokio::spawn(async move {
                    let mut lines = 0;
                    while let Some(Ok(message)) = read.next().await {
                        if let Message::Binary(frame) = message
                            && frame.first() == Some(&0)
                        {
                            let mut got = captured.lock().expect("stdin");
                            got.extend_from_slice(&frame[1..]);
                            let complete = got.iter().filter(|b| **b == b'\n').count();
                            while lines < complete {
                                lines += 1;
                                let _ = line_tx.send(());
                            }
                        }
                    }
                });
                if line_rx.recv().await.is_none() {
                    return;
                }
                let frame = |channel: u8, data: &[u8]| {
                    let mut bytes = vec![channel];
                    bytes.extend_from_slice(data);
                    Message::Binary(Bytes::from(bytes))
                };
                match reply {
                    Reply::Script(answers) => {
                        for (index, answer) in answers.iter().enumerate() {
                            if index > 0 && line_rx.recv().await.is_none() {
                                return;
                            }
                            let _ = write.send(frame(1, answer.as_bytes())).await;
                        }
                        std::future::pending::<()>().await
                    }
                    Reply::Hang => std::future::pending::<()>().await,
                    Reply::Finish(stdout, stderr, status) => {
                        let _ = write.send(frame(1, stdout.as_bytes())).await;
                        let _ = write.send(frame(2, stderr.as_bytes())).await;
                        let _ = write.send(frame(3, status.to_string().as_bytes())).await;
                        let _ = write.close().await;
                    }
                }
            });
        }
    });
    (url, stdin)
}

async fn backend(url: &str, slack: Duration) -> KubeBackend {
    let config = kube::Config::new(url.parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    let names = RunNames::new("polygraph", "abc123").expect("names");
    KubeBackend::with_client(client, KubeOptions::default(), names, "fake".into())
        .await
        .with_exec_slack(slack)
}

fn targets() -> Vec<Target> {
    vec![
        Target::new("10.9.0.11", 80, Protocol::Tcp),
        Target::new("10.9.0.12", 80, Protocol::Udp),
    ]
}

fn from() -> PodRef {
    "x/a".parse().expect("pod")
}

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;

#[tokio::test]
async fn exec_returns_the_agents_results() {
    let stdout = concat!(
        r#"{"host":"10.9.0.11","port":80,"protocol":"TCP","outcome":"connected","started_ms":0.1,"elapsed_ms":1.2,"peer":"x/b"}"#,
        "\n",
        r#"{"host":"10.9.0.12","port":80,"protocol":"UDP","outcome":"timeout","started_ms":0.2,"elapsed_ms":1000.0}"#,
        "\n"
    );
    let (url, stdin) = fake_server(Reply::Finish(
        stdout.into(),
        "a warning on stderr\n".into(),
        serde_json::from_str(SUCCESS).expect("json"),
    ))
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let results = backend
        .probe(&from(), &targets(), Duration::from_millis(500).into())
        .await
        .expect("probe");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].peer.as_deref(), Some("x/b"));
    assert_eq!(results[1].outcome.as_str(), "timeout");
    let sent = String::from_utf8(stdin.lock().expect("stdin").clone()).expect("UTF-8");
    let request: serde_json::Value =
        serde_json::from_str(sent.trim()).expect("the request is one JSON line");
    assert_eq!(request["timeout_ms"], 500);
    assert_eq!(request["targets"][1]["protocol"], "UDP");
}

#[tokio::test]
async fn a_failing_agent_is_an_error_with_its_stderr() {
    let status = serde_json::json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: exit status 2",
        "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}});
    let (url, _) = fake_server(Reply::Finish(
        String::new(),
        "polygraph-agent: bad probe request\n".into(),
        status,
    ))
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let error = backend
        .probe(&from(), &targets(), Duration::from_millis(500).into())
        .await
        .expect_err("failed")
        .to_string();
    assert!(
        error.starts_with("probing from x/a: the agent failed"),
        "{error}"
    );
    assert!(
        error.contains("exit status 2") && error.contains("bad probe request"),
        "{error}"
    );
}

#[tokio::test]
async fn an_exec_that_never_answers_times_out() {
    let (url, _) = fake_server(Reply::Hang).await;
    let backend = backend(&url, Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let error = backend
        .probe(&from(), &targets(), Duration::from_millis(200).into())
        .await
        .expect_err("timeout")
        .to_string();
    assert!(
        error.contains("exec did not finish within 500ms"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn missing_results_are_an_error() {
    let stdout = r#"{"host":"10.9.0.11","port":80,"protocol":"TCP","outcome":"connected","started_ms":0.1,"elapsed_ms":1.2,"peer":"x/b"}"#.to_string() + "\n";
    let (url, _) = fake_server(Reply::Finish(
        stdout,
        String::new(),
        serde_json::from_str(SUCCESS).expect("json"),
    ))
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let error = backend
        .probe(&from(), &targets(), Duration::from_millis(500).into())
        .await
        .expect_err("short")
        .to_string();
    assert!(error.contains("1 results for 2 targets"), "{error}");
}

#[tokio::test]
async fn held_connections_are_established_then_checked_over_one_exec() {
    let line = |outcome: &str, protocol: &str, host: &str| {
        format!(
            r#"{{"host":"{host}","port":80,"protocol":"{protocol}","outcome":"{outcome}","started_ms":0.1,"elapsed_ms":1.0}}"#
        ) + "\n"
    };
    let established =
        line("connected", "TCP", "10.9.0.11") + &line("connected", "UDP", "10.9.0.12");
    let checked = line("connected", "TCP", "10.9.0.11") + &line("timeout", "UDP", "10.9.0.12");
    let (url, stdin) = fake_server(Reply::Script(vec![established, checked])).await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let timeout = Duration::from_millis(500);
    let mut held = backend
        .hold(&from(), &targets(), timeout)
        .await
        .expect("hold");
    let opened = held.established(timeout).await.expect("established");
    assert!(opened.iter().all(|r| r.outcome.as_str() == "connected"));
    let checked = held.check(timeout).await.expect("checked");
    assert_eq!(checked[0].outcome.as_str(), "connected");
    assert_eq!(
        checked[1].outcome.as_str(),
        "timeout",
        "the UDP flow was cut"
    );
    let sent = String::from_utf8(stdin.lock().expect("stdin").clone()).expect("UTF-8");
    let lines: Vec<&str> = sent.lines().collect();
    assert_eq!(lines.len(), 2, "{sent}");
    assert!(lines[0].contains("\"targets\""), "{sent}");
    assert_eq!(lines[1], "check");
}
