//! Where the pods run, shared by run, probe and smoke: the backend, the local dataplane, the
//! Kubernetes connection and the objects polygraph creates there.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, error_line};
use polygraph::backend::AnyBackend;
use polygraph::backend::kube::dry_run::Recorder;
use polygraph::backend::kube::manifests::{KubeOptions, RunNames};
use polygraph::backend::kube::placement;
use polygraph::backend::kube::{Connection, KubeBackend};
use polygraph::backend::local::{AgentCommand, Dataplane, LocalBackend, LocalOptions};
use polygraph::backend::sim::{SimBackend, SimOptions};
use polygraph::faults::Faults;
use polygraph::model::{IpFamilies, ProbeTarget};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// kube when a kubeconfig (or in-cluster credentials) is found, local otherwise.
    Auto,
    /// The embedded cluster of network namespaces (needs root).
    Local,
    /// The cluster a kubeconfig reaches.
    Kube,
    /// No cluster, no root: every probe answered from the oracle (with `--inject` faults), to check
    /// a scenario library, its verdicts and reports anywhere.
    Sim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimSctp {
    /// The simulated nodes serve SCTP.
    Supported,
    /// SCTP probes come back `unsupported`, as on a node without the kernel module.
    Unsupported,
}

/// How probes reach their destinations (`probe`, `bench probe`; `run` has its own, defaulting to
/// each scenario's `target:`).
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// `pod-ip` (the pod's address), `service` (its own Service's ClusterIP, DNATed to it),
    /// `service-name` (that Service's name, resolved through the cluster's DNS), `node-port` (from a host outside the cluster, through a NodePort) or `external` (pods to a
    /// server outside the cluster); several with commas, e.g. `--target pod-ip,service`.
    #[arg(
        long = "target",
        value_enum,
        value_delimiter = ',',
        default_value = "pod-ip"
    )]
    pub targets: Vec<ProbeTarget>,
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Where the pods run.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Local and simulated backends: `nftables` enforces policies; `none` forwards everything, like
    /// Flannel.
    #[arg(long, default_value = "nftables")]
    pub dataplane: Dataplane,
    /// Kubernetes: the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// Print every API call a run on Kubernetes would make, in order, with the objects it sends (as
    /// YAML), contacting no cluster: the real run, against a recorder.
    #[arg(long)]
    pub dry_run: bool,
    /// Simulated backend: whether its nodes serve SCTP.
    #[arg(long, value_enum, default_value = "supported")]
    pub sim_sctp: SimSctp,
    /// Kubernetes: namespaces are named <prefix>-<run id>-<base name>.
    #[arg(long, default_value = "polygraph")]
    pub prefix: String,
    /// Kubernetes: the probe agent image (images/agent/Dockerfile).
    #[arg(long)]
    pub image: Option<String>,
    /// Kubernetes: pull policy for the agent image; IfNotPresent suits kind (kind load docker-image).
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Kubernetes: schedule probe pods on nodes with these labels, e.g. kubernetes.io/os=linux.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
    /// Kubernetes: taints probe pods tolerate, as KEY[=VALUE][:EFFECT] or * (repeatable), e.g.
    /// node-role.kubernetes.io/control-plane:NoSchedule to use a kind control plane as well.
    #[arg(long = "toleration", value_name = "TAINT")]
    pub tolerations: Vec<String>,
    /// Local and simulated backends: imitate CNI bugs, e.g. `--inject endport-ignored,delay=2s`
    /// (`polygraph run --list-faults` lists them).
    #[arg(long, value_delimiter = ',', value_name = "FAULT")]
    pub inject: Vec<String>,
    /// Local and simulated backends: the pods' address families. `dual` gives every pod its model
    /// IPv4 address and an IPv6 one (fd00:10:244::/96 embedding it), and probes both; `ipv6` only
    /// the IPv6 one. On Kubernetes the cluster decides (each pod's status.podIPs), and a
    /// dual-stack cluster is probed on both.
    #[arg(long, value_enum, value_name = "FAMILY")]
    pub ip_family: Option<IpFamilies>,
    /// Kubernetes: a server outside the cluster for the `external` target, IP:PORT/TCP
    /// (repeatable; IPv6 as [ADDR]:PORT/TCP). Without one, scenarios probing beyond the cluster are
    /// unsupported there. TCP only: a UDP server that is not polygraph's agent does not answer
    /// its probe, which would look like a drop.
    #[arg(long = "external-target", value_name = "IP:PORT/TCP")]
    pub external_targets: Vec<String>,
    /// Kubernetes: the cluster's DNS domain, for the names `--target service-name` resolves
    /// (`<service>.<namespace>.svc.DOMAIN.`). The local cluster's is cluster.local.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
}

