//! The generated suite at the command line: `polygraph generate` writes its cases as scenario
//! files, and `run --generated` runs them without writing anything (`GeneratedArgs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::CliError;
use polygraph::generate::{self, DEFAULT_SEED};
use polygraph::scenario::Scenario;

/// Which generated cases: a seed, how many, and optionally one shard of them or single cases.
#[derive(Debug, Args, Default, Clone)]
pub struct Selection {
    /// The seed the cases are drawn from (default 1): the same seed gives the same cases.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many cases, numbered from 0 (default 100).
    #[arg(long)]
    pub count: Option<usize>,
    /// Only the cases of shard K of M (case numbers equal to K-1 modulo M), to split a suite
    /// across CI jobs.
    #[arg(long, value_name = "K/M", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Only these case numbers (what a failing case's rerun command names); `--count` is then
    /// ignored.
    #[arg(long = "case", value_name = "N", value_delimiter = ',')]
    pub cases: Vec<usize>,
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{text:?}: expected K/M with 1 <= K <= M, e.g. 2/4");
    let (k, m) = text.split_once('/').ok_or_else(bad)?;
    let (k, m): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if k == 0 || m == 0 || k > m {
        return Err(bad());
    }
    Ok((k, m))
}

/// Cases when `--count` is not given.
const DEFAULT_COUNT: usize = 100;

impl Selection {
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// Whether any of the selection's flags was given (they mean nothing without `--generated`).
    pub fn given(&self) -> bool {
        self.seed.is_some()
            || self.count.is_some()
            || self.shard.is_some()
            || !self.cases.is_empty()
    }

    /// The selected cases, in case-number order.
    pub fn cases(&self) -> Vec<generate::Case> {
        let numbers: Vec<usize> = if self.cases.is_empty() {
            (0..self.count.unwrap_or(DEFAULT_COUNT)).collect()
        } else {
            let mut numbers = self.cases.clone();
            numbers.sort_unstable();
            numbers.dedup();
            numbers
        };
        numbers
            .into_iter()
            .filter(|n| self.shard.is_none_or(|(k, m)| n % m == k - 1))
            .map(|n| generate::case(self.seed(), n))
            .collect()
    }

    /// The selected cases as scenarios.
    pub fn scenarios(&self) -> Result<Vec<Scenario>, CliError> {
        let scenarios: Vec<Scenario> = self
            .cases()
            .iter()
            .map(|case| case.scenario().map_err(CliError::Scenario))
            .collect::<Result<_, _>>()?;
        if scenarios.is_empty() {
            return Err(CliError::Usage(
                "no generated case selected (--count 0, or a shard with no case)".into(),
            ));
        }
        Ok(scenarios)
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    selection: Selection,
    /// The directory to write the scenario files to (created if needed).
    #[arg(long, default_value = "generated")]
    out: PathBuf,
}

pub fn generate(args: GenerateArgs) -> Result<ExitCode, CliError> {
    let cases = args.selection.cases();
    // Every case is checked before anything is written.
    for case in &cases {
        case.scenario().map_err(CliError::Scenario)?;
    }
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Write {
        path: args.out.clone(),
        source,
    })?;
    for case in &cases {
        let path = args.out.join(case.file_name());
        std::fs::write(&path, &case.yaml).map_err(|source| CliError::Write { path, source })?;
    }
    out!(
        "wrote {} generated scenarios (seed {}) to {}; run them with `polygraph run {}/*.yaml`",
        cases.len(),
        args.selection.seed(),
        args.out.display(),
        args.out.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The rerun command of every failed generated scenario of a run, one per line.
pub fn reruns(result: &polygraph::run::RunResult) -> Vec<String> {
    result
        .scenarios
        .iter()
        .filter(|s| s.status() == polygraph::run::Status::Failed)
        .filter_map(|s| generate::origin(&s.scenario.source))
        .map(|(seed, index)| generate::rerun_command(seed, index))
        .collect()
}
