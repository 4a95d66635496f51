//! `probe`: run a batch of targets concurrently, each under the same timeout, and report how each
//! ended. Blocked targets wait out their timeout in parallel, so a batch takes about one timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::Protocol as SockProtocol;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, UdpSocket};

use crate::icmp;
use crate::resolve::{LookupWaits, Names};
use crate::sockets::{IPPROTO_SCTP, is_protocol_unavailable, stream_socket};
use crate::wire::{
    MAX_ATTEMPTS, Outcome, ProbeRequest, ProbeResult, Protocol, Target, parse_greeting,
    udp_source_port,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::sync::Arc;
use std::sync::OnceLock;

/// How often a UDP probe re-sends its datagram while waiting: one lost datagram must not read as
/// "blocked".
pub(crate) const UDP_RESEND: Duration = Duration::from_millis(200);
/// Greetings are one short line.
pub(crate) const GREETING_MAX: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub(crate) outcome: Outcome,
    pub(crate) peer: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) attempts: u32,
    /// For an answer: how long the attempt that got it took.
    pub(crate) answer: Option<Duration>,
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
            attempts: (self.attempts > 1).then_some(self.attempts),
            answer_ms: self.answer.filter(|_| self.outcome.is_answer()).map(millis),
        }
    }

    pub(crate) fn new(outcome: Outcome, detail: impl Into<String>) -> Self {
        Finding {
            outcome,
            peer: None,
            detail: Some(detail.into()),
            attempts: 1,
            answer: None,
        }
    }

    fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    fn answered_in(mut self, answer: Duration) -> Self {
        self.answer = Some(answer);
        self
    }

    /// The finding of a lookup of `attempts` queries: a confirmation only where a deadline set
    /// them (`confirming`); queries sharing the whole timeout are one attempt, as UDP re-sends
    /// are.
    pub(crate) fn with_attempts(self, attempts: u32, confirming: bool) -> Self {
        self.attempts(if confirming { attempts } else { 1 })
    }
}

/// How long probes wait: `silent` is the wait before a silent target gets its confirming
/// attempts (`ProbeRequest::deadline_ms`), when it is below `timeout`, the upper bound of
/// everything; `attempts` how many it gets in all, the first included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    pub(crate) timeout: Duration,
    pub(crate) silent: Option<Duration>,
    pub(crate) attempts: u32,
}

impl Waits {
    pub(crate) fn of(request: &ProbeRequest) -> Waits {
        let timeout = Duration::from_millis(request.timeout_ms.max(1));
        let silent = request
            .deadline_ms
            .map(|ms| Duration::from_millis(ms.max(1)))
            .filter(|d| *d * 2 < timeout);
        let attempts = request.attempts.unwrap_or(2).clamp(2, MAX_ATTEMPTS);
        Waits {
            timeout,
            silent,
            attempts,
        }
    }

    /// How long a silent target is waited for in all.
    fn total(self) -> Duration {
        self.silent.map_or(self.timeout, |d| d * 2)
    }
}

/// The UDP source ports a request's batch takes from `udp_source_base` on: one per UDP probe,
/// then per distinct name one for each of its lookup's concurrent attempts. The runner reserves
/// exactly these, so no two batches of a pod share a port (see `wire::udp_source_port`).
pub fn source_ports_needed(request: &ProbeRequest) -> u32 {
    let waits = Waits::of(request);
    let udp = request
        .targets
        .iter()
        .filter(|t| t.protocol == Protocol::Udp)
        .count();
    let names = crate::resolve::distinct_names(&request.targets).len();
    let per_name = LookupWaits::new(waits.timeout, waits.silent, waits.attempts).ports_per_name();
    u32::try_from(udp + names * per_name as usize).unwrap_or(u32::MAX)
}

