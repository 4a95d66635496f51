//! Fault injection (`--inject`) for the backends polygraph owns, the local dataplane and the
//! simulation: each fault reproduces a class of bug real CNIs have shipped, so polygraph can prove
//! it catches them (see `tests/self_validation.rs`).
//!
//! Most faults distort the compiled policies before a dataplane sees them, exactly as a CNI agent
//! that misreads the API object would (`distort`, shared by both backends); `stateless` changes how
//! replies are treated, `policy-deletion-ignored` the backend's bookkeeping, and the timed faults
//! (`delay`, `new-pod-unprotected`, `resync-gap`) when rules take effect (`lag`, shared too).

mod cleanup;
mod cluster;
mod history;
pub mod lag;
mod stale;

use cleanup::EgressClobber;
pub use history::{Enforced, History};
use stale::StaleIdentities;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::model::Protocol;
use crate::policy::{NamespaceScope, Peer, Policy, PortMatch, Rule, Selector};

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

/// Every fault: its name, the scenario tags whose failure names it, and what it imitates.
pub struct FaultInfo {
    pub name: &'static str,
    pub fault: Option<Fault>,
    /// The feature tags of the scenarios expected to catch it.
    pub features: &'static [&'static str],
    pub imitates: &'static str,
    /// Where a CNI shipped it (project and issue or advisory); empty for the classic misreadings
    /// of the spec no one report names.
    pub provenance: &'static str,
}

