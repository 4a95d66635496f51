//! Backends make the cluster model real: `local` (the embedded cluster of network namespaces with
//! the nftables reference dataplane), `kube` (any cluster a kubeconfig reaches), `sim` (answers from
//! the oracle, no root, no cluster) and the dry-run recorder (`kube::dry_run`), which prints the
//! API calls a Kubernetes run would make. The runner drives all of them through `Backend`, and tells
//! them what to change only in `world::Mutation`s: no backend knows what a scenario is.

mod agent_io;
pub mod kube;
pub mod local;
pub mod session;
pub mod sim;

use std::net::IpAddr;
use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Target};

pub use agent_io::{UdpSourcePorts, batch_request, parse_probe_output, probe_request};
pub use session::{Held, Sessions};

use crate::model::PodRef;
use crate::world::Mutation;

/// What went wrong in a backend, with what it was doing and, where there is one, the cause.
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
    /// A host command that ran and failed: its own words are the cause.
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("pod {pod}: {message}")]
    Pod { pod: PodRef, message: String },
    #[error("namespace {namespace}: {message}")]
    Namespace { namespace: String, message: String },
    /// The change does not fit the cluster as the backend knows it.
    #[error("{mutation}")]
    Rejected {
        mutation: String,
        #[source]
        source: crate::world::WorldError,
    },
    #[error("probing from {pod}: {message}")]
    Probe { pod: PodRef, message: String },
    /// The cluster refuses what the scenario needs (a host-network pod under Pod Security):
    /// the scenario is unsupported there, not failed.
    #[error("the cluster refused {what}: {reason}")]
    Refused { what: String, reason: String },
    /// A Kubernetes API call failed (after retries, when the failure was transient).
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: ::kube::Error,
    },
    /// The cluster did not do what polygraph waited for (no cause beyond the API's answers).
    #[error("{what}: {message}")]
    Cluster { what: String, message: String },
    #[error("{what}")]
    KubeConfig {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Clean-up gave up (the API server stayed unreachable for the whole budget): what is left
    /// is named, with the command that removes it.
    #[error("clean-up of run {run_id} gave up after {}; remove what is left with `{gc}`", humantime::format_duration(*.after))]
    CleanupIncomplete {
        run_id: String,
        after: Duration,
        gc: String,
        #[source]
        source: Box<BackendError>,
    },
}

impl BackendError {
    /// A failure worth trying again: the API server throttled, restarted or could not be reached.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Kube { source, .. } if kube::connection_is_transient(source))
    }

    /// A mutation the cluster as the backend knows it cannot take.
    pub fn rejected(mutation: &Mutation) -> impl FnOnce(crate::world::WorldError) -> BackendError {
        let mutation = mutation.to_string();
        move |source| BackendError::Rejected { mutation, source }
    }

    /// An I/O failure, saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let what = what.into();
        move |source| BackendError::Io { what, source }
    }
}

/// How long a batch's probes wait. `timeout` bounds everything; `deadline`, when set, is how long
/// a silent target is waited for before a second, independent attempt confirms its silence
/// (`ProbeRequest::deadline_ms`): a drop then costs twice the deadline, not the timeout. The runner
/// derives the deadline from the answers it has seen (`run::Deadlines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub timeout: Duration,
    pub deadline: Option<Duration>,
    /// With a deadline, the attempts a silent target gets in all (at least 2): more where the
    /// network loses packets (`run::Deadlines`).
    pub attempts: u32,
}

impl ProbeTiming {
    /// The longest a silent target is waited for: twice the deadline, or the timeout.
    pub fn silent_wait(self) -> Duration {
        self.deadline
            .map(|d| d * 2)
            .filter(|wait| *wait < self.timeout)
            .unwrap_or(self.timeout)
    }

    /// The longest deadline the agent accepts within `timeout`: twice it stays below the timeout
    /// (zero for a timeout under 2 ms).
    pub fn longest_deadline(timeout: Duration) -> Duration {
        (timeout / 2).saturating_sub(Duration::from_millis(1))
    }

    /// The deadline the agent uses: none where twice it would reach the timeout.
    pub fn effective_deadline(self) -> Option<Duration> {
        self.deadline.filter(|d| *d * 2 < self.timeout)
    }
}

/// One attempt per target, waited for the whole timeout.
impl From<Duration> for ProbeTiming {
    fn from(timeout: Duration) -> Self {
        ProbeTiming {
            timeout,
            deadline: None,
            attempts: 2,
        }
    }
}

/// What a cluster's CRD for a cluster-scoped policy kind says of itself: network-policy-api's
/// `policy.networking.k8s.io/bundle-version` and `policy.networking.k8s.io/channel` annotations
/// (`standard` or `experimental`; the standard channel lacks the experimental fields, e.g.
/// named ports since v0.2.1, which an API server would silently prune).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CrdBundle {
    pub bundle_version: Option<String>,
    pub channel: Option<String>,
}

