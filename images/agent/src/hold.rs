//! `hold`: open long-lived TCP connections and UDP flows, keep them, and on every `check` line on
//! stdin test each one again: does it still carry traffic? This is how polygraph sees whether a
//! deny cuts connections that were established before it (the spec leaves that open; conntrack
//! based dataplanes usually let them live).
//!
//! Protocol: the first stdin line is a probe request (`timeout_ms`, `targets`); the agent prints one
//! result per target (`connected` = established), in request order. Then each `check` line gets one
//! result per target again: `connected` (the flow still answers), `timeout` (cut by a drop),
//! `refused` (reset or ICMP), `error` (never established). EOF on stdin ends the process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use crate::probe::{Finding, GREETING_MAX, classify, connected, udp_exchange, udp_socket};
use crate::resolve::{LookupWaits, Names};
use crate::wire::{Outcome, ProbeRequest, ProbeResult, Protocol, Target, parse_greeting};

const PING: &[u8] = b"polygraph ping\n";

enum Flow {
    Tcp(TcpStream),
    Udp(UdpSocket),
    /// Stopped answering at an earlier check (a TCP stream may still hold a late echo).
    Cut,
    None,
}

/// Reads lines of `input` and writes results to `output` until `input` ends.
pub async fn run<R, W>(input: R, mut output: W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: std::io::Write,
{
    let mut lines = BufReader::new(input).lines();
    let Some(first) = lines.next_line().await? else {
        return Ok(());
    };
    let request: ProbeRequest = serde_json::from_str(&first)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let timeout = Duration::from_millis(request.timeout_ms.max(1));
    let started = Instant::now();
    // Held flows keep kernel-chosen ports; so do their lookups.
    let names = Names::for_targets(
        &request.targets,
        request.nameserver,
        LookupWaits::new(timeout, None, 1),
        |_| None,
    );
    let opened = futures_util::future::join_all(
        request
            .targets
            .iter()
            .map(|target| open(&names, target, timeout, started)),
    )
    .await;
    let mut flows = Vec::with_capacity(opened.len());
    for (flow, result) in opened {
        writeln!(
            output,
            "{}",
            serde_json::to_string(&result).unwrap_or_default()
        )?;
        flows.push(flow);
    }
    output.flush()?;
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "check" {
            continue;
        }
        let started = Instant::now();
        let checked = futures_util::future::join_all(
            flows
                .iter_mut()
                .zip(&request.targets)
                .map(|(flow, target)| check(flow, target, timeout, started)),
        )
        .await;
        for result in checked {
            writeln!(
                output,
                "{}",
                serde_json::to_string(&result).unwrap_or_default()
            )?;
        }
        output.flush()?;
    }
    Ok(())
}

async fn open(
    names: &Names,
    target: &Target,
    timeout: Duration,
    batch: Instant,
) -> (Flow, ProbeResult) {
    let started = Instant::now();
    let (flow, finding) = match names.resolve(target).await {
        Err(finding) => (Flow::None, finding),
        Ok(addr) => match target.protocol {
            Protocol::Tcp => open_tcp(addr, timeout).await,
            Protocol::Udp => open_udp(addr, timeout).await,
            Protocol::Sctp => (
                Flow::None,
                Finding::new(Outcome::Unsupported, "held flows are TCP and UDP"),
            ),
        },
    };
    (flow, finding.result(target, started, batch))
}

/// Reads up to one line from `stream` within `timeout`.
async fn read_line(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, Finding> {
    let mut buf = Vec::with_capacity(GREETING_MAX);
    let read = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; GREETING_MAX];
        while buf.len() < GREETING_MAX && !buf.contains(&b'\n') {
            match stream.read(&mut chunk).await {
                Ok(0) => return Err(Finding::new(Outcome::Refused, "closed by the peer")),
                Err(e) => return Err(classify(&e)),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Err(_) => Err(Finding::new(
            Outcome::Timeout,
            "no answer on the connection",
        )),
        Ok(Err(finding)) => Err(finding),
        Ok(Ok(())) => Ok(buf),
    }
}

async fn open_tcp(addr: SocketAddr, timeout: Duration) -> (Flow, Finding) {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return (
                Flow::None,
                Finding::new(Outcome::Timeout, "no answer to SYN"),
            );
        }
        Ok(Err(e)) => return (Flow::None, classify(&e)),
        Ok(Ok(stream)) => stream,
    };
    match read_line(&mut stream, timeout).await {
        Ok(greeting) => (Flow::Tcp(stream), connected(parse_greeting(&greeting))),
        Err(finding) => (Flow::None, finding),
    }
}

