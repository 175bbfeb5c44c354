//! What a batch does to its partition's live items: which of its records are written (an
//! upsert only when its content changed, a tombstone only for a live key), the state
//! messages that go into the same transaction, and, once committed, the change to apply.
//!
//! A commit that changes something appends a journal record. The journals are folded into
//! the buckets they touched (and removed) at the end of a round from scratch, when they
//! hold a quarter of the items (at least [`FOLD_MIN_PENDING`] changes) or when there are
//! [`MAX_JOURNALS`] of them, so bytes written stay in proportion to changes: a page whose
//! every item is unchanged writes one small journal (the keys it saw), not its buckets.

use std::collections::HashMap;

use super::codec::{encode_bucket, encode_journal, encode_key, encode_meta, Journal, StateKey};
use super::{content_hash, key_hash, next_bits, Entry, LiveItems, Loc, SEEN};
use crate::source::{FullRound, Op, PartitionId, SourceRecord, StateWrite};

/// Journals at most between folds (outside a round from scratch, which folds at its end).
const MAX_JOURNALS: u32 = 256;
/// Changes in journals that make a fold due, at least (else a quarter of the items).
const FOLD_MIN_PENDING: u32 = 1024;

/// Locations standing for "where record `i` of this batch lands" while planning.
const PENDING: u64 = 0xfffe << 48;
/// An entry about to be removed.
const REMOVED: Loc = Loc(0xfffd << 48);

/// A key's net change in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Upserted by record `record`; `old` is where its previous record is, kept if this
    /// one does not reach the topic (dead-lettered).
    Up {
        key: u64,
        hash: u64,
        record: usize,
        old: Loc,
    },
    Del {
        key: u64,
    },
}

impl Change {
    /// The key as the batch leaves it: `(content, location before the batch)`, or gone.
    fn live(&self) -> Option<(u64, Loc)> {
        match *self {
            Change::Up { hash, old, .. } => Some((hash, old)),
            Change::Del { .. } => None,
        }
    }
}

/// What a committed batch does to the entries ([`LiveItems::apply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    changes: Vec<Change>,
    /// Keys an unchanged upsert of a round from scratch returned.
    seen: Vec<u64>,
    /// The attempt at a round from scratch the page belongs to; 0: the page does not track
    /// what it sees (a delta round, or a round from scratch whose start is not known).
    attempt: u64,
    /// The page starts the attempt.
    first: bool,
    /// The page ends the attempt: every entry it did not see goes.
    end: bool,
    /// Bucket bits after folding, when the batch folds.
    fold: Option<u8>,
    /// A journal record is written (after the fold, when both).
    journal: bool,
    meta: bool,
}

impl Plan {
    /// The batch folds the journals into the buckets.
    pub fn folds(&self) -> bool {
        self.fold.is_some()
    }
}

/// A batch's records as they will be written, the state records that go with them, and
/// the plan to apply once they are committed.
#[derive(Debug)]
pub struct Decided {
    pub records: Vec<SourceRecord>,
    pub writes: Vec<StateWrite>,
    pub plan: Plan,
    /// Upserts left out: the same content is live.
    pub unchanged: usize,
    /// Tombstones left out: the key is not live.
    pub not_live: usize,
}

impl LiveItems {
    /// Decides what `records` (a page of `partition`, in order) write; `full` says where
    /// the page stands in a round from scratch. Changes nothing: see [`Self::apply`].
    pub fn decide(
        &self,
        connector: &str,
        partition: &PartitionId,
        records: Vec<SourceRecord>,
        full: Option<FullRound>,
    ) -> Decided {
        let tracking = full.is_some_and(|f| f.first || self.tracking());
        let first = tracking && full.is_some_and(|f| f.first);
        let attempt = match (tracking, first) {
            (false, _) => 0,
            (true, true) => rand::random::<u64>().max(1),
            (true, false) => self.attempt,
        };
        let mut plan = Plan {
            attempt,
            first,
            end: tracking && full.is_some_and(|f| f.last),
            ..Plan::default()
        };
        let (mut unchanged, mut not_live) = (0, 0);
        // Each key the batch changed: its change in `plan.changes`, which is also the batch's
        // own view of that key for its later records.
        let mut net: HashMap<u64, usize> = HashMap::new();
        let mut kept = Vec::with_capacity(records.len());
        for r in records {
            let key = key_hash(&r.key);
            let live = match net.get(&key) {
                Some(&i) => plan.changes[i].live(),
                None => self.get(key).map(|e| (e.content(), e.loc)),
            };
            let change = match (r.op, &r.value) {
                (Op::Upsert, Some(v)) => {
                    let hash = content_hash(v);
                    if live.is_some_and(|(h, _)| h == hash) {
                        unchanged += 1;
                        if tracking {
                            plan.seen.push(key);
                        }
                        continue;
                    }
                    let old = live.map_or(Loc::NONE, |(_, l)| l);
                    Change::Up {
                        key,
                        hash,
                        record: kept.len(),
                        old,
                    }
                }
                _ => {
                    if live.is_none() {
                        not_live += 1;
                        continue;
                    }
                    Change::Del { key }
                }
            };
            kept.push(r);
            match net.get(&key) {
                Some(&i) => plan.changes[i] = change,
                None => {
                    net.insert(key, plan.changes.len());
                    plan.changes.push(change);
                }
            }
        }
        let writes = self.state_writes(connector, partition, &mut plan, tracking);
        Decided {
            records: kept,
            writes,
            plan,
            unchanged,
            not_live,
        }
    }