impl CrdBundle {
    pub fn is_standard(&self) -> bool {
        self.channel.as_deref() == Some("standard")
    }
}

impl std::fmt::Display for CrdBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CRD bundle {}, {} channel",
            self.bundle_version.as_deref().unwrap_or("unknown"),
            self.channel.as_deref().unwrap_or("unknown")
        )
    }
}

/// What a run learned of the cluster it ran on, for the reports (a conformance report names the
/// cluster it certifies). Every field is what the cluster said; unknown stays empty.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterInfo {
    /// The API server's version (`v1.36.0`); none where there is no API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Nodes listed (0: not listable).
    #[serde(default)]
    pub nodes: usize,
    /// The nodes' kernels, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
    /// The CNI recognised (`Calico`, `kindnet`), or polygraph's own dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<String>,
    /// The images of the CNI's DaemonSets, each once: the version a vendor certifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_images: Vec<String>,
}

/// What the runner needs from a cluster: carry out mutations, wait for pods, probe from a pod (one
/// batch, all targets concurrently), hold connections, and clean up.
// Backends are driven from a single task, so their futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// One line for report headers, e.g. `local (nftables dataplane, run 0a1b2c)`.
    fn describe(&self) -> String;
    /// What `cleanup` removes, for the message after an interrupt, e.g. `the local cluster was
    /// removed`.
    fn cleanup_message(&self) -> String;
    /// Whether a pod created with an address of the scenario's choosing gets it (polygraph's own
    /// clusters: yes; Kubernetes: its IPAM decides, so scenarios that reuse an address are
    /// unsupported there).
    fn chooses_addresses(&self) -> bool {
        true
    }
    /// The pod's real addresses, one per family it has, when the backend assigns its own (a
    /// Kubernetes cluster does; the local cluster adds an IPv6 one when dual-stack). Empty means
    /// the model's address is the only one.
    fn addresses(&self, _pod: &PodRef) -> Vec<IpAddr> {
        Vec::new()
    }
    /// The ClusterIPs of the Service polygraph made for the pod (one per family), for probes with
    /// `--target service`; empty when there is none.
    fn service_addresses(&self, _pod: &PodRef) -> Vec<IpAddr> {
        Vec::new()
    }
    /// The node the pod runs on, when the backend knows: cells are same-node or cross-node.
    fn node(&self, _pod: &PodRef) -> Option<&str> {
        None
    }
    /// Where a NodePort probe for `pod`'s `pp` goes in `family`: its node's address and the node
    /// port of the pod's own Service; `None` when the backend has none.
    fn node_port(
        &self,
        _pod: &PodRef,
        _pp: crate::model::PortProtocol,
        _family: crate::model::Family,
    ) -> Option<(IpAddr, u16)> {
        None
    }
    /// The hosts outside the cluster a path with `target` needs (`ProbeTarget::needs_outside`):
    /// the client of NodePort probes, or the servers of external ones, each a `Pod` in
    /// `model::OUTSIDE_NAMESPACE` with its address and served ports. `port_protocols` are what the
    /// scenario probes, for a backend that runs its own servers. `Err(reason)`: the path cannot be
    /// probed here, and scenarios that need it are unsupported.
    async fn outside(
        &mut self,
        target: crate::model::ProbeTarget,
        _port_protocols: &[crate::model::PortProtocol],
    ) -> Result<Vec<crate::model::Pod>, String> {
        Err(format!("this backend cannot probe the {target} target"))
    }
    /// The fully qualified name of the Service polygraph made for the pod
    /// (`<service>.<namespace>.svc.<domain>.`), for probes with `--target service-name`.
    fn service_name(&self, _pod: &PodRef) -> Option<String> {
        None
    }
    /// The cluster's DNS, for paths that resolve names (`ProbeTarget::needs_dns`): the namespace
    /// and pods the servers are, so the analysis can judge each source's DNS egress. `Err(reason)`:
    /// names cannot be probed here, and scenarios that need them are unsupported.
    async fn dns(&mut self) -> Result<crate::model::ClusterDns, String> {
        Err("this backend has no cluster DNS".into())
    }
    /// Carries out one change; returns once the backend has accepted it (pods may not be ready).
    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError>;
    /// Waits until every pod serves its ports (and deletions have finished), or names the pod
    /// that doesn't.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError>;
    /// One batch from `from`: every target concurrently, on the pod's agent session (one per pod
    /// for the run, `session::Sessions`).
    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError>;
    /// One batch in an agent started for it alone (a process locally, an exec on Kubernetes), as
    /// the designs before polygraph's probe: what `bench probe --design exec-per-probe` measures.
    /// Backends with no agent to start answer as `probe` does.
    async fn probe_alone(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        self.probe(from, targets, timing).await
    }
    /// Opens long-lived connections from `from` to `targets` and keeps them for `Held::check`.
    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError>;
    /// Removes everything the backend created. Idempotent.
    async fn cleanup(&mut self) -> Result<(), BackendError>;
    /// How many agent sessions broke so far and were reopened (`session::Sessions::broken`): a
    /// broken stream is never an outcome, but a run says how often it happened.
    fn sessions_broken(&self) -> u64 {
        0
    }
    /// What the cluster says of itself (server version, nodes, kernels, CNI), for the reports;
    /// asked once per run, and never a reason to fail it.
    async fn cluster_info(&mut self) -> ClusterInfo {
        ClusterInfo::default()
    }
    /// The CRD annotations of a cluster-scoped kind, once `cluster_policy_support` has asked for
    /// it (`None`: not known; polygraph's own clusters have no CRDs).
    fn cluster_policy_bundle(&self, _kind: crate::policy::ClusterKind) -> Option<CrdBundle> {
        None
    }
    /// Whether scenarios using these cluster-scoped kinds can run here: `Err(reason)` makes them
    /// `unsupported`; `Ok(warnings)` may name objects of the cluster's own that could change the
    /// answers. The backends polygraph owns serve every kind.
    async fn cluster_policy_support(
        &mut self,
        _kinds: &[crate::policy::ClusterKind],
        _namespaces: &[crate::model::Namespace],
    ) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
}

