//! The Kubernetes backend: the cluster model made real on any cluster a kubeconfig reaches.
//!
//! polygraph only creates, changes and deletes objects in its own namespaces
//! (`<prefix>-<run id>-<base>`, labelled with the owner label and the run id), and removes them all
//! on cleanup. Layout: `connection` (client, retries, waiting for deletions), `manifests` (the
//! objects, pure), `readiness` (waiting for pods, and why they aren't ready), `exec` (probing through
//! the agent), `placement` (spreading pods over nodes), `cni` (recognising the CNI), `gc`
//! (cleaning up after dead runs, heartbeats), `dry_run` (the recorder that prints a run's API calls).

mod cluster_policies;
use cluster_policies::Served;
pub mod cni;
mod connection;
pub mod dry_run;
mod exec;
mod gc;
mod info;
pub mod manifests;
pub mod placement;
mod preflight;
mod readiness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Event, Namespace as KubeNamespace, Node, Pod as KubePod, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use polygraph_agent::wire::{ProbeResult, Target};

pub use connection::Connection;

/// Whether a Kubernetes API failure is worth trying again (throttled, 5xx, unreachable).
pub fn connection_is_transient(error: &::kube::Error) -> bool {
    connection::is_transient(error)
}
pub use gc::{HEARTBEAT_EVERY, KubeGcReport, STALE_AFTER, gc};

use self::connection::{await_deletion, call, delete_namespace, is_refusal, refusal};
use self::gc::Heartbeat;
use self::manifests::{BASE_NAME_LABEL, KubeOptions, OWNER, OWNER_LABEL, RUN_LABEL, RunNames};
use self::placement::Spread;
use crate::backend::session::hold_request;
use crate::backend::{
    Backend, BackendError, Held, ProbeTiming, Sessions, UdpSourcePorts, batch_request,
    probe_request,
};
use crate::model::{Labels, NAMESPACE_NAME_LABEL, Namespace, Pod, PodRef};
use crate::policy::Policy;
use crate::policy::{ClusterKind, ClusterPolicy};
use crate::world::Mutation;

const FIELD_MANAGER: &str = "polygraph";

/// An option polygraph cannot use (a prefix, a toleration): the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadOption(pub String);

/// The API calls polygraph makes for a mutation, in order; the fake-API-server test and the dry
/// run both hold the backend to this list.
pub fn api_calls(names: &RunNames, options: &KubeOptions, mutation: &Mutation) -> Vec<String> {
    let ns = |base: &str| names.namespace(base);
    match mutation {
        // A host-network pod's namespace is labelled for it first (`allow_host_network`); it
        // has no Service.
        Mutation::CreatePod(p) if p.host_network => {
            let (key, value) = manifests::POD_SECURITY_LABEL;
            vec![
                format!(
                    "patch Namespace {} (label {key}={value}, for host-network pods)",
                    ns(&p.namespace)
                ),
                format!("create Pod {}/{}", ns(&p.namespace), p.name),
            ]
        }
        // With Services: each pod that serves a port gets its own, created after it and deleted
        // before it (a pod of the same name may come back).
        Mutation::CreatePod(p) if options.services && !p.ports.is_empty() => vec![
            format!("create Pod {}/{}", ns(&p.namespace), p.name),
            format!(
                "create Service {}/{}",
                ns(&p.namespace),
                manifests::service_name(&p.name)
            ),
        ],
        Mutation::DeletePod(p) if options.services => vec![
            format!(
                "delete Service {}/{}",
                ns(&p.namespace),
                manifests::service_name(&p.name)
            ),
            format!("delete Pod {}/{}", ns(&p.namespace), p.name),
        ],
        Mutation::CreateNamespace(n) => vec![format!("create Namespace {}", ns(&n.name))],
        Mutation::DeleteNamespace(n) => vec![format!("delete Namespace {}", ns(n))],
        Mutation::SetNamespaceLabels { namespace, .. } => {
            vec![format!("patch Namespace {}", ns(namespace))]
        }
        Mutation::CreatePod(p) => vec![format!("create Pod {}/{}", ns(&p.namespace), p.name)],
        Mutation::DeletePod(p) => vec![format!("delete Pod {}/{}", ns(&p.namespace), p.name)],
        Mutation::SetPodLabels { pod, .. } => {
            vec![format!("patch Pod {}/{}", ns(&pod.namespace), pod.name)]
        }
        Mutation::ApplyPolicy(p) => vec![format!(
            "apply NetworkPolicy {}/{}",
            ns(&p.namespace),
            p.name
        )],
        Mutation::DeletePolicy { namespace, name } => {
            vec![format!("delete NetworkPolicy {}/{name}", ns(namespace))]
        }
        Mutation::ApplyClusterPolicy(p) => vec![format!(
            "apply {} {}",
            p.kind,
            manifests::cluster_policy_name(names, p.kind, &p.name)
        )],
        Mutation::DeleteClusterPolicy { kind, name } => vec![format!(
            "delete {kind} {}",
            manifests::cluster_policy_name(names, *kind, name)
        )],
    }
}

