//! The simulated dataplane: what a probe would meet at a given instant, computed from the policies
//! in effect then, with the faults applied as the local dataplane applies them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use polygraph_agent::wire::{Outcome, ProbeResult, Target, UDP_SOURCE_FIRST};
use tokio::time::Instant;

use crate::faults::lag::Lag;
use crate::faults::{Fault, Faults};
use crate::matrix::Cell;
use crate::model::{Cluster, ClusterDns, Family, IpFamilies, Pod, PodRef, PortProtocol, Protocol};
use crate::policy::{ClusterPolicy, Direction, Oracle, Policy};
use crate::world::World;

/// A TCP reply travels to the client's ephemeral port (Linux starts at 32768); a UDP one to the
/// source port the agent bound (from `UDP_SOURCE_FIRST` up). Only a stateless dataplane looks.
const TCP_REPLY_PORT: u16 = 32768;

/// The cluster as the dataplane was told at one instant.
pub(super) struct State {
    pub at: Instant,
    /// Per family the pods have: the cluster with every pod at its address in that family (ipBlock
    /// answers depend on it).
    pub clusters: Vec<(Family, Cluster)>,
    /// As enforced: distorted by the policy faults, with ignored deletions kept.
    pub policies: Vec<Policy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    pub created: BTreeMap<PodRef, Instant>,
    /// `direction-cleanup-clobbers`: the pods left without egress enforcement.
    pub egress_clobbered: BTreeSet<PodRef>,
    /// `nodeport-allow-all-broken`: the policies as they apply to traffic through a NodePort.
    pub node_port_policies: Option<Vec<Policy>>,
    /// `service-named-targetport-bypass`: the policies as they apply to traffic to a ClusterIP.
    pub service_policies: Option<Vec<Policy>>,
}

/// Everything the simulation knows: the API's view and the dataplane's history.
pub(super) struct Dataplane {
    pub faults: Faults,
    pub sctp: bool,
    pub families: IpFamilies,
    /// False: nothing is enforced (`--dataplane none`): every recorded state has no policy.
    pub enforcing: bool,
    /// Per pod, the slot its Service's ClusterIPs come from (the local cluster's plan).
    pub services: BTreeMap<PodRef, usize>,
    /// Per pod, the NodePort of each served (port, protocol), as the local cluster allocates them.
    pub node_ports: BTreeMap<PodRef, Vec<(PortProtocol, u16)>>,
    next_slot: usize,
    next_node_port: u16,
    /// The host outside the cluster, once a path needs it, with its addresses.
    pub outside: Option<(Pod, Vec<IpAddr>)>,
    /// The pods' node as an endpoint, once a path needs it, with its addresses.
    pub node: Option<(Pod, Vec<IpAddr>)>,
    /// The cluster's DNS pod (the local cluster's), once a path resolves names, with its
    /// addresses.
    pub dns: Option<(Pod, Vec<IpAddr>)>,
    pub lag: Lag,
    /// What the API holds now.
    pub world: World,
    /// Deleted policies the `policy-deletion-ignored` fault keeps enforcing.
    pub ghosts: Vec<Policy>,
    pub created: BTreeMap<PodRef, Instant>,
    /// What the faults with a history remember.
    pub history: crate::faults::History,
    /// States not yet superseded by a newer state in effect, oldest first.
    pub states: Vec<State>,
    /// `queue-overflow`: the enforcer's tokens (connections it can judge now) and when they were
    /// last counted.
    queue_tokens: f64,
    queue_counted: Instant,
}

/// What the enforcer's queue did with a new connection (`queue-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Judged by the policies, as always without the fault.
    Judged,
    /// Over the rate, failing open: accepted unjudged.
    Accepted,
    /// Over the rate, failing closed: dropped unjudged.
    Dropped,
}

/// The tokens a queue-overflow fault starts with: a full burst.
fn faults_burst(faults: &Faults) -> f64 {
    faults.queue_overflow.map_or(0.0, |q| f64::from(q.burst()))
}

