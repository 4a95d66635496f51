//! The JSON form of an analysis. A contract other tools rely on: `cells` is a list with one entry
//! per (from, to, port, protocol) carrying `from`, `to`, `port`, `protocol` and `allowed`; the rest
//! (sub-verdicts, reasons, model, policies) may grow but not change meaning.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analyze::Analysis;
use crate::model::Protocol;
use crate::policy::{Direction, DirectionExplanation};

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
            CellJson {
                from: explanation.from.to_string(),
                to: explanation.to.to_string(),
                port: cell.port_protocol.port,
                protocol: cell.port_protocol.protocol,
                allowed: verdict.allowed(),
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
            .collect(),
        summary: SummaryJson {
            cells: table.len(),
            allowed,
            blocked: table.len() - allowed,
        },
        warnings: analysis.warnings.clone(),
    }
}
