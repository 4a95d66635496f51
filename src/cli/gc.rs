use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CliError;
use polygraph::backend::kube::{Connection, gc as kube_gc};
use polygraph::backend::local::gc as local_gc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GcBackend {
    /// Network namespaces and agents left by killed local runs.
    Local,
    /// Namespaces labelled app.kubernetes.io/managed-by=polygraph on the cluster.
    Kube,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[arg(long, value_enum, default_value = "local")]
    backend: GcBackend,
    /// Kubernetes: only namespaces at least this old. Namespaces of live runs (a heartbeat renewed
    /// in the last 3 minutes) are always kept, whatever their age.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Kubernetes: only this run's namespaces and cluster-scoped objects, whatever their
    /// heartbeat (a run whose clean-up gave up prints this command; name only a run that is over).
    #[arg(long, value_name = "RUN_ID")]
    run: Option<String>,
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    #[arg(long)]
    context: Option<String>,
}

/// Removes what killed runs left behind.
pub fn run(args: GcArgs) -> Result<ExitCode, CliError> {
    match args.backend {
        GcBackend::Local if args.run.is_some() => Err(CliError::Usage(
            "--run names a Kubernetes run: use it with --backend kube".into(),
        )),
        GcBackend::Local => local(),
        GcBackend::Kube => {
            let connection = Connection {
                kubeconfig: args.kubeconfig,
                context: args.context,
            };
            let report = super::runtime()?.block_on(async {
                let (client, _) = connection.client().await?;
                kube_gc(client, args.older_than, args.run.as_deref()).await
            })?;
            for (name, why) in &report.kept {
                out!("kept namespace {name}: {why}")?;
            }
            for name in &report.removed {
                out!("deleted namespace {name}")?;
            }
            if report.removed.is_empty() {
                out!("nothing to clean up")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn local() -> Result<ExitCode, CliError> {
    let report = local_gc()?;
    for (netns, pid) in &report.live {
        out!("kept {netns}: its run is still going (polygraph PID {pid})")?;
    }
    for netns in &report.removed {
        out!("removed network namespace {netns}")?;
    }
    if !report.killed.is_empty() {
        out!("stopped {} leftover agent processes", report.killed.len())?;
    }
    if report.removed.is_empty() {
        out!("nothing to clean up")?;
    }
    Ok(ExitCode::SUCCESS)
}