impl Dataplane {
    /// `enforcing: false`: a cluster with no dataplane, every policy ignored.
    pub fn new(faults: Faults, sctp: bool, families: IpFamilies, enforcing: bool) -> Dataplane {
        let queue_tokens = faults_burst(&faults);
        Dataplane {
            enforcing,
            lag: Lag::new(&faults, Instant::now()),
            faults,
            sctp,
            families,
            services: BTreeMap::new(),
            node_ports: BTreeMap::new(),
            next_slot: 0,
            next_node_port: crate::backend::local::proxy::NODE_PORT_FIRST,
            outside: None,
            node: None,
            dns: None,
            world: World::empty(),
            ghosts: Vec::new(),
            created: BTreeMap::new(),
            history: Default::default(),
            states: Vec::new(),
            queue_tokens,
            queue_counted: Instant::now(),
        }
    }

    /// What the enforcer's queue does with one more new connection at `now`: a token bucket of
    /// the fault's rate and burst, as the local dataplane's nftables `limit rate over`.
    pub fn queue(&mut self, now: Instant) -> Queued {
        let Some(queue) = self.faults.queue_overflow else {
            return Queued::Judged;
        };
        let elapsed = now
            .saturating_duration_since(self.queue_counted)
            .as_secs_f64();
        self.queue_counted = now;
        self.queue_tokens =
            (self.queue_tokens + elapsed * f64::from(queue.rate)).min(f64::from(queue.burst()));
        if self.queue_tokens >= 1.0 {
            self.queue_tokens -= 1.0;
            Queued::Judged
        } else if queue.fail_open {
            Queued::Accepted
        } else {
            Queued::Dropped
        }
    }

    /// Gives a new pod its Service (a slot and node ports, as the local cluster would).
    pub fn add_service(&mut self, pod: &Pod) {
        self.services.insert(pod.key(), self.next_slot);
        self.next_slot += 1;
        let mut ports = Vec::new();
        for port in &pod.ports {
            ports.push((
                PortProtocol::new(port.port, port.protocol),
                self.next_node_port,
            ));
            self.next_node_port = self.next_node_port.saturating_add(1);
        }
        self.node_ports.insert(pod.key(), ports);
    }

    /// Forgets the Services of the pods `gone` says are gone.
    pub fn remove_services(&mut self, gone: impl Fn(&PodRef) -> bool) {
        self.services.retain(|p, _| !gone(p));
        self.node_ports.retain(|p, _| !gone(p));
    }

    /// Records the world as it now stands, for the dataplane to enforce (now, or late).
    pub fn record(&mut self) {
        let enforced: Vec<Policy> = self
            .ghosts
            .iter()
            .filter(|g| !self.world.has_policy(&g.namespace, &g.name))
            .chain(self.world.policies())
            .cloned()
            .collect();
        let crate::faults::Enforced {
            cluster,
            policies,
            egress_clobbered,
        } = self
            .history
            .enforce(&self.faults, self.families, self.world.cluster(), &enforced);
        let cluster = &cluster;
        let clusters = [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|family| {
                let mut description = cluster.description();
                let mut any = false;
                for (pod, model) in description.pods.iter_mut().zip(cluster.pods()) {
                    if let Some(ip) = self
                        .families
                        .addresses(model.ip)
                        .into_iter()
                        .find(|ip| Family::of(*ip) == family)
                    {
                        pod.ip = Some(ip.to_string());
                        any = true;
                    }
                }
                let built = description.build("simulated cluster").ok()?;
                // The outside host, where a path has one, at its address in the family.
                let outside: Vec<Pod> = self
                    .outside
                    .iter()
                    .chain(&self.node)
                    .filter_map(|(host, addresses)| {
                        let ip = addresses.iter().find(|ip| Family::of(**ip) == family)?;
                        Some(Pod {
                            ip: *ip,
                            ..host.clone()
                        })
                    })
                    .collect();
                // The DNS pod, as the local cluster has it: not while a model has its namespace.
                let built = match &self.dns {
                    Some((pod, addresses)) if built.namespace(&pod.namespace).is_none() => {
                        let ip = addresses.iter().find(|ip| Family::of(**ip) == family);
                        let servers: Vec<Pod> = ip
                            .map(|ip| Pod {
                                ip: *ip,
                                ..pod.clone()
                            })
                            .into_iter()
                            .collect();
                        built.with_dns(&ClusterDns {
                            namespace: crate::backend::local::dns_namespace(),
                            servers,
                        })
                    }
                    _ => built,
                };
                any.then(|| (family, built.with_outside(&outside)))
            })
            .collect();
        self.states.push(State {
            at: Instant::now(),
            clusters,
            egress_clobbered,
            service_policies: self
                .faults
                .has(Fault::ServiceNamedTargetportBypass)
                .then(|| crate::faults::named_ports_anywhere(&policies, cluster)),
            node_port_policies: self
                .faults
                .has(Fault::NodePortAllowAllBroken)
                .then(|| crate::faults::without_catch_all_blocks(&policies)),
            cluster_policies: if self.enforcing {
                self.faults
                    .distort_cluster(self.world.cluster_policies(), cluster)
            } else {
                Vec::new()
            },
            policies: if self.enforcing { policies } else { Vec::new() },
            created: self.created.clone(),
        });
    }

