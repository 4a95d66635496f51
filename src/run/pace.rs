//! The pace of probing: how many new connections may be in flight and how many may start per
//! second. Every probe the runner sends passes through one `Pacer` (`run::probe_selected` admits
//! each chunk of a batch here), so no way in to probing skips it.
//!
//! Why: an enforcer that judges the first packet of each connection in userspace (NFQUEUE, e.g.
//! kube-network-policies) has a queue of about a thousand packets per node. Thousands of new
//! connections in a few milliseconds overflow it, and an enforcer that fails open then accepts
//! what it could not judge: polygraph would blame the CNI for a leak its own burst caused. Bounding
//! the connections in flight bounds the queue (each one has at most one packet waiting to be
//! judged), whatever the enforcer's speed; the rate bounds enforcers that give way to a sustained
//! rate instead.
//!
//! Congestion is read as congestion, not as loss: answers that come much slower than the fastest
//! seen, or only to a confirming attempt far more often than at low load, while many connections
//! are in flight, halve the window (never below `MIN_WINDOW`). Clean answers grow it back, quickly
//! up to where it last gave way, then slowly. Lost attempts seen at low load are the link's own
//! loss, the yardstick for "far more often".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polygraph_agent::wire::ProbeResult;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The default bound on new connections in flight over the whole run: with `PER_NODE`, half of a
/// 1024-packet userspace queue on any one node, leaving room for the node's own traffic.
pub const MAX_INFLIGHT: usize = 1024;
/// The default bound on new connections in flight to the pods of one node.
pub const MAX_INFLIGHT_PER_NODE: usize = 512;
/// The default rate of new connections, per second: well above what the local cluster needs for
/// its speed targets, well below what a userspace judge handles.
pub const RATE: f64 = 5000.0;
/// At or under this many in flight, the load is low: lost attempts then are the link's.
pub const LOW_LOAD: usize = 32;
/// The window never shrinks below this.
pub const MIN_WINDOW: usize = 8;
/// The most targets one request to an agent carries.
pub const CHUNK: usize = 64;
/// The shortest wait for rate tokens: tokio's timer resolution.
const TICK: Duration = Duration::from_millis(1);
/// At most one back-off per this long: one burst's answers all say the same thing.
const BACKOFF_GAP: Duration = Duration::from_millis(100);
/// Answers this many times slower than the fastest chunk's typical answer mean congestion…
const SLOW_FACTOR: f64 = 8.0;
/// … when they are also at least this much slower (a few ms of jitter is not congestion).
const SLOW_MARGIN_MS: f64 = 50.0;
/// A chunk's share of answers that only a confirming attempt got, above the link's own share by
/// this much, means congestion.
const LOST_MARGIN: f64 = 0.25;
/// Answers a chunk needs before its share of lost attempts says anything.
const MIN_CHUNK_ANSWERS: usize = 4;
/// Answers at low load needed before their share of lost attempts is the link's loss.
const MIN_LOW_LOAD_ANSWERS: usize = 20;

/// The bounds a run probes within (`--max-inflight`, `--max-inflight-per-node`, `--rate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PaceOptions {
    /// New connections in flight at once, over every node.
    pub max_inflight: usize,
    /// New connections in flight at once to the pods of one node.
    pub max_inflight_per_node: usize,
    /// New connections started per second to the pods of one node (an enforcer judges per
    /// node); `None`: no bound.
    pub rate: Option<f64>,
    /// Source pods probing at once (`--parallel`).
    pub sources: usize,
}

impl Default for PaceOptions {
    fn default() -> Self {
        PaceOptions {
            max_inflight: MAX_INFLIGHT,
            max_inflight_per_node: MAX_INFLIGHT_PER_NODE,
            rate: Some(RATE),
            sources: 64,
        }
    }
}

impl PaceOptions {
    /// A low pace for confirmations (`fail-open`: a leak seen at load is probed again at this
    /// pace before it is named) and for `bench enforcer`'s first level.
    pub fn gentle(self) -> PaceOptions {
        PaceOptions {
            max_inflight: LOW_LOAD.min(self.max_inflight),
            max_inflight_per_node: LOW_LOAD.min(self.max_inflight_per_node),
            rate: Some(self.rate.map_or(GENTLE_RATE, |r| r.min(GENTLE_RATE))),
            sources: self.sources,
        }
    }

