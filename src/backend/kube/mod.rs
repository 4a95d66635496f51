//! The Kubernetes backend's pieces that need no cluster: the manifests polygraph creates, and the
//! dry run that prints them.

pub mod dry_run;
pub mod manifests;
