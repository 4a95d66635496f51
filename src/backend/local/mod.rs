//! The embedded local cluster: every pod is a network namespace with the probe agent serving its
//! ports; all pod traffic is routed through one private "node" namespace, where the reference
//! dataplane (nftables, see `nft`) enforces NetworkPolicy.
//!
//! Routed rather than bridged, like Calico: each pod has a /32 (or /128) on `eth0`, a default route
//! to a link-local gateway, and a veth peer `pgv<slot>` in the node namespace with a route to the pod.
//! Filtering bridged traffic with conntrack would need `br_netfilter`, a host-wide module; routing
//! needs nothing outside our own namespaces. Nothing is linked to the host's interfaces.

pub mod faults;
mod gc;
mod host;
pub mod nft;
mod programmer;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Ready, Target};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub use faults::{Fault, Faults};
pub use gc::{GcReport, gc};
pub use host::NETNS_PREFIX;
use host::Names;
use programmer::Programmer;

use super::{Backend, BackendError, Held};
use crate::model::{
    Cluster, ClusterDescription, Labels, NAMESPACE_NAME_LABEL, Namespace, NamespaceDescription,
    Pod, PodDescription, PodId, PodRef,
};
use crate::policy::Policy;

/// Where polygraph records which process owns a run, so `gc` leaves live runs alone.
const OWNER_DIR: &str = "/run/polygraph";
/// The MAC every node-side veth carries; pods reach their gateway through a static neighbour entry.
const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";

/// What enforces policies in the local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// The reference dataplane.
    Nftables,
    /// Forwards everything, like a CNI that ignores NetworkPolicy (Flannel).
    None,
}

impl FromStr for Dataplane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nftables" => Ok(Dataplane::Nftables),
            "none" => Ok(Dataplane::None),
            _ => Err(format!(
                "unknown dataplane {s:?} (expected nftables or none)"
            )),
        }
    }
}

/// How to start the agent: by default this very binary's hidden `agent` subcommand.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl AgentCommand {
    pub fn this_binary() -> std::io::Result<Self> {
        Ok(AgentCommand {
            program: std::env::current_exe()?,
            args: vec!["agent".into()],
        })
    }
}

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub dataplane: Dataplane,
    pub agent: AgentCommand,
    /// Bugs to imitate (`--inject`); none by default.
    pub faults: Faults,
}

struct Agent {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    ready: Option<Ready>,
}

struct LocalPod {
    slot: usize,
    pod: Pod,
    created: tokio::time::Instant,
    agent: Option<Agent>,
}

pub struct LocalBackend {
    names: Names,
    options: LocalOptions,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodRef, LocalPod>,
    policies: BTreeMap<(String, String), Policy>,
    /// Deleted policies the `policy-deletion-ignored` fault keeps enforcing.
    ghosts: BTreeMap<(String, String), Policy>,
    next_slot: usize,
    /// `None` without a dataplane.
    programmer: Option<Programmer>,
    owner_file: Option<PathBuf>,
    cleaned: bool,
    udp_ports: crate::backend::UdpSourcePorts,
}

struct SlotTable(Vec<usize>);

impl nft::Slots for SlotTable {
    fn slot(&self, pod: PodId) -> usize {
        self.0[pod]
    }
}

impl LocalBackend {
    /// Checks the host, creates the node namespace and, for the nftables dataplane, its table.
    pub async fn start(options: LocalOptions) -> Result<Self, BackendError> {
        if !rustix::process::geteuid().is_root() {
            return Err(BackendError::NotRoot);
        }
        if !host::have("ip") {
            return Err(BackendError::MissingTool {
                tool: "ip",
                hint: "install iproute2 (apt-get install -y iproute2)",
            });
        }
        if options.dataplane == Dataplane::Nftables && !host::have("nft") {
            return Err(BackendError::MissingTool {
                tool: "nft",
                hint: "install nftables (apt-get install -y nftables), or use --dataplane none",
            });
        }
        let existing = host::netns_list();
        let run_id = loop {
            let id = format!("{:06x}", fastrand::u32(..0x0100_0000));
            if !existing
                .iter()
                .any(|n| n.starts_with(&format!("{NETNS_PREFIX}{id}-")))
            {
                break id;
            }
        };
        let mut backend = LocalBackend {
            names: Names { run_id },
            options,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            ghosts: BTreeMap::new(),
            next_slot: 0,
            programmer: None,
            owner_file: None,
            cleaned: false,
            udp_ports: Default::default(),
        };
        if let Err(e) = backend.create_node().await {
            backend.remove_everything().await;
            return Err(e);
        }
        Ok(backend)
    }

