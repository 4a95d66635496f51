//! The faults with a history: what a dataplane enforces depends on what it saw before, not on the
//! state alone. One `History` per dataplane takes each state in turn and gives what that
//! dataplane enforces; both of polygraph's dataplanes (nftables and the simulation) use it, so the
//! two can only differ in how they enforce, never in what.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{EgressClobber, Fault, Faults, StaleIdentities};
use crate::model::{Cluster, Family, IpFamilies, PodRef};
use crate::policy::{Direction, Peer, Policy};

/// A state as the faulty dataplane enforces it.
#[derive(Debug, Clone)]
pub struct Enforced {
    /// The cluster as the dataplane sees it (`reused-ip-stale`: old labels on reused addresses).
    pub cluster: Cluster,
    /// The policies as it understands them: every policy fault applied.
    pub policies: Vec<Policy>,
    /// `direction-cleanup-clobbers`: pods left without egress enforcement.
    pub egress_clobbered: BTreeSet<PodRef>,
}

/// Everything the history faults remember.
#[derive(Debug, Clone, Default)]
pub struct History {
    clobber: EgressClobber,
    stale: StaleIdentities,
    recreated: Recreated,
    frozen: FrozenIpv6,
}

impl History {
    /// The next state (`cluster` with every pod at its model address, `policies` as the API has
    /// them, on a cluster of `families`), as the dataplane with `faults` enforces it.
    pub fn enforce(
        &mut self,
        faults: &Faults,
        families: IpFamilies,
        cluster: &Cluster,
        policies: &[Policy],
    ) -> Enforced {
        let cluster = if faults.has(Fault::ReusedIpStale) {
            self.stale.update(cluster)
        } else {
            cluster.clone()
        };
        let mut policies = faults.distort_in(policies, &cluster);
        let dual = families.families().len() > 1;
        if faults.has(Fault::RecreatedPodIpv4Missing) {
            let recreated = self.recreated.update(&cluster);
            // The bug is a dual-stack one: a single-stack pod's one address is never missed.
            if dual {
                let missing: BTreeSet<IpAddr> = cluster
                    .pods()
                    .iter()
                    .filter(|pod| recreated.contains(&pod.key()))
                    .flat_map(|pod| families.addresses(pod.ip))
                    .filter(|ip| ip.is_ipv4())
                    .collect();
                if !missing.is_empty() {
                    policies = without_addresses(&policies, &cluster, |ip| missing.contains(ip));
                }
            }
        }
        if faults.has(Fault::Ipv6SetsFrozen) && families.families().contains(&Family::V6) {
            policies = self.frozen.update(&cluster, &policies);
        }
        let egress_clobbered = if faults.has(Fault::DirectionCleanupClobbers) {
            self.clobber.update(&cluster, &policies)
        } else {
            BTreeSet::new()
        };
        Enforced {
            cluster,
            policies,
            egress_clobbered,
        }
    }
}

/// The addresses, both families, a selector peer holds in `cluster`: what a CNI's address set for
/// it holds, as ipBlocks of one address each, minus those `dropped` says.
pub(super) fn selector_as_addresses(
    peer: &Peer,
    cluster: &Cluster,
    namespace: &str,
    dropped: impl Fn(&IpAddr) -> bool,
) -> Vec<Peer> {
    cluster
        .pods()
        .iter()
        .filter(|pod| peer.matches(cluster, namespace, pod))
        .flat_map(|pod| IpFamilies::Dual.addresses(pod.ip))
        .filter(|ip| !dropped(ip))
        .map(|ip| Peer::IpBlock {
            cidr: ipnet::IpNet::from(ip),
            except: Vec::new(),
        })
        .collect()
}

