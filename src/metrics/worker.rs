//! The worker's side: partitions failing, offsets refused, reconciliation state, shutdown,
//! health.

use std::time::Duration;

use super::metrics;
use crate::source::PartitionId;

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

/// A partition failed and stops until restarted.
pub fn partition_failed(partition: &PartitionId, error: &str) {
    metrics()
        .partition_failures
        .with_label_values(&[partition.kind().as_str()])
        .inc();
    tracing::error!(partition = %partition, error, "partition failed");
}

/// A partition's commit was refused because another worker fenced its shard's producer:
/// it stops here, and the shard is given up (see [`shard_fenced`]).
pub fn partition_fenced(partition: &PartitionId, why: &dyn std::fmt::Display) {
    tracing::warn!(partition = %partition, error = %why, "commit fenced: the shard has another owner");
}

/// Shard `shard`'s producer was fenced while this worker believed it owned the shard: it is
/// given up (`change="fenced"`); `rejoin`: the group still says it is this worker's after a
/// session timeout, so the worker rejoins the group.
pub fn shard_fenced(shard: u32, rejoin: bool) {
    if rejoin {
        tracing::warn!(
            shard,
            "a fenced shard is still assigned here; rejoining the workers' group"
        );
        return;
    }
    metrics().shard_moves.with_label_values(&["fenced"]).inc();
    tracing::warn!(
        shard,
        "shard fenced by another worker: given up here until the group assigns it again"
    );
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

/// A configured user was resolved to its object id: `partitions` of it start.
pub fn user_resolved(id: &str, principal: &str, partitions: usize) {
    tracing::debug!(user = id, principal, partitions, "user resolved");
}

/// Looking a configured user up failed on Graph's side; tried again after `wait`.
pub fn user_lookup_retry(user: &str, error: &str, wait: Duration) {
    tracing::warn!(
        user,
        error,
        wait_secs = wait.as_secs(),
        "looking the user up failed; retrying later"
    );
}

/// A configured principal name is no longer the user's: found again through the offsets.
pub fn user_renamed(configured: &str, now: &str, id: &str) {
    tracing::warn!(
        configured,
        now,
        id,
        "user renamed: its partitions go on under the same id; update the configuration"
    );
}

/// A configured principal name names another account now (`id` deleted, the name given to
/// `now`): its partitions move to the new id.
pub fn user_moved(configured: &str, id: &str, now: &str) {
    tracing::warn!(
        configured,
        id,
        now,
        "user deleted and its name given to another account: its partitions move to the new account; the old account's records stay under its id"
    );
}

/// Graph cannot serve a partition's user (`answers` in a row): `UNASSIGNED`, asked again
/// after `wait`. Logged once at info, then at debug: thousands of unlicensed members must
/// not flood the logs.
pub fn partition_unserved(partition: &PartitionId, why: &str, answers: u32, wait: Duration) {
    let wait_secs = wait.as_secs();
    if answers == 1 {
        tracing::info!(partition = %partition, reason = why, wait_secs, "Graph cannot serve this user; partition unassigned, asked again rarely");
    } else {
        tracing::debug!(partition = %partition, reason = why, answers, wait_secs, "Graph still cannot serve this user");
    }
}

/// A partition Graph could not serve answers again.
pub fn partition_served(partition: &PartitionId) {
    tracing::info!(partition = %partition, "Graph serves this user again; partition running");
}

/// The members topic says `joined` members joined the group and `left` left (each worker
/// following it counts: every one carries out its own shards' part).
pub fn membership_changed(partition: &PartitionId, joined: usize, left: usize) {
    if let PartitionId::GroupMembers { group } = partition {
        let m = &metrics().membership_changes;
        m.with_label_values(&[group.as_str(), "joined"])
            .inc_by(joined as u64);
        m.with_label_values(&[group.as_str(), "left"])
            .inc_by(left as u64);
    }
    tracing::info!(partition = %partition, joined, left, "group membership changed");
}

/// The members topic was read to its end: the owned shards' partitions of the `groups`'
/// members started (`partitions`), departed members' departed.
pub fn members_resumed(groups: usize, partitions: usize) {
    tracing::info!(
        groups,
        partitions,
        "group sources: members topic read; members' partitions started"
    );
}

/// A departed member's `partitions` (of one shard) had their offsets reset, their records
/// tombstoned if `tombstoned`, and stopped.
pub fn member_departed(user: &str, partitions: usize, tombstoned: bool) {
    tracing::info!(
        user,
        partitions,
        tombstoned,
        "departed member's partitions reset and stopped"
    );
}

/// Shards taken over: their committers started (fencing their previous writer), their
/// offsets and state read; `owned` now.
pub fn shards_assigned(shards: &[u32], owned: &[u32], elapsed: Duration) {
    metrics().shards_owned.set(owned.len() as i64);
    metrics()
        .shard_moves
        .with_label_values(&["assigned"])
        .inc_by(shards.len() as u64);
    tracing::info!(
        ?shards,
        ?owned,
        elapsed_ms = elapsed.as_millis() as u64,
        "shards assigned: their partitions start"
    );
}

/// Shards given up (`lost`: taken by another worker already), `halted` partitions stopped.
pub fn shards_revoked(shards: &[u32], lost: bool, halted: usize, elapsed: Duration, owned: usize) {
    let m = metrics();
    m.shards_owned.set(owned as i64);
    m.shard_moves
        .with_label_values(&[if lost { "lost" } else { "revoked" }])
        .inc_by(shards.len() as u64);
    tracing::info!(
        ?shards,
        lost,
        halted,
        elapsed_ms = elapsed.as_millis() as u64,
        "shards revoked: their partitions stopped and committed"
    );
}