/// The hosts beyond the cluster a path needs, on Kubernetes: for `external`, the servers the user
/// named (`--external-target`), one host per address with its TCP ports; never guessed. A NodePort
/// client outside the cluster would have to be polygraph itself, and the address its probes arrive
/// from (after whatever NAT lies between it and the nodes) decides every ipBlock answer: rather
/// than guess it, such scenarios are unsupported, with the reason.
/// Where a Kubernetes cluster's DNS runs, by the convention every distribution follows (kubeadm,
/// kind, k3s, the managed clouds): pods labelled `k8s-app=kube-dns` in `kube-system`.
pub const DNS_NAMESPACE: &str = "kube-system";
pub const DNS_SELECTOR: &str = "k8s-app=kube-dns";

/// The cluster's DNS as the analysis needs it, from the `kube-system` namespace and its pods
/// labelled `k8s-app=kube-dns`: each running pod with an address, its labels and its named ports
/// (an egress rule may name `dns`). `Err(reason)` when there is none: names cannot be probed, and
/// polygraph does not guess.
pub fn cluster_dns(
    namespace: &KubeNamespace,
    pods: &[KubePod],
) -> Result<crate::model::ClusterDns, String> {
    let mut labels: Labels = namespace
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(NAMESPACE_NAME_LABEL.into(), DNS_NAMESPACE.into());
    let servers: Vec<Pod> = pods
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            let ports = pod
                .spec
                .iter()
                .flat_map(|spec| &spec.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    Some(crate::model::ContainerPort {
                        name: p.name.clone(),
                        port: u16::try_from(p.container_port).ok()?,
                        protocol: crate::model::Protocol::from_api(
                            p.protocol.as_deref().unwrap_or("TCP"),
                        )?,
                    })
                })
                .collect();
            Some(Pod {
                namespace: DNS_NAMESPACE.into(),
                name: pod.metadata.name.clone()?,
                labels: pod
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ip,
                ports,
                host_network: false,
            })
        })
        .collect();
    if servers.is_empty() {
        return Err(format!(
            "no running pod labelled {DNS_SELECTOR} in {DNS_NAMESPACE}: names through the cluster's DNS cannot be probed here"
        ));
    }
    Ok(crate::model::ClusterDns {
        namespace: Namespace {
            name: DNS_NAMESPACE.into(),
            labels,
        },
        servers,
    })
}

pub fn outside_hosts(
    options: &KubeOptions,
    target: crate::model::ProbeTarget,
) -> Result<Vec<Pod>, String> {
    if target == crate::model::ProbeTarget::Node {
        return Err("probing between pods and their nodes needs host-network probe pods, which polygraph does not deploy on Kubernetes yet".into());
    }
    if target == crate::model::ProbeTarget::NodePort {
        return Err("probing NodePorts from outside the cluster is not supported on Kubernetes yet: polygraph would have to know the address its probes arrive from".into());
    }
    if options.external.is_empty() {
        return Err(
            "no destination outside the cluster was named (--external-target IP:PORT/TCP)".into(),
        );
    }
    let mut hosts: Vec<Pod> = Vec::new();
    for target in &options.external {
        let port = crate::model::ContainerPort {
            name: None,
            port: target.port(),
            protocol: crate::model::Protocol::Tcp,
        };
        match hosts.iter_mut().find(|h| h.ip == target.ip()) {
            Some(host) => host.ports.push(port),
            None => hosts.push(Pod {
                namespace: crate::model::OUTSIDE_NAMESPACE.into(),
                name: target.ip().to_string(),
                labels: Labels::new(),
                ip: target.ip(),
                ports: vec![port],
                host_network: false,
            }),
        }
    }
    Ok(hosts)
}

