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

/// A kind at the version the cluster serves it in (`served`): `policy.networking.k8s.io/v1beta1`
/// or `.../v1alpha2` for ClusterNetworkPolicy, `.../v1alpha1` for the other two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub kind: ClusterKind,
    pub api_version: &'static str,
}

/// The API resource of a kind at a version.
pub fn resource(served: Served) -> ApiResource {
    let version = served.api_version.rsplit('/').next().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(GROUP, version, served.kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, served.kind.plural())
}

fn api(client: &Client, served: Served) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource(served))
}

/// The version the API server serves `kind` in, the newest polygraph reads first (`None`: not
/// served). Discovery per group/version: the one whose resource list names the kind.
pub async fn served(client: &Client, kind: ClusterKind) -> Result<Option<Served>, BackendError> {
    for &api_version in kind.api_versions() {
        match client.list_api_group_resources(api_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == kind.plural()) => {
                return Ok(Some(Served { kind, api_version }));
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(BackendError::Kube {
                    what: format!("asking whether the cluster serves {api_version}"),
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// The annotations network-policy-api puts on its CRDs, read from `kind`'s CRD. `None` where
/// it cannot be read (no right to read CRDs, or a CRD without them): nothing is concluded then.
pub async fn bundle(client: &Client, kind: ClusterKind) -> Option<crate::backend::CrdBundle> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get_opt(&format!("{}.{GROUP}", kind.plural()))
        .await
        .ok()
        .flatten()?;
    let annotations = crd.metadata.annotations.unwrap_or_default();
    let read = |key: &str| annotations.get(&format!("{GROUP}/{key}")).cloned();
    let bundle = crate::backend::CrdBundle {
        bundle_version: read("bundle-version"),
        channel: read("channel"),
    };
    (bundle != crate::backend::CrdBundle::default()).then_some(bundle)
}

/// The reason scenarios needing `kind` cannot run here.
pub fn unsupported_reason(kind: ClusterKind) -> String {
    format!(
        "the cluster does not serve {} {}",
        kind.api_versions().join(" or "),
        kind.as_str()
    )
}

pub async fn apply(
    client: &Client,
    served: Served,
    name: &str,
    manifest: &serde_json::Value,
) -> Result<(), BackendError> {
    let kind = served.kind;
    let api = api(client, served);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    call(&format!("applying {kind} {name}"), || async {
        api.patch(name, &params, &Patch::Apply(manifest)).await
    })
    .await?;
    Ok(())
}

pub async fn delete(client: &Client, served: Served, name: &str) -> Result<(), BackendError> {
    let kind = served.kind;
    let api = api(client, served);
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
    served: Served,
    name: &str,
) -> Result<Option<Option<String>>, BackendError> {
    let kind = served.kind;
    let api = api(client, served);
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
    served: Served,
    run: Option<&str>,
) -> Result<Vec<(String, String)>, BackendError> {
    let kind = served.kind;
    let api = api(client, served);
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
    served: Served,
    namespaces: &BTreeMap<String, Labels>,
) -> Result<Vec<String>, BackendError> {
    let kind = served.kind;
    let api = api(client, served);
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
            "apiVersion": served.api_version,
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
