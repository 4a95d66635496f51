//! Programs the reference dataplane: turns the cluster's state into nftables rules and installs
//! them, now, or (with the timed faults) late, the way a lagging CNI agent would.
//!
//! Without timed faults every change is installed before the backend call returns. With
//! `delay=D`, each state is installed D after it was reached; with `new-pod-unprotected=D`, a pod's
//! own chains are left out until D after it was created; with `resync-gap=P`, the rules vanish for
//! the first half of every period P. A worker task does the lagged part: it
//! wakes when a state becomes due or a pod's grace ends, and installs what a CNI that far behind
//! would have installed by then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{SlotTable, host, nft};
use crate::backend::BackendError;
use crate::faults::lag::Lag;
use crate::faults::{Fault, Faults};
use crate::model::Cluster;
use crate::policy::Direction;
use crate::policy::{ClusterPolicy, Policy};

/// The cluster's state at one instant, as the dataplane must see it.
pub(super) struct State {
    pub at: Instant,
    pub cluster: Cluster,
    /// Policies as enforced (already distorted by the policy faults).
    pub policies: Vec<Policy>,
    pub cluster_policies: Vec<ClusterPolicy>,
    /// Per pod of `cluster`: its slot and when it was created.
    pub slots: Vec<usize>,
    /// The pods' address families: each pod's addresses are in its chains' sets.
    pub families: crate::model::IpFamilies,
    pub created: Vec<Instant>,
    /// Slots of the cluster's own pods (its DNS): peers, never subjects of any policy.
    pub infrastructure: Vec<usize>,
    /// Slots of the pods left without egress enforcement (`direction-cleanup-clobbers`).
    pub egress_clobbered: Vec<usize>,
}

struct Installer {
    node: String,
    faults: Faults,
    installed: nft::Ruleset,
    lag: Lag,
}

impl Installer {
    /// The rules for `state` as they stand at `now`, with the pods still in their unprotected
    /// grace left out.
    fn target(&self, state: &State, now: Instant) -> nft::Ruleset {
        if self.lag.in_gap(now) {
            return base(&self.faults);
        }
        let deny = if self.faults.filters_denies() {
            nft::DenyVerdict::Filtered
        } else if self.faults.rejects_denies() {
            nft::DenyVerdict::Reject
        } else {
            nft::DenyVerdict::Drop
        };
        let mut ruleset = nft::compile(
            &state.cluster,
            &state.policies,
            &state.cluster_policies,
            nft::Dialect {
                deny,
                catch_all_skips_node_ports: self.faults.has(Fault::NodePortAllowAllBroken),
                service_named_ports_anywhere: self.faults.has(Fault::ServiceNamedTargetportBypass),
            },
            &SlotTable {
                slots: state.slots.clone(),
                families: state.families,
            },
        );
        let base = base(&self.faults);
        ruleset.stateless = base.stateless;
        ruleset.before_conntrack = base.before_conntrack;
        ruleset.unfiltered = base.unfiltered;
        ruleset.dropped = base.dropped;
        if self.faults.has(Fault::NodeEgressUnfiltered) {
            ruleset.node_dispatch.clear();
        }
        if self.faults.has(Fault::ServiceHairpinExempt) {
            // A pod's packets that come back to it through the node are its hairpin through
            // its Service (its own IP never leaves it): passed, as if they never left its socket.
            for slot in &state.slots {
                let veth = nft::veth_name(*slot);
                ruleset
                    .unfiltered
                    .push(format!("iifname \"{veth}\" oifname \"{veth}\""));
            }
        }
        for slot in &state.infrastructure {
            ruleset = ruleset.without_pod(*slot);
        }
        for slot in &state.egress_clobbered {
            ruleset = ruleset.without_direction(*slot, Direction::Egress);
        }
        for (slot, created) in state.slots.iter().zip(&state.created) {
            if self.lag.unprotected(*created, now) {
                ruleset = ruleset.without_pod(*slot);
            }
        }
        ruleset
    }

    async fn install(&mut self, target: nft::Ruleset) -> Result<(), BackendError> {
        if let Some(transaction) = nft::update(&self.installed, &target) {
            host::nft(&self.node, &transaction).await?;
            self.installed = target;
        }
        Ok(())
    }
}

