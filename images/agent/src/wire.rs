//! What the agent reads and writes: the contract between polygraph and every probe pod.
//! JSON, one object per line on stdout, so that it travels through `kubectl exec` as well as pipes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The Kubernetes API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API's exact spelling, as the API server does (`tcp` is rejected there).
    pub fn from_api(value: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == value)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lenient parsing for command lines: `tcp`, `Tcp` and `TCP` all work.
impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::from_api(&s.to_ascii_uppercase())
            .ok_or_else(|| format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"))
    }
}

/// A (port, protocol) to listen on, written `80/TCP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listen {
    pub port: u16,
    pub protocol: Protocol,
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, protocol) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected PORT/PROTOCOL such as 80/TCP"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: port must be 1-65535"))?;
        let protocol: Protocol = protocol.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Listen { port, protocol })
    }
}

/// The first line `serve` prints, once every listener is bound (or known to be impossible).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub identity: String,
    pub listening: Vec<Listen>,
    /// Listeners that could not be opened because the kernel lacks the protocol.
    pub unsupported: Vec<Listen>,
}

/// What `probe` reads on stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub timeout_ms: u64,
    pub targets: Vec<Target>,
    /// Where this batch's UDP source ports start in the agent's own range (see
    /// `udp_source_port`); absent, the kernel picks ephemeral ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_source_base: Option<u32>,
    /// The DNS server to resolve names with (the local cluster's, at its Service address);
    /// absent, the agent uses the pod's own resolv.conf, as any workload in it would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<std::net::SocketAddr>,
    /// How long a silent target is waited for before a second, independent attempt confirms the
    /// silence (a new SYN from a new port; the datagram again): a target silent to both within
    /// this twice over is `timeout`. Derived by the runner from the answers it has seen, so a drop
    /// costs two round trips' worth of margin, not the whole timeout. Absent, or not below the
    /// timeout: one attempt, waited for the whole timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// With a deadline: how many independent attempts a silent target gets in all (absent: 2).
    /// The first goes alone; once it has been silent `deadline_ms`, the rest go together and are
    /// waited for as long again, so more attempts cost no more time. The runner raises it when it
    /// sees answers that needed more than one attempt (a lossy network): each lost attempt makes
    /// another one's loss likelier to be what silence means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// The most attempts a request may ask for: each is a socket (TCP) for the length of a deadline.
pub const MAX_ATTEMPTS: u32 = 16;

/// UDP probes bind source ports from this range, below Linux's ephemeral range (32768 and up), so
/// they never collide with ports the kernel hands out.
pub const UDP_SOURCE_FIRST: u16 = 10000;
pub const UDP_SOURCE_SPAN: u32 = 20000;

/// The source port of the `nth` UDP target of a batch starting at `base`. A runner that advances
/// `base` by each batch's UDP count never reuses a 5-tuple until the range wraps, long after
/// conntrack has forgotten it: a stale conntrack entry (which a reused tuple would hit, and which
/// lets packets through as "established" whatever the policy) can't make a blocked cell look open.
pub fn udp_source_port(base: u32, nth: u32) -> u16 {
    let offset = base.wrapping_add(nth) % UDP_SOURCE_SPAN;
    UDP_SOURCE_FIRST + u16::try_from(offset).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// An IP address or a name to resolve.
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// For a name: the family to look up (an A or an AAAA record), so each family's path is
    /// probed on its own; absent, whatever the resolver returns first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<AddressFamily>,
}

impl Target {
    /// A target at an address (or a name resolved in any family).
    pub fn new(host: impl Into<String>, port: u16, protocol: Protocol) -> Target {
        Target {
            host: host.into(),
            port,
            protocol,
            family: None,
        }
    }
}

/// An IP family, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressFamily {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

/// What the local cluster's DNS server answers: every name with its addresses. Sent as one JSON
/// line on the server's stdin each time the cluster's Services change; each line replaces the
/// whole set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsRecords {
    pub records: Vec<DnsRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Fully qualified, e.g. `b.x.svc.cluster.local.`
    pub name: String,
    pub addresses: Vec<std::net::IpAddr>,
}

/// How one probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The peer answered (for UDP: the echo came back).
    Connected,
    /// Actively rejected: TCP RST, ICMP unreachable, or a local firewall's EPERM.
    Refused,
    /// No answer within the timeout: the signature of a dropping firewall.
    Timeout,
    /// An ICMP "administratively prohibited" answer (a firewall that says no rather than staying
    /// silent, like Cilium's `policyDenyResponse: icmp`): blocked, but not silently.
    Filtered,
    /// The protocol can't be used here (e.g. no SCTP in the kernel). Never "blocked".
    Unsupported,
    /// The target was a name and it did not resolve (no answer from DNS, or no such record):
    /// under policies, usually DNS egress blocked. No connection was attempted.
    #[serde(rename = "dns-failed")]
    DnsFailed,
    /// The probe itself could not run (bad target, no resolver configuration, ...).
    Error,
}

