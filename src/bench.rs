//! A generated world for measuring the oracle: `polygraph bench oracle`.
//!
//! The generator is deterministic for a seed and exercises every feature the oracle indexes:
//! empty and label selectors, matchExpressions, namespace selectors, AND peers, ipBlock with except,
//! port ranges, named ports, both policy types. Policies are generated as API objects and go through
//! the same validation and compilation as user input.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::input::{Document, Origin};
use crate::model::{
    Cluster, ClusterDescription, NamespaceDescription, PodDescription, PortDescription,
    PortProtocol, Protocol,
};
use crate::policy::{AnyPolicy, ClusterPolicy, Oracle, Policy, compile_document};

#[derive(Debug, Clone, Copy)]
pub struct WorldSize {
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    /// ClusterNetworkPolicies (Admin and Baseline tiers) on top of the NetworkPolicies.
    pub cluster_policies: usize,
    pub seed: u64,
}

impl Default for WorldSize {
    fn default() -> Self {
        WorldSize {
            namespaces: 50,
            pods: 1000,
            policies: 1000,
            cluster_policies: 100,
            seed: 1,
        }
    }
}

const APPS: [&str; 8] = [
    "web", "api", "db", "cache", "queue", "auth", "search", "batch",
];
const TIERS: [&str; 3] = ["frontend", "backend", "data"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
/// (port, protocol, name) most generated pods serve.
const PORTS: [(u16, Protocol, &str); 4] = [
    (80, Protocol::Tcp, "http"),
    (443, Protocol::Tcp, "https"),
    (53, Protocol::Udp, "dns"),
    (9090, Protocol::Tcp, "metrics"),
];
/// The same numbers under other names, for a quarter of the pods: `http` resolves to 9090 there
/// and `metrics` to nothing, so named ports must be resolved on the right pod.
const ALT_PORTS: [(u16, Protocol, &str); 4] = [
    (80, Protocol::Tcp, "web"),
    (443, Protocol::Tcp, "https"),
    (53, Protocol::Udp, "dns"),
    (9090, Protocol::Tcp, "http"),
];

/// The (port, protocol) pairs the benchmark probes: 4, as the issue asks.
pub fn bench_port_protocols() -> Vec<PortProtocol> {
    PORTS
        .iter()
        .map(|&(p, proto, _)| PortProtocol::new(p, proto))
        .collect()
}

pub fn generate_cluster(size: &WorldSize) -> Cluster {
    let mut rng = fastrand::Rng::with_seed(size.seed);
    let namespaces: Vec<NamespaceDescription> = (0..size.namespaces)
        .map(|i| NamespaceDescription {
            name: format!("ns-{i}"),
            labels: BTreeMap::from([
                ("team".to_string(), format!("t{}", i % 10)),
                ("env".to_string(), ENVS[rng.usize(..ENVS.len())].to_string()),
            ]),
        })
        .collect();
    let pods = (0..size.pods)
        .map(|i| PodDescription {
            namespace: format!("ns-{}", i % size.namespaces.max(1)),
            name: format!("pod-{i}"),
            labels: BTreeMap::from([
                ("app".to_string(), APPS[rng.usize(..APPS.len())].to_string()),
                (
                    "tier".to_string(),
                    TIERS[rng.usize(..TIERS.len())].to_string(),
                ),
                ("version".to_string(), format!("v{}", rng.u8(1..=2))),
            ]),
            ip: None,
            ports: if rng.u8(0..4) == 0 { ALT_PORTS } else { PORTS }
                .iter()
                .map(|&(port, protocol, name)| PortDescription {
                    name: Some(name.to_string()),
                    port: i64::from(port),
                    protocol: Some(protocol.as_str().to_string()),
                })
                .collect(),
            host_network: false,
        })
        .collect();
    let description = ClusterDescription { namespaces, pods };
    // The generator only produces valid names, so this cannot fail.
    description
        .build("generated")
        .unwrap_or_else(|e| panic!("generated cluster is invalid: {e}"))
}

fn selector(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(0..10) {
        0 => json!({}),
        1..=5 => json!({"matchLabels": {"app": APPS[rng.usize(..APPS.len())]}}),
        6 | 7 => json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": [TIERS[rng.usize(..3)], TIERS[rng.usize(..3)]]}
        ]}),
        8 => {
            json!({"matchExpressions": [{"key": "version", "operator": "NotIn", "values": ["v1"]}]})
        }
        _ => json!({"matchLabels": {"app": APPS[rng.usize(..APPS.len())]},
                    "matchExpressions": [{"key": "version", "operator": "Exists"}]}),
    }
}

