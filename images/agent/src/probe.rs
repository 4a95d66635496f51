//! `probe`: run a batch of targets concurrently, each under the same timeout, and report how each
//! ended. Blocked targets wait out their timeout in parallel, so a batch takes about one timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::Protocol as SockProtocol;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::resolve::Names;
use crate::sockets::{IPPROTO_SCTP, is_protocol_unavailable, stream_socket};
use crate::wire::{
    Outcome, ProbeRequest, ProbeResult, Protocol, Target, parse_greeting, udp_source_port,
};

/// How often a UDP probe re-sends its datagram while waiting: one lost datagram must not read as
/// "blocked".
pub(crate) const UDP_RESEND: Duration = Duration::from_millis(200);
/// Greetings are one short line.
pub(crate) const GREETING_MAX: usize = 256;

pub(crate) struct Finding {
    pub(crate) outcome: Outcome,
    pub(crate) peer: Option<String>,
    pub(crate) detail: Option<String>,
}

impl Finding {
    /// The result line for `target`, attempted at `started` within a batch begun at `batch`.
    pub(crate) fn result(self, target: &Target, started: Instant, batch: Instant) -> ProbeResult {
        ProbeResult {
            host: target.host.clone(),
            port: target.port,
            protocol: target.protocol,
            outcome: self.outcome,
            started_ms: millis(started.duration_since(batch)),
            elapsed_ms: millis(started.elapsed()),
            peer: self.peer,
            detail: self.detail,
        }
    }

    pub(crate) fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Finding {
            outcome,
            peer: None,
            detail: Some(detail.into()),
        }
    }
}

