//! Health: what `/readyz` and the health gauges read, and the background check that keeps
//! it current.
//!
//! Kubelet probes `/readyz` every few seconds, unauthenticated, with a short timeout: it must
//! answer at once and open nothing. So it only reads [`Health`], which the worker keeps
//! current:
//!
//! - Kafka: a task in the worker's `JoinSet` probes the cluster every
//!   `worker.health_interval` with one long-lived client ([`KafkaProbe`]); the start-up probe
//!   records its outcome too. Kafka is reachable while a check succeeded within
//!   [`Windows::kafka`] (3 intervals, at least 30 s), so one slow answer does not flap
//!   readiness.
//! - Graph: partition tasks record every page or poll that came back and every fetch that
//!   failed for Graph's sake (token refused, `5xx` or no answer after the retries). Graph
//!   answers while nothing failed since the last success, or that success is within
//!   [`Windows::graph`] (3 poll intervals, at least 60 s): a paused or idle worker, which asks
//!   Graph nothing, stays ready; one whose every request fails does not, once the window has
//!   passed. The first success also means a token was obtained.
//!
//! The same task turns both verdicts into the health gauges, logging changes only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::sink::health::KafkaProbe;

/// How long a success keeps a check passing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Windows {
    /// Kafka: since the last successful check.
    pub kafka: Duration,
    /// Graph: since the last successful response, once a failure followed it.
    pub graph: Duration,
}

impl Windows {
    /// Kafka: 3 check intervals, at least 30 s; Graph: 3 poll intervals, at least 60 s. Long
    /// enough that a single slow or failed answer does not make the worker unready.
    pub fn new(health_interval: Duration, poll_interval: Duration) -> Self {
        Self {
            kafka: health_interval
                .saturating_mul(3)
                .max(Duration::from_secs(30)),
            graph: poll_interval.saturating_mul(3).max(Duration::from_secs(60)),
        }
    }
}

/// One check's history: its last success, since when it has been failing, and why.
#[derive(Debug, Default)]
pub struct Check(Mutex<Record>);

#[derive(Debug, Default, Clone)]
struct Record {
    ok_at: Option<Instant>,
    /// The first failure since the last success: since when the check has been failing.
    failing_since: Option<Instant>,
    /// Why the last failure failed.
    why: String,
}

impl Check {
    /// Records a success now.
    pub fn succeeded(&self) {
        let mut r = self.0.lock();
        // Taken under the lock, so that records from several tasks stay in order.
        r.ok_at = Some(Instant::now());
        r.failing_since = None;
    }

    /// Records a failure now, and why.
    pub fn failed(&self, why: impl Into<String>) {
        let mut r = self.0.lock();
        let now = Instant::now();
        r.failing_since.get_or_insert(now);
        r.why = why.into();
    }

    /// When the check last succeeded.
    pub fn last_success(&self) -> Option<Instant> {
        self.0.lock().ok_at
    }

    fn record(&self) -> Record {
        self.0.lock().clone()
    }
}

/// What the worker knows of its own health; `/readyz` reads it and nothing else.
#[derive(Debug)]
pub struct Health {
    /// The background (and start-up) Kafka checks.
    pub kafka: Check,
    /// Graph's answers to the partitions' requests.
    pub graph: Check,
    windows: Mutex<Windows>,
    started: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            kafka: Check::default(),
            graph: Check::default(),
            // Zero until the worker sets its own: nothing passes on an old success before.
            windows: Mutex::new(Windows::default()),
            started: Instant::now(),
        }
    }
}

impl Health {
    /// Sets the windows (the worker does, from its settings, as it starts).
    pub fn set_windows(&self, windows: Windows) {
        *self.windows.lock() = windows;
    }

