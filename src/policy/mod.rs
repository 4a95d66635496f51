//! NetworkPolicy: reading, validating as the API server does, defaulting, compiling, and the oracle.

mod cidr;
mod compiled;
mod error;
mod explain;
mod load;
mod oracle;
mod selector;
mod validate;

pub use compiled::{Direction, NamespaceScope, Peer, Policy, PortMatch, Rule};
pub use error::{InvalidPolicy, PolicyError};
pub use explain::{CellExplanation, DirectionExplanation, RuleExplanation, RuleResult};
pub use load::{compile_document, load_policies, parse_policies};
pub use oracle::{Oracle, PolicyId};
pub use selector::{Operator, Requirement, Selector};
pub use validate::validate;
