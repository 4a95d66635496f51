use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::CliError;
use super::backend_args::TargetArgs;
use polygraph::analyze::analyze;
use polygraph::backend::AnyBackend;
use polygraph::backend::local::{AgentCommand, Dataplane, LocalBackend, LocalOptions};
use polygraph::bench::{
    WorldSize, bench_port_protocols, generate_cluster, generate_cluster_policies,
    generate_policies, time_oracle,
};
use polygraph::faults::Faults;
use polygraph::model::{IpFamilies, default_model};
use polygraph::policy::parse_policies;
use polygraph::run::{PathPlan, namespace_names, probe_matrix, reconcile};
use polygraph::world::World;

use super::session::session;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the oracle on a generated cluster (default: 1,000 pods, 50 namespaces, 1,000 policies,
    /// 4 port/protocol pairs = 4 million cells). Build with --release for real figures.
    Oracle(OracleArgs),
    /// Time probing the full default matrix (9 pods × 9 pods × 6 port/protocols = 486 cells) on the
    /// local cluster, with x isolated so blocked cells wait out the timeout. Needs root.
    Probe(ProbeBenchArgs),
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
    /// The local cluster's address families (each family is its own matrix, timed apart).
    #[arg(long, value_enum, default_value = "ipv4")]
    ip_family: IpFamilies,
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
        BenchCommand::Probe(args) => probe(args),
    }
}

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";

fn probe(args: ProbeBenchArgs) -> Result<ExitCode, CliError> {
    if args.iterations == 0 || args.timeout.is_zero() {
        return Err(CliError::Usage(
            "--iterations and --timeout must be more than zero".into(),
        ));
    }
    let cluster = default_model().build("built-in model")?;
    let policies = parse_policies("bench", DENY_X, "x")?;
    let analysis = analyze(cluster, policies, &[]);
    let options = LocalOptions {
        dataplane: Dataplane::Nftables,
        agent: AgentCommand::this_binary()?,
        faults: Faults::default(),
        families: args.ip_family,
    };
    let world = World::with_policies(&analysis.cluster, &analysis.policy_set())?;
    let started = Instant::now();
    let start = async { Ok(AnyBackend::Local(LocalBackend::start(options).await?)) };
    let finished = session(start, async |backend| {
        reconcile(backend, &World::empty(), &world).await?;
        out!("local cluster up in {}", ms(started.elapsed()))?;
        let plan = PathPlan::prepare(
            backend,
            &args.paths.targets,
            analysis.table.port_protocols(),
            &namespace_names(&analysis),
        )
        .await
        .map_err(CliError::Usage)?;
        let paths = plan.paths(&*backend, &analysis);
        let expected: Vec<_> = paths
            .iter()
            .map(|&path| plan.analysis(&*backend, &analysis, path))
            .collect();
        let mut rounds = vec![Vec::new(); paths.len()];
        // Alternating, so that any drift of the machine falls on every path alike.
        for _ in 0..args.iterations {
            for (i, &path) in paths.iter().enumerate() {
                let round = Instant::now();
                let observed = probe_matrix(
                    &*backend,
                    &expected[i].cluster,
                    expected[i].table.port_protocols(),
                    path,
                    args.timeout,
                    64,
                )
                .await?;
                rounds[i].push(round.elapsed());
                let summary = polygraph::report::probe::summarize(&expected[i], &observed);
                if summary.failed() {
                    return Err(CliError::Usage(format!(
                        "the reference dataplane disagreed with the spec through {path}: {}",
                        polygraph::report::probe::summary_line(&summary)
                    )));
                }
            }
        }
        Ok((paths, expected, rounds))
    })?;
    let (paths, expected, mut rounds) = finished.value;
    let mut first_median = None;
    for ((path, analysis), rounds) in paths.iter().zip(&expected).zip(&mut rounds) {
        rounds.sort();
        let median = rounds[rounds.len() / 2];
        let ratio = match first_median {
            None => {
                first_median = Some(median);
                String::new()
            }
            Some(first) => format!(
                ", {:.2}× the first",
                median.as_secs_f64() / Duration::max(first, Duration::from_nanos(1)).as_secs_f64()
            ),
        };
        out!(
            "{path}: {} cells, timeout {}: fastest round {}, median {}, slowest {} ({} rounds){ratio}",
            analysis.table.len(),
            humantime::format_duration(args.timeout),
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