    /// Time since this status was created (the worker's start, for reasons with nothing
    /// else to date them).
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Why Kafka does not count as reachable at `now`, if it does not.
    pub fn kafka_problem(&self, now: Instant) -> Option<String> {
        let r = self.kafka.record();
        let window = self.windows.lock().kafka;
        let failing = r
            .failing_since
            .map(|t| now.saturating_duration_since(t).as_secs());
        match (r.ok_at, failing) {
            (Some(t), _) if now.saturating_duration_since(t) <= window => None,
            (Some(t), Some(f)) => Some(format!(
                "Kafka unreachable: last reached {} s ago, failing for {f} s: {}",
                now.saturating_duration_since(t).as_secs(),
                r.why
            )),
            // Old success and no failure since: the check itself has stopped answering.
            (Some(t), None) => Some(format!(
                "Kafka not checked for {} s (the check did not complete since)",
                now.saturating_duration_since(t).as_secs()
            )),
            (None, Some(f)) => Some(format!(
                "Kafka not reached yet, failing for {f} s: {}",
                r.why
            )),
            (None, None) => Some(format!(
                "Kafka not checked yet (worker started {} s ago)",
                self.uptime(now).as_secs()
            )),
        }
    }

    /// Why Graph does not count as answering at `now`, if it does not.
    pub fn graph_problem(&self, now: Instant) -> Option<String> {
        let r = self.graph.record();
        let window = self.windows.lock().graph;
        let failing = r
            .failing_since
            .map(|t| now.saturating_duration_since(t).as_secs());
        match (r.ok_at, failing) {
            (Some(_), None) => None,
            (Some(t), Some(_)) if now.saturating_duration_since(t) <= window => None,
            (Some(t), Some(f)) => Some(format!(
                "Graph not answering: last successful response {} s ago, failing for {f} s: {}",
                now.saturating_duration_since(t).as_secs(),
                r.why
            )),
            (None, Some(f)) => Some(format!(
                "Graph not answering: no successful response (so no token) yet, failing for {f} s: {}",
                r.why
            )),
            (None, None) => Some(format!(
                "no Graph response yet (worker started {} s ago)",
                self.uptime(now).as_secs()
            )),
        }
    }
}

