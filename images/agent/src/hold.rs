//! Held flows: open long-lived TCP connections and UDP flows, keep them, and on each check test
//! every one again: does it still carry traffic? This is how polygraph sees whether a deny cuts
//! connections that were established before it (the spec leaves that open; conntrack based
//! dataplanes usually let them live). A `session` agent keeps holds by id (`SessionOp::Hold`,
//! `Check`, `Release`).
//!
//! Opening gives one result per target (`connected` = established), in request order; each check
//! one result per target again: `connected` (the flow still answers), `timeout` (cut by a drop),
//! `refused` (reset or ICMP), `error` (never established).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The flows of one hold; dropping it closes them.
#[derive(Default)]
pub struct HeldFlows {
    flows: Vec<Flow>,
    targets: Vec<Target>,
    timeout: Duration,
}

impl HeldFlows {
    /// Opens a flow to every target of `request`, all at once; the results say how each opened.
    pub async fn open(request: &ProbeRequest) -> (HeldFlows, Vec<ProbeResult>) {
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
        let (flows, results) = opened.into_iter().unzip();
        let held = HeldFlows {
            flows,
            targets: request.targets.clone(),
            timeout,
        };
        (held, results)
    }

    /// Tests every flow again, all at once.
    pub async fn check(&mut self) -> Vec<ProbeResult> {
        let started = Instant::now();
        let timeout = self.timeout;
        futures_util::future::join_all(
            self.flows
                .iter_mut()
                .zip(&self.targets)
                .map(|(flow, target)| check(flow, target, timeout, started)),
        )
        .await
    }
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
        let (mut held, opened) = HeldFlows::open(&request).await;
        assert_eq!(opened[0].outcome, Outcome::Connected);
        assert_eq!(opened[0].peer.as_deref(), Some("x/b"));
        assert_eq!(opened[1].outcome, Outcome::Unsupported, "SCTP is not held");
        assert_eq!(held.check().await[0].outcome, Outcome::Connected);
        mute.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            held.check().await[0].outcome,
            Outcome::Timeout,
            "no echo: cut"
        );
        let again = held.check().await;
        assert_eq!(again[0].outcome, Outcome::Timeout, "cut stays cut");
        assert_eq!(again[1].outcome, Outcome::Error, "never established");
    }
}
