//! The Kubernetes backend: the manifests polygraph creates, the dry run that prints them, the
//! backend itself (kube-rs), and CNI recognition.

mod cluster;
pub mod cni;
pub mod dry_run;
pub mod manifests;
pub mod placement;

pub use cluster::{Connection, KubeBackend, KubeGcReport, gc};
