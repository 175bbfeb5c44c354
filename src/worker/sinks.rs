//! Shards: which partitions commit together, and the committers of the shards this worker
//! owns.
//!
//! Each partition belongs to one of `worker.shards` shards, a hash of its user's object id
//! (a To Do list's task partitions go with their list, whose commits start and reset them),
//! or of its group's id for a group's membership partition. A group's members' partitions
//! are their users' like any other, so a large group spreads over the shards (`groups.rs`
//! says how a member's joining and leaving reach them). The connector's workers share the shards through Kafka's group
//! protocol (`sink::membership`); each owned shard has a committer of its own whose
//! producer's `transactional.id` is `{prefix}-shard-{n}`, the same on every worker. A worker
//! taking a shard over initialises that producer first, which fences the shard's previous
//! writer and ends its open transaction (KIP-98's producer epoch): only then are the
//! shard's offsets read and its partitions started. A zombie that lost the shard (paused past
//! the session timeout) is refused at its next transaction, whatever it believes; this is
//! how Kafka Connect fences a task that moved (KIP-618: a transactional id per task).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sink::{Committer, KafkaHealth, Reason, SinkError, SinkHandle, SinkOptions};
use crate::source::{Loc, PartitionId, SourceBatch, SourceOffset};

use super::WorkerSpec;

/// Which shard a partition belongs to.
#[derive(Debug, Clone)]
pub(super) struct Router {
    shards: u32,
}

impl Router {
    pub fn new(spec: &WorkerSpec) -> Self {
        Self {
            shards: spec.sharding.shards.max(1),
        }
    }

    /// `p`'s shard: a group's membership partition by its group, every other by its user.
    pub fn shard(&self, p: &PartitionId) -> u32 {
        let key = match p {
            PartitionId::GroupMembers { group } => group.as_str(),
            _ => p.user(),
        };
        (mix(fnv1a(key.as_bytes())) % u64::from(self.shards)) as u32
    }
}

/// FNV-1a (64 bits), then [`mix`]: stable across processes, versions and platforms, as
/// every worker must agree on a partition's shard.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: FNV-1a's low bits follow its input's low bits too
/// closely (the parity of a key is the parity of its bytes), and a shard is the hash modulo a
/// small count.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// An owned shard's committer.
struct Open {
    handle: SinkHandle,
    thread: std::thread::JoinHandle<Result<(), SinkError>>,
}

/// The committers of the owned shards.
pub(super) struct Sinks {
    pub router: Router,
    opts: SinkOptions,
    health: Arc<KafkaHealth>,
    open: Mutex<HashMap<u32, Open>>,
    /// Shards being given up: still open for their partitions' last commits, no longer
    /// owned for a partition that would start.
    leaving: Mutex<HashSet<u32>>,
    /// Shards opened whose offsets are not read yet: not owned for a partition that would
    /// start (it would start from scratch), until [`Sinks::adopted`].
    adopting: Mutex<HashSet<u32>>,
}

