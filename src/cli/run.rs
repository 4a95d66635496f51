use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::backend_args::{BackendArgs, BackendKind};
use super::reports::{self, Outputs};
use super::session::{Finished, session_many};
use super::{CliError, EXIT_WRONG, use_color};
use polygraph::backend::{AnyBackend, Backend};
use polygraph::faults;
use polygraph::model::ProbeTarget;
use polygraph::report::run_json::CellSelection;
use polygraph::report::run_terminal;
use polygraph::run::parallel::lanes_description;
use polygraph::run::{Event, RunOptions, RunResult, run_in_parallel};
use polygraph::scenario::{self, Scenario, library};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario files or built-in scenario names (default: the whole built-in library).
    scenarios: Vec<String>,
    /// Only scenarios with one of these tags.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Leave out scenarios with any of these tags.
    #[arg(long, value_delimiter = ',')]
    exclude_tags: Vec<String>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the full JSON result here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Which cells the JSON lists: all (the default), notable (failing, late, flapping, errors, cut
    /// connections) or none; counts and timing always cover every cell.
    #[arg(long, value_enum, default_value = "all")]
    json_cells: CellSelection,
    /// Write a self-contained HTML report here (no script, nothing fetched).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write a GitHub-flavoured Markdown summary here (under GitHub's 1024 KiB step-summary
    /// limit); on GitHub Actions it is also appended to $GITHUB_STEP_SUMMARY.
    #[arg(long, value_name = "FILE")]
    summary_md: Option<PathBuf>,
    /// After the reports are written, write the JUnit (or JSON) report's path here: Sonobuoy's
    /// `done` file protocol.
    #[arg(long, value_name = "FILE")]
    done_file: Option<PathBuf>,
    /// How long a probe waits before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// How long a step may take to converge before unmatched cells fail.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_deadline: Duration,
    /// Fail cells that matched the spec only after this long (late denies and late allows);
    /// without it, late cells are reported but never fail the run.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    max_latency: Option<Duration>,
    /// After a step converges, keep probing this long and fail cells that change (flapping).
    #[arg(long, default_value = "0s", value_name = "DUR", value_parser = humantime::parse_duration)]
    stability: Duration,
    /// The least time between the starts of two probe rounds while a step converges.
    #[arg(long, default_value = "250ms", value_name = "DUR", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Don't hold connections open across allow→deny steps (by default polygraph reports whether a
    /// deny cuts connections established before it).
    #[arg(long)]
    skip_established: bool,
    /// Print the faults `--inject` can imitate in the local dataplane, one per line, and exit.
    #[arg(long)]
    list_faults: bool,
    #[command(flatten)]
    pace: super::pace_args::PaceArgs,
    /// How many scenarios run at once, each lane on a cluster of its own (locally) or a namespace
    /// set of its own (on Kubernetes). Default: locally, two lanes per core up to 4 (probing
    /// mostly waits on deadlines, and lanes share nothing); elsewhere 1.
    #[arg(long, value_name = "N")]
    parallel_scenarios: Option<usize>,
    /// How probes reach their destinations, for every scenario (overriding their `target:`):
    /// `pod-ip`, `service` (each pod's own Service's ClusterIP, DNATed to it), `service-name` (that
    /// Service's name, through the cluster's DNS), `node-port` (from a host outside the cluster) or `external` (to a server outside it); several with commas.
    #[arg(long = "target", value_enum, value_delimiter = ',')]
    targets: Vec<ProbeTarget>,
    /// Before the scenarios, check each policy API they use (the checks of `polygraph smoke`);
    /// the scenarios of an API that is accepted but not enforced then fail at once with that
    /// reason. The default on Kubernetes; on the local and simulated clusters (polygraph's own
    /// dataplane) only when asked.
    #[arg(long, conflicts_with = "no_precheck")]
    precheck: bool,
    /// Run every scenario whatever the policy APIs' checks would say (and don't check them).
    #[arg(long)]
    no_precheck: bool,
    /// The hairpin rule this cluster declares for a pod's traffic to its own Service: `policy`
    /// (subject to cluster policies, as the spec says) or `exempt` (a socket-level load
    /// balancer, which no dataplane sees: never judged). The report says which was used.
    #[arg(long, value_enum, default_value = "policy")]
    service_hairpin: polygraph::model::ServiceHairpin,
    /// A line for every step even on a terminal.
    #[arg(short, long)]
    verbose: bool,
    /// Run the generated suite (`polygraph generate`'s cases, without writing them) instead of
    /// scenario files: `--seed`, `--count`, `--shard` and `--case` choose which cases.
    #[arg(long, conflicts_with = "scenarios")]
    generated: bool,
    #[command(flatten)]
    selection: super::generated::Selection,
    #[command(flatten)]
    target: BackendArgs,
}

