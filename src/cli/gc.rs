use std::process::ExitCode;

use super::CliError;
use polygraph::backend::local::gc;

/// Removes what killed local runs left: their network namespaces and the agents inside.
pub fn run() -> Result<ExitCode, CliError> {
    let report = gc()?;
    for (netns, pid) in &report.live {
        println!("kept {netns}: its run is still going (polygraph PID {pid})");
    }
    for netns in &report.removed {
        println!("removed network namespace {netns}");
    }
    if !report.killed.is_empty() {
        println!("stopped {} leftover agent processes", report.killed.len());
    }
    if report.removed.is_empty() {
        println!("nothing to clean up");
    }
    Ok(ExitCode::SUCCESS)
}
