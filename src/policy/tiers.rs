//! The precedence of the cluster-scoped tiers, written once: Admin (priority, then rule order) →
//! NetworkPolicy → Baseline → default allow, per direction. The oracle's index, its direct
//! explanation and the local dataplane's nftables chains all follow this file.
//!
//! Possibilities, not answers: the spec lets an implementation apply *any* of several matching
//! policies of equal priority, and a `domainNames` peer matches whatever DNS says. So evaluation
//! tracks what is *possible* for a connection (allowed, denied); when both are, the cell is
//! undefined and never failed.

use super::cluster::{Action, ClusterPolicy};
use super::compiled::Direction;
use crate::model::{Cluster, Pod, PortProtocol};

/// Indices of `policies` in evaluation order: tier, priority, then a stable tie-break (kind and
/// name) so that input order never matters. Ties in priority stay adjacent: see `groups`.
pub fn ordered(policies: &[ClusterPolicy]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..policies.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&policies[a], &policies[b]);
        (pa.tier, pa.priority, pa.kind.as_str(), &pa.name).cmp(&(
            pb.tier,
            pb.priority,
            pb.kind.as_str(),
            &pb.name,
        ))
    });
    order
}

/// `order` (from `ordered`, possibly filtered) split into runs of one tier and one priority.
pub fn groups<'a>(policies: &[ClusterPolicy], order: &'a [usize]) -> Vec<&'a [usize]> {
    order
        .chunk_by(|&a, &b| {
            (policies[a].tier, policies[a].priority) == (policies[b].tier, policies[b].priority)
        })
        .collect()
}

/// What one policy says about one connection in one direction: the first rule that certainly
/// matches, and before it any rule that might (a `domainNames` peer, which needs DNS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyMatch {
    pub decided: Option<(usize, Action)>,
    pub maybe: Vec<(usize, Action)>,
}

/// Walks `policy`'s rules for `direction` in order. `remote` is the other end of the connection,
/// `dst` the destination (where named ports resolve).
pub fn first_match(
    cluster: &Cluster,
    policy: &ClusterPolicy,
    direction: Direction,
    remote: &Pod,
    dst: &Pod,
    pp: PortProtocol,
) -> PolicyMatch {
    let mut result = PolicyMatch::default();
    for (index, rule) in policy.rules(direction).iter().enumerate() {
        if !rule.protocol_matches(dst, pp) {
            continue;
        }
        if rule.peer_matches(cluster, remote) {
            result.decided = Some((index, rule.action));
            break;
        }
        if rule.has_domain_names() {
            result.maybe.push((index, rule.action));
        }
    }
    result
}

/// The possible results of evaluating a direction so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Possible {
    pub allow: bool,
    pub deny: bool,
    /// Some possible denial is a cluster policy's `Deny`, which must be a silent drop.
    pub cluster_deny: bool,
    /// Some possible denial is not (NetworkPolicy's), so no drop can be required.
    pub other_deny: bool,
}

impl Possible {
    /// Adds the possibility `action` opens. `Pass` opens none by itself: evaluation goes on to the
    /// next stage (after Baseline, the default, allow), which the caller follows.
    pub fn add(&mut self, action: Action) {
        match action {
            Action::Accept => self.allow = true,
            Action::Deny => {
                self.deny = true;
                self.cluster_deny = true;
            }
            Action::Pass => {}
        }
    }
}