    pub fn run_id(&self) -> &str {
        &self.names.run_id
    }

    async fn create_node(&mut self) -> Result<(), BackendError> {
        std::fs::create_dir_all(OWNER_DIR)?;
        let owner = PathBuf::from(OWNER_DIR).join(format!("{}.pid", self.names.run_id));
        std::fs::write(&owner, std::process::id().to_string())?;
        self.owner_file = Some(owner);
        let node = self.names.node();
        host::netns_add(&node).await?;
        host::ip_batch(&node, &["link set lo up".into()]).await?;
        host::exec_in(
            &node,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
            None,
        )
        .await?;
        if self.options.dataplane == Dataplane::Nftables {
            self.programmer = Some(Programmer::start(node, self.options.faults.clone()).await?);
        }
        Ok(())
    }

    /// The cluster as it stands, for compiling rules; with each pod's slot.
    fn snapshot(&self) -> Result<(Cluster, Vec<usize>), BackendError> {
        let description = ClusterDescription {
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, labels)| NamespaceDescription {
                    name: name.clone(),
                    labels: labels.clone(),
                })
                .collect(),
            pods: self
                .pods
                .values()
                .map(|p| PodDescription::from(&p.pod))
                .collect(),
        };
        let cluster = description
            .build("local cluster")
            .map_err(|e| BackendError::Unsupported(e.to_string()))?;
        let slots = self.pods.values().map(|p| p.slot).collect();
        Ok((cluster, slots))
    }

    /// Brings the dataplane in line with the current pods, labels and policies: one atomic
    /// transaction touching only the chains that changed.
    async fn sync(&mut self) -> Result<(), BackendError> {
        let at = tokio::time::Instant::now();
        if self.programmer.is_none() {
            return Ok(());
        }
        let (cluster, slots) = self.snapshot()?;
        let enforced: Vec<Policy> = self
            .ghosts
            .iter()
            .filter(|(key, _)| !self.policies.contains_key(*key))
            .chain(&self.policies)
            .map(|(_, p)| p.clone())
            .collect();
        let state = programmer::State {
            at,
            policies: self.options.faults.distort(&enforced),
            created: self.pods.values().map(|p| p.created).collect(),
            cluster,
            slots,
        };
        match &mut self.programmer {
            Some(programmer) => programmer.program(state).await,
            None => Ok(()),
        }
    }

    fn pod_network_lines(ip: IpAddr) -> Vec<String> {
        let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        match ip {
            IpAddr::V4(ip) => lines.extend([
                format!("addr add {ip}/32 dev eth0"),
                format!("route add {GATEWAY_V4} dev eth0 scope link"),
                format!("route add default via {GATEWAY_V4} dev eth0"),
                format!("neigh add {GATEWAY_V4} lladdr {GATEWAY_MAC} dev eth0 nud permanent"),
            ]),
            IpAddr::V6(ip) => lines.extend([
                format!("addr add {ip}/128 dev eth0 nodad"),
                format!("route add ::/0 via {GATEWAY_V6} dev eth0"),
            ]),
        }
        lines
    }

    /// The agent, run inside `netns`, ready for its subcommand; it dies with its handle.
    fn agent_command(&self, netns: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(&self.options.agent.program)
            .args(&self.options.agent.args)
            .kill_on_drop(true);
        command
    }

    async fn start_agent(&self, netns: &str, pod: &Pod) -> Result<Option<Agent>, BackendError> {
        if pod.ports.is_empty() {
            return Ok(None);
        }
        let listen: Vec<String> = pod
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        let mut child = self
            .agent_command(netns)
            .args([
                "serve",
                "--identity",
                &pod.key().to_string(),
                "--listen",
                &listen.join(","),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BackendError::Pod {
                pod: pod.key(),
                message: format!("cannot start the agent: {e}"),
            })?;
        let stdout = child.stdout.take().ok_or_else(|| BackendError::Pod {
            pod: pod.key(),
            message: "agent has no stdout".into(),
        })?;
        Ok(Some(Agent {
            child,
            stdout: BufReader::new(stdout).lines(),
            ready: None,
        }))
    }

    async fn create_pod_network(&mut self, pod: &Pod, slot: usize) -> Result<(), BackendError> {
        let netns = self.names.pod(slot);
        let veth = nft::veth_name(slot);
        host::netns_add(&netns).await?;
        let mut node_lines = vec![
            format!("link add {veth} type veth peer name eth0 netns {netns}"),
            format!("link set {veth} address {GATEWAY_MAC} up"),
        ];
        match pod.ip {
            IpAddr::V4(ip) => node_lines.push(format!("route add {ip}/32 dev {veth}")),
            IpAddr::V6(ip) => node_lines.extend([
                format!("addr add {GATEWAY_V6}/64 dev {veth} nodad"),
                format!("route add {ip}/128 dev {veth}"),
            ]),
        }
        host::ip_batch(&self.names.node(), &node_lines).await?;
        // Rules first, link second: the reference dataplane never lets a new pod start unprotected.
        self.sync().await?;
        host::ip_batch(&netns, &Self::pod_network_lines(pod.ip)).await
    }

    /// Kills agents and deletes every namespace of this run. Safe to call more than once.
    async fn remove_everything(&mut self) {
        if let Some(programmer) = &mut self.programmer {
            programmer.stop().await;
        }
        for local in self.pods.values_mut() {
            if let Some(agent) = &mut local.agent {
                let _ = agent.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), agent.child.wait()).await;
            }
        }
        self.remove_namespaces_now();
    }

    fn remove_namespaces_now(&mut self) {
        for local in self.pods.values() {
            host::netns_delete_now(&self.names.pod(local.slot));
        }
        host::netns_delete_now(&self.names.node());
        if let Some(owner) = self.owner_file.take() {
            let _ = std::fs::remove_file(owner);
        }
        self.pods.clear();
        self.cleaned = true;
    }

    fn pod_mut(&mut self, pod: &PodRef) -> Result<&mut LocalPod, BackendError> {
        self.pods.get_mut(pod).ok_or_else(|| BackendError::Pod {
            pod: pod.clone(),
            message: "no such pod".into(),
        })
    }
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        let dataplane = match self.options.dataplane {
            Dataplane::Nftables => "nftables dataplane",
            Dataplane::None => "no dataplane: policies are ignored",
        };
        let faults = &self.options.faults;
        if faults.is_empty() {
            format!("local ({dataplane}, run {})", self.names.run_id)
        } else {
            format!(
                "local ({dataplane}, injected faults: {faults}, run {})",
                self.names.run_id
            )
        }
    }

    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError> {
        if self.namespaces.contains_key(&namespace.name) {
            return Err(BackendError::Namespace {
                namespace: namespace.name.clone(),
                message: "already exists".into(),
            });
        }
        let mut labels = namespace.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.name.clone());
        self.namespaces.insert(namespace.name.clone(), labels);
        self.sync().await
    }

    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError> {
        if !self.namespaces.contains_key(name) {
            return Err(BackendError::Namespace {
                namespace: name.into(),
                message: "no such namespace".into(),
            });
        }
        // Pods first: the namespace must exist while each deletion re-syncs the dataplane.
        let doomed: Vec<PodRef> = self
            .pods
            .keys()
            .filter(|p| p.namespace == name)
            .cloned()
            .collect();
        for pod in doomed {
            self.delete_pod(&pod).await?;
        }
        self.policies.retain(|(ns, _), _| ns != name);
        self.ghosts.retain(|(ns, _), _| ns != name);
        self.namespaces.remove(name);
        self.sync().await
    }

    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError> {
        let current = self
            .namespaces
            .get_mut(name)
            .ok_or_else(|| BackendError::Namespace {
                namespace: name.into(),
                message: "no such namespace".into(),
            })?;
        *current = labels.clone();
        current.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.sync().await
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let key = pod.key();
        let fail = |message: String| BackendError::Pod {
            pod: key.clone(),
            message,
        };
        if !self.namespaces.contains_key(&pod.namespace) {
            return Err(fail(format!("namespace {} does not exist", pod.namespace)));
        }
        if self.pods.contains_key(&key) {
            return Err(fail("already exists".into()));
        }
        if let Some(other) = self.pods.values().find(|p| p.pod.ip == pod.ip) {
            return Err(fail(format!(
                "IP {} is already used by {}",
                pod.ip,
                other.pod.key()
            )));
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.pods.insert(
            key.clone(),
            LocalPod {
                slot,
                pod: pod.clone(),
                created: tokio::time::Instant::now(),
                agent: None,
            },
        );
        let started = async {
            self.create_pod_network(pod, slot).await?;
            self.start_agent(&self.names.pod(slot), pod).await
        }
        .await;
        match started {
            Ok(agent) => {
                self.pod_mut(&key)?.agent = agent;
                Ok(())
            }
            Err(e) => {
                self.pods.remove(&key);
                host::netns_delete_now(&self.names.pod(slot));
                let _ = self.sync().await;
                Err(e)
            }
        }
    }

    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError> {
        let mut local = self.pods.remove(pod).ok_or_else(|| BackendError::Pod {
            pod: pod.clone(),
            message: "no such pod".into(),
        })?;
        if let Some(agent) = &mut local.agent {
            let _ = agent.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), agent.child.wait()).await;
        }
        host::netns_delete_now(&self.names.pod(local.slot));
        self.sync().await
    }

    async fn set_pod_labels(&mut self, pod: &PodRef, labels: &Labels) -> Result<(), BackendError> {
        self.pod_mut(pod)?.pod.labels = labels.clone();
        self.sync().await
    }

    async fn apply_policy(&mut self, policy: &Policy) -> Result<(), BackendError> {
        self.ghosts
            .remove(&(policy.namespace.clone(), policy.name.clone()));
        self.policies.insert(
            (policy.namespace.clone(), policy.name.clone()),
            policy.clone(),
        );
        self.sync().await
    }

    async fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), BackendError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(deleted) = self.policies.remove(&key) else {
            return Err(BackendError::Namespace {
                namespace: namespace.into(),
                message: format!("no NetworkPolicy {name}"),
            });
        };
        if self.options.faults.has(Fault::PolicyDeletionIgnored) {
            self.ghosts.insert(key, deleted);
        }
        self.sync().await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for local in self.pods.values_mut() {
            let Some(agent) = &mut local.agent else {
                continue;
            };
            if agent.ready.is_some() {
                continue;
            }
            let key = local.pod.key();
            let line = tokio::time::timeout_at(deadline, agent.stdout.next_line()).await;
            let ready = match line {
                Ok(Ok(Some(line))) => {
                    serde_json::from_str::<Ready>(&line).map_err(|e| BackendError::Pod {
                        pod: key.clone(),
                        message: format!("agent said {line:?}: {e}"),
                    })?
                }
                Ok(_) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = agent.child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr).await;
                    }
                    return Err(BackendError::Pod {
                        pod: key,
                        message: format!(
                            "agent exited before it was ready: {}",
                            crate::input::one_line(&stderr)
                        ),
                    });
                }
                Err(_) => {
                    return Err(BackendError::Pod {
                        pod: key,
                        message: format!(
                            "agent not ready after {}",
                            humantime::format_duration(timeout)
                        ),
                    });
                }
            };
            agent.ready = Some(ready);
        }
        Ok(())
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let local = self.pods.get(from).ok_or_else(|| BackendError::Probe {
            pod: from.clone(),
            message: "no such pod".into(),
        })?;
        let request =
            super::probe_request(targets, timeout, Some(self.udp_ports.next(from, targets)));
        let program = self.options.agent.program.to_string_lossy().into_owned();
        let mut args: Vec<&str> = self.options.agent.args.iter().map(String::as_str).collect();
        args.push("probe");
        // The agent finishes within one timeout; allow generously for process start-up under load.
        let limit = timeout + Duration::from_secs(10);
        let output = tokio::time::timeout(
            limit,
            host::exec_in(&self.names.pod(local.slot), &program, &args, Some(&request)),
        )
        .await
        .map_err(|_| BackendError::Probe {
            pod: from.clone(),
            message: format!(
                "the agent did not finish within {}",
                humantime::format_duration(limit)
            ),
        })??;
        super::parse_probe_output(from, &output, targets.len())
    }

    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        let local = self.pods.get(from).ok_or_else(|| BackendError::Probe {
            pod: from.clone(),
            message: "no such pod".into(),
        })?;
        let mut child = self
            .agent_command(&self.names.pod(local.slot))
            .arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BackendError::Probe {
                pod: from.clone(),
                message: format!("cannot start the agent: {e}"),
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BackendError::Probe {
                pod: from.clone(),
                message: "agent without pipes".into(),
            });
        };
        Held::start(from.clone(), targets, timeout, stdin, stdout, child).await
    }

    async fn cleanup(&mut self) -> Result<(), BackendError> {
        if !self.cleaned {
            self.remove_everything().await;
        }
        Ok(())
    }
}

/// The last line of defence: a backend dropped without `cleanup` (an error path, a panic) still
/// removes its namespaces. Agents die with `kill_on_drop`.
impl Drop for LocalBackend {
    fn drop(&mut self) {
        if !self.cleaned {
            for local in self.pods.values_mut() {
                if let Some(agent) = &mut local.agent {
                    let _ = agent.child.start_kill();
                }
            }
            self.remove_namespaces_now();
        }
    }
}
