//! `direction-cleanup-clobbers`: a dataplane that, tearing down the ingress side of a pod whose
//! last ingress policy went away, tears down its egress side too. The pod then sends unfiltered
//! while its egress policies still stand, until a policy isolates it for ingress again. The
//! bookkeeping is a history (which pods were isolated for ingress at the previous change), kept
//! here once for both dataplanes.

use std::collections::BTreeSet;

use crate::model::{Cluster, PodRef};
use crate::policy::{Direction, Policy};

/// The pods whose egress enforcement a cleanup took with it.
#[derive(Debug, Clone, Default)]
pub struct EgressClobber {
    /// The pods isolated for ingress by a NetworkPolicy at the previous change.
    isolated: BTreeSet<PodRef>,
    clobbered: BTreeSet<PodRef>,
}

impl EgressClobber {
    /// Takes the next state (the policies as enforced) and returns the pods left without egress
    /// enforcement in it.
    pub fn update(&mut self, cluster: &Cluster, policies: &[Policy]) -> BTreeSet<PodRef> {
        let isolated: BTreeSet<PodRef> = cluster
            .pods()
            .iter()
            .filter(|pod| {
                policies
                    .iter()
                    .any(|p| p.rules(Direction::Ingress).is_some() && p.selects(pod))
            })
            .map(|pod| pod.key())
            .collect();
        let present: BTreeSet<PodRef> = cluster.pods().iter().map(|pod| pod.key()).collect();
        // Lost its last ingress policy, and still there: the cleanup ran.
        self.clobbered.extend(
            self.isolated
                .difference(&isolated)
                .filter(|pod| present.contains(*pod))
                .cloned(),
        );
        // Isolated for ingress again (its chains rebuilt), or gone.
        self.clobbered
            .retain(|pod| present.contains(pod) && !isolated.contains(pod));
        self.isolated = isolated;
        self.clobbered.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_model;
    use crate::policy::parse_policies;

    #[test]
    fn losing_the_last_ingress_policy_clobbers_egress_until_isolated_again() {
        let cluster = default_model().build("m").unwrap();
        let ingress = parse_policies(
            "p.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: in, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}}\n",
            "x",
        )
        .unwrap()
        .network;
        let xa: PodRef = "x/a".parse().unwrap();
        let mut clobber = EgressClobber::default();
        assert!(clobber.update(&cluster, &[]).is_empty());
        assert!(clobber.update(&cluster, &ingress).is_empty());
        assert_eq!(clobber.update(&cluster, &[]), BTreeSet::from([xa.clone()]));
        assert_eq!(clobber.update(&cluster, &[]), BTreeSet::from([xa]));
        assert!(clobber.update(&cluster, &ingress).is_empty());
    }
}