fn peer(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(0..10) {
        0..=3 => json!({"podSelector": selector(rng)}),
        4 | 5 => {
            json!({"namespaceSelector": {"matchLabels": {"team": format!("t{}", rng.u8(0..10))}}})
        }
        6 | 7 => json!({
            "namespaceSelector": {"matchLabels": {"env": ENVS[rng.usize(..3)]}},
            "podSelector": selector(rng),
        }),
        8 => json!({"namespaceSelector": {}}),
        _ => json!({"ipBlock": {"cidr": "10.244.0.0/16",
                                "except": [format!("10.244.{}.0/24", rng.u8(1..5))]}}),
    }
}

fn port(rng: &mut fastrand::Rng) -> Value {
    let (number, protocol, name) = PORTS[rng.usize(..PORTS.len())];
    match rng.u8(0..10) {
        0..=4 => json!({"protocol": protocol.as_str(), "port": number}),
        5 | 6 => json!({"protocol": protocol.as_str(), "port": name}),
        7 => json!({"port": 8000, "endPort": 9100}),
        8 => json!({"protocol": "UDP"}),
        _ => json!({"port": number}),
    }
}

fn rules(rng: &mut fastrand::Rng, peers_key: &str) -> Value {
    let rules: Vec<Value> = (0..rng.usize(0..=3))
        .map(|_| {
            let mut rule = serde_json::Map::new();
            if rng.u8(0..5) > 0 {
                rule.insert(
                    peers_key.into(),
                    (0..rng.usize(1..=3)).map(|_| peer(rng)).collect(),
                );
            }
            if rng.u8(0..4) > 0 {
                rule.insert(
                    "ports".into(),
                    (0..rng.usize(1..=2)).map(|_| port(rng)).collect(),
                );
            }
            Value::Object(rule)
        })
        .collect();
    Value::Array(rules)
}

/// Policy objects as a user would write them.
pub fn generate_policy_objects(size: &WorldSize) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(size.seed.wrapping_add(1));
    (0..size.policies)
        .map(|i| {
            let types: &[&str] = match rng.u8(0..10) {
                0..=4 => &["Ingress"],
                5 | 6 => &["Egress"],
                _ => &["Ingress", "Egress"],
            };
            let mut spec = serde_json::Map::new();
            spec.insert("podSelector".into(), selector(&mut rng));
            spec.insert("policyTypes".into(), json!(types));
            if types.contains(&"Ingress") {
                spec.insert("ingress".into(), rules(&mut rng, "from"));
            }
            if types.contains(&"Egress") {
                spec.insert("egress".into(), rules(&mut rng, "to"));
            }
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": format!("policy-{i}"), "namespace": format!("ns-{}", i % size.namespaces.max(1))},
                "spec": spec,
            })
        })
        .collect()
}

fn cluster_peer(rng: &mut fastrand::Rng, egress: bool) -> Value {
    match rng.u8(0..10) {
        0..=2 => json!({"namespaces": {"matchLabels": {"team": format!("t{}", rng.u8(0..10))}}}),
        3..=5 => json!({"pods": {"podSelector": selector(rng)}}),
        6 | 7 => json!({"pods": {
            "namespaceSelector": {"matchLabels": {"env": ENVS[rng.usize(..3)]}},
            "podSelector": selector(rng),
        }}),
        8 if egress => json!({"networks": [format!("10.244.{}.0/24", rng.u8(0..5))]}),
        9 if egress && rng.bool() => json!({"domainNames": ["*.example.com"]}),
        9 if egress => json!({"nodes": {}}),
        _ => json!({"namespaces": {}}),
    }
}

fn cluster_protocol(rng: &mut fastrand::Rng, named: bool) -> Value {
    let (number, protocol, name) = PORTS[rng.usize(..PORTS.len())];
    let key = protocol.as_str().to_ascii_lowercase();
    match rng.u8(0..10) {
        0..=5 => json!({key: {"destinationPort": {"number": number}}}),
        6 | 7 if named => json!({"destinationNamedPort": name}),
        _ => json!({"tcp": {"destinationPort": {"range": {"start": 8000, "end": 9100}}}}),
    }
}

fn cluster_rules(rng: &mut fastrand::Rng, peers_key: &str, tier: &str) -> Value {
    let egress = peers_key == "to";
    let rules: Vec<Value> = (0..rng.usize(0..=3))
        .map(|i| {
            let action = match (tier, rng.u8(0..3)) {
                (_, 0) => "Accept",
                (_, 1) => "Deny",
                _ => "Pass",
            };
            let peers: Vec<Value> = (0..rng.usize(1..=2))
                .map(|_| cluster_peer(rng, egress))
                .collect();
            let named = !peers.iter().any(|p| {
                p.get("networks").is_some()
                    || p.get("domainNames").is_some()
                    || p.get("nodes").is_some()
            });
            let mut rule = json!({"name": format!("r{i}"), "action": action, peers_key: peers});
            if rng.u8(0..3) > 0 {
                rule["protocols"] = (0..rng.usize(1..=2))
                    .map(|_| cluster_protocol(rng, named))
                    .collect();
            }
            rule
        })
        .collect();
    Value::Array(rules)
}