    /// What decides at `now`: the state in effect (dropping the ones it superseded), with its
    /// oracle built once for a whole batch.
    pub fn judge(&mut self, now: Instant) -> Judge<'_> {
        let in_effect = if self.lag.in_gap(now) {
            None
        } else {
            self.lag
                .in_effect(self.states.iter().map(|s| s.at), now)
                .map(|index| {
                    self.states.drain(..index);
                    0
                })
        };
        let state = in_effect.and_then(|i| self.states.get(i));
        let mut oracles = Vec::new();
        let mut node_port_oracles = Vec::new();
        if let Some(s) = state {
            for (family, cluster) in &s.clusters {
                let oracle = || Oracle::tiered(cluster, &s.policies, &s.cluster_policies);
                oracles.push((*family, false, cluster, oracle()));
                let through_services = match &s.service_policies {
                    Some(policies) => Oracle::tiered(cluster, policies, &s.cluster_policies),
                    None => oracle(),
                };
                oracles.push((*family, true, cluster, through_services.through_services()));
                if let Some(policies) = &s.node_port_policies {
                    node_port_oracles.push((
                        *family,
                        cluster,
                        Oracle::tiered(cluster, policies, &s.cluster_policies),
                    ));
                }
            }
        }
        Judge {
            oracles,
            node_port_oracles,
            in_effect: state.is_some(),
            created: state.map(|s| &s.created),
            egress_clobbered: state.map(|s| &s.egress_clobbered),
            faults: &self.faults,
            families: self.families,
            services: &self.services,
            node_ports: &self.node_ports,
            outside: self.outside.as_ref(),
            node: self.node.as_ref(),
            dns: self.dns.as_ref(),
            lag: self.lag,
            stateless: self.faults.has(Fault::Stateless),
            udp_replies_dropped: self.faults.has(Fault::UdpRepliesDropped),
            rejects: self.faults.rejects_denies(),
            filters: self.faults.filters_denies(),
            sctp: self.sctp,
            world: &self.world,
            now,
        }
    }
}

/// How a probe travelled: the family of its addresses, and whether the service proxy DNATed it
/// from a ClusterIP or a NodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    pub family: Family,
    pub service: bool,
    pub node_port: bool,
}

impl Route {
    fn plain(family: Family) -> Route {
        Route {
            family,
            service: false,
            node_port: false,
        }
    }
}

/// The dataplane's answers at one instant.
pub(super) struct Judge<'a> {
    /// Whether any state is enforced (not before the first rules, nor in a resync gap).
    in_effect: bool,
    /// Per family, plain and through Services (hairpin judged): the oracle of the state in effect.
    oracles: Vec<(Family, bool, &'a Cluster, Oracle<'a>)>,
    /// Per family, where traffic through a NodePort meets other policies
    /// (`nodeport-allow-all-broken`).
    node_port_oracles: Vec<(Family, &'a Cluster, Oracle<'a>)>,
    created: Option<&'a BTreeMap<PodRef, Instant>>,
    egress_clobbered: Option<&'a BTreeSet<PodRef>>,
    faults: &'a Faults,
    families: IpFamilies,
    services: &'a BTreeMap<PodRef, usize>,
    node_ports: &'a BTreeMap<PodRef, Vec<(PortProtocol, u16)>>,
    outside: Option<&'a (Pod, Vec<IpAddr>)>,
    node: Option<&'a (Pod, Vec<IpAddr>)>,
    dns: Option<&'a (Pod, Vec<IpAddr>)>,
    lag: Lag,
    stateless: bool,
    /// `udp-replies-dropped`: no UDP flow gets its reply back.
    udp_replies_dropped: bool,
    /// `deny-as-reject`: a cluster Deny refuses instead of dropping.
    rejects: bool,
    /// `deny-as-icmp-filtered`: every denied packet is answered "administratively prohibited".
    filters: bool,
    sctp: bool,
    world: &'a World,
    now: Instant,
}

