//! Kafka's side: transactions, records written, refused or left out, reaching Kafka.

use std::time::Duration;

use super::metrics;
use crate::source::{PartitionId, PartitionKind};

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
