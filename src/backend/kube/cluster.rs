//! The Kubernetes backend: the cluster model made real on any cluster a kubeconfig reaches.
//!
//! polygraph only creates, changes and deletes objects in its own namespaces
//! (`<prefix>-<run id>-<base>`, labelled with the owner label and the run id), and removes them all
//! on cleanup. Every API call is retried with backoff on throttling (429), server errors and
//! transport failures; those are never mistaken for probe outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Namespace as KubeNamespace, Node, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use polygraph_agent::wire::{ProbeResult, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cni;
use super::manifests::{
    self, BASE_NAME_LABEL, KubeOptions, OWNER, OWNER_LABEL, RUN_LABEL, RunNames,
};
use super::placement::{self, Spread};
use crate::backend::{Backend, BackendError, Held};
use crate::model::{Labels, NAMESPACE_NAME_LABEL, Namespace, Pod, PodRef};
use crate::policy::Policy;

const FIELD_MANAGER: &str = "polygraph";
/// How long deletions may take to finish before polygraph gives up waiting.
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

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
        if self.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            return true;
        }
        if let Some(paths) = std::env::var_os("KUBECONFIG") {
            return std::env::split_paths(&paths).any(|p| p.is_file());
        }
        std::env::var_os("HOME")
            .is_some_and(|home| PathBuf::from(home).join(".kube/config").is_file())
    }

    pub async fn client(&self) -> Result<Client, BackendError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| BackendError::Kube(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(kube_config)?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(kube_config)?,
            None => Config::infer()
                .await
                .map_err(|e| BackendError::Kube(format!("no cluster configuration: {e}")))?,
        };
        Client::try_from(config).map_err(|e| BackendError::Kube(e.to_string()))
    }
}

fn kube_config(e: kube::config::KubeconfigError) -> BackendError {
    BackendError::Kube(format!("kubeconfig: {e}"))
}

fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Runs an API call, retrying transient failures with exponential backoff.
async fn call<T, F, Fut>(what: &str, op: F) -> Result<T, BackendError>
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
    .map_err(|e| BackendError::Kube(format!("{what}: {e}")))
}

/// An exec into the agent container with stdin and stdout (and stderr when asked for).
fn agent_exec(stderr: bool) -> AttachParams {
    AttachParams::default()
        .container("agent")
        .stdin(true)
        .stdout(true)
        .stderr(stderr)
}

pub struct KubeBackend {
    client: Client,
    names: RunNames,
    options: KubeOptions,
    context: String,
    cni: Option<String>,
    namespaces: BTreeSet<String>,
    pods: BTreeSet<PodRef>,
    addresses: BTreeMap<PodRef, IpAddr>,
    /// The node each ready pod runs on.
    nodes: BTreeMap<PodRef, String>,
    spread: Spread,
    /// Time allowed for one exec (on top of the probe timeout).
    exec_slack: Duration,
    cleaned: bool,
    udp_ports: crate::backend::UdpSourcePorts,
}

impl KubeBackend {
    pub async fn connect(
        connection: &Connection,
        options: KubeOptions,
        names: RunNames,
    ) -> Result<Self, BackendError> {
        let client = connection.client().await?;
        Ok(Self::with_client(
            client,
            options,
            names,
            connection
                .context
                .clone()
                .unwrap_or_else(|| "current context".into()),
        )
        .await)
    }

    /// A backend over an existing client (the tests give it a fake API server).
    pub async fn with_client(
        client: Client,
        options: KubeOptions,
        names: RunNames,
        context: String,
    ) -> Self {
        let mut backend = KubeBackend {
            client,
            names,
            options,
            context,
            cni: None,
            namespaces: BTreeSet::new(),
            pods: BTreeSet::new(),
            addresses: BTreeMap::new(),
            nodes: BTreeMap::new(),
            spread: Spread::default(),
            exec_slack: Duration::from_secs(15),
            cleaned: false,
            udp_ports: Default::default(),
        };
        backend.cni = backend.detect_cni().await;
        backend.spread = Spread::new(backend.schedulable_nodes().await);
        backend
    }

