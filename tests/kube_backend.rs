//! The Kubernetes backend against a fake API server: kube's client over an in-memory tower service
//! that stores namespaces and pods, reports pod status and events as scripted, records every request,
//! and can throttle (429). No cluster is needed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::Client;
use polygraph::backend::Backend;
use polygraph::backend::kube::KubeBackend;
use polygraph::backend::kube::manifests::{KubeOptions, RunNames};
use polygraph::backend::kube::placement::parse_toleration;
use polygraph::model::default_model;
use polygraph::policy::parse_policies;
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// Requests seen: "METHOD path?query".
    log: Vec<String>,
    /// Bodies of server-side applies.
    applied: Vec<Value>,
    /// Answer this many requests with 429 before serving normally.
    throttle: usize,
    /// Pods whose container never starts (name -> waiting reason).
    broken: BTreeMap<String, String>,
    /// Namespace creations to refuse with 403.
    forbid_namespace: Option<String>,
    /// What `GET /api/v1/nodes` lists.
    nodes: Vec<Value>,
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn status(code: u16, reason: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(code).expect("status code"),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code}),
    )
}

fn list(kind: &str, items: Vec<Value>) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": items}),
    )
}

/// One request, as the API server would answer it.
fn handle(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    query: &str,
    body: Value,
) -> Response<Full<Bytes>> {
    let mut s = state.lock().expect("state");
    s.log.push(format!("{method} {path}?{query}"));
    if s.throttle > 0 {
        s.throttle -= 1;
        return status(429, "TooManyRequests");
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["apis", "apps", "v1", "daemonsets"]) => list(
            "DaemonSetList",
            vec![
                json!({"metadata": {"name": "kindnet", "namespace": "kube-system"}}),
                json!({"metadata": {"name": "kube-proxy", "namespace": "kube-system"}}),
            ],
        ),
        ("GET", ["api", "v1", "nodes"]) => list("NodeList", s.nodes.clone()),
        ("POST", ["api", "v1", "namespaces"]) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if s.forbid_namespace.as_deref() == Some(name.as_str()) {
                return status(403, "Forbidden");
            }
            s.namespaces.insert(name, body.clone());
            json_response(StatusCode::CREATED, body)
        }
        ("GET", ["api", "v1", "namespaces"]) => {
            let items = s.namespaces.values().cloned().collect();
            list("NamespaceList", items)
        }
        ("GET", ["api", "v1", "namespaces", name]) => match s.namespaces.get(*name) {
            Some(ns) => json_response(StatusCode::OK, ns.clone()),
            None => status(404, "NotFound"),
        },
        ("DELETE", ["api", "v1", "namespaces", name]) => {
            let name = name.to_string();
            s.pods.retain(|(ns, _), _| *ns != name);
            match s.namespaces.remove(&name) {
                Some(ns) => json_response(StatusCode::OK, ns),
                None => status(404, "NotFound"),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods"]) => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut pod = body.clone();
            // The scheduler's part: honour a hostname affinity, else pick "solo".
            let pinned = &body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0];
            pod["spec"]["nodeName"] = json!(pinned.as_str().unwrap_or("solo"));
            let index = s.pods.len() + 10;
            pod["status"] = match s.broken.get(&name) {
                Some(reason) => {
                    json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [agent]"}],
                                       "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                                                              "state": {"waiting": {"reason": reason, "message": "Back-off pulling image"}}}]})
                }
                None => {
                    json!({"phase": "Running", "podIP": format!("10.9.0.{index}"), "conditions": [{"type": "Ready", "status": "True"}]})
                }
            };
            s.pods.insert((ns.to_string(), name), pod.clone());
            json_response(StatusCode::CREATED, pod)
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            match s.pods.get(&(ns.to_string(), name.to_string())) {
                Some(pod) => json_response(StatusCode::OK, pod.clone()),
                None => status(404, "NotFound"),
            }
        }
        ("GET", ["api", "v1", "namespaces", _, "events"]) => list(
            "EventList",
            vec![
                json!({"metadata": {"name": "e1"}, "involvedObject": {}, "reason": "Failed", "message": "Failed to pull image \"polygraph-agent:missing\": not found"}),
            ],
        ),
        (
            "PATCH",
            [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                _,
                "networkpolicies",
                _,
            ],
        ) => {
            s.applied.push(body.clone());
            json_response(StatusCode::OK, body)
        }
        _ => status(404, "NotFound"),
    }
}

