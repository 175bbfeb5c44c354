//! Telemetry as named events: each function logs one event with `tracing` (fields first,
//! message last) and updates its Prometheus metric. Metric names are the constants below;
//! everything registers in one registry that `/metrics` serves.
//!
//! # Files
//!
//! - `mod.rs`: the names, [`Metrics`] and its registry, [`render`].
//! - `graph.rs`: Graph's side (requests, batches, retries, tokens, rounds).
//! - `kafka.rs`: Kafka's side (transactions, records written, refused or left out).
//! - `worker.rs`: the worker's side (failed partitions, refused offsets, reconciliation
//!   state, shutdown, health).

use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod graph;
mod kafka;
mod notifications;
mod worker;

pub use graph::{
    graph_batch, graph_batched_poll, graph_request, graph_retry, graph_throttled,
    initial_sync_progress, reconcile_due, resync, round_abandoned, round_completed, token_renewed,
    window_rolled,
};
pub use kafka::{
    commit_retry, kafka_unreachable, record_dead_lettered, record_refused, records_skipped,
    records_written, transaction_aborted, transaction_committed,
};
pub use notifications::{
    eventhub_assigned, eventhub_committed, eventhub_consumer_error, eventhub_message,
    eventhub_unavailable,
};
pub use notifications::{
    notification_received, notification_triggered, notifications_forwarded, subscription_changed,
    subscription_failed, subscriptions_active,
};
pub use worker::{
    graph_health_changed, halt_timed_out, kafka_health_changed, member_departed, members_resumed,
    membership_changed, offset_link_refused, partition_failed, partition_fenced, partition_served,
    partition_unserved, reconciled, shard_fenced, shards_assigned, shards_revoked,
    shutdown_timed_out, state_loaded, state_seeded, user_lookup_retry, user_moved, user_renamed,
    user_resolved,
};

pub const GRAPH_REQUESTS: &str = "graph_cdc_graph_requests_total";
pub const GRAPH_REQUEST_SECONDS: &str = "graph_cdc_graph_request_duration_seconds";
pub const GRAPH_RETRIES: &str = "graph_cdc_graph_retries_total";
pub const GRAPH_THROTTLED: &str = "graph_cdc_graph_throttled_total";
pub const GRAPH_RETRY_WAIT_SECONDS: &str = "graph_cdc_graph_retry_wait_seconds_total";
pub const TOKEN_RENEWALS: &str = "graph_cdc_token_renewals_total";
pub const RESYNCS: &str = "graph_cdc_resyncs_total";
pub const ROUNDS_FROM_SCRATCH: &str = "graph_cdc_rounds_from_scratch_total";
pub const ROUNDS_ABANDONED: &str = "graph_cdc_rounds_abandoned_total";
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
pub const MEMBERSHIP_CHANGES: &str = "graph_cdc_group_membership_changes_total";
pub const SHARDS_OWNED: &str = "graph_cdc_shards_owned";
pub const SHARD_MOVES: &str = "graph_cdc_shard_moves_total";
pub const NOTIFICATIONS: &str = "graph_cdc_notifications_total";
pub const NOTIFIED_ROUNDS: &str = "graph_cdc_notified_rounds_total";
pub const SUBSCRIPTION_CHANGES: &str = "graph_cdc_subscription_changes_total";
pub const SUBSCRIPTIONS: &str = "graph_cdc_subscriptions";
pub const EVENTHUB_MESSAGES: &str = "graph_cdc_eventhub_messages_total";
pub const EVENTHUB_COMMITS: &str = "graph_cdc_eventhub_commits_total";

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
    pub rounds_from_scratch: IntCounterVec,
    pub rounds_abandoned: IntCounterVec,
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
    pub membership_changes: IntCounterVec,
    pub shards_owned: IntGauge,
    pub shard_moves: IntCounterVec,
    pub notifications: IntCounterVec,
    pub notified_rounds: IntCounterVec,
    pub subscription_changes: IntCounterVec,
    pub subscriptions: IntGauge,
    pub eventhub_messages: IntCounterVec,
    pub eventhub_commits: IntCounterVec,
}

