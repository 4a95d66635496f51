//! A step's action and its one interpreter: `Action::mutations` turns it into the `Mutation`s that
//! the world model, the runner (through a backend) and the dry-run recorder all apply the same way.
//! A new action is a variant here, its arm in `mutations` (and in the loader's YAML), and, if no
//! existing mutation expresses it, a new `Mutation` that every backend carries out.

use crate::model::{Labels, Namespace, Pod, PodRef};
use crate::policy::{AnyPolicy, ClusterKind};
use crate::world::Mutation;

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create or replace policies of either family.
    Apply(Vec<AnyPolicy>),
    DeletePolicy {
        namespace: String,
        name: String,
    },
    DeleteClusterPolicy {
        kind: ClusterKind,
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
    /// The changes this action makes, in order.
    pub fn mutations(&self) -> Vec<Mutation> {
        match self {
            Action::Apply(policies) => policies
                .iter()
                .cloned()
                .map(|p| match p {
                    AnyPolicy::Network(p) => Mutation::ApplyPolicy(p),
                    AnyPolicy::Cluster(p) => Mutation::ApplyClusterPolicy(p),
                })
                .collect(),
            Action::DeleteClusterPolicy { kind, name } => vec![Mutation::DeleteClusterPolicy {
                kind: *kind,
                name: name.clone(),
            }],
            Action::DeletePolicy { namespace, name } => vec![Mutation::DeletePolicy {
                namespace: namespace.clone(),
                name: name.clone(),
            }],
            Action::SetNamespaceLabels { namespace, labels } => {
                vec![Mutation::SetNamespaceLabels {
                    namespace: namespace.clone(),
                    labels: labels.clone(),
                }]
            }
            Action::SetPodLabels { pod, labels } => vec![Mutation::SetPodLabels {
                pod: pod.clone(),
                labels: labels.clone(),
            }],
            Action::CreatePod(pod) => vec![Mutation::CreatePod(pod.clone())],
            Action::DeletePod(pod) => vec![Mutation::DeletePod(pod.clone())],
            Action::CreateNamespace(ns) => vec![Mutation::CreateNamespace(ns.clone())],
            Action::DeleteNamespace(ns) => vec![Mutation::DeleteNamespace(ns.clone())],
            Action::Probe => Vec::new(),
        }
    }

    /// A short description, used when a step has no name.
    pub fn describe(&self) -> String {
        match self {
            Action::Apply(policies) => {
                let names: Vec<String> = policies
                    .iter()
                    .map(|p| match p {
                        AnyPolicy::Network(p) => p.key(),
                        AnyPolicy::Cluster(p) => p.key(),
                    })
                    .collect();
                format!("apply {}", names.join(", "))
            }
            Action::Probe => "probe again".into(),
            other => other
                .mutations()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}