/// Probes every target; results come back in request order.
pub async fn run(request: &ProbeRequest) -> Vec<ProbeResult> {
    let batch_start = Instant::now();
    let waits = Waits::of(request);
    let timeout = waits.timeout;
    // Names query from the ports after the UDP probes' own (see `resolve`).
    let udp_targets = request
        .targets
        .iter()
        .filter(|t| t.protocol == Protocol::Udp)
        .count();
    let names = std::sync::Arc::new(Names::for_targets(
        &request.targets,
        request.nameserver,
        LookupWaits::new(timeout, waits.silent, waits.attempts),
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
                probe_one(&names, target, waits, batch_start, source_port).await,
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
    waits: Waits,
    batch_start: Instant,
    source_port: Option<u16>,
) -> ProbeResult {
    let started = Instant::now();
    let finding = match names.resolve(&target).await {
        Err(finding) => finding,
        Ok(addr) => match target.protocol {
            Protocol::Tcp => tcp(addr, waits).await,
            Protocol::Udp => udp(addr, waits, source_port).await,
            Protocol::Sctp => sctp(addr, waits.total()).await,
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
        attempts: 1,
        answer: None,
    }
}

/// How one TCP attempt ended: its finding, and for an answer how long the handshake (or the
/// refusal) took, which is the round trip deadlines are learnt from (a greeting a lossy network
/// makes TCP retransmit must not stretch them).
struct Attempt {
    finding: Finding,
    handshake: Option<Duration>,
}

/// One TCP attempt: a SYN from a new port, then the server's greeting. `shaken` is set once the
/// handshake is done: the target answered, whatever happens to the greeting.
async fn tcp_attempt(addr: SocketAddr, shaken: Arc<OnceLock<Duration>>) -> Attempt {
    let started = Instant::now();
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let outcome = match socket {
        Err(e) => Err((e, None)),
        Ok(socket) => {
            let watch = icmp::watch(&socket, addr.is_ipv6());
            socket.connect(addr).await.map_err(|e| (e, watch))
        }
    };
    let mut stream = match outcome {
        Err((e, watch)) => {
            let finding = match watch.as_ref().and_then(icmp::prohibited) {
                Some(detail) => Finding::new(Outcome::Filtered, detail),
                None => classify(&e),
            };
            let handshake = (finding.outcome != Outcome::Error).then(|| started.elapsed());
            return Attempt { finding, handshake };
        }
        Ok(stream) => stream,
    };
    let handshake = started.elapsed();
    let _ = shaken.set(handshake);
    let mut buf = Vec::with_capacity(GREETING_MAX);
    let mut chunk = [0u8; GREETING_MAX];
    while buf.len() < GREETING_MAX && !buf.contains(&b'\n') {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Attempt {
        finding: connected(parse_greeting(&buf)),
        handshake: Some(handshake),
    }
}

/// A TCP probe of `addr`: with `waits.silent`, once the first attempt has been silent that long,
/// the other `waits.attempts - 1` go together, each a SYN from a new port, racing the first, and
/// all are given as long again; without, one attempt and the whole timeout. Silence to every
/// attempt is what makes a drop a drop: one lost packet (or, on a lossy network, as many as the
/// runner allows for) cannot turn an allowed cell into a blocked one. An attempt is the whole
/// exchange, handshake and greeting: once any handshake is done the target has answered, and its
/// greeting (the proof of who answered) is waited for up to the timeout, through TCP's own
/// retransmissions. An attempt that fails locally (no socket, no port) is no answer.
async fn tcp(addr: SocketAddr, waits: Waits) -> Finding {
    let start = tokio::time::Instant::now();
    let shaken = Arc::new(OnceLock::new());
    let mut running = FuturesUnordered::new();
    running.push(tcp_attempt(addr, shaken.clone()));
    let mut launched = 1;
    let wave_at = waits.silent.map(|silent| start + silent);
    let mut give_up = start + waits.total();
    let mut local_failure: Option<Finding> = None;
    loop {
        tokio::select! {
            Some(attempt) = running.next() => {
                if attempt.finding.outcome == Outcome::Error {
                    local_failure = Some(attempt.finding);
                    if running.is_empty() && (wave_at.is_none() || launched > 1) {
                        break;
                    }
                    continue;
                }
                let finding = attempt.finding.attempts(launched);
                return match attempt.handshake {
                    Some(handshake) => finding.answered_in(handshake),
                    None => finding,
                };
            }
            _ = tokio::time::sleep_until(wave_at.unwrap_or(give_up)), if wave_at.is_some() && launched == 1 => {
                for _ in 1..waits.attempts {
                    running.push(tcp_attempt(addr, shaken.clone()));
                }
                launched = waits.attempts;
            }
            _ = tokio::time::sleep_until(give_up) => {
                // Answered, but the greeting is late: wait for it up to the timeout.
                let timeout = start + waits.timeout;
                if shaken.get().is_some() && give_up < timeout {
                    give_up = timeout;
                    continue;
                }
                break;
            }
        }
    }
    if let Some(handshake) = shaken.get() {
        return Finding::new(
            Outcome::Connected,
            "connected, but the peer sent no polygraph greeting within the timeout",
        )
        .attempts(launched)
        .answered_in(*handshake);
    }
    if let Some(failure) = local_failure.filter(|_| running.is_empty()) {
        return failure.attempts(launched);
    }
    let detail = match (launched, waits.silent) {
        (1, _) | (_, None) => "no answer to SYN".to_string(),
        (n, Some(silent)) => format!(
            "no answer to {n} SYNs from different ports within {} ms",
            (silent * 2).as_millis()
        ),
    };
    Finding::new(Outcome::Timeout, detail).attempts(launched)
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
    icmp::queue_errors(&socket, addr.is_ipv6());
    Ok(socket)
}

/// Sends `payload` (again every `UDP_RESEND`) until a reply arrives or `timeout` passes.
pub(crate) async fn udp_exchange(socket: &UdpSocket, payload: &[u8], timeout: Duration) -> Finding {
    // Re-sending is how UDP survives a lost datagram, not a confirmation: one attempt.
    let resend = std::iter::repeat_n(1, usize::MAX);
    udp_exchange_with(socket, payload, timeout, UDP_RESEND, resend)
        .await
        .attempts(1)
}

/// Sends `payload`, then again at every `every` as many times as `waves` says, until a reply
/// arrives or `timeout` passes; the finding counts the datagrams sent and, for a reply, the time
/// since the last of them went before it.
async fn udp_exchange_with(
    socket: &UdpSocket,
    payload: &[u8],
    timeout: Duration,
    every: Duration,
    mut waves: impl Iterator<Item = u32>,
) -> Finding {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; GREETING_MAX];
    let mut resend = tokio::time::interval(every);
    let mut sent = 0;
    let mut last_sent = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Finding::new(Outcome::Timeout, format!("no reply to {sent} datagrams"))
                    .attempts(sent);
            }
            _ = resend.tick() => {
                let Some(wave) = waves.next() else {
                    // Every attempt is out: what is left is waiting.
                    resend.reset_after(timeout);
                    continue;
                };
                for _ in 0..wave {
                    sent += 1;
                    if let Err(e) = socket.send(payload).await {
                        return classify(&e);
                    }
                }
                last_sent = Instant::now();
            }
            received = socket.recv(&mut buf) => {
                let finding = match received {
                    // An ICMP port unreachable arrives as ECONNREFUSED on a connected socket;
                    // an administratively-prohibited one is told apart by its queued error.
                    Err(e) => match icmp::prohibited(socket) {
                        Some(detail) => Finding::new(Outcome::Filtered, detail),
                        None => classify(&e),
                    },
                    Ok(n) => connected(parse_greeting(&buf[..n])),
                };
                return finding.attempts(sent).answered_in(last_sent.elapsed());
            }
        }
    }
}