    /// One line for the header: `at most 1024 new connections in flight (512 per node), 5000/s`.
    pub fn describe(&self) -> String {
        let rate = self.rate.map_or("no rate bound".to_string(), |r| {
            format!("{r:.0}/s per node")
        });
        format!(
            "at most {} new connections in flight ({} per node), {rate}",
            self.max_inflight, self.max_inflight_per_node
        )
    }
}

/// The rate of `PaceOptions::gentle`.
pub const GENTLE_RATE: f64 = 200.0;

/// What the pace was over a run: the bounds, and what congestion did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PaceReport {
    #[serde(flatten)]
    pub options: PaceOptions,
    /// New connections started (targets admitted plus the confirming attempts they spent).
    pub connections: u64,
    /// The most in flight at once.
    pub peak_inflight: usize,
    /// The highest rate of new connections over any 100 ms, per second.
    pub peak_rate: f64,
    /// Times congestion halved the window.
    pub backoffs: usize,
    /// The smallest the window became.
    pub min_window: usize,
}

/// Shared by every probe of a run (clones share it; lanes on one cluster share its bounds).
#[derive(Debug, Clone)]
pub struct Pacer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: PaceOptions,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    inflight: usize,
    per_node: HashMap<String, Node>,
    /// The congestion window, at most `max_inflight`.
    window: f64,
    /// Where the window last gave way: it grows fast below, slowly above.
    threshold: f64,
    last_backoff: Option<Instant>,
    /// The lowest typical answer time of any chunk, in ms: what "slow" is measured against.
    fastest_ms: Option<f64>,
    /// Answers at low load, and how many only a confirming attempt got.
    low_answers: usize,
    low_retried: usize,
    /// For the report.
    connections: u64,
    peak_inflight: usize,
    backoffs: usize,
    min_window: f64,
    /// Connections started in the current 100 ms bucket, and the busiest bucket so far.
    bucket_start: Option<Instant>,
    bucket_count: u64,
    peak_bucket: u64,
}

/// One node's share: its connections in flight and its rate tokens.
#[derive(Debug)]
struct Node {
    inflight: usize,
    /// New connections that may start now; negative after confirming attempts spent more than
    /// was admitted.
    tokens: f64,
    refilled: Instant,
}

