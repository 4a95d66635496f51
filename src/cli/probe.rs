use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::backend_args::{BackendArgs, TargetArgs};
use super::model_args::ModelArgs;
use super::session::{Finished, session};
use super::{CliError, EXIT_WRONG, OutputFormat, use_color};
use polygraph::backend::Backend;
use polygraph::report::probe;
use polygraph::run::converge::{ConvergeOptions, Convergence, observe_until_converged};
use polygraph::run::{PathPlan, reconcile};
use polygraph::world::World;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How long a probe waits for an answer before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long enforcement may take: rounds go on until every cell is as the spec says or this
    /// passes; the last round is the answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Between rounds.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// One round right after applying, whatever it shows: enforcement delay and verdicts mixed.
    #[arg(long)]
    snapshot: bool,
    #[command(flatten)]
    pace: super::pace_args::PaceArgs,
    #[command(flatten)]
    paths: TargetArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(args: ProbeArgs) -> Result<ExitCode, CliError> {
    if args.timeout.is_zero() {
        return Err(CliError::Usage("--timeout must be more than zero".into()));
    }
    let pacer = args.pace.pacer()?;
    let cluster = args.model.cluster()?;
    let analysis = args.model.analysis(cluster)?;
    let world = World::with_policies(&analysis.cluster, &analysis.policy_set())?;
    let table = args.output == OutputFormat::Table && !args.backend.dry_run;
    let needs_services = args.paths.targets.iter().any(|t| t.needs_services());
    let Finished { value, transcript } =
        session(args.backend.start(needs_services), async |backend| {
            let backend_name = backend.describe();
            if table {
                out!("backend: {backend_name}")?;
            }
            reconcile(backend, &World::empty(), &world).await?;
            let started = Instant::now();
            // Probed and judged where the cluster put the pods, not where the model planned them, on
            // every path (target and family).
            let plan = PathPlan::prepare(
                backend,
                &args.paths.targets,
                analysis.table.port_protocols(),
                &[&analysis.cluster],
            )
            .await
            .map_err(CliError::Usage)?;
            let options = ConvergeOptions {
                timeout: args.timeout,
                deadline: args.deadline,
                poll_interval: args.poll_interval,
                snapshot: args.snapshot,
            };
            let (observed, convergence) =
                observe_until_converged(&*backend, &analysis, &plan, &pacer, options).await?;
            let probes: Vec<probe::PathProbe> = observed
                .into_iter()
                .map(|(path, analysis, observed)| probe::PathProbe {
                    path,
                    analysis,
                    observed,
                })
                .collect();
            Ok((probes, convergence, started.elapsed(), backend_name))
        })?;
    let mut out = std::io::stdout().lock();
    if let Some(transcript) = transcript {
        write!(out, "{}", transcript.text())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (probes, convergence, elapsed, backend_name) = value;
    let mut total = probe::ProbeSummary::default();
    for p in &probes {
        total.add(&probe::summarize(&p.analysis, &p.observed));
    }
    match args.output {
        OutputFormat::Table => {
            for p in &probes {
                // One path is the matrix as it always was; several are named.
                if probes.len() > 1 || !p.path.is_plain() {
                    writeln!(out, "── through {} ──", p.path)?;
                }
                let summary = probe::summarize(&p.analysis, &p.observed);
                write!(
                    out,
                    "{}",
                    probe::render(&p.analysis, &p.observed, &summary, use_color(), 40)
                )?;
            }
            for line in convergence_lines(&convergence, args.deadline) {
                writeln!(out, "{line}")?;
            }
            writeln!(out, "probing took {:.2} s", elapsed.as_secs_f64())?;
        }
        OutputFormat::Json => {
            if let Some(mut report) = probe::report_paths(&probes, backend_name) {
                report.convergence = Some(convergence);
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            }
        }
    }
    Ok(if total.failed() {
        ExitCode::from(EXIT_WRONG)
    } else {
        ExitCode::SUCCESS
    })
}

/// How the rounds went, and the late cells (at most 10 named).
fn convergence_lines(c: &Convergence, deadline: Duration) -> Vec<String> {
    let rounds = |n: usize| {
        if n == 1 {
            "1 round".into()
        } else {
            format!("{n} rounds")
        }
    };
    let mut lines = vec![if c.snapshot {
        "one snapshot (--snapshot): enforcement was not waited for".to_string()
    } else if c.converged {
        format!(
            "converged in {:.2} s ({})",
            c.elapsed_ms / 1e3,
            rounds(c.rounds)
        )
    } else {
        format!(
            "did not converge within {} ({}): the table is the last round",
            humantime::format_duration(deadline),
            rounds(c.rounds)
        )
    }];
    if !c.late.is_empty() {
        lines.push(format!(
            "{} cells were late: wrong at first, then as the spec says (enforcement lag, not a verdict)",
            c.late.len()
        ));
        for cell in c.late.iter().take(10) {
            lines.push(format!(
                "  {} → {} {}/{}: {}, then {} after {:.2} s",
                cell.from,
                cell.to,
                cell.port,
                cell.protocol,
                cell.first,
                cell.settled,
                cell.matched_after_ms / 1e3
            ));
        }
        if c.late.len() > 10 {
            lines.push(format!(
                "  … and {} more (-o json lists them all)",
                c.late.len() - 10
            ));
        }
    }
    lines
}
