//! Writing a run's reports where the flags say (`run` and `certify` alike): JUnit, JSON, HTML,
//! the Markdown summary (also appended to `$GITHUB_STEP_SUMMARY` on GitHub Actions) and the done
//! file, in that order, so the done file names reports that exist.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use super::backend_args::BackendArgs;
use super::{CliError, write_file};
use polygraph::certify::Certification;
use polygraph::report::run_json::{self, CellSelection};
use polygraph::report::{html, junit, markdown};
use polygraph::run::{RunOptions, RunResult};

/// Where each report goes; `None`: not written.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub json_cells: CellSelection,
    pub html: Option<PathBuf>,
    pub summary_md: Option<PathBuf>,
    pub done_file: Option<PathBuf>,
}

impl Outputs {
    /// The report the done file names: JUnit, else JSON.
    fn done_report(&self) -> Option<&PathBuf> {
        self.junit.as_ref().or(self.json.as_ref())
    }
}

pub fn write(
    outputs: &Outputs,
    result: &RunResult,
    certification: Option<&Certification>,
) -> Result<(), CliError> {
    if let Some(path) = &outputs.junit {
        let xml =
            junit::to_xml(result).map_err(|e| CliError::Usage(format!("JUnit report: {e}")))?;
        write_file(path, xml)?;
    }
    if let Some(path) = &outputs.json {
        let json = serde_json::to_string_pretty(&run_json::report(result, outputs.json_cells))?;
        write_file(path, json)?;
    }
    if let Some(path) = &outputs.html {
        write_file(path, html::render(result, certification))?;
    }
    if let Some(path) = &outputs.summary_md {
        write_file(
            path,
            markdown::summary(result, certification, markdown::GITHUB_LIMIT),
        )?;
    }
    step_summary(|room| markdown::summary(result, certification, room))?;
    done(outputs)
}

/// A run that failed before its first scenario (a bad kubeconfig, no root for the local cluster,
/// an API server that does not answer, RBAC): its reports still say so, so that a CI dashboard
/// never sees "no report"; then the error itself, to return.
pub fn setup_failed(
    outputs: &Outputs,
    backend: &BackendArgs,
    options: &RunOptions,
    started: Instant,
    error: CliError,
) -> CliError {
    let result = RunResult::not_started(
        format!("{:?}", backend.kind()).to_lowercase(),
        options,
        started.elapsed(),
    );
    match write_setup_failure(outputs, &result, &error.to_string()) {
        Ok(()) => error,
        Err(writing) => writing,
    }
}

/// The reports of a run that failed before its first scenario: JUnit with one `setup` test case
/// in error, JSON with `setup_error`, and the Markdown summary saying why.
fn write_setup_failure(outputs: &Outputs, result: &RunResult, error: &str) -> Result<(), CliError> {
    if let Some(path) = &outputs.junit {
        let xml = junit::setup_failure_xml(result, error)
            .map_err(|e| CliError::Usage(format!("JUnit report: {e}")))?;
        write_file(path, xml)?;
    }
    if let Some(path) = &outputs.json {
        write_file(
            path,
            serde_json::to_string_pretty(&run_json::setup_failure(result, error))?,
        )?;
    }
    let text = format!(
        "## ❌ polygraph could not start: {}\n",
        error.replace('\n', " ")
    );
    if let Some(path) = &outputs.summary_md {
        write_file(path, &text)?;
    }
    step_summary(|_| text.clone())?;
    done(outputs)
}

fn done(outputs: &Outputs) -> Result<(), CliError> {
    if let (Some(done), Some(report)) = (&outputs.done_file, outputs.done_report()) {
        write_file(done, report.display().to_string())?;
    }
    Ok(())
}

/// Appends to `$GITHUB_STEP_SUMMARY` when GitHub Actions set it: the summary is given the room
/// the file has left under GitHub's limit (other steps' tools may have written there too).
fn step_summary(summary: impl FnOnce(usize) -> String) -> Result<(), CliError> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let path = PathBuf::from(path);
    let used = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
    let room = markdown::GITHUB_LIMIT.saturating_sub(used);
    let text = summary(room);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        file.write_all(text.as_bytes())
    };
    write().map_err(|source| CliError::Write { path, source })
}
