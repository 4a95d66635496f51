use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::CliError;
use super::backend_args::{BackendArgs, TargetArgs};
use polygraph::analyze::analyze;
use polygraph::backend::Backend;
use polygraph::bench::{
    WorldSize, bench_port_protocols, generate_cluster, generate_cluster_policies,
    generate_policies, time_oracle,
};
use polygraph::model::default_model;
use polygraph::policy::parse_policies;
use polygraph::run::{Deadlines, PathPlan, ProbeDesign, probe_matrix_with, reconcile};
use polygraph::world::World;

use super::session::session;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the oracle on a generated cluster (default: 1,000 pods, 50 namespaces, 1,000 policies,
    /// 4 port/protocol pairs = 4 million cells). Build with --release for real figures.
    Oracle(OracleArgs),
    /// Time probing the full default matrix (9 pods × 9 pods × 6 port/protocols = 486 cells), with
    /// x isolated so blocked cells wait out the timeout: on the local cluster (needs root) or on
    /// Kubernetes (`--backend kube`), in polygraph's design and, with `--design exec-per-probe`,
    /// one probe per cell as the tools before it do.
    Probe(Box<ProbeBenchArgs>),
    /// Run the library (or the scenarios named) again and again, each run on a fresh cluster, and
    /// count the false verdicts per run: on polygraph's own dataplane every verdict must be a
    /// pass. `--inject loss=10%` makes every link drop a tenth of its packets.
    Soak(Box<super::soak::SoakArgs>),
    /// Measure the rate of new connections above which enforcement gives way, per node: a ramp
    /// through an isolated and an open destination on scratch pods, until isolated cells connect
    /// (the enforcer fails open) or open ones go silent (it fails closed).
    Enforcer(Box<super::enforcer::EnforcerArgs>),
}

#[derive(Debug, Args)]
pub struct ProbeBenchArgs {
    /// Probe timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Timed rounds on the same cluster (per target).
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// With several targets, their rounds alternate on one cluster and the report gives each
    /// one's figures and their ratio to the first.
    #[command(flatten)]
    paths: TargetArgs,
    /// Where the pods run: the local cluster by default, or a Kubernetes cluster (each family a
    /// pod has is its own matrix, timed apart).
    #[command(flatten)]
    backend: BackendArgs,
    /// How the matrix is probed: `batched` (polygraph's: one batch per source pod) and, to measure
    /// against it, `exec-per-probe` (one agent process per cell, `--workers` at a time, as
    /// cyclonus execs one probe per cell). polygraph's design is always timed too, first, and each
    /// other design is reported as a multiple of it. Several with commas.
    #[arg(
        long = "design",
        value_enum,
        value_delimiter = ',',
        default_value = "batched"
    )]
    designs: Vec<Design>,
    /// Concurrent probes of the exec-per-probe design (cyclonus's default is 15).
    #[arg(long, default_value_t = 15)]
    workers: usize,
    #[command(flatten)]
    pace: super::pace_args::PaceArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Design {
    /// One batch per source; a silent target is waited for a deadline learnt from the answers,
    /// then confirmed by a second attempt (`run::Deadlines`).
    Batched,
    /// One batch per source, every silent target waited for the whole timeout (polygraph before
    /// its deadlines).
    BatchedFixed,
    /// One probe process (or exec) per cell, `--workers` at a time, the whole timeout each.
    ExecPerProbe,
}

impl Design {
    fn probe_design(self, workers: usize) -> ProbeDesign {
        match self {
            Design::Batched | Design::BatchedFixed => ProbeDesign::Batched,
            Design::ExecPerProbe => ProbeDesign::PerCell { workers },
        }
    }

    fn describe(self, workers: usize) -> String {
        match self {
            Design::Batched => "batched".into(),
            Design::BatchedFixed => "batched, fixed timeout".into(),
            Design::ExecPerProbe => format!("exec-per-probe ({workers} workers)"),
        }
    }
}

