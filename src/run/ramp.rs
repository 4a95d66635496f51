//! `polygraph bench enforcer`: the load at which a cluster's enforcement gives way.
//!
//! An enforcer that judges new connections in userspace (NFQUEUE, or any queue between the
//! packet and a verdict) has a capacity. Beyond it the queue overflows and the enforcer either
//! accepts what it could not judge (fails open: blocked cells connect) or drops it (fails closed:
//! allowed cells go silent). The ramp measures that capacity on scratch pods only: sources probe a
//! blocked and an allowed target per node, at a rate that grows step by step, until enforcement
//! gives way, the ceiling is reached or the connection budget is spent.
//!
//! The ramp is open loop on purpose: it sends at the rate it set itself, whatever the answers,
//! so it bypasses the run's `Pacer` (whose job is the opposite: never to reach the knee). Its own
//! bounds are the ceiling, the budget and the time each rate is held.
//!
//! The knee is estimated from the first rate that gave way, not read off the ramp's grid (whose
//! steps are 1.5× apart): at an achieved rate `R` where a share `s` of the cells gave way, the
//! enforcer judged `R × (1 − s)` connections a second. A queue that absorbs a burst first makes
//! the estimate slightly high (by the burst over the time a rate is held).

use std::time::Duration;

use futures::StreamExt;
use polygraph_agent::wire::{Outcome, ProbeResult, Target};
use serde::Serialize;

use crate::backend::{Backend, BackendError, ProbeTiming};
use crate::model::PodRef;

/// How the ramp climbs and where it stops.
#[derive(Debug, Clone, Copy)]
pub struct RampOptions {
    /// The first rate, new connections per second per node.
    pub start: f64,
    /// Each step's rate is the last one's times this.
    pub factor: f64,
    /// The ceiling: no step is faster.
    pub max_rate: f64,
    /// How long each rate is held.
    pub hold: Duration,
    /// How long a probe waits: an answer later than this counts as dropped.
    pub timeout: Duration,
    /// All steps of all nodes together send no more than this many connections.
    pub max_connections: u64,
}

impl Default for RampOptions {
    fn default() -> Self {
        RampOptions {
            start: 250.0,
            factor: 1.5,
            max_rate: 20_000.0,
            hold: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_connections: 200_000,
        }
    }
}

/// A step gives way when more than this share of its blocked cells connected, or of its allowed
/// cells went unanswered...
const GIVE_WAY_SHARE: f64 = 0.01;
/// ...and at least this many did (one lost packet is not a knee).
const GIVE_WAY_CELLS: usize = 3;
/// Between steps, the enforcer's queue drains.
const PAUSE: Duration = Duration::from_millis(300);
/// Chunks are sent this often; a chunk holds the connections of its interval.
const INTERVAL: Duration = Duration::from_millis(10);
/// The sender is the limit once it achieves less than this share of the rate it was asked for.
const SENDER_SHARE: f64 = 0.7;

/// The scratch pods of one node's ramp: who probes, and the two kinds of destination on it.
#[derive(Debug, Clone)]
pub struct NodeTargets {
    pub node: String,
    pub sources: Vec<PodRef>,
    /// Destinations a policy isolates: a connection to them is a leak.
    pub blocked: Vec<Target>,
    /// Destinations open to the sources: a silence from them is a drop.
    pub allowed: Vec<Target>,
}

/// One rate held for `RampOptions::hold`.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    /// The rate asked for, per second.
    pub rate: f64,
    /// The rate the connections really started at (from the agents' own clocks), per second.
    pub achieved: f64,
    pub blocked_sent: usize,
    /// Blocked cells that connected: the enforcer let them through.
    pub blocked_connected: usize,
    pub allowed_sent: usize,
    /// Allowed cells with no answer within the timeout.
    pub allowed_dropped: usize,
    /// Probes that could not be judged either way (errors, unsupported).
    pub other: usize,
}

impl RampStep {
    pub fn leak_share(&self) -> f64 {
        share(self.blocked_connected, self.blocked_sent)
    }

    pub fn drop_share(&self) -> f64 {
        share(self.allowed_dropped, self.allowed_sent)
    }

    /// How enforcement gave way at this step, if it did.
    pub fn gave_way(&self) -> Option<GiveWay> {
        let gave = |count: usize, sent: usize| {
            count >= GIVE_WAY_CELLS && share(count, sent) > GIVE_WAY_SHARE
        };
        if gave(self.blocked_connected, self.blocked_sent) {
            Some(GiveWay::FailsOpen)
        } else if gave(self.allowed_dropped, self.allowed_sent) {
            Some(GiveWay::FailsClosed)
        } else {
            None
        }
    }
}

fn share(count: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GiveWay {
    /// Blocked cells connected: what could not be judged was accepted.
    FailsOpen,
    /// Allowed cells went silent: what could not be judged was dropped.
    FailsClosed,
}

impl std::fmt::Display for GiveWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GiveWay::FailsOpen => "fails open",
            GiveWay::FailsClosed => "fails closed",
        })
    }
}

