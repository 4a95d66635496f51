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
use polygraph::run::{PathPlan, namespace_names, observe, reconcile};
use polygraph::world::World;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How long a probe waits for an answer before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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
                &namespace_names(&analysis),
            )
            .await
            .map_err(CliError::Usage)?;
            let mut probes = Vec::new();
            for path in plan.paths(&*backend, &analysis) {
                let (analysis, observed) =
                    observe(&*backend, &analysis, &plan, path, args.timeout, &pacer).await?;
                probes.push(probe::PathProbe {
                    path,
                    analysis,
                    observed,
                });
            }
            Ok((probes, started.elapsed(), backend_name))
        })?;
    let mut out = std::io::stdout().lock();
    if let Some(transcript) = transcript {
        write!(out, "{}", transcript.text())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (probes, elapsed, backend_name) = value;
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
            writeln!(out, "probing took {:.2} s", elapsed.as_secs_f64())?;
        }
        OutputFormat::Json => {
            if let Some(report) = probe::report_paths(&probes, backend_name) {
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
