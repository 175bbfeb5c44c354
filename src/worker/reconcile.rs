//! Reconciling a page with its partition's live items (`crate::live`) before it is
//! committed: upserts whose content is live already and tombstones for keys not live are
//! left out; the last page of a round from scratch gets tombstones for what the round no
//! longer returned; a removed To Do list takes its tasks' tombstones and state with it (as a
//! departed group member's partitions do theirs, `groups.rs`); and
//! the state records describing all that join the same transaction.
//!
//! Keys of tombstones are read back from where their item's last record is (the state keeps
//! hashes, not ids): a read per key, or less where they are close together. A partition
//! without state (a worker upgraded from a version without it) builds it from a scan of its
//! topic once, when its first round from scratch starts; until then its pages are written
//! as they come.

use rustc_hash::FxHashMap;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::graph::PartitionReader;
use crate::live::{key_hash, Entry, LiveItems, Plan};
use crate::metrics;
use crate::sink::readback::keys_at;
use crate::sink::scan::live_records;
use crate::source::{
    key_id, Loc, Op, PartitionId, SourceBatch, SourceOffset, SourceRecord, StateWrite,
};

use super::Shared;

/// How long reading keys back may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What the worker knows of a partition's live items.
pub(super) enum Slot {
    Known(LiveItems),
    /// Nothing yet: the partition has an offset from a version without state.
    Unknown,
}

/// Every partition's slot; a partition not in it has nothing live (it is new).
#[derive(Default)]
pub(super) struct States(Mutex<FxHashMap<Arc<PartitionId>, Arc<Mutex<Slot>>>>);

impl States {
    /// The state read at start; partitions with an offset but no state are `Unknown`,
    /// except those that never committed a page (their offset is the initial request).
    /// Keyed by the offsets' identities (shared with the status's maps).
    pub fn new<'a>(
        mut loaded: HashMap<PartitionId, LiveItems>,
        offsets: impl IntoIterator<Item = (&'a Arc<PartitionId>, &'a SourceOffset)>,
    ) -> Self {
        let slot = |s: Slot| Arc::new(Mutex::new(s));
        let mut map: FxHashMap<Arc<PartitionId>, Arc<Mutex<Slot>>> = FxHashMap::default();
        for (p, o) in offsets {
            let started = o.link.is_some() || o.delta_link.is_some() || o.round > 1;
            match loaded.remove(&**p) {
                Some(l) => {
                    map.insert(p.clone(), slot(Slot::Known(l)));
                }
                None if started => {
                    map.insert(p.clone(), slot(Slot::Unknown));
                }
                None => {}
            }
        }
        // State without an offset (not written by this version, but read all the same).
        for (p, l) in loaded {
            map.insert(Arc::new(p), slot(Slot::Known(l)));
        }
        Self(Mutex::new(map))
    }

    /// Takes what was read of newly owned partitions (a shard assigned): their slots are
    /// replaced as [`States::new`] would make them.
    pub fn adopt<'a>(
        &self,
        loaded: HashMap<PartitionId, LiveItems>,
        offsets: impl IntoIterator<Item = (&'a Arc<PartitionId>, &'a SourceOffset)>,
    ) {
        let fresh = Self::new(loaded, offsets);
        let fresh = fresh.0.into_inner();
        self.0.lock().extend(fresh);
    }

    /// Drops the slots of the partitions `gone` says (their shard went to another worker).
    pub fn forget(&self, gone: impl Fn(&PartitionId) -> bool) {
        self.0.lock().retain(|p, _| !gone(p));
    }

    /// A partition's slot (a new partition's is empty).
    pub fn slot(&self, p: &Arc<PartitionId>) -> Arc<Mutex<Slot>> {
        self.0
            .lock()
            .entry(p.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Slot::Known(LiveItems::new()))))
            .clone()
    }

    fn get(&self, p: &PartitionId) -> Option<Arc<Mutex<Slot>>> {
        self.0.lock().get(p).cloned()
    }

    pub fn remove(&self, p: &PartitionId) {
        self.0.lock().remove(p);
    }

    /// `(partitions, items)` known.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        let map = self.0.lock();
        let items = map
            .values()
            .map(|s| match &*s.lock() {
                Slot::Known(l) => l.len(),
                Slot::Unknown => 0,
            })
            .sum();
        (map.len(), items)
    }
}

