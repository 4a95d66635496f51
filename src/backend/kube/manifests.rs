//! The Kubernetes objects polygraph creates for a cluster model: namespaces, probe pods and the
//! policies under test, with base names rewritten to the run's real names. Pure: `--dry-run` prints
//! exactly these, and the backend applies exactly these.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, ExecAction,
    Namespace as KubeNamespace, Pod as KubePod, PodSecurityContext, PodSpec, Probe, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, Sysctl, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::BadOption;
use crate::model::{NAMESPACE_NAME_LABEL, Namespace, Pod, syntax};
use crate::policy::{ClusterKind, ClusterPolicy, Policy};

/// Every object polygraph creates carries this label (`app.kubernetes.io/managed-by: polygraph`).
pub const OWNER_LABEL: &str = "app.kubernetes.io/managed-by";
pub const OWNER: &str = "polygraph";
/// The run that created an object.
pub const RUN_LABEL: &str = "polygraph.dev/run-id";
/// When the run owning a namespace last said it is alive (Unix seconds): `gc` leaves namespaces
/// with a fresh heartbeat alone (see `gc`).
pub const HEARTBEAT_ANNOTATION: &str = "polygraph.dev/heartbeat";
/// A namespace's name in the model (`x`), its real name being `<prefix>-<run id>-x`.
pub const BASE_NAME_LABEL: &str = "polygraph.dev/base-name";
/// On a probe pod when Services are made: the name of its own Service, which selects it by this
/// label alone (the model's labels may be shared by other pods).
pub const SERVICE_LABEL: &str = "polygraph.dev/service";

const READY_FILE: &str = "/run/polygraph/ready";
const AGENT_PATH: &str = "/polygraph-agent";

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Real namespace names are `<prefix>-<run id>-<base name>`.
    pub prefix: String,
    pub image: String,
    pub pull_policy: String,
    pub node_selector: BTreeMap<String, String>,
    /// Taints probe pods tolerate (`--toleration`), e.g. a kind control plane's.
    pub tolerations: Vec<Toleration>,
    /// Create a Service per probe pod (some probe goes through one: `--target service`).
    pub services: bool,
    /// Servers outside the cluster the user named (`--external-target`), for the `external`
    /// target: TCP only.
    pub external: Vec<std::net::SocketAddr>,
    /// The cluster's DNS domain (`--cluster-domain`), for the names `--target service-name`
    /// resolves.
    pub cluster_domain: String,
    /// How long clean-up keeps retrying through an API server that does not answer (a restart,
    /// an outage) before it gives up and names the `polygraph gc` command that finishes it.
    pub cleanup_budget: std::time::Duration,
    /// The connection flags of this invocation (`--kubeconfig F`, `--context C`), repeated in that
    /// `polygraph gc` command so it reaches the same cluster.
    pub connection_flags: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            prefix: "polygraph".into(),
            image: format!(
                "ghcr.io/polygraph/polygraph-agent:v{}",
                env!("CARGO_PKG_VERSION")
            ),
            pull_policy: "IfNotPresent".into(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            services: false,
            external: Vec::new(),
            cluster_domain: "cluster.local".into(),
            cleanup_budget: std::time::Duration::from_secs(120),
            connection_flags: Vec::new(),
        }
    }
}

/// Names of one run.
#[derive(Debug, Clone)]
pub struct RunNames {
    pub prefix: String,
    pub run_id: String,
}

impl RunNames {
    /// Checks that every real namespace name will be a valid DNS label.
    pub fn new(prefix: &str, run_id: &str) -> Result<RunNames, BadOption> {
        syntax::dns1123_label(prefix)
            .map_err(|m| BadOption(format!("--prefix {prefix:?}: {m}")))?;
        if prefix.len() > 40 {
            return Err(BadOption(format!(
                "--prefix {prefix:?}: at most 40 characters, so namespace names fit in 63"
            )));
        }
        Ok(RunNames {
            prefix: prefix.into(),
            run_id: run_id.into(),
        })
    }

    pub fn namespace(&self, base: &str) -> String {
        format!("{}-{}-{base}", self.prefix, self.run_id)
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (OWNER_LABEL.to_string(), OWNER.to_string()),
            (RUN_LABEL.to_string(), self.run_id.clone()),
        ])
    }

    /// The model's labels plus polygraph's own. The API server sets kubernetes.io/metadata.name.
    fn with_own_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| k.as_str() != NAMESPACE_NAME_LABEL)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.extend(self.labels());
        all
    }
}