    /// How much longer than the probe timeout one exec may take (default 15 s: process start-up and
    /// the API server's round trips).
    pub fn with_exec_slack(mut self, slack: Duration) -> Self {
        self.exec_slack = slack;
        self
    }

    pub fn cni(&self) -> Option<&str> {
        self.cni.as_deref()
    }

    async fn detect_cni(&self) -> Option<String> {
        let api: Api<DaemonSet> = Api::all(self.client.clone());
        let list = call("listing DaemonSets", || async {
            api.list(&ListParams::default()).await
        })
        .await
        .ok()?;
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        cni::recognise(&names)
    }

    /// The nodes pods can be spread over; none (the scheduler decides) when nodes can't be listed.
    async fn schedulable_nodes(&self) -> Vec<String> {
        let api: Api<Node> = Api::all(self.client.clone());
        match call("listing nodes", || async {
            api.list(&ListParams::default()).await
        })
        .await
        {
            Ok(list) => placement::schedulable(
                &list.items,
                &self.options.node_selector,
                &self.options.tolerations,
            ),
            // Without node access (RBAC) the scheduler places pods; the header says so.
            Err(_) => Vec::new(),
        }
    }

    fn pods_api(&self, base_namespace: &str) -> Api<KubePod> {
        Api::namespaced(self.client.clone(), &self.names.namespace(base_namespace))
    }

    /// Waits until `get` says the object is gone.
    async fn await_deletion<F, Fut, T>(&self, what: &str, get: F) -> Result<(), BackendError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let deadline = tokio::time::Instant::now() + DELETE_TIMEOUT;
        loop {
            match get().await {
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) if !is_transient(&e) => {
                    return Err(BackendError::Kube(format!("{what}: {e}")));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(BackendError::Kube(format!(
                        "{what}: still there after {}",
                        humantime::format_duration(DELETE_TIMEOUT)
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Replaces an object's labels with `labels` (plus polygraph's own) by a JSON merge patch that
    /// also removes the labels no longer wanted.
    fn label_patch(
        current: &BTreeMap<String, String>,
        labels: &Labels,
        own: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let mut patch = serde_json::Map::new();
        for key in current.keys() {
            if !labels.contains_key(key) && !own.contains_key(key) && key != NAMESPACE_NAME_LABEL {
                patch.insert(key.clone(), serde_json::Value::Null);
            }
        }
        for (key, value) in labels.iter().chain(own) {
            if key != NAMESPACE_NAME_LABEL {
                patch.insert(key.clone(), serde_json::Value::String(value.clone()));
            }
        }
        serde_json::json!({"metadata": {"labels": patch}})
    }

    /// Why a pod isn't ready: its phase, container states and recent events.
    async fn unready_reason(&self, pod: &PodRef) -> String {
        let api = self.pods_api(&pod.namespace);
        let mut reasons = Vec::new();
        if let Ok(current) = api.get(&pod.name).await {
            let status = current.status.unwrap_or_default();
            reasons.push(format!(
                "phase {}",
                status.phase.unwrap_or_else(|| "unknown".into())
            ));
            for condition in status.conditions.iter().flatten() {
                if condition.status != "True"
                    && let Some(reason) = &condition.reason
                {
                    reasons.push(format!(
                        "{} {reason}: {}",
                        condition.type_,
                        condition.message.clone().unwrap_or_default()
                    ));
                }
            }
            for container in status.container_statuses.iter().flatten() {
                if let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                    reasons.push(format!(
                        "container {} waiting: {} {}",
                        container.name,
                        waiting.reason.clone().unwrap_or_default(),
                        waiting.message.clone().unwrap_or_default()
                    ));
                }
            }
        }
        let events: Api<Event> =
            Api::namespaced(self.client.clone(), &self.names.namespace(&pod.namespace));
        let selector = format!("involvedObject.name={}", pod.name);
        if let Ok(list) = events.list(&ListParams::default().fields(&selector)).await {
            for event in list.items.iter().rev().take(5) {
                reasons.push(format!(
                    "event {}: {}",
                    event.reason.clone().unwrap_or_default(),
                    event.message.clone().unwrap_or_default()
                ));
            }
        }
        crate::input::one_line(&reasons.join("; "))
    }

    /// Deletes every namespace of this run and waits for them to go.
    async fn remove_run(&mut self) -> Result<(), BackendError> {
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let selector = format!("{OWNER_LABEL}={OWNER},{RUN_LABEL}={}", self.names.run_id);
        let list = call("listing this run's namespaces", || async {
            api.list(&ListParams::default().labels(&selector)).await
        })
        .await?;
        for ns in &list.items {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(BackendError::Kube(format!(
                        "deleting namespace {name}: {e}"
                    )));
                }
            }
        }
        for ns in &list.items {
            if let Some(name) = &ns.metadata.name {
                self.await_deletion(&format!("namespace {name}"), || async {
                    api.get(name).await
                })
                .await?;
            }
        }
        self.namespaces.clear();
        self.pods.clear();
        self.addresses.clear();
        self.nodes.clear();
        self.cleaned = true;
        Ok(())
    }
}

impl Backend for KubeBackend {
    fn describe(&self) -> String {
        let placement = match self.spread.nodes().len() {
            0 => "no schedulable node listed: placed by the scheduler".to_string(),
            1 => "one schedulable node".to_string(),
            n => format!("spread over {n} nodes"),
        };
        format!(
            "kube ({}, CNI: {}, {placement}, run {})",
            self.context,
            self.cni.as_deref().unwrap_or("not recognised"),
            self.names.run_id
        )
    }

