use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::backend_args::BackendArgs;
use super::run::execute;
use super::session::Finished;
use super::{CliError, EXIT_WRONG};
use polygraph::run::precheck::{ApiVerdict, PolicyApi, checks_of};
use polygraph::run::smoke::{SmokeVerdict, overall};
use polygraph::run::{RunOptions, Status, Verdict};
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
    pace: super::pace_args::PaceArgs,
    #[command(flatten)]
    target: BackendArgs,
}

pub fn run(args: SmokeArgs) -> Result<ExitCode, CliError> {
    // One enforcement check per policy API (NetworkPolicy's first), then the DNS one (names
    // resolve only where DNS egress is allowed; unsupported where polygraph finds no cluster DNS).
    let mut scenarios = PolicyApi::ALL
        .iter()
        .map(|api| api.check())
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::Scenario)?;
    scenarios.push(library::smoke_dns().map_err(CliError::Scenario)?);
    let options = RunOptions {
        probe_timeout: args.probe_timeout,
        step_deadline: args.step_deadline,
        max_latency: None,
        stability: Duration::ZERO,
        established: false,
        pacer: args.pace.pacer()?,
        poll_interval: Duration::from_millis(250),
        targets: Vec::new(),
        families: args.target.default_families(),
        precheck: false,
        service_hairpin: Default::default(),
    };
    let Finished {
        value: result,
        transcript,
    } = execute(&scenarios, &options, &args.target, 1, true)?;
    if let Some(transcript) = transcript {
        out_inline!("{}", transcript.text())?;
        return Ok(ExitCode::SUCCESS);
    }
    let apis = checks_of(&PolicyApi::ALL, &result.scenarios);
    let dns = result.scenarios.last();
    let dns_passed = dns.is_none_or(|s| s.status() != Status::Failed);
    let verdict = overall(&apis, dns_passed);
    out!()?;
    for scenario in &result.scenarios {
        if let Some(reason) = &scenario.unsupported {
            out!("{}: not checked: {reason}", scenario.scenario.name)?;
        }
        if let Some(error) = &scenario.error {
            out!("{}: ✗ {error}", scenario.scenario.name)?;
        }
    }
    for step in result.scenarios.iter().flat_map(|s| s.steps.iter()) {
        let table = &step.expected.table;
        let pods = table.pods();
        let describe = |k: usize, from: usize, to: usize, verdict: Verdict| {
            let observed = step.observed.as_ref().and_then(|o| o.get(k, from, to));
            let decision = table.get(k, from, to);
            let spec = if decision.no_dns {
                "dns-failed"
            } else if decision.allowed() {
                "allowed"
            } else {
                "blocked"
            };
            format!(
                "{} → {}: {} (spec: {spec}){}",
                pods[from].name,
                pods[to].name,
                observed.map_or("not probed".into(), |o| o.outcome.to_string()),
                if verdict.fails() { " ✗" } else { "" }
            )
        };
        // What the policies are about: traffic from the clients to the server, on one line.
        let into_server: Vec<String> = step
            .verdicts
            .cells()
            .filter(|(_, cell, v)| {
                !cell.is_self() && **v != Verdict::NotProbed && pods[cell.to].name == "server"
            })
            .map(|(k, cell, v)| describe(k, cell.from, cell.to, *v))
            .collect();
        out!("{}: {}", step.name, into_server.join(", "))?;
        // Every other wrong cell, whatever its direction (a dropped reply shows up as a wrong
        // server → client cell).
        for (k, cell, v) in step.verdicts.cells() {
            if v.fails() && pods[cell.to].name != "server" {
                out!("  also wrong: {}", describe(k, cell.from, cell.to, *v))?;
            }
        }
    }
    out!("\npolicy APIs:")?;
    let width = apis
        .iter()
        .map(|c| c.api.to_string().len())
        .max()
        .unwrap_or(0);
    for check in &apis {
        let detail = match &check.verdict {
            ApiVerdict::Enforcing => String::new(),
            ApiVerdict::NotEnforcing => {
                ": served and accepted, but nothing it denies was blocked".into()
            }
            ApiVerdict::Partial => {
                ": some of its denies took effect, not all (see the ✗ cells)".into()
            }
            ApiVerdict::NotServed(reason) | ApiVerdict::Error(reason) => format!(": {reason}"),
        };
        let detail = match &check.crd {
            Some(crd) => format!("{detail} ({crd})"),
            None => detail,
        };
        out!(
            "  {:<width$}  {}{detail}",
            check.api.to_string(),
            check.verdict
        )?;
    }
    let not_enforced: Vec<String> = apis
        .iter()
        .filter(|c| c.verdict == ApiVerdict::NotEnforcing)
        .map(|c| c.api.to_string())
        .collect();
    let explanation = match verdict {
        SmokeVerdict::Enforcing => "every policy took effect as the spec says".to_string(),
        SmokeVerdict::NotEnforcing => {
            "policies were accepted, but nothing they deny was ever blocked: nothing enforces them here".into()
        }
        SmokeVerdict::Partial if !not_enforced.is_empty() => format!(
            "accepted but not enforced: {} (the other APIs served are enforced, wholly or in part)",
            not_enforced.join(", ")
        ),
        SmokeVerdict::Partial if !dns_passed => {
            "policies took effect, but the DNS check failed (see the ✗ cells)".into()
        }
        SmokeVerdict::Partial => "some policies took effect, others not (see the ✗ cells)".into(),
    };
    out!(
        "\n{verdict}: {explanation} ({:.1} s, {})",
        result.elapsed.as_secs_f64(),
        result.backend
    )?;
    Ok(if verdict == SmokeVerdict::Enforcing {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WRONG)
    })
}
