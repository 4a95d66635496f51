//! `polygraph bench enforcer`: the rate of new connections above which a cluster's enforcement
//! gives way, per node (`run::ramp`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::backend_args::BackendArgs;
use super::pace_args::parse_rate;
use super::session::session;
use super::{CliError, EXIT_WRONG};
use polygraph::backend::{Backend, ProbeTiming};
use polygraph::model::{Family, PodRef};
use polygraph::run::pace::RATE as DEFAULT_RATE;
use polygraph::run::ramp::{NodeRamp, NodeTargets, RampOptions, RampStep, Stop, ramp};
use polygraph::run::{pod_address, reconcile};
use polygraph::scenario;
use polygraph::world::World;
use polygraph_agent::wire::{Outcome, Protocol, Target};

#[derive(Debug, Args)]
pub struct EnforcerArgs {
    /// The first rate of new connections, per node.
    #[arg(long, value_name = "N/s", default_value = "250/s", value_parser = parse_rate)]
    start_rate: super::pace_args::Rate,
    /// The ceiling: the ramp stops below it (`none` is not accepted: a ramp needs a ceiling).
    #[arg(long, value_name = "N/s", default_value = "20000/s", value_parser = parse_rate)]
    max_rate: super::pace_args::Rate,
    /// Each step's rate is the last one's times this.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// How long each rate is held.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// How long a probe waits: an answer later than this counts as dropped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The most new connections the whole bench may open.
    #[arg(long, default_value_t = 200_000)]
    max_connections: u64,
    /// Pairs of destinations (one open, one isolated by a NetworkPolicy): more pairs spread
    /// over more of a Kubernetes cluster's nodes.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// Source pods, probing in turn.
    #[arg(long, default_value_t = 4)]
    sources: usize,
    /// Also write the ramp as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// The bench's scratch pods and the policy that isolates the `closed` ones, as a scenario so it
/// goes through the same loading and validation as any other.
fn bench_scenario(pairs: usize, sources: usize) -> String {
    let pod = |name: String, role: &str| {
        format!(
            "    - {{namespace: enforcer, name: {name}, labels: {{role: {role}}}, ports: [{{name: http, port: 80}}]}}\n"
        )
    };
    let mut text = String::from(
        "name: enforcer-bench\ndescription: bench enforcer's scratch pods\ncluster:\n  namespaces:\n    - name: enforcer\n  pods:\n",
    );
    for i in 0..sources {
        text.push_str(&pod(format!("client-{i}"), "client"));
    }
    for i in 0..pairs {
        text.push_str(&pod(format!("open-{i}"), "open"));
        text.push_str(&pod(format!("closed-{i}"), "closed"));
    }
    text.push_str(concat!(
        "probe: {ports: [80], protocols: [TCP]}\n",
        "steps:\n",
        "  - name: isolate the closed pods\n",
        "    apply:\n",
        "      - apiVersion: networking.k8s.io/v1\n",
        "        kind: NetworkPolicy\n",
        "        metadata: {name: closed, namespace: enforcer}\n",
        "        spec: {podSelector: {matchLabels: {role: closed}}, policyTypes: [Ingress]}\n",
    ));
    text
}

/// How long enforcement may take to hold at low load before the ramp starts.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Report<'a> {
    backend: String,
    start_rate: f64,
    max_rate: f64,
    factor: f64,
    hold_ms: u128,
    timeout_ms: u128,
    nodes: &'a [NodeRamp],
}

