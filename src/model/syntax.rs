//! Kubernetes name and label syntax, as the API server's `apimachinery/pkg/util/validation` checks it.
//!
//! Each check returns the API server's own wording on failure so that polygraph's errors read like
//! `kubectl apply`'s. They live in the model because both the cluster description and the policy
//! validator need them.

use super::Problem;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const PORT_NAME_MAX: usize = 15;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// One DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespace names).
pub fn dns1123_label(value: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(Problem(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        )));
    }
    if !label_shape(value) {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
                    and must start and end with an alphanumeric character"
            .into());
    }
    Ok(())
}

fn label_shape(value: &str) -> bool {
    let starts_ends = value.chars().next().is_some_and(is_lower_alnum)
        && value.chars().last().is_some_and(is_lower_alnum);
    starts_ends && value.chars().all(|c| is_lower_alnum(c) || c == '-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (object names).
pub fn dns1123_subdomain(value: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(Problem(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        )));
    }
    if !value.split('.').all(label_shape) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
                    '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

fn qualified_name_part(value: &str) -> bool {
    value.chars().next().is_some_and(is_alnum)
        && value.chars().last().is_some_and(is_alnum)
        && value
            .chars()
            .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.')
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn qualified_name(value: &str) -> Result<(), Problem> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must not be empty".into());
        }
        dns1123_subdomain(prefix).map_err(|e| Problem(format!("prefix part {e}")))?;
    }
    if name.is_empty() {
        return Err("name part must not be empty".into());
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(Problem(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} characters"
        )));
    }
    if !qualified_name_part(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', \
                    and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters shaped like a qualified name part.
pub fn label_value(value: &str) -> Result<(), Problem> {
    if value.len() > LABEL_VALUE_MAX {
        return Err(Problem(format!(
            "must be no more than {LABEL_VALUE_MAX} characters"
        )));
    }
    if !value.is_empty() && !qualified_name_part(value) {
        return Err(
            "a valid label must be an empty string or consist of alphanumeric characters, \
                    '-', '_' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// An IANA service name as used for container port names: 1–15 characters of `[a-z0-9-]`,
/// at least one letter, no leading, trailing or doubled hyphen.
pub fn port_name(value: &str) -> Result<(), Problem> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > PORT_NAME_MAX {
        return Err(Problem(format!(
            "must be no more than {PORT_NAME_MAX} characters"
        )));
    }
    if !value.chars().all(|c| is_lower_alnum(c) || c == '-') {
        return Err(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if value.contains("--") {
        return Err("must not contain consecutive hyphens".into());
    }
    if !value.chars().any(|c| c.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)".into());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must not begin or end with a hyphen".into());
    }
    Ok(())
}

/// A port number: 1–65535.
pub fn port_number(value: i64) -> Result<u16, Problem> {
    match u16::try_from(value) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err("must be between 1 and 65535, inclusive".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("x").is_ok());
        assert!(dns1123_label("team-a").is_ok());
        assert!(dns1123_label("Team").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("allow.dns-egress").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain("").is_err());
    }

    #[test]
    fn qualified_names() {
        for ok in [
            "app",
            "kubernetes.io/metadata.name",
            "app.kubernetes.io/name",
            "A_b.c-D",
        ] {
            assert!(qualified_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/app",
            "app/",
            "-app",
            "a b",
            "Example.com/app",
            "a/b/c",
            &"k".repeat(64),
        ] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        assert!(label_value("").is_ok());
        assert!(label_value("prod_1.x-y").is_ok());
        assert!(label_value("-prod").is_err());
        assert!(label_value("a b").is_err());
        assert!(label_value(&"v".repeat(64)).is_err());
    }

    #[test]
    fn port_names() {
        for ok in ["http", "serve-80-tcp", "h2c", "a1"] {
            assert!(port_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "a--b",
            "-http",
            "http-",
            "a_b",
            "serve-80-tcp-xyz",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_numbers() {
        assert_eq!(port_number(1), Ok(1));
        assert_eq!(port_number(65535), Ok(65535));
        assert!(port_number(0).is_err());
        assert!(port_number(65536).is_err());
        assert!(port_number(-80).is_err());
    }
}