pub fn namespace(names: &RunNames, namespace: &Namespace) -> KubeNamespace {
    let mut labels = names.with_own_labels(&namespace.labels);
    labels.insert(BASE_NAME_LABEL.into(), namespace.name.clone());
    KubeNamespace {
        metadata: ObjectMeta {
            name: Some(names.namespace(&namespace.name)),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                HEARTBEAT_ANNOTATION.to_string(),
                heartbeat_now(),
            )])),
            ..ObjectMeta::default()
        },
        ..KubeNamespace::default()
    }
}

/// The Pod Security label a namespace needs for host-network pods: the `baseline` and
/// `restricted` levels forbid `hostNetwork`. Set on a namespace of the run's own when its first
/// host-network pod is created.
pub const POD_SECURITY_LABEL: (&str, &str) = ("pod-security.kubernetes.io/enforce", "privileged");

/// The name of a pod's own Service: the pod's name when it is a DNS-1035 label (as Service names
/// must be: lowercase, starting with a letter, at most 63 characters), otherwise `svc-` and a hash
/// of it, so every pod name has one.
pub fn service_name(pod: &str) -> String {
    let dns1035 = pod.len() <= 63
        && pod.starts_with(|c: char| c.is_ascii_lowercase())
        && !pod.ends_with('-')
        && pod
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if dns1035 {
        return pod.to_string();
    }
    // FNV-1a: stable across runs and versions, unlike the standard library's hasher.
    let hash = pod.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("svc-{hash:016x}")
}

