//! Reaching the cluster as kubectl would, and calling its API: every call is retried with backoff
//! on throttling (429), server errors and transport failures, and a failure names what was being
//! done and keeps kube's error as its cause.

use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::backend::BackendError;

/// How to reach the cluster, as kubectl would.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl Connection {
    /// Whether a cluster is configured: a kubeconfig file (KUBECONFIG, ~/.kube/config, --kubeconfig)
    /// or in-cluster credentials.
    pub fn configured(&self) -> bool {
        self.kubeconfig.is_some()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || kubeconfig_file_present()
    }

    /// A client, and the name of the context it uses (`in-cluster` for a pod's service account).
    pub async fn client(&self) -> Result<(Client, String), BackendError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let kubeconfig = match &self.kubeconfig {
            Some(path) => {
                Some(
                    Kubeconfig::read_from(path).map_err(|e| BackendError::KubeConfig {
                        what: format!("reading kubeconfig {}", path.display()),
                        source: Box::new(e),
                    })?,
                )
            }
            // A kubeconfig that exists but can't be read is an error to report, not a reason to
            // try in-cluster credentials instead.
            None => match Kubeconfig::read() {
                Ok(kubeconfig) => Some(kubeconfig),
                Err(e) if kubeconfig_file_present() => {
                    return Err(BackendError::KubeConfig {
                        what: "reading the kubeconfig ($KUBECONFIG or ~/.kube/config)".into(),
                        source: Box::new(e),
                    });
                }
                Err(_) => None,
            },
        };
        let config_error = |e: kube::config::KubeconfigError| BackendError::KubeConfig {
            what: "loading the kubeconfig".into(),
            source: Box::new(e),
        };
        let (config, context) = match kubeconfig {
            Some(kubeconfig) => {
                let context = self
                    .context
                    .clone()
                    .or_else(|| kubeconfig.current_context.clone())
                    .unwrap_or_else(|| "kubeconfig".into());
                let config = Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(config_error)?;
                (config, context)
            }
            None => {
                let config = Config::infer()
                    .await
                    .map_err(|e| BackendError::KubeConfig {
                        what: "no cluster configuration (kubeconfig or in-cluster)".into(),
                        source: Box::new(e),
                    })?;
                (config, "in-cluster".to_string())
            }
        };
        let client = Client::try_from(config).map_err(|e| BackendError::Kube {
            what: "creating the Kubernetes client".into(),
            source: e,
        })?;
        Ok((client, context))
    }
}

/// Whether kubectl would find a kubeconfig file: one of `$KUBECONFIG`'s paths, else
/// `~/.kube/config`.
fn kubeconfig_file_present() -> bool {
    if let Some(paths) = std::env::var_os("KUBECONFIG") {
        return std::env::split_paths(&paths).any(|p| p.is_file());
    }
    std::env::var_os("HOME").is_some_and(|home| PathBuf::from(home).join(".kube/config").is_file())
}

pub(super) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

pub(super) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Whether the API server refused an object by policy (admission: Pod Security, an admission
/// webhook, a forbidden field) rather than failed to take it.
pub(super) fn is_refusal(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403 || status.code == 422)
}

/// A refusal (`is_refusal`) as the reason a scenario is unsupported: the API server's own words.
pub(super) fn refusal(what: String, error: &kube::Error) -> BackendError {
    let reason = match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    };
    BackendError::Refused { what, reason }
}

/// A failed API call, naming what it was for.
pub(super) fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Kube { what, source }
}

/// Runs an API call, retrying transient failures with exponential backoff.
pub(super) async fn call<T, F, Fut>(what: &str, op: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(6),
    )
    .when(is_transient)
    .await
    .map_err(api_error(what))
}

/// Asks for a namespace's deletion (in the background, retried like every call); `false` when it
/// was already gone.
pub(super) async fn delete_namespace(
    api: &kube::Api<k8s_openapi::api::core::v1::Namespace>,
    name: &str,
) -> Result<bool, BackendError> {
    let params = kube::api::DeleteParams::background();
    match call(&format!("deleting namespace {name}"), || async {
        api.delete(name, &params).await
    })
    .await
    {
        Ok(_) => Ok(true),
        Err(BackendError::Kube { source, .. }) if is_not_found(&source) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long deletions may take to finish before polygraph gives up waiting.
pub(super) const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until `get` says the object is gone.
pub(super) async fn await_deletion<F, Fut, T>(what: &str, get: F) -> Result<(), BackendError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = tokio::time::Instant::now() + DELETE_TIMEOUT;
    loop {
        match get().await {
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) if !is_transient(&e) => return Err(api_error(what)(e)),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(BackendError::Cluster {
                    what: what.to_string(),
                    message: format!(
                        "still there after {}",
                        humantime::format_duration(DELETE_TIMEOUT)
                    ),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