    /// The state records of `plan` (fills in whether it folds, journals, writes meta).
    fn state_writes(
        &self,
        connector: &str,
        partition: &PartitionId,
        plan: &mut Plan,
        tracking: bool,
    ) -> Vec<StateWrite> {
        let n = plan.changes.len() as u32;
        let due = self.pending.saturating_add(n)
            >= FOLD_MIN_PENDING.max((self.entries.len() / 4) as u32)
            || self.journals >= MAX_JOURNALS;
        let unwritten = !self.persisted && !self.entries.is_empty();
        let fold = plan.end || unwritten || (!tracking && n > 0 && due);
        let key = |k| encode_key(connector, partition, k);
        // Where a pending location's record lands, and what to keep meanwhile.
        let olds: HashMap<usize, Loc> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Up { record, old, .. } => Some((*record, *old)),
                Change::Del { .. } => None,
            })
            .collect();
        let pending = |l: Loc| {
            (l.0 & !0xffff_ffff == PENDING).then(|| {
                let record = (l.0 & 0xffff_ffff) as usize;
                (record, olds.get(&record).copied().unwrap_or(Loc::NONE))
            })
        };
        let mut writes = Vec::new();
        let mut put = |k, value: Option<(Vec<u8>, Vec<crate::source::Slot>)>| {
            let (value, slots) = match value {
                Some((v, s)) => (Some(v), s),
                None => (None, Vec::new()),
            };
            writes.push(StateWrite {
                key: key(k),
                value,
                slots,
            });
        };
        if fold {
            let mut after = self.clone();
            after.apply_changes(plan, &|record, _| Loc(PENDING | record as u64));
            let bits = next_bits(self.bits, after.entries.len());
            let all = bits != self.bits || unwritten;
            for b in 0..1usize << bits {
                if !all && !after.is_dirty(b) {
                    continue;
                }
                let entries = LiveItems::bucket(&after.entries, b, bits);
                let value = (!entries.is_empty()).then(|| encode_bucket(entries, &pending));
                put(StateKey::Bucket(b as u32), value);
            }
            for b in 1usize << bits..1usize << self.bits {
                put(StateKey::Bucket(b as u32), None);
            }
            for j in 0..self.journals {
                put(StateKey::Journal(j), None);
            }
            plan.fold = Some(bits);
            // Written with every fold, even unchanged: the end of a round from scratch that
            // found nothing new then commits its offset at once, like any round that wrote.
            plan.meta = true;
            put(StateKey::Meta, Some((encode_meta(bits), Vec::new())));
            // Mid-way through a round from scratch, what it has seen outlives the fold.
            if tracking && !plan.end {
                let mut seen = plan.seen.clone();
                seen.extend(plan.changes.iter().filter_map(|c| match c {
                    Change::Up { key, .. } => Some(*key),
                    Change::Del { .. } => None,
                }));
                let j = Journal {
                    attempt: plan.attempt,
                    seen,
                    ..Journal::default()
                };
                put(StateKey::Journal(0), Some(encode_journal(&j, &pending)));
                plan.journal = true;
            }
            return writes;
        }
        if !plan.changes.is_empty() || !plan.seen.is_empty() || plan.first {
            let mut j = Journal {
                attempt: plan.attempt,
                seen: plan.seen.clone(),
                ..Journal::default()
            };
            for c in &plan.changes {
                match *c {
                    Change::Up {
                        key, hash, record, ..
                    } => j.ups.push(Entry {
                        key,
                        hash,
                        loc: Loc(PENDING | record as u64),
                    }),
                    Change::Del { key } => j.dels.push(key),
                }
            }
            put(
                StateKey::Journal(self.journals),
                Some(encode_journal(&j, &pending)),
            );
            plan.journal = true;
        }
        if !self.persisted {
            put(StateKey::Meta, Some((encode_meta(self.bits), Vec::new())));
            plan.meta = true;
        }
        writes
    }

    /// Applies a committed plan; `locs[i]` is where record `i` of the batch landed
    /// ([`Loc::NONE`]: not in its topic, the previous record stays; [`Loc::UNKNOWN`]: landed,
    /// where not known).
    pub fn apply(&mut self, plan: &Plan, locs: &[Loc]) {
        self.apply_changes(plan, &|record, old| match locs.get(record) {
            Some(&Loc::NONE) => old,
            Some(l) => *l,
            None => Loc::UNKNOWN,
        });
        match plan.fold {
            Some(bits) => {
                self.bits = bits;
                // Clean: no words until a bucket changes (most partitions stay idle).
                self.dirty = Vec::new();
                self.journals = u32::from(plan.journal);
                self.pending = 0;
            }
            None if plan.journal => {
                self.journals += 1;
                self.pending = self.pending.saturating_add(plan.changes.len() as u32);
            }
            None => {}
        }
        self.persisted |= plan.meta || plan.fold.is_some();
    }

    /// The entries after `plan`'s changes, seen keys and round end (`loc` gives an upsert's
    /// location from its record index and the location it replaces).
    fn apply_changes(&mut self, plan: &Plan, loc: &dyn Fn(usize, Loc) -> Loc) {
        if plan.first {
            self.clear_seen();
        }
        self.attempt = plan.attempt;
        let flag = if plan.attempt != 0 { SEEN } else { 0 };
        let net = plan
            .changes
            .iter()
            .map(|c| match *c {
                Change::Up {
                    key,
                    hash,
                    record,
                    old,
                } => (key, Some((hash | flag, loc(record, old)))),
                Change::Del { key } => (key, None),
            })
            .collect();
        self.apply_net(net);
        if plan.attempt != 0 {
            self.mark_seen(&plan.seen);
        }
        if plan.end {
            let gone: Vec<u64> = self
                .entries
                .iter()
                .filter(|e| !e.seen())
                .map(|e| e.key)
                .collect();
            for k in gone {
                self.mark_dirty(k);
            }
            self.entries.retain(|e| e.seen());
            self.clear_seen();
            self.attempt = 0;
        }
    }

    /// Applies net changes (distinct keys): `Some((hash, loc))` upserts, `None` removes.
    pub(super) fn apply_net(&mut self, net: Vec<(u64, Option<(u64, Loc)>)>) {
        let mut adds = Vec::new();
        let mut removed = false;
        for (key, change) in net {
            self.mark_dirty(key);
            match (self.entries.binary_search_by_key(&key, |e| e.key), change) {
                (Ok(i), Some((hash, loc))) => {
                    self.entries[i].hash = hash;
                    self.entries[i].loc = loc;
                }
                (Ok(i), None) => {
                    self.entries[i].loc = REMOVED;
                    removed = true;
                }
                (Err(_), Some((hash, loc))) => adds.push(Entry { key, hash, loc }),
                (Err(_), None) => {}
            }
        }
        if removed {
            self.entries.retain(|e| e.loc != REMOVED);
        }
        if adds.is_empty() {
            return;
        }
        // Merged from the back in place: one pass, and room for exactly the new entries
        // (memory per item stays at 24 bytes; a page at a time, not an item at a time).
        adds.sort_unstable_by_key(|e| e.key);
        let old = self.entries.len();
        self.entries.reserve_exact(adds.len());
        self.entries.resize(old + adds.len(), adds[0]);
        let (mut i, mut j, mut w) = (old, adds.len(), old + adds.len());
        while j > 0 {
            w -= 1;
            if i > 0 && self.entries[i - 1].key > adds[j - 1].key {
                self.entries[w] = self.entries[i - 1];
                i -= 1;
            } else {
                self.entries[w] = adds[j - 1];
                j -= 1;
            }
        }
    }

    pub(super) fn clear_seen(&mut self) {
        for e in &mut self.entries {
            e.hash &= !SEEN;
        }
    }

    pub(super) fn mark_seen(&mut self, keys: &[u64]) {
        for k in keys {
            if let Ok(i) = self.entries.binary_search_by_key(k, |e| e.key) {
                self.entries[i].hash |= SEEN;
            }
        }
    }

    /// Records that remove this partition's whole state (its To Do list is gone).
    pub fn removal(&self, connector: &str, partition: &PartitionId) -> Vec<StateWrite> {
        let tomb = |k| StateWrite {
            key: encode_key(connector, partition, k),
            value: None,
            slots: Vec::new(),
        };
        let mut out = vec![tomb(StateKey::Meta)];
        out.extend((0..1u32 << self.bits).map(|b| tomb(StateKey::Bucket(b))));
        out.extend((0..self.journals).map(|j| tomb(StateKey::Journal(j))));
        out
    }
}

/// Keys of a bucket's entries, for tests elsewhere in the module.
#[cfg(test)]
pub(super) fn keys_in(items: &LiveItems, b: usize) -> Vec<u64> {
    LiveItems::bucket(&items.entries, b, items.bits)
        .iter()
        .map(|e| e.key)
        .collect()
}
