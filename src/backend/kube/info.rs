//! What a Kubernetes cluster says of itself, for the reports: the API server's version, the
//! nodes and their kernels, and the CNI's DaemonSet images. Every call is best effort (a role
//! that cannot list nodes still runs the suite): what could not be read stays empty.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};

use super::cni;
use super::connection::call;
use crate::backend::ClusterInfo;

/// `server_version`: as the preflight read it, if it did (else asked here).
pub(super) async fn read(
    client: &Client,
    cni: Option<String>,
    server_version: Option<String>,
) -> ClusterInfo {
    let server_version = match server_version {
        Some(version) => Some(version),
        None => client
            .apiserver_version()
            .await
            .ok()
            .map(|info| info.git_version),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = call("listing nodes", || async {
        nodes.list(&ListParams::default()).await
    })
    .await
    .map(|list| list.items)
    .unwrap_or_default();
    let mut kernels: Vec<String> = nodes
        .iter()
        .filter_map(|node| node.status.as_ref()?.node_info.as_ref())
        .map(|info| info.kernel_version.clone())
        .collect();
    kernels.sort();
    kernels.dedup();
    let daemonsets: Api<DaemonSet> = Api::all(client.clone());
    let cni_images = call("listing DaemonSets", || async {
        daemonsets.list(&ListParams::default()).await
    })
    .await
    .map(|list| cni::images(&list.items))
    .unwrap_or_default();
    ClusterInfo {
        server_version,
        nodes: nodes.len(),
        kernels,
        cni,
        cni_images,
    }
}
