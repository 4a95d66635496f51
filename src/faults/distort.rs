//! The policy faults: the policies as a CNI that misreads them enforces them. `distort` needs
//! the policies alone; `distort_in` adds the faults that need the pods; the free functions are the
//! policies a route's own faults apply (a Service's, a NodePort's).

use std::collections::BTreeSet;

use super::{Fault, Faults, history};
use crate::model::Protocol;
use crate::policy::{NamespaceScope, Peer, Policy, PortMatch, Rule, Selector};

impl Faults {
    /// The policies as the faulty CNI understands them, in `cluster`: the faults that depend on
    /// the pods (`ipblock-misses-pods`, the named-port ones) need it.
    pub fn distort_in(&self, policies: &[Policy], cluster: &crate::model::Cluster) -> Vec<Policy> {
        let mut distorted = self.distort(policies);
        if self.has(Fault::ExceptSpillsToPeers) {
            for policy in &mut distorted {
                let namespace = policy.namespace.clone();
                for peers in policy.rules_mut().filter_map(|r| r.peers.as_mut()) {
                    *peers = spill_excepts(peers, cluster, &namespace);
                }
            }
        }
        if self.has(Fault::HostNetworkAsPod) {
            distorted = host_network_as_pod(distorted, cluster);
        }
        if self.misresolves_names() {
            for policy in &mut distorted {
                for ports in policy.rules_mut().filter_map(|r| r.ports.as_mut()) {
                    *ports = ports
                        .drain(..)
                        .flat_map(|port| match &port {
                            PortMatch::Named { protocol, name } => {
                                let numbers = self.resolve_everywhere(cluster, |pod| {
                                    pod.named_port(name, *protocol).map(|n| (n, *protocol))
                                });
                                as_ranges(numbers, port, |protocol, n| PortMatch::Range {
                                    protocol,
                                    start: n,
                                    end: n,
                                })
                            }
                            _ => vec![port],
                        })
                        .collect();
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
                for peer in policy
                    .rules_mut()
                    .flat_map(|r| r.peers.iter_mut().flatten())
                {
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
        for peers in policy.rules_mut().filter_map(|r| r.peers.as_mut()) {
            peers.retain(|p| !matches!(p, Peer::IpBlock { cidr, .. } if cidr.prefix_len() == 0));
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

/// What a named port becomes under the named-port faults: one single-port range per (number,
/// protocol) `found` for it (`range` builds it), or the port as it was where no pod has the name.
pub(super) fn as_ranges<T>(
    found: Vec<(u16, Protocol)>,
    original: T,
    range: impl Fn(Protocol, u16) -> T,
) -> Vec<T> {
    if found.is_empty() {
        return vec![original];
    }
    found
        .into_iter()
        .map(|(number, protocol)| range(protocol, number))
        .collect()
}

/// `host-network-as-pod`: a selector peer that would match a host-network pod if it were a pod
/// holds that pod's address, the node's (both families), as a CNI's address set built from pod
/// IPs does.
fn host_network_as_pod(mut policies: Vec<Policy>, cluster: &crate::model::Cluster) -> Vec<Policy> {
    let hosts: Vec<crate::model::PodId> = cluster.host_network().collect();
    if hosts.is_empty() {
        return policies;
    }
    let as_pods = cluster.with_host_network_as_pods();
    for policy in &mut policies {
        let namespace = policy.namespace.clone();
        for peers in policy.rules_mut().filter_map(|r| r.peers.as_mut()) {
            let node: BTreeSet<std::net::IpAddr> = hosts
                .iter()
                .map(|&id| as_pods.pod(id))
                .filter(|pod| {
                    peers.iter().any(|peer| {
                        matches!(peer, Peer::Pods { .. }) && peer.matches(&as_pods, &namespace, pod)
                    })
                })
                .flat_map(|pod| crate::model::IpFamilies::Dual.addresses(pod.ip))
                .collect();
            peers.extend(node.into_iter().map(|ip| Peer::IpBlock {
                cidr: ipnet::IpNet::from(ip),
                except: Vec::new(),
            }));
        }
    }
    policies
}
