//! What the packets said, cell by cell, and how that compares with the spec.

use polygraph_agent::wire::Outcome;

use super::{Cell, Decision, Grid, TruthTable};
use crate::model::{OUTSIDE_NAMESPACE, PodRef, PortProtocol};

/// One probe's result as the runner keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub outcome: Outcome,
    /// When the attempt started, in ms after its batch started.
    pub started_ms: f64,
    pub elapsed_ms: f64,
    pub peer: Option<String>,
    pub detail: Option<String>,
    /// Attempts the verdict took: 2 or more for a silent target whose silence further,
    /// independent attempts confirmed (`run::Deadlines`), or for an answer that only a later
    /// attempt got.
    pub attempts: u32,
    /// For an answer: how long the attempt that got it took (the agent's `answer_ms`).
    pub answer_ms: Option<f64>,
    /// New connections in flight when its chunk was sent (`run::Pacer`), itself included: the
    /// load it met. Lost attempts count as the link's loss only at low load.
    pub inflight: usize,
}

/// Observations for the cells that were probed. A cell is not probed when its destination serves
/// nothing on that (port, protocol) (with nobody listening, a refusal says nothing about policy) or
/// has another IP family than the source (there is no route between them).
#[derive(Debug, Clone)]
pub struct ObservedTable {
    grid: Grid<Option<Observation>>,
    /// The node each pod ran on, where the backend knows (Kubernetes does).
    nodes: Vec<Option<String>>,
}

/// Whether a cell's traffic stayed on one node or crossed between nodes: CNIs enforce the two
/// paths differently (veth to veth on one host; overlay or underlay between hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    SameNode,
    CrossNode,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::SameNode => "same-node",
            Placement::CrossNode => "cross-node",
        })
    }
}

/// How a cell's observation relates to the spec's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    /// Observed what the spec says.
    Match,
    /// Observed the opposite of what the spec says: an enforcement gap or over-blocking.
    Wrong,
    /// A pod to itself, differing from the computed answer: undefined by the spec, not a failure.
    SelfDiffers,
    /// The spec leaves the cell to the implementation (same-priority cluster policies that
    /// disagree, a rule that needs DNS): whatever was observed, not a failure.
    Undefined,
    /// Blocked as required, but answered (a reset, an ICMP unreachable or an ICMP
    /// administratively-prohibited) where a cluster policy's Deny requires a silent drop: its own failure, since tools and users rely on drops.
    RefusedNotDropped,
    /// The protocol is unavailable; never counted as blocked.
    Unsupported,
    /// The probe could not run, or reached the wrong pod.
    Error,
    /// Not probed: nothing listens there, or source and destination have different IP families.
    NotProbed,
}

impl Judgement {
    /// Whether this cell makes a run fail.
    pub fn fails(self) -> bool {
        matches!(
            self,
            Judgement::Wrong | Judgement::Error | Judgement::RefusedNotDropped
        )
    }
}

impl ObservedTable {
    pub fn new(pods: Vec<PodRef>, port_protocols: Vec<PortProtocol>) -> Self {
        ObservedTable {
            nodes: vec![None; pods.len()],
            grid: Grid::new(pods, port_protocols, None),
        }
    }

    /// Records the node of the pod at `index`.
    pub fn set_node(&mut self, index: usize, node: Option<String>) {
        if let Some(slot) = self.nodes.get_mut(index) {
            *slot = node;
        }
    }

    /// The node of the pod at `index`, when the backend knows it.
    pub fn node(&self, index: usize) -> Option<&str> {
        self.nodes.get(index)?.as_deref()
    }

    /// Same-node or cross-node, when both pods' nodes are known.
    pub fn placement(&self, from: usize, to: usize) -> Option<Placement> {
        match (self.nodes.get(from)?, self.nodes.get(to)?) {
            (Some(a), Some(b)) if a == b => Some(Placement::SameNode),
            (Some(_), Some(_)) => Some(Placement::CrossNode),
            _ => None,
        }
    }

    pub fn pods(&self) -> &[PodRef] {
        self.grid.pods()
    }

    pub fn port_protocols(&self) -> &[PortProtocol] {
        self.grid.port_protocols()
    }

    pub fn set(&mut self, pp_index: usize, from: usize, to: usize, observation: Observation) {
        self.grid.set(pp_index, from, to, Some(observation));
    }

    pub fn get(&self, pp_index: usize, from: usize, to: usize) -> Option<&Observation> {
        self.grid.get(pp_index, from, to).as_ref()
    }

