//! Enforcement timing: what each cell's expectation did at a step (allow→deny, deny→allow, a new
//! pod), how long the cluster took to match it, and the races that reveals.
//!
//! Every observation carries its time from the step's change (the round's start plus the probe's
//! own start within its batch). A cell's latency is the time of the first observation that matched
//! and kept matching; its last wrong observation bounds the race from below. A cell that was wrong
//! and later matched is a *late deny* (traffic the new state forbids got through: a leak window of
//! about its latency) or a *late allow*; one never matched is *never converged*; one that matched
//! and later differed again (while converging, or in the window `--stability` adds after
//! convergence) is *flapping*. The resolution of every figure is
//! the interval between probe rounds, which the step reports.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::matrix::{Grid, TruthTable};
use crate::model::{PodRef, PortProtocol};

/// How a cell's expectation changed at the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Unchanged,
    AllowToDeny,
    DenyToAllow,
    /// To or from a pod that did not exist before the step (the new-pod race).
    NewPod,
}

/// A timing race seen in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Race {
    /// Traffic the spec now forbids got through for a while: a leak window.
    LateDeny,
    /// Traffic the spec now allows was blocked for a while.
    LateAllow,
    /// Never matched the spec before the step's deadline: an enforcement gap.
    NeverConverged,
    /// Matched, then changed again while the step was watched for stability.
    Flapping,
    /// Blocked traffic got through while many probes were in flight, and was blocked when probed
    /// again at a low rate: the enforcer failed open under load (a real leak, but not a misread
    /// policy; kept apart from flapping).
    FailOpen,
}

/// What a deny did to a connection established before it. The spec leaves this open: reported,
/// never failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowFate {
    /// Still carried traffic after the step converged.
    Survived,
    /// Stopped answering (dropped or reset).
    Cut,
}

/// What named a step's leaks `fail-open`: how many blocked cells connected under load, how close
/// together, at what rate of new connections, and the rate at which they were blocked again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FailOpenEvidence {
    /// Blocked cells that connected under load (over the step's rounds).
    pub cells: usize,
    /// The most of them in one round, and the time between the first and last of those.
    pub burst_cells: usize,
    pub burst_ms: f64,
    /// New connections per second in that round, and the most in flight when they were sent.
    pub load_rate: f64,
    pub load_inflight: usize,
    /// The rate at which they were probed again, and blocked.
    pub gentle_rate: f64,
}

impl FailOpenEvidence {
    /// `enforcement failed open under load: 352 blocked cells connected within 40 ms at 2900 new
    /// connections/s (up to 480 in flight); at 200/s they were blocked`.
    pub fn describe(&self) -> String {
        format!(
            "enforcement failed open under load: {} blocked cell{} connected within {:.0} ms at {:.0} new connections/s (up to {} in flight); at {:.0}/s {} blocked",
            self.burst_cells,
            if self.burst_cells == 1 { "" } else { "s" },
            self.burst_ms,
            self.load_rate,
            self.load_inflight,
            self.gentle_rate,
            if self.burst_cells == 1 {
                "it was"
            } else {
                "they were"
            },
        )
    }
}

/// Connections held open across a step whose cells went from allowed to blocked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowSummary {
    /// Established before the change (TCP connections and UDP flows).
    pub held: usize,
    pub survived: usize,
    pub cut: usize,
    /// Of the held ones, TCP / UDP that survived.
    pub tcp_survived: usize,
    pub udp_survived: usize,
}

impl FlowSummary {
    /// Adds another step's (or scenario's) counts.
    pub fn add(&mut self, other: &FlowSummary) {
        self.held += other.held;
        self.survived += other.survived;
        self.cut += other.cut;
        self.tcp_survived += other.tcp_survived;
        self.udp_survived += other.udp_survived;
    }
}

/// One cell's timeline within a step, in ms from the change.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellTiming {
    /// First observation that matched and kept matching.
    pub converged_ms: Option<f64>,
    /// Last observation that differed from the spec.
    pub last_wrong_ms: Option<f64>,
    /// First observation of the cell at all.
    pub first_seen_ms: Option<f64>,
    /// Matched at least once.
    pub matched: bool,
    /// Differed again after matching.
    pub flapped: bool,
    /// Leaked under load and was blocked at a low rate (`Race::FailOpen`).
    pub failed_open: bool,
}

impl CellTiming {
    /// Records one observation at `at_ms`, matching the spec or not. A mismatch after a match is
    /// flapping: enforcement that was in place went away again.
    pub fn observe(&mut self, at_ms: f64, matches: bool) {
        self.first_seen_ms.get_or_insert(at_ms);
        if matches {
            self.converged_ms.get_or_insert(at_ms);
            self.matched = true;
        } else {
            self.flapped |= self.matched;
            self.last_wrong_ms = Some(at_ms);
            self.converged_ms = None;
        }
    }

    /// The race this cell shows, given the spec's answer; `None` when it matched from the first
    /// observation and never changed.
    pub fn race(&self, allowed: bool) -> Option<Race> {
        if self.failed_open {
            Some(Race::FailOpen)
        } else if self.flapped {
            Some(Race::Flapping)
        } else if self.converged_ms.is_none() {
            self.first_seen_ms.map(|_| Race::NeverConverged)
        } else if self.last_wrong_ms.is_some() {
            Some(if allowed {
                Race::LateAllow
            } else {
                Race::LateDeny
            })
        } else {
            None
        }
    }
}