/// Registers `m` in `r` and hands it back.
fn registered<M: Collector + Clone + 'static>(r: &Registry, m: M) -> Result<M, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn build() -> Result<Metrics, prometheus::Error> {
    let r = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        registered(&r, IntCounterVec::new(Opts::new(name, help), labels)?)
    };
    let gauge = |name: &str, help: &str| registered(&r, IntGauge::new(name, help)?);
    let gauges = |name: &str, help: &str, labels: &[&str]| {
        registered(&r, IntGaugeVec::new(Opts::new(name, help), labels)?)
    };
    let latency = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    Ok(Metrics {
        graph_requests: counter(
            GRAPH_REQUESTS,
            "Graph requests by partition kind and status class",
            &["kind", "status"],
        )?,
        graph_request_seconds: registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(GRAPH_REQUEST_SECONDS, "Graph request latency")
                    .buckets(latency.to_vec()),
                &["kind"],
            )?,
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
        graph_retry_wait: registered(
            &r,
            prometheus::Counter::new(
                GRAPH_RETRY_WAIT_SECONDS,
                "Seconds spent waiting before retrying Graph requests (Retry-After or backoff)",
            )?,
        )?,
        token_renewals: registered(
            &r,
            IntCounter::new(TOKEN_RENEWALS, "Access tokens fetched")?,
        )?,
        resyncs: counter(RESYNCS, "Rounds restarted after 410 Gone", &["kind"])?,
        rounds_from_scratch: counter(
            ROUNDS_FROM_SCRATCH,
            "Rounds begun from scratch on a partition's own schedule (window roll, periodic reconcile)",
            &["kind", "reason"],
        )?,
        rounds_abandoned: counter(
            ROUNDS_ABANDONED,
            "Rounds abandoned as paging loops (a repeated nextLink or page, more than graph.max_pages_per_round pages), by why",
            &["kind", "why"],
        )?,
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
        transaction_seconds: registered(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    TRANSACTION_SECONDS,
                    "Kafka transaction duration, begin to commit",
                )
                .buckets(latency.to_vec()),
            )?,
        )?,
        partitions: gauges(PARTITIONS, "Partitions by kind and state", &["kind", "state"])?,
        partition_failures: counter(PARTITION_FAILURES, "Partitions marked failed", &["kind"])?,
        rounds_completed: counter(ROUNDS_COMPLETED, "Delta rounds completed", &["kind"])?,
        in_flight: gauge(IN_FLIGHT, "Graph requests in flight")?,
        staleness_max: registered(
            &r,
            prometheus::Gauge::new(
                STALENESS_MAX,
                "Seconds since the least recently completed round of any partition",
            )?,
        )?,
        staleness: registered(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    STALENESS,
                    "How old a partition's data had become when its round completed (time since its previous round)",
                )
                .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
            )?,
        )?,
        producer_queue: gauge(
            PRODUCER_QUEUE,
            "Messages queued in the producer, not yet delivered",
        )?,
        partitions_tracked: gauge(PARTITIONS_TRACKED, "Partitions this worker tracks")?,
        partition_staleness: registered(
            &r,
            prometheus::GaugeVec::new(
                Opts::new(
                    PARTITION_STALENESS,
                    "Seconds since the partition's last completed round (per-partition metrics only)",
                ),
                &["partition"],
            )?,
        )?,
        partition_pages: gauges(
            PARTITION_PAGES,
            "Pages fetched in the partition's current round (per-partition metrics only)",
            &["partition"],
        )?,
        partition_state: gauges(
            PARTITION_STATE,
            "1 for the partition's current state (per-partition metrics only)",
            &["partition", "state"],
        )?,
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
        kafka_connect_failures: registered(
            &r,
            IntCounter::new(
                KAFKA_CONNECT_FAILURES,
                "Failed attempts to reach Kafka at start-up",
            )?,
        )?,
        shutdown_timeouts: counter(
            SHUTDOWN_TIMEOUTS,
            "Times partition tasks did not end within worker.shutdown_timeout, by when (shutdown or command)",
            &["during"],
        )?,
        health_kafka_ok: gauge(
            HEALTH_KAFKA_OK,
            "1 while the background check reached Kafka within its window (what /readyz reads)",
        )?,
        health_graph_ok: gauge(
            HEALTH_GRAPH_OK,
            "1 while Graph answers: a recent success, or no failure since the last one",
        )?,
        offset_links_refused: counter(
            OFFSET_LINKS_REFUSED,
            "Offset links refused for not addressing their partition's own resource, by where they came from",
            &["kind", "from"],
        )?,
        records_skipped: counter(
            RECORDS_SKIPPED,
            "Records not written: an upsert whose content is live already, a tombstone for a key not live",
            &["kind", "reason"],
        )?,
        membership_changes: counter(
            MEMBERSHIP_CHANGES,
            "Group source members who joined or left, by group object id",
            &["group", "change"],
        )?,
        shards_owned: gauge(SHARDS_OWNED, "Shards this worker owns (worker.shards in all)")?,
        shard_moves: counter(
            SHARD_MOVES,
            "Shards assigned to this worker, revoked from it, or lost (taken by another worker while this one was unheard)",
            &["change"],
        )?,
        notifications: counter(
            NOTIFICATIONS,
            "Change and lifecycle notifications received, by outcome (accepted, wrong_client_state, unknown_subscription, malformed, overloaded, replayed)",
            &["kind", "outcome"],
        )?,
        notified_rounds: counter(
            NOTIFIED_ROUNDS,
            "What accepted notifications did to their partition (woken, coalesced into a due or running round)",
            &["kind", "effect"],
        )?,
        subscription_changes: counter(
            SUBSCRIPTION_CHANGES,
            "Subscription requests by action (created, renewed, deleted, recreated, reauthorized) and outcome",
            &["action", "outcome"],
        )?,
        subscriptions: gauge(SUBSCRIPTIONS, "Active change notification subscriptions this worker holds")?,
        eventhub_messages: counter(
            EVENTHUB_MESSAGES,
            "Event hub messages read (delivery = eventhub), by outcome (notices, validation, malformed, error)",
            &["outcome"],
        )?,
        eventhub_commits: counter(
            EVENTHUB_COMMITS,
            "Event hub consumer offset commits, by outcome (ok, failed, stale)",
            &["outcome"],
        )?,
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
            ROUNDS_FROM_SCRATCH,
            ROUNDS_ABANDONED,
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
        let dash = include_str!("../../config/grafana/graph-cdc-dashboard.json");
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
