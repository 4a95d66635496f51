//! How long a silent probe is worth waiting for. A dropped probe is not "no answer within the
//! timeout" but "no answer where an allowed one would certainly have answered": the runner keeps
//! the time every answer took (connected or refused, across rounds and steps), and gives each round
//! a deadline of several times the slowest of them, never under a floor. The agent then waits that
//! long for a silent target, tries it once more independently (a new SYN from a new port; the
//! datagram again) and waits as long again: a drop costs two deadlines, not the timeout, and one
//! lost packet cannot turn an allowed cell into a blocked one. `--probe-timeout` stays the upper
//! bound: until enough answers are known, and wherever twice the deadline would reach it, probes
//! wait the whole timeout.

use std::collections::VecDeque;
use std::time::Duration;

use polygraph_agent::wire::Outcome;

use crate::backend::ProbeTiming;
use crate::matrix::ObservedTable;

/// The deadline is this many times the slowest recent answer (its 99th percentile).
const MARGIN: f64 = 4.0;
/// Never less: under 100 ms an agent descheduled for a moment on a loaded node could miss it.
pub const FLOOR: Duration = Duration::from_millis(100);
/// Answers needed before the deadline replaces the timeout.
const MIN_ANSWERS: usize = 20;
/// How many recent answers count: the deadline follows the cluster as its load changes.
const WINDOW: usize = 4000;

/// The answers seen so far, and the deadline they imply.
#[derive(Debug, Clone)]
pub struct Deadlines {
    timeout: Duration,
    answers: VecDeque<f64>,
}

impl Deadlines {
    pub fn new(timeout: Duration) -> Deadlines {
        Deadlines {
            timeout,
            answers: VecDeque::new(),
        }
    }

    /// Learns from a round: how long each answered probe took.
    pub fn learn(&mut self, observed: &ObservedTable) {
        for (_, _, observation) in observed.observations() {
            if matches!(observation.outcome, Outcome::Connected | Outcome::Refused) {
                self.answers.push_back(observation.elapsed_ms);
                if self.answers.len() > WINDOW {
                    self.answers.pop_front();
                }
            }
        }
    }

    /// The slowest recent answer that counts (the 99th percentile), in ms.
    fn slowest_ms(&self) -> Option<f64> {
        if self.answers.len() < MIN_ANSWERS {
            return None;
        }
        let mut sorted: Vec<f64> = self.answers.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() as f64) * 0.99).ceil() as usize;
        sorted.get(index.saturating_sub(1)).copied()
    }

    /// The next round's timing.
    pub fn timing(&self) -> ProbeTiming {
        let deadline = self
            .slowest_ms()
            .map(|ms| Duration::from_secs_f64((ms * MARGIN / 1e3).max(0.0)).max(FLOOR));
        ProbeTiming {
            timeout: self.timeout,
            deadline: deadline.filter(|d| *d * 2 < self.timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Observation;
    use crate::model::{PodRef, PortProtocol, Protocol};

    fn round(elapsed: &[(Outcome, f64)]) -> ObservedTable {
        let pods: Vec<PodRef> = (0..elapsed.len())
            .map(|i| format!("x/p{i}").parse().unwrap())
            .collect();
        let mut table = ObservedTable::new(pods, vec![PortProtocol::new(80, Protocol::Tcp)]);
        for (i, (outcome, ms)) in elapsed.iter().enumerate() {
            table.set(
                0,
                i,
                0,
                Observation {
                    outcome: *outcome,
                    started_ms: 0.0,
                    elapsed_ms: *ms,
                    peer: None,
                    detail: None,
                    attempts: 1,
                },
            );
        }
        table
    }

    #[test]
    fn the_timeout_rules_until_enough_answers_are_known() {
        let mut deadlines = Deadlines::new(Duration::from_secs(1));
        assert_eq!(deadlines.timing().deadline, None);
        deadlines.learn(&round(&[(Outcome::Connected, 2.0); 10]));
        assert_eq!(deadlines.timing().deadline, None, "10 answers are too few");
        // Silence teaches nothing: timeouts are what the deadline decides.
        deadlines.learn(&round(&[(Outcome::Timeout, 1000.0); 30]));
        assert_eq!(deadlines.timing().deadline, None);
        deadlines.learn(&round(&[(Outcome::Refused, 1.0); 10]));
        assert_eq!(
            deadlines.timing().deadline,
            Some(FLOOR),
            "fast answers: the floor"
        );
        assert_eq!(deadlines.timing().silent_wait(), FLOOR * 2);
    }

    #[test]
    fn slow_answers_raise_the_deadline_and_near_the_timeout_it_gives_way() {
        let mut deadlines = Deadlines::new(Duration::from_secs(1));
        let mut answers = vec![(Outcome::Connected, 5.0); 99];
        answers.push((Outcome::Connected, 60.0));
        deadlines.learn(&round(&answers));
        // The 99th percentile is 5 ms: the one slow answer in a hundred is the 1%.
        assert_eq!(deadlines.timing().deadline, Some(FLOOR));
        deadlines.learn(&round(&[(Outcome::Connected, 60.0); 10]));
        assert_eq!(
            deadlines.timing().deadline,
            Some(Duration::from_millis(240))
        );
        deadlines.learn(&round(&[(Outcome::Connected, 200.0); 100]));
        assert_eq!(
            deadlines.timing().deadline,
            None,
            "twice 800 ms reaches the timeout: one attempt, the whole timeout"
        );
        assert_eq!(deadlines.timing().silent_wait(), Duration::from_secs(1));
    }
}