impl Sinks {
    pub fn new(spec: &WorkerSpec, health: Arc<KafkaHealth>) -> Self {
        Self {
            router: Router::new(spec),
            opts: spec.sink.clone(),
            health,
            open: Mutex::new(HashMap::new()),
            leaving: Mutex::new(HashSet::new()),
            adopting: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `p`'s shard is owned (its committer open, its offsets read, and not being
    /// given up).
    pub fn owns(&self, p: &PartitionId) -> bool {
        let n = self.router.shard(p);
        self.open.lock().contains_key(&n)
            && !self.leaving.lock().contains(&n)
            && !self.adopting.lock().contains(&n)
    }

    /// `shards`' offsets are read: their partitions may start.
    pub fn adopted(&self, shards: &[u32]) {
        let mut adopting = self.adopting.lock();
        for n in shards {
            adopting.remove(n);
        }
    }

    /// Whether shard `n`'s committer is open (owned, or being given up).
    pub fn is_open(&self, n: u32) -> bool {
        self.open.lock().contains_key(&n)
    }

    /// Whether shard `n`'s committer is open but stopped: its producer failed for good
    /// (fenced). A committer stops only that way or when closed.
    pub fn is_dead(&self, n: u32) -> bool {
        self.open
            .lock()
            .get(&n)
            .is_some_and(|o| o.thread.is_finished())
    }

    /// Marks `shards` as being given up: [`Sinks::owns`] says no for them from now on, until
    /// they are closed (and opened again, should they come back).
    pub fn leave(&self, shards: &[u32]) {
        self.leaving.lock().extend(shards.iter().copied());
    }

    /// The owned shards, in order.
    pub fn owned(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.open.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// `p`'s committer; [`SinkError::Stopped`] when its shard is not this worker's.
    pub fn handle(&self, p: &PartitionId) -> Result<SinkHandle, SinkError> {
        self.open
            .lock()
            .get(&self.router.shard(p))
            .map(|o| o.handle.clone())
            .ok_or(SinkError::Stopped)
    }

    /// Starts shard `n`'s committer: initialising its producer's transactions fences the
    /// shard's previous writer and ends its open transaction (blocking, off the executor).
    pub async fn open(&self, n: u32) -> Result<(), SinkError> {
        self.adopting.lock().insert(n);
        if self.open.lock().contains_key(&n) {
            self.leaving.lock().remove(&n);
            return Ok(());
        }
        let mut opts = self.opts.clone();
        opts.transactional_id = format!("{}-shard-{n}", self.opts.transactional_id);
        let health = self.health.clone();
        let (handle, thread) = tokio::task::spawn_blocking(move || Committer::start(opts, health))
            .await
            .map_err(|e| SinkError::Setup(Reason::new(format!("shard {n}: {e}"))))??;
        self.open.lock().insert(n, Open { handle, thread });
        self.leaving.lock().remove(&n);
        Ok(())
    }

    /// Stops shard `n`'s committer once it committed what it holds (its partitions must be
    /// halted first: their handles gone, the last one here).
    pub async fn close(&self, n: u32) -> Result<(), SinkError> {
        let open = self.open.lock().remove(&n);
        self.leaving.lock().remove(&n);
        self.adopting.lock().remove(&n);
        let Some(open) = open else {
            return Ok(());
        };
        drop(open.handle);
        join(n, open.thread).await
    }

    /// Closes every committer (shutdown); the first error is returned.
    pub async fn close_all(&self) -> Result<(), SinkError> {
        let mut first = Ok(());
        for n in self.owned() {
            let r = self.close(n).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Commits a batch through its partition's shard (see [`SinkHandle::commit_located`]).
    pub async fn commit_located(&self, batch: SourceBatch) -> Result<Vec<Loc>, SinkError> {
        let h = self.handle(&batch.partition)?;
        h.commit_located(batch).await
    }

    /// Hands over an offset that covers no records (see [`SinkHandle::idle`]).
    pub async fn idle(&self, p: Arc<PartitionId>, o: SourceOffset) -> Result<(), SinkError> {
        let h = self.handle(&p)?;
        h.idle(p, o).await
    }

    /// Writes offsets (operator changes; `None` resets), one transaction per shard; a
    /// partition of a shard this worker does not own is refused ([`SinkError::Stopped`]).
    pub async fn write_offsets(
        &self,
        offsets: Vec<(PartitionId, Option<SourceOffset>)>,
    ) -> Result<(), SinkError> {
        let mut by_shard: HashMap<u32, Vec<(PartitionId, Option<SourceOffset>)>> = HashMap::new();
        for (p, o) in offsets {
            by_shard
                .entry(self.router.shard(&p))
                .or_default()
                .push((p, o));
        }
        let handles: Vec<(SinkHandle, Vec<_>)> = {
            let open = self.open.lock();
            by_shard
                .into_iter()
                .map(|(n, w)| open.get(&n).map(|o| (o.handle.clone(), w)))
                .collect::<Option<_>>()
                .ok_or(SinkError::Stopped)?
        };
        for (h, w) in handles {
            h.write_offsets(w).await?;
        }
        Ok(())
    }

    /// Persists every shard's idle offsets now.
    pub async fn flush(&self) -> Result<(), SinkError> {
        let handles: Vec<SinkHandle> = self
            .open
            .lock()
            .values()
            .map(|o| o.handle.clone())
            .collect();
        for h in handles {
            h.flush().await?;
        }
        Ok(())
    }
}

/// Waits for a committer's thread (off the executor).
async fn join(
    n: u32,
    thread: std::thread::JoinHandle<Result<(), SinkError>>,
) -> Result<(), SinkError> {
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(SinkError::Fatal(Reason::new(format!(
            "shard {n}: the committer thread panicked"
        )))),
        Err(e) => Err(SinkError::Setup(Reason::new(format!("shard {n}: {e}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(shards: u32) -> Router {
        Router { shards }
    }

    /// Every worker must agree on a partition's shard: the hash is fixed, not the
    /// process's (`DefaultHasher` promises no stability across releases).
    #[test]
    fn shards_are_stable_and_a_users_partitions_share_one() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let r = router(8);
        let u = "6f1c2d3e-0000-4000-8000-000000000001";
        let list = PartitionId::TaskLists { user: u.into() };
        let tasks = PartitionId::Tasks {
            user: u.into(),
            list: "L".into(),
        };
        let cal = PartitionId::CalendarList { user: u.into() };
        assert_eq!(r.shard(&list), r.shard(&tasks));
        assert_eq!(r.shard(&list), r.shard(&cal));
        assert!(r.shard(&list) < 8);
        // 1,000 users spread over the 8 shards, none empty, none with twice its share.
        let mut count = [0u32; 8];
        for i in 0..1000 {
            count[r.shard(&PartitionId::CalendarList {
                user: format!("user-{i}"),
            }) as usize] += 1;
        }
        assert!(count.iter().all(|c| (90..160).contains(c)), "{count:?}");
        // Keys that differ in one bit (UUIDs) spread over 2 shards too: both used, evenly.
        let r2 = router(2);
        let halves = (0..400)
            .filter(|i| {
                let u = format!("0b0e6c4e-0000-4000-8000-{i:012}");
                r2.shard(&PartitionId::CalendarList { user: u }) == 0
            })
            .count();
        assert!((160..240).contains(&halves), "{halves} of 400 in shard 0");
    }

    #[test]
    fn a_groups_members_spread_over_the_shards() {
        let r = router(16);
        let members = PartitionId::GroupMembers {
            group: "g-1".into(),
        };
        assert!(r.shard(&members) < 16);
        // A group's members' partitions go by user, not with their group.
        let by_user: std::collections::HashSet<u32> = (0..50)
            .map(|i| {
                r.shard(&PartitionId::TaskLists {
                    user: format!("u{i}"),
                })
            })
            .collect();
        assert!(by_user.len() > 8, "{by_user:?}");
    }
}