pub fn enforcer(args: EnforcerArgs) -> Result<ExitCode, CliError> {
    let (Some(start), Some(max_rate)) = (args.start_rate.0, args.max_rate.0) else {
        return Err(CliError::Usage(
            "--start-rate and --max-rate need a number: a ramp needs a start and a ceiling".into(),
        ));
    };
    if args.factor.is_nan() || args.factor <= 1.0 {
        return Err(CliError::Usage("--factor must be above 1".into()));
    }
    if args.pairs == 0 || args.sources == 0 || args.hold.is_zero() || args.timeout.is_zero() {
        return Err(CliError::Usage(
            "--pairs, --sources, --hold and --timeout must be more than zero".into(),
        ));
    }
    if start > max_rate {
        return Err(CliError::Usage(
            "--start-rate is above --max-rate: the ramp would have no step".into(),
        ));
    }
    if args.backend.dry_run {
        return Err(CliError::Usage(
            "--dry-run makes no calls: bench enforcer needs a cluster".into(),
        ));
    }
    let options = RampOptions {
        start,
        factor: args.factor,
        max_rate,
        hold: args.hold,
        timeout: args.timeout,
        max_connections: args.max_connections,
    };
    let scenario = scenario::parse(
        "built-in:enforcer-bench",
        &bench_scenario(args.pairs, args.sources),
        None,
    )
    .map_err(CliError::Scenario)?;
    let analysis = &scenario.steps[0].analysis;
    let world = World::with_policies(&analysis.cluster, &analysis.policy_set())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let started = Instant::now();
    let finished = session(args.backend.start(false), async |backend| {
        reconcile(backend, &World::empty(), &world).await?;
        out!(
            "{}: {} sources, {} open and {} isolated destinations up in {:.1} s",
            backend.describe(),
            args.sources,
            args.pairs,
            args.pairs,
            started.elapsed().as_secs_f64()
        )?;
        let nodes = node_targets(&*backend, &world);
        let Some(settled) = settle(&*backend, &nodes, args.timeout).await? else {
            return Ok((backend.describe(), None));
        };
        out!(
            "at low load the policy holds ({:.1} s): isolated destinations silent, open ones answer",
            settled.as_secs_f64()
        )?;
        out!(
            "ramp: from {start:.0}/s ×{} per step up to {max_rate:.0}/s, each rate held {}, probes wait {}\n",
            args.factor,
            humantime::format_duration(args.hold),
            humantime::format_duration(args.timeout)
        )?;
        out!(
            "{:<24} {:>9} {:>10} {:>20} {:>18}",
            "node",
            "rate",
            "achieved",
            "isolated connected",
            "open dropped"
        )?;
        let ramps = ramp(&*backend, &nodes, &options, |node, step| {
            let _ = print_step(node, step);
        })
        .await?;
        Ok((backend.describe(), Some(ramps)))
    })?;
    let (described, ramps) = finished.value;
    let Some(ramps) = ramps else {
        out!(
            "enforcement never held at low load: there is no knee to measure (see `polygraph smoke`)"
        )?;
        return Ok(ExitCode::from(EXIT_WRONG));
    };
    out!()?;
    for node in &ramps {
        out!("{}", knee_line(node))?;
        if let Some(knee) = &node.knee
            && knee.estimate < DEFAULT_RATE
        {
            out!(
                "  polygraph's default pace ({:.0} new connections/s per node) is above it: run polygraph with --rate {:.0}/s here",
                DEFAULT_RATE,
                (knee.estimate / 2.0).floor().max(1.0)
            )?;
        }
    }
    if let Some(path) = &args.json {
        let report = Report {
            backend: described,
            start_rate: start,
            max_rate,
            factor: args.factor,
            hold_ms: args.hold.as_millis(),
            timeout_ms: args.timeout.as_millis(),
            nodes: &ramps,
        };
        super::write_file(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_step(node: &str, step: &RampStep) -> Result<(), CliError> {
    let mark = match step.gave_way() {
        Some(way) => format!("  ← {way}"),
        None => String::new(),
    };
    out!(
        "{:<24} {:>7.0}/s {:>8.0}/s {:>20} {:>18}{mark}",
        truncate(node, 24),
        step.rate,
        step.achieved,
        format!(
            "{}/{} ({:.1}%)",
            step.blocked_connected,
            step.blocked_sent,
            step.leak_share() * 100.0
        ),
        format!(
            "{}/{} ({:.1}%)",
            step.allowed_dropped,
            step.allowed_sent,
            step.drop_share() * 100.0
        ),
    )
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// One node's finding in a line.
fn knee_line(node: &NodeRamp) -> String {
    let held = node
        .held_up_to()
        .map_or(String::new(), |r| format!("held at {r:.0}/s; "));
    match (&node.knee, node.stop) {
        (Some(knee), _) => format!(
            "{}: {} above ≈ {:.0} new connections/s ({held}at {:.0}/s, {:.1}% of {} cells {})",
            node.node,
            knee.mode,
            knee.estimate,
            knee.gave_way_at,
            knee.share * 100.0,
            match knee.mode {
                polygraph::run::ramp::GiveWay::FailsOpen => "isolated",
                polygraph::run::ramp::GiveWay::FailsClosed => "open",
            },
            match knee.mode {
                polygraph::run::ramp::GiveWay::FailsOpen => "connected",
                polygraph::run::ramp::GiveWay::FailsClosed => "went unanswered",
            }
        ),
        (None, Stop::Sender) => format!(
            "{}: no knee: enforcement {held}polygraph's sources could send no faster (the knee, if any, is above)",
            node.node
        ),
        (None, Stop::Budget) => format!(
            "{}: no knee before the connection budget ran out ({held}--max-connections)",
            node.node
        ),
        (None, _) => format!(
            "{}: no knee up to the ceiling ({held}--max-rate)",
            node.node
        ),
    }
}

/// Per node, the open and isolated destinations on it and every source (sources probe every
/// node; the load a node's enforcer judges is what arrives at its pods).
fn node_targets<B: Backend>(backend: &B, world: &World) -> Vec<NodeTargets> {
    let cluster = world.cluster();
    // A backend that names no nodes (the local and simulated clusters) is one node.
    let one_node = "the one node".to_string();
    let role = |pod: &polygraph::model::Pod| pod.labels.get("role").cloned().unwrap_or_default();
    let sources: Vec<PodRef> = cluster
        .pods()
        .iter()
        .filter(|p| role(p) == "client")
        .map(|p| p.key())
        .collect();
    let mut nodes: std::collections::BTreeMap<String, NodeTargets> = Default::default();
    for pod in cluster.pods() {
        let kind = role(pod);
        if kind == "client" {
            continue;
        }
        let Some(ip) =
            pod_address(backend, pod, Family::V4).or_else(|| pod_address(backend, pod, Family::V6))
        else {
            continue;
        };
        let node = backend.node(&pod.key()).unwrap_or(&one_node).to_string();
        let entry = nodes.entry(node.clone()).or_insert_with(|| NodeTargets {
            node,
            sources: sources.clone(),
            blocked: Vec::new(),
            allowed: Vec::new(),
        });
        let target = Target::new(ip.to_string(), 80, Protocol::Tcp);
        if kind == "closed" {
            entry.blocked.push(target);
        } else {
            entry.allowed.push(target);
        }
    }
    nodes.into_values().collect()
}

/// Probes every (source, destination) once a second until isolated destinations are silent and
/// open ones answer: enforcement may lag its policy. The ramp measures when a policy that holds
/// gives way; one that never holds is a finding of its own.
async fn settle<B: Backend>(
    backend: &B,
    nodes: &[NodeTargets],
    timeout: Duration,
) -> Result<Option<Duration>, CliError> {
    let began = Instant::now();
    let timing: ProbeTiming = timeout.into();
    loop {
        let mut wrong = Vec::new();
        for node in nodes {
            let targets: Vec<Target> = node.blocked.iter().chain(&node.allowed).cloned().collect();
            let rounds = futures::future::join_all(
                node.sources
                    .iter()
                    .map(|source| backend.probe(source, &targets, timing)),
            )
            .await;
            for (source, results) in node.sources.iter().zip(rounds) {
                for (i, result) in results?.iter().enumerate() {
                    let isolated = i < node.blocked.len();
                    let right = match result.outcome {
                        Outcome::Connected => !isolated,
                        outcome if outcome.is_blocked() => isolated,
                        _ => false,
                    };
                    if !right {
                        wrong.push(format!(
                            "{} → {} ({}): {}",
                            source,
                            result.host,
                            if isolated { "isolated" } else { "open" },
                            result.outcome
                        ));
                    }
                }
            }
        }
        if wrong.is_empty() {
            return Ok(Some(began.elapsed()));
        }
        if began.elapsed() > SETTLE {
            let shown = wrong.len().min(3);
            out!(
                "after {} the bench's policy still does not hold at low load: {}",
                humantime::format_duration(SETTLE),
                wrong[..shown].join("; ")
            )?;
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
