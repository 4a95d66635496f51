use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::CliError;
use polygraph::bench::{
    WorldSize, bench_port_protocols, generate_cluster, generate_policies, time_oracle,
};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time the oracle on a generated cluster (default: 1,000 pods, 50 namespaces, 1,000 policies,
    /// 4 port/protocol pairs = 4 million cells). Build with --release for real figures.
    Oracle(OracleArgs),
}

#[derive(Debug, Args)]
pub struct OracleArgs {
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    #[arg(long, default_value_t = 1000)]
    policies: usize,
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
    let BenchCommand::Oracle(args) = command;
    if args.namespaces == 0 || args.iterations == 0 {
        return Err(CliError::Usage(
            "--namespaces and --iterations must be at least 1".into(),
        ));
    }
    let size = WorldSize {
        namespaces: args.namespaces,
        pods: args.pods,
        policies: args.policies,
        seed: args.seed,
    };
    let cluster = generate_cluster(&size);
    let policies = generate_policies(&size);
    let pps = bench_port_protocols();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; use `cargo run --release -- bench oracle` for real figures"
        );
    }
    println!(
        "world: {} pods in {} namespaces, {} policies, {} port/protocol pairs",
        args.pods,
        args.namespaces,
        policies.len(),
        pps.len()
    );
    let mut runs: Vec<_> = (0..args.iterations)
        .map(|_| time_oracle(&cluster, &policies, &pps))
        .collect();
    runs.sort_by_key(|t| t.total());
    let best = &runs[0];
    let median = &runs[runs.len() / 2];
    println!(
        "cells: {} ({} allowed, {:.1}%)",
        best.cells,
        best.allowed,
        100.0 * best.allowed as f64 / best.cells.max(1) as f64
    );
    println!(
        "fastest of {}: {} (index {}, truth table {})",
        args.iterations,
        ms(best.total()),
        ms(best.index),
        ms(best.table)
    );
    println!(
        "median: {} (index {}, truth table {})",
        ms(median.total()),
        ms(median.index),
        ms(median.table)
    );
    Ok(ExitCode::SUCCESS)
}
