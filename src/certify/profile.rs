//! The built-in conformance profiles: which scenarios each level of each profile runs, by tag,
//! and what a feature must show beyond its cells.
//!
//! A scenario belongs to a profile by its API (`cluster-network-policy` / `admin-network-policy`
//! tags: the cluster-scoped one; none: NetworkPolicy). Within a profile it belongs to every
//! optional feature one of its tags names; only a scenario no optional feature claims is a test of
//! the core (or standard) level. So a scenario using `endPort` tests `EndPort`, never the core: a
//! CNI without `endPort` support still passes the core, as the API's own conformance says it may.

use crate::model::Protocol;
use crate::scenario::Scenario;

/// One of the profiles `polygraph certify` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ProfileName {
    #[value(name = "NetworkPolicy")]
    NetworkPolicy,
    #[value(name = "ClusterNetworkPolicy")]
    ClusterNetworkPolicy,
    #[value(name = "Timing")]
    Timing,
}

impl ProfileName {
    pub const ALL: [ProfileName; 3] = [
        ProfileName::NetworkPolicy,
        ProfileName::ClusterNetworkPolicy,
        ProfileName::Timing,
    ];

    pub fn profile(self) -> &'static Profile {
        match self {
            ProfileName::NetworkPolicy => &NETWORK_POLICY,
            ProfileName::ClusterNetworkPolicy => &CLUSTER_NETWORK_POLICY,
            ProfileName::Timing => &TIMING,
        }
    }
}

/// What a feature must show beyond passing its scenarios' cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// Its scenarios pass: every cell as the spec says (within the step deadline).
    Cells,
    /// Every cell a step changed converged within the latency bound (`--max-latency`).
    Latency,
    /// No forbidden traffic to or from a pod after it was created.
    NewPodProtected,
    /// No cell changed its answer within the stability window after it converged.
    Stable,
}

/// A named set of scenarios (an optional feature: those with any of `tags`; a criterion of the
/// mandatory level: every scenario in the profile's scope), judged by `criterion`.
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    pub description: &'static str,
    pub tags: &'static [&'static str],
    pub criterion: Criterion,
    /// A feature about one protocol is supported only where a cell of it was judged: a scenario
    /// passing on its TCP cells while its SCTP ones were unsupported does not show SCTP works.
    pub protocol: Option<Protocol>,
}

impl Feature {
    /// Whether the scenario is one of this optional feature's (has one of its tags).
    pub fn covers(&self, scenario: &Scenario) -> bool {
        self.tags.iter().any(|t| has_tag(scenario, t))
    }
}

/// Which scenarios a profile draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Scenarios of NetworkPolicy alone.
    NetworkPolicy,
    /// Scenarios using a cluster-scoped kind.
    ClusterPolicies,
    /// The NetworkPolicy core scenarios that change something after the start (timing needs a
    /// change to time).
    NetworkPolicyChanges,
}

#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    pub summary: &'static str,
    /// What the mandatory and optional levels are called (network-policy-api says standard and
    /// experimental; Gateway API and NetworkPolicy core and extended).
    pub levels: (&'static str, &'static str),
    pub scope: Scope,
    /// The mandatory level's criteria. Empty: one test per scenario, judged by its cells.
    pub core: &'static [Feature],
    /// The optional features, each supported or not.
    pub extended: &'static [Feature],
}

const CLUSTER_TAGS: [&str; 2] = ["cluster-network-policy", "admin-network-policy"];

impl Profile {
    /// Whether the scenario is one this profile draws from.
    pub fn in_scope(&self, scenario: &Scenario) -> bool {
        let cluster = scenario
            .tags
            .iter()
            .any(|t| CLUSTER_TAGS.contains(&t.as_str()));
        match self.scope {
            Scope::NetworkPolicy => !cluster,
            Scope::ClusterPolicies => cluster,
            Scope::NetworkPolicyChanges => {
                !cluster
                    && self.features_of(scenario, &NETWORK_POLICY).is_empty()
                    && has_tag(scenario, "core")
                    && (has_tag(scenario, "multi-step") || has_tag(scenario, "new-pod"))
            }
        }
    }

