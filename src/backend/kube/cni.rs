//! Recognising the CNI from the DaemonSets a cluster runs.

/// (name fragment, CNI) in the order they are checked.
const KNOWN: [(&str, &str); 13] = [
    ("canal", "Canal"),
    ("calico-node", "Calico"),
    ("cilium", "Cilium"),
    ("flannel", "Flannel"),
    ("antrea-agent", "Antrea"),
    ("weave-net", "Weave Net"),
    ("kindnet", "kindnet"),
    ("kube-router", "kube-router"),
    ("ovnkube-node", "OVN-Kubernetes"),
    ("kube-ovn-cni", "Kube-OVN"),
    ("aws-node", "AWS VPC CNI"),
    ("azure-npm", "Azure NPM"),
    ("azure-cns", "Azure CNI"),
];

/// The images of the DaemonSets a CNI is recognised by, each once, sorted: the version a
/// conformance report names.
pub fn images(daemonsets: &[k8s_openapi::api::apps::v1::DaemonSet]) -> Vec<String> {
    let mut images: Vec<String> = daemonsets
        .iter()
        .filter(|ds| {
            ds.metadata
                .name
                .as_deref()
                .is_some_and(|name| KNOWN.iter().any(|(fragment, _)| name.contains(fragment)))
        })
        .filter_map(|ds| ds.spec.as_ref()?.template.spec.as_ref())
        .flat_map(|pod| {
            pod.containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
        })
        .filter_map(|container| container.image.clone())
        .collect();
    images.sort();
    images.dedup();
    images
}

/// The CNI(s) a set of DaemonSet names points to, e.g. `Calico`, `Flannel`, or `Canal` for
/// Flannel with Calico's policy engine. `None` when nothing is recognised.
pub fn recognise<S: AsRef<str>>(daemonsets: &[S]) -> Option<String> {
    let mut found: Vec<&str> = Vec::new();
    for ds in daemonsets {
        let name = ds.as_ref();
        if let Some((_, cni)) = KNOWN.iter().find(|(fragment, _)| name.contains(fragment))
            && !found.contains(cni)
        {
            found.push(cni);
        }
    }
    // Flannel beside Calico is Canal: Flannel for networking, Calico for policy.
    if found.contains(&"Flannel") && found.contains(&"Calico") {
        found.retain(|c| *c != "Flannel" && *c != "Calico");
        found.insert(0, "Canal");
    }
    found.dedup();
    (!found.is_empty()).then(|| found.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::{images, recognise};

    #[test]
    fn images_are_the_cni_daemonsets_only_each_once() {
        let ds = |name: &str, containers: &[&str], init: &[&str]| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"selector": {}, "template": {"spec": {
                    "containers": containers.iter().map(|i| serde_json::json!({"name": "c", "image": i})).collect::<Vec<_>>(),
                    "initContainers": init.iter().map(|i| serde_json::json!({"name": "i", "image": i})).collect::<Vec<_>>(),
                }}}
            }))
            .expect("a DaemonSet")
        };
        let list = [
            ds(
                "calico-node",
                &["calico/node:v3.31.0"],
                &["calico/cni:v3.31.0"],
            ),
            ds("kube-proxy", &["registry.k8s.io/kube-proxy:v1.36.0"], &[]),
            ds("calico-node-windows", &["calico/node:v3.31.0"], &[]),
        ];
        assert_eq!(images(&list), ["calico/cni:v3.31.0", "calico/node:v3.31.0"]);
    }

    #[test]
    fn common_clusters() {
        assert_eq!(
            recognise(&["kube-proxy", "kindnet"]).as_deref(),
            Some("kindnet")
        );
        assert_eq!(
            recognise(&["calico-node", "kube-proxy"]).as_deref(),
            Some("Calico")
        );
        assert_eq!(recognise(&["kube-flannel-ds"]).as_deref(), Some("Flannel"));
        assert_eq!(
            recognise(&["kube-flannel-ds", "calico-node"]).as_deref(),
            Some("Canal")
        );
        assert_eq!(recognise(&["canal"]).as_deref(), Some("Canal"));
        assert_eq!(
            recognise(&["cilium", "cilium-envoy"]).as_deref(),
            Some("Cilium")
        );
        assert_eq!(
            recognise(&["aws-node", "kube-proxy"]).as_deref(),
            Some("AWS VPC CNI")
        );
        assert_eq!(recognise(&["kube-proxy"]), None);
    }
}