/// The policies with the addresses `missing` says left out of every selector's set (selectors
/// that hold none of them are left as they are).
fn without_addresses(
    policies: &[Policy],
    cluster: &Cluster,
    missing: impl Fn(&IpAddr) -> bool + Copy,
) -> Vec<Policy> {
    let mut policies = policies.to_vec();
    for policy in &mut policies {
        let namespace = policy.namespace.clone();
        for peers in policy.rules_mut().filter_map(|r| r.peers.as_mut()) {
            *peers = peers
                .iter()
                .flat_map(|peer| {
                    if !matches!(peer, Peer::Pods { .. }) {
                        return vec![peer.clone()];
                    }
                    let held = selector_as_addresses(peer, cluster, &namespace, |_| false);
                    let misses =
                        |p: &Peer| matches!(p, Peer::IpBlock { cidr, .. } if missing(&cidr.addr()));
                    if held.iter().any(misses) {
                        held.into_iter().filter(|p| !misses(p)).collect()
                    } else {
                        vec![peer.clone()]
                    }
                })
                .collect();
        }
    }
    policies
}

/// `recreated-pod-ipv4-missing`: the pods that were deleted and created again under the same
/// name (k3s #10053: such a pod's IPv4 address never joins the sets).
#[derive(Debug, Clone, Default)]
struct Recreated {
    present: BTreeSet<PodRef>,
    gone: BTreeSet<PodRef>,
    recreated: BTreeSet<PodRef>,
}

impl Recreated {
    fn update(&mut self, cluster: &Cluster) -> BTreeSet<PodRef> {
        let now: BTreeSet<PodRef> = cluster.pods().iter().map(|p| p.key()).collect();
        self.gone.extend(self.present.difference(&now).cloned());
        for pod in now.difference(&self.present) {
            if self.gone.remove(pod) {
                self.recreated.insert(pod.clone());
            }
        }
        self.present = now;
        self.recreated
            .iter()
            .filter(|p| self.present.contains(*p))
            .cloned()
            .collect()
    }
}

/// `ipv6-sets-frozen`: each selector's IPv6 addresses as first written (kube-router #1927: the
/// IPv6 sets stop updating after that). Keyed by the policy, the direction, the rule and the
/// peer.
#[derive(Debug, Clone, Default)]
struct FrozenIpv6 {
    sets: BTreeMap<(String, Direction, usize, usize), Vec<IpAddr>>,
}

impl FrozenIpv6 {
    fn update(&mut self, cluster: &Cluster, policies: &[Policy]) -> Vec<Policy> {
        let mut policies = policies.to_vec();
        for policy in &mut policies {
            let key = policy.key();
            let namespace = policy.namespace.clone();
            for (direction, rules) in [
                (Direction::Ingress, policy.ingress.as_mut()),
                (Direction::Egress, policy.egress.as_mut()),
            ] {
                let Some(rules) = rules else { continue };
                for (r, rule) in rules.iter_mut().enumerate() {
                    let Some(peers) = rule.peers.as_mut() else {
                        continue;
                    };
                    let mut frozen = Vec::new();
                    for (p, peer) in peers.iter().enumerate() {
                        if !matches!(peer, Peer::Pods { .. }) {
                            frozen.push(peer.clone());
                            continue;
                        }
                        // IPv4 as the selector holds it now; IPv6 as it held it first.
                        frozen.extend(selector_as_addresses(peer, cluster, &namespace, |ip| {
                            ip.is_ipv6()
                        }));
                        let v6 = self
                            .sets
                            .entry((key.clone(), direction, r, p))
                            .or_insert_with(|| {
                                selector_as_addresses(peer, cluster, &namespace, |ip| ip.is_ipv4())
                                    .into_iter()
                                    .filter_map(|peer| match peer {
                                        Peer::IpBlock { cidr, .. } => Some(cidr.addr()),
                                        Peer::Pods { .. } => None,
                                    })
                                    .collect()
                            });
                        frozen.extend(v6.iter().map(|ip| Peer::IpBlock {
                            cidr: ipnet::IpNet::from(*ip),
                            except: Vec::new(),
                        }));
                    }
                    *peers = frozen;
                }
            }
        }
        // A deleted policy's sets go with it: one created again under its name starts afresh.
        let live: BTreeSet<String> = policies.iter().map(Policy::key).collect();
        self.sets.retain(|(key, ..), _| live.contains(key));
        policies
    }
}