/// Any backend, chosen at run time (`Backend` has async methods, so it is not object-safe).
// One per run, never moved in a hot path: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    Local(local::LocalBackend),
    Kube(kube::KubeBackend),
    Sim(sim::SimBackend),
    DryRun(kube::dry_run::Recorder),
}

impl AnyBackend {
    /// The dry run's transcript, when this is the dry-run recorder.
    pub fn transcript(&self) -> Option<kube::dry_run::Transcript> {
        match self {
            AnyBackend::DryRun(recorder) => Some(recorder.transcript()),
            _ => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Local($b) => $call,
            AnyBackend::Kube($b) => $call,
            AnyBackend::Sim($b) => $call,
            AnyBackend::DryRun($b) => $call,
        }
    };
}

impl Backend for AnyBackend {
    fn describe(&self) -> String {
        delegate!(self, b => b.describe())
    }
    fn sessions_broken(&self) -> u64 {
        delegate!(self, b => b.sessions_broken())
    }
    async fn cluster_info(&mut self) -> ClusterInfo {
        delegate!(self, b => b.cluster_info().await)
    }
    fn cleanup_message(&self) -> String {
        delegate!(self, b => b.cleanup_message())
    }
    fn addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        delegate!(self, b => b.addresses(pod))
    }
    fn cluster_policy_bundle(&self, kind: crate::policy::ClusterKind) -> Option<CrdBundle> {
        delegate!(self, b => b.cluster_policy_bundle(kind))
    }
    fn chooses_addresses(&self) -> bool {
        delegate!(self, b => b.chooses_addresses())
    }
    fn service_addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        delegate!(self, b => b.service_addresses(pod))
    }
    fn node(&self, pod: &PodRef) -> Option<&str> {
        delegate!(self, b => b.node(pod))
    }
    fn node_port(
        &self,
        pod: &PodRef,
        pp: crate::model::PortProtocol,
        family: crate::model::Family,
    ) -> Option<(IpAddr, u16)> {
        delegate!(self, b => b.node_port(pod, pp, family))
    }
    async fn outside(
        &mut self,
        target: crate::model::ProbeTarget,
        port_protocols: &[crate::model::PortProtocol],
    ) -> Result<Vec<crate::model::Pod>, String> {
        delegate!(self, b => b.outside(target, port_protocols).await)
    }
    fn service_name(&self, pod: &PodRef) -> Option<String> {
        delegate!(self, b => b.service_name(pod))
    }
    async fn dns(&mut self) -> Result<crate::model::ClusterDns, String> {
        delegate!(self, b => b.dns().await)
    }
    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError> {
        delegate!(self, b => b.apply(mutation).await)
    }
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        delegate!(self, b => b.wait_ready(timeout).await)
    }
    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        delegate!(self, b => b.probe(from, targets, timing).await)
    }
    async fn probe_alone(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        delegate!(self, b => b.probe_alone(from, targets, timing).await)
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
    async fn cluster_policy_support(
        &mut self,
        kinds: &[crate::policy::ClusterKind],
        namespaces: &[crate::model::Namespace],
    ) -> Result<Vec<String>, String> {
        delegate!(self, b => b.cluster_policy_support(kinds, namespaces).await)
    }
}
