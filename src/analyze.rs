//! `polygraph analyze`: the oracle's truth table for a cluster and a set of policies, offline.

use std::collections::HashMap;

use crate::matrix::TruthTable;
use crate::model::{Cluster, PortProtocol};
use crate::policy::{Oracle, Policy};

/// The result of an analysis: the inputs as used, the table, and what the user should know.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub cluster: Cluster,
    /// After de-duplication: a later policy with the same namespace/name replaces an earlier one,
    /// as `kubectl apply` would.
    pub policies: Vec<Policy>,
    pub table: TruthTable,
    pub warnings: Vec<String>,
}

impl Analysis {
    pub fn oracle(&self) -> Oracle<'_> {
        Oracle::new(&self.cluster, &self.policies)
    }
}

/// Runs the oracle over `port_protocols` (every served pair when empty).
pub fn analyze(
    cluster: Cluster,
    policies: Vec<Policy>,
    port_protocols: &[PortProtocol],
) -> Analysis {
    let mut warnings = Vec::new();
    let policies = dedupe(policies, &mut warnings);
    for policy in &policies {
        if cluster.namespace(&policy.namespace).is_none() {
            warnings.push(format!(
                "{}: policy {} is in namespace {:?}, which the cluster model does not have: it selects no pods \
                 (set metadata.namespace, or -n)",
                policy.origin,
                policy.key(),
                policy.namespace
            ));
        }
    }
    let port_protocols = if port_protocols.is_empty() {
        cluster.served_port_protocols()
    } else {
        port_protocols.to_vec()
    };
    let table = Oracle::new(&cluster, &policies).truth_table(&port_protocols);
    Analysis {
        cluster,
        policies,
        table,
        warnings,
    }
}

fn dedupe(policies: Vec<Policy>, warnings: &mut Vec<String>) -> Vec<Policy> {
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Policy> = Vec::with_capacity(policies.len());
    for policy in policies {
        match position.get(&policy.key()) {
            Some(&i) => {
                warnings.push(format!(
                    "{}: policy {} replaces the one from {}",
                    policy.origin,
                    policy.key(),
                    kept[i].origin
                ));
                kept[i] = policy;
            }
            None => {
                position.insert(policy.key(), kept.len());
                kept.push(policy);
            }
        }
    }
    kept
}
