//! `--dry-run` is a run: the real runner drives a `Recorder`, which writes down every API call a
//! Kubernetes run would make (with the object it sends) instead of making it, and answers probes
//! through the simulation, so every step converges as the spec says and the run goes on exactly as
//! it would on a cluster that enforces. Resets between scenarios and the final clean-up are
//! recorded too. The output is multi-document YAML: a comment per call (`# create Pod ns/a`), the
//! object after it. Nothing is contacted; people review it, CI validates it, and a test holds it
//! equal to the calls a fake API server sees for the same run.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Target};
use serde::Serialize;

use super::api_calls;
use super::manifests::{self, KubeOptions, RunNames};
use crate::backend::sim::{SimBackend, SimOptions};
use crate::backend::{Backend, BackendError, Held};
use crate::model::{Namespace, PodRef};
use crate::world::{Mutation, World};

/// The text of a dry run, shared between the recorder and whoever adds comments (the CLI marks
/// scenarios and steps).
#[derive(Debug, Clone, Default)]
pub struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    pub fn comment(&self, line: &str) {
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(text, "# {line}");
    }

    fn object(&self, object: &impl Serialize) -> Result<(), BackendError> {
        let yaml = serde_saphyr::to_string(object).map_err(|e| BackendError::Cluster {
            what: "writing the dry run's YAML".into(),
            message: e.to_string(),
        })?;
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write!(text, "---\n{yaml}");
        if !yaml.ends_with('\n') {
            text.push('\n');
        }
        Ok(())
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A backend that records what a Kubernetes run would do.
pub struct Recorder {
    names: RunNames,
    options: KubeOptions,
    transcript: Transcript,
    world: World,
    sim: SimBackend,
}

impl Recorder {
    pub fn new(names: RunNames, options: KubeOptions) -> Recorder {
        let transcript = Transcript::default();
        transcript.comment(&format!(
            "polygraph dry run {}: every API call a run would make, in order, with the object it sends; nothing was contacted",
            names.run_id
        ));
        Recorder {
            names,
            options,
            transcript,
            world: World::empty(),
            sim: SimBackend::new(SimOptions {
                sctp: true,
                ..SimOptions::default()
            }),
        }
    }

    pub fn transcript(&self) -> Transcript {
        self.transcript.clone()
    }

    /// The object a call sends, as the world stands after the mutation.
    fn record(&self, mutation: &Mutation) -> Result<(), BackendError> {
        for call in api_calls(&self.names, &self.options, mutation) {
            self.transcript.comment(&call);
        }
        let cluster = self.world.cluster();
        match mutation {
            Mutation::CreateNamespace(ns) => self
                .transcript
                .object(&manifests::namespace(&self.names, ns)),
            Mutation::SetNamespaceLabels { namespace, labels } => {
                self.transcript.comment("the namespace's labels become:");
                self.transcript.object(&manifests::namespace(
                    &self.names,
                    &Namespace {
                        name: namespace.clone(),
                        labels: labels.clone(),
                    },
                ))
            }
            // Node affinity is chosen at run time, from the cluster's nodes.
            Mutation::CreatePod(pod) => {
                if let Some(namespace) = cluster
                    .namespace(&pod.namespace)
                    .filter(|_| pod.host_network)
                {
                    let (key, value) = manifests::POD_SECURITY_LABEL;
                    let mut labels = namespace.labels.clone();
                    labels.insert(key.into(), value.into());
                    self.transcript
                        .comment("the namespace's labels become (Pod Security, for hostNetwork):");
                    self.transcript.object(&manifests::namespace(
                        &self.names,
                        &Namespace {
                            name: namespace.name.clone(),
                            labels,
                        },
                    ))?;
                }
                self.transcript
                    .object(&manifests::pod(&self.names, &self.options, pod, None))?;
                match manifests::service(&self.names, pod).filter(|_| self.options.services) {
                    Some(service) => self.transcript.object(&service),
                    None => Ok(()),
                }
            }
            Mutation::SetPodLabels { pod, .. } => match self.world.pod(pod) {
                Some(pod) => {
                    self.transcript.comment("the pod's labels become:");
                    self.transcript
                        .object(&manifests::pod(&self.names, &self.options, pod, None))
                }
                None => Ok(()),
            },
            Mutation::ApplyPolicy(policy) => {
                let bases: BTreeSet<String> = cluster
                    .namespaces()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect();
                self.transcript
                    .object(&manifests::policy(&self.names, policy, &bases))
            }
            Mutation::ApplyClusterPolicy(policy) => {
                let bases: BTreeSet<String> = cluster
                    .namespaces()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect();
                self.transcript.comment(&format!(
                    "the subject (and every namespaces/pods peer) gains {}: {}, so it selects only this run's namespaces",
                    manifests::RUN_LABEL,
                    self.names.run_id
                ));
                // No cluster to ask: the newest version polygraph reads. A real run applies the
                // one the cluster serves (ClusterNetworkPolicy: v1beta1, else v1alpha2).
                let versions = policy.kind.api_versions();
                if versions.len() > 1 {
                    self.transcript.comment(&format!(
                        "shown as {}; a cluster that serves only {} gets that version (same schema)",
                        versions[0],
                        versions[1..].join(", ")
                    ));
                }
                self.transcript.object(&manifests::cluster_policy(
                    &self.names,
                    policy,
                    &bases,
                    versions[0],
                ))
            }
            Mutation::DeleteNamespace(_)
            | Mutation::DeletePod(_)
            | Mutation::DeletePolicy { .. }
            | Mutation::DeleteClusterPolicy { .. } => Ok(()),
        }
    }
}

impl Backend for Recorder {
    fn describe(&self) -> String {
        format!("dry run (nothing contacted, run {})", self.names.run_id)
    }

    fn cleanup_message(&self) -> String {
        "nothing was contacted".into()
    }

    fn chooses_addresses(&self) -> bool {
        false
    }
    fn addresses(&self, pod: &PodRef) -> Vec<std::net::IpAddr> {
        self.sim.addresses(pod)
    }

    fn service_addresses(&self, pod: &PodRef) -> Vec<std::net::IpAddr> {
        self.sim.service_addresses(pod)
    }

    /// The simulation's names: the dry run prints API calls; the probes it answers are the
    /// simulation's, DNS included (a real run reads the cluster's own DNS pods instead).
    fn service_name(&self, pod: &PodRef) -> Option<String> {
        self.sim.service_name(pod)
    }

    async fn dns(&mut self) -> Result<crate::model::ClusterDns, String> {
        self.sim.dns().await
    }

    /// As on Kubernetes: the servers named with `--external-target`, no NodePort client.
    async fn outside(
        &mut self,
        target: crate::model::ProbeTarget,
        _port_protocols: &[crate::model::PortProtocol],
    ) -> Result<Vec<crate::model::Pod>, String> {
        super::outside_hosts(&self.options, target)
    }

    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError> {
        self.sim.apply(mutation).await?;
        self.world
            .apply(mutation)
            .map_err(BackendError::rejected(mutation))?;
        self.record(mutation)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        self.sim.wait_ready(timeout).await
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: crate::backend::ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        self.sim.probe(from, targets, timing).await
    }

    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        self.sim.hold(from, targets, timeout).await
    }

    /// What `KubeBackend::cleanup` does: delete every namespace of the run (by name order, as the
    /// API server lists them).
    async fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut left: Vec<String> = self
            .world
            .cluster()
            .namespaces()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        self.transcript.comment("clean-up");
        left.sort_by_key(|base| self.names.namespace(base));
        for base in left {
            let mutation = Mutation::DeleteNamespace(base);
            self.record(&mutation)?;
            self.world
                .apply(&mutation)
                .map_err(BackendError::rejected(&mutation))?;
        }
        self.sim.cleanup().await
    }
}
