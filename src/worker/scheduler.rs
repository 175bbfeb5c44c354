//! Parked partitions and the one timer that wakes them.
//!
//! A partition waiting for its next poll (or, Graph unable to serve its user, for its next
//! try) has no task: its entry in `Shared::tracked` holds a small [`Parked`] record, its
//! position is its entry in the status's offsets, and the scheduler holds its due time.
//! With 100,000 partitions a task each would keep 100,000 parked futures, timers and
//! cancellation tokens, and wake a thread per poll (issue 15); instead this task wakes at
//! most every [`TICK`] and starts every partition due by then (`supervisor::wake`), so the
//! polls of a tick reach the poll batcher together.
//!
//! At most `graph.max_concurrency` × 20 partition tasks exist at once (the polls its
//! requests can carry in JSON batches): a partition due while they all run
//! waits for a free place, so a worker starting 100,000 partitions, or a burst of them due at
//! once, holds that many futures, not 100,000 (what the client's permits would make the rest
//! wait for anyway).
//!
//! An entry of the scheduler may be stale (its partition halted, restarted or woken early since):
//! each parking has its own sequence number, and a partition wakes only for the one it
//! parked with. While the connector is paused nothing wakes; on resume whatever fell due
//! meanwhile starts (the client's concurrency bounds what reaches Graph).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::graph::KnownLists;
use crate::source::PartitionId;

use super::Shared;

/// The scheduler's resolution: polls due within one tick start together.
pub(super) const TICK: Duration = Duration::from_millis(50);

/// What a partition keeps between its tasks (its position is in the status's offsets).
#[derive(Default)]
pub(super) struct Parked {
    /// The scheduler entry this parking is woken by.
    pub seq: u64,
    /// A To Do lists partition's known lists, as its reader left them.
    pub lists: Option<Box<KnownLists>>,
    /// Answers in a row saying Graph cannot serve the user (see `partition.rs`).
    pub unserved: u32,
    /// A resync was asked while parked: the next round starts from scratch.
    pub resync: bool,
    /// A change notification woke it early (more before it starts change nothing).
    pub poked: bool,
}

/// Parked partitions falling due in one tick: (sequence number, identity).
type Bucket = Vec<(u64, Arc<PartitionId>)>;

/// Due times of parked partitions, and the places of running ones.
pub(super) struct Scheduler {
    /// Parked partitions by the tick they fall due in (a timer wheel's buckets in a sorted
    /// map: scheduling one is a push, the due ones are taken a bucket at a time, instead of
    /// a heap's sift per partition).
    buckets: Mutex<BTreeMap<u64, Bucket>>,
    /// Tick 0.
    epoch: Instant,
    seq: AtomicU64,
    /// An entry earlier than the one the timer waits for was pushed.
    earlier: Notify,
    /// A place per partition task (see the module docs).
    places: Arc<Semaphore>,
}

impl Scheduler {
    /// A scheduler letting `limit` partition tasks run at once.
    pub fn new(limit: usize) -> Self {
        Self {
            buckets: Mutex::default(),
            epoch: Instant::now(),
            seq: AtomicU64::default(),
            earlier: Notify::new(),
            places: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// A place for a partition task, if one is free; held until the task ends.
    pub fn place(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// The tick `t` falls in.
    fn tick(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis()) as u64
    }

    /// Schedules `id` at `due` (to the tick); returns the sequence number its [`Parked`]
    /// must carry.
    pub fn schedule(&self, id: Arc<PartitionId>, due: Instant) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let tick = self.tick(due);
        let mut buckets = self.buckets.lock();
        let first = buckets.first_key_value().is_none_or(|(t, _)| tick < *t);
        buckets.entry(tick).or_default().push((seq, id));
        drop(buckets);
        if first {
            self.earlier.notify_one();
        }
        seq
    }

    /// The entries due by `now`'s tick, earliest tick first, at most `max`.
    fn due(&self, now: Instant, max: usize) -> Vec<(u64, Arc<PartitionId>)> {
        let now = self.tick(now);
        let mut buckets = self.buckets.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut first) = buckets.first_entry() else {
                break;
            };
            if *first.key() > now {
                break;
            }
            let room = max - out.len();
            let bucket = first.get_mut();
            if bucket.len() <= room {
                out.append(&mut first.remove());
            } else {
                // What is left waits for a free place, at the next tick.
                out.extend(bucket.drain(bucket.len() - room..));
            }
        }
        out
    }

    fn next_due(&self) -> Option<Instant> {
        let first = *self.buckets.lock().first_key_value()?.0;
        let ms = first.saturating_mul(TICK.as_millis() as u64);
        Some(self.epoch + Duration::from_millis(ms))
    }
}

