//! Starting and stopping partition tasks.
//!
//! Every partition task lives in the worker's [`JoinSet`] (`Shared::tasks`): none is detached.
//! Each also carries an `ended` token, cancelled when its future is gone (returned, panicked
//! or aborted), which is what halting a partition waits on. At shutdown the worker waits for
//! the whole set, at most `worker.shutdown_timeout`, then aborts what is left.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::graph::PartitionReader;
use crate::metrics;
use crate::source::PartitionId;

use super::partition::{partition_loop, Supervise};
use super::{panic_message, PartitionState, Shared, Tracked};

/// Starts the configured partitions (their users resolved first, see `directory.rs`) and
/// the task partitions found in the offsets of their To Do lists; then each group source's
/// membership partition and its members' partitions found in the offsets (`groups.rs`).
pub(super) fn start_all(shared: &Arc<Shared>) {
    super::directory::start_configured(shared, false);
    super::groups::start_groups(shared);
}

/// Starts `id`'s task, unless its shard is not owned, it runs already, or the worker is
/// shutting down; returns whether it started.
pub(super) fn spawn_partition(shared: &Arc<Shared>, id: PartitionId) -> bool {
    let mut tracked = shared.tracked.lock();
    // Another worker's (or nobody's yet, or being given up): its shard's owner starts it.
    // Checked under `tracked`'s lock, which a revocation's snapshot takes after marking
    // its shards (`ownership::revoked`).
    if !shared.sinks.owns(&id) {
        return false;
    }
    if tracked.get(&id).is_some_and(Tracked::alive) {
        return false;
    }
    let mut tasks = shared.tasks.lock();
    // Checked under the lock shutdown takes the set with, so no task escapes the set.
    if shared.shutdown.is_cancelled() {
        return false;
    }
    let committed = shared.status.offsets.lock().get(&id).cloned();
    let id = Arc::new(id);
    let rounds = shared.spec.rounds(&id);
    let principal = super::directory::principal(shared, id.user());
    let reader = match PartitionReader::new(id.clone(), &shared.spec.graph_host, committed, rounds)
    {
        Ok(r) => r.with_principal(principal),
        Err(e) => {
            metrics::partition_failed(&id, &e.to_string());
            return false;
        }
    };
    let cancel = shared.shutdown.child_token();
    let state = Arc::new(Mutex::new(PartitionState::Running));
    let resync = Arc::new(AtomicBool::new(false));
    let ended = CancellationToken::new();
    // Moved into the future below: dropping it, however the future goes, signals the end.
    let ended_guard = ended.clone().drop_guard();
    let fut = {
        let (shared, id, cancel, state, resync) = (
            shared.clone(),
            id.clone(),
            cancel.clone(),
            state.clone(),
            resync.clone(),
        );
        async move {
            let _ended = ended_guard;
            let mut reader = reader;
            // A panic fails this partition alone, visibly, instead of leaving it `RUNNING`.
            let supervisor = Supervisor(&shared);
            let end = AssertUnwindSafe(partition_loop(
                &shared,
                &mut reader,
                &cancel,
                &resync,
                &supervisor,
            ))
            .catch_unwind()
            .await;
            // Still this task's partition (not removed meanwhile, nor started again by a
            // newer task).
            let ours = shared
                .tracked
                .lock()
                .get(&*id)
                .is_some_and(|t| Arc::ptr_eq(&t.state, &state));
            let end = match end {
                Ok(end) => {
                    // Where it stands is where it restarts (unless it was removed and reset
                    // meanwhile).
                    if ours {
                        shared
                            .status
                            .offsets
                            .lock()
                            .insert((*id).clone(), reader.offset().clone());
                    }
                    end
                }
                // The committed offset (kept in the status) stays where it restarts from.
                Err(panic) => {
                    let why = format!("partition task panicked: {}", panic_message(&*panic));
                    metrics::partition_failed(&id, &why);
                    PartitionState::Failed(why)
                }
            };
            match ours {
                true => shared.status.set_state(&id, end.clone()),
                // Removed (its list or member gone, its shard revoked): not a task any more.
                false if !shared.tracked.lock().contains_key(&*id) => {
                    shared.status.forget(|p| p == &*id)
                }
                false => {}
            }
            *state.lock() = end;
        }
    };
    tracked.insert(
        (*id).clone(),
        Tracked {
            cancel,
            state,
            resync,
            ended,
        },
    );
    shared.status.set_state(&id, PartitionState::Running);
    shared
        .status
        .fresh_at
        .lock()
        .entry((*id).clone())
        .or_insert_with(std::time::Instant::now);
    // Spawned last: the task's own end state must not be overwritten by `Running` above.
    reap(&mut tasks);
    tasks.spawn(fut);
    true
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
        spawn_partition(self.0, partition);
    }

    fn stop(&self, partition: &PartitionId) {
        stop_partition(self.0, partition);
    }
}

/// Stops a partition that is no more (its list removed, its member gone): it leaves the
/// status too, whether it was still running or halted already.
pub(super) fn stop_partition(shared: &Shared, id: &PartitionId) {
    if let Some(t) = shared.tracked.lock().remove(id) {
        t.cancel.cancel();
    }
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