    /// The optional features of `profile` the scenario tests.
    fn features_of(&self, scenario: &Scenario, profile: &'static Profile) -> Vec<&'static Feature> {
        profile
            .extended
            .iter()
            .filter(|f| f.covers(scenario))
            .collect()
    }

    /// The optional features the scenario tests (none: it is a core test), when in scope.
    pub fn extended_features(&'static self, scenario: &Scenario) -> Vec<&'static Feature> {
        if !self.in_scope(scenario) {
            return Vec::new();
        }
        self.features_of(scenario, self)
    }

    /// Whether the scenario is a test of the mandatory level.
    pub fn is_core(&'static self, scenario: &Scenario) -> bool {
        self.in_scope(scenario) && self.extended_features(scenario).is_empty()
    }
}

fn has_tag(scenario: &Scenario, tag: &str) -> bool {
    scenario.tags.iter().any(|t| t == tag)
}

const fn cells(
    name: &'static str,
    description: &'static str,
    tags: &'static [&'static str],
) -> Feature {
    Feature {
        name,
        description,
        tags,
        criterion: Criterion::Cells,
        protocol: None,
    }
}

/// A feature about one protocol (`Feature::protocol`).
const fn protocol_cells(
    name: &'static str,
    description: &'static str,
    tags: &'static [&'static str],
    protocol: Protocol,
) -> Feature {
    Feature {
        protocol: Some(protocol),
        ..cells(name, description, tags)
    }
}

pub static NETWORK_POLICY: Profile = Profile {
    name: "NetworkPolicy",
    summary: "networking.k8s.io/v1 NetworkPolicy: selectors, ports, ingress and egress, default deny, changes over time",
    levels: ("core", "extended"),
    scope: Scope::NetworkPolicy,
    core: &[],
    extended: &[
        protocol_cells("SCTP", "rules on SCTP ports", &["sctp"], Protocol::Sctp),
        cells("EndPort", "port ranges (endPort)", &["end-port"]),
        cells(
            "NamedPorts",
            "ports by container port name",
            &["named-ports"],
        ),
        cells("IPBlockExcept", "ipBlock with except", &["ip-block-except"]),
        cells(
            "ServiceClusterIP",
            "policies hold for traffic through a Service's ClusterIP (DNAT before the policy)",
            &["service"],
        ),
        cells(
            "ServiceName",
            "policies hold for traffic to a Service by name, through the cluster's DNS",
            &["service-name"],
        ),
        cells(
            "NodePort",
            "ingress through a NodePort from outside the cluster",
            &["node-port"],
        ),
        cells("DualStack", "IPv4 and IPv6 alike", &["dual-stack"]),
        cells(
            "EgressToDNS",
            "default-deny egress stops names resolving; allowing DNS alone restores them",
            &["dns"],
        ),
        cells(
            "ExternalEgress",
            "egress to hosts outside the cluster by ipBlock",
            &["external"],
        ),
        cells(
            "NodeTraffic",
            "traffic to and from the node and host-network pods",
            &["node", "host-network"],
        ),
        cells(
            "PodChurn",
            "a deleted pod's address reused by another: its policies follow the pod, not the address",
            &["pod-churn"],
        ),
    ],
};

