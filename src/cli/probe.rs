use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::backend_args::BackendArgs;
use super::model_args::ModelArgs;
use super::session::{Finished, session};
use super::{CliError, EXIT_WRONG, OutputFormat, use_color};
use polygraph::backend::Backend;
use polygraph::report::probe;
use polygraph::run::{observe, reconcile};
use polygraph::world::World;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// How long a probe waits for an answer before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How many source pods probe at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    #[command(flatten)]
    target: BackendArgs,
}

pub fn run(args: ProbeArgs) -> Result<ExitCode, CliError> {
    if args.timeout.is_zero() {
        return Err(CliError::Usage("--timeout must be more than zero".into()));
    }
    let cluster = args.model.cluster()?;
    let analysis = args.model.analysis(cluster)?;
    let world = World::with_policies(&analysis.cluster, &analysis.policy_set())?;
    let table = args.output == OutputFormat::Table && !args.target.dry_run;
    let Finished { value, transcript } = session(args.target.start(), async |backend| {
        let backend_name = backend.describe();
        if table {
            out!("backend: {backend_name}")?;
        }
        reconcile(backend, &World::empty(), &world).await?;
        let started = Instant::now();
        // Probed and judged where the cluster put the pods, not where the model planned them.
        let (real, observed) = observe(&*backend, &analysis, args.timeout, args.parallel).await?;
        Ok((real, observed, started.elapsed(), backend_name))
    })?;
    let mut out = std::io::stdout().lock();
    if let Some(transcript) = transcript {
        write!(out, "{}", transcript.text())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (analysis, observed, elapsed, backend_name) = value;
    let summary = probe::summarize(&analysis, &observed);
    match args.output {
        OutputFormat::Table => {
            write!(
                out,
                "{}",
                probe::render(&analysis, &observed, &summary, use_color(), 40)
            )?;
            writeln!(out, "probing took {:.2} s", elapsed.as_secs_f64())?;
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(
                &mut out,
                &probe::report(&analysis, &observed, backend_name),
            )?;
            writeln!(out)?;
        }
    }
    Ok(if summary.failed() {
        ExitCode::from(EXIT_WRONG)
    } else {
        ExitCode::SUCCESS
    })
}
