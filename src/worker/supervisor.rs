//! Starting and stopping partition tasks.
//!
//! Every partition task lives in the worker's [`JoinSet`] (`Shared::tasks`): none is detached.
//! Each also carries an `ended` token, cancelled when its future is gone (returned, panicked
//! or aborted), which is what halting a partition waits on. Between rounds a partition has
//! no task: it is parked (`scheduler.rs`) and [`wake`] starts its next one. At shutdown the worker waits for
//! the whole set, at most `worker.shutdown_timeout`, then aborts what is left.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::graph::PartitionReader;
use crate::metrics;
use crate::source::PartitionId;

use super::partition::{partition_loop, Exit, Supervise};
use super::scheduler::{self, Parked};
use super::{panic_message, PartitionState, Shared, TaskHandle, Tracked};

/// Starts the configured partitions (their users resolved first, see `directory.rs`) and
/// the task partitions found in the offsets of their To Do lists; then each group source's
/// membership partition and its members' partitions found in the offsets (`groups.rs`).
pub(super) fn start_all(shared: &Arc<Shared>) {
    super::directory::start_configured(shared, false);
    super::groups::start_groups(shared);
}

/// How soon a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// Its task starts now (a restart, a new list's partition).
    Now,
    /// A partition resuming at a round boundary (its committed offset is a deltaLink) polls
    /// at a random moment within one poll interval, so that a worker starting with 100,000
    /// of them does not poll them all at once; others start now.
    Spread,
}

/// Starts `id` (see [`Start`]), unless its shard is not owned, it runs (or is parked)
/// already, or the worker is shutting down; returns whether it started.
pub(super) fn spawn_partition(shared: &Arc<Shared>, id: PartitionId, start: Start) -> bool {
    let mut tracked = shared.tracked.lock();
    // Another worker's (or nobody's yet, or being given up): its shard's owner starts it.
    // Checked under `tracked`'s lock, which a revocation's snapshot takes after marking
    // its shards (`ownership::revoked`).
    if !shared.sinks.owns(&id) {
        return false;
    }
    if tracked.get(&id).is_some_and(Tracked::alive) || shared.shutdown.is_cancelled() {
        return false;
    }
    // The identity the offsets hold already, if any: one copy for every map (`status.rs`).
    let (id, committed) = match shared.status.offsets.lock().get_key_value(&id) {
        Some((k, o)) => (k.clone(), Some(o.clone())),
        None => (Arc::new(id), None),
    };
    let at_boundary = committed
        .as_ref()
        .is_some_and(|o| o.link.is_some() && o.link == o.delta_link);
    let spread = start == Start::Spread && at_boundary;
    let place = (!spread).then(|| shared.scheduler.place()).flatten();
    let started = match place {
        Some(place) => match reader(shared, &id, committed, None) {
            Some(r) => start_task(shared, &mut tracked, id.clone(), r, place, Carry::default()),
            None => false,
        },
        // Spread, or no place free now: the scheduler starts it (see `scheduler.rs`).
        None => {
            let due = match spread {
                true => scheduler::spread(shared.spec.poll_interval),
                false => tokio::time::Instant::now(),
            };
            let seq = shared.scheduler.schedule(id.clone(), due);
            let parked = Parked {
                seq,
                ..Parked::default()
            };
            tracked.insert(id.clone(), Tracked::Parked(parked));
            true
        }
    };
    if started {
        if let Some(s) = &shared.subscriptions {
            s.want(&id);
        }
        shared.status.set_state(&id, PartitionState::Running);
        shared
            .status
            .fresh_at
            .lock()
            .entry(id.clone())
            .or_insert_with(std::time::Instant::now);
    }
    started
}

/// Starts a parked partition's task (the scheduler found it due), unless it was halted,
/// restarted or woken since it parked with `seq`.
pub(super) fn wake(shared: &Arc<Shared>, id: Arc<PartitionId>, seq: u64) {
    let mut tracked = shared.tracked.lock();
    let Some(entry) = tracked.get_mut(&*id) else {
        return;
    };
    let Tracked::Parked(parked) = entry else {
        return;
    };
    if parked.seq != seq || !shared.sinks.owns(&id) {
        return;
    }
    // Every place taken (a partition started meanwhile took it): at the next tick.
    let Some(place) = shared.scheduler.place() else {
        parked.seq = shared.scheduler.schedule(id, tokio::time::Instant::now());
        return;
    };
    let Tracked::Parked(parked) = std::mem::replace(entry, Tracked::Ended) else {
        return;
    };
    let committed = shared.status.offsets.lock().get(&*id).cloned();
    if let Some(reader) = reader(shared, &id, committed, parked.lists) {
        let carry = Carry {
            unserved: parked.unserved,
            resync: parked.resync,
        };
        start_task(shared, &mut tracked, id, reader, place, carry);
    }
}

