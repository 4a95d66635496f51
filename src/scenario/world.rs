//! The cluster a scenario describes, step by step: what the oracle evaluates after each action and
//! what the runner makes real. Pod IPs are fixed when a pod first appears, so deleting one pod never
//! renumbers the others.

use crate::model::{
    Cluster, ClusterDescription, Labels, ModelError, NAMESPACE_NAME_LABEL, Namespace,
    NamespaceDescription, Pod, PodDescription, PodRef,
};
use crate::policy::Policy;

#[derive(Debug, Clone)]
pub struct World {
    description: ClusterDescription,
    cluster: Cluster,
    policies: Vec<Policy>,
}

/// A change to the world: what a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create or replace policies.
    Apply(Vec<Policy>),
    DeletePolicy {
        namespace: String,
        name: String,
    },
    /// The namespace's complete new label set.
    SetNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    /// The pod's complete new label set.
    SetPodLabels {
        pod: PodRef,
        labels: Labels,
    },
    CreatePod(Pod),
    DeletePod(PodRef),
    CreateNamespace(Namespace),
    DeleteNamespace(String),
    /// Change nothing; probe again.
    Probe,
}

impl Action {
    /// A short description, used when a step has no name.
    pub fn describe(&self) -> String {
        match self {
            Action::Apply(policies) => {
                let names: Vec<String> = policies.iter().map(Policy::key).collect();
                format!("apply {}", names.join(", "))
            }
            Action::DeletePolicy { namespace, name } => format!("delete policy {namespace}/{name}"),
            Action::SetNamespaceLabels { namespace, .. } => {
                format!("relabel namespace {namespace}")
            }
            Action::SetPodLabels { pod, .. } => format!("relabel pod {pod}"),
            Action::CreatePod(pod) => format!("create pod {}", pod.key()),
            Action::DeletePod(pod) => format!("delete pod {pod}"),
            Action::CreateNamespace(ns) => format!("create namespace {}", ns.name),
            Action::DeleteNamespace(ns) => format!("delete namespace {ns}"),
            Action::Probe => "probe again".into(),
        }
    }
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
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
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

    fn rebuild(&mut self) -> Result<(), String> {
        self.cluster = self
            .description
            .build("scenario")
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Applies an action. Errors say what in the action doesn't fit the world.
    pub fn apply(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Apply(policies) => {
                for policy in policies {
                    self.policies
                        .retain(|p| !(p.namespace == policy.namespace && p.name == policy.name));
                    self.policies.push(policy.clone());
                }
                return Ok(());
            }
            Action::DeletePolicy { namespace, name } => {
                if !self.has_policy(namespace, name) {
                    return Err(format!("there is no policy {namespace}/{name} to delete"));
                }
                self.policies
                    .retain(|p| !(&p.namespace == namespace && &p.name == name));
                return Ok(());
            }
            Action::Probe => return Ok(()),
            Action::SetNamespaceLabels { namespace, labels } => {
                let ns = self
                    .description
                    .namespaces
                    .iter_mut()
                    .find(|n| &n.name == namespace)
                    .ok_or_else(|| format!("there is no namespace {namespace}"))?;
                ns.labels = labels.clone();
                ns.labels.remove(NAMESPACE_NAME_LABEL);
            }
            Action::SetPodLabels { pod, labels } => {
                let p = self
                    .description
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                    .ok_or_else(|| format!("there is no pod {pod}"))?;
                p.labels = labels.clone();
            }
            Action::CreatePod(pod) => {
                self.description.pods.push(PodDescription::from(pod));
            }
            Action::DeletePod(pod) => {
                let before = self.description.pods.len();
                self.description
                    .pods
                    .retain(|p| !(p.namespace == pod.namespace && p.name == pod.name));
                if self.description.pods.len() == before {
                    return Err(format!("there is no pod {pod} to delete"));
                }
            }
            Action::CreateNamespace(ns) => {
                let mut labels = ns.labels.clone();
                labels.remove(NAMESPACE_NAME_LABEL);
                self.description.namespaces.push(NamespaceDescription {
                    name: ns.name.clone(),
                    labels,
                });
            }
            Action::DeleteNamespace(name) => {
                let before = self.description.namespaces.len();
                self.description.namespaces.retain(|n| &n.name != name);
                if self.description.namespaces.len() == before {
                    return Err(format!("there is no namespace {name} to delete"));
                }
                self.description.pods.retain(|p| &p.namespace != name);
                self.policies.retain(|p| &p.namespace != name);
            }
        }
        self.rebuild()
    }
}
