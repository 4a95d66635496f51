//! The command line: parse, call the library, print. No logic of its own.

/// `println!` that returns the write error instead of panicking, so a closed stdout
/// (`polygraph ... | head`) ends the command quietly (see `CliError::is_closed_stdout`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err($crate::cli::CliError::Output)
    }};
}

/// `print!` that returns the write error instead of panicking.
macro_rules! out_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*).map_err($crate::cli::CliError::Output)
    }};
}

mod analyze;
mod backend_args;
mod bench;
mod certify;
mod diff;
mod enforcer;
mod gc;
mod generated;
mod model_args;
mod pace_args;
mod probe;
mod reports;
pub mod run;
mod scenarios;
mod session;
mod smoke;
mod soak;

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
    /// Certify a cluster against conformance profiles (NetworkPolicy, ClusterNetworkPolicy,
    /// Timing): a conformance report, HTML, a Markdown summary, JUnit and JSON in one directory.
    Certify(certify::CertifyArgs),
    /// What changed between two runs' JSON reports (a CNI upgrade): verdicts that regressed or
    /// were fixed, cells, latency; exit 1 on a regression.
    Diff(diff::DiffArgs),
    /// Does this cluster enforce NetworkPolicy at all? ENFORCING, NOT ENFORCING or PARTIAL, in seconds.
    Smoke(smoke::SmokeArgs),
    /// The built-in scenario library.
    #[command(subcommand)]
    Scenarios(scenarios::ScenariosCommand),
    /// Write generated scenarios (the spec's combinations, drawn from a seed) as files; `run
    /// --generated` runs the same cases without writing them.
    Generate(generated::GenerateArgs),
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
    #[error("writing output")]
    Output(#[from] std::io::Error),
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Backend(#[from] polygraph::backend::BackendError),
    #[error(transparent)]
    Scenario(polygraph::scenario::ScenarioError),
    #[error(transparent)]
    World(#[from] polygraph::world::WorldError),
    #[error("interrupted by {signal}: {cleanup}")]
    Interrupted {
        signal: &'static str,
        /// What the backend's clean-up did, in its own words.
        cleanup: String,
    },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Interrupted { .. } => EXIT_INTERRUPTED,
            _ => EXIT_USAGE,
        }
    }

    /// Whether the error is only that whoever read stdout went away (`polygraph ... | head`):
    /// nothing is wrong, and the command ends quietly.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// An error and its causes on one line: `what was being done: why: ...`.
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    polygraph::input::one_line(&line)
}

/// Writes a report file, naming it if that fails.
fn write_file(path: &std::path::Path, contents: impl AsRef<[u8]>) -> Result<(), CliError> {
    std::fs::write(path, contents).map_err(|source| CliError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Run(args) => run::run(args),
        Command::Certify(args) => certify::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Scenarios(command) => scenarios::run(command),
        Command::Generate(args) => generated::generate(args),
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
