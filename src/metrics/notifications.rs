//! Change notifications' events (issue 16): notifications received, what they did, and the
//! subscriptions behind them.

use super::metrics;
use crate::source::PartitionId;

/// A notification Graph posted, by kind (`change`, `lifecycle`) and outcome (`accepted`,
/// `wrong_client_state`, `unknown_subscription`, `malformed`, `overloaded`, `replayed`).
/// Never logs the client state.
pub fn notification_received(kind: &str, outcome: &str, subscription: &str) {
    metrics()
        .notifications
        .with_label_values(&[kind, outcome])
        .inc();
    match outcome {
        "accepted" => tracing::trace!(kind, subscription, "notification accepted"),
        _ => tracing::debug!(kind, outcome, subscription, "notification dropped"),
    }
}

/// An accepted notification's effect on its partition (`woken`, `already_due`, `running`,
/// `not_here`).
pub fn notification_triggered(partition: &PartitionId, effect: &str) {
    metrics()
        .notified_rounds
        .with_label_values(&[partition.kind().as_str(), effect])
        .inc();
    tracing::debug!(partition = %partition, effect, "notification: round triggered");
}

/// A subscription created, renewed, deleted, recreated or reauthorized.
pub fn subscription_changed(partition: &PartitionId, action: &str, id: &str, expires: &str) {
    metrics()
        .subscription_changes
        .with_label_values(&[action, "ok"])
        .inc();
    tracing::debug!(partition = %partition, action, subscription = id, expires, "subscription");
}

/// A subscription request that failed (retried later; the partition keeps polling).
pub fn subscription_failed(partition: &PartitionId, action: &str, why: &str) {
    metrics()
        .subscription_changes
        .with_label_values(&[action, "failed"])
        .inc();
    tracing::warn!(partition = %partition, action, why, "subscription request failed; polling meanwhile");
}

/// How many subscriptions the worker holds now.
pub fn subscriptions_active(n: usize) {
    metrics().subscriptions.set(n as i64);
}

/// Notifications of other workers' subscriptions handed to worker `to` (`forwarded`,
/// `forward_failed`; `no_other_worker`: nobody to hand them to, dropped).
pub fn notifications_forwarded(to: &str, n: usize, outcome: &str) {
    metrics()
        .notifications
        .with_label_values(&["forward", outcome])
        .inc_by(n as u64);
    tracing::debug!(
        to,
        n,
        outcome,
        "notifications of another worker's subscriptions"
    );
}

/// A message of the event hub (`delivery = "eventhub"`), by outcome: `notices` (handed to
/// the inbox), `validation` (Graph's validation message at a new subscription, ignored),
/// `malformed` (not a notification collection, dropped).
pub fn eventhub_message(outcome: &str, partition: i32, offset: i64) {
    metrics()
        .eventhub_messages
        .with_label_values(&[outcome])
        .inc();
    match outcome {
        "notices" => tracing::trace!(partition, offset, "event hub message"),
        _ => tracing::debug!(outcome, partition, offset, "event hub message ignored"),
    }
}

/// The event hub consumer's offsets committed (`ok`, `failed`, or `stale`: a rebalance came
/// in between, the group re-reads them), for `partitions` hub partitions.
pub fn eventhub_committed(outcome: &str, partitions: usize) {
    metrics()
        .eventhub_commits
        .with_label_values(&[outcome])
        .inc();
    match outcome {
        "ok" => tracing::trace!(partitions, "event hub offsets committed"),
        _ => tracing::debug!(outcome, partitions, "event hub offsets not committed"),
    }
}

/// The event hub's consumer was assigned `partitions` partitions of the hub.
pub fn eventhub_assigned(partitions: usize) {
    tracing::info!(partitions, "event hub partitions assigned");
}

/// An error of the event hub's consumer (`stage`: `poll`, `commit`, or librdkafka's
/// reason); librdkafka retries by itself. Never carries the connection string.
pub fn eventhub_consumer_error(error: &str, stage: &str) {
    metrics()
        .eventhub_messages
        .with_label_values(&["error"])
        .inc();
    tracing::warn!(error, stage, "event hub consumer error");
}

/// The event hub's consumer could not start: notifications are not read, partitions keep
/// their safety-net polls.
pub fn eventhub_unavailable(why: &str) {
    tracing::error!(
        why,
        "event hub consumer not started; change notifications are not read"
    );
}