/// Where one node's enforcement gave way.
#[derive(Debug, Clone, Serialize)]
pub struct Knee {
    pub mode: GiveWay,
    /// The estimated capacity: new connections per second the enforcer judged.
    pub estimate: f64,
    /// The fastest achieved rate that held, if any did.
    pub held_at: Option<f64>,
    /// The achieved rate of the first step that gave way, and the share of its cells that did.
    pub gave_way_at: f64,
    pub share: f64,
}

/// Why a node's ramp ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    /// Enforcement gave way twice in a row at the same rate.
    GaveWay,
    /// The next step would have passed the ceiling.
    Ceiling,
    /// The connection budget was spent.
    Budget,
    /// polygraph's sources achieved well under the rate asked: the knee, if any, is above what
    /// they can send.
    Sender,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRamp {
    pub node: String,
    pub steps: Vec<RampStep>,
    pub knee: Option<Knee>,
    pub stop: Stop,
}

impl NodeRamp {
    /// The fastest achieved rate of a step that held.
    pub fn held_up_to(&self) -> Option<f64> {
        self.steps
            .iter()
            .filter(|s| s.gave_way().is_none())
            .map(|s| s.achieved)
            .reduce(f64::max)
    }
}

/// Ramps each node in turn (one node's load never hides another's knee).
pub async fn ramp<B: Backend>(
    backend: &B,
    nodes: &[NodeTargets],
    options: &RampOptions,
    mut progress: impl FnMut(&str, &RampStep),
) -> Result<Vec<NodeRamp>, BackendError> {
    let mut budget = options.max_connections;
    let mut out = Vec::new();
    for targets in nodes {
        if targets.sources.is_empty() || (targets.blocked.is_empty() && targets.allowed.is_empty())
        {
            continue;
        }
        let mut steps = Vec::new();
        let mut rate = options.start.max(1.0);
        let mut knee: Option<(RampStep, RampStep)> = None;
        let mut previous_gave: Option<RampStep> = None;
        let stop = loop {
            let count = (rate * options.hold.as_secs_f64()).ceil() as u64;
            if count > budget {
                break Stop::Budget;
            }
            budget -= count;
            let step = one_rate(backend, targets, rate, count as usize, options).await?;
            progress(&targets.node, &step);
            steps.push(step.clone());
            match (step.gave_way(), previous_gave.take()) {
                // Twice at the same rate: the knee, not a blip.
                (Some(_), Some(first)) => {
                    knee = Some((first, step));
                    break Stop::GaveWay;
                }
                (Some(_), None) => {
                    previous_gave = Some(step);
                    continue;
                }
                (None, _) => {}
            }
            if step.achieved < rate * SENDER_SHARE {
                break Stop::Sender;
            }
            let next = rate * options.factor;
            if next > options.max_rate * 1.0001 {
                break Stop::Ceiling;
            }
            rate = next;
        };
        let mut node = NodeRamp {
            node: targets.node.clone(),
            steps,
            knee: None,
            stop,
        };
        let held_at = node.held_up_to();
        node.knee = knee.and_then(|(first, second)| estimate(&first, &second, held_at));
        out.push(node);
    }
    Ok(out)
}

/// The capacity two steps at the same rate that gave way show: the mean of what each judged.
fn estimate(first: &RampStep, second: &RampStep, held_at: Option<f64>) -> Option<Knee> {
    let mode = first.gave_way()?;
    let share_of = |s: &RampStep| match mode {
        GiveWay::FailsOpen => s.leak_share(),
        GiveWay::FailsClosed => s.drop_share(),
    };
    let judged = |s: &RampStep| s.achieved * (1.0 - share_of(s));
    Some(Knee {
        mode,
        estimate: (judged(first) + judged(second)) / 2.0,
        held_at,
        gave_way_at: (first.achieved + second.achieved) / 2.0,
        share: (share_of(first) + share_of(second)) / 2.0,
    })
}