async fn open_udp(addr: SocketAddr, timeout: Duration) -> (Flow, Finding) {
    // Kernel-chosen source port: the probes' assigned range stays theirs.
    let socket = match udp_socket(addr, None).await {
        Ok(socket) => socket,
        Err(finding) => return (Flow::None, finding),
    };
    let finding = udp_exchange(&socket, PING, timeout).await;
    let flow = if finding.outcome == Outcome::Connected {
        Flow::Udp(socket)
    } else {
        Flow::None
    };
    (flow, finding)
}

async fn check(flow: &mut Flow, target: &Target, timeout: Duration, batch: Instant) -> ProbeResult {
    let started = Instant::now();
    let finding = match flow {
        Flow::None => Finding::new(Outcome::Error, "not established"),
        Flow::Cut => Finding::new(Outcome::Timeout, "cut at an earlier check"),
        // The same socket, so the same 5-tuple: conntrack sees the old flow, not a new one.
        Flow::Udp(socket) => udp_exchange(socket, PING, timeout).await,
        Flow::Tcp(stream) => match stream.write_all(PING).await {
            Err(e) => classify(&e),
            Ok(()) => match read_line(stream, timeout).await {
                Ok(echo) if echo == PING => Finding {
                    outcome: Outcome::Connected,
                    peer: None,
                    detail: Some("the connection still carries traffic".into()),
                    attempts: 1,
                    answer: None,
                },
                Ok(other) => Finding::new(
                    Outcome::Error,
                    format!("unexpected answer {:?}", String::from_utf8_lossy(&other)),
                ),
                Err(finding) => finding,
            },
        },
    };
    if finding.outcome != Outcome::Connected && matches!(flow, Flow::Tcp(_) | Flow::Udp(_)) {
        *flow = Flow::Cut;
    }
    finding.result(target, started, batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A TCP server like `serve`'s: greeting, then echo. Returns its port and a switch that makes
    /// it stop echoing (a cut connection, as a drop would leave it).
    async fn echo_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let muted = mute.clone();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"polygraph x/b\n").await.unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if !muted.load(std::sync::atomic::Ordering::SeqCst) {
                    stream.write_all(&buf[..n]).await.unwrap();
                }
            }
        });
        (port, mute)
    }

    #[tokio::test]
    async fn holds_a_connection_and_reports_when_it_stops_answering() {
        let (port, mute) = echo_server().await;
        let request = ProbeRequest {
            timeout_ms: 300,
            targets: vec![
                Target::new("127.0.0.1", port, Protocol::Tcp),
                Target::new("127.0.0.1", port, Protocol::Sctp),
            ],
            udp_source_base: None,
            nameserver: None,
            deadline_ms: None,
            attempts: None,
        };
        let (mut to_agent, agent_in) = tokio::io::duplex(4096);
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let agent = tokio::spawn(run(agent_in, Sink(output.clone())));
        let lines = |n: usize| {
            let output = output.clone();
            async move {
                loop {
                    let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();
                    let results: Vec<ProbeResult> = text
                        .lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    if results.len() >= n {
                        return results;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let line = serde_json::to_string(&request).unwrap() + "\n";
        to_agent.write_all(line.as_bytes()).await.unwrap();
        let opened = lines(2).await;
        assert_eq!(opened[0].outcome, Outcome::Connected);
        assert_eq!(opened[0].peer.as_deref(), Some("x/b"));
        assert_eq!(opened[1].outcome, Outcome::Unsupported, "SCTP is not held");
        to_agent.write_all(b"check\n").await.unwrap();
        assert_eq!(lines(4).await[2].outcome, Outcome::Connected);
        mute.store(true, std::sync::atomic::Ordering::SeqCst);
        to_agent.write_all(b"check\n").await.unwrap();
        assert_eq!(lines(6).await[4].outcome, Outcome::Timeout, "no echo: cut");
        drop(to_agent);
        agent.await.unwrap().unwrap();
    }
}