/// A probe pod's own Service: every port it serves (named as the pod names them, else
/// `<protocol>-<port>`), to the same port number, selecting that pod alone; both families where
/// the cluster has them. Pods serving nothing get none (a ClusterIP Service needs a port).
pub fn service(names: &RunNames, pod: &Pod) -> Option<Service> {
    // A host-network pod is probed at the node's address only (`scenario` validation).
    if pod.ports.is_empty() || pod.host_network {
        return None;
    }
    let mut used = BTreeSet::new();
    let ports = pod
        .ports
        .iter()
        .map(|p| {
            let mut name = p.name.clone().unwrap_or_else(|| {
                format!("{}-{}", p.protocol.as_str().to_ascii_lowercase(), p.port)
            });
            if !used.insert(name.clone()) {
                name = format!("{}-{}", p.protocol.as_str().to_ascii_lowercase(), p.port);
                used.insert(name.clone());
            }
            ServicePort {
                name: Some(name),
                port: i32::from(p.port),
                target_port: Some(IntOrString::Int(i32::from(p.port))),
                protocol: Some(p.protocol.as_str().into()),
                ..ServicePort::default()
            }
        })
        .collect();
    let name = service_name(&pod.name);
    let mut labels = names.labels();
    labels.insert(SERVICE_LABEL.into(), name.clone());
    Some(Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(names.namespace(&pod.namespace)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ip_family_policy: Some("PreferDualStack".into()),
            selector: Some(BTreeMap::from([(SERVICE_LABEL.to_string(), name)])),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The heartbeat's value for now: Unix seconds.
pub fn heartbeat_now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string()
}

/// A probe pod: the agent serving the model's ports, non-root, answering with its base identity;
/// `affinity` pins it to a node when the backend spreads pods (see `placement`).
pub fn pod(
    names: &RunNames,
    options: &KubeOptions,
    pod: &Pod,
    affinity: Option<Affinity>,
) -> KubePod {
    let listen: Vec<String> = pod
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect();
    let mut args = vec![
        "serve".to_string(),
        "--identity".into(),
        pod.key().to_string(),
    ];
    if !listen.is_empty() {
        args.extend(["--listen".into(), listen.join(",")]);
    }
    args.extend(["--ready-file".into(), READY_FILE.into()]);
    let container = Container {
        name: "agent".into(),
        image: Some(options.image.clone()),
        image_pull_policy: Some(options.pull_policy.clone()),
        args: Some(args),
        ports: Some(
            pod.ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    container_port: i32::from(p.port),
                    protocol: Some(p.protocol.as_str().into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        // An exec probe needs no network, so the policies under test can't make the pod unready.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    AGENT_PATH.into(),
                    "ready".into(),
                    "--file".into(),
                    READY_FILE.into(),
                ]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(30),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "run".into(),
            mount_path: "/run/polygraph".into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65534),
            run_as_group: Some(65534),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut labels = names.with_own_labels(&pod.labels);
    if options.services {
        labels.insert(SERVICE_LABEL.into(), service_name(&pod.name));
    }
    KubePod {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(names.namespace(&pod.namespace)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "run".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            // In the node's network namespace: the node's address and ports. Namespaced sysctls
            // are refused there (host-network pods serve on 1024 and up, `ClusterDescription`).
            host_network: pod.host_network.then_some(true),
            security_context: Some(PodSecurityContext {
                // A safe sysctl: lets the non-root agent serve ports below 1024 (80, 81).
                sysctls: (!pod.host_network).then(|| {
                    vec![Sysctl {
                        name: "net.ipv4.ip_unprivileged_port_start".into(),
                        value: "0".into(),
                    }]
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            node_selector: (!options.node_selector.is_empty())
                .then(|| options.node_selector.clone()),
            tolerations: (!options.tolerations.is_empty()).then(|| options.tolerations.clone()),
            affinity,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(1),
            restart_policy: Some("Always".into()),
            ..PodSpec::default()
        }),
        ..KubePod::default()
    }
}

/// The policy as the user wrote it, in the run's namespace, with `kubernetes.io/metadata.name`
/// selector values naming model namespaces rewritten to real names.
pub fn policy(
    names: &RunNames,
    policy: &Policy,
    model_namespaces: &BTreeSet<String>,
) -> NetworkPolicy {
    let mut object = policy.object.clone();
    object.metadata = ObjectMeta {
        name: object.metadata.name.clone(),
        namespace: Some(names.namespace(&policy.namespace)),
        labels: Some({
            let mut labels = object.metadata.labels.clone().unwrap_or_default();
            labels.extend(names.labels());
            labels
        }),
        annotations: object.metadata.annotations.clone(),
        ..ObjectMeta::default()
    };
    let rewrite = |selector: &mut LabelSelector| {
        if let Some(value) = selector
            .match_labels
            .as_mut()
            .and_then(|m| m.get_mut(NAMESPACE_NAME_LABEL))
            && model_namespaces.contains(value.as_str())
        {
            *value = names.namespace(value);
        }
        for requirement in selector.match_expressions.iter_mut().flatten() {
            if requirement.key == NAMESPACE_NAME_LABEL {
                for value in requirement.values.iter_mut().flatten() {
                    if model_namespaces.contains(value.as_str()) {
                        *value = names.namespace(value);
                    }
                }
            }
        }
    };
    let peers = |peers: &mut Option<Vec<NetworkPolicyPeer>>| {
        for peer in peers.iter_mut().flatten() {
            if let Some(selector) = peer.namespace_selector.as_mut() {
                rewrite(selector);
            }
        }
    };
    if let Some(spec) = object.spec.as_mut() {
        for rule in spec.ingress.iter_mut().flatten() {
            peers(&mut rule.from);
        }
        for rule in spec.egress.iter_mut().flatten() {
            peers(&mut rule.to);
        }
    }
    object
}

/// The real name of a cluster-scoped policy: it carries the run id, like namespaces, so runs never
/// collide and `gc` can tell whose it is. A BaselineAdminNetworkPolicy must be named `default`
/// (a singleton, by its CRD): it keeps that name and its labels say whose it is.
pub fn cluster_policy_name(names: &RunNames, kind: ClusterKind, name: &str) -> String {
    match kind {
        ClusterKind::BaselineAdminNetworkPolicy => name.to_string(),
        _ => format!("{}-{}-{name}", names.prefix, names.run_id),
    }
}

/// A cluster-scoped policy as polygraph applies it. **Confined to the run**: the subject's
/// namespace selector (and every `namespaces`/`pods` peer's) gains the requirement
/// `polygraph.dev/run-id: <run id>`, which only this run's namespaces carry, so the object can
/// select nothing else on a shared cluster whatever the scenario wrote. Namespace names in
/// `kubernetes.io/metadata.name` selectors are rewritten to the run's real names, as for
/// NetworkPolicy. `networks` peers are addresses and cannot be confined; they only ever act on
/// this run's pods, the only subjects.
pub fn cluster_policy(
    names: &RunNames,
    policy: &ClusterPolicy,
    model_namespaces: &BTreeSet<String>,
    api_version: &str,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut object = policy.object.clone();
    object["apiVersion"] = Value::String(api_version.to_string());
    object["metadata"] = json!({
        "name": cluster_policy_name(names, policy.kind, &policy.name),
        "labels": names.labels(),
    });
    if let Some(status) = object.as_object_mut() {
        status.remove("status");
    }
    let confine = |selector: &mut Value| {
        if !selector.is_object() {
            *selector = json!({});
        }
        let Some(selector) = selector.as_object_mut() else {
            return;
        };
        let labels = selector.entry("matchLabels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(value) = labels.get_mut(NAMESPACE_NAME_LABEL)
            && let Some(base) = value.as_str()
            && model_namespaces.contains(base)
        {
            *value = Value::String(names.namespace(base));
        }
        labels[RUN_LABEL] = Value::String(names.run_id.clone());
        let expressions = selector
            .get_mut("matchExpressions")
            .and_then(Value::as_array_mut);
        for requirement in expressions.into_iter().flatten() {
            if requirement.get("key").and_then(Value::as_str) != Some(NAMESPACE_NAME_LABEL) {
                continue;
            }
            let values = requirement.get_mut("values").and_then(Value::as_array_mut);
            for value in values.into_iter().flatten() {
                if let Some(base) = value.as_str()
                    && model_namespaces.contains(base)
                {
                    *value = Value::String(names.namespace(base));
                }
            }
        }
    };
    // A `pods` subject or peer: its namespace selector (absent: every namespace) is confined.
    let confine_pods = |pods: &mut Value| {
        if let Some(pods) = pods.as_object_mut() {
            confine(pods.entry("namespaceSelector").or_insert_with(|| json!({})));
        }
    };
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return object;
    };
    if let Some(subject) = spec.get_mut("subject").and_then(Value::as_object_mut) {
        if let Some(namespaces) = subject.get_mut("namespaces") {
            confine(namespaces);
        }
        if let Some(pods) = subject.get_mut("pods") {
            confine_pods(pods);
        }
    }
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        let rules = spec.get_mut(rules).and_then(Value::as_array_mut);
        for rule in rules.into_iter().flatten() {
            let peers = rule.get_mut(peers).and_then(Value::as_array_mut);
            for peer in peers.into_iter().flatten().filter_map(Value::as_object_mut) {
                if let Some(namespaces) = peer.get_mut("namespaces") {
                    confine(namespaces);
                }
                if let Some(pods) = peer.get_mut("pods") {
                    confine_pods(pods);
                }
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default_model;
    use crate::policy::parse_policies;

    #[test]
    fn names_and_rewriting() {
        let names = RunNames::new("polygraph", "0a1b2c").unwrap();
        assert!(RunNames::new("Bad", "0a1b2c").is_err());
        assert!(RunNames::new(&"p".repeat(41), "0a1b2c").is_err());
        let cluster = default_model().build("m").unwrap();
        let ns = namespace(&names, &cluster.namespaces()[0]);
        assert_eq!(ns.metadata.name.as_deref(), Some("polygraph-0a1b2c-x"));
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["ns"], "x");
        assert_eq!(labels[BASE_NAME_LABEL], "x");
        assert!(!labels.contains_key(NAMESPACE_NAME_LABEL));

        let p = pod(&names, &KubeOptions::default(), &cluster.pods()[0], None);
        let args = p.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
        assert_eq!(args[..3], ["serve", "--identity", "x/a"]);
        assert_eq!(p.metadata.namespace.as_deref(), Some("polygraph-0a1b2c-x"));

        let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x, uid: abc}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}\n    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [z, elsewhere]}]}\n";
        let policies = parse_policies("p.yaml", yaml, "x").unwrap();
        let bases = BTreeSet::from(["x".to_string(), "y".into(), "z".into()]);
        let object = policy(&names, &policies.network[0], &bases);
        assert_eq!(
            object.metadata.namespace.as_deref(),
            Some("polygraph-0a1b2c-x")
        );
        assert_eq!(object.metadata.uid, None);
        let from = object.spec.unwrap().ingress.unwrap()[0]
            .from
            .clone()
            .unwrap();
        assert_eq!(
            from[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_NAME_LABEL],
            "polygraph-0a1b2c-y"
        );
        assert_eq!(
            from[1]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_expressions
                .as_ref()
                .unwrap()[0]
                .values,
            Some(vec![
                "polygraph-0a1b2c-z".to_string(),
                "elsewhere".to_string()
            ])
        );
    }
}
