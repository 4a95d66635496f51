//! Cluster-scoped policies on a real cluster: whether the API serves their kind, applying and
//! deleting them (server-side apply, labelled with the run), listing the cluster's own ones that
//! could change this run's answers, and removing this run's (or a dead run's) objects.
//!
//! polygraph never installs a CRD: a cluster that does not serve a kind makes the scenarios that
//! need it `unsupported`, with the reason.

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use super::connection::{await_deletion, call};
use super::manifests::{OWNER, OWNER_LABEL, RUN_LABEL};
use crate::backend::BackendError;
use crate::input::Origin;
use crate::model::{Labels, NAMESPACE_NAME_LABEL};
use crate::policy::cluster::{Subject, api::GROUP, compile_object};
use crate::policy::{ClusterKind, PolicyError};

const FIELD_MANAGER: &str = "polygraph";

/// The API resource of a kind.
pub fn resource(kind: ClusterKind) -> ApiResource {
    let version = kind.api_version().rsplit('/').next().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(GROUP, version, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

fn api(client: &Client, kind: ClusterKind) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource(kind))
}

/// Whether the API server serves `kind` (its group/version lists the resource).
pub async fn served(client: &Client, kind: ClusterKind) -> Result<bool, BackendError> {
    match client.list_api_group_resources(kind.api_version()).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == kind.plural())),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => Err(BackendError::Kube {
            what: format!("asking whether the cluster serves {}", kind.api_version()),
            source,
        }),
    }
}

/// The reason scenarios needing `kind` cannot run here.
pub fn unsupported_reason(kind: ClusterKind) -> String {
    format!(
        "the cluster does not serve {} {}",
        kind.api_version(),
        kind.as_str()
    )
}

pub async fn apply(
    client: &Client,
    kind: ClusterKind,
    name: &str,
    manifest: &serde_json::Value,
) -> Result<(), BackendError> {
    let api = api(client, kind);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    call(&format!("applying {kind} {name}"), || async {
        api.patch(name, &params, &Patch::Apply(manifest)).await
    })
    .await?;
    Ok(())
}

pub async fn delete(client: &Client, kind: ClusterKind, name: &str) -> Result<(), BackendError> {
    let api = api(client, kind);
    let gone = call(&format!("deleting {kind} {name}"), || async {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await?;
    if gone {
        await_deletion(&format!("{kind} {name}"), || async { api.get(name).await }).await?;
    }
    Ok(())
}

/// Whether an object of `kind` named `name` exists (`None`: it does not) and, if polygraph
/// created it, the run it belongs to.
pub async fn owner(
    client: &Client,
    kind: ClusterKind,
    name: &str,
) -> Result<Option<Option<String>>, BackendError> {
    let api = api(client, kind);
    let found = call(&format!("reading {kind} {name}"), || async {
        api.get_opt(name).await
    })
    .await?;
    Ok(found.map(|object| {
        let labels = object.metadata.labels.unwrap_or_default();
        (labels.get(OWNER_LABEL).map(String::as_str) == Some(OWNER))
            .then(|| labels.get(RUN_LABEL).cloned())
            .flatten()
    }))
}

/// The objects of `kind` polygraph created, by run id (all runs when `run` is `None`).
pub async fn owned(
    client: &Client,
    kind: ClusterKind,
    run: Option<&str>,
) -> Result<Vec<(String, String)>, BackendError> {
    let api = api(client, kind);
    let mut selector = format!("{OWNER_LABEL}={OWNER}");
    if let Some(run) = run {
        selector.push_str(&format!(",{RUN_LABEL}={run}"));
    }
    let list = call(
        &format!("listing polygraph's {}", kind.plural()),
        || async { api.list(&ListParams::default().labels(&selector)).await },
    )
    .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| {
            let run = o.metadata.labels.as_ref()?.get(RUN_LABEL)?.clone();
            Some((o.metadata.name?, run))
        })
        .collect())
}

/// The cluster's own objects of `kind` (not polygraph's) whose subject can select pods in the
/// run's namespaces (real name → labels as created), each as `Kind name (tier, priority)`.
pub async fn foreign_selecting(
    client: &Client,
    kind: ClusterKind,
    namespaces: &BTreeMap<String, Labels>,
) -> Result<Vec<String>, BackendError> {
    let api = api(client, kind);
    let list = call(
        &format!("listing the cluster's {}", kind.plural()),
        || async { api.list(&ListParams::default()).await },
    )
    .await?;
    let mut found = BTreeSet::new();
    for object in list.items {
        let ours = object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .is_some_and(|v| v == OWNER);
        if ours {
            continue;
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        let mut value = serde_json::json!({
            "apiVersion": kind.api_version(),
            "kind": kind.as_str(),
            "metadata": {"name": name},
            "spec": object.data.get("spec").cloned().unwrap_or_default(),
        });
        // Only the subject matters here; rules of a newer CRD version must not stop the check.
        value["spec"]["ingress"] = serde_json::Value::Null;
        value["spec"]["egress"] = serde_json::Value::Null;
        let compiled: Result<_, PolicyError> =
            compile_object(Origin::file("the cluster"), value, kind);
        let selects = match compiled {
            Ok(policy) => namespaces.iter().any(|(real, labels)| {
                let mut labels = labels.clone();
                labels.insert(NAMESPACE_NAME_LABEL.into(), real.clone());
                match &policy.subject {
                    Subject::Namespaces(s) | Subject::Pods { namespaces: s, .. } => {
                        s.matches(&labels)
                    }
                }
            }),
            // Unreadable: say so rather than guess it away.
            Err(_) => true,
        };
        if selects {
            found.insert(format!("{kind} {name}"));
        }
    }
    Ok(found.into_iter().collect())
}
