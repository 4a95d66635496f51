//! How the local cluster is set up: which dataplane, which agent program, which faults.

use std::path::PathBuf;
use std::str::FromStr;

use crate::faults::Faults;
use crate::model::IpFamilies;

/// What enforces policies in the local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// The reference dataplane.
    Nftables,
    /// Forwards everything, like a CNI that ignores NetworkPolicy (Flannel).
    None,
}

impl FromStr for Dataplane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nftables" => Ok(Dataplane::Nftables),
            "none" => Ok(Dataplane::None),
            _ => Err(format!(
                "unknown dataplane {s:?} (expected nftables or none)"
            )),
        }
    }
}

/// How to start the agent: by default this very binary's hidden `agent` subcommand.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl AgentCommand {
    pub fn this_binary() -> std::io::Result<Self> {
        Ok(AgentCommand {
            program: std::env::current_exe()?,
            args: vec!["agent".into()],
        })
    }
}

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub dataplane: Dataplane,
    pub agent: AgentCommand,
    /// Bugs to imitate (`--inject`); none by default.
    pub faults: Faults,
    /// The pods' address families (`--ip-family`).
    pub families: IpFamilies,
}