/// Files by path, everything else by built-in name. All are checked before anything is deployed.
pub fn load(names: &[String]) -> Result<Vec<Scenario>, CliError> {
    if names.is_empty() {
        return library::load_all().map_err(CliError::Scenario);
    }
    names
        .iter()
        .map(|name| {
            let path = Path::new(name);
            if path.exists() {
                scenario::load_file(path).map_err(CliError::Scenario)
            } else if let Some(text) = library::text(name) {
                scenario::parse(&format!("built-in:{name}"), text, None).map_err(CliError::Scenario)
            } else {
                Err(CliError::Usage(format!(
                    "{name}: no such file, and no built-in scenario has that name (polygraph scenarios list)"
                )))
            }
        })
        .collect()
}

pub fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    if args.list_faults {
        // Names in a column as wide as the longest, two spaces after it.
        let width = faults::CATALOGUE
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0)
            + 2;
        for fault in faults::CATALOGUE {
            if fault.provenance.is_empty() {
                out!("{:<width$}{}", fault.name, fault.imitates)?;
            } else {
                out!(
                    "{:<width$}{} [shipped: {}]",
                    fault.name,
                    fault.imitates,
                    fault.provenance
                )?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut scenarios = if args.generated {
        args.selection.scenarios()?
    } else if args.selection.given() {
        return Err(CliError::Usage(
            "--seed, --count, --shard and --case choose generated cases: give --generated too"
                .into(),
        ));
    } else {
        load(&args.scenarios)?
    };
    let wanted: BTreeSet<&str> = args.tags.iter().map(String::as_str).collect();
    let unwanted: BTreeSet<&str> = args.exclude_tags.iter().map(String::as_str).collect();
    scenarios.retain(|s| {
        let tags: BTreeSet<&str> = s.tags.iter().map(String::as_str).collect();
        (wanted.is_empty() || !wanted.is_disjoint(&tags)) && unwanted.is_disjoint(&tags)
    });
    if scenarios.is_empty() {
        return Err(CliError::Usage(
            "no scenario left to run after --tags/--exclude-tags".into(),
        ));
    }
    if args.probe_timeout.is_zero() {
        return Err(CliError::Usage(
            "--probe-timeout must be more than zero".into(),
        ));
    }
    let outputs = Outputs {
        junit: args.junit.clone(),
        json: args.json.clone(),
        json_cells: args.json_cells,
        html: args.html.clone(),
        summary_md: args.summary_md.clone(),
        done_file: args.done_file.clone(),
    };
    if args.done_file.is_some() && args.junit.is_none() && args.json.is_none() {
        return Err(CliError::Usage(
            "--done-file names the report: give --junit or --json too".into(),
        ));
    }
    let options = RunOptions {
        probe_timeout: args.probe_timeout,
        step_deadline: args.step_deadline,
        max_latency: args.max_latency,
        stability: args.stability,
        established: !args.skip_established,
        pacer: args.pace.pacer()?,
        poll_interval: args.poll_interval,
        targets: args.targets.clone(),
        families: args.target.default_families(),
        precheck: !args.no_precheck
            && (args.precheck || (args.target.kind() == BackendKind::Kube && !args.target.dry_run)),
        service_hairpin: args.service_hairpin,
    };
    let color = use_color();
    let lanes = lanes(args.parallel_scenarios, &args.target)?;
    let started = std::time::Instant::now();
    let Finished {
        value: result,
        transcript,
    } = execute(&scenarios, &options, &args.target, lanes, args.verbose)
        .map_err(|error| reports::setup_failed(&outputs, &args.target, &options, started, error))?;
    let mut out = std::io::stdout().lock();
    if let Some(transcript) = transcript {
        write!(out, "{}", transcript.text())?;
        return Ok(ExitCode::SUCCESS);
    }
    // Reports first: they must exist even when the terminal's reader went away.
    reports::write(&outputs, &result, None)?;
    write!(out, "{}", run_terminal::render(&result, color))?;
    for rerun in super::generated::reruns(&result) {
        writeln!(out, "rerun: {rerun}")?;
    }
    Ok(if result.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WRONG)
    })
}

