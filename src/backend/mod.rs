//! Backends make the cluster model real: the embedded `local` cluster of network namespaces, and
//! (later) `kube` for real clusters. The runner drives either through `Backend`.

pub mod kube;
pub mod local;

use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Target};

use crate::model::{Labels, Namespace, Pod, PodRef};
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "the local cluster needs root (it creates network namespaces and nftables rules): run as root"
    )]
    NotRoot,
    #[error("{tool} is not installed: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("pod {pod}: {message}")]
    Pod { pod: PodRef, message: String },
    #[error("namespace {namespace}: {message}")]
    Namespace { namespace: String, message: String },
    #[error("the local backend cannot do this: {0}")]
    Unsupported(String),
    #[error("probing from {pod}: {message}")]
    Probe { pod: PodRef, message: String },
    #[error("Kubernetes API: {0}")]
    Kube(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Per source pod, where its next batch's UDP source ports start: each batch takes the next block,
/// so no UDP 5-tuple repeats until the agent's port range wraps (see
/// `polygraph_agent::wire::udp_source_port`).
#[derive(Debug, Default)]
pub struct UdpSourcePorts(std::sync::Mutex<std::collections::BTreeMap<PodRef, u32>>);

impl UdpSourcePorts {
    /// The base for a batch of `targets` from `from`, advancing the pod's cursor past it.
    pub fn next(&self, from: &PodRef, targets: &[Target]) -> u32 {
        let udp = targets
            .iter()
            .filter(|t| t.protocol == polygraph_agent::wire::Protocol::Udp)
            .count();
        let mut cursors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cursor = cursors.entry(from.clone()).or_insert(0);
        let base = *cursor;
        *cursor = cursor.wrapping_add(u32::try_from(udp).unwrap_or(u32::MAX));
        base
    }
}

/// The agent's probe request for a batch, as one JSON line (the agent needs no stdin EOF).
pub fn probe_request(
    targets: &[Target],
    timeout: Duration,
    udp_source_base: Option<u32>,
) -> String {
    let request = polygraph_agent::wire::ProbeRequest {
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        targets: targets.to_vec(),
        udp_source_base,
    };
    // Plain data of strings and numbers: serialization cannot fail.
    serde_json::to_string(&request).unwrap_or_default()
}

/// The agent's output (one JSON result per line, in request order), checked for completeness.
pub fn parse_probe_output(
    from: &PodRef,
    output: &str,
    expected: usize,
) -> Result<Vec<ProbeResult>, BackendError> {
    let fail = |message: String| BackendError::Probe {
        pod: from.clone(),
        message,
    };
    let results: Vec<ProbeResult> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("unreadable agent output: {e}")))?;
    if results.len() != expected {
        return Err(fail(format!(
            "{} results for {expected} targets",
            results.len()
        )));
    }
    Ok(results)
}

/// Long-lived connections held open by an agent `hold` process in one pod (see the agent's
/// `hold`): established once, then re-tested on demand.
pub struct Held {
    from: PodRef,
    targets: usize,
    stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    stdout:
        tokio::io::Lines<tokio::io::BufReader<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>>,
    /// The process or exec session; ending it closes the connections.
    _session: Box<dyn Send>,
}

