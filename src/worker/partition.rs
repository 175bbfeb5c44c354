//! One partition's loop: fetch a page, commit it with its offset, move on; pace rounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::graph::{GraphError, PartitionReader};
use crate::metrics;
use crate::sink::SinkError;
use crate::source::{Op, PartitionId, PartitionKind};

use super::supervisor::{spawn_partition, stop_partition};
use super::{PartitionState, Shared};

pub(super) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

pub(super) fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let f = 1.0 + rand::rng().random_range(-jitter..jitter);
    base.mul_f64(f.max(0.0))
}

pub(super) async fn partition_loop(
    shared: &Arc<Shared>,
    reader: &mut PartitionReader,
    cancel: &CancellationToken,
    resync: &AtomicBool,
) -> PartitionState {
    let id = reader.id.clone();
    let mut failures = 0u32;
    let mut aborts = 0u32;
    let mut paused = shared.paused.subscribe();
    // Initial-sync progress, logged at most every 10 seconds.
    let (mut pages, mut records) = (0u64, 0u64);
    let mut last_progress = std::time::Instant::now();
    // The next page, fetched while the previous one was being committed (see below).
    let mut prefetched: Option<Result<crate::source::SourceBatch, GraphError>> = None;
    loop {
        if cancel.is_cancelled() {
            return PartitionState::Stopped;
        }
        // Paused: keep the place and wait.
        while *paused.borrow_and_update() {
            prefetched = None;
            tokio::select! {
                r = paused.changed() => if r.is_err() { return PartitionState::Stopped },
                _ = cancel.cancelled() => return PartitionState::Stopped,
            }
        }
        if resync.swap(false, Ordering::SeqCst) {
            metrics::resync(&id, "signal", "initial");
            reader.restart();
            prefetched = None;
        }
        let round = reader.offset().round;
        let fetched = match prefetched.take() {
            Some(r) => r,
            // Boxed, like the other large sub-futures below: a parked partition (10,000 of
            // them) then holds a small future instead of room for an HTTP request.
            None => tokio::select! {
                r = Box::pin(reader.next_batch(&shared.client)) => r,
                _ = cancel.cancelled() => return PartitionState::Stopped,
            },
        };
        let batch = match fetched {
            Ok(b) => {
                shared
                    .status
                    .graph_ok
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                b
            }
            // The list of a task partition is gone: stop tracking it and forget its offset.
            Err(GraphError::Client { status: 404, .. }) if id.kind() == PartitionKind::Tasks => {
                tracing::info!(partition = %id, "task list no longer exists; resetting its offset");
                let _ = Box::pin(shared.sink.write_offsets(vec![((*id).clone(), None)])).await;
                shared.tracked.lock().remove(&*id);
                return PartitionState::Stopped;
            }
            Err(e) if e.is_partition_fault() => {
                metrics::partition_failed(&id, &e.to_string());
                return PartitionState::Failed(e.to_string());
            }
            Err(e) => {
                // Throttled or failing past every retry, auth trouble: try again later,
                // from the same position.
                failures += 1;
                let wait = jittered(Duration::from_secs(5).saturating_mul(failures.min(12)), 0.2);
                tracing::warn!(partition = %id, error = %e, wait_secs = wait.as_secs(), "fetch failed; retrying later");
                if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                    return PartitionState::Stopped;
                }
                continue;
            }
        };
        failures = 0;
        let mut batch = batch;
        if let Some(seen) = batch.full_resync_seen.take() {
            match Box::pin(tombstones_after_full_resync(shared, &batch, &seen)).await {
                Ok(extra) => batch.records.extend(extra),
                // The same page is fetched again and the comparison retried.
                Err(e) => {
                    tracing::warn!(partition = %id, error = %e, "reading back keys after a full resync failed; retrying");
                    if !Box::pin(sleep_or_cancel(Duration::from_secs(1), cancel)).await {
                        return PartitionState::Stopped;
                    }
                    continue;
                }
            }
            if id.kind() == PartitionKind::TaskLists {
                for r in batch.records.iter().filter(|r| r.op == Op::Delete) {
                    batch.resets.push(Arc::new(PartitionId::Tasks {
                        user: id.user().to_string(),
                        list: r.id.clone(),
                    }));
                }
            }
        }
        let ids: Vec<(Op, String)> = batch.records.iter().map(|r| (r.op, r.id.clone())).collect();
        let offset = batch.offset.clone();
        let round_done = offset.round > round;
        if batch.records.is_empty() && batch.resets.is_empty() {
            if Box::pin(shared.sink.idle(id.clone(), offset.clone()))
                .await
                .is_err()
            {
                return PartitionState::Stopped;
            }
            reader.advance(offset, &ids);
        } else {
            let lists: Vec<(Op, String)> = if id.kind() == PartitionKind::TaskLists {
                ids.clone()
            } else {
                Vec::new()
            };
            // New lists get their task partition's first offset in this same transaction.
            for (op, list) in &lists {
                let p = PartitionId::Tasks {
                    user: id.user().to_string(),
                    list: list.clone(),
                };
                if *op == Op::Upsert && !shared.knows(&p) {
                    batch.starts.push(Arc::new(p));
                }
            }
            // Mid-round, the next page is fetched while this one commits, on a copy of the
            // reader that assumes the commit: a partition would otherwise wait a whole
            // transaction between pages. Nothing of it reaches the sink before the commit is
            // acknowledged; if the commit fails, it is dropped and the page refetched.
            let mut ahead = (!round_done).then(|| {
                let mut a = reader.clone();
                a.advance(offset.clone(), &ids);
                a
            });
            let (committed, next) = match ahead.as_mut() {
                Some(a) => {
                    let fetch = async {
                        tokio::select! {
                            r = a.next_batch(&shared.client) => Some(r),
                            _ = cancel.cancelled() => None,
                        }
                    };
                    Box::pin(async { tokio::join!(shared.sink.commit(batch), fetch) }).await
                }
                None => (Box::pin(shared.sink.commit(batch)).await, None),
            };
            match committed {
                Ok(()) => {
                    aborts = 0;
                    shared
                        .status
                        .offsets
                        .lock()
                        .insert((*id).clone(), offset.clone());
                    match (ahead, next) {
                        (Some(a), Some(next)) => {
                            *reader = a;
                            prefetched = Some(next);
                        }
                        _ => reader.advance(offset, &ids),
                    }
                    for (op, list) in lists {
                        let p = PartitionId::Tasks {
                            user: id.user().to_string(),
                            list,
                        };
                        match op {
                            Op::Upsert => spawn_partition(shared, p),
                            Op::Delete => stop_partition(shared, &p),
                        }
                    }
                }
                Err(SinkError::Aborted(why)) => {
                    // The position did not move: the same page is fetched again, after a
                    // backoff that grows while its transactions keep failing.
                    aborts += 1;
                    let wait = jittered(
                        Duration::from_millis(100)
                            .saturating_mul(1 << aborts.min(9))
                            .min(Duration::from_secs(30)),
                        0.2,
                    );
                    metrics::commit_retry(&id, aborts, wait, &why);
                    if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                        return PartitionState::Stopped;
                    }
                    continue;
                }
                Err(SinkError::Rejected(why)) => {
                    metrics::partition_failed(&id, &why);
                    return PartitionState::Failed(why);
                }
                Err(e) => {
                    if matches!(e, SinkError::Fatal(_)) {
                        *shared.fatal.lock() = Some(e);
                        shared.shutdown.cancel();
                    }
                    return PartitionState::Stopped;
                }
            }
        }
        {
            let mut rp = shared.status.round_pages.lock();
            let n = rp.entry((*id).clone()).or_default();
            *n = if round_done { 0 } else { *n + 1 };
        }
        if round == 1 {
            pages += 1;
            records += ids.len() as u64;
            if round_done || last_progress.elapsed() >= Duration::from_secs(10) {
                metrics::initial_sync_progress(&id, pages, records);
                last_progress = std::time::Instant::now();
            }
        }
        if round_done {
            let now = std::time::Instant::now();
            let age = shared
                .status
                .fresh_at
                .lock()
                .insert((*id).clone(), now)
                .map_or(Duration::ZERO, |t| now.duration_since(t));
            metrics::round_completed(&id, round, age);
            let wait = jittered(shared.spec.poll_interval, shared.spec.poll_jitter);
            if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                return PartitionState::Stopped;
            }
        }
    }
}

