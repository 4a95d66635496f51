//! `--dry-run` prints every manifest polygraph would create, contacting nothing; the output must pass
//! strict Kubernetes schema validation (kubernetes-validate --strict, from PyPI) for every built-in
//! scenario, for probe and for smoke. The cluster-scoped policies (CRDs kubernetes-validate does not
//! know) are validated against the CRDs generated from polygraph's own types (`CustomResourceExt`),
//! strictly (no field the schema lacks), with Python's jsonschema (a dependency of
//! kubernetes-validate).

mod common;

use std::process::Command;

/// Schema validation needs kubernetes-validate (PyPI); `.ci/run` installs it.
fn require_validator() {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "kubernetes-validate is not installed: pip install kubernetes-validate (.ci/run does)"
    );
}

fn dry_run(args: &[&str]) -> String {
    let output = common::polygraph(args, "");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

fn validate(name: &str, yaml: &str) {
    require_validator();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write");
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", &path.display().to_string()])
        .output()
        .expect("run kubernetes-validate");
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "{name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_whole_library_dry_run_is_valid_kubernetes() {
    let yaml = dry_run(&["run", "--dry-run"]);
    let documents = yaml.matches("\n---\n").count() + usize::from(yaml.starts_with("---"));
    // The dry run is the run: scenarios sharing a model share its deployment, so each call that
    // sends an object (create, apply, patch) has exactly one document, and deletions none.
    let sending = yaml
        .lines()
        .filter(|l| {
            ["# create ", "# apply ", "# patch "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(documents, sending, "one object per call that sends one");
    assert!(documents > 60, "{documents} documents");
    assert!(
        yaml.contains("# delete NetworkPolicy "),
        "resets delete policies"
    );
    // Policies live in the run's namespaces, and namespace-name selectors follow them.
    assert!(
        !yaml.contains("namespace: x\n"),
        "a base namespace name leaked"
    );
    assert!(
        !yaml.contains("kubernetes.io/metadata.name: monitoring\n"),
        "a selector was not rewritten"
    );
    // The real kube-system (the cluster's own DNS, probed by name) is not the run's: a
    // selector of it stays as written where the scenario's model has no namespace of that name.
    assert!(
        yaml.contains("kubernetes.io/metadata.name: kube-system\n"),
        "the DNS scenario's selector of the cluster's own kube-system"
    );
    assert!(yaml.contains("app.kubernetes.io/managed-by: polygraph"));
    let (core, cluster) = split_cluster_policies(&yaml);
    assert!(
        cluster.len() >= 13,
        "{} cluster-scoped objects",
        cluster.len()
    );
    for object in &cluster {
        // Confinement: whatever the scenario wrote, the subject selects only this run's namespaces.
        let subject = &object["spec"]["subject"];
        let namespaces = if subject["namespaces"].is_object() {
            &subject["namespaces"]
        } else {
            &subject["pods"]["namespaceSelector"]
        };
        assert!(
            namespaces["matchLabels"]["polygraph.dev/run-id"].is_string(),
            "subject not confined to the run: {object}"
        );
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "polygraph"
        );
    }
    assert!(
        yaml.contains("so it selects only this run's namespaces"),
        "the dry run says what confinement does"
    );
    validate_cluster_policies(&cluster);
    validate("library", &core);
}

/// `--target service`: each pod's own Service follows it (created after it, deleted before it),
/// selects it by a label the pod carries, and the whole run still validates strictly.
/// Names through the cluster's DNS (the DNS-egress scenario's own target) need the same Services,
/// and nothing in the cluster's own `kube-system`.
/// A scenario that reuses a deleted pod's address cannot run where the cluster's IPAM picks
/// addresses: unsupported, with the reason, and nothing of it deployed.
#[test]
fn a_scenario_that_chooses_pod_addresses_is_unsupported_on_kubernetes() {
    let yaml = dry_run(&["run", "pod-ip-reused", "--backend", "kube", "--dry-run"]);
    assert!(
        yaml.contains(
            "# unsupported, not run: the scenario creates pods at addresses of its choosing (x/d at 10.244.1.1)"
        ),
        "{yaml}"
    );
    assert!(!yaml.contains("# create Pod "), "{yaml}");
}

/// A host-network pod on Kubernetes: its namespace's Pod Security label first, then the pod in
/// the node's network (no Service, no namespaced sysctl); valid Kubernetes. On its own targets the
/// scenario is unsupported (the node as an endpoint is not deployed on Kubernetes).
#[test]
fn host_network_pods_show_their_namespaces_pod_security_label() {
    let yaml = dry_run(&[
        "run",
        "host-network-pods",
        "--backend",
        "kube",
        "--dry-run",
        "--target",
        "pod-ip",
    ]);
    let label = yaml
        .find("(label pod-security.kubernetes.io/enforce=privileged, for host-network pods)")
        .expect("the namespace is labelled");
    let pod = yaml.find("hostNetwork: true").expect("a host-network pod");
    assert!(label < pod, "{yaml}");
    assert!(
        yaml.contains("    pod-security.kubernetes.io/enforce: privileged\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("# create Service polygraph-"), "{yaml}");
    validate("host-network", &yaml);
    let own = dry_run(&["run", "host-network-pods", "--backend", "kube", "--dry-run"]);
    assert!(own.contains("# unsupported, not run: "), "{own}");
}

#[test]
fn names_need_services_and_touch_nothing_of_the_clusters_dns() {
    let yaml = dry_run(&["run", "seed-dns-egress", "--dry-run"]);
    assert_eq!(
        yaml.matches("# create Service ").count(),
        yaml.matches("# create Pod ").count()
    );
    assert!(
        !yaml
            .lines()
            .filter(|l| ["# create ", "# apply ", "# patch ", "# delete "]
                .iter()
                .any(|call| l.starts_with(call)))
            .any(|l| l.contains("kube-system")),
        "{yaml}"
    );
    validate("dns-egress", &yaml);
}

#[test]
fn the_library_through_services_dry_run_is_valid_kubernetes() {
    let yaml = dry_run(&["run", "--dry-run", "--target", "service"]);
    let services = yaml.matches("\nkind: Service\n").count();
    let pods = yaml.matches("# create Pod ").count();
    // Host-network pods have none: their ports are the node's.
    let host_network = yaml.matches("  hostNetwork: true\n").count();
    assert!(host_network > 0, "{yaml}");
    assert_eq!(
        services,
        pods - host_network,
        "one Service per pod (every library pod serves a port) but host-network ones"
    );
    assert_eq!(
        yaml.matches("# create Service ").count(),
        services,
        "each Service is a call of its own"
    );
    assert!(yaml.contains("polygraph.dev/service: "));
    assert!(yaml.contains("ipFamilyPolicy: PreferDualStack"));
    // A host-network pod's creation follows its namespace's Pod Security label, with no Service.
    let mut after_label = false;
    let creates: Vec<&str> = yaml
        .lines()
        .filter(|l| {
            let host_network = after_label && l.starts_with("# create Pod");
            if l.starts_with("# ") {
                after_label = l.ends_with("for host-network pods)");
            }
            !host_network
        })
        .filter(|l| l.starts_with("# create Pod") || l.starts_with("# create Service"))
        .collect();
    for pair in creates.chunks(2) {
        assert!(
            pair[0].starts_with("# create Pod") && pair[1].starts_with("# create Service"),
            "{pair:?}"
        );
    }
    let (core, _) = split_cluster_policies(&yaml);
    validate("library-services", &core);
    // Without a target that needs them, no Service is made.
    let plain = dry_run(&["run", "--dry-run", "deny-all-ingress"]);
    assert!(!plain.contains("kind: Service"));
    assert!(!plain.contains("polygraph.dev/service"));
}

/// The dry run's documents, split: everything else (as YAML text) and the cluster-scoped
/// policies (parsed).
fn split_cluster_policies(yaml: &str) -> (String, Vec<serde_json::Value>) {
    let mut core = Vec::new();
    let mut cluster = Vec::new();
    for document in yaml.split("\n---\n") {
        let parsed: serde_json::Value = serde_saphyr::from_str(document).unwrap_or_default();
        let is_cluster = parsed["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("policy.networking.k8s.io/"));
        if is_cluster {
            cluster.push(parsed);
        } else {
            core.push(document);
        }
    }
    (core.join("\n---\n"), cluster)
}

/// `additionalProperties: false` wherever a schema lists properties: what `--validate=strict` means.
fn strict(schema: &mut serde_json::Value) {
    if let Some(object) = schema.as_object_mut() {
        if object.contains_key("properties") && !object.contains_key("additionalProperties") {
            object.insert(
                "additionalProperties".into(),
                serde_json::Value::Bool(false),
            );
        }
        for value in object.values_mut() {
            strict(value);
        }
    } else if let Some(items) = schema.as_array_mut() {
        items.iter_mut().for_each(strict);
    }
}

/// Every object against its kind's generated CRD schema.
fn validate_cluster_policies(objects: &[serde_json::Value]) {
    let mut schemas = serde_json::Map::new();
    for crd in polygraph::policy::cluster::api::crds() {
        let kind = crd.spec.names.kind.clone();
        for version in &crd.spec.versions {
            let mut schema =
                serde_json::to_value(&version.schema.as_ref().expect("schema").open_api_v3_schema)
                    .expect("schema JSON");
            strict(&mut schema);
            // The API server adds these to every object's schema.
            for field in ["apiVersion", "kind"] {
                schema["properties"][field] = serde_json::json!({"type": "string"});
            }
            schema["properties"]["metadata"] = serde_json::json!({"type": "object"});
            schemas.insert(
                format!("{}/{}/{kind}", crd.spec.group, version.name),
                schema,
            );
        }
    }
    let checks: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| {
            let key = format!(
                "{}/{}",
                o["apiVersion"].as_str().unwrap_or_default(),
                o["kind"].as_str().unwrap_or_default()
            );
            let schema = schemas
                .get(&key)
                .unwrap_or_else(|| panic!("no generated CRD for {key}"));
            serde_json::json!({"schema": schema, "object": o})
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("checks.json");
    std::fs::write(&path, serde_json::to_string(&checks).expect("JSON")).expect("write");
    let script = r#"
import json, sys, jsonschema
bad = []
for check in json.load(open(sys.argv[1])):
    for e in jsonschema.Draft7Validator(check['schema']).iter_errors(check['object']):
        bad.append(check['object']['metadata']['name'] + ': ' + '.'.join(map(str, e.path)) + ': ' + e.message)
print('\n'.join(bad))
sys.exit(1 if bad else 0)
"#;
    let output = Command::new("python3")
        .args(["-c", script, &path.display().to_string()])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "cluster policies that do not fit the CRD:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The check above can fail: an object with a field the CRD lacks, or an action outside its enum,
/// is caught.
#[test]
fn the_crd_check_catches_what_does_not_fit() {
    let good = serde_json::json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "ok"},
        "spec": {"tier": "Admin", "priority": 3, "subject": {"namespaces": {"matchLabels": {"a": "b"}}},
                 "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}});
    validate_cluster_policies(std::slice::from_ref(&good));
    for (field, value) in [
        ("/spec/egress/0/action", serde_json::json!("Allow")),
        ("/spec/priority", serde_json::json!(1001)),
        (
            "/spec/egress/0/protocols/0/tcp/destinationPort/port",
            serde_json::json!(80),
        ),
        (
            "/spec/subject/namespaces/matchLabel",
            serde_json::json!({"a": "b"}),
        ),
    ] {
        let mut bad = good.clone();
        let (parent, key) = field.rsplit_once('/').expect("path");
        bad.pointer_mut(parent).expect("parent")[key] = value;
        let outcome =
            std::panic::catch_unwind(|| validate_cluster_policies(std::slice::from_ref(&bad)));
        assert!(outcome.is_err(), "{field} was not caught");
    }
}

#[test]
fn probe_and_smoke_dry_runs_are_valid_kubernetes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = dry_run(&[
        "probe",
        "--dry-run",
        "--cluster",
        &format!("{root}/examples/production/cluster.yaml"),
        "-f",
        &format!("{root}/examples/production/policies"),
        "--image",
        "registry.example/agent:test",
        "--node-selector",
        "kubernetes.io/os=linux",
        "--toleration",
        "node-role.kubernetes.io/control-plane:NoSchedule",
        "--toleration",
        "dedicated=probes",
    ]);
    assert!(probe.contains("image: registry.example/agent:test"));
    assert!(probe.contains("key: node-role.kubernetes.io/control-plane"));
    assert!(probe.contains("operator: Equal"));
    assert!(probe.contains("kubernetes.io/os: linux"));
    validate("probe", &probe);
    let smoke = dry_run(&["smoke", "--dry-run", "--prefix", "ci"]);
    assert!(smoke.contains("name: ci-"));
    // A check per policy API: the cluster-scoped ones against their CRDs' rules, confined to the
    // run like the library's.
    let (core, cluster) = split_cluster_policies(&smoke);
    let kinds: std::collections::BTreeSet<&str> =
        cluster.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy"
        ]
    );
    for object in &cluster {
        assert!(
            object["spec"]["subject"]["pods"]["namespaceSelector"]["matchLabels"]
                ["polygraph.dev/run-id"]
                .is_string(),
            "subject not confined to the run: {object}"
        );
    }
    validate_cluster_policies(&cluster);
    validate("smoke", &core);
}

#[test]
fn bad_flags_are_usage_errors() {
    let output = common::polygraph(&["smoke", "--dry-run", "--prefix", "Not_A_Label"], "");
    assert_eq!(output.status.code(), Some(2));
    let output = common::polygraph(&["smoke", "--dry-run", "--node-selector", "novalue"], "");
    assert_eq!(output.status.code(), Some(2));
    // Servers beyond the cluster: TCP only, and only for Kubernetes.
    let output = common::polygraph(
        &[
            "run",
            "--dry-run",
            "--external-target",
            "203.0.113.10:53/UDP",
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("only TCP"));
    let output = common::polygraph(
        &[
            "run",
            "--backend",
            "sim",
            "--external-target",
            "203.0.113.10:80/TCP",
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(2));
    // The cluster decides its families; only polygraph's own clusters take --ip-family.
    let output = common::polygraph(&["smoke", "--dry-run", "--ip-family", "dual"], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ip-family"));
    let output = common::polygraph(&["smoke", "--dry-run", "--toleration", "gpu:Sometimes"], "");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--toleration") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