/// What a partition's new task carries over from its last one.
#[derive(Default)]
struct Carry {
    /// Answers in a row saying Graph cannot serve the user.
    unserved: u32,
    /// A resync was asked while it was parked.
    resync: bool,
}

/// A reader for `id` from its committed offset and, parked, its known lists (a To Do lists
/// reader without is seeded with the task partitions the worker knows), or `None` if its
/// identity makes no route (counted).
fn reader(
    shared: &Shared,
    id: &Arc<PartitionId>,
    committed: Option<crate::source::SourceOffset>,
    lists: Option<Box<crate::graph::KnownLists>>,
) -> Option<PartitionReader> {
    let rounds = shared.spec.rounds(id);
    let principal = super::directory::principal(shared, id.user());
    let mut reader =
        match PartitionReader::new(id.clone(), &shared.spec.graph_host, committed, rounds) {
            Ok(r) => r.with_principal(principal).unpark(lists),
            Err(e) => {
                metrics::partition_failed(id, &e.to_string());
                return None;
            }
        };
    if reader.needs_lists() {
        // Which task partitions are new: it starts from those the worker runs (all in the
        // status) or has offsets for.
        let user = id.user();
        reader.know_lists(PartitionId::tasks_of(
            &shared.status.partitions.lock(),
            user,
        ));
        reader.know_lists(PartitionId::tasks_of(&shared.status.offsets.lock(), user));
    }
    Some(reader)
}

/// Spawns `id`'s task with `reader` into the worker's set, tracked by a new [`TaskHandle`],
/// holding `place` until it ends; `false` if the worker is shutting down. The caller holds
/// `tracked`.
fn start_task(
    shared: &Arc<Shared>,
    tracked: &mut rustc_hash::FxHashMap<Arc<PartitionId>, Tracked>,
    id: Arc<PartitionId>,
    reader: PartitionReader,
    place: OwnedSemaphorePermit,
    carry: Carry,
) -> bool {
    let Carry { unserved, resync } = carry;
    let mut tasks = shared.tasks.lock();
    // Checked under the lock shutdown takes the set with, so no task escapes the set.
    if shared.shutdown.is_cancelled() {
        return false;
    }
    let handle = Arc::new(TaskHandle {
        cancel: shared.shutdown.child_token(),
        resync: AtomicBool::new(resync),
        poked: AtomicBool::new(false),
        ended: CancellationToken::new(),
    });
    // Moved into the future below: dropping it, however the future goes, signals the end.
    let ended_guard = handle.ended.clone().drop_guard();
    let fut = {
        let (shared, id, handle) = (shared.clone(), id.clone(), handle.clone());
        async move {
            let _ended = ended_guard;
            let _place = place;
            let mut reader = reader;
            // A panic fails this partition alone, visibly, instead of leaving it `RUNNING`.
            let supervisor = Supervisor(&shared);
            let (cancel, resync) = (&handle.cancel, &handle.resync);
            let end = AssertUnwindSafe(partition_loop(
                &shared,
                &mut reader,
                cancel,
                resync,
                &supervisor,
                unserved,
            ))
            .catch_unwind()
            .await;
            finish(&shared, id, &handle, reader, end);
        }
    };
    tracked.insert(id, Tracked::Task(handle));
    reap(&mut tasks);
    tasks.spawn(fut);
    true
}

/// What a partition's task leaves when it ends: parked (its position in the status's
/// offsets, its due time with the scheduler), or ended in a state.
fn finish(
    shared: &Shared,
    id: Arc<PartitionId>,
    handle: &Arc<TaskHandle>,
    reader: PartitionReader,
    end: std::thread::Result<Exit>,
) {
    let mut tracked = shared.tracked.lock();
    // Still this task's partition (not removed meanwhile, nor started again by a newer
    // task).
    let ours = matches!(tracked.get(&*id), Some(Tracked::Task(h)) if Arc::ptr_eq(h, handle));
    let end = match end {
        // Parked, unless halted meanwhile (`halt` cancels under the same lock).
        Ok(Exit::Park { after, unserved }) if ours && !handle.cancel.is_cancelled() => {
            let (offset, lists) = reader.park();
            shared.status.offsets.lock().insert(id.clone(), offset);
            // Notified while its round ran: it polls again at once (many notifications,
            // one more round).
            let poked = handle.poked.swap(false, Ordering::SeqCst) && unserved == 0;
            let after = if poked { Duration::ZERO } else { after };
            let due = tokio::time::Instant::now() + after;
            let seq = shared.scheduler.schedule(id.clone(), due);
            let resync = handle.resync.load(Ordering::SeqCst);
            let parked = Parked {
                seq,
                lists,
                unserved,
                resync,
                poked,
            };
            tracked.insert(id, Tracked::Parked(parked));
            return;
        }
        Ok(end) => {
            // Where it stands is where it restarts (unless it was removed and reset
            // meanwhile).
            if ours {
                let (offset, _) = reader.park();
                shared.status.offsets.lock().insert(id.clone(), offset);
            }
            match end {
                Exit::Ended(state) => state,
                Exit::Park { .. } => PartitionState::Stopped,
            }
        }
        // The committed offset (kept in the status) stays where it restarts from.
        Err(panic) => {
            let why = format!("partition task panicked: {}", panic_message(&*panic));
            metrics::partition_failed(&id, &why);
            PartitionState::Failed(why)
        }
    };
    match ours {
        true => {
            shared.released(&id);
            shared.status.set_state(&id, end);
            tracked.insert(id, Tracked::Ended);
        }
        // Removed (its list or member gone, its shard revoked): not a task any more.
        false if !tracked.contains_key(&*id) => shared.status.forget(|p| p == &*id),
        false => {}
    }
}