/// After a full resync round: tombstones for the partition's keys in Kafka that the round
/// did not return (Graph reports no deletions in a full round).
async fn tombstones_after_full_resync(
    shared: &Arc<Shared>,
    batch: &crate::source::SourceBatch,
    seen: &std::collections::HashSet<String>,
) -> Result<Vec<crate::source::SourceRecord>, SinkError> {
    let p = batch.partition.clone();
    let opts = shared.spec.sink.clone();
    let topic = opts.topics.for_kind(p.kind()).to_string();
    let prefix = p.key_prefix();
    let live = tokio::task::spawn_blocking(move || {
        crate::sink::scan::live_keys(&opts, &topic, &prefix, Duration::from_secs(120))
    })
    .await
    .map_err(|e| SinkError::Aborted(e.to_string()))??;
    let n_live = live.len();
    let in_batch: std::collections::HashSet<&str> =
        batch.records.iter().map(|r| r.id.as_str()).collect();
    let mut out = Vec::new();
    for key in live {
        let Some(item) = crate::source::key_id(&key) else {
            continue;
        };
        if seen.contains(&item) || in_batch.contains(item.as_str()) {
            continue;
        }
        out.push(crate::source::SourceRecord {
            partition: p.clone(),
            key: key.into(),
            id: item,
            value: None,
            op: Op::Delete,
            round: batch
                .records
                .first()
                .map_or(batch.offset.round.saturating_sub(1), |r| r.round),
            removed_reason: Some("resync".into()),
            resync: true,
        });
    }
    tracing::info!(partition = %p, returned = seen.len(), in_kafka = n_live, tombstones = out.len(), "full resync complete; tombstoning the items it no longer returns");
    Ok(out)
}
