//! One partition's task: fetch a batch, reconcile it with the partition's live items,
//! commit it with its offset and state, move on; pace rounds.
//!
//! The batches come complete from the Graph side (records, offset, and for To Do lists the
//! task partitions their commit starts, runs and resets): the task reconciles them
//! (`reconcile.rs`), commits them and carries out what they say. Its position and its live
//! items move only once a commit is acknowledged. Between rounds the task ends, parked
//! (`scheduler.rs`): the next poll is a task of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::graph::{GraphError, PartitionReader};
use crate::metrics;
use crate::sink::SinkError;
use crate::source::{PartitionId, PartitionKind, SourceBatch};

use super::reconcile::{reconcile, Reconciled, Slot};
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

/// Runs a partition until it is cancelled, fails, or (a task partition whose list is gone)
/// ends; `resync` restarts its round from scratch when set.
/// What a partition's loop asks of whoever runs it once a commit is acknowledged: the task
/// partitions its batch named must run, those it reset must stop (To Do lists come and go).
/// The supervisor implements it, so this file never calls back up into it.
pub(super) trait Supervise: Sync {
    fn run(&self, partition: PartitionId);
    fn stop(&self, partition: &PartitionId);
}

/// How a partition's task ends.
pub(super) enum Exit {
    /// The partition ends in this state (halted, failed, its list gone).
    Ended(PartitionState),
    /// It waits `after` for its next poll (or try) without a task (`scheduler.rs`).
    Park { after: Duration, unserved: u32 },
}

impl From<PartitionState> for Exit {
    fn from(s: PartitionState) -> Self {
        Exit::Ended(s)
    }
}

/// Runs `reader`'s partition until it parks or ends; `unserved` carries over from its last
/// task (see [`PartitionTask::fetch`]).
pub(super) async fn partition_loop(
    shared: &Arc<Shared>,
    reader: &mut PartitionReader,
    cancel: &CancellationToken,
    resync: &AtomicBool,
    supervisor: &dyn Supervise,
    unserved: u32,
) -> Exit {
    let mut task = PartitionTask::new(shared, reader, cancel, supervisor);
    task.unserved = unserved;
    task.run(resync).await
}

/// What the loop does after a step.
enum Step<T = ()> {
    /// Go on, with the step's result.
    Next(T),
    /// Start the iteration over: the position did not move, the same page is fetched again.
    Again,
    /// The task ends (or parks).
    End(Exit),
}

/// Unwraps a [`Step`] inside the loop: `Again` continues it, `End` returns.
macro_rules! step {
    ($e:expr) => {
        match $e {
            Step::Next(v) => v,
            Step::Again => continue,
            Step::End(state) => return state,
        }
    };
}

/// What a committed (or idle) batch leaves for [`PartitionTask::pace`].
struct Committed {
    /// The round the batch belonged to.
    round: u64,
    records: u64,
    /// The batch was the last page of its round.
    round_done: bool,
}

/// A partition's loop state.
struct PartitionTask<'a> {
    shared: &'a Arc<Shared>,
    reader: &'a mut PartitionReader,
    cancel: &'a CancellationToken,
    supervisor: &'a dyn Supervise,
    id: Arc<PartitionId>,
    /// The partition's live items (see `crate::live`).
    slot: Arc<Mutex<Slot>>,
    /// Fetches failed in a row (throttled, failing past every retry, auth trouble).
    failures: u32,
    /// Transactions aborted in a row.
    aborts: u32,
    /// Answers in a row saying Graph cannot serve the user (see `fetch`).
    unserved: u32,
    /// The next page, fetched while the previous one was being committed (see `commit`).
    /// Boxed: only mid-round does a partition hold one.
    prefetched: Option<Box<Result<SourceBatch, GraphError>>>,
    /// Initial-sync progress, logged at most every 10 seconds.
    pages: u64,
    records: u64,
    last_progress: Instant,
}

impl<'a> PartitionTask<'a> {
    fn new(
        shared: &'a Arc<Shared>,
        reader: &'a mut PartitionReader,
        cancel: &'a CancellationToken,
        supervisor: &'a dyn Supervise,
    ) -> Self {
        Self {
            id: reader.id.clone(),
            slot: shared.states.slot(&reader.id),
            shared,
            reader,
            cancel,
            supervisor,
            failures: 0,
            aborts: 0,
            unserved: 0,
            prefetched: None,
            pages: 0,
            records: 0,
            last_progress: Instant::now(),
        }
    }

