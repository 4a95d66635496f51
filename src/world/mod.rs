//! The cluster as polygraph means it to be: namespaces, pods and policies, changed one `Mutation`
//! at a time. The scenario loader applies a step's mutations to compute what the oracle evaluates
//! after it; the runner sends the same mutations to a backend (a real cluster, the local one, the
//! simulation or the dry-run recorder). Pod IPs are fixed when a pod first appears, so deleting one
//! pod never renumbers the others.

mod mutation;

pub use mutation::Mutation;

use crate::model::{
    Cluster, ClusterDescription, Labels, ModelError, NAMESPACE_NAME_LABEL, NamespaceDescription,
    Pod, PodDescription, PodRef,
};
use crate::policy::{ClusterKind, ClusterPolicy, Policy, PolicySet};

/// A mutation that does not fit the world it is applied to.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("there is no {what} {name}")]
    Missing { what: &'static str, name: String },
    #[error("{what} {name} already exists")]
    Exists { what: &'static str, name: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Debug, Clone)]
pub struct World {
    description: ClusterDescription,
    cluster: Cluster,
    policies: Vec<Policy>,
    cluster_policies: Vec<ClusterPolicy>,
}

impl World {
    pub fn new(description: &ClusterDescription, origin: &str) -> Result<World, ModelError> {
        let cluster = description.build(origin)?;
        let mut description = description.clone();
        for (pod, built) in description.pods.iter_mut().zip(cluster.pods()) {
            pod.ip = Some(built.ip.to_string());
        }
        Ok(World {
            description,
            cluster,
            policies: Vec::new(),
            cluster_policies: Vec::new(),
        })
    }

    /// A cluster with its policies: what `probe` and `bench probe` deploy.
    pub fn with_policies(cluster: &Cluster, policies: &PolicySet) -> Result<World, WorldError> {
        let mut world = World::new(&cluster.description(), "cluster model")?;
        for policy in &policies.network {
            world.apply(&Mutation::ApplyPolicy(policy.clone()))?;
        }
        for policy in &policies.cluster {
            world.apply(&Mutation::ApplyClusterPolicy(policy.clone()))?;
        }
        Ok(world)
    }

    /// Nothing at all: where a run starts and where its clean-up ends.
    pub fn empty() -> World {
        World {
            description: ClusterDescription::default(),
            cluster: Cluster::default(),
            policies: Vec::new(),
            cluster_policies: Vec::new(),
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn cluster_policies(&self) -> &[ClusterPolicy] {
        &self.cluster_policies
    }

    /// Every policy of both families, as the oracle evaluates them.
    pub fn policy_set(&self) -> PolicySet {
        PolicySet {
            network: self.policies.clone(),
            cluster: self.cluster_policies.clone(),
        }
    }

    pub fn has_cluster_policy(&self, kind: ClusterKind, name: &str) -> bool {
        self.cluster_policies
            .iter()
            .any(|p| p.kind == kind && p.name == name)
    }

    /// The kinds of cluster policy named `name` (a name may be used once per kind).
    pub fn cluster_policy_kinds(&self, name: &str) -> Vec<ClusterKind> {
        self.cluster_policies
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.kind)
            .collect()
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<Labels> {
        self.cluster
            .namespace(namespace)
            .map(|ns| ns.labels.clone())
    }

    pub fn pod(&self, pod: &PodRef) -> Option<&Pod> {
        self.cluster.find_pod(pod).map(|id| self.cluster.pod(id))
    }

    pub fn has_policy(&self, namespace: &str, name: &str) -> bool {
        self.policies
            .iter()
            .any(|p| p.namespace == namespace && p.name == name)
    }

    /// A pod as it would be created: the IP is the next free one when the description has none.
    pub fn new_pod(&self, pod: &PodDescription) -> Result<Pod, ModelError> {
        let mut description = self.description.clone();
        description.pods.push(pod.clone());
        let cluster = description.build("create-pod")?;
        Ok(cluster.pods()[cluster.pods().len() - 1].clone())
    }

    /// Applies mutations in order; stops at the first that does not fit.
    pub fn apply_all<'a>(
        &mut self,
        mutations: impl IntoIterator<Item = &'a Mutation>,
    ) -> Result<(), WorldError> {
        mutations.into_iter().try_for_each(|m| self.apply(m))
    }

    /// Applies one mutation, as the API server would: deleting a namespace takes its pods and
    /// policies with it.
    pub fn apply(&mut self, mutation: &Mutation) -> Result<(), WorldError> {
        let missing = |what, name: String| WorldError::Missing { what, name };
        match mutation {
            Mutation::ApplyPolicy(policy) => {
                self.policies
                    .retain(|p| !(p.namespace == policy.namespace && p.name == policy.name));
                self.policies.push(policy.clone());
                return Ok(());
            }
            Mutation::DeletePolicy { namespace, name } => {
                if !self.has_policy(namespace, name) {
                    return Err(missing("policy", format!("{namespace}/{name}")));
                }
                self.policies
                    .retain(|p| !(&p.namespace == namespace && &p.name == name));
                return Ok(());
            }
            Mutation::ApplyClusterPolicy(policy) => {
                self.cluster_policies
                    .retain(|p| !(p.kind == policy.kind && p.name == policy.name));
                self.cluster_policies.push(policy.clone());
                return Ok(());
            }
            Mutation::DeleteClusterPolicy { kind, name } => {
                if !self.has_cluster_policy(*kind, name) {
                    return Err(missing(kind.as_str(), name.clone()));
                }
                self.cluster_policies
                    .retain(|p| !(p.kind == *kind && &p.name == name));
                return Ok(());
            }
            Mutation::SetNamespaceLabels { namespace, labels } => {
                let ns = self
                    .description
                    .namespaces
                    .iter_mut()
                    .find(|n| &n.name == namespace)
                    .ok_or_else(|| missing("namespace", namespace.clone()))?;
                ns.labels = labels.clone();
                ns.labels.remove(NAMESPACE_NAME_LABEL);
            }
            Mutation::SetPodLabels { pod, labels } => {
                let p = self
                    .description
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                    .ok_or_else(|| missing("pod", pod.to_string()))?;
                p.labels = labels.clone();
            }
            Mutation::CreatePod(pod) => {
                if self.pod(&pod.key()).is_some() {
                    return Err(WorldError::Exists {
                        what: "pod",
                        name: pod.key().to_string(),
                    });
                }
                self.description.pods.push(PodDescription::from(pod));
            }
            Mutation::DeletePod(pod) => {
                let before = self.description.pods.len();
                self.description
                    .pods
                    .retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
                if self.description.pods.len() == before {
                    return Err(missing("pod", pod.to_string()));
                }
            }
            Mutation::CreateNamespace(ns) => {
                if self.cluster.namespace(&ns.name).is_some() {
                    return Err(WorldError::Exists {
                        what: "namespace",
                        name: ns.name.clone(),
                    });
                }
                let mut labels = ns.labels.clone();
                labels.remove(NAMESPACE_NAME_LABEL);
                self.description.namespaces.push(NamespaceDescription {
                    name: ns.name.clone(),
                    labels,
                });
            }
            Mutation::DeleteNamespace(name) => {
                let before = self.description.namespaces.len();
                self.description.namespaces.retain(|n| &n.name != name);
                if self.description.namespaces.len() == before {
                    return Err(missing("namespace", name.clone()));
                }
                self.description.pods.retain(|p| &p.namespace != name);
                self.policies.retain(|p| &p.namespace != name);
            }
        }
        self.cluster = self.description.build("scenario")?;
        Ok(())
    }

    /// The mutations that turn `self` into `to`: stale policies, namespaces and pods go first,
    /// then new namespaces, pods and labels, then `to`'s policies. Deploying is reconciling from
    /// the empty world; tearing down is reconciling to it.
    pub fn changes_to(&self, to: &World) -> Vec<Mutation> {
        let mut out = Vec::new();
        for policy in &self.cluster_policies {
            if !to.has_cluster_policy(policy.kind, &policy.name) {
                out.push(Mutation::DeleteClusterPolicy {
                    kind: policy.kind,
                    name: policy.name.clone(),
                });
            }
        }
        for policy in &self.policies {
            if !to.has_policy(&policy.namespace, &policy.name) {
                out.push(Mutation::DeletePolicy {
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                });
            }
        }
        let (old, new) = (&self.cluster, &to.cluster);
        for ns in old.namespaces() {
            if new.namespace(&ns.name).is_none() {
                out.push(Mutation::DeleteNamespace(ns.name.clone()));
            }
        }
        for ns in new.namespaces() {
            match old.namespace(&ns.name) {
                None => out.push(Mutation::CreateNamespace(ns.clone())),
                Some(before) if before.labels != ns.labels => {
                    out.push(Mutation::SetNamespaceLabels {
                        namespace: ns.name.clone(),
                        labels: ns.labels.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for pod in old.pods() {
            match new.find_pod(&pod.key()) {
                // Pods of deleted namespaces go with them.
                None if new.namespace(&pod.namespace).is_none() => {}
                Some(id) if same_pod(new.pod(id), pod) => {}
                _ => out.push(Mutation::DeletePod(pod.key())),
            }
        }
        for pod in new.pods() {
            match old.find_pod(&pod.key()).map(|id| old.pod(id)) {
                Some(before) if same_pod(before, pod) => {
                    if before.labels != pod.labels {
                        out.push(Mutation::SetPodLabels {
                            pod: pod.key(),
                            labels: pod.labels.clone(),
                        });
                    }
                }
                _ => out.push(Mutation::CreatePod(pod.clone())),
            }
        }
        out.extend(to.policies.iter().cloned().map(Mutation::ApplyPolicy));
        out.extend(
            to.cluster_policies
                .iter()
                .cloned()
                .map(Mutation::ApplyClusterPolicy),
        );
        out
    }
}

/// Whether a pod can stay as it is (relabelled at most) or must be recreated: its address and ports
/// are fixed at creation.
fn same_pod(a: &Pod, b: &Pod) -> bool {
    (a.ip, &a.ports) == (b.ip, &b.ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_model;

    #[test]
    fn changes_to_reach_the_target_and_nothing_more() {
        let full = World::new(&default_model(), "test").expect("default model");
        let deploy = World::empty().changes_to(&full);
        let mut built = World::empty();
        built.apply_all(&deploy).expect("deploy fits");
        assert_eq!(built.cluster().pods().len(), 9);
        assert!(built.changes_to(&full).is_empty(), "nothing left to do");
        let teardown = full.changes_to(&World::empty());
        // Namespaces take their pods along: three deletions, no pod deletions.
        assert_eq!(teardown.len(), 3, "{teardown:?}");
        built.apply_all(&teardown).expect("teardown fits");
        assert!(built.cluster().pods().is_empty());
    }

    #[test]
    fn mutations_that_do_not_fit_say_why() {
        let mut world = World::new(&default_model(), "test").expect("default model");
        let e = world
            .apply(&Mutation::DeleteNamespace("nope".into()))
            .expect_err("no such namespace");
        assert_eq!(e.to_string(), "there is no namespace nope");
        let pod = world.cluster().pods()[0].clone();
        let e = world
            .apply(&Mutation::CreatePod(pod))
            .expect_err("already there");
        assert_eq!(e.to_string(), "pod x/a already exists");
    }
}