/// `--cluster-domain`: dot-separated DNS labels (lowercase letters, digits, `-`).
fn cluster_domain(text: &str) -> Result<String, CliError> {
    let domain = text.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if domain.is_empty() || !domain.split('.').all(label_ok) {
        return Err(CliError::Usage(format!(
            "--cluster-domain {text:?}: expected a DNS domain such as cluster.local"
        )));
    }
    Ok(domain.to_string())
}

/// `--external-target`: `IP:PORT/TCP` (`[IPv6]:PORT/TCP`).
fn external_target(text: &str) -> Result<std::net::SocketAddr, CliError> {
    let bad = |why: &str| CliError::Usage(format!("--external-target {text:?}: {why}"));
    let (address, protocol) = text
        .rsplit_once('/')
        .ok_or_else(|| bad("expected IP:PORT/TCP, e.g. 203.0.113.10:443/TCP"))?;
    let protocol: polygraph::model::Protocol = protocol.parse().map_err(|e: String| bad(&e))?;
    if protocol != polygraph::model::Protocol::Tcp {
        return Err(bad(
            "only TCP: a server outside the cluster that is not polygraph's agent does not answer a UDP or SCTP probe, which would look like a drop",
        ));
    }
    let address: std::net::SocketAddr = address
        .parse()
        .map_err(|_| bad("expected IP:PORT/TCP, e.g. 203.0.113.10:443/TCP"))?;
    if address.port() == 0 {
        return Err(bad("port must be 1-65535"));
    }
    Ok(address)
}

impl BackendArgs {
    /// The families probed in scenarios that name none: `--ip-family`, or IPv4, on polygraph's
    /// own clusters; on Kubernetes (and in a dry run) every family the cluster gives pods.
    pub fn default_families(&self) -> Option<IpFamilies> {
        (self.kind() != BackendKind::Kube && !self.dry_run)
            .then(|| self.ip_family.unwrap_or_default())
    }