/// Probes every target; results come back in request order.
pub async fn run(request: &ProbeRequest) -> Vec<ProbeResult> {
    let batch_start = Instant::now();
    let timeout = Duration::from_millis(request.timeout_ms.max(1));
    // Names query from the ports after the UDP probes' own (see `resolve`).
    let udp_targets = request
        .targets
        .iter()
        .filter(|t| t.protocol == Protocol::Udp)
        .count();
    let names = std::sync::Arc::new(Names::for_targets(
        &request.targets,
        request.nameserver,
        timeout,
        |k| {
            let nth = u32::try_from(udp_targets + k).ok()?;
            Some(udp_source_port(request.udp_source_base?, nth))
        },
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let mut udp_count = 0;
    for (index, target) in request.targets.iter().cloned().enumerate() {
        let source_port = match (target.protocol, request.udp_source_base) {
            (Protocol::Udp, Some(base)) => {
                udp_count += 1;
                Some(udp_source_port(base, udp_count - 1))
            }
            _ => None,
        };
        let names = names.clone();
        tasks.spawn(async move {
            (
                index,
                probe_one(&names, target, timeout, batch_start, source_port).await,
            )
        });
    }
    let mut results = Vec::with_capacity(request.targets.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(pair) = joined {
            results.push(pair);
        }
    }
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

async fn probe_one(
    names: &Names,
    target: Target,
    timeout: Duration,
    batch_start: Instant,
    source_port: Option<u16>,
) -> ProbeResult {
    let started = Instant::now();
    let finding = match names.resolve(&target).await {
        Err(finding) => finding,
        Ok(addr) => match target.protocol {
            Protocol::Tcp => tcp(addr, timeout).await,
            Protocol::Udp => udp(addr, timeout, source_port).await,
            Protocol::Sctp => sctp(addr, timeout).await,
        },
    };
    finding.result(&target, started, batch_start)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Maps a socket error to an outcome: what the network said, or a failure of the probe itself.
pub(crate) fn classify(error: &io::Error) -> Finding {
    match (error.kind(), error.raw_os_error()) {
        (io::ErrorKind::ConnectionRefused, _) => {
            Finding::new(Outcome::Refused, "connection refused")
        }
        (_, Some(113)) => Finding::new(Outcome::Refused, "host unreachable (ICMP)"),
        (_, Some(101)) => Finding::new(Outcome::Refused, "network unreachable (ICMP or no route)"),
        // A netfilter drop on the sender's own output path surfaces as EPERM.
        (_, Some(1)) | (_, Some(13)) => {
            Finding::new(Outcome::Refused, format!("rejected locally: {error}"))
        }
        (io::ErrorKind::TimedOut, _) => Finding::new(Outcome::Timeout, "timed out"),
        _ if is_protocol_unavailable(error) => {
            Finding::new(Outcome::Unsupported, error.to_string())
        }
        _ => Finding::new(Outcome::Error, error.to_string()),
    }
}

pub(crate) fn connected(greeting: Option<String>) -> Finding {
    let detail = greeting
        .is_none()
        .then(|| "connected, but the peer sent no polygraph greeting".to_string());
    Finding {
        outcome: Outcome::Connected,
        peer: greeting,
        detail,
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Finding {
    let start = Instant::now();
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Finding::new(Outcome::Timeout, "no answer to SYN"),
        Ok(Err(e)) => return classify(&e),
        Ok(Ok(stream)) => stream,
    };
    let remaining = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(50));
    let mut buf = Vec::with_capacity(GREETING_MAX);
    let read = tokio::time::timeout(remaining, async {
        let mut chunk = [0u8; GREETING_MAX];
        while buf.len() < GREETING_MAX && !buf.contains(&b'\n') {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let _ = read;
    connected(parse_greeting(&buf))
}

/// A UDP socket connected to `addr`, bound to `source_port` when given and free (otherwise to one
/// the kernel picks).
pub(crate) async fn udp_socket(
    addr: SocketAddr,
    source_port: Option<u16>,
) -> Result<UdpSocket, Finding> {
    let local = |port: u16| -> SocketAddr {
        if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, port).into()
        }
    };
    let bound = match source_port {
        Some(port) => UdpSocket::bind(local(port)).await.ok(),
        None => None,
    };
    let socket = match bound {
        Some(s) => s,
        None => UdpSocket::bind(local(0)).await.map_err(|e| classify(&e))?,
    };
    socket.connect(addr).await.map_err(|e| classify(&e))?;
    Ok(socket)
}

/// Sends `payload` (again every `UDP_RESEND`) until a reply arrives or `timeout` passes.
pub(crate) async fn udp_exchange(socket: &UdpSocket, payload: &[u8], timeout: Duration) -> Finding {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; GREETING_MAX];
    let mut resend = tokio::time::interval(UDP_RESEND);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Finding::new(Outcome::Timeout, "no reply to datagrams");
            }
            _ = resend.tick() => {
                if let Err(e) = socket.send(payload).await {
                    return classify(&e);
                }
            }
            received = socket.recv(&mut buf) => {
                return match received {
                    // An ICMP port unreachable arrives as ECONNREFUSED on a connected socket.
                    Err(e) => classify(&e),
                    Ok(n) => connected(parse_greeting(&buf[..n])),
                };
            }
        }
    }
}

async fn udp(addr: SocketAddr, timeout: Duration, source_port: Option<u16>) -> Finding {
    match udp_socket(addr, source_port).await {
        Ok(socket) => udp_exchange(&socket, b"polygraph probe\n", timeout).await,
        Err(finding) => finding,
    }
}

async fn sctp(addr: SocketAddr, timeout: Duration) -> Finding {
    let attempt = tokio::task::spawn_blocking(move || -> Finding {
        let socket = match stream_socket(&addr, SockProtocol::from(IPPROTO_SCTP)) {
            Ok(s) => s,
            Err(e) if is_protocol_unavailable(&e) => {
                return Finding::new(Outcome::Unsupported, "SCTP is not available in this kernel");
            }
            Err(e) => return Finding::new(Outcome::Error, e.to_string()),
        };
        let start = Instant::now();
        if let Err(e) = socket.connect_timeout(&addr.into(), timeout) {
            return match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    Finding::new(Outcome::Timeout, "no answer to INIT")
                }
                _ => classify(&e),
            };
        }
        let remaining = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(50));
        let _ = socket.set_read_timeout(Some(remaining));
        let mut stream: std::net::TcpStream = socket.into();
        let mut buf = [0u8; GREETING_MAX];
        let n = io::Read::read(&mut stream, &mut buf).unwrap_or(0);
        connected(parse_greeting(&buf[..n]))
    });
    attempt
        .await
        .unwrap_or_else(|e| Finding::new(Outcome::Error, format!("SCTP probe failed: {e}")))
}
