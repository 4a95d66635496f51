//! The simulated dataplane: what a probe would meet at a given instant, computed from the policies
//! in effect then, with the faults applied as the local dataplane applies them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use polygraph_agent::wire::{Outcome, ProbeResult, Target, UDP_SOURCE_FIRST};
use tokio::time::Instant;

use crate::faults::lag::Lag;
use crate::faults::{Fault, Faults};
use crate::matrix::Cell;
use crate::model::{Cluster, PodRef, PortProtocol, Protocol};
use crate::policy::{ClusterPolicy, Direction, Oracle, Policy};
use crate::world::World;

/// A TCP reply travels to the client's ephemeral port (Linux starts at 32768); a UDP one to the
/// source port the agent bound (from `UDP_SOURCE_FIRST` up). Only a stateless dataplane looks.
const TCP_REPLY_PORT: u16 = 32768;

/// The cluster as the dataplane was told at one instant.
pub(super) struct State {
    pub at: Instant,
    pub cluster: Cluster,
    /// As enforced: distorted by the policy faults, with ignored deletions kept.
    pub policies: Vec<Policy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    pub created: BTreeMap<PodRef, Instant>,
}

/// Everything the simulation knows: the API's view and the dataplane's history.
pub(super) struct Dataplane {
    pub faults: Faults,
    pub sctp: bool,
    pub lag: Lag,
    /// What the API holds now.
    pub world: World,
    /// Deleted policies the `policy-deletion-ignored` fault keeps enforcing.
    pub ghosts: Vec<Policy>,
    pub created: BTreeMap<PodRef, Instant>,
    /// States not yet superseded by a newer state in effect, oldest first.
    pub states: Vec<State>,
}

impl Dataplane {
    pub fn new(faults: Faults, sctp: bool) -> Dataplane {
        Dataplane {
            lag: Lag::new(&faults, Instant::now()),
            faults,
            sctp,
            world: World::empty(),
            ghosts: Vec::new(),
            created: BTreeMap::new(),
            states: Vec::new(),
        }
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
        self.states.push(State {
            at: Instant::now(),
            cluster: self.world.cluster().clone(),
            policies: self.faults.distort(&enforced),
            cluster_policies: self.faults.distort_cluster(self.world.cluster_policies()),
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
        Judge {
            oracle: state.map(|s| Oracle::tiered(&s.cluster, &s.policies, &s.cluster_policies)),
            state,
            lag: self.lag,
            stateless: self.faults.has(Fault::Stateless),
            rejects: self.faults.rejects_denies(),
            sctp: self.sctp,
            world: &self.world,
            now,
        }
    }
}

/// The dataplane's answers at one instant.
pub(super) struct Judge<'a> {
    /// `None`: nothing enforced (no rules yet, or a resync gap).
    state: Option<&'a State>,
    oracle: Option<Oracle<'a>>,
    lag: Lag,
    stateless: bool,
    /// `deny-as-reject`: a cluster Deny refuses instead of dropping.
    rejects: bool,
    sctp: bool,
    world: &'a World,
    now: Instant,
}

impl Judge<'_> {
    /// The pod of the current world at `host`.
    fn pod_at(&self, host: &str) -> Option<&crate::model::Pod> {
        let ip: IpAddr = host.parse().ok()?;
        self.world.cluster().pods().iter().find(|p| p.ip == ip)
    }

    /// One probe from `from` to `target`.
    pub fn probe(&self, from: &PodRef, target: &Target, timeout: Duration) -> ProbeResult {
        let pp = PortProtocol::new(target.port, target.protocol);
        let (outcome, peer) = match self.pod_at(&target.host) {
            None => (Outcome::Timeout, None),
            Some(_) if pp.protocol == Protocol::Sctp && !self.sctp => (Outcome::Unsupported, None),
            Some(dst) if !dst.serves(pp) => (Outcome::Refused, None),
            // A pod's traffic to itself never leaves it: no dataplane sees it.
            Some(dst) if dst.key() == *from => (Outcome::Connected, Some(dst.key())),
            Some(dst) if self.passes(from, &dst.key(), pp) => (Outcome::Connected, Some(dst.key())),
            Some(dst) if self.rejects && self.denied_by_cluster(from, &dst.key(), pp) => {
                (Outcome::Refused, None)
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
        }
    }

    /// Whether a cluster policy's Deny blocks the connection (where a drop is required).
    fn denied_by_cluster(&self, from: &PodRef, to: &PodRef, pp: PortProtocol) -> bool {
        let (Some(state), Some(oracle)) = (self.state, &self.oracle) else {
            return false;
        };
        match (state.cluster.find_pod(from), state.cluster.find_pod(to)) {
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

    /// Whether a new connection gets through, replies included.
    pub fn passes(&self, from: &PodRef, to: &PodRef, pp: PortProtocol) -> bool {
        let (Some(state), Some(oracle)) = (self.state, &self.oracle) else {
            return true;
        };
        let forward = self.allows(state, oracle, from, to, pp);
        if !forward || !self.stateless {
            return forward;
        }
        let reply_port = match pp.protocol {
            Protocol::Udp => UDP_SOURCE_FIRST,
            _ => TCP_REPLY_PORT,
        };
        self.allows(
            state,
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
        state: &State,
        oracle: &Oracle<'_>,
        from: &PodRef,
        to: &PodRef,
        pp: PortProtocol,
    ) -> bool {
        let cluster = &state.cluster;
        let unprotected = |pod: &PodRef| {
            state
                .created
                .get(pod)
                .is_some_and(|created| self.lag.unprotected(*created, self.now))
        };
        match (cluster.find_pod(from), cluster.find_pod(to)) {
            (Some(src), Some(dst)) => {
                let why = oracle.explain(Cell {
                    from: src,
                    to: dst,
                    port_protocol: pp,
                });
                (why.egress.allowed() || unprotected(from))
                    && (why.ingress.allowed() || unprotected(to))
            }
            (Some(src), None) => {
                unprotected(from) || oracle.isolating_policies(src, Direction::Egress).is_empty()
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
