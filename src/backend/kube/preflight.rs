//! Before anything is created: is the API server there, and may this user create polygraph's
//! namespaces? Either failing fails the run at once, as a setup failure with its own report
//! (`RunResult::not_started`), instead of every scenario failing the same way after its retries.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace as KubeNamespace;
use kube::api::PostParams;
use kube::{Api, Client};

use super::connection::{call, is_refusal};
use super::manifests::{self, RunNames};
use crate::backend::BackendError;
use crate::model::Namespace;

/// How long the API server gets to answer at all (every retry of a transient failure included):
/// a blackholed address would otherwise wait out the client's timeouts attempt after attempt.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The API server's version (`v1.36.0`), once it answered; then a server-side dry run of the
/// run's first namespace (`dryRun=All`: admission and RBAC judge it, nothing is stored). A 403 or
/// 422 there is the setup failure; any other answer (a webhook that cannot dry-run, say) is left
/// for the real creation to report.
pub async fn check(
    client: &Client,
    context: &str,
    names: &RunNames,
) -> Result<String, BackendError> {
    let version = tokio::time::timeout(
        REACH_TIMEOUT,
        call(
            &format!("reaching the API server of context {context}"),
            || client.apiserver_version(),
        ),
    )
    .await
    .map_err(|_| BackendError::Cluster {
        what: format!("reaching the API server of context {context}"),
        message: format!(
            "no answer within {}",
            humantime::format_duration(REACH_TIMEOUT)
        ),
    })??
    .git_version;
    let probe = manifests::namespace(
        names,
        &Namespace {
            name: "x".into(),
            labels: Default::default(),
        },
    );
    let api: Api<KubeNamespace> = Api::all(client.clone());
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&params, &probe).await {
        Err(error) if is_refusal(&error) => Err(BackendError::Kube {
            what: format!(
                "creating namespaces (dry run of {}): polygraph needs to create, label and delete namespaces of its own (ci/in-cluster/rbac.yaml lists every permission)",
                probe.metadata.name.as_deref().unwrap_or("?")
            ),
            source: error,
        }),
        _ => Ok(version),
    }
}
