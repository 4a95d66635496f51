//! The three L4 protocols NetworkPolicy governs, and a (port, protocol) pair.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The protocols NetworkPolicy can name. The agent's wire format owns the type, so that the model,
/// the runner and every probe pod speak one vocabulary.
pub use polygraph_agent::wire::Protocol;

/// One (port, protocol) combination: the unit a truth table is drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortProtocol {
    pub port: u16,
    pub protocol: Protocol,
}

impl PortProtocol {
    pub fn new(port: u16, protocol: Protocol) -> Self {
        PortProtocol { port, protocol }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}
