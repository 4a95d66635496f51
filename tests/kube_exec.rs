//! Probing through pods/exec against a fake API server that really speaks the websocket channel
//! protocol (v5.channel.k8s.io): stdout, stderr, exit status, an exec that never answers, and the
//! real agent's `session` behind a stream that can be made to break.

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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[derive(Clone)]
enum Reply {
    /// stdout, stderr, the status object.
    Finish(String, String, serde_json::Value),
    /// Accept the exec, then never answer.
    Hang,
    /// Exit at once, before reading anything: stderr, the status object (an agent that cannot run
    /// the subcommand asked for).
    Exit(String, serde_json::Value),
    /// The real agent's `session`, in process, probing from this host: after `break_after`
    /// replies the stream is cut (the connection dropped without a status), as a restarted API
    /// server or a broken proxy would.
    Agent { break_after: Option<usize> },
}

/// What the fake server saw: the stdin bytes of the last exec, and how many execs were opened.
#[derive(Clone, Default)]
struct Seen {
    stdin: Arc<Mutex<Vec<u8>>>,
    execs: Arc<std::sync::atomic::AtomicUsize>,
}

/// A fake API server on localhost. Returns its URL and what the execs received on stdin.
async fn fake_server(reply: Reply) -> (String, Arc<Mutex<Vec<u8>>>) {
    let (url, seen) = fake_server_seen(reply).await;
    (url, seen.stdin)
}

/// A fake API server on localhost, and what it saw.
// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn fake_server_seen(reply: Reply) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Seen::default();
    let captured = seen.stdin.clone();
    let execs = seen.execs.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            let captured = captured.clone();
            let execs = execs.clone();
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
                execs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (mut write, mut read) = ws.split();
                let frame = |channel: u8, data: &[u8]| {
                    let mut bytes = vec![channel];
                    bytes.extend_from_slice(data);
                    Message::Binary(Bytes::from(bytes))
                };
                match &reply {
                    Reply::Agent { break_after } => {
                        agent_session(&mut write, &mut read, *break_after).await;
                        return;
                    }
                    Reply::Exit(stderr, status) => {
                        let _ = write.send(frame(2, stderr.as_bytes())).await;
                        let _ = write.send(frame(3, status.to_string().as_bytes())).await;
                        let _ = write.close().await;
                        return;
                    }
                    _ => {}
                }
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
                match reply {
                    Reply::Agent { .. } | Reply::Exit(..) => {}
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
    (url, seen)
}

type WsWrite =
    futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, Message>;
type WsRead =
    futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>;

