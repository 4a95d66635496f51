//! Fault injection (`--inject`) for the backends polygraph owns, the local dataplane and the
//! simulation: each fault reproduces a class of bug real CNIs have shipped, so polygraph can prove
//! it catches them (see `tests/self_validation.rs`).
//!
//! Most faults distort the compiled policies before a dataplane sees them, exactly as a CNI agent
//! that misreads the API object would (`distort`, shared by both backends); `stateless` changes how
//! replies are treated, `policy-deletion-ignored` the backend's bookkeeping, and the timed faults
//! (`delay`, `new-pod-unprotected`, `resync-gap`) when rules take effect (`lag`, shared too).

mod catalogue;
mod cleanup;
mod cluster;
mod distort;
mod history;
pub mod lag;
mod stale;

pub use catalogue::{CATALOGUE, FaultInfo};
use cleanup::EgressClobber;
pub use distort::{named_ports_anywhere, without_catch_all_blocks};
pub use history::{Enforced, History};
use stale::StaleIdentities;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// A fault without a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    IpBlockExceptIgnored,
    EndPortIgnored,
    NamedPortsUnresolved,
    UdpAsTcp,
    SctpAsTcp,
    ProtocolNotDefaulted,
    PeerSelectorsOred,
    NamespaceSelectorIgnored,
    EgressIgnored,
    IngressIgnored,
    Stateless,
    PolicyDeletionIgnored,
    PassAsAccept,
    PassAsDeny,
    BaselineIgnored,
    AdminIgnored,
    PriorityInverted,
    RuleOrderIgnored,
    DenyAsReject,
    NetworksSkipPods,
    ServiceTrafficUnfiltered,
    Ipv6Unfiltered,
    NodePortUnfiltered,
    DnsEgressBlocked,
    IpBlockMissesPods,
    IpBlockOnlyOpensNamespace,
    SctpRulesDropped,
    UdpRepliesDropped,
    DenyAsIcmpFiltered,
    NamedPortFirstPod,
    NamedPortAnyNumber,
    ExceptSpillsToPeers,
    DirectionCleanupClobbers,
    NodePortAllowAllBroken,
    ReusedIpStale,
    RecreatedPodIpv4Missing,
    Ipv6SetsFrozen,
    ServiceNamedTargetportBypass,
    NodeEgressUnfiltered,
    HostNetworkAsPod,
    ServiceHairpinExempt,
}

impl Fault {
    /// Whether the fault is a misreading of policies (`distort`), rather than of the traffic or
    /// the bookkeeping around them.
    fn distorts_policies(self) -> bool {
        !matches!(
            self,
            Fault::Stateless
                | Fault::UdpRepliesDropped
                | Fault::DenyAsIcmpFiltered
                | Fault::DirectionCleanupClobbers
                | Fault::NodePortAllowAllBroken
                | Fault::ReusedIpStale
                | Fault::RecreatedPodIpv4Missing
                | Fault::Ipv6SetsFrozen
                | Fault::ServiceNamedTargetportBypass
                | Fault::NodeEgressUnfiltered
                | Fault::ServiceHairpinExempt
                | Fault::PolicyDeletionIgnored
                | Fault::ServiceTrafficUnfiltered
                | Fault::Ipv6Unfiltered
                | Fault::NodePortUnfiltered
                | Fault::DnsEgressBlocked
        )
    }
}

/// An `--inject` value that names no fault, or misses its duration.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("--inject {0:?}: unknown fault (`polygraph run --list-faults` lists them)")]
    Unknown(String),
    #[error("--inject {0}: needs a duration: {0}=DUR")]
    NeedsDuration(String),
    #[error("--inject {spec:?}: duration")]
    Duration {
        spec: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("--inject {0:?}: takes no value")]
    TakesNoValue(String),
    #[error(
        "--inject {0:?}: loss needs a share of packets above 0% and at most 50%, e.g. loss=10%"
    )]
    Loss(String),
    #[error(
        "--inject {0:?}: needs a rate of new connections per second from 1 to 1000000, e.g. queue-overflow=2000/s"
    )]
    Rate(String),
}

/// `queue-overflow=N/s` and `queue-overflow-closed=N/s`: an enforcer's queue that gives way beyond
/// a rate of new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOverflow {
    /// New connections per second the enforcer judges; beyond it (after a tenth of a second's
    /// burst) it gives way.
    pub rate: u32,
    /// Gives way by accepting (fail-open) rather than dropping.
    pub fail_open: bool,
}

impl QueueOverflow {
    /// The burst it absorbs, in connections: a tenth of a second's worth, at least 5.
    pub fn burst(self) -> u32 {
        (self.rate / 10).max(5)
    }
}

