//! Arguments `analyze` and `probe` share: the cluster model, the policies, the probe selection.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use polygraph::analyze::{Analysis, analyze};
use polygraph::model::{Cluster, ClusterDescription, PortProtocol, Protocol, default_model};
use polygraph::policy::load_policies;

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Cluster description file (default: the built-in model x,y,z × a,b,c; ports 80,81 × TCP,UDP,SCTP).
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// NetworkPolicy manifests: a file, a directory, or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "POLICIES")]
    pub files: Vec<String>,
    /// Namespace for policies that don't set metadata.namespace, as with kubectl.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only these ports (comma-separated or repeated). Default: every port a pod serves.
    #[arg(long, value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Only these protocols: TCP, UDP, SCTP. Default: every protocol a pod serves.
    #[arg(long, value_delimiter = ',')]
    pub protocol: Vec<Protocol>,
}

impl ModelArgs {
    pub fn cluster(&self) -> Result<Cluster, CliError> {
        Ok(match &self.cluster {
            Some(path) => ClusterDescription::load(path)?,
            None => default_model().build("built-in model")?,
        })
    }

    /// Loads everything and runs the oracle; warnings are printed to stderr.
    pub fn analysis(&self, cluster: Cluster) -> Result<Analysis, CliError> {
        let policies = load_policies(&self.files, &self.namespace)?;
        let (port_protocols, pp_warning) =
            select_port_protocols(&cluster, &self.port, &self.protocol)?;
        let mut analysis = analyze(cluster, policies, &port_protocols);
        analysis.warnings.extend(pp_warning);
        for warning in &analysis.warnings {
            eprintln!("warning: {warning}");
        }
        Ok(analysis)
    }
}

/// Served (port, protocol) pairs, narrowed by `--port` / `--protocol`. A port nobody serves can
/// still be asked about: the oracle answers from the policies alone.
fn select_port_protocols(
    cluster: &Cluster,
    ports: &[u16],
    protocols: &[Protocol],
) -> Result<(Vec<PortProtocol>, Option<String>), CliError> {
    if ports.contains(&0) {
        return Err(CliError::Usage(
            "--port: must be between 1 and 65535".into(),
        ));
    }
    let served = cluster.served_port_protocols();
    let selected: Vec<PortProtocol> = served
        .iter()
        .copied()
        .filter(|pp| ports.is_empty() || ports.contains(&pp.port))
        .filter(|pp| protocols.is_empty() || protocols.contains(&pp.protocol))
        .collect();
    if !selected.is_empty() || ports.is_empty() {
        if selected.is_empty() {
            return Err(CliError::Usage(
                "no pod serves the selected protocols: name ports with --port".into(),
            ));
        }
        return Ok((selected, None));
    }
    let protocols: &[Protocol] = if protocols.is_empty() {
        &Protocol::ALL
    } else {
        protocols
    };
    let asked: Vec<PortProtocol> = ports
        .iter()
        .flat_map(|&port| protocols.iter().map(move |&p| PortProtocol::new(port, p)))
        .collect();
    let names: Vec<String> = asked.iter().map(ToString::to_string).collect();
    let warning = format!(
        "no pod serves {}: answering from the policies alone",
        names.join(", ")
    );
    Ok((asked, Some(warning)))
}
