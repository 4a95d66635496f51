use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;

use super::CliError;
use polygraph::scenario::library;

#[derive(Debug, Subcommand)]
pub enum ScenariosCommand {
    /// The built-in library: name, tags, steps, description.
    List,
    /// Print a built-in scenario's YAML.
    Show { name: String },
    /// Load and check scenario files (or built-in names) without deploying anything: every action,
    /// policy and pinned expectation. A lint for CI.
    Check {
        #[arg(required = true)]
        scenarios: Vec<String>,
    },
}

pub fn run(command: ScenariosCommand) -> Result<ExitCode, CliError> {
    match command {
        ScenariosCommand::List => {
            let scenarios = library::load_all().map_err(CliError::Scenario)?;
            let mut table = Table::new();
            table.load_style(UTF8_FULL_CONDENSED);
            table.set_header(vec!["name", "tags", "steps", "description"]);
            for s in &scenarios {
                table.add_row(vec![
                    s.name.clone(),
                    s.tags.join(", "),
                    s.steps.len().to_string(),
                    s.description.clone(),
                ]);
            }
            out!("{table}")?;
            out!("{} built-in scenarios", scenarios.len())?;
        }
        ScenariosCommand::Check { scenarios } => {
            for scenario in super::run::load(&scenarios)? {
                let pinned = scenario.steps.iter().filter(|s| s.pinned).count();
                out!(
                    "ok {} ({}): {} steps, {pinned} with pinned expectations that agree with the spec",
                    scenario.name,
                    scenario.source,
                    scenario.steps.len()
                )?;
            }
        }
        ScenariosCommand::Show { name } => {
            let text = library::text(&name).ok_or_else(|| {
                CliError::Usage(format!(
                    "no built-in scenario {name:?} (polygraph scenarios list)"
                ))
            })?;
            out_inline!("{text}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
