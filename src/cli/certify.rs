//! `polygraph certify`: the profiles' scenarios run like `polygraph run`, judged by the profiles,
//! and every report written into one directory: the conformance report (YAML), the HTML page,
//! the Markdown summary, JUnit and the run JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::backend_args::{BackendArgs, BackendKind};
use super::reports::{self, Outputs};
use super::session::Finished;
use super::{CliError, EXIT_WRONG, use_color, write_file};
use polygraph::certify::report::{self as conformance, Context, Implementation};
use polygraph::certify::{self, Bounds, Certification, ProfileName};
use polygraph::report::run_json::CellSelection;
use polygraph::report::run_terminal;
use polygraph::run::RunOptions;
use polygraph::scenario::library;

/// The files a certification writes, by name in `--output-dir`.
pub const REPORT_FILE: &str = "conformance-report.yaml";
pub const HTML_FILE: &str = "report.html";
pub const SUMMARY_FILE: &str = "summary.md";
pub const JUNIT_FILE: &str = "junit.xml";
pub const JSON_FILE: &str = "run.json";

#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The profiles to certify (default: all): NetworkPolicy, ClusterNetworkPolicy, Timing.
    #[arg(long = "profile", value_enum, value_delimiter = ',')]
    profiles: Vec<ProfileName>,
    /// Who is certified: a YAML file with organization, project, url, version, contact (a list)
    /// and additionalInformation.
    #[arg(long, value_name = "FILE")]
    implementation: Option<PathBuf>,
    /// How the implementation was set up, as the report's `mode` (e.g. `ebpf`, `iptables`).
    #[arg(long, default_value = "default")]
    mode: String,
    /// Where the reports go (created if missing).
    #[arg(long, value_name = "DIR", default_value = "polygraph-certification")]
    output_dir: PathBuf,
    /// The Timing profile's bound: a cell a change affects must match the spec within this long.
    #[arg(long, default_value = "5s", value_name = "DUR", value_parser = humantime::parse_duration)]
    max_latency: Duration,
    /// After a step converges, keep probing this long: a cell that changes fails Timing's
    /// Stability (0s: not judged, reported skipped).
    #[arg(long, default_value = "1s", value_name = "DUR", value_parser = humantime::parse_duration)]
    stability: Duration,
    /// How long a probe waits before it counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// How long a step may take to converge before unmatched cells fail.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_deadline: Duration,
    #[command(flatten)]
    pace: super::pace_args::PaceArgs,
    /// How many scenarios run at once (as `polygraph run`; on the simulation 4 by default).
    #[arg(long, value_name = "N")]
    parallel_scenarios: Option<usize>,
    /// A line for every step even on a terminal.
    #[arg(short, long)]
    verbose: bool,
    /// Print each profile's levels and features with the scenarios they run, and exit.
    #[arg(long)]
    list_profiles: bool,
    #[command(flatten)]
    target: BackendArgs,
}