    fn address(&self, pod: &PodRef) -> Option<IpAddr> {
        self.addresses.get(pod).copied()
    }

    fn node(&self, pod: &PodRef) -> Option<&str> {
        self.nodes.get(pod).map(String::as_str)
    }

    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError> {
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let manifest = manifests::namespace(&self.names, namespace);
        call(
            &format!(
                "creating namespace {}",
                self.names.namespace(&namespace.name)
            ),
            || async { api.create(&PostParams::default(), &manifest).await },
        )
        .await?;
        self.namespaces.insert(namespace.name.clone());
        Ok(())
    }

    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError> {
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let real = self.names.namespace(name);
        call(&format!("deleting namespace {real}"), || async {
            api.delete(&real, &DeleteParams::background()).await
        })
        .await?;
        self.await_deletion(&format!("namespace {real}"), || async {
            api.get(&real).await
        })
        .await?;
        self.namespaces.remove(name);
        self.pods.retain(|p| p.namespace != name);
        self.addresses.retain(|p, _| p.namespace != name);
        self.nodes.retain(|p, _| p.namespace != name);
        Ok(())
    }

    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError> {
        let api: Api<KubeNamespace> = Api::all(self.client.clone());
        let real = self.names.namespace(name);
        let current = call(&format!("reading namespace {real}"), || async {
            api.get(&real).await
        })
        .await?;
        let own = BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER.to_string()),
            (RUN_LABEL.to_string(), self.names.run_id.clone()),
            (BASE_NAME_LABEL.to_string(), name.to_string()),
        ]);
        let patch = Self::label_patch(&current.metadata.labels.unwrap_or_default(), labels, &own);
        call(&format!("relabelling namespace {real}"), || async {
            api.patch(&real, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        })
        .await?;
        Ok(())
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let api = self.pods_api(&pod.namespace);
        let affinity = self.spread.next_affinity();
        let manifest = manifests::pod(&self.names, &self.options, pod, affinity);
        call(&format!("creating pod {}", pod.key()), || async {
            api.create(&PostParams::default(), &manifest).await
        })
        .await?;
        self.pods.insert(pod.key());
        Ok(())
    }

    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError> {
        let api = self.pods_api(&pod.namespace);
        call(&format!("deleting pod {pod}"), || async {
            api.delete(&pod.name, &DeleteParams::default().grace_period(0))
                .await
        })
        .await?;
        self.await_deletion(&format!("pod {pod}"), || async { api.get(&pod.name).await })
            .await?;
        self.pods.remove(pod);
        self.addresses.remove(pod);
        self.nodes.remove(pod);
        Ok(())
    }

    async fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), BackendError> {
        let api = self.pods_api(&pod.namespace);
        let current = call(&format!("reading pod {pod}"), || async {
            api.get(&pod.name).await
        })
        .await?;
        let own = BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER.to_string()),
            (RUN_LABEL.to_string(), self.names.run_id.clone()),
        ]);
        let patch = Self::label_patch(&current.metadata.labels.unwrap_or_default(), labels, &own);
        call(&format!("relabelling pod {pod}"), || async {
            api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        })
        .await?;
        Ok(())
    }

    async fn apply_policy(&mut self, policy: &Policy) -> Result<(), BackendError> {
        let bases: BTreeSet<String> = self.namespaces.iter().cloned().collect();
        let manifest = manifests::policy(&self.names, policy, &bases);
        let api: Api<NetworkPolicy> = Api::namespaced(
            self.client.clone(),
            &self.names.namespace(&policy.namespace),
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        call(
            &format!("applying NetworkPolicy {}", policy.key()),
            || async {
                api.patch(&policy.name, &params, &Patch::Apply(&manifest))
                    .await
            },
        )
        .await?;
        Ok(())
    }

    async fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), BackendError> {
        let api: Api<NetworkPolicy> =
            Api::namespaced(self.client.clone(), &self.names.namespace(namespace));
        call(
            &format!("deleting NetworkPolicy {namespace}/{name}"),
            || async { api.delete(name, &DeleteParams::default()).await },
        )
        .await?;
        self.await_deletion(&format!("NetworkPolicy {namespace}/{name}"), || async {
            api.get(name).await
        })
        .await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pending: Vec<PodRef> = self
            .pods
            .iter()
            .filter(|p| !self.addresses.contains_key(*p))
            .cloned()
            .collect();
        for pod in pending {
            let api = self.pods_api(&pod.namespace);
            loop {
                let current = call(&format!("reading pod {pod}"), || async {
                    api.get(&pod.name).await
                })
                .await?;
                let node = current.spec.as_ref().and_then(|s| s.node_name.clone());
                let status = current.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let ip = status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                let failing = status.container_statuses.iter().flatten().any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        .is_some_and(|r| {
                            matches!(
                                r,
                                "ImagePullBackOff"
                                    | "ErrImagePull"
                                    | "CrashLoopBackOff"
                                    | "InvalidImageName"
                                    | "CreateContainerConfigError"
                            )
                        })
                });
                match (ready, ip) {
                    (true, Some(ip)) => {
                        self.addresses.insert(pod.clone(), ip);
                        if let Some(node) = node {
                            self.nodes.insert(pod.clone(), node);
                        }
                        break;
                    }
                    _ if failing || tokio::time::Instant::now() > deadline => {
                        return Err(BackendError::Pod {
                            pod: pod.clone(),
                            message: format!("not ready: {}", self.unready_reason(&pod).await),
                        });
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Ok(())
    }

    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        let fail = |message: &str| BackendError::Probe {
            pod: from.clone(),
            message: message.into(),
        };
        let api = self.pods_api(&from.namespace);
        let params = agent_exec(false);
        let mut attached = call(&format!("exec into {from}"), || async {
            api.exec(&from.name, ["/polygraph-agent", "hold"], &params)
                .await
        })
        .await?;
        let stdin = attached.stdin().ok_or_else(|| fail("exec has no stdin"))?;
        let stdout = attached
            .stdout()
            .ok_or_else(|| fail("exec has no stdout"))?;
        // The exec session lives as long as the connections it holds.
        Held::start(from.clone(), targets, timeout, stdin, stdout, attached).await
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let fail = |message: String| BackendError::Probe {
            pod: from.clone(),
            message,
        };
        let request = crate::backend::probe_request(
            targets,
            timeout,
            Some(self.udp_ports.next(from, targets)),
        );
        let api = self.pods_api(&from.namespace);
        let params = agent_exec(true);
        let exec = async {
            let mut attached = call(&format!("exec into {from}"), || async {
                api.exec(&from.name, ["/polygraph-agent", "probe"], &params)
                    .await
            })
            .await?;
            let mut stdin = attached
                .stdin()
                .ok_or_else(|| fail("exec has no stdin".into()))?;
            let mut stdout = attached
                .stdout()
                .ok_or_else(|| fail("exec has no stdout".into()))?;
            let mut stderr = attached
                .stderr()
                .ok_or_else(|| fail("exec has no stderr".into()))?;
            let status = attached.take_status();
            stdin
                .write_all(format!("{request}\n").as_bytes())
                .await
                .map_err(|e| fail(format!("writing the request: {e}")))?;
            // stdin stays open until the exec is over: the agent reads one JSON request and needs
            // no EOF, and closing stdin over the v4 protocol would close the whole connection.
            let _stdin_open = stdin;
            // Both streams are drained together: a full stderr pipe must not stall stdout.
            let (mut out, mut err) = (String::new(), String::new());
            let (o, e) = tokio::join!(
                stdout.read_to_string(&mut out),
                stderr.read_to_string(&mut err)
            );
            o.map_err(|e| fail(format!("reading output: {e}")))?;
            let _ = e;
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            attached
                .join()
                .await
                .map_err(|e| fail(format!("exec: {e}")))?;
            if let Some(status) = status
                && status.status.as_deref() == Some("Failure")
            {
                return Err(fail(format!(
                    "the agent failed: {} {}",
                    status.message.unwrap_or_default(),
                    crate::input::one_line(&err)
                )));
            }
            Ok::<_, BackendError>(out)
        };
        let limit = timeout + self.exec_slack;
        let out = tokio::time::timeout(limit, exec).await.map_err(|_| {
            fail(format!(
                "exec did not finish within {}",
                humantime::format_duration(limit)
            ))
        })??;
        crate::backend::parse_probe_output(from, &out, targets.len())
    }

    async fn cleanup(&mut self) -> Result<(), BackendError> {
        if self.cleaned {
            return Ok(());
        }
        self.remove_run().await
    }
}

/// What `polygraph gc --backend kube` removed.
#[derive(Debug, Default)]
pub struct KubeGcReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// Deletes polygraph's namespaces (by owner label) older than `older_than`.
pub async fn gc(client: Client, older_than: Duration) -> Result<KubeGcReport, BackendError> {
    let api: Api<KubeNamespace> = Api::all(client);
    let selector = format!("{OWNER_LABEL}={OWNER}");
    let list = call("listing polygraph's namespaces", || async {
        api.list(&ListParams::default().labels(&selector)).await
    })
    .await?;
    let now = std::time::SystemTime::now();
    let mut report = KubeGcReport::default();
    for ns in list.items {
        let Some(name) = ns.metadata.name.clone() else {
            continue;
        };
        let created = ns.metadata.creation_timestamp.as_ref().map(|t| {
            std::time::SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0))
        });
        let old_enough =
            created.is_none_or(|c| now.duration_since(c).unwrap_or_default() >= older_than);
        if old_enough {
            call(&format!("deleting namespace {name}"), || async {
                api.delete(&name, &DeleteParams::background()).await
            })
            .await?;
            report.removed.push(name);
        } else {
            report.kept.push(name);
        }
    }
    Ok(report)
}
