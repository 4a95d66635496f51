//! The three L4 protocols NetworkPolicy governs, and a (port, protocol) pair.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The protocols NetworkPolicy can name. The API spells them upper case and is case sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API's exact spelling, as the API server does (`tcp` is rejected there).
    pub fn from_api(value: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == value)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lenient parsing for command lines: `tcp`, `Tcp` and `TCP` all work.
impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::from_api(&s.to_ascii_uppercase())
            .ok_or_else(|| format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"))
    }
}

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
