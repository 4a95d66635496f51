//! The cluster-tier faults, as distortions of compiled cluster policies: what an implementation
//! that misreads ClusterNetworkPolicy (or ANP/BANP) enforces instead. The NetworkPolicy faults
//! that have a meaning here (protocols retargeted, named ports unresolved, a direction ignored)
//! apply too.

use super::{Fault, Faults};
use crate::model::{Cluster, Protocol};
use crate::policy::cluster::ProtocolMatch;
use crate::policy::{Action, ClusterPeer, ClusterPolicy, Tier};

/// The highest priority value, for `priority-inverted`.
const PRIORITY_MAX: u32 = 1000;

impl Faults {
    /// Cluster policies as the faulty implementation understands them, in `cluster` (where the
    /// named-port faults resolve names).
    pub fn distort_cluster(
        &self,
        policies: &[ClusterPolicy],
        cluster: &Cluster,
    ) -> Vec<ClusterPolicy> {
        policies
            .iter()
            .filter(|p| match p.tier {
                Tier::Admin => !self.has(Fault::AdminIgnored),
                Tier::Baseline => !self.has(Fault::BaselineIgnored),
            })
            .map(|p| self.distort_cluster_policy(p, cluster))
            .collect()
    }

    fn distort_cluster_policy(&self, policy: &ClusterPolicy, cluster: &Cluster) -> ClusterPolicy {
        let mut policy = policy.clone();
        if self.has(Fault::PriorityInverted) {
            policy.priority = PRIORITY_MAX.saturating_sub(policy.priority);
        }
        if self.has(Fault::EgressIgnored) {
            policy.egress.clear();
        }
        if self.has(Fault::IngressIgnored) {
            policy.ingress.clear();
        }
        for rules in [&mut policy.ingress, &mut policy.egress] {
            if self.has(Fault::RuleOrderIgnored) {
                rules.reverse();
            }
            for rule in rules.iter_mut() {
                if rule.action == Action::Pass {
                    if self.has(Fault::PassAsAccept) {
                        rule.action = Action::Accept;
                    } else if self.has(Fault::PassAsDeny) {
                        rule.action = Action::Deny;
                    }
                }
                if self.has(Fault::NetworksSkipPods) {
                    // The model's addresses are all pods': a networks peer then matches none.
                    for peer in &mut rule.peers {
                        if let ClusterPeer::Networks(nets) = peer {
                            nets.clear();
                        }
                    }
                }
                if let Some(protocols) = &mut rule.protocols
                    && self.misresolves_names()
                {
                    // `destinationNamedPort` names a container port of either protocol.
                    *protocols = protocols
                        .drain(..)
                        .flat_map(|p| match &p {
                            ProtocolMatch::Named(name) => {
                                let found = self.resolve_everywhere(cluster, |pod| {
                                    pod.ports
                                        .iter()
                                        .find(|c| c.name.as_deref() == Some(name.as_str()))
                                        .map(|c| (c.port, c.protocol))
                                });
                                super::distort::as_ranges(found, p, |protocol, n| {
                                    ProtocolMatch::Range {
                                        protocol,
                                        start: n,
                                        end: n,
                                    }
                                })
                            }
                            _ => vec![p],
                        })
                        .collect();
                }
                if let Some(protocols) = &mut rule.protocols {
                    protocols.retain(|p| {
                        !(self.has(Fault::NamedPortsUnresolved)
                            && matches!(p, ProtocolMatch::Named(_)))
                    });
                    for p in protocols.iter_mut() {
                        if let ProtocolMatch::Range { protocol, .. } = p {
                            *protocol = match *protocol {
                                Protocol::Udp if self.has(Fault::UdpAsTcp) => Protocol::Tcp,
                                Protocol::Sctp if self.has(Fault::SctpAsTcp) => Protocol::Tcp,
                                other => other,
                            };
                        }
                    }
                }
            }
        }
        policy
    }
}
