use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::model_args::ModelArgs;
use super::{CliError, OutputFormat, use_color};
use polygraph::analyze::Analysis;
use polygraph::matrix::Cell;
use polygraph::model::{Cluster, PodRef};
use polygraph::report::{analyze_json, matrix_table};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Explain one pair, FROM,TO (e.g. x/a,y/b): which policy and rule decide it. Repeatable.
    #[arg(long, value_name = "FROM,TO")]
    explain: Vec<String>,
    /// Add the pods' node, at this address, as an endpoint `(node)/node`: a pod's traffic to it is
    /// egress judged by address (ipBlock), its traffic to a pod always allowed (a pod's own node
    /// is exempt). The local cluster's node is 172.18.0.2.
    #[arg(long, value_name = "IP")]
    node: Option<std::net::IpAddr>,
}

pub fn run(args: AnalyzeArgs) -> Result<ExitCode, CliError> {
    let mut cluster = args.model.cluster()?;
    if let Some(ip) = args.node {
        // The node serves every (port, protocol) a pod serves, each once.
        let served: Vec<polygraph::model::PortProtocol> = cluster
            .pods()
            .iter()
            .flat_map(|p| {
                p.ports
                    .iter()
                    .map(|c| polygraph::model::PortProtocol::new(c.port, c.protocol))
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        cluster = cluster.with_outside(&[polygraph::backend::local::node_host(&[ip], &served)]);
    }
    let explain = args
        .explain
        .iter()
        .map(|pair| parse_pair(&cluster, pair))
        .collect::<Result<Vec<_>, _>>()?;
    let mut analysis = args.model.analysis(cluster)?;
    polygraph::run::paths::own_node_exempt(&mut analysis);

    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => {
            write!(
                out,
                "{}",
                matrix_table::render_truth_table(&analysis.table, use_color())
            )?;
            let total = analysis.table.len();
            let allowed = analysis.table.allowed_count();
            writeln!(
                out,
                "{total} cells: {allowed} allowed, {} blocked; {} {}",
                total - allowed,
                analysis.policies.len() + analysis.cluster_policies.len(),
                if analysis.policies.len() + analysis.cluster_policies.len() == 1 {
                    "policy"
                } else {
                    "policies"
                }
            )?;
            for text in explanations(&analysis, &explain) {
                write!(out, "\n{text}")?;
            }
        }
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct WithExplanations {
                #[serde(flatten)]
                report: analyze_json::AnalyzeReport,
                #[serde(skip_serializing_if = "Vec::is_empty")]
                explanations: Vec<String>,
            }
            let report = WithExplanations {
                report: analyze_json::report(&analysis),
                explanations: explanations(&analysis, &explain),
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `x/a,y/b` (also `x/a->y/b`) into pod ids.
fn parse_pair(cluster: &Cluster, pair: &str) -> Result<(usize, usize), CliError> {
    let (from, to) = pair
        .split_once("->")
        .or_else(|| pair.split_once(','))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--explain {pair:?}: expected FROM,TO such as x/a,y/b"
            ))
        })?;
    let find = |text: &str| -> Result<usize, CliError> {
        let pod: PodRef = text
            .trim()
            .parse()
            .map_err(|e| CliError::Usage(format!("--explain: {e}")))?;
        cluster.find_pod(&pod).ok_or_else(|| {
            CliError::Usage(format!("--explain: pod {pod} is not in the cluster model"))
        })
    };
    Ok((find(from)?, find(to)?))
}

fn explanations(analysis: &Analysis, pairs: &[(usize, usize)]) -> Vec<String> {
    let oracle = analysis.oracle();
    pairs
        .iter()
        .flat_map(|&(from, to)| {
            let oracle = &oracle;
            analysis.table.port_protocols().iter().map(move |&pp| {
                let detail = oracle
                    .explain(Cell {
                        from,
                        to,
                        port_protocol: pp,
                    })
                    .detail();
                if analysis.cluster.is_node(from) && !analysis.cluster.is_outside(to) {
                    // What the tiers would say of any address, overruled: the node is the pod's own.
                    format!(
                        "{} -> {} on {pp}: ALLOWED (the pod's own node may always reach it; the policies alone would say: {})",
                        analysis.cluster.pods()[from].key(),
                        analysis.cluster.pods()[to].key(),
                        detail.lines().next().unwrap_or_default()
                    )
                } else {
                    detail
                }
            })
        })
        .collect()
}