/// What a reconciled batch leaves for its commit.
pub(super) struct Reconciled {
    /// To apply to the partition's live items once committed (`None`: no state).
    pub plan: Option<Plan>,
    /// What the reader's `advance` needs of the batch's records as it made them (before
    /// any was left out).
    pub ids: Vec<(Op, String)>,
    /// Partitions whose whole state the batch removes (removed lists' task partitions).
    pub removed: Vec<Arc<PartitionId>>,
}

/// Reconciles `batch` (see the module docs). An error leaves the slot as it was, or
/// `Unknown` made `Known` (what the topic holds): the page is fetched again.
pub(super) async fn reconcile(
    shared: &Arc<Shared>,
    reader: &PartitionReader,
    slot: &Arc<Mutex<Slot>>,
    batch: &mut SourceBatch,
) -> Result<Reconciled, String> {
    let p = batch.partition.clone();
    let full = batch.full_round;
    if full.is_some_and(|f| f.first) && matches!(*slot.lock(), Slot::Unknown) {
        let items = seed(shared, &p).await?;
        *slot.lock() = Slot::Known(items);
    }
    if let Some(f) = full.filter(|f| f.last) {
        let upserted: Vec<u64> = batch
            .records
            .iter()
            .filter(|r| r.op == Op::Upsert)
            .map(|r| key_hash(&r.key))
            .collect();
        let (unseen, live) = match &*slot.lock() {
            Slot::Known(l) => (l.unseen(&upserted, f.first), l.len()),
            Slot::Unknown => (Vec::new(), 0),
        };
        if !unseen.is_empty() {
            let gone = ids_of(shared, &p, &unseen).await?;
            metrics::reconciled(&p, gone.len(), live);
            reader.complete_full_round(batch, gone);
        }
    }
    let ids = reader.advance_ids(&batch.records);
    let (extra, writes, removed) = removed_lists(shared, batch).await?;
    let plan = match &*slot.lock() {
        Slot::Known(l) => {
            let records = std::mem::take(&mut batch.records);
            let d = l.decide(&shared.spec.sink.connector, &p, records, full);
            metrics::records_skipped(p.kind(), d.unchanged, d.not_live);
            batch.records = d.records;
            batch.state = d.writes;
            Some(d.plan)
        }
        Slot::Unknown => None,
    };
    batch.records.extend(extra);
    batch.state.extend(writes);
    Ok(Reconciled { plan, ids, removed })
}

/// The task partitions of the lists `batch` removes: each is halted, and a tombstone for
/// each of its live tasks (`list-removed`) and the removal of its state join the batch.
async fn removed_lists(shared: &Arc<Shared>, batch: &SourceBatch) -> Result<Removal, String> {
    if batch.resets.is_empty() {
        return Ok(Default::default());
    }
    // Their tasks must not commit anything meanwhile.
    shared
        .halt("list removed", batch.resets.iter().map(|p| &**p))
        .await;
    let round = batch.records_round();
    tombstone_all(shared, &batch.resets, round, "list-removed").await
}

/// Tombstones, state removals and the partitions whose state goes: what `batch` adds for
/// the partitions it resets.
pub(super) type Removal = (Vec<SourceRecord>, Vec<StateWrite>, Vec<Arc<PartitionId>>);

