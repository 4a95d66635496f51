//! How long a silent probe is worth waiting for. A dropped probe is not "no answer within the
//! timeout" but "no answer where an allowed one would certainly have answered": the runner keeps
//! the time every answer took (connected or refused, across rounds and steps), and gives each round
//! a deadline of several times the slowest of them, never under a floor. The agent then waits that
//! long for a silent target, tries it once more independently (a new SYN from a new port; the
//! datagram again) and waits as long again: a drop costs two deadlines, not the timeout, and one
//! lost packet cannot turn an allowed cell into a blocked one. `--probe-timeout` stays the upper
//! bound: until enough answers are known, and wherever twice the deadline would reach it, the
//! deadline is half the timeout, so a silent target still gets its confirming attempts within the
//! timeout (one attempt waiting the whole timeout, the design before deadlines, is what a lossy
//! network turns into false drops).
//!
//! On a lossy network two attempts are not enough: with 10% loss on each link a pod-to-pod round
//! trip crosses four, and a third of the attempts go unanswered. The answers tell how many:
//! an answer that only a confirming attempt got is a lost first attempt. From the share of those
//! the runner asks for as many attempts as make a false silence less likely than one in a
//! billion (`MISS`), up to the agent's `MAX_ATTEMPTS`; they go together after the first deadline,
//! so they cost no extra time. The deadline itself learns from each answer's own attempt
//! (`answer_ms`), not from the wait before it, or every lost first attempt would stretch it.

use std::collections::VecDeque;
use std::time::Duration;

use polygraph_agent::wire::MAX_ATTEMPTS;

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
/// The chance, per allowed probe, that every attempt is lost which the attempts are chosen for.
const MISS: f64 = 1e-9;

/// One answer: how long its attempt took, and whether an earlier attempt went unanswered (`None`
/// where no deadline could show it: one attempt waited the whole timeout).
#[derive(Debug, Clone, Copy)]
struct Answer {
    ms: f64,
    retried: Option<bool>,
}

/// The answers seen so far, and the deadline and attempts they imply.
#[derive(Debug, Clone)]
pub struct Deadlines {
    timeout: Duration,
    answers: VecDeque<Answer>,
}

impl Deadlines {
    pub fn new(timeout: Duration) -> Deadlines {
        Deadlines {
            timeout,
            answers: VecDeque::new(),
        }
    }

    /// Learns from a round probed with `timing`: how long each answered probe took, and whether
    /// its first attempt was lost. Lost attempts count at any load: counting them only at low
    /// load left a lossy run at two attempts (its probes are never at low load), and CI's 10%
    /// loss test then saw false silences. The pacer reads loss far above the link's own share,
    /// at load, as congestion.
    pub fn learn(&mut self, observed: &ObservedTable, timing: ProbeTiming) {
        let confirming = timing.effective_deadline().is_some();
        for (_, _, observation) in observed.observations() {
            if observation.outcome.is_answer() {
                self.answers.push_back(Answer {
                    ms: observation.answer_ms.unwrap_or(observation.elapsed_ms),
                    retried: confirming.then_some(observation.attempts > 1),
                });
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
        let mut sorted: Vec<f64> = self.answers.iter().map(|a| a.ms).collect();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() as f64) * 0.99).ceil() as usize;
        sorted.get(index.saturating_sub(1)).copied()
    }

    /// The share of recent answers whose first attempt went unanswered: the network's loss of a
    /// whole attempt, as far as it shows.
    pub fn lost_share(&self) -> f64 {
        let shown: Vec<bool> = self.answers.iter().filter_map(|a| a.retried).collect();
        if shown.len() < MIN_ANSWERS {
            return 0.0;
        }
        let retried = shown.iter().filter(|r| **r).count();
        retried as f64 / shown.len() as f64
    }

    /// Attempts enough that all of them are lost less often than `MISS`, when each is lost with
    /// `lost` (at least 2, at most the agent's maximum).
    fn attempts_for(lost: f64) -> u32 {
        if lost <= 0.0 {
            return 2;
        }
        if lost >= 1.0 {
            return MAX_ATTEMPTS;
        }
        let needed = (MISS.ln() / lost.ln()).ceil();
        (needed as u32).clamp(2, MAX_ATTEMPTS)
    }

