//! Reading user input: files, directories and stdin into YAML documents, and strict typed
//! deserialization of those documents.
//!
//! "Strict" means what `kubectl apply --validate=strict` means: a field polygraph does not know is an
//! error naming its path, never silently dropped, because a typo like `podSelecor` would otherwise
//! turn a policy into something else entirely. Unknown fields are found with `serde_ignored` (the
//! API types send them to `IgnoredAny`) and type errors get their path from `serde_path_to_error`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where a document came from, for error messages: `file`, `file (document 2)` or `<stdin>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based position among the file's non-empty documents; `None` when the file has only one.
    pub document: Option<usize>,
    /// 0-based position inside a `kind: List`, when the object came from one.
    pub item: Option<usize>,
}

impl Origin {
    pub fn file(source: impl Into<String>) -> Self {
        Origin {
            source: source.into(),
            document: None,
            item: None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        match (self.document, self.item) {
            (Some(d), Some(i)) => write!(f, " (document {d}, items[{i}])"),
            (Some(d), None) => write!(f, " (document {d})"),
            (None, Some(i)) => write!(f, " (items[{i}])"),
            (None, None) => Ok(()),
        }
    }
}

/// One parsed YAML (or JSON) document.
#[derive(Debug, Clone)]
pub struct Document {
    pub origin: Origin,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not valid YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error("{}: directory holds no .yaml, .yml or .json files", path.display())]
    EmptyDirectory { path: PathBuf },
}

/// A problem found while turning a document into a typed value: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads `-f` arguments as kubectl does: a file, a directory (its manifest files, sorted by name,
/// not recursive) or `-` for stdin.
pub fn read_documents(arg: &str) -> Result<Vec<Document>, InputError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| InputError::Io {
                path: PathBuf::from("<stdin>"),
                source,
            })?;
        return parse_documents("<stdin>", &text);
    }
    let path = Path::new(arg);
    let io = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && has_manifest_extension(p))
            .collect();
        if files.is_empty() {
            return Err(InputError::EmptyDirectory {
                path: path.to_path_buf(),
            });
        }
        files.sort();
        let mut documents = Vec::new();
        for file in files {
            documents.extend(read_file(&file)?);
        }
        return Ok(documents);
    }
    read_file(path)
}

fn has_manifest_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e))
}

fn read_file(path: &Path) -> Result<Vec<Document>, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_documents(&path.display().to_string(), &text)
}

/// Splits text into its non-empty YAML documents. JSON is YAML, so JSON files work too.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, InputError> {
    // YAML 1.2 booleans only: `ns: y` and `enabled: on` are strings, as people who write label
    // values mean them (YAML 1.1 would turn them into booleans and the field into a type error).
    let options = serde_saphyr::options! { strict_booleans: true };
    let values: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| yaml_error(source, &e))?;
    let numbered = values.len() > 1;
    Ok(values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(i, value)| Document {
            origin: Origin {
                source: source.to_string(),
                document: numbered.then_some(i + 1),
                item: None,
            },
            value,
        })
        .collect())
}

/// `file:line:col: not valid YAML: message`, on one line, without the library's source snippet.
pub fn yaml_error(source: &str, error: &serde_saphyr::Error) -> InputError {
    let message = error.render_with_options(serde_saphyr::render_options! {
        formatter: &serde_saphyr::UserMessageFormatter,
        snippets: serde_saphyr::SnippetMode::Off,
    });
    let mut message = one_line(&message);
    let origin = match error.location() {
        Some(at) => {
            // The location leads the line, so the message need not end with it too.
            let suffix = format!(" at line {}, column {}", at.line(), at.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_string();
            }
            format!("{source}:{}:{}", at.line(), at.column())
        }
        None => source.to_string(),
    };
    InputError::Yaml { origin, message }
}

/// Deserializes `value` into `T`, failing on the first unknown field or type error, with its path.
pub fn from_value_strict<T: DeserializeOwned>(value: Value) -> Result<T, FieldProblem> {
    let mut unknown: Option<String> = None;
    let mut track = serde_path_to_error::Track::new();
    let typed = {
        let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
        serde_ignored::deserialize(tracked, |path| {
            unknown.get_or_insert_with(|| ignored_path(&path));
        })
    };
    match typed {
        Ok(typed) => match unknown {
            None => Ok(typed),
            Some(path) => Err(FieldProblem {
                field: path,
                message: "unknown field (check the spelling and the indentation)".into(),
            }),
        },
        Err(error) => {
            let mut message = one_line(&error.to_string());
            if message.contains("expected a string") {
                message.push_str(" (quote the value)");
            }
            Err(FieldProblem {
                field: json_path(&track.path().to_string()),
                message,
            })
        }
    }
}

/// `spec.ingress[0].from[1].podSelecor`: serde_ignored's own rendering shows `?` for every
/// `Option` layer, which means nothing to someone reading a manifest.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// serde's paths read `spec.ingress[0]` already; its root is `.`, which we show as nothing.
fn json_path(path: &str) -> String {
    if path == "." || path == "?" {
        String::new()
    } else {
        path.to_string()
    }
}

/// Error messages must fit on one line.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[test]
    fn documents_are_numbered_only_when_several() {
        let one = parse_documents("f.yaml", "a: 1\n").unwrap();
        assert_eq!(one[0].origin.to_string(), "f.yaml");
        let two = parse_documents("f.yaml", "---\na: 1\n---\nb: 2\n---\n").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].origin.to_string(), "f.yaml (document 2)");
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let value = serde_json::json!({"items": [{"port": 80}, {"port": 81, "prot": "TCP"}]});
        let problem = from_value_strict::<Outer>(value).unwrap_err();
        assert_eq!(problem.field, "items[1].prot");
    }

    #[test]
    fn type_errors_are_named_with_their_path() {
        let value = serde_json::json!({"items": [{"port": "eighty"}]});
        let problem = from_value_strict::<Outer>(value).unwrap_err();
        assert_eq!(problem.field, "items[0].port");
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let docs = parse_documents("f.yaml", "ns: y\nother: on\nreal: true\n").unwrap();
        assert_eq!(docs[0].value["ns"], "y");
        assert_eq!(docs[0].value["other"], "on");
        assert_eq!(docs[0].value["real"], true);
    }

    #[test]
    fn bad_yaml_is_an_error_not_a_panic() {
        assert!(parse_documents("f.yaml", "a: [1, 2\n").is_err());
        assert!(parse_documents("f.yaml", "a: 1\na: 2\n").is_err());
    }
}