impl Node {
    fn new(rate: Option<f64>) -> Node {
        Node {
            inflight: 0,
            tokens: rate.map_or(0.0, burst),
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self, rate: Option<f64>) {
        let now = Instant::now();
        if let Some(rate) = rate {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(burst(rate));
        }
        self.refilled = now;
    }
}

/// A chunk's admission: the load it met, and its share of the bounds until it is finished.
#[derive(Debug)]
pub struct Admission {
    pacer: Pacer,
    node: String,
    count: usize,
    /// Connections in flight when it was sent, itself included.
    pub inflight: usize,
    released: bool,
}

impl Pacer {
    pub fn new(options: PaceOptions) -> Pacer {
        let options = PaceOptions {
            max_inflight: options.max_inflight.max(1),
            max_inflight_per_node: options.max_inflight_per_node.max(1),
            rate: options.rate.filter(|r| *r > 0.0),
            sources: options.sources.max(1),
        };
        let window = options.max_inflight as f64;
        Pacer {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    inflight: 0,
                    per_node: HashMap::new(),
                    window,
                    threshold: window,
                    last_backoff: None,
                    fastest_ms: None,
                    low_answers: 0,
                    low_retried: 0,
                    connections: 0,
                    peak_inflight: 0,
                    backoffs: 0,
                    min_window: window,
                    bucket_start: None,
                    bucket_count: 0,
                    peak_bucket: 0,
                }),
                wake: Notify::new(),
            }),
        }
    }

    pub fn options(&self) -> PaceOptions {
        self.inner.options
    }

    /// Source pods probing at once.
    pub fn sources(&self) -> usize {
        self.inner.options.sources
    }

    /// A chunk of at most this many targets fits the bounds at any window, and a rate's bucket
    /// (a gentle pace sends no chunk larger than its burst).
    pub fn chunk(&self) -> usize {
        let burst = self
            .inner
            .options
            .rate
            .map_or(usize::MAX, |r| burst(r) as usize);
        CHUNK
            .min(burst)
            .min(self.inner.options.max_inflight_per_node)
            .min(MIN_WINDOW.max(self.window()))
            .max(1)
    }

    fn window(&self) -> usize {
        self.lock().window as usize
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counters, never broken invariants
        // worth aborting for.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `count` new connections to `node`'s pods fit the bounds, and takes them.
    pub async fn admit(&self, node: &str, count: usize) -> Admission {
        let node = node.to_string();
        let options = self.inner.options;
        // A chunk larger than a bound could never be admitted: it is admitted alone.
        let count = count.max(1);
        loop {
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut guard = self.lock();
                let state = &mut *guard;
                let window = state.window as usize;
                let total = state.inflight;
                let on_node = state
                    .per_node
                    .entry(node.clone())
                    .or_insert_with(|| Node::new(options.rate));
                on_node.refill(options.rate);
                let fits = |used: usize, bound: usize| used == 0 || used + count <= bound;
                let room = fits(total, window.min(options.max_inflight))
                    && fits(on_node.inflight, options.max_inflight_per_node);
                let rate_wait = options
                    .rate
                    .and_then(|rate| rate_wait(on_node.tokens, count, rate));
                if room && rate_wait.is_none() {
                    on_node.inflight += count;
                    if options.rate.is_some() {
                        on_node.tokens -= count as f64;
                    }
                    state.inflight += count;
                    state.started(count as u64);
                    let inflight = state.inflight;
                    state.peak_inflight = state.peak_inflight.max(inflight);
                    return Admission {
                        pacer: self.clone(),
                        node,
                        count,
                        inflight,
                        released: false,
                    };
                }
                rate_wait.filter(|_| room)
            };
            match wait {
                Some(delay) => tokio::time::sleep(delay).await,
                None => notified.await,
            }
        }
    }

    pub fn report(&self) -> PaceReport {
        let state = self.lock();
        PaceReport {
            options: self.inner.options,
            connections: state.connections,
            peak_inflight: state.peak_inflight,
            peak_rate: state.peak_bucket.max(state.bucket_count) as f64 * 10.0,
            backoffs: state.backoffs,
            min_window: state.min_window as usize,
        }
    }

    /// Learns from a chunk's results and gives its share of the bounds back.
    fn finish(&self, admission: &Admission, results: &[ProbeResult]) {
        let options = self.inner.options;
        let mut state = self.lock();
        // Confirming attempts started connections too: they are paid for afterwards.
        let extra: u64 = results
            .iter()
            .map(|r| u64::from(r.attempts.unwrap_or(1).saturating_sub(1)))
            .sum();
        if let (Some(_), Some(node)) = (options.rate, state.per_node.get_mut(&admission.node)) {
            node.tokens -= extra as f64;
        }
        state.started(extra);
        let answers: Vec<&ProbeResult> = results.iter().filter(|r| r.outcome.is_answer()).collect();
        let retried = answers
            .iter()
            .filter(|r| r.attempts.unwrap_or(1) > 1)
            .count();
        let low_load = admission.inflight <= LOW_LOAD;
        if low_load {
            state.low_answers += answers.len();
            state.low_retried += retried;
        }
        let mut typical: Vec<f64> = answers
            .iter()
            .map(|r| r.answer_ms.unwrap_or(r.elapsed_ms))
            .collect();
        typical.sort_by(f64::total_cmp);
        let median = typical.get(typical.len() / 2).copied();
        let fastest = state.fastest_ms;
        let slow = match (median, fastest) {
            (Some(m), Some(f)) => m > f * SLOW_FACTOR && m > f + SLOW_MARGIN_MS,
            _ => false,
        };
        if let Some(m) = median {
            state.fastest_ms = Some(fastest.map_or(m, |f| f.min(m)).max(0.01));
        }
        // Lost attempts say congestion only against the link's own loss, measured at low load;
        // until that is known, only slowness does (a lossy link is not a congested one).
        let lost = state.link_loss().is_some_and(|link| {
            answers.len() >= MIN_CHUNK_ANSWERS
                && retried as f64 / answers.len() as f64 > link + LOST_MARGIN
        });
        if !low_load && (slow || lost) {
            state.back_off(options.max_inflight);
        } else if !answers.is_empty() {
            state.grow(answers.len(), options.max_inflight);
        }
        drop(state);
        self.release(admission);
    }

    fn release(&self, admission: &Admission) {
        let mut state = self.lock();
        state.inflight = state.inflight.saturating_sub(admission.count);
        if let Some(node) = state.per_node.get_mut(&admission.node) {
            node.inflight = node.inflight.saturating_sub(admission.count);
        }
        drop(state);
        self.inner.wake.notify_waiters();
    }
}