pub struct KubeBackend {
    client: Client,
    names: RunNames,
    options: KubeOptions,
    context: String,
    /// What the cluster said of itself: the CNI recognised and its images (from the DaemonSets),
    /// the nodes and their kernels, the API server's version (the preflight's).
    info: crate::backend::ClusterInfo,
    namespaces: BTreeSet<String>,
    /// The run's namespaces labelled for host-network pods (`allow_host_network`).
    privileged: BTreeSet<String>,
    pods: BTreeSet<PodRef>,
    addresses: BTreeMap<PodRef, Vec<IpAddr>>,
    /// The ClusterIPs of each pod's own Service (with `KubeOptions::services`).
    services: BTreeMap<PodRef, Vec<IpAddr>>,
    /// The node each ready pod runs on.
    nodes: BTreeMap<PodRef, String>,
    /// Namespaces being deleted (real names): `wait_ready` and re-creation wait for them.
    deleting: BTreeSet<String>,
    spread: Spread,
    /// Time allowed for one exec (on top of the probe timeout).
    exec_slack: Duration,
    cleaned: bool,
    udp_ports: UdpSourcePorts,
    /// The agent session (one exec) of each source pod.
    sessions: Sessions,
    /// Which cluster-scoped kinds the API serves, asked once each.
    served: BTreeMap<ClusterKind, Option<Served>>,
    /// The CRD annotations of each served kind, where readable.
    bundles: BTreeMap<ClusterKind, crate::backend::CrdBundle>,
    _heartbeat: Heartbeat,
}

impl KubeBackend {
    pub async fn connect(
        connection: &Connection,
        options: KubeOptions,
        names: RunNames,
    ) -> Result<Self, BackendError> {
        let (client, context) = connection.client().await?;
        let server_version = preflight::check(&client, &context, &names).await?;
        let mut backend = Self::with_client(client, options, names, context).await;
        backend.info.server_version = Some(server_version);
        Ok(backend)
    }

    /// A backend over an existing client (the tests give it a fake API server).
    pub async fn with_client(
        client: Client,
        options: KubeOptions,
        names: RunNames,
        context: String,
    ) -> Self {
        let heartbeat = Heartbeat::start(client.clone(), names.run_id.clone());
        let mut backend = KubeBackend {
            client,
            names,
            options,
            context,
            info: Default::default(),
            namespaces: BTreeSet::new(),
            privileged: BTreeSet::new(),
            pods: BTreeSet::new(),
            addresses: BTreeMap::new(),
            services: BTreeMap::new(),
            nodes: BTreeMap::new(),
            deleting: BTreeSet::new(),
            spread: Spread::default(),
            exec_slack: Duration::from_secs(15),
            cleaned: false,
            udp_ports: UdpSourcePorts::default(),
            sessions: Sessions::default(),
            served: BTreeMap::new(),
            bundles: BTreeMap::new(),
            _heartbeat: heartbeat,
        };
        backend.read_daemonsets().await;
        let schedulable = backend.read_nodes().await;
        backend.spread = Spread::new(schedulable);
        backend
    }

    /// How much longer than the probe timeout one exec may take (default 15 s: process start-up and
    /// the API server's round trips).
    pub fn with_exec_slack(mut self, slack: Duration) -> Self {
        self.exec_slack = slack;
        self
    }

    pub fn cni(&self) -> Option<&str> {
        self.info.cni.as_deref()
    }

    /// The CNI recognised from the cluster's DaemonSets, and their images; nothing when they
    /// can't be listed.
    async fn read_daemonsets(&mut self) {
        let api: Api<DaemonSet> = Api::all(self.client.clone());
        let Ok(list) = call("listing DaemonSets", || async {
            api.list(&ListParams::default()).await
        })
        .await
        else {
            return;
        };
        let names: Vec<String> = list
            .items
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        self.info.cni = cni::recognise(&names);
        self.info.cni_images = cni::images(&list.items);
    }