    /// Every probed cell with its observation.
    pub fn observations(&self) -> impl Iterator<Item = (usize, Cell, &Observation)> + '_ {
        self.grid
            .cells()
            .filter_map(|(k, cell, o)| o.as_ref().map(|o| (k, cell, o)))
    }

    /// How many probes of the round needed confirming attempts.
    pub fn confirmations(&self) -> usize {
        self.observations()
            .filter(|(_, _, o)| o.attempts > 1)
            .count()
    }

    /// Compares one cell with the spec's verdict.
    pub fn judge(
        &self,
        expected: &TruthTable,
        pp_index: usize,
        from: usize,
        to: usize,
    ) -> Judgement {
        let Some(observation) = self.get(pp_index, from, to) else {
            return Judgement::NotProbed;
        };
        let spec: Decision = expected.get(pp_index, from, to);
        let allowed = match observation.outcome {
            Outcome::Unsupported => return Judgement::Unsupported,
            Outcome::Error => return Judgement::Error,
            // Whether a name resolves does not depend on hairpin: judged strictly, self included.
            Outcome::DnsFailed if spec.undefined => return Judgement::Undefined,
            Outcome::DnsFailed if spec.no_dns => return Judgement::Match,
            Outcome::DnsFailed => return Judgement::Wrong,
            _ if spec.no_dns && !spec.undefined => return Judgement::Wrong,
            Outcome::Connected => {
                // Reaching some other pod (or something that isn't an agent) proves nothing. A
                // server beyond the cluster the user named need not be polygraph's: a connection
                // is its answer, unless it claims another identity.
                let to = &self.pods()[to];
                let silent_outsider =
                    to.namespace == OUTSIDE_NAMESPACE && observation.peer.is_none();
                if !silent_outsider && observation.peer.as_deref() != Some(to.to_string().as_str())
                {
                    return Judgement::Error;
                }
                true
            }
            // Three kinds of "no": a refusal, an administratively-prohibited answer, silence.
            // NetworkPolicy takes any of them as blocked.
            Outcome::Refused | Outcome::Filtered | Outcome::Timeout => false,
        };
        if spec.undefined {
            return Judgement::Undefined;
        }
        // A cluster policy's Deny is a silent drop: an answer, even a "prohibited" one, is not.
        if spec.drop
            && !spec.allowed()
            && matches!(observation.outcome, Outcome::Refused | Outcome::Filtered)
        {
            return Judgement::RefusedNotDropped;
        }
        match (allowed == spec.allowed(), from == to && !spec.judged_self) {
            (true, _) => Judgement::Match,
            (false, true) => Judgement::SelfDiffers,
            (false, false) => Judgement::Wrong,
        }
    }

    /// Every cell with its (port, protocol) index, coordinates, judgement and observation.
    pub fn judged<'a>(
        &'a self,
        expected: &'a TruthTable,
    ) -> impl Iterator<Item = (usize, Cell, Judgement, Option<&'a Observation>)> + 'a {
        self.grid.cells().map(move |(k, cell, observation)| {
            (
                k,
                cell,
                self.judge(expected, k, cell.from, cell.to),
                observation.as_ref(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn observation(outcome: Outcome, peer: Option<&str>) -> Observation {
        Observation {
            outcome,
            started_ms: 0.0,
            elapsed_ms: 1.0,
            peer: peer.map(str::to_string),
            detail: None,
            attempts: 1,
            answer_ms: None,
            inflight: 1,
        }
    }

    #[test]
    fn judgements() {
        let pods: Vec<PodRef> = ["x/a", "x/b"].iter().map(|p| p.parse().unwrap()).collect();
        let pps = vec![PortProtocol::new(80, Protocol::Tcp)];
        let mut spec = TruthTable::new(pods.clone(), pps.clone());
        spec.set(0, 0, 1, Decision::new(true, true));
        let mut seen = ObservedTable::new(pods, pps);
        seen.set(0, 0, 1, observation(Outcome::Connected, Some("x/b")));
        assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Match);
        seen.set(0, 0, 1, observation(Outcome::Connected, Some("x/a")));
        assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Error, "wrong peer");
        seen.set(0, 0, 1, observation(Outcome::Timeout, None));
        assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Wrong);
        seen.set(0, 1, 0, observation(Outcome::Connected, Some("x/a")));
        assert_eq!(
            seen.judge(&spec, 0, 1, 0),
            Judgement::Wrong,
            "spec blocks x/b -> x/a"
        );
        seen.set(0, 1, 0, observation(Outcome::Refused, None));
        assert_eq!(seen.judge(&spec, 0, 1, 0), Judgement::Match);
        seen.set(0, 1, 1, observation(Outcome::Connected, Some("x/b")));
        assert_eq!(seen.judge(&spec, 0, 1, 1), Judgement::SelfDiffers);
        seen.set(0, 0, 0, observation(Outcome::Unsupported, None));
        assert_eq!(seen.judge(&spec, 0, 0, 0), Judgement::Unsupported);
        assert!(
            !Judgement::Unsupported.fails() && Judgement::Wrong.fails() && Judgement::Error.fails()
        );
        let fresh = ObservedTable::new(
            vec!["x/a".parse().unwrap()],
            vec![PortProtocol::new(80, Protocol::Tcp)],
        );
        let spec1 = TruthTable::new(fresh.pods().to_vec(), fresh.port_protocols().to_vec());
        assert_eq!(fresh.judge(&spec1, 0, 0, 0), Judgement::NotProbed);
    }

    #[test]
    fn undefined_cells_are_never_wrong_and_a_refused_deny_is_its_own_failure() {
        let pods: Vec<PodRef> = ["x/a", "x/b"].iter().map(|p| p.parse().unwrap()).collect();
        let pps = vec![PortProtocol::new(80, Protocol::Tcp)];
        let mut spec = TruthTable::new(pods.clone(), pps.clone());
        spec.set(
            0,
            0,
            1,
            Decision {
                undefined: true,
                ..Decision::new(true, false)
            },
        );
        spec.set(
            0,
            1,
            0,
            Decision {
                drop: true,
                ..Decision::new(false, true)
            },
        );
        let mut seen = ObservedTable::new(pods, pps);
        for outcome in [Outcome::Connected, Outcome::Timeout] {
            seen.set(0, 0, 1, observation(outcome, Some("x/b")));
            assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Undefined);
        }
        seen.set(0, 0, 1, observation(Outcome::Connected, Some("x/a")));
        assert_eq!(
            seen.judge(&spec, 0, 0, 1),
            Judgement::Error,
            "wrong peer first"
        );
        seen.set(0, 1, 0, observation(Outcome::Timeout, None));
        assert_eq!(seen.judge(&spec, 0, 1, 0), Judgement::Match);
        seen.set(0, 1, 0, observation(Outcome::Refused, None));
        assert_eq!(seen.judge(&spec, 0, 1, 0), Judgement::RefusedNotDropped);
        assert!(Judgement::RefusedNotDropped.fails() && !Judgement::Undefined.fails());
        // "Administratively prohibited" is an answer too: not the silence a Deny requires.
        seen.set(0, 1, 0, observation(Outcome::Filtered, None));
        assert_eq!(seen.judge(&spec, 0, 1, 0), Judgement::RefusedNotDropped);
    }

    #[test]
    fn networkpolicy_takes_every_kind_of_no_as_blocked() {
        let pods: Vec<PodRef> = ["x/a", "x/b"].iter().map(|p| p.parse().unwrap()).collect();
        let pps = vec![PortProtocol::new(80, Protocol::Tcp)];
        let mut spec = TruthTable::new(pods.clone(), pps.clone());
        spec.set(0, 0, 1, Decision::new(true, false));
        let mut seen = ObservedTable::new(pods, pps);
        for outcome in [Outcome::Timeout, Outcome::Refused, Outcome::Filtered] {
            seen.set(0, 0, 1, observation(outcome, None));
            assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Match, "{outcome}");
        }
        seen.set(0, 0, 1, observation(Outcome::Connected, Some("x/b")));
        assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Wrong);
    }

    #[test]
    fn a_failed_name_matches_only_where_the_source_cannot_reach_dns() {
        let pods: Vec<PodRef> = ["x/a", "x/b"].iter().map(|p| p.parse().unwrap()).collect();
        let pps = vec![PortProtocol::new(80, Protocol::Tcp)];
        let mut spec = TruthTable::new(pods.clone(), pps.clone());
        let no_dns = Decision {
            no_dns: true,
            ..Decision::new(true, true)
        };
        spec.set(0, 0, 1, no_dns);
        spec.set(0, 0, 0, no_dns);
        spec.set(0, 1, 0, Decision::new(false, true));
        let mut seen = ObservedTable::new(pods, pps);
        seen.set(0, 0, 1, observation(Outcome::DnsFailed, None));
        assert_eq!(seen.judge(&spec, 0, 0, 1), Judgement::Match);
        for (outcome, peer) in [
            (Outcome::Connected, Some("x/b")),
            (Outcome::Timeout, None),
            (Outcome::Refused, None),
        ] {
            seen.set(0, 0, 1, observation(outcome, peer));
            assert_eq!(
                seen.judge(&spec, 0, 0, 1),
                Judgement::Wrong,
                "{outcome}: the name resolved although DNS is blocked"
            );
        }
        seen.set(0, 0, 0, observation(Outcome::Connected, Some("x/a")));
        assert_eq!(
            seen.judge(&spec, 0, 0, 0),
            Judgement::Wrong,
            "resolution is judged on a pod's own name too"
        );
        seen.set(0, 1, 0, observation(Outcome::DnsFailed, None));
        assert_eq!(
            seen.judge(&spec, 0, 1, 0),
            Judgement::Wrong,
            "blocked is not dns-failed: the name must resolve"
        );
        spec.set(
            0,
            1,
            0,
            Decision {
                undefined: true,
                ..no_dns
            },
        );
        assert_eq!(seen.judge(&spec, 0, 1, 0), Judgement::Undefined);
    }

    #[test]
    fn placement_needs_both_nodes() {
        let pods: Vec<PodRef> = ["x/a", "x/b", "x/c"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let mut seen = ObservedTable::new(pods, vec![PortProtocol::new(80, Protocol::Tcp)]);
        assert_eq!(seen.placement(0, 1), None);
        seen.set_node(0, Some("n1".into()));
        seen.set_node(1, Some("n2".into()));
        seen.set_node(2, Some("n1".into()));
        seen.set_node(7, Some("n9".into()));
        assert_eq!(seen.placement(0, 1), Some(Placement::CrossNode));
        assert_eq!(seen.placement(0, 2), Some(Placement::SameNode));
        assert_eq!(seen.placement(0, 0), Some(Placement::SameNode));
        assert_eq!(seen.placement(0, 5), None);
    }
}
