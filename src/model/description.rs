//! The cluster description file (README: "Cluster description") and the built-in default model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cluster::{Cluster, ContainerPort, Labels, Namespace, Pod};
use super::{ModelError, NAMESPACE_NAME_LABEL, Protocol, syntax};
use crate::input;

/// A cluster as written in a file. Unknown fields are rejected (see `input`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterDescription {
    #[serde(default)]
    pub namespaces: Vec<NamespaceDescription>,
    #[serde(default)]
    pub pods: Vec<PodDescription>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceDescription {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodDescription {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Assigned from the pod CIDR when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortDescription>,
    /// In the node's network namespace (`hostNetwork: true`): at the node's address, serving on
    /// the node's ports. NetworkPolicy leaves what selects it undefined.
    #[serde(
        default,
        rename = "hostNetwork",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_network: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortDescription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i64,
    /// TCP when absent, as for a container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A pod as a description again, IP pinned: to rebuild a cluster with changes.
impl From<&Pod> for PodDescription {
    fn from(pod: &Pod) -> Self {
        PodDescription {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            ip: (!pod.host_network).then(|| pod.ip.to_string()),
            host_network: pod.host_network,
            ports: pod
                .ports
                .iter()
                .map(|c| PortDescription {
                    name: c.name.clone(),
                    port: i64::from(c.port),
                    protocol: Some(c.protocol.as_str().to_string()),
                })
                .collect(),
        }
    }
}

impl From<&Namespace> for NamespaceDescription {
    fn from(namespace: &Namespace) -> Self {
        NamespaceDescription {
            name: namespace.name.clone(),
            labels: namespace.labels.clone(),
        }
    }
}

/// The node's address in a model (the embedded local cluster's node has it too): the address of
/// every host-network pod. Outside the pod CIDR.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// The node's IPv6 address, on a cluster with IPv6.
pub const NODE_ADDRESS_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);

/// Pods without an `ip` get one from here, in order, skipping addresses already taken.
/// It is the pod CIDR of the embedded local cluster too.
const POD_CIDR_BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// The default model (the upstream e2e suite's and cyclonus's): namespaces x, y, z; pods a, b, c in each; every pod serves
/// 80 and 81 on TCP, UDP and SCTP with named ports `serve-<port>-<proto>`.
pub fn default_model() -> ClusterDescription {
    let bases = ["x", "y", "z"];
    let pods = ["a", "b", "c"];
    let ports: Vec<PortDescription> = [80, 81]
        .into_iter()
        .flat_map(|port| {
            Protocol::ALL
                .into_iter()
                .map(move |protocol| PortDescription {
                    name: Some(format!(
                        "serve-{port}-{}",
                        protocol.as_str().to_ascii_lowercase()
                    )),
                    port,
                    protocol: Some(protocol.as_str().to_string()),
                })
        })
        .collect();
    ClusterDescription {
        namespaces: bases
            .iter()
            .map(|ns| NamespaceDescription {
                name: ns.to_string(),
                labels: BTreeMap::from([("ns".to_string(), ns.to_string())]),
            })
            .collect(),
        pods: bases
            .iter()
            .flat_map(|ns| {
                let ports = ports.clone();
                pods.iter().map(move |pod| PodDescription {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    labels: BTreeMap::from([("pod".to_string(), pod.to_string())]),
                    ip: None,
                    ports: ports.clone(),
                    host_network: false,
                })
            })
            .collect(),
    }
}

/// The name the `mixed-ports` model gives two different ports.
pub const MIXED_PORT_NAME: &str = "web";

/// The default model where one port name means different numbers on different pods, as in a
/// real cluster where every team calls its own port `web`: `web` is 80/TCP on the pods `a` and
/// 81/TCP on the pods `b` (each in place of that port's `serve-` name), and the pods `c` have no
/// `web` at all. A CNI that resolves a named port once for all pods, or into every number the
/// name has anywhere, only shows on such a cluster.
pub fn mixed_ports_model() -> ClusterDescription {
    let mut model = default_model();
    for pod in &mut model.pods {
        let number = match pod.name.as_str() {
            "a" => 80,
            "b" => 81,
            _ => continue,
        };
        for port in &mut pod.ports {
            if port.port == number && port.protocol.as_deref() == Some("TCP") {
                port.name = Some(MIXED_PORT_NAME.to_string());
            }
        }
    }
    model
}

impl ClusterDescription {
    /// Loads and checks a cluster description file.
    pub fn load(path: &Path) -> Result<Cluster, ModelError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&origin, &text)?.build(&origin)
    }

    /// Parses one YAML document into a description (not yet checked: see `build`).
    pub fn parse(origin: &str, text: &str) -> Result<ClusterDescription, ModelError> {
        let mut documents = input::parse_documents(origin, text)?;
        if documents.len() != 1 {
            return Err(ModelError::Parse {
                origin: origin.to_string(),
                message: format!(
                    "a cluster description is one YAML document, found {}",
                    documents.len()
                ),
            });
        }
        let document = documents.remove(0);
        input::from_value_strict(document.value).map_err(|p| ModelError::Invalid {
            origin: origin.to_string(),
            field: p.field,
            message: p.message,
        })
    }

    /// Checks the description as the API server would check the namespaces and pods it holds,
    /// then assigns missing IPs.
    pub fn build(&self, origin: &str) -> Result<Cluster, ModelError> {
        let invalid = |field: String, message: String| ModelError::Invalid {
            origin: origin.to_string(),
            field,
            message,
        };

        let mut namespaces = Vec::with_capacity(self.namespaces.len());
        let mut seen_namespaces = HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let field = |f: &str| format!("namespaces[{i}].{f}");
            syntax::dns1123_label(&ns.name).map_err(|m| invalid(field("name"), m.to_string()))?;
            if !seen_namespaces.insert(ns.name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("namespace {} is listed twice", ns.name),
                ));
            }
            check_labels(&ns.labels).map_err(|(f, m)| invalid(field(&f), m))?;
            let mut labels = ns.labels.clone();
            match labels.get(NAMESPACE_NAME_LABEL) {
                Some(value) if value != &ns.name => {
                    return Err(invalid(
                        field(&format!("labels.{NAMESPACE_NAME_LABEL}")),
                        format!(
                            "must equal the namespace name {:?} (the API server sets it)",
                            ns.name
                        ),
                    ));
                }
                _ => {
                    labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.name.clone());
                }
            }
            namespaces.push(Namespace {
                name: ns.name.clone(),
                labels,
            });
        }

        let mut taken_ips: HashMap<IpAddr, String> = HashMap::new();
        let mut node_ports: HashMap<(u16, Protocol), String> = HashMap::new();
        let mut node_ip: Option<(IpAddr, String)> = None;
        let mut seen_pods = HashSet::new();
        let mut pods = Vec::with_capacity(self.pods.len());
        let mut unassigned = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let field = |f: &str| format!("pods[{i}].{f}");
            if !seen_namespaces.contains(pod.namespace.as_str()) {
                return Err(invalid(
                    field("namespace"),
                    format!("namespace {:?} is not in namespaces", pod.namespace),
                ));
            }
            syntax::dns1123_subdomain(&pod.name)
                .map_err(|m| invalid(field("name"), m.to_string()))?;
            let key = format!("{}/{}", pod.namespace, pod.name);
            if !seen_pods.insert(key.clone()) {
                return Err(invalid(field("name"), format!("pod {key} is listed twice")));
            }
            check_labels(&pod.labels).map_err(|(f, m)| invalid(field(&f), m))?;
            let ports = check_ports(&pod.ports).map_err(|(f, m)| invalid(field(&f), m))?;
            if pod.host_network {
                // They share the node's network stack: one socket per port and protocol.
                for (j, port) in ports.iter().enumerate() {
                    if port.port < 1024 {
                        return Err(invalid(
                            field(&format!("ports[{j}].port")),
                            format!(
                                "{} is a privileged port of the node: a host-network pod serves on 1024 or above (away from the node's own services)",
                                port.port
                            ),
                        ));
                    }
                    let served = (port.port, port.protocol);
                    if let Some(other) = node_ports.insert(served, key.clone()) {
                        return Err(invalid(
                            field(&format!("ports[{j}].port")),
                            format!(
                                "{}/{} is already served on the node by the host-network pod {other}",
                                port.port, port.protocol
                            ),
                        ));
                    }
                }
                // The node's address: the model's, or the one a cluster reports for them all.
                let ip = match &pod.ip {
                    None => IpAddr::V4(NODE_ADDRESS),
                    Some(text) => text.parse().map_err(|_| {
                        invalid(field("ip"), format!("{text:?} is not an IP address"))
                    })?,
                };
                match node_ip {
                    Some((other_ip, ref other)) if other_ip != ip => {
                        return Err(invalid(
                            field("ip"),
                            format!(
                                "{ip} is not the node's address {other_ip} (of the host-network pod {other})"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => node_ip = Some((ip, key.clone())),
                }
                pods.push(Pod {
                    ip,
                    ..Pod::from_description(pod, ports)
                });
                continue;
            }
            let ip = match &pod.ip {
                Some(text) => {
                    let ip: IpAddr = text.parse().map_err(|_| {
                        invalid(field("ip"), format!("{text:?} is not an IP address"))
                    })?;
                    if let Some(other) = taken_ips.insert(ip, key.clone()) {
                        return Err(invalid(
                            field("ip"),
                            format!("{ip} is already the IP of {other}"),
                        ));
                    }
                    ip
                }
                None => {
                    unassigned.push(i);
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                }
            };
            pods.push(Pod {
                ip,
                ..Pod::from_description(pod, ports)
            });
        }

        // Only host-network pods are at the node's address.
        let node = node_ip.map_or(IpAddr::V4(NODE_ADDRESS), |(ip, _)| ip);
        if let Some((i, _)) = self
            .pods
            .iter()
            .enumerate()
            .find(|(i, p)| !p.host_network && pods[*i].ip == node)
        {
            return Err(invalid(
                format!("pods[{i}].ip"),
                format!("{node} is the node's address (only host-network pods have it)"),
            ));
        }
        let mut next = u32::from(POD_CIDR_BASE);
        for i in unassigned {
            let ip = loop {
                let candidate = Ipv4Addr::from(next);
                next = next.checked_add(1).ok_or_else(|| {
                    invalid(
                        format!("pods[{i}].ip"),
                        "no IPv4 address left to assign".into(),
                    )
                })?;
                let last = candidate.octets()[3];
                if last != 0 && last != 255 && !taken_ips.contains_key(&IpAddr::V4(candidate)) {
                    break IpAddr::V4(candidate);
                }
            };
            taken_ips.insert(ip, String::new());
            pods[i].ip = ip;
        }

        Ok(Cluster::from_parts(namespaces, pods))
    }
}

impl Pod {
    /// The pod `description` describes, with its checked `ports`, at no address yet.
    fn from_description(description: &PodDescription, ports: Vec<ContainerPort>) -> Pod {
        Pod {
            namespace: description.namespace.clone(),
            name: description.name.clone(),
            labels: description.labels.clone(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports,
            host_network: description.host_network,
        }
    }
}

fn check_labels(labels: &Labels) -> Result<(), (String, String)> {
    for (key, value) in labels {
        syntax::qualified_name(key).map_err(|m| (format!("labels.{key}"), format!("key {m}")))?;
        syntax::label_value(value)
            .map_err(|m| (format!("labels.{key}"), format!("value {value:?} {m}")))?;
    }
    Ok(())
}

fn check_ports(ports: &[PortDescription]) -> Result<Vec<ContainerPort>, (String, String)> {
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut checked = Vec::with_capacity(ports.len());
    for (j, port) in ports.iter().enumerate() {
        let field = |f: &str| format!("ports[{j}].{f}");
        let number = syntax::port_number(port.port).map_err(|m| (field("port"), m.to_string()))?;
        let protocol = match port.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::from_api(p).ok_or_else(|| {
                (
                    field("protocol"),
                    format!(
                        "unsupported value {p:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                    ),
                )
            })?,
        };
        if let Some(name) = &port.name {
            syntax::port_name(name).map_err(|m| (field("name"), format!("{name:?} {m}")))?;
            if !names.insert(name.clone()) {
                return Err((
                    field("name"),
                    format!("port name {name:?} is used twice in this pod"),
                ));
            }
        }
        if !numbers.insert((number, protocol)) {
            return Err((
                field("port"),
                format!("{number}/{protocol} is listed twice in this pod"),
            ));
        }
        checked.push(ContainerPort {
            name: port.name.clone(),
            port: number,
            protocol,
        });
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PortProtocol;

    #[test]
    fn default_model_has_nine_pods_six_port_protocols() {
        let cluster = default_model().build("default").unwrap();
        assert_eq!(cluster.pods().len(), 9);
        assert_eq!(cluster.served_port_protocols().len(), 6);
        let xa = &cluster.pods()[0];
        assert_eq!(xa.key().to_string(), "x/a");
        assert_eq!(xa.named_port("serve-81-udp", Protocol::Udp), Some(81));
        assert_eq!(xa.named_port("serve-81-udp", Protocol::Tcp), None);
        assert!(xa.serves(PortProtocol::new(80, Protocol::Sctp)));
        let ns = cluster.namespace("y").unwrap();
        assert_eq!(
            ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("y")
        );
        let ips: HashSet<_> = cluster.pods().iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 9);
    }

    fn with_host(extra: &str) -> Result<Cluster, ModelError> {
        let text = format!(
            "namespaces: [{{name: x}}]\npods:\n  - {{namespace: x, name: a, ports: [{{port: 80}}]}}\n  - {{namespace: x, name: h, hostNetwork: true, ports: [{{port: 8080}}]}}\n{extra}"
        );
        ClusterDescription::parse("c.yaml", &text).and_then(|d| d.build("c.yaml"))
    }

    #[test]
    fn host_network_pods_share_the_nodes_address_and_not_its_ports() {
        let cluster = with_host("").unwrap();
        let host = &cluster.pods()[1];
        assert!(host.host_network);
        assert_eq!(host.ip, IpAddr::V4(NODE_ADDRESS));
        assert_ne!(cluster.pods()[0].ip, host.ip);
        // A second one at the same address, on other ports.
        let two =
            with_host("  - {namespace: x, name: g, hostNetwork: true, ports: [{port: 9090}]}")
                .unwrap();
        assert_eq!(two.pods()[2].ip, two.pods()[1].ip);
        let clash = |extra: &str| with_host(extra).unwrap_err().to_string();
        let same_port =
            clash("  - {namespace: x, name: g, hostNetwork: true, ports: [{port: 8080}]}");
        assert!(
            same_port.contains("pods[2].ports[0].port")
                && same_port.contains("already served on the node by the host-network pod x/h"),
            "{same_port}"
        );
        let privileged =
            clash("  - {namespace: x, name: g, hostNetwork: true, ports: [{port: 80}]}");
        assert!(
            privileged.contains("pods[2].ports[0].port") && privileged.contains("1024"),
            "{privileged}"
        );
        let node_ip = clash("  - {namespace: x, name: g, ip: 172.18.0.2}");
        assert!(
            node_ip.contains("pods[2].ip") && node_ip.contains("the node's address"),
            "{node_ip}"
        );
        // Rebuilt with the address a cluster reports, all of them at one address.
        let moved = clash(
            "  - {namespace: x, name: g, hostNetwork: true, ip: 10.0.0.1, ports: [{port: 9090}]}",
        );
        assert!(moved.contains("is not the node's address"), "{moved}");
    }

    #[test]
    fn description_file_format_from_design() {
        let text = r#"
namespaces:
  - name: x
    labels: {ns: x}
pods:
  - namespace: x
    name: a
    labels: {pod: a}
    ip: 10.244.1.10
    ports:
      - {name: serve-80-tcp, port: 80, protocol: TCP}
  - namespace: x
    name: b
    ports:
      - {port: 8080}
"#;
        let cluster = ClusterDescription::parse("c.yaml", text)
            .unwrap()
            .build("c.yaml")
            .unwrap();
        assert_eq!(cluster.pods()[0].ip.to_string(), "10.244.1.10");
        assert_eq!(cluster.pods()[1].ports[0].protocol, Protocol::Tcp);
        assert_ne!(cluster.pods()[1].ip, cluster.pods()[0].ip);
    }

    fn error_of(text: &str) -> String {
        match ClusterDescription::parse("c.yaml", text).and_then(|d| d.build("c.yaml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_descriptions_name_the_field() {
        let cases = [
            ("pods: [{namespace: q, name: a}]", "pods[0].namespace"),
            ("namespaces: [{name: X}]", "namespaces[0].name"),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ip: 10.0.0.300}]",
                "pods[0].ip",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 0}]}]",
                "pods[0].ports[0].port",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80, protocol: tcp}]}]",
                "pods[0].ports[0].protocol",
            ),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ports: [{port: 80, name: 80}]}]",
                "pods[0].ports[0].name",
            ),
            (
                "namespaces: [{name: x, lables: {a: b}}]",
                "namespaces[0].lables",
            ),
            (
                "namespaces: [{name: x, labels: {'bad key!': b}}]",
                "namespaces[0].labels.bad key!",
            ),
            (
                "namespaces: [{name: x, labels: {kubernetes.io/metadata.name: y}}]",
                "namespaces[0].labels.kubernetes.io/metadata.name",
            ),
            ("namespaces: [{name: x}, {name: x}]", "namespaces[1].name"),
            (
                "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ip: 10.1.1.1}, {namespace: x, name: b, ip: 10.1.1.1}]",
                "pods[1].ip",
            ),
        ];
        for (text, field) in cases {
            let error = error_of(text);
            assert!(error.contains(field), "{error} should name {field}");
            assert!(error.starts_with("c.yaml"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn ipv6_pods_are_allowed() {
        let text = "namespaces: [{name: x}]\npods: [{namespace: x, name: a, ip: 'fd00::10'}]";
        let cluster = ClusterDescription::parse("c.yaml", text)
            .unwrap()
            .build("c.yaml")
            .unwrap();
        assert!(cluster.pods()[0].ip.is_ipv6());
    }
}