pub const CATALOGUE: &[FaultInfo] = &[
    FaultInfo {
        name: "delay=DUR",
        fault: None,
        features: &[],
        imitates: "every policy, label and namespace change reaches the dataplane DUR late (a slow or backlogged CNI agent): denies leak, allows lag",
        provenance: "",
    },
    FaultInfo {
        name: "new-pod-unprotected=DUR",
        fault: None,
        features: &["new-pod"],
        imitates: "a new pod's own rules arrive DUR after it gets its IP: it sends and receives unprotected meanwhile (the new-pod race)",
        provenance: "",
    },
    FaultInfo {
        name: "resync-gap=DUR",
        fault: None,
        features: &[],
        imitates: "every DUR the agent flushes and rebuilds its rules, enforcing nothing for half of DUR (a full resync): cells flap; `--stability` catches it",
        provenance: "",
    },
    FaultInfo {
        name: "loss=P%",
        fault: None,
        features: &[],
        imitates: "not a bug but a bad network: P% of packets are dropped on every link of the local cluster, each way (a pod-to-pod round trip crosses four); verdicts must not change",
        provenance: "",
    },
    FaultInfo {
        name: "queue-overflow=N/s",
        fault: None,
        features: &[],
        imitates: "an enforcer that judges first packets in a userspace queue and fails open (kube-network-policies' default): beyond N new connections per second (a tenth of a second's burst) packets skip the policy and are accepted; polygraph's pace must stay under it, and a leak above it is `fail-open`",
        provenance: "",
    },
    FaultInfo {
        name: "queue-overflow-closed=N/s",
        fault: None,
        features: &[],
        imitates: "the same queue failing closed (`--fail-open=false`): beyond N new connections per second packets are dropped, allowed ones too; polygraph backs off",
        provenance: "",
    },
    FaultInfo {
        name: "ipblock-except-ignored",
        fault: Some(Fault::IpBlockExceptIgnored),
        features: &["ip-block"],
        imitates: "ipBlock.except is dropped: the whole CIDR is allowed",
        provenance: "",
    },
    FaultInfo {
        name: "endport-ignored",
        fault: Some(Fault::EndPortIgnored),
        features: &["end-port"],
        imitates: "endPort is ignored: only the first port of a range is allowed",
        provenance: "",
    },
    FaultInfo {
        name: "named-ports-unresolved",
        fault: Some(Fault::NamedPortsUnresolved),
        features: &["named-ports"],
        imitates: "named ports are never resolved against the pod's container ports: they allow nothing",
        provenance: "",
    },
    FaultInfo {
        name: "udp-as-tcp",
        fault: Some(Fault::UdpAsTcp),
        features: &["udp"],
        imitates: "UDP port entries are programmed as TCP",
        provenance: "",
    },
    FaultInfo {
        name: "sctp-as-tcp",
        fault: Some(Fault::SctpAsTcp),
        features: &["sctp"],
        imitates: "SCTP port entries are programmed as TCP",
        provenance: "",
    },
    FaultInfo {
        name: "protocol-not-defaulted",
        fault: Some(Fault::ProtocolNotDefaulted),
        features: &["protocol-default"],
        imitates: "a port entry without protocol is not defaulted to TCP: it matches every protocol",
        provenance: "",
    },
    FaultInfo {
        name: "peer-selectors-ored",
        fault: Some(Fault::PeerSelectorsOred),
        features: &["and-or"],
        imitates: "a peer with both namespaceSelector and podSelector is treated as two peers (OR, not AND)",
        provenance: "",
    },
    FaultInfo {
        name: "namespace-selector-ignored",
        fault: Some(Fault::NamespaceSelectorIgnored),
        features: &["namespace-selector"],
        imitates: "namespaceSelector is ignored: peers are looked up in the policy's own namespace only",
        provenance: "",
    },
    FaultInfo {
        name: "egress-ignored",
        fault: Some(Fault::EgressIgnored),
        features: &["egress"],
        imitates: "egress rules are never enforced (ingress-only CNIs and modes)",
        provenance: "",
    },
    FaultInfo {
        name: "ingress-ignored",
        fault: Some(Fault::IngressIgnored),
        features: &["ingress"],
        imitates: "ingress rules are never enforced",
        provenance: "",
    },
    FaultInfo {
        name: "stateless",
        fault: Some(Fault::Stateless),
        features: &["stateful"],
        imitates: "stateless filtering: replies of allowed connections meet the reverse direction's rules and are dropped",
        provenance: "",
    },
    FaultInfo {
        name: "policy-deletion-ignored",
        fault: Some(Fault::PolicyDeletionIgnored),
        features: &["delete"],
        imitates: "a deleted policy stays enforced (a missed delete event)",
        provenance: "",
    },
    FaultInfo {
        name: "pass-as-accept",
        fault: Some(Fault::PassAsAccept),
        features: &["cnp-pass"],
        imitates: "a cluster policy's Pass is programmed as Accept: lower tiers are never consulted",
        provenance: "",
    },
    FaultInfo {
        name: "pass-as-deny",
        fault: Some(Fault::PassAsDeny),
        features: &["cnp-pass"],
        imitates: "a cluster policy's Pass is programmed as Deny",
        provenance: "",
    },
    FaultInfo {
        name: "baseline-ignored",
        fault: Some(Fault::BaselineIgnored),
        features: &["cnp-baseline"],
        imitates: "the Baseline tier (BaselineAdminNetworkPolicy) is never enforced",
        provenance: "",
    },
    FaultInfo {
        name: "admin-ignored",
        fault: Some(Fault::AdminIgnored),
        features: &["cnp-admin"],
        imitates: "the Admin tier (AdminNetworkPolicy) is never enforced",
        provenance: "",
    },
    FaultInfo {
        name: "priority-inverted",
        fault: Some(Fault::PriorityInverted),
        features: &["cnp-priority"],
        imitates: "cluster policies are ordered highest priority value first (the comparison the wrong way round)",
        provenance: "",
    },
    FaultInfo {
        name: "rule-order-ignored",
        fault: Some(Fault::RuleOrderIgnored),
        features: &["cnp-rule-order"],
        imitates: "a cluster policy's rules are evaluated last to first, not in the order written",
        provenance: "",
    },
    FaultInfo {
        name: "deny-as-reject",
        fault: Some(Fault::DenyAsReject),
        features: &["cnp-deny"],
        imitates: "a cluster policy's Deny refuses (TCP reset, ICMP unreachable) instead of dropping",
        provenance: "",
    },
    FaultInfo {
        name: "networks-skip-pods",
        fault: Some(Fault::NetworksSkipPods),
        features: &["cnp-networks"],
        imitates: "networks peers are applied only to traffic leaving the cluster, never to pod addresses",
        provenance: "",
    },
    FaultInfo {
        name: "service-traffic-unfiltered",
        fault: Some(Fault::ServiceTrafficUnfiltered),
        features: &["service"],
        imitates: "traffic the service proxy DNATed (to a ClusterIP) skips the policies: only pod-IP traffic is filtered",
        provenance: "",
    },
    FaultInfo {
        name: "nodeport-unfiltered",
        fault: Some(Fault::NodePortUnfiltered),
        features: &["node-port"],
        imitates: "traffic arriving through a NodePort skips the policies: ingress from outside the cluster is never filtered",
        provenance: "",
    },
    FaultInfo {
        name: "ipv6-unfiltered",
        fault: Some(Fault::Ipv6Unfiltered),
        features: &["dual-stack"],
        imitates: "only IPv4 is filtered: IPv6 traffic of a dual-stack pod passes whatever the policies say (scenarios about both families, dual-stack-ip-block-per-family, probe IPv6 in a default run; --ip-family dual probes every scenario in both)",
        provenance: "",
    },
    FaultInfo {
        name: "dns-egress-blocked",
        fault: Some(Fault::DnsEgressBlocked),
        features: &["dns"],
        imitates: "DNS to the cluster's DNS pods (UDP and TCP 53) is dropped even where a policy allows it: names never resolve",
        provenance: "",
    },
    FaultInfo {
        name: "ipblock-misses-pods",
        fault: Some(Fault::IpBlockMissesPods),
        features: &["ip-block"],
        imitates: "an ipBlock never matches pod addresses, even where its CIDR covers them: only traffic beyond the cluster is matched",
        provenance: "Cilium #9209, #35212; Terway #904",
    },
    FaultInfo {
        name: "ipblock-only-opens-namespace",
        fault: Some(Fault::IpBlockOnlyOpensNamespace),
        features: &["ip-block"],
        imitates: "a rule whose peers are all ipBlocks also admits every pod of the policy's own namespace",
        provenance: "Cilium, CVE-2026-56743",
    },
    FaultInfo {
        name: "sctp-rules-dropped",
        fault: Some(Fault::SctpRulesDropped),
        features: &["sctp"],
        imitates: "a rule naming SCTP in its ports is silently left out, with every other port it names",
        provenance: "aci-containers #1753",
    },
    FaultInfo {
        name: "udp-replies-dropped",
        fault: Some(Fault::UdpRepliesDropped),
        features: &["udp"],
        imitates: "replies of allowed UDP flows are dropped (TCP is fine): UDP looks blocked, DNS lookups time out",
        provenance: "Calico #12752",
    },
    FaultInfo {
        name: "deny-as-icmp-filtered",
        fault: Some(Fault::DenyAsIcmpFiltered),
        features: &["cnp-deny"],
        imitates: "every denied packet is answered with ICMP administratively prohibited (probes see `filtered`): right for NetworkPolicy, wrong for a cluster policy's Deny, which must be silent",
        provenance: "Cilium policyDenyResponse: icmp",
    },
    FaultInfo {
        name: "named-port-first-pod",
        fault: Some(Fault::NamedPortFirstPod),
        features: &["named-ports"],
        imitates: "a named port is resolved once, with the number of the first pod that has the name, for every pod (where the name means other numbers on other pods)",
        provenance: "Cilium #30003",
    },
    FaultInfo {
        name: "named-port-any-number",
        fault: Some(Fault::NamedPortAnyNumber),
        features: &["named-ports"],
        imitates: "a named port allows every number the name has on any pod, on every pod the rule covers",
        provenance: "aci-containers #1707",
    },
    FaultInfo {
        name: "except-spills-to-peers",
        fault: Some(Fault::ExceptSpillsToPeers),
        features: &["ip-block"],
        imitates: "an ipBlock's except is applied to every peer of its rule: a pod a selector of the same rule admits is refused when its address is excepted",
        provenance: "Kube-OVN; k3k #690",
    },
    FaultInfo {
        name: "direction-cleanup-clobbers",
        fault: Some(Fault::DirectionCleanupClobbers),
        features: &["delete"],
        imitates: "removing a pod's last ingress policy also removes its egress enforcement, until a policy isolates it for ingress again",
        provenance: "Calico eBPF #11569",
    },
    FaultInfo {
        name: "nodeport-allow-all-broken",
        fault: Some(Fault::NodePortAllowAllBroken),
        features: &["node-port"],
        imitates: "an ipBlock of a whole family (0.0.0.0/0, ::/0) no longer admits traffic that arrived through a NodePort",
        provenance: "Cilium #39656",
    },
    FaultInfo {
        name: "reused-ip-stale",
        fault: Some(Fault::ReusedIpStale),
        features: &["pod-churn"],
        imitates: "a new pod on a deleted pod's address is taken for the old pod: selectors see the old pod's labels on it as long as it lives",
        provenance: "kube-router #2059; Antrea #6507",
    },
    FaultInfo {
        name: "recreated-pod-ipv4-missing",
        fault: Some(Fault::RecreatedPodIpv4Missing),
        features: &["dual-stack"],
        imitates: "a dual-stack pod deleted and created again under its name never gets its IPv4 address into the selectors' sets (IPv6 is fine)",
        provenance: "k3s #10053",
    },
    FaultInfo {
        name: "ipv6-sets-frozen",
        fault: Some(Fault::Ipv6SetsFrozen),
        features: &["dual-stack"],
        imitates: "the IPv6 half of each selector's address set stops updating once first written: pods that come under a selector later are matched over IPv4 only",
        provenance: "kube-router #1927",
    },
    FaultInfo {
        name: "service-named-targetport-bypass",
        fault: Some(Fault::ServiceNamedTargetportBypass),
        features: &["service"],
        imitates: "traffic to a ClusterIP is judged before DNAT, where a named port is taken at every number it has on any pod: a pod whose own number differs is reached through its Service",
        provenance: "amazon-network-policy-controller-k8s #210",
    },
    FaultInfo {
        name: "node-egress-unfiltered",
        fault: Some(Fault::NodeEgressUnfiltered),
        features: &["node"],
        imitates: "traffic from a pod to its node's own address skips egress policy: only traffic the node forwards is filtered",
        provenance: "kube-network-policies #283",
    },
    FaultInfo {
        name: "service-hairpin-exempt",
        fault: Some(Fault::ServiceHairpinExempt),
        features: &["cnp-hairpin"],
        imitates: "a socket-level load balancer: a pod's traffic to its own Service never leaves its socket, so no cluster policy sees it; wrong by the spec's rule, right by the exemption a cluster may declare (run with --service-hairpin exempt)",
        provenance: "",
    },
];

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

    /// The policies as the faulty CNI understands them, in `cluster`: the faults that depend on
    /// the pods (`ipblock-misses-pods`, the named-port ones) need it.
    pub fn distort_in(&self, policies: &[Policy], cluster: &crate::model::Cluster) -> Vec<Policy> {
        let mut distorted = self.distort(policies);
        if self.has(Fault::ExceptSpillsToPeers) {
            for policy in &mut distorted {
                let namespace = policy.namespace.clone();
                for rules in [policy.ingress.as_mut(), policy.egress.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    for peers in rules.iter_mut().filter_map(|r| r.peers.as_mut()) {
                        *peers = spill_excepts(peers, cluster, &namespace);
                    }
                }
            }
        }
        if self.misresolves_names() {
            for policy in &mut distorted {
                for rules in [policy.ingress.as_mut(), policy.egress.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    for ports in rules.iter_mut().filter_map(|r| r.ports.as_mut()) {
                        *ports = ports
                            .drain(..)
                            .flat_map(|port| match &port {
                                PortMatch::Named { protocol, name } => {
                                    let numbers = self.resolve_everywhere(cluster, |pod| {
                                        pod.named_port(name, *protocol).map(|n| (n, *protocol))
                                    });
                                    if numbers.is_empty() {
                                        vec![port]
                                    } else {
                                        numbers
                                            .into_iter()
                                            .map(|(n, protocol)| PortMatch::Range {
                                                protocol,
                                                start: n,
                                                end: n,
                                            })
                                            .collect()
                                    }
                                }
                                _ => vec![port],
                            })
                            .collect();
                    }
                }
            }
        }
        if self.has(Fault::IpBlockMissesPods) {
            // Every pod address (both families) an ipBlock covers becomes one of its excepts.
            let addresses: Vec<std::net::IpAddr> = cluster
                .pods()
                .iter()
                .flat_map(|p| crate::model::IpFamilies::Dual.addresses(p.ip))
                .collect();
            for policy in &mut distorted {
                for rules in [policy.ingress.as_mut(), policy.egress.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    for peer in rules.iter_mut().flat_map(|r| r.peers.iter_mut().flatten()) {
                        if let Peer::IpBlock { cidr, except } = peer {
                            except.extend(
                                addresses
                                    .iter()
                                    .filter(|ip| cidr.contains(*ip))
                                    .map(|&ip| ipnet::IpNet::from(ip)),
                            );
                        }
                    }
                }
            }
        }
        distorted
    }

    /// Whether a named-port fault resolves names once for the cluster instead of on each
    /// destination pod.
    pub(super) fn misresolves_names(&self) -> bool {
        self.has(Fault::NamedPortFirstPod) || self.has(Fault::NamedPortAnyNumber)
    }

    /// What a named port becomes under the named-port faults: the (number, protocol) `lookup`
    /// finds on the first pod (by namespace and name) that has the name (`named-port-first-pod`), or every one it finds
    /// on any pod (`named-port-any-number`). Empty where no pod has the name.
    pub(super) fn resolve_everywhere(
        &self,
        cluster: &crate::model::Cluster,
        lookup: impl Fn(&crate::model::Pod) -> Option<(u16, Protocol)>,
    ) -> Vec<(u16, Protocol)> {
        // "First" by namespace and name: the same pod whatever order a backend keeps pods in.
        let found = cluster
            .pods()
            .iter()
            .filter_map(|pod| lookup(pod).map(|number| (pod.key(), number)));
        if self.has(Fault::NamedPortFirstPod) {
            found.min().map(|(_, number)| number).into_iter().collect()
        } else {
            found
                .map(|(_, number)| number)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        }
    }

    /// The policies as the faulty CNI understands them.
    pub fn distort(&self, policies: &[Policy]) -> Vec<Policy> {
        // Without a policy fault (the default) there is nothing to distort on every sync.
        if self.set.iter().all(|f| !f.distorts_policies()) {
            return policies.to_vec();
        }
        policies.iter().map(|p| self.distort_policy(p)).collect()
    }

    fn distort_policy(&self, policy: &Policy) -> Policy {
        let mut policy = policy.clone();
        if self.has(Fault::EgressIgnored) {
            policy.egress = None;
        }
        if self.has(Fault::IngressIgnored) {
            policy.ingress = None;
        }
        if self.has(Fault::SctpRulesDropped) {
            // The whole rule goes, with the other ports it names; a policy left without rules
            // still isolates its pods.
            for rules in [policy.ingress.as_mut(), policy.egress.as_mut()]
                .into_iter()
                .flatten()
            {
                rules.retain(|r| {
                    !r.ports
                        .iter()
                        .flatten()
                        .any(|p| p.protocol() == Protocol::Sctp)
                });
            }
        }
        let object_rules = |ingress: bool| -> Vec<Vec<bool>> {
            // Per rule, per port entry: whether the object gave no protocol.
            let spec = policy.object.spec.clone().unwrap_or_default();
            let unset =
                |ports: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>| {
                    ports
                        .map(|ps| ps.iter().map(|p| p.protocol.is_none()).collect())
                        .unwrap_or_default()
                };
            if ingress {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| unset(r.ports.as_ref()))
                    .collect()
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| unset(r.ports.as_ref()))
                    .collect()
            }
        };
        let unset_in = [object_rules(true), object_rules(false)];
        for (which, rules) in [policy.ingress.as_mut(), policy.egress.as_mut()]
            .into_iter()
            .enumerate()
        {
            let Some(rules) = rules else { continue };
            for (index, rule) in rules.iter_mut().enumerate() {
                let unset = unset_in[which].get(index).cloned().unwrap_or_default();
                self.distort_rule(rule, &unset);
            }
        }
        policy
    }

    fn distort_rule(&self, rule: &mut Rule, protocol_unset: &[bool]) {
        if let Some(peers) = &mut rule.peers {
            let ip_blocks_only =
                !peers.is_empty() && peers.iter().all(|p| matches!(p, Peer::IpBlock { .. }));
            let mut distorted = Vec::new();
            for peer in peers.drain(..) {
                distorted.extend(self.distort_peer(peer));
            }
            if ip_blocks_only && self.has(Fault::IpBlockOnlyOpensNamespace) {
                distorted.push(Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods: Selector::default(),
                });
            }
            *peers = distorted;
        }
        if let Some(ports) = &mut rule.ports {
            let mut distorted = Vec::new();
            for (index, port) in ports.drain(..).enumerate() {
                let unset = protocol_unset.get(index).copied().unwrap_or(false);
                distorted.extend(self.distort_port(port, unset));
            }
            *ports = distorted;
        }
    }

    fn distort_peer(&self, peer: Peer) -> Vec<Peer> {
        match peer {
            Peer::IpBlock { cidr, .. } if self.has(Fault::IpBlockExceptIgnored) => {
                vec![Peer::IpBlock {
                    cidr,
                    except: Vec::new(),
                }]
            }
            Peer::Pods {
                namespaces: NamespaceScope::Selected(_),
                pods,
            } if self.has(Fault::NamespaceSelectorIgnored) => vec![Peer::Pods {
                namespaces: NamespaceScope::PolicyNamespace,
                pods,
            }],
            Peer::Pods {
                namespaces: NamespaceScope::Selected(namespaces),
                pods,
            } if self.has(Fault::PeerSelectorsOred) && !pods.is_everything() => vec![
                Peer::Pods {
                    namespaces: NamespaceScope::Selected(namespaces),
                    pods: Selector::default(),
                },
                Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods,
                },
            ],
            other => vec![other],
        }
    }

    fn distort_port(&self, port: PortMatch, protocol_unset: bool) -> Vec<PortMatch> {
        let mut port = port;
        if self.has(Fault::EndPortIgnored)
            && let PortMatch::Range {
                protocol, start, ..
            } = port
        {
            port = PortMatch::Range {
                protocol,
                start,
                end: start,
            };
        }
        let retarget = |from: Protocol| match from {
            Protocol::Udp if self.has(Fault::UdpAsTcp) => Protocol::Tcp,
            Protocol::Sctp if self.has(Fault::SctpAsTcp) => Protocol::Tcp,
            other => other,
        };
        port = with_protocol(&port, retarget(port.protocol()));
        if self.has(Fault::NamedPortsUnresolved) && matches!(port, PortMatch::Named { .. }) {
            return Vec::new();
        }
        if self.has(Fault::ProtocolNotDefaulted) && protocol_unset {
            return [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .map(|p| with_protocol(&port, p))
                .collect();
        }
        vec![port]
    }
}

