use std::path::PathBuf;

/// A cluster description that can't be used: which file, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

/// What is wrong with one value, in the API server's words (`must be no more than 63 characters`):
/// the syntax checks return it, and callers place it under the file, object and field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);

impl From<&str> for Problem {
    fn from(message: &str) -> Self {
        Problem(message.to_string())
    }
}

impl From<String> for Problem {
    fn from(message: String) -> Self {
        Problem(message)
    }
}