    async fn run(mut self, resync: &AtomicBool) -> Exit {
        let mut paused = self.shared.paused.subscribe();
        let stopped = || Exit::Ended(PartitionState::Stopped);
        loop {
            if self.cancel.is_cancelled() {
                return stopped();
            }
            // Paused: keep the place and wait.
            while *paused.borrow_and_update() {
                self.prefetched = None;
                tokio::select! {
                    r = paused.changed() => if r.is_err() { return stopped() },
                    _ = self.cancel.cancelled() => return stopped(),
                }
            }
            if resync.swap(false, Ordering::SeqCst) {
                metrics::resync(&self.id, "signal", "initial");
                self.reader.restart();
                self.prefetched = None;
            }
            // Each step's future boxed: the task's own future then only holds what lives
            // across steps, not room for the largest step (a commit holds a copy of the
            // reader, a batch and a prefetch): a parked partition (between polls) is what
            // 100,000 partitions keep (issue 15).
            let mut batch = step!(Box::pin(self.fetch()).await);
            let reconciled = step!(Box::pin(self.reconcile(&mut batch)).await);
            let committed = step!(Box::pin(self.commit(batch, reconciled)).await);
            step!(Box::pin(self.pace(committed)).await);
        }
    }

    /// The next batch: the one prefetched during the last commit, or a fresh fetch. On a
    /// Graph error: a task partition whose list is gone (404) resets its offset and stops;
    /// a fault of the partition's own fails it; anything else is retried later, from the
    /// same position, after a backoff that grows while fetches keep failing.
    async fn fetch(&mut self) -> Step<SourceBatch> {
        let fetched = match self.prefetched.take() {
            Some(r) => *r,
            // Boxed, like the other large sub-futures below: a parked partition (10,000 of
            // them) then holds a small future instead of room for an HTTP request.
            None => tokio::select! {
                r = Box::pin(self.reader.next_batch(&self.shared.client)) => r,
                _ = self.cancel.cancelled() => return Step::End(PartitionState::Stopped.into()),
            },
        };
        let health = &self.shared.status.health;
        let e = match fetched {
            Ok(batch) => {
                health.graph.succeeded();
                self.failures = 0;
                if std::mem::take(&mut self.unserved) > 0 {
                    metrics::partition_served(&self.id);
                    self.shared
                        .status
                        .set_state(&self.id, PartitionState::Running);
                }
                return Step::Next(batch);
            }
            Err(e) => e,
        };
        // Only Graph's own failures count against its health, not one partition's 4xx.
        if e.is_service_failure() {
            health.graph.failed(e.to_string());
        }
        let id = &self.id;
        match e {
            // The list of a task partition is gone: stop tracking it and forget its offset.
            GraphError::Client { status: 404, .. } if id.kind() == PartitionKind::Tasks => {
                tracing::info!(partition = %id, "task list no longer exists; resetting its offset");
                let reset = vec![((**id).clone(), None)];
                let _ = Box::pin(self.shared.sinks.write_offsets(reset)).await;
                self.shared.tracked.lock().remove(&**id);
                Step::End(PartitionState::Stopped.into())
            }
            // The user has no mailbox (or no To Do) Graph can serve: not a failure of the
            // connector's, and it may change (a licence assigned later). Shown `UNASSIGNED`,
            // asked again rarely: ten poll intervals, doubling up to 6 hours.
            GraphError::Client {
                status: 404,
                code,
                message,
            } if unserved(id.kind(), &code) => {
                // A configured name whose account was deleted may name a new one now.
                if code.eq_ignore_ascii_case("ErrorInvalidUser")
                    && super::directory::moved(self.shared, id).await
                {
                    return Step::End(PartitionState::Stopped.into());
                }
                self.unserved += 1;
                let base = self.shared.spec.poll_interval.saturating_mul(10);
                let wait = jittered(
                    base.saturating_mul(1 << (self.unserved - 1).min(16))
                        .min(Duration::from_secs(6 * 3600)),
                    0.2,
                );
                let why = format!("Graph cannot serve this user: 404 {code}: {message}");
                metrics::partition_unserved(id, &why, self.unserved, wait);
                self.shared
                    .status
                    .set_state(id, PartitionState::Unassigned(why));
                // Hours, perhaps: parked, not a task.
                Step::End(Exit::Park {
                    after: wait,
                    unserved: self.unserved,
                })
            }
            e if e.is_partition_fault() => {
                metrics::partition_failed(id, &e.to_string());
                Step::End(PartitionState::Failed(e.to_string()).into())
            }
            e => {
                self.failures += 1;
                let wait = jittered(
                    Duration::from_secs(5).saturating_mul(self.failures.min(12)),
                    0.2,
                );
                tracing::warn!(partition = %id, error = %e, wait_secs = wait.as_secs(), "fetch failed; retrying later");
                again_after(wait, self.cancel).await
            }
        }
    }