/// The faults of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub set: BTreeSet<Fault>,
    /// Changes reach the dataplane this late.
    pub delay: Duration,
    /// New pods stay without their own rules this long.
    pub new_pod_unprotected: Duration,
    /// Every this long, rules vanish for half of it.
    pub resync_gap: Duration,
    /// Packets dropped on every link, each way, in thousandths (0: none). Not a policy bug: the
    /// condition under which verdicts must stay the same.
    pub loss_permille: u16,
    /// An enforcer's queue that fails open or closed beyond a rate of new connections.
    pub queue_overflow: Option<QueueOverflow>,
}

impl Faults {
    /// Parses `--inject` values: `NAME` or `NAME=DUR`, any number of them.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Faults, FaultError> {
        let mut faults = Faults::default();
        for spec in specs {
            let spec = spec.as_ref().trim();
            let (name, value) = match spec.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (spec, None),
            };
            let duration = |value: Option<&str>| -> Result<Duration, FaultError> {
                let value = value.ok_or_else(|| FaultError::NeedsDuration(name.to_string()))?;
                humantime::parse_duration(value).map_err(|source| FaultError::Duration {
                    spec: spec.to_string(),
                    source,
                })
            };
            match name {
                "delay" => faults.delay = duration(value)?,
                "new-pod-unprotected" => faults.new_pod_unprotected = duration(value)?,
                "resync-gap" => faults.resync_gap = duration(value)?,
                "loss" => faults.loss_permille = loss(spec, value)?,
                "queue-overflow" | "queue-overflow-closed" => {
                    faults.queue_overflow = Some(QueueOverflow {
                        rate: rate(spec, value)?,
                        fail_open: name == "queue-overflow",
                    })
                }
                _ => {
                    let info = CATALOGUE
                        .iter()
                        .find(|f| f.name == name && f.fault.is_some())
                        .ok_or_else(|| FaultError::Unknown(spec.to_string()))?;
                    if value.is_some() {
                        return Err(FaultError::TakesNoValue(spec.to_string()));
                    }
                    faults.set.extend(info.fault);
                }
            }
        }
        Ok(faults)
    }

    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Whether anything but packet loss is injected: something the verdicts must catch.
    pub fn breaks_policies(&self) -> bool {
        Faults {
            loss_permille: 0,
            ..self.clone()
        } != Faults::default()
    }

    pub fn has(&self, fault: Fault) -> bool {
        self.set.contains(&fault)
    }

    /// Whether rules take effect later than the backend accepts changes.
    pub fn lags(&self) -> bool {
        !self.delay.is_zero() || !self.new_pod_unprotected.is_zero() || !self.resync_gap.is_zero()
    }

    /// Whether a cluster policy's Deny must be a refusal, not a drop (`deny-as-reject`).
    pub fn rejects_denies(&self) -> bool {
        self.has(Fault::DenyAsReject)
    }

    /// Whether every denied packet is answered with an ICMP administratively-prohibited
    /// (`deny-as-icmp-filtered`).
    pub fn filters_denies(&self) -> bool {
        self.has(Fault::DenyAsIcmpFiltered)
    }
}

/// `loss=P%`: a share above 0 and at most 50% (beyond that no probe design tells a drop from the
/// network), to a tenth of a percent.
fn loss(spec: &str, value: Option<&str>) -> Result<u16, FaultError> {
    let bad = || FaultError::Loss(spec.to_string());
    let percent: f64 = value
        .and_then(|v| v.trim().strip_suffix('%'))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(bad)?;
    if !(percent > 0.0 && percent <= 50.0) {
        return Err(bad());
    }
    Ok((percent * 10.0).round().max(1.0) as u16)
}

