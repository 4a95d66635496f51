//! `polygraph diff OLD.json NEW.json`: what changed between two runs (`report::diff`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{CliError, EXIT_WRONG};
use polygraph::report::diff::{self, RunDoc};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier run's JSON report (`run --json`, or certify's run.json).
    old: PathBuf,
    /// The later run's.
    new: PathBuf,
    /// How to print the differences.
    #[arg(long, value_enum, default_value = "table")]
    format: DiffFormat,
    /// Report a step's slowest cell (per kind of change) when it moved by more than this.
    #[arg(long, default_value = "500ms", value_name = "DUR", value_parser = humantime::parse_duration)]
    latency_threshold: std::time::Duration,
    /// Exit 1 when latency got slower beyond the threshold too (by default only verdicts that
    /// regressed do: timing varies between runs of the same cluster).
    #[arg(long)]
    fail_on_latency: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiffFormat {
    Table,
    Json,
    Markdown,
}

fn read(path: &Path) -> Result<RunDoc, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{}: not a polygraph run report (line {}, column {}): {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

pub fn run(args: DiffArgs) -> Result<ExitCode, CliError> {
    let (old, new) = (read(&args.old)?, read(&args.new)?);
    let d = diff::diff(&old, &new, args.latency_threshold.as_secs_f64() * 1e3);
    match args.format {
        DiffFormat::Table => out_inline!("{}", diff::render_text(&d))?,
        DiffFormat::Markdown => out_inline!("{}", diff::render_markdown(&d))?,
        DiffFormat::Json => out!("{}", serde_json::to_string_pretty(&d)?)?,
    }
    Ok(if d.regressed() || (args.fail_on_latency && d.slower()) {
        ExitCode::from(EXIT_WRONG)
    } else {
        ExitCode::SUCCESS
    })
}