#[derive(Debug, Args)]
pub struct OracleArgs {
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// ClusterNetworkPolicies (Admin and Baseline tiers) evaluated around the NetworkPolicies.
    #[arg(long, default_value_t = 100)]
    cluster_policies: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed runs; the report gives the fastest and the median.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn run(command: BenchCommand) -> Result<ExitCode, CliError> {
    match command {
        BenchCommand::Oracle(args) => oracle(args),
        BenchCommand::Probe(args) => probe(*args),
        BenchCommand::Soak(args) => super::soak::soak(*args),
        BenchCommand::Enforcer(args) => super::enforcer::enforcer(*args),
    }
}

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

fn probe(args: ProbeBenchArgs) -> Result<ExitCode, CliError> {
    if args.iterations == 0 || args.timeout.is_zero() || args.workers == 0 {
        return Err(CliError::Usage(
            "--iterations, --timeout and --workers must be more than zero".into(),
        ));
    }
    // polygraph's design first: the others are measured against it.
    let mut designs = vec![Design::Batched];
    designs.extend(args.designs.iter().filter(|d| **d != Design::Batched));
    let workers = args.workers;
    let pacer = args.pace.pacer()?;
    if args.backend.dry_run {
        return Err(CliError::Usage(
            "--dry-run makes no calls to time: bench probe needs a cluster".into(),
        ));
    }
    let cluster = default_model().build("built-in model")?;
    let policies = parse_policies("bench", DENY_X, "x")?;
    let analysis = analyze(cluster, policies, &[]);
    let world = World::with_policies(&analysis.cluster, &analysis.policy_set())?;
    let started = Instant::now();
    let services = args.paths.targets.iter().any(|t| t.needs_services());
    let finished = session(args.backend.start(services), async |backend| {
        reconcile(backend, &World::empty(), &world).await?;
        out!("{}: up in {}", backend.describe(), ms(started.elapsed()))?;
        let plan = PathPlan::prepare(
            backend,
            &args.paths.targets,
            analysis.table.port_protocols(),
            &[&analysis.cluster],
        )
        .await
        .map_err(CliError::Usage)?;
        let paths = plan.paths(&*backend, &analysis);
        let expected: Vec<_> = paths
            .iter()
            .map(|&path| plan.analysis(&*backend, &analysis, path))
            .collect();
        // Every (path, design), each with its rounds.
        let series: Vec<(usize, Design)> = (0..paths.len())
            .flat_map(|i| designs.iter().map(move |&d| (i, d)))
            .collect();
        let mut rounds = vec![Vec::new(); series.len()];
        // polygraph's deadlines, learnt as a run learns them; one untimed round per path first,
        // so the timed ones are the steady state.
        let mut deadlines = Deadlines::new(args.timeout);
        for (i, &path) in paths.iter().enumerate() {
            let timing = deadlines.timing();
            let observed = probe_matrix_with(
                &*backend,
                &expected[i].cluster,
                expected[i].table.port_protocols(),
                path,
                timing,
                &pacer,
                Design::Batched.probe_design(workers),
            )
            .await?;
            deadlines.learn(&observed, timing);
        }
        let mut used: Vec<Option<Duration>> = vec![None; series.len()];
        // Alternating, so that any drift of the machine falls on every path and design alike.
        for _ in 0..args.iterations {
            for (s, &(i, design)) in series.iter().enumerate() {
                let path = paths[i];
                let timing = match design {
                    Design::Batched => deadlines.timing(),
                    _ => args.timeout.into(),
                };
                used[s] = used[s].max(timing.effective_deadline());
                let round = Instant::now();
                let observed = probe_matrix_with(
                    &*backend,
                    &expected[i].cluster,
                    expected[i].table.port_protocols(),
                    path,
                    timing,
                    &pacer,
                    design.probe_design(workers),
                )
                .await?;
                rounds[s].push(round.elapsed());
                if design == Design::Batched {
                    deadlines.learn(&observed, timing);
                }
                // Both designs must see the same thing: a design that misses is no faster.
                let summary = polygraph::report::probe::summarize(&expected[i], &observed);
                if summary.failed() {
                    return Err(CliError::Usage(format!(
                        "the reference dataplane disagreed with the spec through {path} ({}): {}",
                        design.describe(workers),
                        polygraph::report::probe::summary_line(&summary)
                    )));
                }
            }
        }
        Ok((paths, expected, series, rounds, used))
    })?;
    let (paths, expected, series, mut rounds, used) = finished.value;
    let medians: Vec<Duration> = rounds
        .iter_mut()
        .map(|r| {
            r.sort();
            r[r.len() / 2]
        })
        .collect();
    let ratio = |a: Duration, b: Duration| {
        a.as_secs_f64() / Duration::max(b, Duration::from_nanos(1)).as_secs_f64()
    };
    for (s, &(i, design)) in series.iter().enumerate() {
        let rounds = &rounds[s];
        let median = medians[s];
        // Against the first path in the same design, and against polygraph's design on this path.
        let first_path = series
            .iter()
            .position(|&(j, d)| j == 0 && d == design)
            .map_or(median, |f| medians[f]);
        let batched = series
            .iter()
            .position(|&(j, d)| j == i && d == Design::Batched)
            .map_or(median, |b| medians[b]);
        let mut notes = String::new();
        if i > 0 {
            notes.push_str(&format!(
                ", {:.2}× the first path",
                ratio(median, first_path)
            ));
        }
        if design != Design::Batched {
            notes.push_str(&format!(
                ", {:.1}× polygraph's batched round",
                ratio(median, batched)
            ));
        }
        let wait = match used[s] {
            Some(deadline) => format!(
                "timeout {}, a silent target waited 2 × {}",
                humantime::format_duration(args.timeout),
                ms(deadline)
            ),
            None => format!("timeout {}", humantime::format_duration(args.timeout)),
        };
        out!(
            "{} [{}]: {} cells, {wait}: fastest round {}, median {}, slowest {} ({} rounds){notes}",
            paths[i],
            design.describe(workers),
            expected[i].table.len(),
            ms(rounds[0]),
            ms(median),
            ms(rounds[rounds.len() - 1]),
            rounds.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn oracle(args: OracleArgs) -> Result<ExitCode, CliError> {
    if args.namespaces == 0 || args.iterations == 0 {
        return Err(CliError::Usage(
            "--namespaces and --iterations must be at least 1".into(),
        ));
    }
    let size = WorldSize {
        namespaces: args.namespaces,
        pods: args.pods,
        policies: args.policies,
        cluster_policies: args.cluster_policies,
        seed: args.seed,
    };
    let cluster = generate_cluster(&size);
    let policies = generate_policies(&size);
    let cluster_policies = generate_cluster_policies(&size);
    let pps = bench_port_protocols();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; use `cargo run --release -- bench oracle` for real figures"
        );
    }
    out!(
        "world: {} pods in {} namespaces, {} NetworkPolicies, {} ClusterNetworkPolicies, {} port/protocol pairs",
        args.pods,
        args.namespaces,
        policies.len(),
        cluster_policies.len(),
        pps.len()
    )?;
    let mut runs: Vec<_> = (0..args.iterations)
        .map(|_| time_oracle(&cluster, &policies, &cluster_policies, &pps))
        .collect();
    runs.sort_by_key(|t| t.total());
    let best = &runs[0];
    let median = &runs[runs.len() / 2];
    out!(
        "cells: {} ({} allowed, {:.1}%; {} undefined (same-priority ties, DNS), {} blocked by a cluster Deny)",
        best.cells,
        best.allowed,
        100.0 * best.allowed as f64 / best.cells.max(1) as f64,
        best.undefined,
        best.dropped
    )?;
    out!(
        "fastest of {}: {} (index {}, truth table {})",
        args.iterations,
        ms(best.total()),
        ms(best.index),
        ms(best.table)
    )?;
    out!(
        "median: {} (index {}, truth table {})",
        ms(median.total()),
        ms(median.index),
        ms(median.table)
    )?;
    Ok(ExitCode::SUCCESS)
}