/// ClusterNetworkPolicy objects as a user would write them: both tiers, priorities from a small
/// range (so ties, and undefined cells, occur), every action, peer and protocol form.
pub fn generate_cluster_policy_objects(size: &WorldSize) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(size.seed.wrapping_add(2));
    (0..size.cluster_policies)
        .map(|i| {
            let tier = if rng.u8(0..4) == 0 {
                "Baseline"
            } else {
                "Admin"
            };
            let subject = if rng.bool() {
                json!({"namespaces": {"matchLabels": {"env": ENVS[rng.usize(..3)]}}})
            } else {
                json!({"pods": {"podSelector": selector(&mut rng)}})
            };
            json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": format!("cnp-{i}")},
                "spec": {
                    "tier": tier,
                    "priority": rng.u32(0..20),
                    "subject": subject,
                    "ingress": cluster_rules(&mut rng, "from", tier),
                    "egress": cluster_rules(&mut rng, "to", tier),
                },
            })
        })
        .collect()
}

pub fn generate_cluster_policies(size: &WorldSize) -> Vec<ClusterPolicy> {
    generate_cluster_policy_objects(size)
        .into_iter()
        .enumerate()
        .flat_map(|(i, value)| {
            let document = Document {
                origin: Origin::file(format!("generated cluster policy {i}")),
                value,
            };
            compile_document(document, "default")
                .unwrap_or_else(|e| panic!("generated cluster policy is invalid: {e}"))
        })
        .filter_map(|p| match p {
            AnyPolicy::Cluster(p) => Some(p),
            AnyPolicy::Network(_) => None,
        })
        .collect()
}

pub fn generate_policies(size: &WorldSize) -> Vec<Policy> {
    generate_policy_objects(size)
        .into_iter()
        .enumerate()
        .flat_map(|(i, value)| {
            let document = Document {
                origin: Origin::file(format!("generated policy {i}")),
                value,
            };
            compile_document(document, "default")
                .unwrap_or_else(|e| panic!("generated policy is invalid: {e}"))
        })
        .filter_map(|p| match p {
            AnyPolicy::Network(p) => Some(p),
            AnyPolicy::Cluster(_) => None,
        })
        .collect()
}

/// One timed run.
#[derive(Debug, Clone)]
pub struct OracleTiming {
    pub index: Duration,
    pub table: Duration,
    pub cells: usize,
    pub allowed: usize,
    /// Cells the spec leaves to the implementation (cluster-policy ties, DNS).
    pub undefined: usize,
    /// Cells a cluster policy's Deny blocks.
    pub dropped: usize,
}

impl OracleTiming {
    pub fn total(&self) -> Duration {
        self.index + self.table
    }
}

/// Builds the index and the full truth table once, timing both.
pub fn time_oracle(
    cluster: &Cluster,
    policies: &[Policy],
    cluster_policies: &[ClusterPolicy],
    pps: &[PortProtocol],
) -> OracleTiming {
    let start = Instant::now();
    let oracle = Oracle::tiered(cluster, policies, cluster_policies);
    let index = start.elapsed();
    let start = Instant::now();
    let table = oracle.truth_table(pps);
    let table_time = start.elapsed();
    OracleTiming {
        index,
        table: table_time,
        cells: table.len(),
        allowed: table.allowed_count(),
        undefined: table.cells().filter(|(_, d)| d.undefined).count(),
        dropped: table.cells().filter(|(_, d)| d.drop).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_world_is_valid_and_deterministic() {
        let size = WorldSize {
            namespaces: 5,
            pods: 40,
            policies: 60,
            cluster_policies: 20,
            seed: 7,
        };
        let cluster = generate_cluster(&size);
        assert_eq!(cluster.pods().len(), 40);
        let policies = generate_policies(&size);
        assert_eq!(policies.len(), 60);
        assert_eq!(generate_policies(&size), policies);
        let cluster_policies = generate_cluster_policies(&size);
        assert_eq!(cluster_policies.len(), 20);
        let timing = time_oracle(
            &cluster,
            &policies,
            &cluster_policies,
            &bench_port_protocols(),
        );
        assert_eq!(timing.cells, 40 * 40 * 4);
        assert!(timing.allowed > 0 && timing.allowed < timing.cells);
        // The generator's priorities collide on purpose: ties and drops both occur.
        assert!(timing.undefined > 0 && timing.dropped > 0, "{timing:?}");
    }
}
