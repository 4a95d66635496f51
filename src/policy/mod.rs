//! Policies: reading, validating as the API server does, defaulting, compiling, and the oracle.
//!
//! Two families share one input path: namespaced NetworkPolicy (`compiled`) and the cluster-scoped
//! tiers, ClusterNetworkPolicy and its v1alpha1 predecessors (`cluster`). `tiers` is the one
//! place their precedence is written down; the oracle and the local dataplane both follow it.

mod cidr;
pub mod cluster;
mod compiled;
mod error;
mod explain;
mod load;
mod oracle;
mod selector;
pub mod tiers;
mod validate;

pub use cluster::{Action, ClusterKind, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
pub use compiled::{Direction, NamespaceScope, Peer, Policy, PortMatch, Rule};
pub use error::{InvalidPolicy, PolicyError};
pub use explain::{
    CellExplanation, Decider, DirectionExplanation, RuleExplanation, RuleResult, TierStep,
};
pub use load::{compile_document, load_policies, parse_policies};
pub use oracle::{Oracle, PolicyId};
pub use selector::{Operator, Requirement, Selector};
pub use validate::validate;

/// One compiled object of either family.
// Produced once per object read, never in a hot path: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyPolicy {
    Network(Policy),
    Cluster(ClusterPolicy),
}

/// Policies of both families, each in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySet {
    pub network: Vec<Policy>,
    pub cluster: Vec<ClusterPolicy>,
}

impl PolicySet {
    pub fn is_empty(&self) -> bool {
        self.network.is_empty() && self.cluster.is_empty()
    }

    pub fn len(&self) -> usize {
        self.network.len() + self.cluster.len()
    }
}

impl Extend<AnyPolicy> for PolicySet {
    fn extend<I: IntoIterator<Item = AnyPolicy>>(&mut self, iter: I) {
        for policy in iter {
            match policy {
                AnyPolicy::Network(p) => self.network.push(p),
                AnyPolicy::Cluster(p) => self.cluster.push(p),
            }
        }
    }
}

impl FromIterator<AnyPolicy> for PolicySet {
    fn from_iter<I: IntoIterator<Item = AnyPolicy>>(iter: I) -> Self {
        let mut set = PolicySet::default();
        set.extend(iter);
        set
    }
}