/// Sends `count` new connections at `rate`, half to blocked and half to allowed targets, in
/// chunks of `INTERVAL`, sources in turn; waits for every answer, then for the queue to drain.
async fn one_rate<B: Backend>(
    backend: &B,
    targets: &NodeTargets,
    rate: f64,
    count: usize,
    options: &RampOptions,
) -> Result<RampStep, BackendError> {
    let per_chunk = ((rate * INTERVAL.as_secs_f64()).ceil() as usize).max(1);
    let chunks = count.div_ceil(per_chunk);
    let timing = ProbeTiming {
        timeout: options.timeout,
        deadline: None,
        attempts: 1,
    };
    let began = tokio::time::Instant::now();
    let sends = (0..chunks).map(|i| {
        let first = i * per_chunk;
        let cells: Vec<(bool, Target)> = (first..(first + per_chunk).min(count))
            .map(|g| {
                // Half and half; all of one kind where the node has none of the other.
                let blocked =
                    targets.allowed.is_empty() || (!targets.blocked.is_empty() && g % 2 == 0);
                let list = if blocked {
                    &targets.blocked
                } else {
                    &targets.allowed
                };
                (blocked, list[(g / 2) % list.len()].clone())
            })
            .collect();
        let source = &targets.sources[i % targets.sources.len()];
        let at = began + Duration::from_secs_f64(first as f64 / rate);
        async move {
            tokio::time::sleep_until(at).await;
            let offset_ms = began.elapsed().as_secs_f64() * 1e3;
            let probe: Vec<Target> = cells.iter().map(|(_, t)| t.clone()).collect();
            let results = backend.probe(source, &probe, timing).await;
            (cells, results, offset_ms)
        }
    });
    let mut pending = futures::stream::iter(sends).buffer_unordered(chunks.max(1));
    let mut step = RampStep {
        rate,
        achieved: 0.0,
        blocked_sent: 0,
        blocked_connected: 0,
        allowed_sent: 0,
        allowed_dropped: 0,
        other: 0,
    };
    let mut starts: Vec<f64> = Vec::with_capacity(count);
    while let Some((cells, results, offset_ms)) = pending.next().await {
        let results: Vec<ProbeResult> = results?;
        for ((blocked, _), result) in cells.iter().zip(&results) {
            starts.push(offset_ms + result.started_ms);
            match (blocked, result.outcome) {
                (true, Outcome::Connected) => {
                    step.blocked_sent += 1;
                    step.blocked_connected += 1;
                }
                (true, outcome) if outcome.is_blocked() => step.blocked_sent += 1,
                (false, Outcome::Connected) => step.allowed_sent += 1,
                (false, Outcome::Timeout) => {
                    step.allowed_sent += 1;
                    step.allowed_dropped += 1;
                }
                _ => step.other += 1,
            }
        }
    }
    step.achieved = achieved_rate(&starts, rate);
    tokio::time::sleep(PAUSE).await;
    Ok(step)
}

/// Connections per second between the first start and the last: over `n` starts, `n − 1`
/// intervals. A single start achieved the rate asked.
fn achieved_rate(starts: &[f64], asked: f64) -> f64 {
    let first = starts.iter().copied().reduce(f64::min);
    let last = starts.iter().copied().reduce(f64::max);
    match (first, last) {
        (Some(first), Some(last)) if last > first && starts.len() > 1 => {
            (starts.len() - 1) as f64 / ((last - first) / 1e3)
        }
        _ => asked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, blocked: (usize, usize), allowed: (usize, usize)) -> RampStep {
        RampStep {
            rate,
            achieved: rate,
            blocked_sent: blocked.1,
            blocked_connected: blocked.0,
            allowed_sent: allowed.1,
            allowed_dropped: allowed.0,
            other: 0,
        }
    }

    #[test]
    fn a_step_gives_way_on_a_share_of_several_cells_only() {
        assert_eq!(step(1000.0, (0, 500), (0, 500)).gave_way(), None);
        // One lost packet in 500 is not a knee.
        assert_eq!(step(1000.0, (0, 500), (2, 500)).gave_way(), None);
        assert_eq!(
            step(1000.0, (30, 500), (0, 500)).gave_way(),
            Some(GiveWay::FailsOpen)
        );
        assert_eq!(
            step(1000.0, (0, 500), (40, 500)).gave_way(),
            Some(GiveWay::FailsClosed)
        );
        // Three of a hundred thousand: under the share.
        assert_eq!(step(1e5, (3, 100_000), (0, 1)).gave_way(), None);
    }

    #[test]
    fn the_estimate_is_what_the_enforcer_judged_not_the_grid_step() {
        // A capacity of 1,000/s met at 1,265/s: 265 of every 1,265 skip the queue.
        let share = 265.0 / 1265.0;
        let leaked = (share * 632.0) as usize;
        let first = step(1265.0, (leaked, 632), (0, 633));
        let second = step(1265.0, (leaked, 632), (0, 633));
        let knee = estimate(&first, &second, Some(843.0)).unwrap();
        assert_eq!(knee.mode, GiveWay::FailsOpen);
        assert!(
            (knee.estimate - 1000.0).abs() < 10.0,
            "estimate {}",
            knee.estimate
        );
        assert_eq!(knee.held_at, Some(843.0));
    }

    #[test]
    fn the_achieved_rate_counts_intervals_between_starts() {
        let starts: Vec<f64> = (0..101).map(|i| i as f64 * 2.0).collect();
        assert!((achieved_rate(&starts, 1.0) - 500.0).abs() < 1e-6);
        assert_eq!(achieved_rate(&[3.0], 42.0), 42.0);
    }
}