/// The rules that depend on the faults alone: no policy in them.
fn base(faults: &Faults) -> nft::Ruleset {
    let mut unfiltered = Vec::new();
    if faults.has(Fault::ServiceTrafficUnfiltered) {
        unfiltered.push("ct status dnat".to_string());
    }
    if faults.has(Fault::Ipv6Unfiltered) {
        unfiltered.push("meta nfproto ipv6".to_string());
    }
    if faults.has(Fault::NodePortUnfiltered) {
        unfiltered.push(format!("ct original ip daddr {}", super::proxy::NODE_V4));
        unfiltered.push(format!("ct original ip6 daddr {}", super::proxy::NODE_V6));
    }
    let mut dropped = Vec::new();
    // An overflowing queue: new connections beyond its rate skip the policy, accepted (fail-open)
    // or dropped (fail-closed), before any policy chain sees them.
    if let Some(queue) = faults.queue_overflow {
        let over = format!(
            "ct state new limit rate over {}/second burst {} packets",
            queue.rate,
            queue.burst()
        );
        if queue.fail_open {
            unfiltered.insert(0, over);
        } else {
            dropped.push(over);
        }
    }
    if faults.has(Fault::DnsEgressBlocked) {
        // At both of the DNS pod's possible addresses: the rule is harmless where one is unused.
        let v4 = std::net::IpAddr::V4(super::DNS_V4);
        for ip in crate::model::IpFamilies::Dual.addresses(v4) {
            let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
            dropped.push(format!(
                "{fam} daddr {ip} meta l4proto {{ tcp, udp }} th dport 53"
            ));
        }
    }
    let mut before_conntrack = Vec::new();
    if faults.has(Fault::UdpRepliesDropped) {
        // Replies of UDP flows, whatever the policies allowed; TCP's are untouched.
        before_conntrack.push("meta l4proto udp ct direction reply drop".to_string());
    }
    nft::Ruleset {
        stateless: faults.has(Fault::Stateless),
        before_conntrack,
        unfiltered,
        dropped,
        ..nft::Ruleset::default()
    }
}

#[derive(Default)]
struct Queue {
    /// States not yet superseded, oldest first.
    states: VecDeque<State>,
    /// The worker's last failure, reported by the next `program` call.
    error: Option<String>,
}

/// Installs states now, or through the lagging worker.
pub(super) struct Programmer(Mode);

enum Mode {
    Now(Box<Installer>),
    Lagged {
        queue: Arc<Mutex<Queue>>,
        wake: Arc<Notify>,
        worker: JoinHandle<()>,
    },
}

impl Programmer {
    /// Installs the empty table's rules, then programs now or through a worker.
    pub(super) async fn start(node: String, faults: Faults) -> Result<Programmer, BackendError> {
        let empty = base(&faults);
        host::nft(&node, &nft::install(&empty)).await?;
        let lags = faults.lags();
        let installer = Installer {
            node,
            faults: faults.clone(),
            installed: empty,
            lag: Lag::new(&faults, Instant::now()),
        };
        if !lags {
            return Ok(Programmer(Mode::Now(Box::new(installer))));
        }
        let queue = Arc::new(Mutex::new(Queue::default()));
        let wake = Arc::new(Notify::new());
        let worker = tokio::spawn(lagging(installer, queue.clone(), wake.clone()));
        Ok(Programmer(Mode::Lagged {
            queue,
            wake,
            worker,
        }))
    }

    /// The cluster reached `state`: install it now, or hand it to the worker.
    pub(super) async fn program(&mut self, state: State) -> Result<(), BackendError> {
        match &mut self.0 {
            Mode::Now(installer) => {
                let target = installer.target(&state, state.at);
                installer.install(target).await
            }
            Mode::Lagged { queue, wake, .. } => {
                let error = {
                    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                    queue.states.push_back(state);
                    queue.error.take()
                };
                wake.notify_one();
                match error {
                    Some(message) => Err(BackendError::Command {
                        command: "nft -f - (lagged dataplane)".into(),
                        message,
                    }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Stops the worker, so nothing is installed into a namespace being deleted.
    pub(super) async fn stop(&mut self) {
        if let Mode::Lagged { worker, .. } = &mut self.0 {
            worker.abort();
            let _ = worker.await;
        }
    }
}

impl Drop for Programmer {
    fn drop(&mut self) {
        if let Mode::Lagged { worker, .. } = &mut self.0 {
            worker.abort();
        }
    }
}

/// The worker: installs, at every moment, the newest state that is at least `delay` old.
async fn lagging(mut installer: Installer, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    let lag = installer.lag;
    loop {
        let now = Instant::now();
        let (target, next) = {
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(newest_due) = lag.in_effect(queue.states.iter().map(|s| s.at), now) {
                queue.states.drain(..newest_due);
            }
            let due = queue.states.front().filter(|s| lag.due(s.at) <= now);
            let target = due.map(|state| installer.target(state, now));
            // Next wake-up: the next state falling due, or a pod's grace ending.
            let pending = queue
                .states
                .iter()
                .map(|s| lag.due(s.at))
                .filter(|at| *at > now);
            let graces = due
                .into_iter()
                .flat_map(|s| s.created.iter().map(|c| lag.protected_from(*c)))
                .filter(|at| *at > now);
            let flip = lag.next_flip(now);
            (target, pending.chain(graces).chain(flip).min())
        };
        if let Some(target) = target
            && let Err(e) = installer.install(target).await
        {
            queue.lock().unwrap_or_else(|e| e.into_inner()).error = Some(e.to_string());
        }
        let next = next.unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
        }
    }
}