    /// The nodes and their kernels, for the reports; returns those pods can be spread over (none:
    /// the scheduler decides) when nodes can't be listed.
    async fn read_nodes(&mut self) -> Vec<String> {
        let api: Api<Node> = Api::all(self.client.clone());
        match call("listing nodes", || async {
            api.list(&ListParams::default()).await
        })
        .await
        {
            Ok(list) => {
                self.info.nodes = list.items.len();
                self.info.kernels = info::kernels(&list.items);
                placement::schedulable(
                    &list.items,
                    &self.options.node_selector,
                    &self.options.tolerations,
                )
            }
            // Without node access (RBAC) the scheduler places pods; the header says so.
            Err(_) => Vec::new(),
        }
    }

    fn pods_api(&self, base_namespace: &str) -> Api<KubePod> {
        Api::namespaced(self.client.clone(), &self.names.namespace(base_namespace))
    }

    fn namespaces_api(&self) -> Api<KubeNamespace> {
        Api::all(self.client.clone())
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

    /// Waits for every namespace deletion in flight, all at once.
    async fn await_namespace_deletions(&mut self) -> Result<(), BackendError> {
        let api = self.namespaces_api();
        let waits = self.deleting.iter().map(|real| {
            let api = api.clone();
            async move {
                await_deletion(&format!("namespace {real}"), || async {
                    api.get(real).await
                })
                .await
            }
        });
        let results = futures::future::join_all(waits).await;
        self.deleting.clear();
        results.into_iter().collect()
    }

    /// Deletes every namespace of this run (all at once, then waits for all): what a run leaves is
    /// found by label, so a namespace the bookkeeping missed goes too.
    /// The version the API serves `kind` in (`None`: not served), asked once.
    async fn serves(&mut self, kind: ClusterKind) -> Result<Option<Served>, BackendError> {
        if let Some(&served) = self.served.get(&kind) {
            return Ok(served);
        }
        let served = cluster_policies::served(&self.client, kind).await?;
        self.served.insert(kind, served);
        if served.is_some()
            && let Some(bundle) = cluster_policies::bundle(&self.client, kind).await
        {
            self.bundles.insert(kind, bundle);
        }
        Ok(served)
    }

    /// `serves`, for a change that needs the kind: not served is an error (a scenario using it
    /// is unsupported before it gets here).
    async fn served_for(&mut self, kind: ClusterKind) -> Result<Served, BackendError> {
        self.serves(kind)
            .await?
            .ok_or_else(|| BackendError::Cluster {
                what: format!("changing a {kind}"),
                message: cluster_policies::unsupported_reason(kind),
            })
    }

    async fn apply_cluster_policy(&mut self, policy: &ClusterPolicy) -> Result<(), BackendError> {
        let real = manifests::cluster_policy_name(&self.names, policy.kind, &policy.name);
        let served = self.served_for(policy.kind).await?;
        if policy.kind == ClusterKind::BaselineAdminNetworkPolicy {
            // A singleton: never replace one this run did not create.
            let owner = cluster_policies::owner(&self.client, served, &real).await?;
            if owner.is_some_and(|run| run.as_deref() != Some(self.names.run_id.as_str())) {
                return Err(BackendError::Cluster {
                    what: format!("applying {} {real}", policy.kind),
                    message: "the cluster already has one that polygraph did not create; polygraph changes nothing it does not own".into(),
                });
            }
        }
        let bases: BTreeSet<String> = self.namespaces.iter().cloned().collect();
        // Written in whichever version the file used; applied in the one the cluster prefers
        // (v1beta1 and v1alpha2 share one schema).
        let manifest = manifests::cluster_policy(&self.names, policy, &bases, served.api_version);
        cluster_policies::apply(&self.client, served, &real, &manifest).await
    }

    /// The command that removes what this run left, on the same cluster.
    pub fn gc_command(&self) -> String {
        let mut words = vec![
            "polygraph gc --backend kube --run".to_string(),
            self.names.run_id.clone(),
        ];
        words.extend(self.options.connection_flags.iter().cloned());
        words.join(" ")
    }

    /// Deletes this run's cluster-scoped objects, of every kind the API serves.
    async fn remove_cluster_policies(&mut self) -> Result<(), BackendError> {
        for kind in ClusterKind::ALL {
            let Some(served) = self.serves(kind).await? else {
                continue;
            };
            for (name, _) in
                cluster_policies::owned(&self.client, served, Some(&self.names.run_id)).await?
            {
                cluster_policies::delete(&self.client, served, &name).await?;
            }
        }
        Ok(())
    }

    async fn remove_run(&mut self) -> Result<(), BackendError> {
        self.sessions.clear();
        // Cluster-scoped objects first: they would otherwise outlive the namespaces they select.
        self.remove_cluster_policies().await?;
        let api = self.namespaces_api();
        let selector = format!("{OWNER_LABEL}={OWNER},{RUN_LABEL}={}", self.names.run_id);
        let list = call("listing this run's namespaces", || async {
            api.list(&ListParams::default().labels(&selector)).await
        })
        .await?;
        let mut names: Vec<String> = list
            .items
            .iter()
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        names.sort();
        for name in names {
            delete_namespace(&api, &name).await?;
            self.deleting.insert(name);
        }
        self.await_namespace_deletions().await?;
        self.namespaces.clear();
        self.pods.clear();
        self.addresses.clear();
        self.services.clear();
        self.nodes.clear();
        self.cleaned = true;
        Ok(())
    }

    async fn create_namespace(&mut self, namespace: &Namespace) -> Result<(), BackendError> {
        let real = self.names.namespace(&namespace.name);
        if self.deleting.contains(&real) {
            // The same name again (the next scenario's reset): the old one must be gone first.
            self.await_namespace_deletions().await?;
        }
        let api = self.namespaces_api();
        let manifest = manifests::namespace(&self.names, namespace);
        call(&format!("creating namespace {real}"), || async {
            api.create(&PostParams::default(), &manifest).await
        })
        .await?;
        self.namespaces.insert(namespace.name.clone());
        Ok(())
    }

    /// Asks for the deletion and returns: `wait_ready` (which every reset and step ends with)
    /// waits for all deletions in flight together.
    async fn delete_namespace(&mut self, name: &str) -> Result<(), BackendError> {
        self.privileged.remove(name);
        let api = self.namespaces_api();
        let real = self.names.namespace(name);
        call(&format!("deleting namespace {real}"), || async {
            api.delete(&real, &DeleteParams::background()).await
        })
        .await?;
        self.deleting.insert(real);
        self.namespaces.remove(name);
        self.sessions.forget_namespace(name);
        self.pods.retain(|p| p.namespace != name);
        self.addresses.retain(|p, _| p.namespace != name);
        self.services.retain(|p, _| p.namespace != name);
        self.nodes.retain(|p, _| p.namespace != name);
        Ok(())
    }

    /// Labels a namespace of the run's own for host-network pods (`manifests::POD_SECURITY_LABEL`),
    /// once; a later relabelling keeps it.
    async fn allow_host_network(&mut self, name: &str) -> Result<(), BackendError> {
        if !self.privileged.insert(name.to_string()) {
            return Ok(());
        }
        let api = self.namespaces_api();
        let real = self.names.namespace(name);
        let (key, value) = manifests::POD_SECURITY_LABEL;
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        call(
            &format!("labelling namespace {real} for host-network pods"),
            || async {
                api.patch(&real, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            },
        )
        .await
        .map_err(|e| match e {
            BackendError::Kube { source, .. } if is_refusal(&source) => refusal(
                format!("the label {key}={value} on namespace {real}"),
                &source,
            ),
            e => e,
        })?;
        Ok(())
    }

    async fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: &Labels,
    ) -> Result<(), BackendError> {
        let api = self.namespaces_api();
        let real = self.names.namespace(name);
        let current = call(&format!("reading namespace {real}"), || async {
            api.get(&real).await
        })
        .await?;
        let mut own = BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER.to_string()),
            (RUN_LABEL.to_string(), self.names.run_id.clone()),
            (BASE_NAME_LABEL.to_string(), name.to_string()),
        ]);
        if self.privileged.contains(name) {
            let (key, value) = manifests::POD_SECURITY_LABEL;
            own.insert(key.to_string(), value.to_string());
        }
        let patch = Self::label_patch(&current.metadata.labels.unwrap_or_default(), labels, &own);
        call(&format!("relabelling namespace {real}"), || async {
            api.patch(&real, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        })
        .await?;
        Ok(())
    }

    async fn create_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        if pod.host_network {
            self.allow_host_network(&pod.namespace).await?;
        }
        let api = self.pods_api(&pod.namespace);
        let affinity = self.spread.next_affinity();
        let manifest = manifests::pod(&self.names, &self.options, pod, affinity);
        call(&format!("creating pod {}", pod.key()), || async {
            api.create(&PostParams::default(), &manifest).await
        })
        .await
        .map_err(|e| match e {
            BackendError::Kube { source, .. } if pod.host_network && is_refusal(&source) => {
                refusal(format!("the host-network pod {}", pod.key()), &source)
            }
            e => e,
        })?;
        self.pods.insert(pod.key());
        if !self.options.services {
            return Ok(());
        }
        let Some(service) = manifests::service(&self.names, pod) else {
            return Ok(());
        };
        let api: Api<Service> =
            Api::namespaced(self.client.clone(), &self.names.namespace(&pod.namespace));
        let created = call(
            &format!("creating the Service of pod {}", pod.key()),
            || async { api.create(&PostParams::default(), &service).await },
        )
        .await?;
        // The API server allocates the ClusterIPs on creation: one per family it serves.
        let spec = created.spec.unwrap_or_default();
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .into_iter()
            .flatten()
            .chain(spec.cluster_ip)
            .filter_map(|ip| ip.parse().ok())
            .fold(Vec::new(), |mut all, ip| {
                if !all.contains(&ip) {
                    all.push(ip);
                }
                all
            });
        if ips.is_empty() {
            return Err(BackendError::Cluster {
                what: format!("creating the Service of pod {}", pod.key()),
                message: "the API server allocated no ClusterIP".into(),
            });
        }
        self.services.insert(pod.key(), ips);
        Ok(())
    }

    async fn delete_pod(&mut self, pod: &PodRef) -> Result<(), BackendError> {
        if self.options.services {
            let api: Api<Service> =
                Api::namespaced(self.client.clone(), &self.names.namespace(&pod.namespace));
            let name = manifests::service_name(&pod.name);
            // A pod serving nothing has no Service: nothing to delete is fine.
            let deleted = call(&format!("deleting the Service of pod {pod}"), || async {
                api.delete(&name, &DeleteParams::default()).await
            })
            .await;
            match deleted {
                Ok(_) => {}
                Err(BackendError::Kube { source, .. }) if connection::is_not_found(&source) => {}
                Err(e) => return Err(e),
            }
            self.services.remove(pod);
        }
        let api = self.pods_api(&pod.namespace);
        call(&format!("deleting pod {pod}"), || async {
            api.delete(&pod.name, &DeleteParams::default().grace_period(0))
                .await
        })
        .await?;
        // A pod of the same name may be created right after (a recreated pod): wait.
        await_deletion(&format!("pod {pod}"), || async { api.get(&pod.name).await }).await?;
        self.sessions.forget(pod);
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
        let mut own = BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER.to_string()),
            (RUN_LABEL.to_string(), self.names.run_id.clone()),
        ]);
        if self.options.services {
            own.insert(
                manifests::SERVICE_LABEL.to_string(),
                manifests::service_name(&pod.name),
            );
        }
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
        await_deletion(&format!("NetworkPolicy {namespace}/{name}"), || async {
            api.get(name).await
        })
        .await
    }
}