    pub fn options(&self) -> Result<KubeOptions, CliError> {
        let mut options = KubeOptions {
            prefix: self.prefix.clone(),
            pull_policy: self.image_pull_policy.clone(),
            ..KubeOptions::default()
        };
        if let Some(image) = &self.image {
            options.image = image.clone();
        }
        let mut selector = BTreeMap::new();
        for pair in &self.node_selector {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--node-selector {pair:?}: expected KEY=VALUE"))
            })?;
            selector.insert(key.to_string(), value.to_string());
        }
        options.node_selector = selector;
        options.cluster_domain = cluster_domain(&self.cluster_domain)?;
        // `polygraph gc` must reach the same cluster as this run did.
        if let Some(path) = &self.kubeconfig {
            options
                .connection_flags
                .extend(["--kubeconfig".to_string(), path.display().to_string()]);
        }
        if let Some(context) = &self.context {
            options
                .connection_flags
                .extend(["--context".to_string(), context.clone()]);
        }
        options.external = self
            .external_targets
            .iter()
            .map(|t| external_target(t))
            .collect::<Result<_, _>>()?;
        options.tolerations = self
            .tolerations
            .iter()
            .map(|t| placement::parse_toleration(t))
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(options)
    }

    pub fn faults(&self) -> Result<Faults, CliError> {
        let faults = Faults::parse(&self.inject).map_err(|e| CliError::Usage(error_line(&e)))?;
        if faults.breaks_policies()
            && self.dataplane == Dataplane::None
            && matches!(self.kind(), BackendKind::Local | BackendKind::Sim)
        {
            return Err(CliError::Usage(
                "--inject changes the nftables dataplane; --dataplane none has nothing to break"
                    .into(),
            ));
        }
        if !self.external_targets.is_empty() && self.kind() != BackendKind::Kube && !self.dry_run {
            return Err(CliError::Usage(
                "--external-target names servers beyond a Kubernetes cluster; the local and simulated clusters have their own (203.0.113.10)"
                    .into(),
            ));
        }
        if self.ip_family.is_some() && (self.kind() == BackendKind::Kube || self.dry_run) {
            return Err(CliError::Usage(
                "--ip-family sets the local and simulated clusters' families; on Kubernetes the cluster decides (a dual-stack cluster is probed on both)"
                    .into(),
            ));
        }
        if faults.loss_permille > 0 && (self.kind() != BackendKind::Local || self.dry_run) {
            return Err(CliError::Usage(
                "--inject loss=P% drops real packets on the local cluster's links; the simulation has none and a Kubernetes cluster is not polygraph's to degrade"
                    .into(),
            ));
        }
        if !faults.is_empty() && (self.kind() == BackendKind::Kube || self.dry_run) {
            return Err(CliError::Usage(
                "--inject works on the local and simulated backends only (it changes polygraph's own dataplane)"
                    .into(),
            ));
        }
        Ok(faults)
    }

    /// Names for a new run: a fresh six-hex-digit id under the prefix.
    pub fn names(&self) -> Result<RunNames, CliError> {
        let run_id = format!("{:06x}", fastrand::u32(..0x0100_0000));
        RunNames::new(&self.prefix, &run_id).map_err(|e| CliError::Usage(e.to_string()))
    }

    pub fn connection(&self) -> Connection {
        Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }

    /// Local unless asked for kube, or a cluster is configured and nothing was asked.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            BackendKind::Auto if self.connection().configured() => BackendKind::Kube,
            BackendKind::Auto => BackendKind::Local,
            other => other,
        }
    }

    /// The backend of this invocation: the dry-run recorder with `--dry-run`, else `--backend`.
    /// `services`: some probe goes through a Service, so Kubernetes needs one per pod (the local
    /// and simulated clusters always have them: they cost a rule).
    pub async fn start(&self, services: bool) -> Result<AnyBackend, CliError> {
        self.start_with(services, None).await
    }

    /// `start`, for scenarios some of which are about IP families (`ip-family:`): without
    /// `--ip-family`, polygraph's own clusters give pods every family one of them names, so a
    /// default run probes IPv6 where a scenario is about it.
    pub async fn start_with(
        &self,
        services: bool,
        scenario_families: Option<IpFamilies>,
    ) -> Result<AnyBackend, CliError> {
        let families = match (self.ip_family, scenario_families) {
            (Some(asked), _) => asked,
            (None, Some(named)) => IpFamilies::Ipv4.union(named),
            (None, None) => IpFamilies::Ipv4,
        };
        // Checked here too, so a bad combination never reaches a cluster.
        self.faults()?;
        if self.dry_run {
            let mut options = self.options()?;
            options.services = services;
            return Ok(AnyBackend::DryRun(Recorder::new(self.names()?, options)));
        }
        Ok(match self.kind() {
            BackendKind::Sim => AnyBackend::Sim(SimBackend::new(SimOptions {
                faults: self.faults()?,
                sctp: self.sim_sctp == SimSctp::Supported,
                families,
                no_dataplane: self.dataplane == Dataplane::None,
            })),
            BackendKind::Kube => {
                let mut options = self.options()?;
                options.services = services;
                let backend =
                    KubeBackend::connect(&self.connection(), options, self.names()?).await?;
                AnyBackend::Kube(backend)
            }
            _ => AnyBackend::Local(
                LocalBackend::start(LocalOptions {
                    dataplane: self.dataplane,
                    agent: AgentCommand::this_binary()?,
                    faults: self.faults()?,
                    families,
                })
                .await?,
            ),
        })
    }
}
