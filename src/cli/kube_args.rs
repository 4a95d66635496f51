//! Flags for the objects polygraph creates on a Kubernetes cluster, shared by run, probe and smoke.

use std::collections::BTreeMap;

use clap::Args;

use super::CliError;
use polygraph::backend::kube::manifests::{KubeOptions, RunNames};

#[derive(Debug, Args)]
pub struct KubeArgs {
    /// Print every manifest polygraph would create (as YAML) and exit, contacting no cluster.
    #[arg(long)]
    pub dry_run: bool,
    /// Namespaces are named <prefix>-<run id>-<base name>.
    #[arg(long, default_value = "polygraph")]
    pub prefix: String,
    /// The probe agent image (images/agent/Dockerfile).
    #[arg(long)]
    pub image: Option<String>,
    /// Pull policy for the agent image: IfNotPresent suits kind (kind load docker-image).
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Schedule probe pods on nodes with these labels, e.g. kubernetes.io/os=linux. Repeatable.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
    pub node_selector: Vec<String>,
}

impl KubeArgs {
    pub fn options(&self) -> Result<KubeOptions, CliError> {
        let mut options = KubeOptions {
            prefix: self.prefix.clone(),
            pull_policy: self.image_pull_policy.clone(),
            ..KubeOptions::default()
        };
        if let Some(image) = &self.image {
            options.image = image.clone();
        }
        let mut selector = BTreeMap::new();
        for pair in &self.node_selector {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--node-selector {pair:?}: expected KEY=VALUE"))
            })?;
            selector.insert(key.to_string(), value.to_string());
        }
        options.node_selector = selector;
        Ok(options)
    }

    /// Names for a new run: a fresh six-hex-digit id under the prefix.
    pub fn names(&self) -> Result<RunNames, CliError> {
        let run_id = format!("{:06x}", fastrand::u32(..0x0100_0000));
        RunNames::new(&self.prefix, &run_id).map_err(CliError::Usage)
    }
}