/// A UDP exchange: with `waits.silent`, once the datagram has gone unanswered that long the
/// other `waits.attempts - 1` go together (the confirming attempts, on the same flow), and all
/// are given as long again.
async fn udp(addr: SocketAddr, waits: Waits, source_port: Option<u16>) -> Finding {
    let socket = match udp_socket(addr, source_port).await {
        Ok(socket) => socket,
        Err(finding) => return finding,
    };
    let payload = b"polygraph probe\n";
    match waits.silent {
        Some(silent) => {
            let waves = [1, waits.attempts - 1].into_iter();
            udp_exchange_with(&socket, payload, silent * 2, silent, waves).await
        }
        None => udp_exchange(&socket, payload, waits.timeout).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::greeting;
    use tokio::io::AsyncWriteExt;

    fn request(targets: Vec<Target>, deadline_ms: Option<u64>) -> ProbeRequest {
        ProbeRequest {
            timeout_ms: 5000,
            targets,
            udp_source_base: None,
            nameserver: None,
            deadline_ms,
            attempts: None,
        }
    }

    #[tokio::test]
    async fn a_silent_target_is_confirmed_by_a_second_attempt_well_before_the_timeout() {
        // Datagrams to a socket that never reads: no reply, no ICMP, as under a drop.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(greeting("x/a").as_bytes()).await;
            }
        });
        let targets = vec![
            Target::new("127.0.0.1", silent_port, Protocol::Udp),
            Target::new("127.0.0.1", open_port, Protocol::Tcp),
        ];
        let started = Instant::now();
        let results = run(&request(targets.clone(), Some(100))).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(results[0].outcome, Outcome::Timeout);
        assert_eq!(results[0].attempts, Some(2), "silence confirmed");
        assert!(results[0].elapsed_ms >= 190.0, "{}", results[0].elapsed_ms);
        assert_eq!(results[1].outcome, Outcome::Connected);
        assert_eq!(results[1].peer.as_deref(), Some("x/a"));
        assert_eq!(results[1].attempts, None, "answered at once");

        // Without a deadline: one attempt, the whole timeout (here cut short to keep the test
        // quick).
        let mut fixed = request(targets[..1].to_vec(), None);
        fixed.timeout_ms = 400;
        let results = run(&fixed).await;
        assert_eq!(results[0].outcome, Outcome::Timeout);
        assert_eq!(results[0].attempts, None);
        assert!(results[0].elapsed_ms >= 390.0, "{}", results[0].elapsed_ms);
        drop(silent);
    }

    /// A UDP server that loses the first `lost` datagrams of every flow, then answers each.
    fn lossy_udp_server(lost: usize) -> u16 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut seen = std::collections::HashMap::<SocketAddr, usize>::new();
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let count = seen.entry(from).or_default();
                *count += 1;
                if *count > lost {
                    let _ = socket.send_to(greeting("x/lossy").as_bytes(), from);
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn on_a_lossy_network_more_attempts_go_together_and_the_answer_keeps_its_own_time() {
        let port = lossy_udp_server(3);
        let target = vec![Target::new("127.0.0.1", port, Protocol::Udp)];
        // Two attempts (the default): both lost, so silence, in two deadlines.
        let results = run(&request(target.clone(), Some(100))).await;
        assert_eq!(results[0].outcome, Outcome::Timeout, "{results:?}");
        assert_eq!(results[0].attempts, Some(2));
        // Six: the first alone, the other five together after a deadline; the fourth datagram
        // is answered, still within two deadlines.
        let mut lossy = request(target, Some(100));
        lossy.attempts = Some(6);
        let started = Instant::now();
        let results = run(&lossy).await;
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(results[0].outcome, Outcome::Connected, "{results:?}");
        assert_eq!(results[0].peer.as_deref(), Some("x/lossy"));
        assert_eq!(results[0].attempts, Some(6));
        assert!(results[0].elapsed_ms >= 100.0, "{results:?}");
        // The round trip is the answering attempt's, not the wait before it.
        let answer = results[0].answer_ms.expect("an answer has its time");
        assert!(answer < 50.0, "{answer}");
        // Asking for more than the maximum gets the maximum.
        lossy.attempts = Some(1000);
        assert_eq!(Waits::of(&lossy).attempts, MAX_ATTEMPTS);
    }

    #[test]
    fn a_deadline_at_half_the_timeout_or_more_is_no_deadline() {
        let mut r = request(Vec::new(), Some(2500));
        assert_eq!(Waits::of(&r).silent, None);
        r.deadline_ms = Some(2499);
        assert_eq!(Waits::of(&r).silent, Some(Duration::from_millis(2499)));
    }
}
