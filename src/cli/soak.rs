//! `bench soak`: the library again and again on a dataplane known to be correct, each run on a
//! fresh cluster, counting false verdicts (`run::soak::departures`) per run. With `--inject
//! loss=P%` it shows whether the probing design stays right on a lossy network.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::backend_args::BackendArgs;
use super::session::session_many;
use super::{CliError, EXIT_WRONG};
use polygraph::backend::AnyBackend;
use polygraph::run::soak::departures;
use polygraph::run::{RunOptions, run_in_parallel};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Scenario files or built-in scenario names (default: the whole built-in library).
    scenarios: Vec<String>,
    /// How many runs, each on a fresh cluster.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// How many scenarios run at once, each lane on a cluster of its own (as `run`'s default).
    #[arg(long, value_name = "N")]
    parallel_scenarios: Option<usize>,
    /// How long a probe waits before it counts as dropped (the upper bound of the deadlines).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// Where the runs go (`--inject` takes only `loss=P%` here: anything else is meant to be
    /// caught, and its verdicts are not false).
    #[command(flatten)]
    pace: super::pace_args::PaceArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Departures printed per run; the count is always complete.
const SHOWN: usize = 10;

pub fn soak(args: SoakArgs) -> Result<ExitCode, CliError> {
    if args.runs == 0 || args.probe_timeout.is_zero() {
        return Err(CliError::Usage(
            "--runs and --probe-timeout must be more than zero".into(),
        ));
    }
    if args.backend.dry_run {
        return Err(CliError::Usage(
            "--dry-run sends no probe: bench soak needs a cluster".into(),
        ));
    }
    let faults = args.backend.faults()?;
    if faults.breaks_policies() {
        return Err(CliError::Usage(format!(
            "bench soak counts false verdicts on a correct dataplane; --inject {faults} breaks it on purpose (only loss=P% is allowed here)"
        )));
    }
    let scenarios = super::run::load(&args.scenarios)?;
    let services = scenarios
        .iter()
        .flat_map(|s| &s.targets)
        .any(|t| t.needs_services());
    let options = RunOptions {
        probe_timeout: args.probe_timeout,
        pacer: args.pace.pacer()?,
        families: args.backend.default_families(),
        ..RunOptions::default()
    };
    let named = polygraph::scenario::named_families(&scenarios);
    let lanes =
        super::run::lanes(args.parallel_scenarios, &args.backend)?.clamp(1, scenarios.len().max(1));
    let mut total = 0;
    for run in 1..=args.runs {
        let started = Instant::now();
        let starts = (0..lanes)
            .map(|_| args.backend.start_with(services, named))
            .collect();
        let finished = session_many(starts, async |backends: &mut [AnyBackend]| {
            Ok(run_in_parallel(backends, &scenarios, &options, &mut |_| {}).await)
        })?;
        let result = finished.value;
        let description = result.backend.clone();
        let found = departures(&result);
        total += found.len();
        let steps: Vec<_> = result.scenarios.iter().flat_map(|s| &s.steps).collect();
        let judged: usize = steps
            .iter()
            .map(|s| s.verdicts.values().iter().filter(|v| v.judged()).count())
            .sum();
        let attempts = steps.iter().map(|s| s.attempts).max().unwrap_or(0);
        let passed = result.scenarios.iter().filter(|s| s.passed()).count();
        out!(
            "run {run}/{}: {} false verdicts; {} scenarios ({passed} passed), {} step results, {judged} cells judged, attempts up to {attempts}, {:.1} s on {description}",
            args.runs,
            found.len(),
            result.scenarios.len(),
            steps.len(),
            started.elapsed().as_secs_f64(),
        )?;
        for departure in found.iter().take(SHOWN) {
            out!("  ✗ {departure}")?;
        }
        if found.len() > SHOWN {
            out!("  … and {} more", found.len() - SHOWN)?;
        }
    }
    let injected = if faults.is_empty() {
        "nothing injected".to_string()
    } else {
        format!("injected: {faults}")
    };
    out!(
        "soak: {total} false verdicts over {} runs ({injected})",
        args.runs
    )?;
    Ok(if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WRONG)
    })
}
