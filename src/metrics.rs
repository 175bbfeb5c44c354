//! Telemetry as named events: each function logs one event with `tracing` (fields first,
//! message last) and updates its Prometheus metric. Metric names are the constants below;
//! everything registers in one registry that `/metrics` serves.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::source::{PartitionId, PartitionKind};

pub const GRAPH_REQUESTS: &str = "graph_cdc_graph_requests_total";
pub const GRAPH_REQUEST_SECONDS: &str = "graph_cdc_graph_request_duration_seconds";
pub const GRAPH_RETRIES: &str = "graph_cdc_graph_retries_total";
pub const GRAPH_THROTTLED: &str = "graph_cdc_graph_throttled_total";
pub const GRAPH_RETRY_WAIT_SECONDS: &str = "graph_cdc_graph_retry_wait_seconds_total";
pub const TOKEN_RENEWALS: &str = "graph_cdc_token_renewals_total";
pub const RESYNCS: &str = "graph_cdc_resyncs_total";
pub const RECORDS_WRITTEN: &str = "graph_cdc_records_written_total";
pub const BYTES_WRITTEN: &str = "graph_cdc_bytes_written_total";
pub const TRANSACTIONS: &str = "graph_cdc_transactions_total";
pub const TRANSACTION_SECONDS: &str = "graph_cdc_transaction_duration_seconds";
pub const PARTITIONS: &str = "graph_cdc_partitions";
pub const PARTITION_FAILURES: &str = "graph_cdc_partition_failures_total";
pub const ROUNDS_COMPLETED: &str = "graph_cdc_rounds_completed_total";
pub const STALENESS_MAX: &str = "graph_cdc_staleness_max_seconds";
pub const STALENESS: &str = "graph_cdc_staleness_seconds";
pub const IN_FLIGHT: &str = "graph_cdc_graph_requests_in_flight";
pub const GRAPH_BATCHES: &str = "graph_cdc_graph_batches_total";
pub const GRAPH_BATCHED_POLLS: &str = "graph_cdc_graph_batched_polls_total";
pub const PRODUCER_QUEUE: &str = "graph_cdc_producer_queue_messages";
pub const PARTITIONS_TRACKED: &str = "graph_cdc_partitions_tracked";
pub const PARTITION_STALENESS: &str = "graph_cdc_partition_staleness_seconds";
pub const PARTITION_PAGES: &str = "graph_cdc_partition_round_pages";
pub const PARTITION_STATE: &str = "graph_cdc_partition_state";
pub const RECORDS_DEAD_LETTERED: &str = "graph_cdc_records_dead_lettered_total";
pub const RECORDS_REFUSED: &str = "graph_cdc_records_refused_total";
pub const COMMIT_RETRIES: &str = "graph_cdc_commit_retries_total";
pub const KAFKA_CONNECT_FAILURES: &str = "graph_cdc_kafka_connect_failures_total";
pub const SHUTDOWN_TIMEOUTS: &str = "graph_cdc_shutdown_timeouts_total";
pub const HEALTH_KAFKA_OK: &str = "graph_cdc_health_kafka_ok";
pub const HEALTH_GRAPH_OK: &str = "graph_cdc_health_graph_ok";
pub const OFFSET_LINKS_REFUSED: &str = "graph_cdc_offset_links_refused_total";
pub const RECORDS_SKIPPED: &str = "graph_cdc_records_skipped_total";

