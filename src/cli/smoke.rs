use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::backend_args::BackendArgs;
use super::run::execute;
use super::{CliError, EXIT_WRONG};
use polygraph::backend::kube::dry_run;
use polygraph::run::scenarios::{RunOptions, Verdict};
use polygraph::run::smoke::{SmokeVerdict, classify};
use polygraph::scenario::library;

#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// How long a probe waits before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// How long each step may take to take effect.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    step_deadline: Duration,
    #[command(flatten)]
    target: BackendArgs,
}

pub fn run(args: SmokeArgs) -> Result<ExitCode, CliError> {
    let scenario = library::smoke().map_err(CliError::Scenario)?;
    if args.target.dry_run {
        let text = dry_run::scenarios(
            std::slice::from_ref(&scenario),
            &args.target.options()?,
            &args.target.names()?,
        )
        .map_err(CliError::Usage)?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let options = RunOptions {
        probe_timeout: args.probe_timeout,
        step_deadline: args.step_deadline,
        max_latency: None,
        stability: Duration::ZERO,
        established: false,
        parallelism: 8,
        poll_interval: Duration::from_millis(250),
    };
    let result = execute(
        std::slice::from_ref(&scenario),
        &options,
        &args.target,
        true,
    )?;
    let verdict = classify(&result);
    println!();
    for step in result.scenarios.iter().flat_map(|s| s.steps.iter()) {
        let table = &step.expected.table;
        let mut seen = Vec::new();
        for (k, cell, v) in step.verdicts.cells() {
            let pods = table.pods();
            // What the policies are about: traffic from the clients to the server.
            if cell.is_self() || matches!(v, Verdict::NotProbed) || pods[cell.to].name != "server" {
                continue;
            }
            let observed = step
                .observed
                .as_ref()
                .and_then(|o| o.get(k, cell.from, cell.to));
            let spec = if table.get(k, cell.from, cell.to).allowed() {
                "allowed"
            } else {
                "blocked"
            };
            seen.push(format!(
                "{} → {}: {} (spec: {spec}){}",
                pods[cell.from].name,
                pods[cell.to].name,
                observed.map_or("not probed".into(), |o| o.outcome.to_string()),
                if v.fails() { " ✗" } else { "" }
            ));
        }
        println!("{}: {}", step.name, seen.join(", "));
    }
    let explanation = match verdict {
        SmokeVerdict::Enforcing => "every policy took effect as the spec says",
        SmokeVerdict::NotEnforcing => {
            "policies were accepted, but nothing they deny was ever blocked: nothing enforces NetworkPolicy here"
        }
        SmokeVerdict::Partial => "some policies took effect, others not (see the ✗ cells)",
    };
    println!(
        "\n{verdict}: {explanation} ({:.1} s, {})",
        result.elapsed.as_secs_f64(),
        result.backend
    );
    Ok(if verdict == SmokeVerdict::Enforcing {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WRONG)
    })
}
