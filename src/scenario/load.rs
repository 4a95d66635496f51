//! From scenario text to a checked `Scenario`: every action resolved against the world it acts on,
//! every step's expectation computed by the oracle, every pinned expectation compared with it —
//! all before anything is deployed.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::Action;
use super::format::{ExpectDoc, OneOrMany, ScenarioDoc, StepDoc};
use super::patterns::expand_pattern;
use super::{Scenario, ScenarioError, Step, library};
use crate::analyze::{Analysis, analyze};
use crate::input::{self, Document, InputError, Origin};
use crate::model::{
    Cluster, Labels, NAMESPACE_NAME_LABEL, Namespace, PodRef, PortProtocol, ProbeTarget, Protocol,
    default_model,
};
use crate::policy::{AnyPolicy, ClusterKind, compile_document};
use crate::world::World;

/// At most this many disagreeing cells are listed in an error.
const LISTED: usize = 5;

fn error(origin: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError {
        origin: origin.into(),
        message: message.into(),
        cause: None,
    }
}

/// An error from below (a policy, a file): its own located message, and itself as the cause.
fn caused_by(e: impl std::error::Error + Send + Sync + 'static) -> ScenarioError {
    ScenarioError {
        origin: String::new(),
        message: e.to_string(),
        cause: Some(std::sync::Arc::new(e)),
    }
}

impl From<InputError> for ScenarioError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Yaml { origin, message } => {
                error(origin, format!("not valid YAML: {message}"))
            }
            other => caused_by(other),
        }
    }
}

/// Parses and checks a scenario. `base_dir` resolves `apply-files` (none for built-ins).
pub fn parse(source: &str, text: &str, base_dir: Option<&Path>) -> Result<Scenario, ScenarioError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    // Syntax and shape errors alike come from the YAML reader, located; say just what is wrong.
    let doc: ScenarioDoc =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| match input::yaml_error(
            source, &e,
        ) {
            InputError::Yaml { origin, message } => error(origin, message),
            other => ScenarioError::from(other),
        })?;
    if doc.name.trim().is_empty() {
        return Err(error(source, "name: must not be empty"));
    }
    let (description, model_key) = match (&doc.cluster, &doc.model) {
        (Some(cluster), _) => (cluster.clone(), format!("{source}#{}", doc.name)),
        (None, Some(name)) => {
            let model = library::model(name).ok_or_else(|| {
                error(
                    source,
                    format!(
                        "model: unknown model {name:?} (built-in: {})",
                        library::MODELS.join(", ")
                    ),
                )
            })?;
            (model, name.clone())
        }
        (None, None) => (default_model(), "default".to_string()),
    };
    let initial = World::new(&description, &format!("{source}: cluster")).map_err(caused_by)?;
    let port_protocols = probe_selection(
        source,
        initial.cluster(),
        &doc.probe.ports,
        &doc.probe.protocols,
    )?;
    if doc.steps.is_empty() {
        return Err(error(source, "steps: a scenario needs at least one step"));
    }
    let mut targets = match doc.target {
        Some(OneOrMany::Many(list)) if list.is_empty() => {
            return Err(error(
                source,
                "target: an empty list (leave it out to probe pod IPs)",
            ));
        }
        Some(written) => written.into_vec(),
        None => Vec::new(),
    };
    targets.sort();
    targets.dedup();

    let mut world = initial.clone();
    let mut steps = Vec::with_capacity(doc.steps.len());
    let mut chosen_addresses = Vec::new();
    for spanned in &doc.steps {
        if let Some(pod) = &spanned.value.create_pod
            && let Some(ip) = &pod.ip
        {
            chosen_addresses.push(format!("{}/{} at {ip}", pod.namespace, pod.name));
        }
        let origin = format!("{source}:{}", spanned.referenced.line());
        let action = resolve(&spanned.value, &world, source, &origin, base_dir)?;
        world
            .apply_all(&action.mutations())
            .map_err(|e| error(&origin, e.to_string()))?;
        let analysis = analyze(world.cluster().clone(), world.policy_set(), &port_protocols);
        if let Some(expects) = &spanned.value.expect {
            // Pins state the first target's answer (pod IPs when listed): through a Service only
            // a pod's hairpin to itself differs.
            let pinned = analysis.for_target(targets.first().copied().unwrap_or_default());
            check_pins(source, expects, &pinned)?;
        }
        steps.push(Step {
            name: spanned
                .value
                .name
                .clone()
                .unwrap_or_else(|| action.describe()),
            origin,
            action,
            pinned: spanned.value.expect.is_some(),
            analysis,
        });
    }
    // A host-network pod has no Service of polygraph's (its ports are the node's): it is probed
    // at the node's address, on the pod-IP and node paths.
    let host_network = std::iter::once(initial.cluster())
        .chain(steps.iter().map(|s| &s.analysis.cluster))
        .any(|c| c.host_network().next().is_some());
    if let Some(other) = targets
        .iter()
        .find(|t| !matches!(t, ProbeTarget::PodIp | ProbeTarget::Node))
        .filter(|_| host_network)
    {
        return Err(error(
            source,
            format!(
                "target: {other} cannot reach a host-network pod (it has no Service): probe pod-ip and node"
            ),
        ));
    }
    Ok(Scenario {
        name: doc.name,
        description: doc.description,
        tags: doc.tags,
        source: source.to_string(),
        model_key,
        initial,
        port_protocols,
        targets,
        families: doc.ip_family,
        chosen_addresses,
        steps,
        digest: digest(text),
    })
}

