//! Label selectors, compiled from the API's `LabelSelector` (already validated).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::Labels;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            // NotIn matches pods that lack the key, as in the API machinery.
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// The AND of its requirements; no requirements selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Compiles a validated selector: `matchLabels` entries become `In` requirements.
    pub fn compile(selector: &LabelSelector) -> Self {
        let from_labels = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement {
                key: key.clone(),
                operator: Operator::In(vec![value.clone()]),
            });
        let from_expressions = selector.match_expressions.iter().flatten().map(|r| {
            let values = r.values.clone().unwrap_or_default();
            Requirement {
                key: r.key.clone(),
                operator: match r.operator.as_str() {
                    "In" => Operator::In(values),
                    "NotIn" => Operator::NotIn(values),
                    "Exists" => Operator::Exists,
                    // Validation admits only the four operators.
                    _ => Operator::DoesNotExist,
                },
            }
        });
        Selector {
            requirements: from_labels.chain(from_expressions).collect(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// kubectl's selector syntax: `app=web,tier in (a,b),!legacy`; `{}` selects everything.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.operator {
                Operator::In(values) if values.len() == 1 => write!(f, "{}={}", r.key, values[0])?,
                Operator::In(values) => write!(f, "{} in ({})", r.key, values.join(","))?,
                Operator::NotIn(values) => write!(f, "{} notin ({})", r.key, values.join(","))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn operators() {
        let selector = Selector::compile(&LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: Some(vec![
                expr("tier", "In", &["a", "b"]),
                expr("env", "NotIn", &["dev"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        });
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "")])));
        assert!(selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "b"),
            ("team", "t"),
            ("env", "prod")
        ])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "t")])));
        assert!(!selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "t"),
            ("env", "dev")
        ])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!selector.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "t"),
            ("legacy", "1")
        ])));
        assert_eq!(
            selector.to_string(),
            "app=web,tier in (a,b),env notin (dev),team,!legacy"
        );
    }

    #[test]
    fn empty_selects_everything() {
        let selector = Selector::compile(&LabelSelector::default());
        assert!(selector.is_everything());
        assert!(selector.matches(&Labels::new()));
        assert_eq!(selector.to_string(), "{}");
    }
}
