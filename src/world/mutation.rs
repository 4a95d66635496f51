//! `Mutation`: the one vocabulary of change between the scenario interpreter, the world model and
//! the backends. A step's action becomes mutations (`scenario::Action::mutations`), the world
//! applies them (`World::apply`), every backend carries them out (`Backend::apply`), and the
//! dry-run recorder prints them as the API calls they become.

use std::fmt;

use crate::model::{Labels, Namespace, Pod, PodRef};
use crate::policy::{ClusterKind, ClusterPolicy, Policy};

// A handful per step, never in a hot path: the policy variant's size doesn't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Mutation {
    CreateNamespace(Namespace),
    /// With its pods and policies.
    DeleteNamespace(String),
    /// The namespace's complete new label set.
    SetNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    CreatePod(Pod),
    DeletePod(PodRef),
    /// The pod's complete new label set.
    SetPodLabels {
        pod: PodRef,
        labels: Labels,
    },
    /// Create or replace.
    ApplyPolicy(Policy),
    DeletePolicy {
        namespace: String,
        name: String,
    },
    /// Create or replace a cluster-scoped policy (identified by kind and name).
    ApplyClusterPolicy(ClusterPolicy),
    DeleteClusterPolicy {
        kind: ClusterKind,
        name: String,
    },
}

impl Mutation {
    /// Whether the backend has something to wait for afterwards (a pod that must become ready).
    pub fn creates_pod(&self) -> bool {
        matches!(self, Mutation::CreatePod(_))
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mutation::CreateNamespace(ns) => write!(f, "create namespace {}", ns.name),
            Mutation::DeleteNamespace(ns) => write!(f, "delete namespace {ns}"),
            Mutation::SetNamespaceLabels { namespace, .. } => {
                write!(f, "relabel namespace {namespace}")
            }
            Mutation::CreatePod(pod) => write!(f, "create pod {}", pod.key()),
            Mutation::DeletePod(pod) => write!(f, "delete pod {pod}"),
            Mutation::SetPodLabels { pod, .. } => write!(f, "relabel pod {pod}"),
            Mutation::ApplyPolicy(policy) => write!(f, "apply policy {}", policy.key()),
            Mutation::DeletePolicy { namespace, name } => {
                write!(f, "delete policy {namespace}/{name}")
            }
            Mutation::ApplyClusterPolicy(policy) => write!(f, "apply {}", policy.key()),
            Mutation::DeleteClusterPolicy { kind, name } => {
                write!(f, "delete {}/{name}", kind.short())
            }
        }
    }
}
