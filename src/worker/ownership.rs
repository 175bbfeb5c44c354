//! Shards coming and going as the workers' group rebalances (see `sinks.rs`).
//!
//! - **Assigned**: each shard's committer starts first (fencing the shard's previous writer
//!   and ending its open transaction); then the offsets and state topics are read to their
//!   high watermarks with `read_committed` (so the previous writer's last transaction is in
//!   what is read), and the shards' partitions take what was read and start. Until then
//!   the shards are not owned for a partition that would start (`Sinks::adopted`): one
//!   started earlier (a group member's, as the members topic says) would start from scratch.
//! - **Revoked**: the shards' partitions are halted (in-flight commits waited for), then their
//!   committers commit what they hold (idle offsets) and stop; only then does the rebalance
//!   go on and another worker take them. What this worker knew of them is dropped.
//!
//! A single worker owns every shard: it reads and starts everything once, as before shards.

use std::collections::HashSet;
use std::sync::Arc;

use crate::metrics;
use crate::sink::membership::Membership;
use crate::sink::offsets_store::load_offsets;
use crate::sink::state::load_state;
use crate::sink::SinkError;
use crate::source::{PartitionId, SourceOffset};

use super::{links, supervisor, Shared, WorkerError};

/// Takes `shards` over (see the module docs).
pub(super) async fn assigned(shared: &Arc<Shared>, shards: &[u32]) -> Result<(), WorkerError> {
    let loaded = &shared.status.offsets_loaded;
    if shards.is_empty() {
        // In the group with nothing new: nothing to read (a worker beyond the shard count
        // is ready, idle).
        loaded.store(true, std::sync::atomic::Ordering::SeqCst);
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    // Each producer's initialisation waits for its shard's previous writer: side by side.
    let opened = futures_util::future::join_all(shards.iter().map(|n| shared.sinks.open(*n))).await;
    opened.into_iter().collect::<Result<Vec<()>, _>>()?;
    let spec = &shared.spec;
    let new: Arc<HashSet<u32>> = Arc::new(shards.iter().copied().collect());
    let router = shared.sinks.router.clone();
    let ours = move |p: &PartitionId| new.contains(&router.shard(p));
    let loaded = read_offsets(shared, ours.clone()).await?;
    let timeout = spec.offsets_load_timeout;
    let (cfg, topic, name) = (
        spec.sink.consumer_config(),
        spec.sink.state_topic.clone(),
        spec.sink.connector.clone(),
    );
    let keep = ours.clone();
    let state = tokio::task::spawn_blocking(move || load_state(&cfg, &topic, &name, keep, timeout))
        .await??;
    let (partitions, items) = (state.len(), state.values().map(|l| l.len()).sum());
    // Each identity made once, shared by every map that keys by it (`status.rs`).
    let loaded: Vec<(Arc<PartitionId>, SourceOffset)> =
        loaded.into_iter().map(|(p, o)| (Arc::new(p), o)).collect();
    shared
        .states
        .adopt(state, loaded.iter().map(|(p, o)| (p, o)));
    if let Some(subs) = &shared.subscriptions {
        subs.adopt(loaded.iter().map(|(p, o)| (p, o)));
    }
    {
        let mut offsets = shared.status.offsets.lock();
        offsets.retain(|p, _| !ours(p));
        offsets.extend(loaded);
    }
    // Only now may their partitions start (a member's, say, as the members topic says).
    shared.sinks.adopted(shards);
    metrics::state_loaded(partitions, items, t0.elapsed());
    metrics::shards_assigned(shards, &shared.sinks.owned(), t0.elapsed());
    shared
        .status
        .offsets_loaded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if !shared.stopped() {
        supervisor::start_all(shared);
    }
    give_back_freed_memory();
    Ok(())
}

/// Hands glibc's free memory back to the system once the offsets and state are read: their
/// consumers (librdkafka, on glibc's malloc, not the binary's jemalloc) queue up to tens of
/// MB of fetched records, which glibc would otherwise keep for the worker's life (a
/// restarted worker with 100,000 partitions stayed 60 MB above one that synced them).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    drop(tokio::task::spawn_blocking(|| {
        // SAFETY: no arguments to uphold; it only returns free pages to the system.
        unsafe { libc::malloc_trim(0) };
    }));
}