impl State {
    /// The share of answers at low load that only a confirming attempt got: the link's own loss,
    /// once enough are known.
    fn link_loss(&self) -> Option<f64> {
        (self.low_answers >= MIN_LOW_LOAD_ANSWERS)
            .then(|| self.low_retried as f64 / self.low_answers as f64)
    }

    fn started(&mut self, count: u64) {
        let now = Instant::now();
        self.connections += count;
        match self.bucket_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_millis(100) => {
                self.bucket_count += count;
            }
            _ => {
                self.peak_bucket = self.peak_bucket.max(self.bucket_count);
                self.bucket_start = Some(now);
                self.bucket_count = count;
            }
        }
    }

    fn back_off(&mut self, max: usize) {
        let now = Instant::now();
        if self
            .last_backoff
            .is_some_and(|at| now.saturating_duration_since(at) < BACKOFF_GAP)
        {
            return;
        }
        self.last_backoff = Some(now);
        self.threshold = (self.window / 2.0).max(MIN_WINDOW as f64);
        self.window = self.threshold.min(max as f64);
        self.min_window = self.min_window.min(self.window);
        self.backoffs += 1;
    }

    fn grow(&mut self, answers: usize, max: usize) {
        let n = answers as f64;
        self.window = if self.window < self.threshold {
            self.window + n
        } else {
            self.window + n / self.window
        }
        .min(max as f64);
    }
}

/// How long a chunk of `count` waits for rate tokens, holding `tokens`: until it has them, but
/// never for more than a bucket holds; `None` when it has them. At least the timer's tick: a
/// shortfall of a rounding error would otherwise sleep zero, and on a paused clock (the
/// simulation's tests) a zero sleep never lets time pass, so the wait would never end.
fn rate_wait(tokens: f64, count: usize, rate: f64) -> Option<Duration> {
    let needed = (count as f64).min(burst(rate));
    (tokens < needed).then(|| Duration::from_secs_f64((needed - tokens) / rate).max(TICK))
}

/// The tokens a bucket holds at most: a tenth of a second's worth, at least one.
fn burst(rate: f64) -> f64 {
    (rate / 10.0).max(1.0)
}