/// Runs the agent's `session` behind one exec: stdin frames in, stdout frames out; after
/// `break_after` replies the connection is dropped.
async fn agent_session(write: &mut WsWrite, read: &mut WsRead, break_after: Option<usize>) {
    let (mut to_agent, agent_in) = tokio::io::duplex(1 << 20);
    let (agent_out, from_agent) = tokio::io::duplex(1 << 20);
    let agent = tokio::spawn(polygraph_agent::session::run(
        agent_in,
        agent_out,
        Duration::from_secs(60),
    ));
    let stdin = async move {
        while let Some(Ok(message)) = read.next().await {
            if let Message::Binary(frame) = message
                && frame.first() == Some(&0)
                && to_agent.write_all(&frame[1..]).await.is_err()
            {
                break;
            }
        }
    };
    let stdout = async move {
        let mut lines = tokio::io::BufReader::new(from_agent).lines();
        // The hello line, then replies.
        let mut replies = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut bytes = vec![1u8];
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            if write
                .send(Message::Binary(Bytes::from(bytes)))
                .await
                .is_err()
            {
                return;
            }
            if line.contains("\"id\"") {
                replies += 1;
                if Some(replies) == break_after {
                    // Cut: no status, no close frame.
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = stdin => {}
        () = stdout => {}
    }
    agent.abort();
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
async fn one_exec_per_batch_returns_the_agents_results() {
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
        .probe_alone(&from(), &targets(), Duration::from_millis(500).into())
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
async fn one_exec_per_batch_a_failing_agent_is_an_error_with_its_stderr() {
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
        .probe_alone(&from(), &targets(), Duration::from_millis(500).into())
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
async fn one_exec_per_batch_an_exec_that_never_answers_times_out() {
    let (url, _) = fake_server(Reply::Hang).await;
    let backend = backend(&url, Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let error = backend
        .probe_alone(&from(), &targets(), Duration::from_millis(200).into())
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
async fn one_exec_per_batch_missing_results_are_an_error() {
    let stdout = r#"{"host":"10.9.0.11","port":80,"protocol":"TCP","outcome":"connected","started_ms":0.1,"elapsed_ms":1.2,"peer":"x/b"}"#.to_string() + "\n";
    let (url, _) = fake_server(Reply::Finish(
        stdout,
        String::new(),
        serde_json::from_str(SUCCESS).expect("json"),
    ))
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let error = backend
        .probe_alone(&from(), &targets(), Duration::from_millis(500).into())
        .await
        .expect_err("short")
        .to_string();
    assert!(error.contains("1 results for 2 targets"), "{error}");
}

/// A TCP server on localhost that greets as `x/b`, then echoes, for every connection.
async fn greeting_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"polygraph x/b\n").await;
                let mut buf = [0u8; 256];
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

/// A port on localhost nothing listens on: probes to it are refused.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

fn local_targets(open: u16, closed: u16) -> Vec<Target> {
    vec![
        Target::new("127.0.0.1", open, Protocol::Tcp),
        Target::new("127.0.0.1", closed, Protocol::Tcp),
    ]
}

fn execs(seen: &Seen) -> usize {
    seen.execs.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn one_session_carries_every_batch_and_hold_of_a_pod() {
    let (open, closed) = (greeting_server().await, closed_port().await);
    let (url, seen) = fake_server_seen(Reply::Agent { break_after: None }).await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let targets = local_targets(open, closed);
    let timing = Duration::from_millis(500).into();
    let check = |results: Vec<polygraph_agent::wire::ProbeResult>| {
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].outcome.as_str(), "connected", "{results:?}");
        assert_eq!(results[0].peer.as_deref(), Some("x/b"));
        assert_eq!(results[1].outcome.as_str(), "refused", "{results:?}");
    };
    for _ in 0..3 {
        check(
            backend
                .probe(&from(), &targets, timing)
                .await
                .expect("probe"),
        );
    }
    // Batches at once share the session: replies are matched by id.
    let x_a = from();
    let together =
        futures::future::join_all((0..4).map(|_| backend.probe(&x_a, &targets, timing))).await;
    for results in together {
        check(results.expect("probe"));
    }
    let held = backend
        .hold(&from(), &targets[..1], Duration::from_millis(500))
        .await
        .expect("hold");
    assert_eq!(held.established()[0].outcome.as_str(), "connected");
    let checked = held.check(Duration::from_millis(500)).await.expect("check");
    assert_eq!(checked[0].outcome.as_str(), "connected");
    assert_eq!(
        checked[0].detail.as_deref(),
        Some("the connection still carries traffic")
    );
    assert_eq!(execs(&seen), 1, "one exec for the pod's whole run");
}

#[tokio::test]
async fn a_broken_stream_is_reopened_and_never_an_outcome() {
    let (open, closed) = (greeting_server().await, closed_port().await);
    // Every exec's stream is cut right after its second reply.
    let (url, seen) = fake_server_seen(Reply::Agent {
        break_after: Some(2),
    })
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let targets = local_targets(open, closed);
    for round in 0..6 {
        let results = backend
            .probe(&from(), &targets, Duration::from_millis(500).into())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(results[0].outcome.as_str(), "connected", "round {round}");
        assert_eq!(results[1].outcome.as_str(), "refused", "round {round}");
    }
    assert_eq!(execs(&seen), 3, "a new exec for every two batches");
    assert_eq!(backend.sessions_broken(), 2, "and the run is told so");
    // Held connections die with their stream: the check is an error, never "cut".
    let held = backend
        .hold(&from(), &targets[..1], Duration::from_millis(500))
        .await
        .expect("hold");
    let first = held.check(Duration::from_millis(500)).await.expect("check");
    assert_eq!(first[0].outcome.as_str(), "connected");
    let error = held
        .check(Duration::from_millis(500))
        .await
        .expect_err("the stream broke after the first check")
        .to_string();
    assert!(
        error.starts_with("probing from x/a: holding connections: the session holding them broke"),
        "{error}"
    );
}

#[tokio::test]
async fn a_session_that_cannot_start_says_why() {
    let status = serde_json::json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: exit status 2"});
    let (url, seen) = fake_server_seen(Reply::Exit(
        "error: unrecognized subcommand 'session'\n".into(),
        status,
    ))
    .await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let error = backend
        .probe(&from(), &targets(), Duration::from_millis(500).into())
        .await
        .expect_err("no session")
        .to_string();
    assert!(
        error.contains("the agent ended before its session started")
            && error.contains("unrecognized subcommand 'session'"),
        "{error}"
    );
    assert_eq!(execs(&seen), 1, "a start that fails is not retried");
}

#[tokio::test]
async fn a_session_that_never_starts_times_out() {
    let (url, _) = fake_server(Reply::Hang).await;
    let backend = backend(&url, Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let error = backend
        .probe(&from(), &targets(), Duration::from_millis(200).into())
        .await
        .expect_err("timeout")
        .to_string();
    assert!(
        error.contains("session did not start within 300ms")
            || error.contains("did not open within 300ms"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// An SCTP-only pod on a node without SCTP, through the real agent's session on the fake API
/// server: the answer is `unsupported`, never a drop. (Its own agent stays up serving nothing:
/// `serve`'s test in the agent, and the local cluster's.) Where the kernel has SCTP, the closed
/// port refuses instead; either way, never `timeout`.
#[tokio::test]
async fn an_sctp_only_destination_is_unsupported_through_the_session_never_blocked() {
    let (url, _) = fake_server(Reply::Agent { break_after: None }).await;
    let backend = backend(&url, Duration::from_secs(5)).await;
    let targets = [Target::new("127.0.0.1", 40_997, Protocol::Sctp)];
    let results = backend
        .probe(&from(), &targets, Duration::from_millis(500).into())
        .await
        .expect("probe");
    // Checked after the probe: opening an SCTP socket loads the module where the kernel has one.
    let kernel_has_sctp = std::fs::metadata("/proc/net/sctp").is_ok();
    let expected = if kernel_has_sctp {
        "refused"
    } else {
        "unsupported"
    };
    assert_eq!(results[0].outcome.as_str(), expected, "{results:?}");
}
