use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::{CliError, OutputFormat, use_color};
use polygraph::analyze::{Analysis, analyze};
use polygraph::matrix::Cell;
use polygraph::model::{
    Cluster, ClusterDescription, PodRef, PortProtocol, Protocol, default_model,
};
use polygraph::policy::load_policies;
use polygraph::report::{analyze_json, matrix_table};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Cluster description file (default: the built-in model x,y,z × a,b,c; ports 80,81 × TCP,UDP,SCTP).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// NetworkPolicy manifests: a file, a directory, or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "POLICIES")]
    files: Vec<String>,
    /// Namespace for policies that don't set metadata.namespace, as with kubectl.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Only these ports (comma-separated or repeated). Default: every port a pod serves.
    #[arg(long, value_delimiter = ',')]
    port: Vec<u16>,
    /// Only these protocols: TCP, UDP, SCTP. Default: every protocol a pod serves.
    #[arg(long, value_delimiter = ',')]
    protocol: Vec<Protocol>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Explain one pair, FROM,TO (e.g. x/a,y/b): which policy and rule decide it. Repeatable.
    #[arg(long, value_name = "FROM,TO")]
    explain: Vec<String>,
}

pub fn run(args: AnalyzeArgs) -> Result<ExitCode, CliError> {
    let cluster = match &args.cluster {
        Some(path) => ClusterDescription::load(path)?,
        None => default_model().build("built-in model")?,
    };
    let explain = args
        .explain
        .iter()
        .map(|pair| parse_pair(&cluster, pair))
        .collect::<Result<Vec<_>, _>>()?;
    let policies = load_policies(&args.files, &args.namespace)?;
    let (port_protocols, pp_warning) = select_port_protocols(&cluster, &args.port, &args.protocol)?;
    let mut analysis = analyze(cluster, policies, &port_protocols);
    analysis.warnings.extend(pp_warning);
    for warning in &analysis.warnings {
        eprintln!("warning: {warning}");
    }

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
                analysis.policies.len(),
                if analysis.policies.len() == 1 {
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

/// Served (port, protocol) pairs, narrowed by `--port` / `--protocol`. A port nobody serves can
/// still be asked about: the oracle answers from the policies alone.
fn select_port_protocols(
    cluster: &Cluster,
    ports: &[u16],
    protocols: &[Protocol],
) -> Result<(Vec<PortProtocol>, Option<String>), CliError> {
    if ports.contains(&0) {
        return Err(CliError::Usage(
            "--port: must be between 1 and 65535".into(),
        ));
    }
    let served = cluster.served_port_protocols();
    let selected: Vec<PortProtocol> = served
        .iter()
        .copied()
        .filter(|pp| ports.is_empty() || ports.contains(&pp.port))
        .filter(|pp| protocols.is_empty() || protocols.contains(&pp.protocol))
        .collect();
    if !selected.is_empty() || ports.is_empty() {
        if selected.is_empty() {
            return Err(CliError::Usage(
                "no pod serves the selected protocols: name ports with --port".into(),
            ));
        }
        return Ok((selected, None));
    }
    let protocols: &[Protocol] = if protocols.is_empty() {
        &Protocol::ALL
    } else {
        protocols
    };
    let asked: Vec<PortProtocol> = ports
        .iter()
        .flat_map(|&port| protocols.iter().map(move |&p| PortProtocol::new(port, p)))
        .collect();
    let names: Vec<String> = asked.iter().map(ToString::to_string).collect();
    let warning = format!(
        "no pod serves {}: answering from the policies alone",
        names.join(", ")
    );
    Ok((asked, Some(warning)))
}

fn explanations(analysis: &Analysis, pairs: &[(usize, usize)]) -> Vec<String> {
    let oracle = analysis.oracle();
    pairs
        .iter()
        .flat_map(|&(from, to)| {
            let oracle = &oracle;
            analysis.table.port_protocols().iter().map(move |&pp| {
                oracle
                    .explain(Cell {
                        from,
                        to,
                        port_protocol: pp,
                    })
                    .detail()
            })
        })
        .collect()
}