    /// The next round's timing.
    pub fn timing(&self) -> ProbeTiming {
        let half = ProbeTiming::longest_deadline(self.timeout);
        let deadline = match self.slowest_ms() {
            Some(ms) => Duration::from_secs_f64((ms * MARGIN / 1e3).max(0.0))
                .max(FLOOR)
                .min(half),
            None => half,
        };
        ProbeTiming {
            timeout: self.timeout,
            deadline: (!deadline.is_zero()).then_some(deadline),
            attempts: Self::attempts_for(self.lost_share()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Observation;
    use crate::model::{PodRef, PortProtocol, Protocol};
    use polygraph_agent::wire::Outcome;

    /// Rounds probed with a deadline: the ones that show lost first attempts.
    const CONFIRMING: ProbeTiming = ProbeTiming {
        timeout: Duration::from_secs(1),
        deadline: Some(FLOOR),
        attempts: 2,
    };

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
                    answer_ms: None,
                    inflight: 1,
                },
            );
        }
        table
    }

    #[test]
    fn half_the_timeout_rules_until_enough_answers_are_known() {
        let half = Some(Duration::from_millis(499));
        let mut deadlines = Deadlines::new(Duration::from_secs(1));
        assert_eq!(deadlines.timing().deadline, half);
        assert_eq!(deadlines.timing().silent_wait(), Duration::from_millis(998));
        deadlines.learn(&round(&[(Outcome::Connected, 2.0); 10]), CONFIRMING);
        assert_eq!(deadlines.timing().deadline, half, "10 answers are too few");
        // Silence teaches nothing: timeouts are what the deadline decides.
        deadlines.learn(&round(&[(Outcome::Timeout, 1000.0); 30]), CONFIRMING);
        assert_eq!(deadlines.timing().deadline, half);
        deadlines.learn(&round(&[(Outcome::Refused, 1.0); 10]), CONFIRMING);
        assert_eq!(
            deadlines.timing().deadline,
            Some(FLOOR),
            "fast answers: the floor"
        );
        assert_eq!(deadlines.timing().silent_wait(), FLOOR * 2);
    }

    #[test]
    fn slow_answers_raise_the_deadline_up_to_half_the_timeout() {
        let mut deadlines = Deadlines::new(Duration::from_secs(1));
        let mut answers = vec![(Outcome::Connected, 5.0); 99];
        answers.push((Outcome::Connected, 60.0));
        deadlines.learn(&round(&answers), CONFIRMING);
        // The 99th percentile is 5 ms: the one slow answer in a hundred is the 1%.
        assert_eq!(deadlines.timing().deadline, Some(FLOOR));
        deadlines.learn(&round(&[(Outcome::Connected, 60.0); 10]), CONFIRMING);
        assert_eq!(
            deadlines.timing().deadline,
            Some(Duration::from_millis(240))
        );
        deadlines.learn(&round(&[(Outcome::Connected, 200.0); 100]), CONFIRMING);
        assert_eq!(
            deadlines.timing().deadline,
            Some(Duration::from_millis(499)),
            "twice 800 ms would pass the timeout: two attempts within it"
        );
        assert_eq!(deadlines.timing().silent_wait(), Duration::from_millis(998));
    }

    #[test]
    fn lost_first_attempts_ask_for_more_attempts_and_do_not_stretch_the_deadline() {
        let mut deadlines = Deadlines::new(Duration::from_secs(1));
        deadlines.learn(&round(&[(Outcome::Connected, 3.0); 100]), CONFIRMING);
        assert_eq!(deadlines.timing().attempts, 2, "no loss: two attempts");
        // A third of the answers came only to a confirming attempt, 100 ms after the first.
        let mut lossy = round(&[(Outcome::Connected, 104.0); 50]);
        for (k, cell, observation) in lossy
            .observations()
            .map(|(k, c, o)| (k, c, o.clone()))
            .collect::<Vec<_>>()
        {
            lossy.set(
                k,
                cell.from,
                cell.to,
                Observation {
                    attempts: 16,
                    answer_ms: Some(4.0),
                    ..observation
                },
            );
        }
        deadlines.learn(&lossy, CONFIRMING);
        let timing = deadlines.timing();
        assert!((deadlines.lost_share() - 1.0 / 3.0).abs() < 1e-9);
        // 0.34^19 < 1e-9, but the agent's maximum is 16.
        assert_eq!(timing.attempts, MAX_ATTEMPTS);
        assert_eq!(
            timing.deadline,
            Some(FLOOR),
            "each answer's own round trip counts"
        );
        assert_eq!(Deadlines::attempts_for(0.01), 5);
        assert_eq!(Deadlines::attempts_for(0.1), 9);
        assert_eq!(Deadlines::attempts_for(1.0), MAX_ATTEMPTS);
    }
}