    /// Reconciles the batch with the partition's live items (see `reconcile.rs`). If that
    /// fails (reading keys back from Kafka), the page is fetched again and reconciled anew.
    async fn reconcile(&mut self, batch: &mut SourceBatch) -> Step<Reconciled> {
        let done = Box::pin(reconcile(self.shared, self.reader, &self.slot, batch)).await;
        match done {
            Ok(r) => Step::Next(r),
            Err(why) => {
                tracing::warn!(partition = %self.id, error = %why, "reconciling a page with the partition's live items failed; retrying");
                again_after(Duration::from_secs(1), self.cancel).await
            }
        }
    }

    /// Hands the batch to the sink and waits for the acknowledgement; only then does the
    /// position move and are the batch's task partitions run or stopped. An aborted
    /// transaction leaves the position where it was: the page is fetched again after a
    /// backoff that grows while transactions keep failing.
    async fn commit(&mut self, mut batch: SourceBatch, reconciled: Reconciled) -> Step<Committed> {
        let Reconciled { plan, ids, removed } = reconciled;
        // Every offset names the partition's subscription as it stands (none without
        // `[notifications]`): whoever runs it next reuses it.
        batch.offset.subscription = self
            .shared
            .subscriptions
            .as_ref()
            .and_then(|s| s.record_of(&self.id));
        let offset = batch.offset.clone();
        let round = self.reader.offset().round;
        let done = Committed {
            round,
            records: batch.records.len() as u64,
            round_done: offset.round > round,
        };
        let shared = self.shared;
        let nothing = batch.records.is_empty() && batch.state.is_empty();
        if nothing && batch.resets.is_empty() && batch.starts.is_empty() {
            if Box::pin(shared.sinks.idle(self.id.clone(), offset.clone()))
                .await
                .is_err()
            {
                return Step::End(PartitionState::Stopped.into());
            }
            self.reader.advance(offset, &ids);
            return Step::Next(done);
        }
        let (runs, resets) = (batch.runs.clone(), batch.resets.clone());
        // Mid-round, the next page is fetched while this one commits, on a copy of the
        // reader that assumes the commit: a partition would otherwise wait a whole
        // transaction between pages. Nothing of it reaches the sink before the commit is
        // acknowledged; if the commit fails, it is dropped and the page refetched.
        let mut ahead = (!done.round_done).then(|| {
            let mut a = self.reader.clone();
            a.advance(offset.clone(), &ids);
            a
        });
        let cancel = self.cancel;
        let (committed, next) = match ahead.as_mut() {
            Some(a) => {
                let fetch = async {
                    tokio::select! {
                        r = a.next_batch(&shared.client) => Some(r),
                        _ = cancel.cancelled() => None,
                    }
                };
                Box::pin(async { tokio::join!(shared.sinks.commit_located(batch), fetch) }).await
            }
            None => (Box::pin(shared.sinks.commit_located(batch)).await, None),
        };
        match committed {
            Ok(locs) => {
                self.aborts = 0;
                if let (Some(plan), Slot::Known(live)) = (&plan, &mut *self.slot.lock()) {
                    live.apply(plan, &locs);
                }
                for p in &removed {
                    shared.states.remove(p);
                }
                shared
                    .status
                    .offsets
                    .lock()
                    .insert(self.id.clone(), offset.clone());
                match (ahead, next) {
                    (Some(a), Some(next)) => {
                        *self.reader = a;
                        self.prefetched = Some(Box::new(next));
                    }
                    _ => self.reader.advance(offset, &ids),
                }
                for p in runs {
                    self.supervisor.run((*p).clone());
                }
                for p in resets {
                    self.supervisor.stop(&p);
                }
                Step::Next(done)
            }
            Err(SinkError::Aborted(why)) => {
                self.aborts += 1;
                let wait = jittered(
                    Duration::from_millis(100)
                        .saturating_mul(1 << self.aborts.min(9))
                        .min(Duration::from_secs(30)),
                    0.2,
                );
                metrics::commit_retry(&self.id, self.aborts, wait, &why);
                again_after(wait, self.cancel).await
            }
            Err(SinkError::Rejected(why)) => {
                metrics::partition_failed(&self.id, &why);
                Step::End(PartitionState::Failed(why).into())
            }
            // Another worker owns the shard now: this one gives it up, not itself.
            Err(SinkError::Fenced(why)) => {
                metrics::partition_fenced(&self.id, &why);
                let _ = shared.fenced.send(shared.sinks.router.shard(&self.id));
                Step::End(PartitionState::Stopped.into())
            }
            Err(e) => {
                // A committer fenced at another partition's commit (or an idle flush) answers
                // the rest `Stopped`: the shard is given up all the same.
                let shard = shared.sinks.router.shard(&self.id);
                if matches!(e, SinkError::Stopped) && shared.sinks.is_dead(shard) {
                    let _ = shared.fenced.send(shard);
                }
                if matches!(e, SinkError::Fatal(_)) {
                    *shared.fatal.lock() = Some(e);
                    shared.shutdown.cancel();
                }
                Step::End(PartitionState::Stopped.into())
            }
        }
    }