/// How each cell's expectation changed from `before` to `after` (cells are matched by pod names).
pub fn changes(before: &TruthTable, after: &TruthTable) -> Grid<Change> {
    let mut previous: HashMap<(&PodRef, &PodRef, PortProtocol), bool> = HashMap::new();
    for (cell, verdict) in before.cells() {
        previous.insert(
            (
                &before.pods()[cell.from],
                &before.pods()[cell.to],
                cell.port_protocol,
            ),
            verdict.allowed(),
        );
    }
    let mut grid = Grid::new(
        after.pods().to_vec(),
        after.port_protocols().to_vec(),
        Change::Unchanged,
    );
    for (k, pp) in after.port_protocols().iter().enumerate() {
        for (from, src) in after.pods().iter().enumerate() {
            for (to, dst) in after.pods().iter().enumerate() {
                let now = after.get(k, from, to).allowed();
                let change = match previous.get(&(src, dst, *pp)) {
                    None => Change::NewPod,
                    Some(was) if *was == now => Change::Unchanged,
                    Some(true) => Change::AllowToDeny,
                    Some(false) => Change::DenyToAllow,
                };
                grid.set(k, from, to, change);
            }
        }
    }
    grid
}

/// p50 / p90 / p99 / max of some latencies, by nearest rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    pub cells: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencyStats {
    pub fn of(mut values: Vec<f64>) -> LatencyStats {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| -> Option<f64> {
            if values.is_empty() {
                return None;
            }
            let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            Some(values[index])
        };
        LatencyStats {
            cells: values.len(),
            p50_ms: rank(0.5),
            p90_ms: rank(0.9),
            p99_ms: rank(0.99),
            max_ms: values.last().copied(),
        }
    }
}

/// A step's timing in numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepTiming {
    /// Latency of the cells whose expectation went from allowed to blocked.
    pub allow_to_deny: LatencyStats,
    pub deny_to_allow: LatencyStats,
    /// Cells to and from pods created by the step.
    pub new_pod: LatencyStats,
    pub late_deny: usize,
    pub late_allow: usize,
    pub never_converged: usize,
    pub flapping: usize,
    /// Cells that leaked under load and were blocked at a low rate (`Race::FailOpen`).
    pub fail_open: usize,
    /// What showed the enforcer failing open, where it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_open_evidence: Option<FailOpenEvidence>,
    /// The longest leak: the latency of the slowest late-deny cell (traffic got through until
    /// at least its last wrong observation, and stopped by its latency).
    pub max_leak_ms: Option<f64>,
    /// For a step creating pods: the longest time forbidden traffic to or from them got through.
    pub new_pod_leak_ms: Option<f64>,
    /// For a step creating pods: when they were first probed (the blind spot before it).
    pub new_pod_first_probe_ms: Option<f64>,
    /// Mean time between the starts of probe rounds: the resolution of every figure here.
    pub round_interval_ms: Option<f64>,
    /// Connections established before an allow→deny change, and whether the deny cut them.
    pub established: FlowSummary,
    /// Latency of changed cells by the node of their destination, where the backend knows nodes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_node: BTreeMap<String, LatencyStats>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Decision;
    use crate::model::Protocol;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = LatencyStats::of((1..=10).map(f64::from).rev().collect());
        assert_eq!(
            (s.cells, s.p50_ms, s.p90_ms, s.max_ms),
            (10, Some(5.0), Some(9.0), Some(10.0))
        );
        assert_eq!(LatencyStats::of(vec![]).max_ms, None);
        assert_eq!(LatencyStats::of(vec![7.0]).p90_ms, Some(7.0));
    }

    #[test]
    fn a_cell_timeline_classifies_its_race() {
        let mut clean = CellTiming::default();
        clean.observe(10.0, true);
        clean.observe(1010.0, true);
        assert_eq!((clean.race(false), clean.converged_ms), (None, Some(10.0)));

        let mut leak = CellTiming::default();
        leak.observe(10.0, false);
        leak.observe(1010.0, false);
        leak.observe(2010.0, true);
        assert_eq!(leak.race(false), Some(Race::LateDeny));
        assert_eq!(
            (leak.last_wrong_ms, leak.converged_ms),
            (Some(1010.0), Some(2010.0))
        );
        assert_eq!(leak.race(true), Some(Race::LateAllow));

        let mut gap = CellTiming::default();
        gap.observe(10.0, false);
        assert_eq!(gap.race(false), Some(Race::NeverConverged));
        assert_eq!(CellTiming::default().race(false), None, "never probed");

        let mut flap = clean;
        flap.observe(3000.0, false);
        flap.observe(4000.0, true);
        assert_eq!(flap.race(true), Some(Race::Flapping));
    }

    #[test]
    fn changes_match_cells_by_pod_name() {
        let pp = PortProtocol::new(80, Protocol::Tcp);
        let pods =
            |names: &[&str]| -> Vec<PodRef> { names.iter().map(|n| n.parse().unwrap()).collect() };
        let allow = Decision::new(true, true);
        let mut before = TruthTable::new(pods(&["x/a", "x/b"]), vec![pp]);
        before.set(0, 0, 1, allow);
        before.set(0, 1, 0, allow);
        // After: x/c is new, x/a -> x/b now denied, x/b -> x/a still allowed, x/a -> x/a was denied
        // and now allowed.
        let mut after = TruthTable::new(pods(&["x/a", "x/b", "x/c"]), vec![pp]);
        after.set(0, 1, 0, allow);
        after.set(0, 0, 0, allow);
        let c = changes(&before, &after);
        assert_eq!(*c.get(0, 0, 1), Change::AllowToDeny);
        assert_eq!(*c.get(0, 1, 0), Change::Unchanged);
        assert_eq!(*c.get(0, 0, 0), Change::DenyToAllow);
        assert_eq!(*c.get(0, 2, 0), Change::NewPod);
        assert_eq!(*c.get(0, 0, 2), Change::NewPod);
    }
}