/// A first poll's due time for a partition resuming at a round boundary: spread uniformly
/// over one poll interval, so a restarted worker's partitions do not all poll at once.
pub(super) fn spread(interval: Duration) -> Instant {
    let f = rand::rng().random_range(0.0..1.0);
    Instant::now() + interval.mul_f64(f)
}

/// Wakes parked partitions as they fall due, until the worker shuts down.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut paused = shared.paused.subscribe();
    let sched = &shared.scheduler;
    loop {
        // Registered before reading the head, so a push in between is not missed.
        let earlier = sched.earlier.notified();
        let wake_at = sched.next_due().map(|t| t.max(Instant::now()));
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = earlier => continue,
            _ = async {
                match wake_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        // Paused: nothing starts; what falls due meanwhile starts on resume.
        while *paused.borrow_and_update() {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = paused.changed() => if r.is_err() { return },
            }
        }
        // Whatever falls due within the tick starts now, with its company, as far as
        // there are places; the rest at the next tick.
        let now = Instant::now() + TICK;
        for (seq, id) in sched.due(now, sched.places.available_permits()) {
            super::supervisor::wake(&shared, id, seq);
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str) -> Arc<PartitionId> {
        Arc::new(PartitionId::CalendarList { user: user.into() })
    }

    /// Entries come out by tick, at most as many as asked, the rest at the next ask; one
    /// not yet due stays.
    #[test]
    fn due_entries_come_out_by_tick_and_as_far_as_there_are_places() {
        let s = Scheduler::new(4);
        let t0 = s.epoch;
        let a = s.schedule(id("a"), t0 + Duration::from_millis(120));
        let b = s.schedule(id("b"), t0 + Duration::from_millis(10));
        let c = s.schedule(id("c"), t0 + Duration::from_millis(20));
        let later = s.schedule(id("d"), t0 + Duration::from_secs(60));
        assert!(a < b && b < c && c < later, "sequence numbers grow");
        assert_eq!(s.next_due(), Some(t0), "b and c share tick 0");
        let now = t0 + Duration::from_millis(130);
        let first = s.due(now, 2);
        assert_eq!(first.iter().map(|(q, _)| *q).collect::<Vec<_>>(), [b, c]);
        let rest = s.due(now, 10);
        assert_eq!(rest.len(), 1);
        assert_eq!(*rest[0].1, *id("a"));
        assert!(s.due(now, 10).is_empty(), "d is a minute away");
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(60)));
    }

    /// A bucket larger than the places left is taken in part; the rest stays due.
    #[test]
    fn a_bucket_is_taken_in_part_when_places_run_out() {
        let s = Scheduler::new(4);
        let t = s.epoch + Duration::from_millis(5);
        for u in ["a", "b", "c", "d", "e"] {
            s.schedule(id(u), t);
        }
        assert_eq!(s.due(t, 3).len(), 3);
        assert_eq!(s.due(t, 3).len(), 2);
        assert!(s.due(t, 3).is_empty());
    }

    /// Places are the running tasks' bound: none is handed out beyond it until one is
    /// given back.
    #[test]
    fn places_bound_the_running_tasks() {
        let s = Scheduler::new(2);
        let p1 = s.place().expect("a place");
        let _p2 = s.place().expect("a place");
        assert!(s.place().is_none());
        drop(p1);
        assert!(s.place().is_some());
    }
}