/// How many lanes `--parallel-scenarios` asks for, or the default: on the local backend two per
/// core up to 4 (a lane is a cluster of namespaces whose probes mostly wait on deadlines), and
/// one elsewhere (a dry run's transcript is one sequence of calls; a Kubernetes cluster is not
/// ours to load without being asked).
pub fn lanes(asked: Option<usize>, target: &BackendArgs) -> Result<usize, CliError> {
    match asked {
        Some(0) => Err(CliError::Usage(
            "--parallel-scenarios must be at least 1".into(),
        )),
        Some(n) if n > 1 && target.dry_run => Err(CliError::Usage(
            "--dry-run records one sequence of calls: --parallel-scenarios must be 1".into(),
        )),
        Some(n) => Ok(n),
        None if target.kind() == BackendKind::Local && !target.dry_run => {
            Ok((2 * std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, 4))
        }
        None => Ok(1),
    }
}

/// Runs the scenarios in a session (the backends started, cleaned up whatever happens, Ctrl-C
/// included) on `lanes` backends at once, with progress: a bar on stderr on a terminal, a line
/// per step otherwise (lanes' lines interleave; the report keeps the library's order). A dry run
/// prints nothing but its transcript, which it annotates with each scenario and step.
pub fn execute(
    scenarios: &[Scenario],
    options: &RunOptions,
    target: &BackendArgs,
    lanes: usize,
    verbose: bool,
) -> Result<Finished<RunResult>, CliError> {
    let steps: usize = scenarios.iter().map(|s| s.steps.len()).sum();
    let services = options.targets.iter().any(|t| t.needs_services())
        || (options.targets.is_empty()
            && scenarios
                .iter()
                .flat_map(|s| &s.targets)
                .any(|t| t.needs_services()));
    let lanes = lanes.clamp(1, scenarios.len().max(1));
    // Every family some scenario is about, so polygraph's own clusters can give pods them all.
    let named = polygraph::scenario::named_families(scenarios);
    let starts = (0..lanes)
        .map(|_| target.start_with(services, named))
        .collect();
    session_many(starts, async |backends: &mut [AnyBackend]| {
        let transcript = backends.first().and_then(|b| b.transcript());
        if transcript.is_none() {
            let described =
                lanes_description(&backends.iter().map(|b| b.describe()).collect::<Vec<_>>());
            out!(
                "backend: {described} — {} scenarios, {steps} steps",
                scenarios.len()
            )?;
            out!(
                "pace: {}; {} sources at once",
                options.pacer.options().describe(),
                options.pacer.sources()
            )?;
        }
        let bar = (transcript.is_none() && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let mut on_event = |event: Event<'_>| match (event, &transcript) {
            (Event::ScenarioStarted { scenario }, Some(t)) => {
                t.comment(&format!("scenario {} ({})", scenario.name, scenario.source));
                t.comment("reset: from the cluster as it stands to the scenario's starting state");
            }
            (Event::StepStarted { scenario, index }, Some(t)) => {
                let step = &scenario.steps[index];
                t.comment(&format!(
                    "step {}: {} ({})",
                    index + 1,
                    step.name,
                    step.origin
                ));
                if step.action.mutations().is_empty() {
                    t.comment("changes nothing");
                }
            }
            (Event::TearingDown, Some(t)) => {
                t.comment("end of the run: back to nothing");
            }
            (Event::ScenarioFinished { result }, Some(t)) => {
                if let Some(reason) = &result.unsupported {
                    t.comment(&format!("unsupported, not run: {reason}"));
                }
            }
            (Event::ScenarioStarted { scenario }, None) => {
                if let Some(bar) = &bar {
                    bar.set_message(scenario.name.clone());
                }
            }
            (Event::StepFinished { scenario, step }, None) => {
                let line = run_terminal::step_line(scenario, step);
                match &bar {
                    Some(bar) => {
                        bar.inc(1);
                        if verbose || !step.passed() {
                            bar.println(line);
                        }
                    }
                    None => {
                        let _ = out!("{line}");
                    }
                }
            }
            _ => {}
        };
        let result = run_in_parallel(backends, scenarios, options, &mut on_event).await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        Ok(result)
    })
}