impl Backend for KubeBackend {
    async fn cluster_info(&mut self) -> crate::backend::ClusterInfo {
        self.info.clone()
    }
    fn describe(&self) -> String {
        let placement = match self.spread.nodes().len() {
            0 => "no schedulable node listed: placed by the scheduler".to_string(),
            1 => "one schedulable node".to_string(),
            n => format!("spread over {n} nodes"),
        };
        format!(
            "kube ({}, CNI: {}, {placement}, run {})",
            self.context,
            self.info.cni.as_deref().unwrap_or("not recognised"),
            self.names.run_id
        )
    }

    fn cleanup_message(&self) -> String {
        format!(
            "polygraph's namespaces of run {} were deleted from {}",
            self.names.run_id, self.context
        )
    }

    fn chooses_addresses(&self) -> bool {
        false
    }
    fn addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        self.addresses.get(pod).cloned().unwrap_or_default()
    }

    fn service_addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        self.services.get(pod).cloned().unwrap_or_default()
    }

    async fn outside(
        &mut self,
        target: crate::model::ProbeTarget,
        _port_protocols: &[crate::model::PortProtocol],
    ) -> Result<Vec<Pod>, String> {
        outside_hosts(&self.options, target)
    }

    /// The name the pod's own resolver finds its Service by: fully qualified, so the pod's search
    /// list plays no part.
    fn service_name(&self, pod: &PodRef) -> Option<String> {
        (self.options.services && self.pods.contains(pod)).then(|| {
            format!(
                "{}.{}.svc.{}.",
                manifests::service_name(&pod.name),
                self.names.namespace(&pod.namespace),
                self.options.cluster_domain
            )
        })
    }

    /// The cluster's own DNS pods, read (never changed): `kube-system`, `k8s-app=kube-dns`.
    async fn dns(&mut self) -> Result<crate::model::ClusterDns, String> {
        let namespaces: Api<KubeNamespace> = Api::all(self.client.clone());
        let namespace = call("reading namespace kube-system", || async {
            namespaces.get(DNS_NAMESPACE).await
        })
        .await
        .map_err(|e| format!("the cluster's DNS cannot be found: {e}"))?;
        let pods: Api<KubePod> = Api::namespaced(self.client.clone(), DNS_NAMESPACE);
        let list = call("listing the cluster's DNS pods", || async {
            pods.list(&ListParams::default().labels(DNS_SELECTOR)).await
        })
        .await
        .map_err(|e| format!("the cluster's DNS cannot be found: {e}"))?;
        cluster_dns(&namespace, &list.items)
    }

    fn node(&self, pod: &PodRef) -> Option<&str> {
        self.nodes.get(pod).map(String::as_str)
    }

    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError> {
        match mutation {
            Mutation::CreateNamespace(ns) => self.create_namespace(ns).await,
            Mutation::DeleteNamespace(name) => self.delete_namespace(name).await,
            Mutation::SetNamespaceLabels { namespace, labels } => {
                self.set_namespace_labels(namespace, labels).await
            }
            Mutation::CreatePod(pod) => self.create_pod(pod).await,
            Mutation::DeletePod(pod) => self.delete_pod(pod).await,
            Mutation::SetPodLabels { pod, labels } => self.set_pod_labels(pod, labels).await,
            Mutation::ApplyPolicy(policy) => self.apply_policy(policy).await,
            Mutation::DeletePolicy { namespace, name } => self.delete_policy(namespace, name).await,
            Mutation::ApplyClusterPolicy(policy) => self.apply_cluster_policy(policy).await,
            Mutation::DeleteClusterPolicy { kind, name } => {
                let real = manifests::cluster_policy_name(&self.names, *kind, name);
                let served = self.served_for(*kind).await?;
                cluster_policies::delete(&self.client, served, &real).await
            }
        }
    }

    /// Waits until every pod serves. Namespaces being deleted are not waited for here: nothing
    /// of theirs is probed any more, and only re-creating one under the same name must wait
    /// (`create_namespace`); the clean-up waits for all of them. (Waiting here cost every
    /// switch between cluster models the namespaces' finalization, seconds on a real cluster.)
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pending: Vec<PodRef> = self
            .pods
            .iter()
            .filter(|p| !self.addresses.contains_key(*p))
            .cloned()
            .collect();
        // Every namespace's pending pods at once, each namespace with one LIST per poll.
        let mut by_namespace: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
        for pod in pending {
            by_namespace
                .entry(pod.namespace.clone())
                .or_default()
                .push(pod);
        }
        let selector = format!("{OWNER_LABEL}={OWNER},{RUN_LABEL}={}", self.names.run_id);
        let waits = by_namespace.iter().map(|(namespace, pods)| {
            let api = self.pods_api(namespace);
            let events: Api<Event> =
                Api::namespaced(self.client.clone(), &self.names.namespace(namespace));
            let selector = selector.as_str();
            async move { readiness::await_pods(&api, &events, pods, selector, deadline).await }
        });
        let placed: Vec<(PodRef, readiness::Placed)> = futures::future::join_all(waits)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        for (pod, placed) in placed {
            if self.services.contains_key(&pod) {
                let slices: Api<EndpointSlice> =
                    Api::namespaced(self.client.clone(), &self.names.namespace(&pod.namespace));
                let service = manifests::service_name(&pod.name);
                readiness::await_endpoints(&slices, &service, &pod, &placed.ips, deadline).await?;
            }
            self.addresses.insert(pod.clone(), placed.ips);
            if let Some(node) = placed.node {
                self.nodes.insert(pod, node);
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
        let api = self.pods_api(&from.namespace);
        self.sessions
            .hold(
                from,
                || exec::session(&api, from, self.exec_slack),
                hold_request(targets, timeout, None),
                timeout + self.exec_slack,
            )
            .await
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let api = self.pods_api(&from.namespace);
        let request = || batch_request(targets, timing, Some((&self.udp_ports, from)), None);
        self.sessions
            .probe(
                from,
                || exec::session(&api, from, self.exec_slack),
                request,
                targets.len(),
                timing.timeout + self.exec_slack,
            )
            .await
    }

    fn sessions_broken(&self) -> u64 {
        self.sessions.broken()
    }

    async fn probe_alone(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let request = probe_request(targets, timing, Some((&self.udp_ports, from)), None);
        exec::probe(
            &self.pods_api(&from.namespace),
            from,
            &request,
            targets.len(),
            timing.timeout + self.exec_slack,
        )
        .await
    }

    /// Removes the run; through an API server that does not answer (a restart, an outage) it
    /// tries again with backoff for `KubeOptions::cleanup_budget`, then gives up naming the
    /// `polygraph gc` command that finishes the job. Every step of `remove_run` is idempotent.
    async fn cleanup(&mut self) -> Result<(), BackendError> {
        if self.cleaned {
            return Ok(());
        }
        let began = tokio::time::Instant::now();
        let budget = self.options.cleanup_budget;
        let mut delay = Duration::from_secs(1);
        loop {
            match self.remove_run().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && began.elapsed() < budget => {
                    tokio::time::sleep(delay.min(budget.saturating_sub(began.elapsed()))).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(e) => {
                    return Err(BackendError::CleanupIncomplete {
                        run_id: self.names.run_id.clone(),
                        after: began.elapsed(),
                        gc: self.gc_command(),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    fn cluster_policy_bundle(&self, kind: ClusterKind) -> Option<crate::backend::CrdBundle> {
        self.bundles.get(&kind).cloned()
    }

    async fn cluster_policy_support(
        &mut self,
        kinds: &[ClusterKind],
        namespaces: &[Namespace],
    ) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        for &kind in kinds {
            let served = match self.serves(kind).await {
                Ok(Some(served)) => served,
                Ok(None) => return Err(cluster_policies::unsupported_reason(kind)),
                Err(e) => return Err(format!("{e}")),
            };
            // The scenario's namespaces as they will be created: the model's labels and ours.
            let real: BTreeMap<String, crate::model::Labels> = namespaces
                .iter()
                .map(|ns| {
                    let object = manifests::namespace(&self.names, ns);
                    let labels = object.metadata.labels.unwrap_or_default();
                    (self.names.namespace(&ns.name), labels)
                })
                .collect();
            match cluster_policies::foreign_selecting(&self.client, served, &real).await {
                Ok(found) => warnings.extend(found.into_iter().map(|f| {
                    format!("the cluster's own {f} can select this run's pods: it may change the answers")
                })),
                Err(e) => warnings.push(format!("could not list the cluster's own {}: {e}", kind.plural())),
            }
        }
        Ok(warnings)
    }
}