/// Gives `shards` up (see the module docs); `lost`: another worker may own them already
/// (what is left to commit will be refused).
pub(super) async fn revoked(shared: &Arc<Shared>, shards: &[u32], lost: bool) {
    let t0 = std::time::Instant::now();
    let gone: HashSet<u32> = shards.iter().copied().collect();
    let theirs = |p: &PartitionId| gone.contains(&shared.sinks.router.shard(p));
    // First, so that none of their partitions starts after the snapshot below (a To Do
    // list's commit starting a task partition): `spawn_partition` checks ownership under
    // the lock the snapshot takes.
    shared.sinks.leave(shards);
    // Their partitions go on elsewhere: their subscriptions stay (their offsets name them).
    if let Some(subs) = &shared.subscriptions {
        subs.hand_over(|p| theirs(p));
    }
    let held = shards.iter().filter(|n| shared.sinks.is_open(**n)).count();
    let halted: Vec<Arc<PartitionId>> = shared
        .tracked
        .lock()
        .keys()
        .filter(|p| theirs(p))
        .cloned()
        .collect();
    shared
        .halt("shards revoked", halted.iter().map(|p| &**p))
        .await;
    for n in shards {
        match shared.sinks.close(*n).await {
            Ok(()) => {}
            // Fenced by the shard's new owner (a lost shard): nothing of it commits.
            Err(SinkError::Fenced(why)) if lost => {
                tracing::info!(shard = n, why = %why, "lost shard's committer fenced");
            }
            Err(e) => tracing::warn!(shard = n, error = %e, "closing a revoked shard's committer"),
        }
    }
    shared.tracked.lock().retain(|p, _| !theirs(p));
    shared.status.offsets.lock().retain(|p, _| !theirs(p));
    shared.status.forget(|p| theirs(p));
    shared.states.forget(|p| theirs(p));
    if held > 0 {
        let owned = shared.sinks.owned().len();
        metrics::shards_revoked(shards, lost, halted.len(), t0.elapsed(), owned);
    }
}

/// Shard `n`'s producer was fenced (a partition's commit said so): another worker
/// initialised its transactional id, so the group gave it the shard while this one did not
/// know yet (paused past its session, cut off). The shard is given up here as a lost
/// revocation would; the group says the same at this worker's next heartbeat and it goes on
/// with what it is assigned then, without a restart. Returns whether the group is to be
/// asked again later ([`recheck`]): it is unless the shard was given up already.
pub(super) async fn fenced(shared: &Arc<Shared>, n: u32) -> bool {
    // A notice from a committer given up already (a lost revocation came first), or from
    // one replaced since: a fresh committer's producer is not fenced.
    if !shared.sinks.is_dead(n) {
        return false;
    }
    metrics::shard_fenced(n, false);
    revoked(shared, &[n], true).await;
    true
}

/// A session timeout after [`fenced`]: should the group still say shard `n` is this
/// worker's while it has no committer for it (no rebalance told it otherwise), nobody runs
/// its partitions; rejoining the group settles who owns it.
pub(super) fn recheck(shared: &Arc<Shared>, n: u32, membership: &Membership) {
    if membership.owned().contains(&n) && !shared.sinks.is_open(n) {
        metrics::shard_fenced(n, true);
        membership.rejoin();
    }
}

/// Reads the owned shards' offsets again (operator changes written while the connector was
/// stopped, see `control.rs`): what the worker starts its partitions from when it resumes.
/// Returns how many were read.
pub(super) async fn reload_offsets(shared: &Arc<Shared>) -> Result<usize, WorkerError> {
    let mine = shared.clone();
    let loaded = read_offsets(shared, move |p| mine.sinks.owns(p)).await?;
    let n = loaded.len();
    let mut offsets = shared.status.offsets.lock();
    offsets.retain(|p, _| !shared.sinks.owns(p));
    offsets.extend(loaded.into_iter().map(|(p, o)| (Arc::new(p), o)));
    Ok(n)
}

/// The committed offsets of the partitions `keep` says, read to the end of the offsets topic
/// (`read_committed`), those with another mailbox's link left out.
async fn read_offsets(
    shared: &Arc<Shared>,
    keep: impl Fn(&PartitionId) -> bool + Send + 'static,
) -> Result<Offsets, WorkerError> {
    let mut loaded = offsets_of(shared, keep).await?;
    // A link of another mailbox must never be followed under this partition's keys.
    links::refuse_foreign(&shared.spec.graph_host, &mut loaded);
    Ok(loaded)
}

type Offsets = std::collections::HashMap<PartitionId, crate::source::SourceOffset>;

/// Every committed offset of the connector, whichever shard, as the offsets topic holds them
/// (read to its end, off the executor).
pub(super) async fn all_offsets(shared: &Shared) -> Result<Offsets, WorkerError> {
    offsets_of(shared, |_| true).await
}

/// The committed offsets of the partitions `keep` says (the others' values never parsed).
async fn offsets_of(
    shared: &Shared,
    keep: impl Fn(&PartitionId) -> bool + Send + 'static,
) -> Result<Offsets, WorkerError> {
    let spec = &shared.spec;
    let (cfg, topic, name, timeout) = (
        spec.sink.consumer_config(),
        spec.sink.offsets_topic.clone(),
        spec.sink.connector.clone(),
        spec.offsets_load_timeout,
    );
    Ok(
        tokio::task::spawn_blocking(move || load_offsets(&cfg, &topic, &name, keep, timeout))
            .await??,
    )
}