impl Admission {
    /// Learns from the chunk's results and releases its share of the bounds.
    pub fn finish(mut self, results: &[ProbeResult]) {
        self.released = true;
        self.pacer.finish(&self, results);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // A chunk whose probe failed gives its share back unread.
        if !self.released {
            self.pacer.release(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polygraph_agent::wire::Outcome;

    fn result(outcome: Outcome, ms: f64, attempts: u32) -> ProbeResult {
        ProbeResult {
            host: "10.0.0.1".into(),
            port: 80,
            protocol: polygraph_agent::wire::Protocol::Tcp,
            outcome,
            started_ms: 0.0,
            elapsed_ms: ms,
            peer: None,
            detail: None,
            attempts: Some(attempts),
            answer_ms: Some(ms),
        }
    }

    fn answer(ms: f64, attempts: u32) -> ProbeResult {
        result(Outcome::Connected, ms, attempts)
    }

    fn options(max: usize, rate: Option<f64>) -> PaceOptions {
        PaceOptions {
            max_inflight: max,
            max_inflight_per_node: max,
            rate,
            sources: 8,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_never_passes_the_bound() {
        let pacer = Pacer::new(options(100, None));
        let a = pacer.admit("n1", 60).await;
        assert_eq!(a.inflight, 60);
        let waiting = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.admit("n1", 60).await.inflight })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "120 would pass 100");
        a.finish(&vec![answer(1.0, 1); 60]);
        assert_eq!(waiting.await.unwrap(), 60);
        assert_eq!(pacer.report().peak_inflight, 60);
    }

    #[tokio::test(start_paused = true)]
    async fn per_node_bounds_are_apart() {
        let pacer = Pacer::new(PaceOptions {
            max_inflight: 100,
            max_inflight_per_node: 50,
            rate: None,
            sources: 8,
        });
        let _a = pacer.admit("n1", 50).await;
        let b = pacer.admit("n2", 50).await;
        assert_eq!(b.inflight, 100, "another node has its own room");
        let blocked = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.admit("n1", 1).await.inflight })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!blocked.is_finished());
        drop(b);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!blocked.is_finished(), "n1 is still full");
        drop(_a);
        assert_eq!(blocked.await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_spreads_connections_over_time() {
        let pacer = Pacer::new(options(10_000, Some(1000.0)));
        let start = Instant::now();
        for _ in 0..50 {
            pacer.admit("n", 20).await.finish(&vec![answer(1.0, 1); 20]);
        }
        // 1000 connections at 1000/s, the first 100 from a full bucket: about 0.9 s.
        let took = start.elapsed().as_secs_f64();
        assert!((0.85..=0.95).contains(&took), "took {took} s");
        assert!(pacer.report().peak_rate <= 1200.0 + 100.0 * 10.0);
    }

    #[test]
    fn a_rounding_errors_shortfall_still_waits_a_tick() {
        // A refill that left the bucket a hair short of whole.
        assert_eq!(rate_wait(0.999_999_999, 1, 3.0), Some(TICK));
        assert_eq!(rate_wait(1.0, 1, 3.0), None);
        // A real shortfall waits for it: 100 tokens at 1000/s.
        assert_eq!(
            rate_wait(0.0, 100, 1000.0),
            Some(Duration::from_millis(100))
        );
        // Never for more than a bucket holds (a tenth of a second).
        assert_eq!(
            rate_wait(0.0, 10_000, 1000.0),
            Some(Duration::from_millis(100))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn confirming_attempts_are_paid_for() {
        let pacer = Pacer::new(options(10_000, Some(100.0)));
        let start = Instant::now();
        // 10 silent targets with 16 attempts each: 160 connections, not 10.
        let silent = result(Outcome::Timeout, 200.0, 16);
        pacer.admit("n", 10).await.finish(&vec![silent; 10]);
        pacer.admit("n", 1).await.finish(&[answer(1.0, 1)]);
        assert!(start.elapsed() >= Duration::from_millis(1400));
        assert_eq!(pacer.report().connections, 161);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_at_load_halve_the_window_and_clean_ones_grow_it() {
        let pacer = Pacer::new(options(512, None));
        pacer.admit("n", 64).await.finish(&vec![answer(1.0, 1); 64]);
        assert_eq!(pacer.window(), 512);
        // Many in flight, answers 100 times slower: congestion.
        let held: Vec<Admission> =
            futures::future::join_all((0..4).map(|_| pacer.admit("n", 64))).await;
        let mut held = held.into_iter();
        held.next().unwrap().finish(&vec![answer(100.0, 1); 64]);
        assert_eq!(pacer.window(), 256);
        // Within 100 ms the same burst does not count twice.
        held.next().unwrap().finish(&vec![answer(100.0, 1); 64]);
        assert_eq!(pacer.window(), 256);
        tokio::time::sleep(BACKOFF_GAP).await;
        held.next().unwrap().finish(&vec![answer(100.0, 1); 64]);
        assert_eq!(pacer.window(), 128);
        assert_eq!(pacer.report().backoffs, 2);
        assert_eq!(pacer.report().min_window, 128);
        drop(held);
        // Clean answers grow it back, slowly above where it last gave way.
        pacer.admit("n", 64).await.finish(&vec![answer(1.0, 1); 64]);
        assert!(pacer.window() == 128 || pacer.window() == 129);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_attempts_at_low_load_are_the_links_and_do_not_back_off() {
        let pacer = Pacer::new(options(512, None));
        // A third of the answers came only to a confirming attempt, at low load.
        for _ in 0..10 {
            let mut results = vec![answer(1.0, 1); 6];
            results.extend(vec![answer(1.0, 3); 3]);
            pacer.admit("n", 9).await.finish(&results);
        }
        let link = pacer
            .lock()
            .link_loss()
            .expect("enough answers at low load");
        assert!((link - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(pacer.report().backoffs, 0);
        // The same share at load is still the link's: no back-off.
        let held: Vec<Admission> =
            futures::future::join_all((0..2).map(|_| pacer.admit("n", 30))).await;
        let mut results = vec![answer(1.0, 1); 20];
        results.extend(vec![answer(1.0, 3); 10]);
        for admission in held {
            admission.finish(&results);
        }
        assert_eq!(pacer.report().backoffs, 0);
        // Nearly all lost at load: congestion.
        let held: Vec<Admission> =
            futures::future::join_all((0..2).map(|_| pacer.admit("n", 30))).await;
        for admission in held {
            admission.finish(&vec![answer(1.0, 4); 30]);
        }
        assert_eq!(pacer.report().backoffs, 1);
    }
}