pub static CLUSTER_NETWORK_POLICY: Profile = Profile {
    name: "ClusterNetworkPolicy",
    summary: "policy.networking.k8s.io ClusterNetworkPolicy (v1alpha2, v1beta1): admin and baseline tiers, priorities, Pass, Deny",
    levels: ("standard", "experimental"),
    scope: Scope::ClusterPolicies,
    core: &[],
    extended: &[
        cells(
            "ClusterNetworkPolicyNamedPorts",
            "ports by container port name in cluster policies",
            &["cnp-named-ports"],
        ),
        cells(
            "ClusterNetworkPolicyEgressNodePeers",
            "egress rules to nodes (nodes peers)",
            &["cnp-nodes"],
        ),
        cells(
            "ClusterNetworkPolicyEgressInlineCIDRPeers",
            "egress rules to CIDRs (networks peers)",
            &["cnp-networks"],
        ),
        cells(
            "ClusterNetworkPolicyServiceHairpin",
            "a pod's traffic to itself through its Service, subject to cluster policies",
            &["cnp-hairpin"],
        ),
        protocol_cells(
            "ClusterNetworkPolicySCTP",
            "rules on SCTP ports in cluster policies (UDP is in every scenario's cells)",
            &["cnp-protocols"],
            Protocol::Sctp,
        ),
        cells(
            "AdminNetworkPolicyV1Alpha1",
            "the older AdminNetworkPolicy and BaselineAdminNetworkPolicy pair (v1alpha1)",
            &["admin-network-policy"],
        ),
    ],
};

pub static TIMING: Profile = Profile {
    name: "Timing",
    summary: "how fast and how steadily policies take effect: latency, new pods, stability",
    levels: ("core", "extended"),
    scope: Scope::NetworkPolicyChanges,
    core: &[
        Feature {
            name: "EnforcementLatency",
            description: "every cell a change affects converges within the latency bound",
            tags: &[],
            criterion: Criterion::Latency,
            protocol: None,
        },
        Feature {
            name: "NewPodProtection",
            description: "a new pod is protected from its first packet: no forbidden traffic after it was created",
            tags: &[],
            criterion: Criterion::NewPodProtected,
            protocol: None,
        },
        Feature {
            name: "Stability",
            description: "no cell changes its answer within the stability window after it converged",
            tags: &[],
            criterion: Criterion::Stable,
            protocol: None,
        },
    ],
    extended: &[],
};

/// The library's scenarios the profiles draw from, each once, in the library's order.
pub fn scenarios_for(profiles: &[ProfileName], library: Vec<Scenario>) -> Vec<Scenario> {
    library
        .into_iter()
        .filter(|s| profiles.iter().any(|p| p.profile().in_scope(s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::library;

    #[test]
    fn every_library_scenario_is_a_test_of_some_profile() {
        for scenario in library::load_all().expect("the library loads") {
            let tested = ProfileName::ALL.iter().any(|p| {
                let profile = p.profile();
                profile.in_scope(&scenario)
                    && (!profile.extended_features(&scenario).is_empty()
                        || has_tag(&scenario, "core")
                        || profile.scope == Scope::ClusterPolicies)
            });
            assert!(tested, "{} is in no profile", scenario.name);
            // An `extended` NetworkPolicy scenario must test an optional feature: otherwise it
            // would count against the core.
            if NETWORK_POLICY.in_scope(&scenario) && has_tag(&scenario, "extended") {
                assert!(
                    !NETWORK_POLICY.extended_features(&scenario).is_empty(),
                    "{} is extended but tests no NetworkPolicy feature",
                    scenario.name
                );
            }
        }
    }

    #[test]
    fn a_scenario_using_an_optional_feature_is_not_a_core_test() {
        let library = library::load_all().expect("the library loads");
        let named = |name: &str| {
            library
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} is in the library"))
        };
        // seed-api-policy is a core seed, but it uses endPort.
        let api = named("seed-api-policy");
        assert!(!NETWORK_POLICY.is_core(api));
        let features: Vec<_> = NETWORK_POLICY
            .extended_features(api)
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(features, ["EndPort"]);
        assert!(NETWORK_POLICY.is_core(named("deny-all-ingress")));
        assert!(!NETWORK_POLICY.in_scope(named("cnp-named-ports")));
        assert!(CLUSTER_NETWORK_POLICY.is_core(named("cnp-priority-order")));
        assert!(TIMING.in_scope(named("policy-updated")));
        assert!(
            !TIMING.in_scope(named("deny-all-ingress")),
            "nothing changes"
        );
        assert!(
            !TIMING.in_scope(named("end-port-range")),
            "an optional feature"
        );
    }
}