impl Judge<'_> {
    /// The pod of the current world at `host`, `port` and `protocol` (one of its addresses, its
    /// Service's, a NodePort of its node, a host-network pod's socket at the node's address, or
    /// the outside host's address), and how traffic to it travels.
    pub fn pod_at(&self, host: &str, port: u16, protocol: Protocol) -> Option<(&Pod, Route)> {
        let ip: IpAddr = host.parse().ok()?;
        let family = Family::of(ip);
        if let Some((outside, addresses)) = self.outside
            && addresses.contains(&ip)
        {
            return Some((outside, Route::plain(family)));
        }
        if ip == crate::backend::local::proxy::node_address(family) {
            let node_port = self
                .node_ports
                .iter()
                .find_map(|(pod, ports)| ports.iter().any(|(_, p)| *p == port).then_some(pod));
            // A host-network pod's ports, then the node's own, where it serves as an endpoint
            // (`--target node`).
            let Some(pod) = node_port else {
                let host_network = self.world.cluster().pods().iter().find(|p| {
                    p.host_network
                        && p.ports
                            .iter()
                            .any(|c| (c.port, c.protocol) == (port, protocol))
                });
                return host_network
                    .or(self.node.map(|(node, _)| node))
                    .map(|pod| (pod, Route::plain(family)));
            };
            let pod = self.world.pod(pod)?;
            return Some((
                pod,
                Route {
                    family,
                    service: false,
                    node_port: true,
                },
            ));
        }
        self.world.cluster().pods().iter().find_map(|p| {
            let addresses = self.families.addresses(p.ip);
            if addresses.contains(&ip) {
                return Some((p, Route::plain(family)));
            }
            let slot = *self.services.get(&p.key())?;
            let service = addresses.iter().any(|a| {
                Family::of(*a) == family
                    && crate::backend::local::proxy::cluster_ip(slot, family) == ip
            });
            service.then_some((
                p,
                Route {
                    family,
                    service: true,
                    node_port: false,
                },
            ))
        })
    }

    /// The (port, protocol) a NodePort probe reaches on the pod; the probe's own otherwise.
    fn served_port(&self, dst: &Pod, target: &Target, route: Route) -> PortProtocol {
        let probed = PortProtocol::new(target.port, target.protocol);
        if !route.node_port {
            return probed;
        }
        self.node_ports
            .get(&dst.key())
            .and_then(|ports| ports.iter().find(|(_, p)| *p == target.port))
            .map_or(probed, |(pp, _)| *pp)
    }

    fn oracle(&self, route: Route) -> Option<(&Cluster, &Oracle<'_>)> {
        if route.node_port
            && let Some((_, cluster, oracle)) = self
                .node_port_oracles
                .iter()
                .find(|(family, _, _)| *family == route.family)
        {
            return Some((*cluster, oracle));
        }
        self.oracles
            .iter()
            .find(|(family, hairpin, _, _)| (*family, *hairpin) == (route.family, route.service))
            .map(|(_, _, cluster, oracle)| (*cluster, oracle))
    }

    /// Where a name leads, as the local cluster's resolver would find it: the DNS pod must be
    /// reachable from `from` (UDP 53 to the DNS Service, DNATed to the pod, in the family of its
    /// first address, as the local cluster's pods ask it), and the name must be a pod's Service.
    /// `Err(detail)`: `dns-failed`.
    fn resolve(&self, from: &PodRef, target: &Target) -> Result<Target, String> {
        let Some((dns, addresses)) = self.dns else {
            return Err("no cluster DNS".into());
        };
        let family = addresses.first().map_or(Family::V4, |ip| Family::of(*ip));
        let route = Route {
            family,
            service: true,
            node_port: false,
        };
        if self.faults.has(Fault::DnsEgressBlocked)
            || !self.passes(
                from,
                &dns.key(),
                PortProtocol::new(crate::model::DNS_PORT, Protocol::Udp),
                route,
            )
        {
            return Err(format!("resolving {}: request timed out", target.host));
        }
        let wanted = match target.family {
            Some(polygraph_agent::wire::AddressFamily::Ipv6) => Family::V6,
            _ => Family::V4,
        };
        let ip = self
            .world
            .cluster()
            .pods()
            .iter()
            .find(|p| {
                crate::backend::local::service_fqdn(&p.key(), crate::backend::local::CLUSTER_DOMAIN)
                    == target.host
            })
            .and_then(|p| {
                let slot = *self.services.get(&p.key())?;
                self.families
                    .addresses(p.ip)
                    .iter()
                    .any(|a| Family::of(*a) == wanted)
                    .then(|| crate::backend::local::proxy::cluster_ip(slot, wanted))
            })
            .ok_or_else(|| format!("{} has no {wanted} record", target.host))?;
        Ok(Target {
            host: ip.to_string(),
            ..target.clone()
        })
    }

    /// One probe from `from` to `target`.
    pub fn probe(
        &self,
        from: &PodRef,
        target: &Target,
        timeout: Duration,
        queued: Queued,
    ) -> ProbeResult {
        if target.host.parse::<IpAddr>().is_err() {
            return match self.resolve(from, target) {
                Ok(resolved) => ProbeResult {
                    host: target.host.clone(),
                    ..self.probe(from, &resolved, timeout, queued)
                },
                Err(detail) => ProbeResult {
                    host: target.host.clone(),
                    port: target.port,
                    protocol: target.protocol,
                    outcome: Outcome::DnsFailed,
                    started_ms: 0.0,
                    elapsed_ms: timeout.as_secs_f64() * 1e3,
                    peer: None,
                    detail: Some(detail),
                    attempts: None,
                    answer_ms: None,
                },
            };
        }
        let found = self
            .pod_at(&target.host, target.port, target.protocol)
            .map(|(dst, route)| (dst, route, self.served_port(dst, target, route)));
        let pp = found.map_or(PortProtocol::new(target.port, target.protocol), |f| f.2);
        let (outcome, peer) = match found.map(|(dst, route, _)| (dst, route)) {
            None => (Outcome::Timeout, None),
            Some(_) if pp.protocol == Protocol::Sctp && !self.sctp => (Outcome::Unsupported, None),
            Some((dst, _)) if !dst.serves(pp) => (Outcome::Refused, None),
            // A pod's traffic to its own IP never leaves it: no dataplane sees it. Through its
            // Service it goes to the node and back (hairpin), and is filtered.
            Some((dst, route))
                if dst.key() == *from
                    && (!route.service || self.faults.has(Fault::ServiceHairpinExempt)) =>
            {
                (Outcome::Connected, Some(dst.key()))
            }
            // The node's own traffic (a host-network pod's too) leaves by its output path, where
            // no policy filters it: a pod's own node may always reach it (the local cluster's
            // kernel does the same).
            Some((dst, _)) if self.is_node(from) || self.is_host_network(from) => {
                (Outcome::Connected, Some(dst.key()))
            }
            // `node-egress-unfiltered`: traffic to the node skips the pods' egress (and the node
            // has no ingress policy).
            Some((dst, _))
                if self.is_node(&dst.key()) && self.faults.has(Fault::NodeEgressUnfiltered) =>
            {
                (Outcome::Connected, Some(dst.key()))
            }
            Some(_) if queued == Queued::Dropped => (Outcome::Timeout, None),
            Some((dst, route)) if queued == Queued::Accepted || self.unfiltered(route) => {
                (Outcome::Connected, Some(dst.key()))
            }
            Some((dst, route)) if self.passes(from, &dst.key(), pp, route) => {
                (Outcome::Connected, Some(dst.key()))
            }
            Some((dst, route))
                if self.rejects && self.denied_by_cluster(from, &dst.key(), pp, route) =>
            {
                (Outcome::Refused, None)
            }
            Some((dst, route)) if self.filters && self.denied(from, &dst.key(), pp, route) => {
                (Outcome::Filtered, None)
            }
            Some(_) => (Outcome::Timeout, None),
        };
        let elapsed_ms = match outcome {
            Outcome::Timeout => timeout.as_secs_f64() * 1e3,
            _ => 0.1,
        };
        ProbeResult {
            host: target.host.clone(),
            port: target.port,
            protocol: target.protocol,
            outcome,
            started_ms: 0.0,
            elapsed_ms,
            peer: peer.map(|p| p.to_string()),
            detail: None,
            attempts: None,
            answer_ms: (elapsed_ms < 1.0).then_some(elapsed_ms),
        }
    }

    /// Traffic the faults let past every policy: DNATed (`service-traffic-unfiltered`), IPv6
    /// (`ipv6-unfiltered`).
    fn unfiltered(&self, route: Route) -> bool {
        ((route.service || route.node_port) && self.faults.has(Fault::ServiceTrafficUnfiltered))
            || (route.node_port && self.faults.has(Fault::NodePortUnfiltered))
            || (route.family == Family::V6 && self.faults.has(Fault::Ipv6Unfiltered))
    }

    /// Whether a cluster policy's Deny blocks the connection (where a drop is required).
    fn denied_by_cluster(
        &self,
        from: &PodRef,
        to: &PodRef,
        pp: PortProtocol,
        route: Route,
    ) -> bool {
        let Some((cluster, oracle)) = self.oracle(route) else {
            return false;
        };
        match (cluster.find_pod(from), cluster.find_pod(to)) {
            (Some(src), Some(dst)) => oracle
                .explain(Cell {
                    from: src,
                    to: dst,
                    port_protocol: pp,
                })
                .drop_required(),
            _ => false,
        }
    }

    /// Whether `pod` is the pods' node.
    fn is_node(&self, pod: &PodRef) -> bool {
        self.node.is_some_and(|(node, _)| node.key() == *pod)
    }

    /// Whether `pod` is a host-network pod: its traffic is the node's.
    fn is_host_network(&self, pod: &PodRef) -> bool {
        let cluster = self.world.cluster();
        cluster
            .find_pod(pod)
            .is_some_and(|id| cluster.pod(id).host_network)
    }

    /// Whether the policies deny a new connection's first packet (not its replies): what a
    /// dataplane answers for when it answers denials.
    fn denied(&self, from: &PodRef, to: &PodRef, pp: PortProtocol, route: Route) -> bool {
        if !self.in_effect || self.unfiltered(route) {
            return false;
        }
        self.oracle(route)
            .is_some_and(|(cluster, oracle)| !self.allows(cluster, oracle, from, to, pp))
    }

    /// Whether a new connection gets through, replies included.
    pub fn passes(&self, from: &PodRef, to: &PodRef, pp: PortProtocol, route: Route) -> bool {
        if !self.in_effect || self.unfiltered(route) {
            return true;
        }
        let Some((cluster, oracle)) = self.oracle(route) else {
            return true;
        };
        let forward = self.allows(cluster, oracle, from, to, pp);
        if forward && self.udp_replies_dropped && pp.protocol == Protocol::Udp {
            return false;
        }
        if !forward || !self.stateless {
            return forward;
        }
        let reply_port = match pp.protocol {
            Protocol::Udp => UDP_SOURCE_FIRST,
            _ => TCP_REPLY_PORT,
        };
        self.allows(
            cluster,
            oracle,
            to,
            from,
            PortProtocol::new(reply_port, pp.protocol),
        )
    }

    /// Whether packets from `from` to `to` on `pp` pass both ends' rules in `state`. A pod still in
    /// its `new-pod-unprotected` grace, or unknown to the state (created after it), has no rules of
    /// its own, and matches no other pod's peers.
    fn allows(
        &self,
        cluster: &Cluster,
        oracle: &Oracle<'_>,
        from: &PodRef,
        to: &PodRef,
        pp: PortProtocol,
    ) -> bool {
        // The cluster's DNS pod is never a subject of polygraph's policies (the local dataplane
        // gives it no chains of its own), like a pod in its unprotected grace.
        let unprotected = |pod: &PodRef| {
            self.dns.is_some_and(|(dns, _)| dns.key() == *pod)
                || self
                    .created
                    .and_then(|c| c.get(pod))
                    .is_some_and(|created| self.lag.unprotected(*created, self.now))
        };
        let egress_unprotected = |pod: &PodRef| {
            unprotected(pod) || self.egress_clobbered.is_some_and(|c| c.contains(pod))
        };
        match (cluster.find_pod(from), cluster.find_pod(to)) {
            (Some(src), Some(dst)) => {
                let why = oracle.explain(Cell {
                    from: src,
                    to: dst,
                    port_protocol: pp,
                });
                (why.egress.allowed() || egress_unprotected(from))
                    && (why.ingress.allowed() || unprotected(to))
            }
            (Some(src), None) => {
                egress_unprotected(from)
                    || oracle.isolating_policies(src, Direction::Egress).is_empty()
            }
            (None, Some(dst)) => {
                unprotected(to)
                    || oracle
                        .isolating_policies(dst, Direction::Ingress)
                        .is_empty()
            }
            (None, None) => true,
        }
    }
}