/// The SHA-256 of a scenario's text, in hex: what a conformance report names it by.
fn digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn probe_selection(
    source: &str,
    cluster: &Cluster,
    ports: &[u16],
    protocols: &[String],
) -> Result<Vec<PortProtocol>, ScenarioError> {
    let protocols: Vec<Protocol> = protocols
        .iter()
        .map(|p| {
            Protocol::from_api(p).ok_or_else(|| {
                error(
                    source,
                    format!("probe.protocols: unknown protocol {p:?} (TCP, UDP or SCTP)"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let selected: Vec<PortProtocol> = cluster
        .served_port_protocols()
        .into_iter()
        .filter(|pp| ports.is_empty() || ports.contains(&pp.port))
        .filter(|pp| protocols.is_empty() || protocols.contains(&pp.protocol))
        .collect();
    if selected.is_empty() {
        return Err(error(
            source,
            "probe: no pod serves the selected ports and protocols",
        ));
    }
    Ok(selected)
}

fn parse_pod(origin: &str, text: &str) -> Result<PodRef, ScenarioError> {
    text.parse().map_err(|e: String| error(origin, e))
}

/// Policies from inline manifests; each names its own line.
fn inline_policies(
    source: &str,
    manifests: &[serde_saphyr::Spanned<Value>],
) -> Result<Vec<AnyPolicy>, ScenarioError> {
    let mut policies = Vec::new();
    for manifest in manifests {
        let document = Document {
            origin: Origin::file(format!("{source}:{}", manifest.referenced.line())),
            value: manifest.value.clone(),
        };
        policies.extend(compile_document(document, "default").map_err(caused_by)?);
    }
    Ok(policies)
}

fn resolve(
    step: &StepDoc,
    world: &World,
    source: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Action, ScenarioError> {
    let actions = [
        step.apply.is_some(),
        step.update.is_some(),
        step.apply_files.is_some(),
        step.delete_policy.is_some(),
        step.delete_cluster_policy.is_some(),
        step.set_namespace_labels.is_some(),
        step.remove_namespace_labels.is_some(),
        step.set_pod_labels.is_some(),
        step.remove_pod_labels.is_some(),
        step.create_pod.is_some(),
        step.delete_pod.is_some(),
        step.create_namespace.is_some(),
        step.delete_namespace.is_some(),
        step.probe.is_some(),
    ];
    let count = actions.iter().filter(|a| **a).count();
    if count != 1 {
        return Err(error(
            origin,
            format!(
                "a step needs exactly one action, found {count} (apply, update, apply-files, delete-policy, delete-cluster-policy, set-namespace-labels, remove-namespace-labels, set-pod-labels, remove-pod-labels, create-pod, delete-pod, create-namespace, delete-namespace, probe)"
            ),
        ));
    }
    let check_namespaces = |policies: Vec<AnyPolicy>| -> Result<Vec<AnyPolicy>, ScenarioError> {
        for p in &policies {
            let AnyPolicy::Network(p) = p else { continue };
            if world.cluster().namespace(&p.namespace).is_none() {
                return Err(error(
                    origin,
                    format!(
                        "policy {}: namespace {} does not exist",
                        p.key(),
                        p.namespace
                    ),
                ));
            }
        }
        Ok(policies)
    };
    if let Some(manifests) = &step.apply {
        return Ok(Action::Apply(check_namespaces(inline_policies(
            source, manifests,
        )?)?));
    }
    if let Some(manifests) = &step.update {
        let policies = check_namespaces(inline_policies(source, manifests)?)?;
        let missing = policies.iter().find_map(|p| match p {
            AnyPolicy::Network(p) if !world.has_policy(&p.namespace, &p.name) => Some(p.key()),
            AnyPolicy::Cluster(p) if !world.has_cluster_policy(p.kind, &p.name) => Some(p.key()),
            _ => None,
        });
        if let Some(key) = missing {
            return Err(error(
                origin,
                format!("update: there is no policy {key} to update (use apply)"),
            ));
        }
        return Ok(Action::Apply(policies));
    }
    if let Some(files) = &step.apply_files {
        let base = base_dir.ok_or_else(|| {
            error(
                origin,
                "apply-files: only scenarios read from a file can name files",
            )
        })?;
        let mut policies = Vec::new();
        for file in files {
            let path = base.join(file);
            for document in input::read_documents(&path.display().to_string())? {
                policies.extend(compile_document(document, "default").map_err(caused_by)?);
            }
        }
        return Ok(Action::Apply(check_namespaces(policies)?));
    }
    if let Some(r) = &step.delete_cluster_policy {
        let kinds = world.cluster_policy_kinds(&r.name);
        let kind = match (&r.kind, kinds.as_slice()) {
            (Some(text), _) => ClusterKind::from_kind(text).ok_or_else(|| {
                error(
                    origin,
                    format!(
                        "delete-cluster-policy: kind {text:?} is not ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy"
                    ),
                )
            })?,
            (None, [kind]) => *kind,
            (None, []) => {
                return Err(error(
                    origin,
                    format!("delete-cluster-policy: there is no cluster policy {}", r.name),
                ));
            }
            (None, _) => {
                return Err(error(
                    origin,
                    format!(
                        "delete-cluster-policy: {} names policies of several kinds: add kind",
                        r.name
                    ),
                ));
            }
        };
        return Ok(Action::DeleteClusterPolicy {
            kind,
            name: r.name.clone(),
        });
    }
    if let Some(r) = &step.delete_policy {
        return Ok(Action::DeletePolicy {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        });
    }
    let namespace_labels = |namespace: &str| {
        world
            .namespace_labels(namespace)
            .ok_or_else(|| error(origin, format!("there is no namespace {namespace}")))
    };
    if let Some(d) = &step.set_namespace_labels {
        let mut labels = namespace_labels(&d.namespace)?;
        if d.labels.contains_key(NAMESPACE_NAME_LABEL) {
            return Err(error(
                origin,
                format!("{NAMESPACE_NAME_LABEL} is set by the API server and can't be changed"),
            ));
        }
        labels.extend(d.labels.clone());
        return Ok(Action::SetNamespaceLabels {
            namespace: d.namespace.clone(),
            labels,
        });
    }
    if let Some(d) = &step.remove_namespace_labels {
        let labels = remove_keys(
            origin,
            namespace_labels(&d.namespace)?,
            &d.keys,
            &format!("namespace {}", d.namespace),
        )?;
        return Ok(Action::SetNamespaceLabels {
            namespace: d.namespace.clone(),
            labels,
        });
    }
    let pod_labels = |text: &str| -> Result<(PodRef, Labels), ScenarioError> {
        let pod = parse_pod(origin, text)?;
        let labels = world
            .pod(&pod)
            .map(|p| p.labels.clone())
            .ok_or_else(|| error(origin, format!("there is no pod {pod}")))?;
        Ok((pod, labels))
    };
    if let Some(d) = &step.set_pod_labels {
        let (pod, mut labels) = pod_labels(&d.pod)?;
        labels.extend(d.labels.clone());
        return Ok(Action::SetPodLabels { pod, labels });
    }
    if let Some(d) = &step.remove_pod_labels {
        let (pod, labels) = pod_labels(&d.pod)?;
        let labels = remove_keys(origin, labels, &d.keys, &format!("pod {pod}"))?;
        return Ok(Action::SetPodLabels { pod, labels });
    }
    if let Some(d) = &step.create_pod {
        let mut d = d.clone();
        if d.ports.is_empty() {
            // Like the default model's pods: 80 and 81 on every protocol, named.
            d.ports = default_model().pods[0].ports.clone();
        }
        let key = PodRef {
            namespace: d.namespace.clone(),
            name: d.name.clone(),
        };
        if world.pod(&key).is_some() {
            return Err(error(origin, format!("pod {key} already exists")));
        }
        let pod = world
            .new_pod(&d)
            .map_err(|e| error(origin, e.to_string()))?;
        return Ok(Action::CreatePod(pod));
    }
    if let Some(text) = &step.delete_pod {
        return Ok(Action::DeletePod(parse_pod(origin, text)?));
    }
    if let Some(d) = &step.create_namespace {
        if world.cluster().namespace(&d.name).is_some() {
            return Err(error(
                origin,
                format!("namespace {} already exists", d.name),
            ));
        }
        let mut labels = d.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.into(), d.name.clone());
        return Ok(Action::CreateNamespace(Namespace {
            name: d.name.clone(),
            labels,
        }));
    }
    if let Some(name) = &step.delete_namespace {
        return Ok(Action::DeleteNamespace(name.clone()));
    }
    Ok(Action::Probe)
}

fn remove_keys(
    origin: &str,
    mut labels: Labels,
    keys: &[String],
    what: &str,
) -> Result<Labels, ScenarioError> {
    for key in keys {
        if key == NAMESPACE_NAME_LABEL {
            return Err(error(
                origin,
                format!("{NAMESPACE_NAME_LABEL} is set by the API server and can't be removed"),
            ));
        }
        if labels.remove(key).is_none() {
            return Err(error(origin, format!("{what} has no label {key}")));
        }
    }
    Ok(labels)
}

/// Compares pinned expectations with the oracle's table: they must agree exactly.
fn check_pins(
    source: &str,
    expects: &[serde_saphyr::Spanned<ExpectDoc>],
    analysis: &Analysis,
) -> Result<(), ScenarioError> {
    let table = &analysis.table;
    let pps = table.port_protocols();
    let pods = table.pods();
    let mut blocked: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut first_line = None;
    for spanned in expects {
        let origin = format!("{source}:{}", spanned.referenced.line());
        first_line.get_or_insert(origin.clone());
        let on: Vec<usize> = if spanned.value.on.is_empty() {
            (0..pps.len()).collect()
        } else {
            spanned
                .value
                .on
                .iter()
                .map(|text| {
                    pps.iter()
                        .position(|pp| pp.to_string().eq_ignore_ascii_case(text.trim()))
                        .ok_or_else(|| {
                            error(
                                &origin,
                                format!(
                                    "expect.on: {text} is not probed (probed: {})",
                                    pps.iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?
        };
        for pattern in &spanned.value.blocked {
            let pairs = expand_pattern(pattern, pods)
                .map_err(|m| error(&origin, format!("expect.blocked: {m}")))?;
            for k in &on {
                blocked.extend(pairs.iter().map(|(f, t)| (*k, *f, *t)));
            }
        }
    }
    let oracle = analysis.oracle();
    let mut disagreements = Vec::new();
    for (k, pp) in pps.iter().enumerate() {
        for from in 0..pods.len() {
            for to in 0..pods.len() {
                let pinned_blocked = blocked.contains(&(k, from, to));
                let verdict = table.get(k, from, to);
                if verdict.allowed() == pinned_blocked {
                    let why = oracle.explain(crate::matrix::Cell {
                        from,
                        to,
                        port_protocol: *pp,
                    });
                    disagreements.push(format!(
                        "{} -> {} {pp} pinned {}, the spec says {} ({})",
                        pods[from],
                        pods[to],
                        if pinned_blocked { "blocked" } else { "allowed" },
                        if verdict.allowed() {
                            "allowed"
                        } else {
                            "blocked"
                        },
                        why.reason()
                    ));
                }
            }
        }
    }
    if disagreements.is_empty() {
        return Ok(());
    }
    let more = disagreements.len().saturating_sub(LISTED);
    let mut message = format!(
        "the pinned expectation disagrees with the spec in {} cells: {}",
        disagreements.len(),
        disagreements
            .into_iter()
            .take(LISTED)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Err(error(
        first_line.unwrap_or_else(|| source.to_string()),
        message,
    ))
}