impl Outcome {
    /// Whether the target (or a firewall on its behalf) answered: the answers deadlines and the
    /// pacer learn round trips from.
    pub fn is_answer(self) -> bool {
        matches!(
            self,
            Outcome::Connected | Outcome::Refused | Outcome::Filtered
        )
    }

    /// One of the three kinds of "no": refused, filtered, silence.
    pub fn is_blocked(self) -> bool {
        matches!(
            self,
            Outcome::Refused | Outcome::Filtered | Outcome::Timeout
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Filtered => "filtered",
            Outcome::Unsupported => "unsupported",
            Outcome::DnsFailed => "dns-failed",
            Outcome::Error => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `probe` output per target, in the order of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub outcome: Outcome,
    /// When the attempt started, in ms since the batch started.
    pub started_ms: f64,
    /// How long the attempt took, in ms.
    pub elapsed_ms: f64,
    /// The identity the server answered with, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many attempts the verdict took, when more than one: 2 for a silent target whose
    /// silence a second attempt confirmed (or that answered only the second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// For an answer (connected or refused): how long the attempt that got it took, in ms. The
    /// round trip the runner learns deadlines from: `elapsed_ms` also counts the attempts that
    /// went unanswered before it. For UDP, from the last datagram sent before the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_ms: Option<f64>,
}

/// The version of the `session` protocol, in the agent's first line (`SessionHello`): a runner
/// that finds another one knows the agent image does not match it.
pub const SESSION_PROTOCOL: u32 = 1;

/// The first line a `session` agent writes: it is ready for requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHello {
    pub session: u32,
}

/// One line to a `session` agent: `{"id": 7, "probe": {…}}`. Requests run concurrently; each gets
/// one `SessionReply` line with its `id`, in whatever order they finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub id: u64,
    #[serde(flatten)]
    pub op: SessionOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOp {
    /// A probe batch, exactly as `probe` reads it; the reply has one result per target.
    Probe(ProbeRequest),
    /// Open these connections and keep them as hold `id` (the request's own id); the reply says
    /// how each opened, as `hold` does.
    Hold(ProbeRequest),
    /// Re-test every connection of a hold: one result per target.
    Check { hold: u64 },
    /// Close a hold's connections; the reply has no results.
    Release { hold: u64 },
}

/// The answer to one `SessionRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReply {
    pub id: u64,
    #[serde(default)]
    pub results: Vec<ProbeResult>,
    /// The request could not be carried out (unreadable, or a check of an unknown hold); no
    /// results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The first bytes a server sends (TCP, SCTP) or echoes (UDP): `polygraph <identity>\n`.
pub const GREETING_PREFIX: &str = "polygraph ";

pub fn greeting(identity: &str) -> String {
    format!("{GREETING_PREFIX}{identity}\n")
}

/// The identity in a greeting, if it is one.
pub fn parse_greeting(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let identity = text.strip_prefix(GREETING_PREFIX)?.trim_end();
    (!identity.is_empty()).then(|| identity.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_parses() {
        assert_eq!(
            "80/tcp".parse::<Listen>(),
            Ok(Listen {
                port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert!("0/TCP".parse::<Listen>().is_err());
        assert!("80/ICMP".parse::<Listen>().is_err());
        assert!("80".parse::<Listen>().is_err());
    }

    #[test]
    fn udp_source_ports_stay_in_range_and_do_not_repeat_until_it_wraps() {
        let ports: std::collections::BTreeSet<u16> = (0..UDP_SOURCE_SPAN)
            .map(|n| udp_source_port(7, n))
            .collect();
        assert_eq!(ports.len(), UDP_SOURCE_SPAN as usize);
        assert_eq!(*ports.first().unwrap(), UDP_SOURCE_FIRST);
        assert!(
            *ports.last().unwrap() < 32768,
            "below the kernel's ephemeral range"
        );
        assert_eq!(udp_source_port(0, 0), udp_source_port(UDP_SOURCE_SPAN, 0));
        assert_eq!(udp_source_port(u32::MAX, 1), udp_source_port(0, 0));
    }

    #[test]
    fn greetings_round_trip() {
        assert_eq!(
            parse_greeting(greeting("x/a").as_bytes()),
            Some("x/a".into())
        );
        assert_eq!(parse_greeting(b"HTTP/1.1 200 OK"), None);
        assert_eq!(parse_greeting(b"polygraph \n"), None);
    }

    #[test]
    fn outcome_words() {
        let json = serde_json::to_string(&Outcome::Unsupported).unwrap();
        assert_eq!(json, "\"unsupported\"");
        for outcome in [Outcome::DnsFailed, Outcome::Timeout, Outcome::Connected] {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{outcome}\""));
        }
    }
}
