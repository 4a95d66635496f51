use crate::input::{FieldProblem, InputError, Origin};

/// Policy input that can't be used. Displayed on one line naming the file, the policy and the
/// field, e.g. `p.yaml (document 2): NetworkPolicy x/web: spec.ingress[0].ports[0].endPort: ...`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{origin}: {kind}: {problem}")]
    UnsupportedKind {
        origin: Box<Origin>,
        kind: String,
        problem: String,
    },
    #[error("{0}")]
    Invalid(Box<InvalidPolicy>),
}

/// A policy the API server would reject (boxed in `PolicyError`: errors stay small).
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {kind} {policy}: {problem}{}", more_note(*more))]
pub struct InvalidPolicy {
    pub origin: Origin,
    /// `NetworkPolicy`, `ClusterNetworkPolicy`, ...: the kind as written.
    pub kind: &'static str,
    /// `namespace/name` as far as it is known.
    pub policy: String,
    pub problem: FieldProblem,
    /// How many further problems the same object has.
    pub more: usize,
}

fn more_note(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (and 1 more problem)".into(),
        n => format!(" (and {n} more problems)"),
    }
}