fn fake_cluster(state: Arc<Mutex<State>>) -> Client {
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let state = state.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let response = handle(
                &state,
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
                value,
            );
            Ok::<_, Infallible>(response)
        }
    });
    Client::new(service, "default")
}

async fn backend(state: &Arc<Mutex<State>>) -> KubeBackend {
    backend_with(state, KubeOptions::default()).await
}

async fn backend_with(state: &Arc<Mutex<State>>, options: KubeOptions) -> KubeBackend {
    let names = RunNames::new("polygraph", "abc123").expect("names");
    KubeBackend::with_client(fake_cluster(state.clone()), options, names, "fake".into()).await
}

fn node(name: &str, taint: Option<&str>, cordoned: bool) -> Value {
    let taints: Vec<Value> = taint
        .map(|key| json!({"key": key, "effect": "NoSchedule"}))
        .into_iter()
        .collect();
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "spec": {"taints": taints, "unschedulable": cordoned},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A kind-like cluster: a tainted control plane, two workers and a cordoned node.
fn kind_nodes() -> Vec<Value> {
    vec![
        node(
            "kind-control-plane",
            Some("node-role.kubernetes.io/control-plane"),
            false,
        ),
        node("kind-worker", None, false),
        node("kind-worker2", None, false),
        node("kind-worker3", None, true),
    ]
}

async fn deploy_default_model(backend: &mut KubeBackend) -> Vec<polygraph::model::PodRef> {
    let cluster = default_model().build("model").expect("model");
    for namespace in cluster.namespaces() {
        backend
            .create_namespace(namespace)
            .await
            .expect("namespace");
    }
    for pod in cluster.pods() {
        backend.create_pod(pod).await.expect("pod");
    }
    backend
        .wait_ready(Duration::from_secs(5))
        .await
        .expect("ready");
    cluster.pods().iter().map(|p| p.key()).collect()
}

#[tokio::test]
async fn pods_are_spread_over_schedulable_nodes_in_turn() {
    let state = Arc::new(Mutex::new(State {
        nodes: kind_nodes(),
        ..State::default()
    }));
    let mut backend = backend(&state).await;
    assert!(
        backend.describe().contains("spread over 2 nodes"),
        "{}",
        backend.describe()
    );
    let pods = deploy_default_model(&mut backend).await;
    let nodes: Vec<&str> = pods
        .iter()
        .map(|p| backend.node(p).expect("a node"))
        .collect();
    assert_eq!(
        nodes,
        [
            "kind-worker",
            "kind-worker2",
            "kind-worker",
            "kind-worker2",
            "kind-worker",
            "kind-worker2",
            "kind-worker",
            "kind-worker2",
            "kind-worker"
        ]
    );
    backend.cleanup().await.expect("cleanup");

    // Tolerating the control plane's taint adds it to the rotation.
    let state = Arc::new(Mutex::new(State {
        nodes: kind_nodes(),
        ..State::default()
    }));
    let options = KubeOptions {
        tolerations: vec![
            parse_toleration("node-role.kubernetes.io/control-plane:NoSchedule").expect("valid"),
        ],
        ..KubeOptions::default()
    };
    let mut backend = backend_with(&state, options).await;
    assert!(backend.describe().contains("spread over 3 nodes"));
    let pods = deploy_default_model(&mut backend).await;
    assert_eq!(backend.node(&pods[0]), Some("kind-control-plane"));
    let s = state.lock().expect("state");
    let first = s.pods.values().next().expect("a pod");
    assert_eq!(
        first["spec"]["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
}

#[tokio::test]
async fn one_node_leaves_placement_to_the_scheduler() {
    let state = Arc::new(Mutex::new(State {
        nodes: vec![node("solo", None, false)],
        ..State::default()
    }));
    let mut backend = backend(&state).await;
    assert!(backend.describe().contains("one schedulable node"));
    let pods = deploy_default_model(&mut backend).await;
    assert_eq!(backend.node(&pods[4]), Some("solo"));
    let s = state.lock().expect("state");
    assert!(
        s.pods.values().all(|p| p["spec"].get("affinity").is_none()),
        "no affinity without two nodes"
    );
}

#[tokio::test]
async fn deploys_applies_and_cleans_up() {
    let state = Arc::new(Mutex::new(State::default()));
    let mut backend = backend(&state).await;
    assert!(
        backend.describe().contains("CNI: kindnet"),
        "{}",
        backend.describe()
    );

    let cluster = default_model().build("model").expect("model");
    backend
        .create_namespace(&cluster.namespaces()[0])
        .await
        .expect("namespace");
    backend
        .create_namespace(&cluster.namespaces()[1])
        .await
        .expect("namespace");
    backend.create_pod(&cluster.pods()[0]).await.expect("pod");
    backend
        .wait_ready(Duration::from_secs(5))
        .await
        .expect("ready");
    let real = backend
        .address(&cluster.pods()[0].key())
        .expect("an address from the cluster");
    assert_eq!(real.to_string(), "10.9.0.10");

    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]\n";
    let policy = parse_policies("p.yaml", yaml, "x")
        .expect("policy")
        .remove(0);
    backend.apply_policy(&policy).await.expect("apply");

    {
        let s = state.lock().expect("state");
        assert!(s.namespaces.contains_key("polygraph-abc123-x"));
        let ns = &s.namespaces["polygraph-abc123-x"];
        assert_eq!(
            ns["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "polygraph"
        );
        assert_eq!(ns["metadata"]["labels"]["polygraph.dev/run-id"], "abc123");
        let apply = s
            .log
            .iter()
            .find(|l| l.starts_with("PATCH"))
            .expect("a server-side apply");
        assert!(
            apply.contains("fieldManager=polygraph") && apply.contains("force=true"),
            "{apply}"
        );
        assert_eq!(s.applied[0]["metadata"]["namespace"], "polygraph-abc123-x");
        assert_eq!(
            s.applied[0]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "polygraph-abc123-y"
        );
    }

    backend.cleanup().await.expect("cleanup");
    let s = state.lock().expect("state");
    assert!(
        s.namespaces.is_empty(),
        "left behind: {:?}",
        s.namespaces.keys().collect::<Vec<_>>()
    );
    assert!(s.log.iter().any(|l| l.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpolygraph%2Cpolygraph.dev%2Frun-id%3Dabc123")), "{:?}", s.log);
}

#[tokio::test]
async fn a_pod_that_never_gets_ready_is_named_with_its_cause_and_events() {
    let state = Arc::new(Mutex::new(State::default()));
    state
        .lock()
        .expect("state")
        .broken
        .insert("a".into(), "ImagePullBackOff".into());
    let mut backend = backend(&state).await;
    let cluster = default_model().build("model").expect("model");
    backend
        .create_namespace(&cluster.namespaces()[0])
        .await
        .expect("namespace");
    backend.create_pod(&cluster.pods()[0]).await.expect("pod");
    let error = backend
        .wait_ready(Duration::from_secs(5))
        .await
        .expect_err("never ready")
        .to_string();
    assert!(error.starts_with("pod x/a: not ready"), "{error}");
    assert!(error.contains("ImagePullBackOff"), "{error}");
    assert!(error.contains("Failed to pull image"), "{error}");
    assert!(!error.contains('\n'));
    backend.cleanup().await.expect("cleanup");
    assert!(state.lock().expect("state").namespaces.is_empty());
}

#[tokio::test]
async fn throttling_is_retried_not_reported() {
    let state = Arc::new(Mutex::new(State::default()));
    let mut backend = backend(&state).await;
    state.lock().expect("state").throttle = 3;
    let cluster = default_model().build("model").expect("model");
    backend
        .create_namespace(&cluster.namespaces()[0])
        .await
        .expect("retried through 429s");
    let s = state.lock().expect("state");
    let creates = s
        .log
        .iter()
        .filter(|l| l.starts_with("POST /api/v1/namespaces?"))
        .count();
    assert_eq!(
        creates, 4,
        "three throttled attempts and one that worked: {:?}",
        s.log
    );
}

#[tokio::test]
async fn errors_are_reported_and_cleanup_still_removes_everything() {
    let state = Arc::new(Mutex::new(State::default()));
    state.lock().expect("state").forbid_namespace = Some("polygraph-abc123-y".into());
    let mut backend = backend(&state).await;
    let cluster = default_model().build("model").expect("model");
    backend
        .create_namespace(&cluster.namespaces()[0])
        .await
        .expect("x is allowed");
    let error = backend
        .create_namespace(&cluster.namespaces()[1])
        .await
        .expect_err("403")
        .to_string();
    assert!(
        error.contains("creating namespace polygraph-abc123-y") && error.contains("Forbidden"),
        "{error}"
    );
    let forbidden_attempts = state
        .lock()
        .expect("state")
        .log
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(forbidden_attempts, 2, "a 403 is not retried");
    backend.cleanup().await.expect("cleanup");
    assert!(state.lock().expect("state").namespaces.is_empty());
}
