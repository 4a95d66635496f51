//! Cell patterns for pinned expectations: `FROM -> TO`, each side comma-separated `ns/pod`, `ns/*`,
//! `*/pod` or `*/*`, a term prefixed with `!` taking pods away: `*/*,!x/a -> y/*`.

use crate::model::Problem;
use std::collections::BTreeSet;

use crate::model::PodRef;

/// Expands one side. A term that matches no pod is an error: in a hand-written expectation it is
/// always a typo.
pub fn expand_side(side: &str, pods: &[PodRef]) -> Result<BTreeSet<usize>, Problem> {
    let mut add = BTreeSet::new();
    let mut remove = BTreeSet::new();
    for term in side.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (negated, term) = match term.strip_prefix('!') {
            Some(t) => (true, t),
            None => (false, term),
        };
        let (ns, name) = term
            .split_once('/')
            .ok_or_else(|| Problem(format!("{term:?} is not NAMESPACE/POD (use * for any)")))?;
        let matched: Vec<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| (ns == "*" || ns == p.namespace) && (name == "*" || name == p.name))
            .map(|(i, _)| i)
            .collect();
        if matched.is_empty() {
            return Err(Problem(format!("{term:?} matches no pod")));
        }
        if negated { &mut remove } else { &mut add }.extend(matched);
    }
    Ok(add.difference(&remove).copied().collect())
}

/// `FROM -> TO` into (from, to) pod index pairs.
pub fn expand_pattern(pattern: &str, pods: &[PodRef]) -> Result<BTreeSet<(usize, usize)>, Problem> {
    let (from, to) = pattern.split_once("->").ok_or_else(|| {
        format!("{pattern:?} has no `->`: expected FROM -> TO such as */* -> x/*")
    })?;
    let froms = expand_side(from, pods)?;
    let tos = expand_side(to, pods)?;
    Ok(froms
        .iter()
        .flat_map(|f| tos.iter().map(move |t| (*f, *t)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<PodRef> {
        ["x/a", "x/b", "y/a"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    #[test]
    fn wildcards_and_exclusions() {
        let p = pods();
        assert_eq!(expand_side("*/*", &p).unwrap().len(), 3);
        assert_eq!(expand_side("*/a", &p).unwrap(), BTreeSet::from([0, 2]));
        assert_eq!(expand_side("*/*,!x/a", &p).unwrap(), BTreeSet::from([1, 2]));
        assert_eq!(
            expand_pattern("x/* -> y/a", &p).unwrap(),
            BTreeSet::from([(0, 2), (1, 2)])
        );
    }

    #[test]
    fn typos_are_errors() {
        let p = pods();
        assert!(expand_side("q/*", &p).is_err());
        assert!(expand_side("xa", &p).is_err());
        assert!(expand_pattern("x/a y/a", &p).is_err());
    }
}
