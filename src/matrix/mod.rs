//! Cells and truth tables: the vocabulary the oracle and the runner share.
//!
//! A cell is (from pod, to pod, port/protocol). A truth table holds, for every cell, whether the
//! source's egress and the destination's ingress allow it, and whether the answer is undefined or
//! must be a drop, whether a pod's hairpin through its Service is judged, and whether a name fails
//! to resolve: 6 bits in a byte a cell, so the benchmark's 4 million cells fit in 4 MB.

mod grid;
mod observed;

pub use grid::Grid;
pub use observed::{Judgement, Observation, ObservedTable, Placement};

use crate::model::{PodId, PodRef, PortProtocol};

/// The spec's answer for one cell, per direction (a connection needs both). Not to be confused
/// with `run::Verdict`, the runner's judgement of an observed cell against this answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// The source pod's egress allows it (always true when the source isn't egress-isolated).
    pub egress: bool,
    /// The destination pod's ingress allows it.
    pub ingress: bool,
    /// The spec leaves the answer to the implementation (same-priority cluster policies that
    /// disagree, or a `domainNames` peer that needs DNS): shown, never failed. `egress` and
    /// `ingress` then hold the allowing reading.
    pub undefined: bool,
    /// Blocked by a cluster policy's `Deny`, which the spec defines as a drop: a refusal here is
    /// its own failure.
    pub drop: bool,
    /// A pod reaching itself through its own Service, with the answer decided by a cluster
    /// policy: the ClusterNetworkPolicy docs make that traffic subject to policy, so it is judged
    /// like any other cell (a pod to itself is otherwise undefined by the spec).
    pub judged_self: bool,
    /// The probe goes by name, and the source cannot resolve it: its egress to the cluster DNS is
    /// blocked. The answer is `dns-failed`, whatever the two directions say of the connection
    /// itself (which they still hold, for the explanation).
    pub no_dns: bool,
}

impl Decision {
    /// Both directions allow, with no tier questions: the plain NetworkPolicy answer.
    pub fn new(egress: bool, ingress: bool) -> Self {
        Decision {
            egress,
            ingress,
            ..Decision::default()
        }
    }

    /// The cell from a pod's own node into it: "the only allowed connections into the pod are
    /// those from the pod's node and those allowed by the ingress list" (NetworkPolicy), so
    /// allowed; where a cluster policy's Deny would block it, undefined (the cluster-scoped API
    /// says nothing of a pod's own node).
    pub fn from_own_node(self) -> Self {
        Decision {
            undefined: self.undefined || self.drop,
            drop: false,
            egress: true,
            ingress: true,
            ..self
        }
    }

    /// A connection gets through: both directions allow it, and the name (if any) resolves.
    pub fn allowed(self) -> bool {
        self.egress && self.ingress && !self.no_dns
    }

    fn to_bits(self) -> u8 {
        u8::from(self.egress)
            | (u8::from(self.ingress) << 1)
            | (u8::from(self.undefined) << 2)
            | (u8::from(self.drop) << 3)
            | (u8::from(self.judged_self) << 4)
            | (u8::from(self.no_dns) << 5)
    }

    fn from_bits(bits: u8) -> Self {
        Decision {
            egress: bits & 1 != 0,
            ingress: bits & 2 != 0,
            undefined: bits & 4 != 0,
            drop: bits & 8 != 0,
            judged_self: bits & 16 != 0,
            no_dns: bits & 32 != 0,
        }
    }
}

/// One cell's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell {
    pub from: PodId,
    pub to: PodId,
    pub port_protocol: PortProtocol,
}

impl Cell {
    /// A pod talking to itself: the spec leaves it undefined (CNIs differ; upstream skips it).
    pub fn is_self(&self) -> bool {
        self.from == self.to
    }
}

/// Verdicts for every (from, to) pair on each (port, protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    grid: Grid<u8>,
}

impl TruthTable {
    /// A table with every cell blocked in both directions, to be filled in.
    pub fn new(pods: Vec<PodRef>, port_protocols: Vec<PortProtocol>) -> Self {
        TruthTable {
            grid: Grid::new(pods, port_protocols, 0),
        }
    }

    pub fn pods(&self) -> &[PodRef] {
        self.grid.pods()
    }

    pub fn port_protocols(&self) -> &[PortProtocol] {
        self.grid.port_protocols()
    }

    pub fn set(&mut self, pp_index: usize, from: PodId, to: PodId, verdict: Decision) {
        self.grid.set(pp_index, from, to, verdict.to_bits());
    }

    pub fn get(&self, pp_index: usize, from: PodId, to: PodId) -> Decision {
        Decision::from_bits(*self.grid.get(pp_index, from, to))
    }

    /// Every pod's cell to itself back to undefined by the spec: no longer judged where a
    /// cluster policy decided its hairpin (`--service-hairpin exempt`).
    pub fn unjudge_self(&mut self) {
        for k in 0..self.port_protocols().len() {
            for pod in 0..self.pods().len() {
                let mut decision = self.get(k, pod, pod);
                decision.judged_self = false;
                self.set(k, pod, pod, decision);
            }
        }
    }

    /// Every cell with its verdict, ordered by (port, protocol), then from, then to.
    pub fn cells(&self) -> impl Iterator<Item = (Cell, Decision)> + '_ {
        self.grid
            .cells()
            .map(|(_, cell, bits)| (cell, Decision::from_bits(*bits)))
    }

    pub fn len(&self) -> usize {
        self.grid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grid.is_empty()
    }

    pub fn allowed_count(&self) -> usize {
        self.grid
            .values()
            .iter()
            .filter(|&&b| Decision::from_bits(b).allowed())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn set_and_get_round_trip() {
        let pods: Vec<PodRef> = ["x/a", "x/b"].iter().map(|p| p.parse().unwrap()).collect();
        let pps = vec![
            PortProtocol::new(80, Protocol::Tcp),
            PortProtocol::new(81, Protocol::Udp),
        ];
        let mut table = TruthTable::new(pods, pps);
        let v = Decision::new(true, false);
        table.set(1, 0, 1, v);
        assert_eq!(table.get(1, 0, 1), v);
        let unresolved = Decision {
            no_dns: true,
            ..Decision::new(true, true)
        };
        table.set(1, 1, 0, unresolved);
        assert_eq!(table.get(1, 1, 0), unresolved);
        assert!(
            !unresolved.allowed(),
            "a name that does not resolve connects nowhere"
        );
        assert_eq!(table.get(0, 0, 1), Decision::new(false, false));
        assert_eq!(table.len(), 8);
        table.set(0, 1, 1, Decision::new(true, true));
        assert_eq!(table.allowed_count(), 1);
        let (cell, _) = table.cells().find(|(_, v)| v.allowed()).unwrap();
        assert!(cell.is_self());
        assert_eq!(cell.port_protocol.port, 80);
    }
}
