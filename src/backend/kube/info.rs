//! What a Kubernetes cluster says of itself, for the reports (`Backend::cluster_info`): read from
//! the lists the backend makes anyway at start (nodes for placement, DaemonSets for the CNI), and
//! the API server's version from the preflight.

use k8s_openapi::api::core::v1::Node;

/// The nodes' kernels, each once, sorted.
pub(super) fn kernels(nodes: &[Node]) -> Vec<String> {
    let mut kernels: Vec<String> = nodes
        .iter()
        .filter_map(|node| node.status.as_ref()?.node_info.as_ref())
        .map(|info| info.kernel_version.clone())
        .collect();
    kernels.sort();
    kernels.dedup();
    kernels
}
