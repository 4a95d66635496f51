//! Cleaning up after runs that could not (`polygraph gc --backend kube`), without ever touching a
//! live one. A running polygraph renews a heartbeat annotation on its namespaces every
//! `HEARTBEAT_EVERY`; `gc` keeps any namespace whose heartbeat is younger than `STALE_AFTER`
//! (a live run, e.g. another CI job sharing the cluster), whatever `--older-than` says, and says
//! so. Namespaces without a heartbeat (written by older polygraph versions) fall back to their age.
//! Deletions are issued together, then awaited, as `run` does.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use super::cluster_policies;
use super::connection::{await_deletion, call, delete_namespace};
use super::manifests::{HEARTBEAT_ANNOTATION, OWNER, OWNER_LABEL, RUN_LABEL, heartbeat_now};
use crate::backend::BackendError;
use crate::policy::ClusterKind;

/// How often a live run renews its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A heartbeat older than this belongs to a run that died.
pub const STALE_AFTER: Duration = Duration::from_secs(180);

/// What `gc` did with each of polygraph's namespaces.
#[derive(Debug, Default)]
pub struct KubeGcReport {
    pub removed: Vec<String>,
    /// Namespaces left alone, with the reason.
    pub kept: Vec<(String, String)>,
}

fn age(unix_seconds: u64, now: SystemTime) -> Duration {
    now.duration_since(UNIX_EPOCH + Duration::from_secs(unix_seconds))
        .unwrap_or_default()
}

/// Why `gc` must keep `ns`, if it must.
fn keep_reason(ns: &KubeNamespace, older_than: Duration, now: SystemTime) -> Option<String> {
    let heartbeat = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HEARTBEAT_ANNOTATION))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(beat) = heartbeat {
        let since = age(beat, now);
        if since < STALE_AFTER {
            return Some(format!(
                "its run is live (heartbeat {} ago)",
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            ));
        }
    }
    let created = ns
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_second()).ok());
    match created {
        Some(created) if age(created, now) < older_than => Some(format!(
            "younger than {}",
            humantime::format_duration(older_than)
        )),
        _ => None,
    }
}

/// Deletes polygraph's namespaces of runs that are not live and are at least `older_than` old,
/// and waits until they are gone. With `run`, that run's only, whatever its heartbeat: the user
/// named a run they know is over (the command a run whose clean-up gave up prints; its heartbeat
/// may be younger than `STALE_AFTER`).
pub async fn gc(
    client: Client,
    older_than: Duration,
    run: Option<&str>,
) -> Result<KubeGcReport, BackendError> {
    let api: Api<KubeNamespace> = Api::all(client.clone());
    let selector = match run {
        Some(run) => format!("{OWNER_LABEL}={OWNER},{RUN_LABEL}={run}"),
        None => format!("{OWNER_LABEL}={OWNER}"),
    };
    let list = call("listing polygraph's namespaces", || async {
        api.list(&ListParams::default().labels(&selector)).await
    })
    .await?;
    let now = SystemTime::now();
    let mut report = KubeGcReport::default();
    for ns in list.items {
        let Some(name) = ns.metadata.name.clone() else {
            continue;
        };
        if let Some(reason) = keep_reason(&ns, older_than, now).filter(|_| run.is_none()) {
            report.kept.push((name, reason));
            continue;
        }
        if delete_namespace(&api, &name).await? {
            report.removed.push(name);
        }
    }
    for name in &report.removed {
        await_deletion(&format!("namespace {name}"), || async {
            api.get(name).await
        })
        .await?;
    }
    // Cluster-scoped policies go with their run: kept when any namespace of the run was kept.
    let live: BTreeSet<String> = list_runs(&api, &selector).await?;
    for kind in ClusterKind::ALL {
        let Some(served) = cluster_policies::served(&client, kind).await? else {
            continue;
        };
        for (name, owner) in cluster_policies::owned(&client, served, run).await? {
            if live.contains(&owner) {
                report
                    .kept
                    .push((format!("{kind} {name}"), format!("its run {owner} is kept")));
                continue;
            }
            cluster_policies::delete(&client, served, &name).await?;
            report.removed.push(format!("{kind} {name}"));
        }
    }
    Ok(report)
}

/// The run ids of polygraph's namespaces still there.
async fn list_runs(
    api: &Api<KubeNamespace>,
    selector: &str,
) -> Result<BTreeSet<String>, BackendError> {
    let list = call("listing polygraph's namespaces", || async {
        api.list(&ListParams::default().labels(selector)).await
    })
    .await?;
    Ok(list
        .items
        .iter()
        .filter_map(|ns| ns.metadata.labels.as_ref()?.get(RUN_LABEL).cloned())
        .collect())
}

/// Renews the heartbeat of every namespace of `run_id` until dropped.
pub(super) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    pub(super) fn start(client: Client, run_id: String) -> Heartbeat {
        Heartbeat(tokio::spawn(async move {
            let api: Api<KubeNamespace> = Api::all(client);
            let selector = format!("{OWNER_LABEL}={OWNER},{RUN_LABEL}={run_id}");
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                // A missed beat is retried at the next one: three in a row must fail for `gc` to
                // take the run for dead.
                let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
                    continue;
                };
                let patch = serde_json::json!({
                    "metadata": {"annotations": {HEARTBEAT_ANNOTATION: heartbeat_now()}}
                });
                for name in list
                    .items
                    .iter()
                    .filter_map(|ns| ns.metadata.name.as_deref())
                {
                    let _ = api
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn namespace(heartbeat_age: Option<u64>) -> KubeNamespace {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        KubeNamespace {
            metadata: ObjectMeta {
                annotations: heartbeat_age.map(|a| {
                    BTreeMap::from([(HEARTBEAT_ANNOTATION.to_string(), (now - a).to_string())])
                }),
                ..ObjectMeta::default()
            },
            ..KubeNamespace::default()
        }
    }

    #[test]
    fn fresh_heartbeats_are_kept_stale_ones_are_not() {
        let now = SystemTime::now();
        let live = keep_reason(&namespace(Some(10)), Duration::ZERO, now);
        assert!(live.is_some_and(|r| r.starts_with("its run is live")));
        assert_eq!(
            keep_reason(&namespace(Some(600)), Duration::ZERO, now),
            None
        );
        assert_eq!(keep_reason(&namespace(None), Duration::ZERO, now), None);
    }
}