pub fn run(args: CertifyArgs) -> Result<ExitCode, CliError> {
    if args.list_profiles {
        return list_profiles();
    }
    if args.target.dry_run {
        return Err(CliError::Usage(
            "certify judges what a cluster does: a dry run sends nothing (use `polygraph run --dry-run`)".into(),
        ));
    }
    if args.probe_timeout.is_zero() {
        return Err(CliError::Usage(
            "--probe-timeout must be more than zero".into(),
        ));
    }
    let implementation = match &args.implementation {
        Some(path) => read_implementation(path)?,
        None => Implementation::default(),
    };
    let profiles = if args.profiles.is_empty() {
        ProfileName::ALL.to_vec()
    } else {
        let mut profiles = args.profiles.clone();
        profiles.sort();
        profiles.dedup();
        profiles
    };
    let scenarios = certify::profile::scenarios_for(
        &profiles,
        library::load_all().map_err(CliError::Scenario)?,
    );
    std::fs::create_dir_all(&args.output_dir).map_err(|source| CliError::Write {
        path: args.output_dir.clone(),
        source,
    })?;
    let options = RunOptions {
        probe_timeout: args.probe_timeout,
        step_deadline: args.step_deadline,
        // Late cells are Timing's to judge, against --max-latency; NetworkPolicy judges semantics.
        max_latency: None,
        stability: args.stability,
        established: true,
        pacer: args.pace.pacer()?,
        poll_interval: Duration::from_millis(250),
        targets: Vec::new(),
        families: args.target.default_families(),
        // Every backend: the summary's first line is the smoke verdict, and an API accepted but
        // not enforced fails its scenarios at once.
        precheck: true,
        service_hairpin: Default::default(),
    };
    let outputs = Outputs {
        junit: Some(args.output_dir.join(JUNIT_FILE)),
        json: Some(args.output_dir.join(JSON_FILE)),
        json_cells: CellSelection::All,
        html: Some(args.output_dir.join(HTML_FILE)),
        summary_md: Some(args.output_dir.join(SUMMARY_FILE)),
        done_file: None,
    };
    // The simulation has nothing to overload: four lanes by default, so the stability window
    // (a second per step) costs seconds, not minutes.
    let asked = args
        .parallel_scenarios
        .or((args.target.kind() == BackendKind::Sim).then_some(4));
    let lanes = super::run::lanes(asked, &args.target)?;
    let started = std::time::Instant::now();
    let bounds = Bounds {
        max_latency: args.max_latency,
    };
    let Finished { value: result, .. } =
        super::run::execute(&scenarios, &options, &args.target, lanes, args.verbose).map_err(
            |error| reports::setup_failed(&outputs, &args.target, &options, started, error),
        )?;
    let certification = Certification::of(&result, &profiles, bounds);
    let report = conformance::build(
        &result,
        &certification,
        Context {
            implementation,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            mode: args.mode.clone(),
            command: command_line(),
        },
    );
    let yaml = conformance::to_yaml(&report)
        .map_err(|e| CliError::Usage(format!("conformance report: {e}")))?;
    write_file(&args.output_dir.join(REPORT_FILE), yaml)?;
    reports::write(&outputs, &result, Some(&certification))?;
    let color = use_color();
    out!("{}", run_terminal::render(&result, color))?;
    for profile in &certification.profiles {
        out!("{}: {}", profile.profile.name, profile.summary())?;
    }
    out!(
        "reports in {}: {REPORT_FILE}, {HTML_FILE}, {SUMMARY_FILE}, {JUNIT_FILE}, {JSON_FILE}",
        args.output_dir.display()
    )?;
    if args.target.kind() == BackendKind::Sim {
        out!("(the simulation answers from the oracle: this certifies polygraph, not a CNI)")?;
    }
    Ok(if certification.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WRONG)
    })
}

/// Every profile, level and feature, with its scenarios: what a certification would run.
fn list_profiles() -> Result<ExitCode, CliError> {
    let library = library::load_all().map_err(CliError::Scenario)?;
    for name in ProfileName::ALL {
        let profile = name.profile();
        out!("{}: {}", profile.name, profile.summary)?;
        let in_scope: Vec<_> = library.iter().filter(|s| profile.in_scope(s)).collect();
        if profile.core.is_empty() {
            let core: Vec<&str> = in_scope
                .iter()
                .filter(|s| profile.is_core(s))
                .map(|s| s.name.as_str())
                .collect();
            out!(
                "  {} ({} scenarios): {}",
                profile.levels.0,
                core.len(),
                core.join(", ")
            )?;
        } else {
            let all: Vec<&str> = in_scope.iter().map(|s| s.name.as_str()).collect();
            out!(
                "  {} (on {} scenarios: {})",
                profile.levels.0,
                all.len(),
                all.join(", ")
            )?;
            for feature in profile.core {
                out!("    {}: {}", feature.name, feature.description)?;
            }
        }
        if !profile.extended.is_empty() {
            out!("  {}:", profile.levels.1)?;
            for feature in profile.extended {
                let scenarios: Vec<&str> = in_scope
                    .iter()
                    .filter(|s| feature.covers(s))
                    .map(|s| s.name.as_str())
                    .collect();
                out!(
                    "    {}: {} ({})",
                    feature.name,
                    feature.description,
                    scenarios.join(", ")
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_implementation(path: &Path) -> Result<Implementation, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "{}: cannot read the implementation file: {e}",
            path.display()
        ))
    })?;
    serde_saphyr::from_str(&text).map_err(|e| {
        match polygraph::input::yaml_error(&path.display().to_string(), &e) {
            polygraph::input::InputError::Yaml { origin, message } => {
                CliError::Usage(format!("{origin}: implementation: {message}"))
            }
            other => CliError::Usage(other.to_string()),
        }
    })
}

/// The command as typed, each word quoted where the shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
            {
                word
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