/// Probes Kafka once: the background check's only I/O (a fake in tests).
pub(super) trait Probe: Send {
    fn probe(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real probe: one client, built at the first check and kept for every later one.
pub(super) struct KafkaCheck {
    config: rdkafka::ClientConfig,
    client: Option<Arc<KafkaProbe>>,
    timeout: Duration,
}

impl KafkaCheck {
    /// A probe with `config` (the admin client's) whose checks wait at most `timeout`.
    pub(super) fn new(config: rdkafka::ClientConfig, timeout: Duration) -> Self {
        Self {
            config,
            client: None,
            timeout,
        }
    }
}

impl Probe for KafkaCheck {
    async fn probe(&mut self) -> Result<(), String> {
        let client = match self.client.clone() {
            Some(c) => c,
            // Building starts librdkafka's threads but waits for no broker; a client that
            // cannot be built (its settings) is tried again at the next check.
            None => {
                let c = Arc::new(KafkaProbe::new(&self.config)?);
                self.client = Some(c.clone());
                c
            }
        };
        let timeout = self.timeout;
        // A metadata request blocks its thread: keep it off the executor.
        tokio::task::spawn_blocking(move || client.check(timeout))
            .await
            .unwrap_or_else(|e| Err(format!("the Kafka check did not complete: {e}")))
    }
}

impl Drop for KafkaCheck {
    fn drop(&mut self) {
        // Destroying a librdkafka client flushes and joins its threads: not on the executor.
        if let (Some(client), Ok(rt)) = (self.client.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn_blocking(move || drop(client));
        }
    }
}

/// How long one Kafka check may wait: its interval, between 1 and 10 s.
pub(super) fn probe_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Every `interval` until `cancel`: probes Kafka once, records the outcome, and reports the
/// verdicts on Kafka and Graph to the gauges (and the log) when they change.
pub(super) async fn run(
    health: Arc<Health>,
    mut kafka: impl Probe,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    // After a check that took long, the next waits a whole interval: no burst of probes.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The gauges start at 0 ("not passing"): a check failing from the start is not a change
    // (the start-up and the partitions log why), passing for the first time is.
    let mut shown = Shown::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let probed = tokio::select! {
            r = kafka.probe() => r,
            _ = cancel.cancelled() => return,
        };
        match probed {
            Ok(()) => health.kafka.succeeded(),
            Err(why) => health.kafka.failed(why),
        }
        shown.update(&health, Instant::now());
    }
}

/// The verdicts last reported: `true` while passing.
#[derive(Default)]
struct Shown {
    kafka: bool,
    graph: bool,
}

impl Shown {
    fn update(&mut self, health: &Health, now: Instant) {
        let kafka = health.kafka_problem(now);
        if kafka.is_none() != self.kafka {
            self.kafka = kafka.is_none();
            metrics::kafka_health_changed(kafka.as_deref());
        }
        let graph = health.graph_problem(now);
        if graph.is_none() != self.graph {
            self.graph = graph.is_none();
            metrics::graph_health_changed(graph.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use tokio::time::{advance, sleep};

    use super::*;

    const S: Duration = Duration::from_secs(1);
    const KAFKA: Duration = Duration::from_secs(30);
    const GRAPH: Duration = Duration::from_secs(180);

    fn health() -> Health {
        let h = Health::default();
        h.set_windows(Windows {
            kafka: KAFKA,
            graph: GRAPH,
        });
        h
    }

    fn graph(h: &Health) -> Option<String> {
        h.graph_problem(Instant::now())
    }

    fn kafka(h: &Health) -> Option<String> {
        h.kafka_problem(Instant::now())
    }

    #[test]
    fn windows_are_three_intervals_with_floors() {
        let w = |h, p| {
            let w = Windows::new(S * h, S * p);
            (w.kafka.as_secs(), w.graph.as_secs())
        };
        assert_eq!(w(10, 60), (30, 180), "the defaults");
        assert_eq!(w(1, 5), (30, 60), "the floors");
        assert_eq!(w(20, 300), (60, 900));
    }

    #[tokio::test(start_paused = true)]
    async fn graph_failing_after_a_success_is_unready_after_the_window_then_recovers() {
        let h = health();
        advance(4 * S).await;
        let why = graph(&h).expect("nothing answered yet");
        assert!(
            why.contains("no Graph response yet") && why.contains("4 s ago"),
            "{why}"
        );
        h.graph.succeeded();
        assert_eq!(graph(&h), None);
        advance(10 * S).await;
        h.graph
            .failed("giving up after 3 attempts: 503 serviceNotAvailable");
        assert_eq!(graph(&h), None, "one failure after a recent success");
        advance(GRAPH - 10 * S).await;
        assert_eq!(
            graph(&h),
            None,
            "the success is exactly as old as the window"
        );
        advance(S).await;
        let why = graph(&h).expect("the last success is older than the window");
        assert!(
            why.contains("last successful response 181 s ago")
                && why.contains("failing for 171 s")
                && why.contains("503 serviceNotAvailable"),
            "{why}"
        );
        h.graph.succeeded();
        assert_eq!(graph(&h), None, "answering again");
        advance(GRAPH * 2).await;
        h.graph
            .failed("giving up after 3 attempts: request failed: connection refused");
        assert!(
            graph(&h).is_some(),
            "a failure with the last success long ago"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_graph_stays_answering() {
        // A paused or idle worker asks nothing: no failure since the success is no news.
        let h = health();
        h.graph.succeeded();
        advance(GRAPH * 10).await;
        assert_eq!(graph(&h), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_token_yet_says_since_when_and_why() {
        let h = health();
        h.graph.failed(
            "authentication failed: token endpoint answered 401 Unauthorized: invalid_client",
        );
        advance(5 * S).await;
        h.graph.failed(
            "authentication failed: token endpoint answered 401 Unauthorized: invalid_client",
        );
        let why = graph(&h).expect("no token");
        assert!(
            why.contains("no successful response (so no token) yet")
                && why.contains("failing for 5 s")
                && why.contains("invalid_client"),
            "{why}"
        );
        assert!(h.graph.last_success().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn kafka_is_reachable_within_its_window_only() {
        let h = health();
        assert!(kafka(&h).expect("not checked").contains("not checked yet"));
        h.kafka.failed("bootstrap: Connection refused");
        advance(3 * S).await;
        let why = kafka(&h).expect("never reached");
        assert!(
            why.contains("not reached yet, failing for 3 s: bootstrap: Connection refused"),
            "{why}"
        );
        h.kafka.succeeded();
        assert_eq!(kafka(&h), None);
        advance(KAFKA).await;
        h.kafka.failed("1/1 brokers are down");
        assert_eq!(
            kafka(&h),
            None,
            "a failed check within the window does not flap"
        );
        advance(S).await;
        let why = kafka(&h).expect("the last success is too old");
        assert!(
            why.contains("last reached 31 s ago, failing for 1 s: 1/1 brokers are down"),
            "{why}"
        );
        h.kafka.succeeded();
        assert_eq!(kafka(&h), None);
        advance(KAFKA + S).await;
        let why = kafka(&h).expect("no check completed for too long");
        assert!(why.contains("not checked for 31 s"), "{why}");
    }

    /// Answers as `ok` says, counting its probes.
    struct Fake {
        ok: Arc<AtomicBool>,
        probes: Arc<AtomicU32>,
    }

    impl Probe for Fake {
        fn probe(&mut self) -> impl Future<Output = Result<(), String>> + Send {
            self.probes.fetch_add(1, Ordering::SeqCst);
            let ok = self.ok.load(Ordering::SeqCst);
            async move {
                ok.then_some(())
                    .ok_or_else(|| "1/1 brokers are down".to_string())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_check_probes_once_per_interval_and_reports_changes() {
        let h = Arc::new(health());
        let (ok, probes) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
        let fake = Fake {
            ok: ok.clone(),
            probes: probes.clone(),
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(h.clone(), fake, 10 * S, cancel.clone()));
        let gauge = || metrics::metrics().health_kafka_ok.get();
        sleep(Duration::from_millis(1)).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            1,
            "the first check is at once"
        );
        assert_eq!(kafka(&h), None);
        assert_eq!(gauge(), 1);
        ok.store(false, Ordering::SeqCst);
        // Checks at 10, 20 and 30 s fail; the success at 0 s is 31 s old.
        sleep(KAFKA + S).await;
        assert_eq!(probes.load(Ordering::SeqCst), 4, "one probe per interval");
        let why = kafka(&h).expect("failing past the window");
        assert!(
            why.contains("last reached 31 s ago, failing for 21 s: 1/1 brokers are down"),
            "{why}"
        );
        // The gauge follows at the next check (40 s), which fails too.
        assert_eq!(gauge(), 1);
        sleep(10 * S).await;
        assert_eq!(gauge(), 0);
        ok.store(true, Ordering::SeqCst);
        sleep(10 * S).await;
        assert_eq!(kafka(&h), None, "reachable again at the next check");
        assert_eq!(gauge(), 1);
        cancel.cancel();
        tokio::time::timeout(S, task)
            .await
            .expect("the check ends with the shutdown")
            .expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_names_every_missing_piece_until_all_are_there() {
        let status = crate::worker::WorkerStatus::default();
        status.health.set_windows(Windows {
            kafka: KAFKA,
            graph: GRAPH,
        });
        advance(2 * S).await;
        let reasons = status.unready_reasons();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].starts_with("offsets not loaded yet"),
            "{reasons:?}"
        );
        assert!(reasons[1].starts_with("Kafka"), "{reasons:?}");
        assert!(reasons[2].contains("Graph"), "{reasons:?}");
        status
            .offsets_loaded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        status.health.kafka.succeeded();
        status.health.graph.succeeded();
        assert_eq!(status.unready_reasons(), Vec::<String>::new());
        advance(GRAPH * 2).await;
        let reasons = status.unready_reasons();
        assert_eq!(reasons.len(), 1, "only Kafka's check is stale: {reasons:?}");
        assert!(
            reasons[0].contains("Kafka not checked for 360 s"),
            "{reasons:?}"
        );
    }
}