    /// Round bookkeeping after a batch: pages into the round, initial-sync progress, and at
    /// a round's end its freshness; then the task parks for the poll interval (with
    /// jitter).
    async fn pace(&mut self, done: Committed) -> Step {
        let status = &self.shared.status;
        {
            // Only partitions mid-round have an entry: 100,000 idle ones keep none.
            let mut rp = status.round_pages.lock();
            if done.round_done {
                rp.remove(&*self.id);
            } else {
                *rp.entry(self.id.clone()).or_default() += 1;
            }
        }
        if done.round == 1 {
            self.pages += 1;
            self.records += done.records;
            if done.round_done || self.last_progress.elapsed() >= Duration::from_secs(10) {
                metrics::initial_sync_progress(&self.id, self.pages, self.records);
                self.last_progress = Instant::now();
            }
        }
        if !done.round_done {
            return Step::Next(());
        }
        let now = Instant::now();
        let age = status
            .fresh_at
            .lock()
            .insert(self.id.clone(), now)
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        metrics::round_completed(&self.id, done.round, age);
        // A group's members are listed again every `membership_interval` (a listing from
        // scratch costs a page per 999 members, not a poll).
        let interval = match self.id.kind() {
            PartitionKind::GroupMembers => self.shared.spec.membership_interval,
            _ => self.shared.poll_interval_of(&self.id),
        };
        Step::End(Exit::Park {
            after: jittered(interval, self.shared.spec.poll_jitter),
            unserved: 0,
        })
    }
}

/// Whether a `404` with Graph's `code` says the user has no mailbox (or To Do) Graph serves,
/// for a partition of `kind`: `MailboxNotEnabledForRESTAPI` (an unlicensed, inactive,
/// soft-deleted or on-premises mailbox), `ErrorInvalidUser` (a mailbox Exchange does not
/// know: not provisioned yet for a new account, microsoft-graph-docs-contrib issue 5460, or
/// a deleted account, microsoft-graph-explorer-v4 issue 3293), and `ResourceNotFound` from
/// To Do's lists (To Do answers it for a user without the service); a task partition's 404
/// is its list gone.
fn unserved(kind: PartitionKind, code: &str) -> bool {
    let mailbox = code.eq_ignore_ascii_case("MailboxNotEnabledForRESTAPI")
        || code.eq_ignore_ascii_case("ErrorInvalidUser");
    match kind {
        PartitionKind::Tasks | PartitionKind::GroupMembers => false,
        PartitionKind::TaskLists => mailbox || code.eq_ignore_ascii_case("ResourceNotFound"),
        _ => mailbox,
    }
}

/// Waits `wait`, then starts the iteration over (or ends, if cancelled meanwhile).
async fn again_after<T>(wait: Duration, cancel: &CancellationToken) -> Step<T> {
    if Box::pin(sleep_or_cancel(wait, cancel)).await {
        Step::Again
    } else {
        Step::End(PartitionState::Stopped.into())
    }
}