/// A tombstone (`reason`, of round `round`) for each live item of each of `partitions`
/// (halted already), and the removal of their state: a removed list's tasks, a departed
/// member's partitions (`on_member_removed = "tombstone"`, see `groups.rs`).
pub(super) async fn tombstone_all(
    shared: &Arc<Shared>,
    partitions: &[Arc<PartitionId>],
    round: u64,
    reason: &'static str,
) -> Result<Removal, String> {
    let (mut records, mut writes, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for p in partitions {
        let Some(slot) = shared.states.get(p) else {
            continue;
        };
        let known = match &*slot.lock() {
            Slot::Known(l) => Some((
                l.entries().to_vec(),
                l.removal(&shared.spec.sink.connector, p),
            )),
            Slot::Unknown => None,
        };
        let ids = match known {
            Some((entries, removal)) => {
                writes.extend(removal);
                ids_of(shared, p, &entries).await?
            }
            None => scan(shared, p)
                .await?
                .into_keys()
                .filter_map(|k| key_id(&k))
                .collect(),
        };
        records.extend(
            ids.into_iter()
                .map(|id| SourceRecord::tombstone(p.clone(), id, round, reason, false)),
        );
        removed.push(p.clone());
    }
    Ok((records, writes, removed))
}

/// The ids of `entries` of `p`, from the keys of their records. An entry whose record is
/// not where the state says (the topic was rewritten) is looked for in the whole topic.
async fn ids_of(
    shared: &Arc<Shared>,
    p: &PartitionId,
    entries: &[Entry],
) -> Result<Vec<String>, String> {
    let opts = &shared.spec.sink;
    let locs: Vec<Loc> = entries.iter().map(|e| e.loc).collect();
    let (cfg, topic) = (
        opts.consumer_config(),
        opts.topics.for_kind(p.kind()).to_string(),
    );
    let group = format!("{}-keys", opts.connector);
    let keys =
        tokio::task::spawn_blocking(move || keys_at(&cfg, &group, &topic, &locs, READ_TIMEOUT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let id_of = |k: &[u8]| key_id(k).filter(|id| p.record_key(id)[..] == *k);
    let mut ids = Vec::with_capacity(entries.len());
    let mut lost = HashSet::new();
    // An entry whose record never reached its topic has nothing to tombstone; one whose
    // location is unknown (a crash before the state said where) is looked for below.
    for e in entries.iter().filter(|e| e.loc != Loc::NONE) {
        match keys.get(&e.loc).filter(|k| key_hash(k) == e.key) {
            Some(k) => ids.extend(id_of(k)),
            None => {
                lost.insert(e.key);
            }
        }
    }
    if !lost.is_empty() {
        tracing::warn!(partition = %p, records = lost.len(), "records not where the reconciliation state says, or where unknown; reading the topic for them");
        ids.extend(
            scan(shared, p)
                .await?
                .into_keys()
                .filter(|k| lost.contains(&key_hash(k)))
                .filter_map(|k| id_of(&k)),
        );
    }
    Ok(ids)
}

/// The partition's live records in its topic (a read of the whole topic).
async fn scan(
    shared: &Arc<Shared>,
    p: &PartitionId,
) -> Result<HashMap<Vec<u8>, (u64, Loc)>, String> {
    let opts = shared.spec.sink.clone();
    let topic = opts.topics.for_kind(p.kind()).to_string();
    let prefix = p.key_prefix();
    tokio::task::spawn_blocking(move || live_records(&opts, &topic, &prefix, READ_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Builds a partition's state from its topic (once: a worker upgraded from a version
/// without state).
async fn seed(shared: &Arc<Shared>, p: &PartitionId) -> Result<LiveItems, String> {
    let t0 = Instant::now();
    let live = scan(shared, p).await?;
    let items = LiveItems::seeded(live.iter().map(|(k, (h, l))| (key_hash(k), *h, *l)));
    metrics::state_seeded(p, items.len(), t0.elapsed());
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: &str) -> Arc<PartitionId> {
        Arc::new(PartitionId::CalendarList { user: user.into() })
    }

    fn offset(link: Option<&str>, round: u64) -> SourceOffset {
        SourceOffset {
            link: link.map(Into::into),
            delta_link: link.map(Into::into),
            round,
            resync: false,
            ..SourceOffset::INITIAL
        }
    }

    /// What a partition's state is at start: loaded, unknown (an offset from a version
    /// without state: built from the topic at its first round from scratch), or new.
    #[test]
    fn partitions_with_offsets_but_no_state_are_unknown_unless_they_never_committed() {
        let loaded = HashMap::from([((*p("a")).clone(), LiveItems::new())]);
        let offsets = HashMap::from([
            (p("a"), offset(Some("https://g/delta"), 3)),
            (p("b"), offset(Some("https://g/delta"), 3)),
            (p("c"), offset(None, 1)),
        ]);
        let states = States::new(loaded, &offsets);
        assert!(matches!(*states.slot(&p("a")).lock(), Slot::Known(_)));
        assert!(matches!(*states.slot(&p("b")).lock(), Slot::Unknown));
        assert!(
            matches!(*states.slot(&p("c")).lock(), Slot::Known(ref l) if l.is_empty()),
            "its offset is the initial request: it never wrote a record"
        );
        assert!(matches!(*states.slot(&p("new")).lock(), Slot::Known(_)));
        assert_eq!(states.size().0, 4);
        states.remove(&p("b"));
        assert!(states.get(&p("b")).is_none());
    }
}
