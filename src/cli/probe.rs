use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::backend_args::BackendArgs;
use super::model_args::ModelArgs;
use super::{CliError, EXIT_WRONG, OutputFormat, use_color};
use polygraph::backend::Backend;
use polygraph::backend::kube::dry_run;
use polygraph::report::probe;
use polygraph::run::{apply_policies, deploy, probe_matrix};

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
    if args.target.dry_run {
        let text = dry_run::probe(&analysis, &args.target.options()?, &args.target.names()?)
            .map_err(CliError::Usage)?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (observed, elapsed, backend_name) = runtime.block_on(async {
        let mut backend = args.target.start().await?;
        let backend_name = backend.describe();
        if args.output == OutputFormat::Table {
            println!("backend: {backend_name}");
        }
        let work = async {
            deploy(&mut backend, &analysis.cluster).await?;
            apply_policies(&mut backend, &analysis.policies).await?;
            let started = Instant::now();
            let observed = probe_matrix(
                &backend,
                &analysis.cluster,
                analysis.table.port_protocols(),
                args.timeout,
                args.parallel,
            )
            .await?;
            Ok::<_, CliError>((observed, started.elapsed()))
        };
        // Whatever happens (done, failed, interrupted), the cluster goes away before we return.
        let outcome = tokio::select! {
            result = work => result,
            signal = super::shutdown_signal() => Err(CliError::Interrupted(signal)),
        };
        backend.cleanup().await?;
        outcome.map(|(observed, elapsed)| (observed, elapsed, backend_name))
    })?;

    let summary = probe::summarize(&analysis, &observed);
    let mut out = std::io::stdout().lock();
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