/// `N/s`: new connections per second, from 1 to a million.
fn rate(spec: &str, value: Option<&str>) -> Result<u32, FaultError> {
    value
        .map(|v| v.trim())
        .map(|v| v.strip_suffix("/s").unwrap_or(v).trim())
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|r| (1..=1_000_000).contains(r))
        .ok_or_else(|| FaultError::Rate(spec.to_string()))
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = CATALOGUE
            .iter()
            .filter(|info| info.fault.is_some_and(|fault| self.has(fault)))
            .map(|info| info.name.to_string())
            .collect();
        if !self.delay.is_zero() {
            names.push(format!("delay={}", humantime::format_duration(self.delay)));
        }
        if !self.new_pod_unprotected.is_zero() {
            names.push(format!(
                "new-pod-unprotected={}",
                humantime::format_duration(self.new_pod_unprotected)
            ));
        }
        if !self.resync_gap.is_zero() {
            names.push(format!(
                "resync-gap={}",
                humantime::format_duration(self.resync_gap)
            ));
        }
        if self.loss_permille > 0 {
            names.push(format!("loss={}%", f64::from(self.loss_permille) / 10.0));
        }
        if let Some(queue) = self.queue_overflow {
            let name = if queue.fail_open {
                "queue-overflow"
            } else {
                "queue-overflow-closed"
            };
            names.push(format!("{name}={}/s", queue.rate));
        }
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortProtocol, Protocol, default_model};
    use crate::policy::{Policy, parse_policies};

    fn policy(yaml: &str) -> Policy {
        parse_policies("p.yaml", yaml, "x")
            .unwrap()
            .network
            .remove(0)
    }

    fn allows(policy: &Policy, from: &str, to: &str, pp: PortProtocol) -> bool {
        let cluster = default_model().build("m").unwrap();
        let find = |r: &str| cluster.pod(cluster.find_pod(&r.parse().unwrap()).unwrap());
        let (src, dst) = (find(from), find(to));
        policy.ingress.iter().flatten().any(|rule| {
            rule.matching_peer(&cluster, &policy.namespace, src)
                .is_some()
                && rule.matching_port(dst, pp).is_some()
        })
    }

    #[test]
    fn parses_names_and_durations_and_rejects_the_rest() {
        let f = Faults::parse(&["stateless", "delay=2s", "new-pod-unprotected=500ms"]).unwrap();
        assert!(f.has(Fault::Stateless) && f.lags());
        assert_eq!(f.delay, Duration::from_secs(2));
        assert_eq!(
            f.to_string(),
            "stateless,delay=2s,new-pod-unprotected=500ms"
        );
        for bad in [
            "nonsense",
            "delay",
            "delay=soon",
            "stateless=1s",
            "loss",
            "loss=10",
            "loss=0%",
            "loss=51%",
            "loss=-1%",
            "loss=NaN%",
        ] {
            assert!(Faults::parse(&[bad]).is_err(), "{bad} accepted");
        }
        let lossy = Faults::parse(&["loss=10%"]).unwrap();
        assert_eq!(lossy.loss_permille, 100);
        assert!(!lossy.is_empty() && !lossy.breaks_policies() && !lossy.lags());
        assert_eq!(lossy.to_string(), "loss=10%");
        assert_eq!(Faults::parse(&["loss=0.5%"]).unwrap().loss_permille, 5);
        let open = Faults::parse(&["queue-overflow=2000/s"]).unwrap();
        assert_eq!(
            open.queue_overflow,
            Some(QueueOverflow {
                rate: 2000,
                fail_open: true
            })
        );
        assert_eq!(open.to_string(), "queue-overflow=2000/s");
        assert!(open.breaks_policies());
        let closed = Faults::parse(&["queue-overflow-closed=500"]).unwrap();
        assert_eq!(closed.to_string(), "queue-overflow-closed=500/s");
        assert!(Faults::parse(&["queue-overflow=0/s"]).is_err());
        assert!(Faults::parse(&["queue-overflow"]).is_err());
        assert!(Faults::parse(&["queue-overflow=fast"]).is_err());
        assert!(f.breaks_policies());
        assert!(Faults::parse::<&str>(&[]).unwrap().is_empty());
        assert!(CATALOGUE.len() >= 12);
    }

    #[test]
    fn each_port_fault_changes_what_a_rule_allows() {
        let tcp = |port| PortProtocol::new(port, Protocol::Tcp);
        let udp = |port| PortProtocol::new(port, Protocol::Udp);
        let range = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: 81}, {port: 53, protocol: UDP}]\n",
        );
        let faulty = |names: &[&str]| {
            Faults::parse(names)
                .unwrap()
                .distort(std::slice::from_ref(&range))[0]
                .clone()
        };
        assert!(allows(&range, "y/a", "x/a", tcp(81)));
        assert!(!allows(
            &faulty(&["endport-ignored"]),
            "y/a",
            "x/a",
            tcp(81)
        ));
        assert!(allows(
            &faulty(&["protocol-not-defaulted"]),
            "y/a",
            "x/a",
            udp(80)
        ));
        assert!(!allows(&range, "y/a", "x/a", udp(80)));
        assert!(!allows(&range, "y/a", "x/a", tcp(53)));
        assert!(allows(&faulty(&["udp-as-tcp"]), "y/a", "x/a", tcp(53)));
        assert!(!allows(&faulty(&["udp-as-tcp"]), "y/a", "x/a", udp(53)));
    }

    #[test]
    fn peer_faults_widen_or_narrow_the_peers() {
        let and = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]\n",
        );
        let tcp80 = PortProtocol::new(80, Protocol::Tcp);
        assert!(allows(&and, "y/a", "x/b", tcp80) && !allows(&and, "y/b", "x/b", tcp80));
        let ored = Faults::parse(&["peer-selectors-ored"])
            .unwrap()
            .distort(std::slice::from_ref(&and));
        assert!(
            allows(&ored[0], "y/b", "x/b", tcp80),
            "namespace alone now enough"
        );
        assert!(
            allows(&ored[0], "x/a", "x/b", tcp80),
            "pod alone now enough"
        );
        let local = Faults::parse(&["namespace-selector-ignored"])
            .unwrap()
            .distort(&[and]);
        assert!(!allows(&local[0], "y/a", "x/b", tcp80));
        assert!(allows(&local[0], "x/a", "x/b", tcp80));
    }
}