/// Every metric of the process.
pub struct Metrics {
    pub registry: Registry,
    pub graph_requests: IntCounterVec,
    pub graph_request_seconds: HistogramVec,
    pub graph_retries: IntCounterVec,
    pub graph_batches: IntCounterVec,
    pub graph_batched_polls: IntCounterVec,
    pub graph_throttled: IntCounterVec,
    pub graph_retry_wait: prometheus::Counter,
    pub token_renewals: IntCounter,
    pub resyncs: IntCounterVec,
    pub records_written: IntCounterVec,
    pub bytes_written: IntCounterVec,
    pub transactions: IntCounterVec,
    pub transaction_seconds: Histogram,
    pub partitions: IntGaugeVec,
    pub partition_failures: IntCounterVec,
    pub rounds_completed: IntCounterVec,
    pub in_flight: IntGauge,
    pub staleness_max: prometheus::Gauge,
    pub staleness: Histogram,
    pub producer_queue: IntGauge,
    pub partitions_tracked: IntGauge,
    pub partition_staleness: prometheus::GaugeVec,
    pub partition_pages: IntGaugeVec,
    pub partition_state: IntGaugeVec,
    pub records_dead_lettered: IntCounterVec,
    pub records_refused: IntCounterVec,
    pub commit_retries: IntCounterVec,
    pub kafka_connect_failures: IntCounter,
    pub shutdown_timeouts: IntCounterVec,
    pub health_kafka_ok: IntGauge,
    pub health_graph_ok: IntGauge,
    pub offset_links_refused: IntCounterVec,
    pub records_skipped: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let r = Registry::new();
    let counter =
        |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
    let latency = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let graph_request_seconds = HistogramVec::new(
        HistogramOpts::new(GRAPH_REQUEST_SECONDS, "Graph request latency")
            .buckets(latency.to_vec()),
        &["kind"],
    )?;
    r.register(Box::new(graph_request_seconds.clone()))?;
    let transaction_seconds = Histogram::with_opts(
        HistogramOpts::new(
            TRANSACTION_SECONDS,
            "Kafka transaction duration, begin to commit",
        )
        .buckets(latency.to_vec()),
    )?;
    r.register(Box::new(transaction_seconds.clone()))?;
    let graph_retry_wait = prometheus::Counter::new(
        GRAPH_RETRY_WAIT_SECONDS,
        "Seconds spent waiting before retrying Graph requests (Retry-After or backoff)",
    )?;
    r.register(Box::new(graph_retry_wait.clone()))?;
    let token_renewals = IntCounter::new(TOKEN_RENEWALS, "Access tokens fetched")?;
    r.register(Box::new(token_renewals.clone()))?;
    let partitions = IntGaugeVec::new(
        Opts::new(PARTITIONS, "Partitions by kind and state"),
        &["kind", "state"],
    )?;
    r.register(Box::new(partitions.clone()))?;
    let in_flight = IntGauge::new(IN_FLIGHT, "Graph requests in flight")?;
    r.register(Box::new(in_flight.clone()))?;
    let staleness_max = prometheus::Gauge::new(
        STALENESS_MAX,
        "Seconds since the least recently completed round of any partition",
    )?;
    r.register(Box::new(staleness_max.clone()))?;
    let staleness = Histogram::with_opts(
        HistogramOpts::new(
            STALENESS,
            "How old a partition's data had become when its round completed (time since its previous round)",
        )
        .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
    )?;
    r.register(Box::new(staleness.clone()))?;
    let producer_queue = IntGauge::new(
        PRODUCER_QUEUE,
        "Messages queued in the producer, not yet delivered",
    )?;
    r.register(Box::new(producer_queue.clone()))?;
    let partitions_tracked = IntGauge::new(PARTITIONS_TRACKED, "Partitions this worker tracks")?;
    r.register(Box::new(partitions_tracked.clone()))?;
    let partition_staleness = prometheus::GaugeVec::new(
        Opts::new(
            PARTITION_STALENESS,
            "Seconds since the partition's last completed round (per-partition metrics only)",
        ),
        &["partition"],
    )?;
    r.register(Box::new(partition_staleness.clone()))?;
    let partition_pages = IntGaugeVec::new(
        Opts::new(
            PARTITION_PAGES,
            "Pages fetched in the partition's current round (per-partition metrics only)",
        ),
        &["partition"],
    )?;
    r.register(Box::new(partition_pages.clone()))?;
    let partition_state = IntGaugeVec::new(
        Opts::new(
            PARTITION_STATE,
            "1 for the partition's current state (per-partition metrics only)",
        ),
        &["partition", "state"],
    )?;
    r.register(Box::new(partition_state.clone()))?;
    let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        r.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let health_kafka_ok = gauge(
        HEALTH_KAFKA_OK,
        "1 while the background check reached Kafka within its window (what /readyz reads)",
    )?;
    let health_graph_ok = gauge(
        HEALTH_GRAPH_OK,
        "1 while Graph answers: a recent success, or no failure since the last one",
    )?;
    Ok(Metrics {
        graph_requests: counter(
            GRAPH_REQUESTS,
            "Graph requests by partition kind and status class",
            &["kind", "status"],
        )?,
        graph_retries: counter(GRAPH_RETRIES, "Graph requests retried", &["kind"])?,
        graph_batches: counter(
            GRAPH_BATCHES,
            "JSON batch requests (POST /$batch) by status class",
            &["status"],
        )?,
        graph_batched_polls: counter(
            GRAPH_BATCHED_POLLS,
            "deltaLink polls sent in a batch, by whether the batch answered them with a page",
            &["kind", "answered"],
        )?,
        graph_throttled: counter(
            GRAPH_THROTTLED,
            "Graph answers 429 Too Many Requests",
            &["kind"],
        )?,
        resyncs: counter(RESYNCS, "Rounds restarted after 410 Gone", &["kind"])?,
        records_written: counter(
            RECORDS_WRITTEN,
            "Records committed to Kafka",
            &["kind", "op"],
        )?,
        bytes_written: counter(
            BYTES_WRITTEN,
            "Key and value bytes committed to Kafka",
            &["kind"],
        )?,
        transactions: counter(TRANSACTIONS, "Kafka transactions by outcome", &["outcome"])?,
        partition_failures: counter(PARTITION_FAILURES, "Partitions marked failed", &["kind"])?,
        records_dead_lettered: counter(
            RECORDS_DEAD_LETTERED,
            "Records Kafka refused, written to the dead-letter topic instead",
            &["kind", "class"],
        )?,
        records_refused: counter(
            RECORDS_REFUSED,
            "Records Kafka refused that failed their partition (errors.tolerance = none)",
            &["kind", "class"],
        )?,
        commit_retries: counter(
            COMMIT_RETRIES,
            "Pages whose transaction aborted, fetched again after a backoff",
            &["kind"],
        )?,
        kafka_connect_failures: {
            let c = IntCounter::new(
                KAFKA_CONNECT_FAILURES,
                "Failed attempts to reach Kafka at start-up",
            )?;
            r.register(Box::new(c.clone()))?;
            c
        },
        rounds_completed: counter(ROUNDS_COMPLETED, "Delta rounds completed", &["kind"])?,
        records_skipped: counter(
            RECORDS_SKIPPED,
            "Records not written: an upsert whose content is live already, a tombstone for a key not live",
            &["kind", "reason"],
        )?,
        offset_links_refused: counter(
            OFFSET_LINKS_REFUSED,
            "Offset links refused for not addressing their partition's own resource, by where they came from",
            &["kind", "from"],
        )?,
        shutdown_timeouts: counter(
            SHUTDOWN_TIMEOUTS,
            "Times partition tasks did not end within worker.shutdown_timeout, by when (shutdown or command)",
            &["during"],
        )?,
        graph_request_seconds,
        graph_retry_wait,
        token_renewals,
        transaction_seconds,
        partitions,
        in_flight,
        staleness_max,
        staleness,
        producer_queue,
        partitions_tracked,
        partition_staleness,
        partition_pages,
        partition_state,
        health_kafka_ok,
        health_graph_ok,
        registry: r,
    })
}

