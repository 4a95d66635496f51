//! When changes take effect under the timed faults, as pure functions of time, shared by the local
//! dataplane's lagging programmer and the simulated backend so both lag the same way.
//!
//! `delay=D`: a state reached at `t` takes effect at `t + D`, and a newer state replaces it once it
//! is due. `new-pod-unprotected=D`: a pod's own rules are left out until `D` after it was created.
//! `resync-gap=P`: the first half of every period `P` (from the dataplane's start) enforces nothing.

use std::time::Duration;

use tokio::time::Instant;

use super::Faults;

#[derive(Debug, Clone, Copy)]
pub struct Lag {
    delay: Duration,
    grace: Duration,
    period: Duration,
    /// Where the `resync-gap` cycle starts.
    epoch: Instant,
}

impl Lag {
    pub fn new(faults: &Faults, epoch: Instant) -> Lag {
        Lag {
            delay: faults.delay,
            grace: faults.new_pod_unprotected,
            period: faults.resync_gap,
            epoch,
        }
    }

    /// When a state reached at `at` takes effect.
    pub fn due(&self, at: Instant) -> Instant {
        at + self.delay
    }

    /// Of states reached at the given instants (oldest first), the one in effect at `now`: the
    /// newest that is due. `None`: none is due yet, what was in effect before them still is.
    pub fn in_effect(
        &self,
        reached: impl IntoIterator<Item = Instant>,
        now: Instant,
    ) -> Option<usize> {
        reached
            .into_iter()
            .enumerate()
            .filter(|(_, at)| self.due(*at) <= now)
            .map(|(i, _)| i)
            .last()
    }

    /// Whether a pod created at `created` is still without its own rules at `now`.
    pub fn unprotected(&self, created: Instant, now: Instant) -> bool {
        created + self.grace > now
    }

    /// When a pod created at `created` gets its own rules.
    pub fn protected_from(&self, created: Instant) -> Instant {
        created + self.grace
    }

    /// Whether `now` falls in the first half of a `resync-gap` period: nothing is enforced.
    pub fn in_gap(&self, now: Instant) -> bool {
        !self.period.is_zero()
            && now.duration_since(self.epoch).as_nanos() % self.period.as_nanos()
                < self.period.as_nanos() / 2
    }

    /// The next moment the `resync-gap` cycle flips, if there is one.
    pub fn next_flip(&self, now: Instant) -> Option<Instant> {
        let period = self.period.as_nanos();
        if period == 0 {
            return None;
        }
        let into = now.duration_since(self.epoch).as_nanos() % period;
        let half = period / 2;
        let wait = if into < half {
            half - into
        } else {
            period - into
        };
        Some(now + Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_due_state_is_in_effect() {
        let epoch = Instant::now();
        let faults = Faults::parse(&["delay=2s", "new-pod-unprotected=1s", "resync-gap=4s"])
            .expect("faults");
        let lag = Lag::new(&faults, epoch);
        let at = |s: u64| epoch + Duration::from_secs(s);
        let reached = [at(0), at(1), at(5)];
        assert_eq!(lag.in_effect(reached, at(1)), None);
        assert_eq!(lag.in_effect(reached, at(2)), Some(0));
        assert_eq!(lag.in_effect(reached, at(6)), Some(1));
        assert_eq!(lag.in_effect(reached, at(7)), Some(2));
        assert!(lag.unprotected(at(3), at(3)) && !lag.unprotected(at(3), at(4)));
        assert!(lag.in_gap(at(1)) && !lag.in_gap(at(2)) && lag.in_gap(at(4)));
        assert_eq!(lag.next_flip(at(1)), Some(at(2)));
        assert_eq!(lag.next_flip(at(3)), Some(at(4)));
    }
}