/// What a change notification did to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Poked {
    /// Parked: it polls at the next tick.
    Woken,
    /// Already due at once (an earlier notification): nothing more to do.
    AlreadyDue,
    /// Its round runs: it polls again as soon as the round ends.
    Running,
    /// Not a partition this worker runs.
    NotHere,
}

/// A change notification for `id`: it polls now, or right after its running round, instead of
/// at its next poll; notifications meanwhile add nothing (coalesced). Records still come only
/// from its delta pages.
pub(super) fn poke(shared: &Shared, id: &PartitionId) -> Poked {
    let mut tracked = shared.tracked.lock();
    let Some((key, entry)) = tracked.get_key_value(id) else {
        return Poked::NotHere;
    };
    let (key, running) = match entry {
        Tracked::Task(h) if !h.ended.is_cancelled() => (key.clone(), Some(h.clone())),
        Tracked::Parked(_) => (key.clone(), None),
        _ => return Poked::NotHere,
    };
    if let Some(h) = running {
        h.poked.store(true, Ordering::SeqCst);
        return Poked::Running;
    }
    let Some(Tracked::Parked(parked)) = tracked.get_mut(id) else {
        return Poked::NotHere;
    };
    if parked.poked {
        return Poked::AlreadyDue;
    }
    parked.poked = true;
    // Graph cannot serve its user: the backoff stands (a notification does not lift it).
    if parked.unserved > 0 {
        return Poked::AlreadyDue;
    }
    parked.seq = shared.scheduler.schedule(key, tokio::time::Instant::now());
    Poked::Woken
}

/// Runs `fut` as a task of the worker's set (not a partition's: nothing tracks it), unless
/// the worker is shutting down.
pub(super) fn spawn_task(
    shared: &Shared,
    fut: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut tasks = shared.tasks.lock();
    // Checked under the lock shutdown takes the set with, so no task escapes the set.
    if !shared.shutdown.is_cancelled() {
        reap(&mut tasks);
        tasks.spawn(fut);
    }
}

/// Runs and stops the task partitions a partition's commits name.
struct Supervisor<'a>(&'a Arc<Shared>);

impl Supervise for Supervisor<'_> {
    fn run(&self, partition: PartitionId) {
        spawn_partition(self.0, partition, Start::Now);
    }

    fn stop(&self, partition: &PartitionId) {
        stop_partition(self.0, partition);
    }
}

/// Stops a partition that is no more (its list removed, its member gone): it leaves the
/// status too, whether it was still running or halted already.
pub(super) fn stop_partition(shared: &Shared, id: &PartitionId) {
    if let Some(Tracked::Task(h)) = shared.tracked.lock().remove(id) {
        h.cancel.cancel();
    }
    shared.released(id);
    shared.status.offsets.lock().remove(id);
    shared.status.forget(|p| p == id);
}

/// At shutdown (with `Shared::shutdown` cancelled): waits for every partition task to end, at
/// most `timeout`, then aborts the rest and waits until they are dropped, so that no task
/// holds the committer's handle any more.
pub(super) async fn stop_all(shared: &Shared, timeout: Duration) {
    let mut tasks = std::mem::take(&mut *shared.tasks.lock());
    let all_ended = async {
        while let Some(r) = tasks.join_next().await {
            report(r);
        }
    };
    if tokio::time::timeout(timeout, all_ended).await.is_err() {
        metrics::shutdown_timed_out(tasks.len(), timeout);
        tasks.abort_all();
        while let Some(r) = tasks.join_next().await {
            report(r);
        }
    }
}

/// Collects the results of tasks that ended (the set keeps them until then).
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(r) = tasks.try_join_next() {
        report(r);
    }
}

fn report(r: Result<(), JoinError>) {
    match r {
        // Panics in the loop are caught in the task; one here came after it.
        Err(e) if e.is_panic() => tracing::error!(error = %e, "partition task panicked"),
        // Aborted at shutdown (counted by `shutdown_timed_out`), or ended.
        _ => {}
    }
}
