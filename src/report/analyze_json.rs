//! The JSON form of an analysis. A contract other tools rely on: `cells` is a list with one entry
//! per (from, to, port, protocol) carrying `from`, `to`, `port`, `protocol` and `allowed`; the rest
//! (sub-verdicts, reasons, model, policies) may grow but not change meaning.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analyze::Analysis;
use crate::model::Protocol;
use crate::policy::{Decider, Direction, DirectionExplanation};

#[derive(Debug, Serialize)]
pub struct AnalyzeReport {
    pub cells: Vec<CellJson>,
    pub port_protocols: Vec<PortProtocolJson>,
    pub pods: Vec<PodJson>,
    pub policies: Vec<PolicyJson>,
    pub summary: SummaryJson,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CellJson {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
    /// The spec leaves the cell to the implementation (`allowed` is then the allowing reading):
    /// same-priority cluster policies that disagree, or a rule that needs DNS.
    pub undefined: bool,
    /// A cluster policy's Deny blocks it: the spec requires a silent drop.
    pub drop_required: bool,
    /// A pod to itself: computed, but the spec leaves it undefined.
    #[serde(rename = "self")]
    pub self_traffic: bool,
    pub egress: DirectionJson,
    pub ingress: DirectionJson,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct DirectionJson {
    pub allowed: bool,
    pub isolated: bool,
    /// Policies selecting the pod for this direction (`namespace/name`).
    pub isolated_by: Vec<String>,
    /// The rules that allow it, when isolated.
    pub allowed_by: Vec<RuleJson>,
    /// What settled the direction: `Admin`, `NetworkPolicy`, `Baseline`, `default` or
    /// `undefined`.
    pub decided_by: String,
    /// The deciding cluster policy (`cnp/name`) and rule (`egress[1] "to-db"`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// Cluster rules met on the way, in evaluation order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undefined: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleJson {
    pub policy: String,
    /// `ingress[0]`, `egress[2]`.
    pub rule: String,
    /// `from[1]`, `to[0], ports[2]`: which entries matched.
    pub matched: String,
}

#[derive(Debug, Serialize)]
pub struct PortProtocolJson {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Serialize)]
pub struct PodJson {
    pub pod: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyJson {
    pub policy: String,
    pub source: String,
    pub isolates: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct SummaryJson {
    pub cells: usize,
    pub allowed: usize,
    pub blocked: usize,
}

impl DirectionJson {
    fn from_explanation(e: &DirectionExplanation) -> Self {
        DirectionJson {
            allowed: e.allowed(),
            isolated: e.isolated(),
            isolated_by: e.isolated_by.clone(),
            allowed_by: e
                .allowing_rules()
                .map(|r| RuleJson {
                    policy: r.policy.clone(),
                    rule: format!("{}[{}]", r.direction.rules_field(), r.index),
                    matched: r.location().unwrap_or_default(),
                })
                .collect(),
            decided_by: match &e.decider {
                Decider::Cluster(step) => step.tier.as_str().to_string(),
                Decider::NetworkPolicy => "NetworkPolicy".into(),
                Decider::Default => "default".into(),
                Decider::Undefined => "undefined".into(),
            },
            policy: match &e.decider {
                Decider::Cluster(step) => Some(step.policy.clone()),
                _ => None,
            },
            rule: match &e.decider {
                Decider::Cluster(step) => Some(step.rule.clone()),
                _ => None,
            },
            action: match &e.decider {
                Decider::Cluster(step) => Some(step.action.as_str()),
                _ => None,
            },
            chain: e.cluster.iter().map(|s| s.describe()).collect(),
            undefined: e.undefined.clone(),
        }
    }
}

pub fn report(analysis: &Analysis) -> AnalyzeReport {
    let oracle = analysis.oracle();
    let table = &analysis.table;
    let cells = table
        .cells()
        .map(|(cell, verdict)| {
            let explanation = oracle.explain(cell);
            debug_assert_eq!(explanation.allowed(), verdict.allowed());
            debug_assert_eq!(explanation.undefined(), verdict.undefined);
            CellJson {
                from: explanation.from.to_string(),
                to: explanation.to.to_string(),
                port: cell.port_protocol.port,
                protocol: cell.port_protocol.protocol,
                allowed: verdict.allowed(),
                undefined: verdict.undefined,
                drop_required: verdict.drop,
                self_traffic: cell.is_self(),
                egress: DirectionJson::from_explanation(&explanation.egress),
                ingress: DirectionJson::from_explanation(&explanation.ingress),
                reason: explanation.summary(),
            }
        })
        .collect();
    let allowed = table.allowed_count();
    AnalyzeReport {
        cells,
        port_protocols: table
            .port_protocols()
            .iter()
            .map(|pp| PortProtocolJson {
                port: pp.port,
                protocol: pp.protocol,
            })
            .collect(),
        pods: analysis
            .cluster
            .pods()
            .iter()
            .map(|p| PodJson {
                pod: p.key().to_string(),
                ip: p.ip.to_string(),
                labels: p.labels.clone(),
            })
            .collect(),
        policies: analysis
            .policies
            .iter()
            .map(|p| PolicyJson {
                policy: p.key(),
                source: p.origin.to_string(),
                isolates: [Direction::Ingress, Direction::Egress]
                    .into_iter()
                    .filter(|d| p.rules(*d).is_some())
                    .map(Direction::as_str)
                    .collect(),
            })
            .chain(analysis.cluster_policies.iter().map(|p| PolicyJson {
                policy: p.key(),
                source: p.origin.to_string(),
                isolates: Vec::new(),
            }))
            .collect(),
        summary: SummaryJson {
            cells: table.len(),
            allowed,
            blocked: table.len() - allowed,
        },
        warnings: analysis.warnings.clone(),
    }
}
