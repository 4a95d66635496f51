//! The command line: parse, call the library, print. No logic of its own.

mod analyze;
mod bench;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for usage, input and setup errors (1 is reserved for "the cluster is wrong").
pub const EXIT_USAGE: u8 = 2;

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
    /// Measure polygraph's own speed.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::Bench(command) => bench::run(command),
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