/// The policies `service-named-targetport-bypass` applies to traffic to a ClusterIP: each named
/// port at every number it has on any pod.
pub fn named_ports_anywhere(policies: &[Policy], cluster: &crate::model::Cluster) -> Vec<Policy> {
    let mut any_number = Faults::default();
    any_number.set.insert(Fault::NamedPortAnyNumber);
    any_number.distort_in(policies, cluster)
}

/// The policies `nodeport-allow-all-broken` applies to traffic through a NodePort: without the
/// ipBlocks of a whole family (a rule left with no peer admits nothing).
pub fn without_catch_all_blocks(policies: &[Policy]) -> Vec<Policy> {
    let mut policies = policies.to_vec();
    for policy in &mut policies {
        for rules in [policy.ingress.as_mut(), policy.egress.as_mut()]
            .into_iter()
            .flatten()
        {
            for peers in rules.iter_mut().filter_map(|r| r.peers.as_mut()) {
                peers
                    .retain(|p| !matches!(p, Peer::IpBlock { cidr, .. } if cidr.prefix_len() == 0));
            }
        }
    }
    policies
}

/// `except-spills-to-peers`: the peers of one rule with every ipBlock's `except` applied to all
/// of them. A selector peer becomes what a CNI's address set holds, the addresses (both
/// families) of the pods it selects now, minus the excepted ones: `distort_in` runs on every
/// change, so the set follows the pods as a CNI's does.
fn spill_excepts(peers: &[Peer], cluster: &crate::model::Cluster, namespace: &str) -> Vec<Peer> {
    let excepts: Vec<ipnet::IpNet> = peers
        .iter()
        .flat_map(|p| match p {
            Peer::IpBlock { except, .. } => except.clone(),
            Peer::Pods { .. } => Vec::new(),
        })
        .collect();
    if excepts.is_empty() {
        return peers.to_vec();
    }
    let excepted = |ip: &std::net::IpAddr| excepts.iter().any(|e| e.contains(ip));
    peers
        .iter()
        .flat_map(|peer| match peer {
            // Its own excepts are among them.
            Peer::IpBlock { cidr, .. } => vec![Peer::IpBlock {
                cidr: *cidr,
                except: excepts.clone(),
            }],
            Peer::Pods { .. } => history::selector_as_addresses(peer, cluster, namespace, excepted),
        })
        .collect()
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

fn with_protocol(port: &PortMatch, protocol: Protocol) -> PortMatch {
    match port.clone() {
        PortMatch::AllPorts { .. } => PortMatch::AllPorts { protocol },
        PortMatch::Range { start, end, .. } => PortMatch::Range {
            protocol,
            start,
            end,
        },
        PortMatch::Named { name, .. } => PortMatch::Named { protocol, name },
    }
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
    use crate::model::{PortProtocol, default_model};
    use crate::policy::parse_policies;

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