/// The process's metrics (created on first use).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| match build() {
        Ok(m) => m,
        // Only a programming error (duplicate or malformed names) gets here.
        Err(e) => panic!("metric registration failed: {e}"),
    })
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

fn status_class(status: u16) -> &'static str {
    match status {
        0 => "error",
        200..=299 => "2xx",
        401 => "401",
        410 => "410",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A Graph request got an answer (status 0: no answer).
pub fn graph_request(kind: PartitionKind, status: u16, elapsed: Duration) {
    let m = metrics();
    m.graph_requests
        .with_label_values(&[kind.as_str(), status_class(status)])
        .inc();
    m.graph_request_seconds
        .with_label_values(&[kind.as_str()])
        .observe(elapsed.as_secs_f64());
    tracing::trace!(kind = %kind, status, elapsed_ms = elapsed.as_millis() as u64, "graph request");
}

/// A JSON batch of `polls` deltaLink polls got an answer (status 0: no answer); `answered`
/// of them came back as pages, the others are retried one by one.
pub fn graph_batch(status: u16, polls: usize, answered: usize, elapsed: Duration) {
    metrics()
        .graph_batches
        .with_label_values(&[status_class(status)])
        .inc();
    tracing::debug!(
        status,
        polls,
        answered,
        elapsed_ms = elapsed.as_millis() as u64,
        "graph batch"
    );
}

/// One deltaLink poll of a batch: answered with a page, or left to a request of its own.
pub fn graph_batched_poll(kind: PartitionKind, answered: bool) {
    metrics()
        .graph_batched_polls
        .with_label_values(&[kind.as_str(), if answered { "page" } else { "fallback" }])
        .inc();
}

/// A Graph request will be retried after `wait`.
pub fn graph_retry(kind: PartitionKind, reason: &str, wait: Duration, retry_after: bool) {
    let m = metrics();
    m.graph_retries.with_label_values(&[kind.as_str()]).inc();
    m.graph_retry_wait.inc_by(wait.as_secs_f64());
    tracing::debug!(kind = %kind, reason, wait_ms = wait.as_millis() as u64, retry_after, "retrying Graph request");
}

/// Graph answered 429.
pub fn graph_throttled(kind: PartitionKind, retry_after: Option<Duration>) {
    metrics()
        .graph_throttled
        .with_label_values(&[kind.as_str()])
        .inc();
    tracing::debug!(kind = %kind, retry_after_ms = retry_after.map(|d| d.as_millis() as u64), "throttled by Graph");
}

/// A new access token was obtained.
pub fn token_renewed(lifetime: Duration) {
    metrics().token_renewals.inc();
    tracing::info!(
        lifetime_secs = lifetime.as_secs(),
        "obtained Graph access token"
    );
}

/// A round restarts after `410 Gone`, from the last deltaLink or from scratch.
pub fn resync(partition: &PartitionId, code: &str, from: &str) {
    metrics()
        .resyncs
        .with_label_values(&[partition.kind().as_str()])
        .inc();
    tracing::warn!(partition = %partition, code, from, "sync state gone; restarting the round");
}

/// A transaction committed `records` records.
pub fn transaction_committed(records: usize, batches: usize, elapsed: Duration) {
    let m = metrics();
    m.transactions.with_label_values(&["committed"]).inc();
    m.transaction_seconds.observe(elapsed.as_secs_f64());
    tracing::debug!(
        records,
        batches,
        elapsed_ms = elapsed.as_millis() as u64,
        "transaction committed"
    );
}

/// Records of one kind and op were committed.
pub fn records_written(kind: PartitionKind, op: crate::source::Op, n: u64, bytes: u64) {
    let m = metrics();
    m.records_written
        .with_label_values(&[kind.as_str(), op.as_str()])
        .inc_by(n);
    m.bytes_written
        .with_label_values(&[kind.as_str()])
        .inc_by(bytes);
}

/// A transaction was aborted; its pages will be fetched again.
pub fn transaction_aborted(reason: &str, batches: usize) {
    metrics().transactions.with_label_values(&["aborted"]).inc();
    tracing::warn!(
        reason,
        batches,
        "transaction aborted; its pages will be fetched again"
    );
}

/// A partition completed a delta round; `age` is how old its data had become.
pub fn round_completed(partition: &PartitionId, round: u64, age: Duration) {
    let m = metrics();
    m.rounds_completed
        .with_label_values(&[partition.kind().as_str()])
        .inc();
    m.staleness.observe(age.as_secs_f64());
    tracing::debug!(partition = %partition, round, age_secs = age.as_secs(), "round complete");
}

/// Progress of an initial sync (callers keep this to a bounded rate).
pub fn initial_sync_progress(partition: &PartitionId, pages: u64, records: u64) {
    tracing::info!(partition = %partition, pages, records, "initial sync in progress");
}

/// An offset's link does not address its partition's own resource (another mailbox,
/// calendar, list, host or route): refused. `from` is `offsets_topic` (the partition then
/// starts over) or `rest` (the request is answered 400). The link itself is not logged.
pub fn offset_link_refused(partition: &PartitionId, from: &str, field: &str, why: &str) {
    metrics()
        .offset_links_refused
        .with_label_values(&[partition.kind().as_str(), from])
        .inc();
    tracing::warn!(partition = %partition, from, field, why, "offset link refused: not this partition's resource");
}

/// Records of a page left out: `unchanged` upserts (same content live), `not_live`
/// tombstones (key not live).
pub fn records_skipped(kind: PartitionKind, unchanged: usize, not_live: usize) {
    let m = metrics();
    for (reason, n) in [("unchanged", unchanged), ("not_live", not_live)] {
        if n > 0 {
            m.records_skipped
                .with_label_values(&[kind.as_str(), reason])
                .inc_by(n as u64);
        }
    }
}

/// A round from scratch ended: `tombstones` items it no longer returned, of `live` before.
pub fn reconciled(partition: &PartitionId, tombstones: usize, live: usize) {
    tracing::info!(partition = %partition, tombstones, live, "round from scratch complete; tombstoning what it no longer returned");
}

/// The reconciliation state was read at start.
pub fn state_loaded(partitions: usize, items: usize, elapsed: Duration) {
    let ms = elapsed.as_millis() as u64;
    tracing::info!(
        partitions,
        items,
        elapsed_ms = ms,
        "reconciliation state loaded"
    );
}

/// A partition without reconciliation state (upgraded) built it from a scan of its topic.
pub fn state_seeded(partition: &PartitionId, items: usize, elapsed: Duration) {
    tracing::info!(partition = %partition, items, elapsed_ms = elapsed.as_millis() as u64, "reconciliation state built from the topic (once)");
}

/// A partition failed and stops until restarted.
pub fn partition_failed(partition: &PartitionId, error: &str) {
    metrics()
        .partition_failures
        .with_label_values(&[partition.kind().as_str()])
        .inc();
    tracing::error!(partition = %partition, error, "partition failed");
}

/// A record Kafka refused went to the dead-letter topic (committed).
pub fn record_dead_lettered(partition: &PartitionId, item: &str, class: &str) {
    metrics()
        .records_dead_lettered
        .with_label_values(&[partition.kind().as_str(), class])
        .inc();
    tracing::warn!(partition = %partition, item, class, "record dead-lettered");
}

/// A record Kafka refused fails its partition (errors are not tolerated).
pub fn record_refused(partition: &PartitionId, class: &str, reason: &str) {
    metrics()
        .records_refused
        .with_label_values(&[partition.kind().as_str(), class])
        .inc();
    tracing::error!(partition = %partition, class, reason, "record refused by Kafka");
}

/// A partition's page was not committed (its transaction aborted); it is fetched again
/// after `wait`.
pub fn commit_retry(partition: &PartitionId, attempt: u32, wait: Duration, reason: &str) {
    metrics()
        .commit_retries
        .with_label_values(&[partition.kind().as_str()])
        .inc();
    tracing::debug!(partition = %partition, attempt, wait_ms = wait.as_millis() as u64, reason, "commit failed; fetching the page again after a backoff");
}

/// Kafka could not be reached at start-up; the worker tries again after `wait`.
pub fn kafka_unreachable(reason: &str, wait: Duration) {
    metrics().kafka_connect_failures.inc();
    tracing::error!(
        reason,
        retry_in_secs = wait.as_secs(),
        "cannot reach Kafka; nothing is read from Graph until it can"
    );
}

/// Partition tasks did not end within `worker.shutdown_timeout` of the worker's shutdown: the
/// `pending` ones are aborted, then the committer stops. A page is in Kafka with its offset or
/// not at all, so an aborted partition resumes where its last commit left it.
pub fn shutdown_timed_out(pending: usize, timeout: Duration) {
    metrics()
        .shutdown_timeouts
        .with_label_values(&["shutdown"])
        .inc();
    tracing::warn!(
        pending,
        timeout_ms = timeout.as_millis() as u64,
        "partition tasks did not stop within the shutdown timeout; aborting them"
    );
}

/// Partitions an operator command stopped did not end within `worker.shutdown_timeout`; the
/// command goes on without them (a partition still running is not started twice).
pub fn halt_timed_out(command: &str, pending: usize, timeout: Duration) {
    metrics()
        .shutdown_timeouts
        .with_label_values(&["command"])
        .inc();
    tracing::warn!(
        command,
        pending,
        timeout_ms = timeout.as_millis() as u64,
        "partitions did not stop within the shutdown timeout; going on without them"
    );
}

/// The background check's verdict on Kafka changed (logged on changes only, not per probe):
/// `problem` says why it is failing, `None` when it is reachable again.
pub fn kafka_health_changed(problem: Option<&str>) {
    metrics().health_kafka_ok.set(i64::from(problem.is_none()));
    match problem {
        Some(reason) => tracing::warn!(reason, "Kafka health check failing; not ready"),
        None => tracing::info!("Kafka health check passing"),
    }
}

/// Whether Graph answers changed (logged on changes only): `problem` says why it is failing,
/// `None` when it answers again.
pub fn graph_health_changed(problem: Option<&str>) {
    metrics().health_graph_ok.set(i64::from(problem.is_none()));
    match problem {
        Some(reason) => tracing::warn!(reason, "Graph health check failing; not ready"),
        None => tracing::info!("Graph health check passing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example dashboard only uses metrics that exist.
    #[test]
    fn dashboard_names_only_real_metrics() {
        let known = [
            GRAPH_REQUESTS,
            GRAPH_REQUEST_SECONDS,
            GRAPH_RETRIES,
            GRAPH_THROTTLED,
            GRAPH_RETRY_WAIT_SECONDS,
            TOKEN_RENEWALS,
            RESYNCS,
            RECORDS_WRITTEN,
            BYTES_WRITTEN,
            TRANSACTIONS,
            TRANSACTION_SECONDS,
            PARTITIONS,
            PARTITION_FAILURES,
            ROUNDS_COMPLETED,
            STALENESS_MAX,
            STALENESS,
            IN_FLIGHT,
            PRODUCER_QUEUE,
            PARTITIONS_TRACKED,
            PARTITION_STALENESS,
            PARTITION_PAGES,
            PARTITION_STATE,
            RECORDS_DEAD_LETTERED,
            RECORDS_REFUSED,
            COMMIT_RETRIES,
            KAFKA_CONNECT_FAILURES,
            SHUTDOWN_TIMEOUTS,
            HEALTH_KAFKA_OK,
            HEALTH_GRAPH_OK,
        ];
        let dash = include_str!("../config/grafana/graph-cdc-dashboard.json");
        let mut used = 0;
        for (i, _) in dash.match_indices("graph_cdc_") {
            let name: String = dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = name.trim_end_matches("_bucket");
            if base == "graph_cdc_" {
                continue;
            }
            assert!(
                known.contains(&base),
                "unknown metric {name} in the dashboard"
            );
            used += 1;
        }
        assert!(used >= 10);
        // Every metric registers without a clash.
        metrics();
        assert!(render().contains(TOKEN_RENEWALS));
    }
}