impl Held {
    /// Sends the request; `establish` then reads how each connection opened.
    pub async fn start(
        from: PodRef,
        targets: &[Target],
        timeout: Duration,
        stdin: impl tokio::io::AsyncWrite + Send + 'static,
        stdout: impl tokio::io::AsyncRead + Send + 'static,
        session: impl Send + 'static,
    ) -> Result<Held, BackendError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = Box::pin(stdin);
        let stdout: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> = Box::pin(stdout);
        // Held flows keep their sockets: kernel-chosen ports, outside the probes' range.
        let line = format!("{}\n", probe_request(targets, timeout, None));
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| BackendError::Probe {
                pod: from.clone(),
                message: format!("holding connections: {e}"),
            })?;
        stdin.flush().await?;
        Ok(Held {
            from,
            targets: targets.len(),
            stdin,
            stdout: tokio::io::BufReader::new(stdout).lines(),
            _session: Box::new(session),
        })
    }

    async fn read_results(&mut self, timeout: Duration) -> Result<Vec<ProbeResult>, BackendError> {
        let mut text = String::new();
        let limit = timeout + Duration::from_secs(10);
        for _ in 0..self.targets {
            let line = tokio::time::timeout(limit, self.stdout.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                _ => break,
            }
        }
        parse_probe_output(&self.from, &text, self.targets)
    }

    /// How each connection opened (`connected` = established).
    pub async fn established(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        self.read_results(timeout).await
    }

    /// Re-tests every connection: `connected` means it still carries traffic.
    pub async fn check(&mut self, timeout: Duration) -> Result<Vec<ProbeResult>, BackendError> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(b"check\n").await?;
        self.stdin.flush().await?;
        self.read_results(timeout).await
    }
}

/// What the runner needs from a cluster. Mutations mirror the scenario step actions; `probe` runs
/// one batch from one pod (one agent process, all targets concurrently).
// Backends are driven from a single task, so their futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// One line for report headers, e.g. `local (nftables dataplane)`.
    fn describe(&self) -> String;
    /// The pod's real address when the backend assigns its own (a Kubernetes cluster does); `None`
    /// means the model's address is the real one.
    fn address(&self, _pod: &PodRef) -> Option<std::net::IpAddr> {
        None
    }
    /// The node the pod runs on, when the backend knows: cells are same-node or cross-node.
    fn node(&self, _pod: &PodRef) -> Option<&str> {
        None
    }
    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError>;
    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError>;
    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError>;
    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError>;
    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError>;
    async fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), BackendError>;
    async fn apply_policy(&mut self, policy: &Policy) -> Result<(), BackendError>;
    async fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), BackendError>;
    /// Waits until every pod serves its ports, or names the pod that doesn't.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError>;
    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError>;
    /// Opens long-lived connections from `from` to `targets` and keeps them for `Held::check`.
    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError>;
    /// Removes everything the backend created. Idempotent.
    async fn cleanup(&mut self) -> Result<(), BackendError>;
}

/// Either backend, chosen at run time (`Backend` has async methods, so it is not object-safe).
// One per run, never moved in a hot path: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    Local(local::LocalBackend),
    Kube(kube::KubeBackend),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Local($b) => $call,
            AnyBackend::Kube($b) => $call,
        }
    };
}

impl Backend for AnyBackend {
    fn describe(&self) -> String {
        delegate!(self, b => b.describe())
    }
    fn address(&self, pod: &PodRef) -> Option<std::net::IpAddr> {
        delegate!(self, b => b.address(pod))
    }
    fn node(&self, pod: &PodRef) -> Option<&str> {
        delegate!(self, b => b.node(pod))
    }
    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError> {
        delegate!(self, b => b.create_namespace(namespace).await)
    }
    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError> {
        delegate!(self, b => b.delete_namespace(name).await)
    }
    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError> {
        delegate!(self, b => b.set_namespace_labels(name, labels).await)
    }
    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        delegate!(self, b => b.create_pod(pod).await)
    }
    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError> {
        delegate!(self, b => b.delete_pod(pod).await)
    }
    async fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), BackendError> {
        delegate!(self, b => b.set_pod_labels(pod, labels).await)
    }
    async fn apply_policy(&mut self, policy: &Policy) -> Result<(), BackendError> {
        delegate!(self, b => b.apply_policy(policy).await)
    }
    async fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), BackendError> {
        delegate!(self, b => b.delete_policy(namespace, name).await)
    }
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        delegate!(self, b => b.wait_ready(timeout).await)
    }
    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        delegate!(self, b => b.probe(from, targets, timeout).await)
    }
    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        delegate!(self, b => b.hold(from, targets, timeout).await)
    }
    async fn cleanup(&mut self) -> Result<(), BackendError> {
        delegate!(self, b => b.cleanup().await)
    }
}
