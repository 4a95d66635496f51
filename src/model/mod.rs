//! The cluster model: namespaces, pods, their labels, IPs and (named) container ports.
//!
//! Pure data, no I/O beyond reading a description file: the oracle answers questions about a
//! `Cluster`, and the backends build one for real.

mod cluster;
mod description;
mod error;
mod path;
mod protocol;
pub mod syntax;

pub use cluster::{
    Cluster, ClusterDns, ContainerPort, DNS_PORT, Labels, NODE_NAMESPACE, Namespace,
    OUTSIDE_NAMESPACE, Pod, PodId, PodRef, node_labels,
};
pub use description::{
    ClusterDescription, MIXED_PORT_NAME, NODE_ADDRESS, NODE_ADDRESS_V6, NamespaceDescription,
    PodDescription, PortDescription, default_model, mixed_ports_model,
};
pub use error::{ModelError, Problem};
pub use path::{Family, IpFamilies, ProbePath, ProbeTarget, ServiceHairpin, embed_v4};
pub use protocol::{PortProtocol, Protocol};

/// The label every namespace carries with its own name (set by the API server since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
