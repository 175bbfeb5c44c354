//! Graph's side: requests, batches, retries, throttling, tokens, rounds.

use std::time::Duration;

use super::metrics;
use crate::source::{PartitionId, PartitionKind};

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
pub fn graph_request(kind: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    m.graph_requests
        .with_label_values(&[kind, status_class(status)])
        .inc();
    m.graph_request_seconds
        .with_label_values(&[kind])
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
pub fn graph_retry(kind: &str, reason: &str, wait: Duration, retry_after: bool) {
    let m = metrics();
    m.graph_retries.with_label_values(&[kind]).inc();
    m.graph_retry_wait.inc_by(wait.as_secs_f64());
    tracing::debug!(kind = %kind, reason, wait_ms = wait.as_millis() as u64, retry_after, "retrying Graph request");
}

/// Graph answered 429.
pub fn graph_throttled(kind: &str, retry_after: Option<Duration>) {
    metrics().graph_throttled.with_label_values(&[kind]).inc();
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

/// A round was abandoned as a paging loop (`why`: `link_repeated`, `page_repeated`,
/// `too_many_pages`) after `pages` pages; `then` says where the partition goes on from
/// (`delta_link`, `initial`) or that it fails (`failed`).
pub fn round_abandoned(partition: &PartitionId, why: &str, then: &str, pages: u32) {
    metrics()
        .rounds_abandoned
        .with_label_values(&[partition.kind().as_str(), why])
        .inc();
    tracing::warn!(partition = %partition, why, then, pages, "paging loop: round abandoned");
}

/// A rolling calendar view's window moved from `from` to `to`: its next round reads `to` from
/// scratch.
pub fn window_rolled(partition: &PartitionId, from: &str, to: &str) {
    metrics()
        .rounds_from_scratch
        .with_label_values(&[partition.kind().as_str(), "window"])
        .inc();
    tracing::info!(partition = %partition, from, to, "window rolled; reading the new window from scratch");
}

/// A partition's periodic reconcile is due, `since_secs` after its last round from scratch.
pub fn reconcile_due(partition: &PartitionId, since_secs: i64) {
    metrics()
        .rounds_from_scratch
        .with_label_values(&[partition.kind().as_str(), "reconcile"])
        .inc();
    tracing::info!(partition = %partition, since_secs, "periodic reconcile: reading the partition from scratch");
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
