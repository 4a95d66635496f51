//! `--dry-run`: every manifest a run would create, as multi-document YAML, in the order polygraph
//! would create them, with comments saying which scenario and step each belongs to. Nothing is
//! contacted; people review it, CI validates it.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;

use super::manifests::{self, KubeOptions, RunNames};
use crate::analyze::Analysis;
use crate::model::{Cluster, Pod};
use crate::scenario::{Action, Scenario};

#[derive(Default)]
struct Documents {
    text: String,
}

impl Documents {
    /// Starts the output with the line that says what it is.
    fn new(names: &RunNames) -> Self {
        let mut docs = Documents::default();
        docs.comment(&format!(
            "polygraph dry run {}: every object polygraph would create, in order; nothing was contacted",
            names.run_id
        ));
        docs
    }

    fn comment(&mut self, line: &str) {
        let _ = writeln!(self.text, "# {line}");
    }

    fn object(&mut self, object: &impl Serialize) -> Result<(), String> {
        let yaml = serde_saphyr::to_string(object).map_err(|e| e.to_string())?;
        let _ = write!(self.text, "---\n{yaml}");
        if !yaml.ends_with('\n') {
            self.text.push('\n');
        }
        Ok(())
    }

    fn cluster(
        &mut self,
        names: &RunNames,
        options: &KubeOptions,
        cluster: &Cluster,
    ) -> Result<(), String> {
        for ns in cluster.namespaces() {
            self.object(&manifests::namespace(names, ns))?;
        }
        for pod in cluster.pods() {
            self.object(&manifests::pod(names, options, pod, None))?;
        }
        Ok(())
    }

    fn policies(
        &mut self,
        names: &RunNames,
        cluster: &Cluster,
        policies: &[crate::policy::Policy],
    ) -> Result<(), String> {
        let bases: BTreeSet<String> = cluster
            .namespaces()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        for policy in policies {
            self.object(&manifests::policy(names, policy, &bases))?;
        }
        Ok(())
    }
}

fn find_pod<'a>(cluster: &'a Cluster, pod: &crate::model::PodRef) -> Option<&'a Pod> {
    cluster.find_pod(pod).map(|id| cluster.pod(id))
}

/// The manifests of a run of `scenarios`.
pub fn scenarios(
    scenarios: &[Scenario],
    options: &KubeOptions,
    names: &RunNames,
) -> Result<String, String> {
    let mut docs = Documents::new(names);
    for scenario in scenarios {
        docs.comment(&format!("scenario {} ({})", scenario.name, scenario.source));
        docs.cluster(names, options, scenario.initial.cluster())?;
        for (index, step) in scenario.steps.iter().enumerate() {
            let after = &step.analysis.cluster;
            docs.comment(&format!(
                "step {}: {} ({})",
                index + 1,
                step.name,
                step.origin
            ));
            match &step.action {
                Action::Apply(policies) => docs.policies(names, after, policies)?,
                Action::CreatePod(pod) => {
                    docs.object(&manifests::pod(names, options, pod, None))?
                }
                Action::CreateNamespace(ns) => docs.object(&manifests::namespace(names, ns))?,
                Action::SetNamespaceLabels { namespace, .. } => {
                    if let Some(ns) = after.namespace(namespace) {
                        docs.comment("the namespace's labels become:");
                        docs.object(&manifests::namespace(names, ns))?;
                    }
                }
                Action::SetPodLabels { pod, .. } => {
                    if let Some(pod) = find_pod(after, pod) {
                        docs.comment("the pod's labels become:");
                        docs.object(&manifests::pod(names, options, pod, None))?;
                    }
                }
                Action::DeletePolicy { namespace, name } => {
                    docs.comment(&format!(
                        "deletes NetworkPolicy {name} in {}",
                        names.namespace(namespace)
                    ));
                }
                Action::DeletePod(pod) => {
                    docs.comment(&format!(
                        "deletes pod {} in {}",
                        pod.name,
                        names.namespace(&pod.namespace)
                    ));
                }
                Action::DeleteNamespace(ns) => {
                    docs.comment(&format!("deletes namespace {}", names.namespace(ns)))
                }
                Action::Probe => docs.comment("changes nothing"),
            }
        }
    }
    Ok(docs.text)
}

/// The manifests of `polygraph probe`: the cluster, then the policies.
pub fn probe(
    analysis: &Analysis,
    options: &KubeOptions,
    names: &RunNames,
) -> Result<String, String> {
    let mut docs = Documents::new(names);
    docs.cluster(names, options, &analysis.cluster)?;
    docs.policies(names, &analysis.cluster, &analysis.policies)?;
    Ok(docs.text)
}
