//! The command line: parse, call the library, print. No logic of its own.

mod analyze;
mod backend_args;
mod bench;
mod gc;
mod model_args;
mod probe;
pub mod run;
mod scenarios;
mod smoke;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code when the cluster does not do what the spec says.
pub const EXIT_WRONG: u8 = 1;
/// Exit code for usage, input and setup errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after SIGINT/SIGTERM, as shells report it (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "polygraph",
    version,
    about = "Tells the truth about Kubernetes NetworkPolicy enforcement"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline truth tables: what the NetworkPolicy spec allows, cell by cell, and why.
    Analyze(analyze::AnalyzeArgs),
    /// Real packets: build the cluster, apply the policies, probe every cell, compare with the spec.
    Probe(probe::ProbeArgs),
    /// Run scenarios (default: the built-in library) and report verdicts, JUnit and JSON.
    Run(run::RunArgs),
    /// Does this cluster enforce NetworkPolicy at all? ENFORCING, NOT ENFORCING or PARTIAL, in seconds.
    Smoke(smoke::SmokeArgs),
    /// The built-in scenario library.
    #[command(subcommand)]
    Scenarios(scenarios::ScenariosCommand),
    /// Remove what killed runs left behind (local network namespaces and agents, or namespaces on a cluster).
    Gc(gc::GcArgs),
    /// Measure polygraph's own speed.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The probe agent, as the local backend runs it inside each pod's network namespace.
    #[command(hide = true)]
    Agent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// What went wrong, on one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Policy(#[from] polygraph::policy::PolicyError),
    #[error(transparent)]
    Model(#[from] polygraph::model::ModelError),
    #[error("{0}")]
    Usage(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Backend(#[from] polygraph::backend::BackendError),
    #[error(transparent)]
    Scenario(polygraph::scenario::ScenarioError),
    #[error("interrupted by {0}: the local cluster was removed")]
    Interrupted(&'static str),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Interrupted(_) => EXIT_INTERRUPTED,
            _ => EXIT_USAGE,
        }
    }
}

/// Resolves when the process is asked to stop; names the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Run(args) => run::run(args),
        Command::Scenarios(command) => scenarios::run(command),
        Command::Smoke(args) => smoke::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Agent { args } => Ok(polygraph_agent::cli::run(
            std::iter::once(std::ffi::OsString::from("polygraph agent")).chain(args),
        )),
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}
