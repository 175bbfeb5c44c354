//! What each partition has live in its topic, so that a round from scratch can end by
//! tombstoning what it no longer returned and repeat nothing that did not change.
//!
//! Per item, memory keeps three `u64`s (24 bytes): a hash of its record key, a hash of its
//! content (the value's bytes; the top bit marks "seen in the current round from scratch")
//! and where its latest record is in its topic ([`Loc`]). Item ids (Graph's are ~150 bytes)
//! are never kept: a tombstone's key is read back from the record at that location.
//!
//! The entries are sorted by key hash and persisted, in the same transaction as the records
//! and offset they describe, to the compacted state topic: `bucket` messages (the entries
//! whose key hash starts with the bucket's bits, ~32–256 per bucket), `journal` messages
//! (one per commit that changes something: the change, and which items a round from scratch
//! has seen so far) and a `meta` message (how many buckets). Journals are folded into the
//! buckets they touch at the end of a round from scratch, or once they hold a quarter of
//! the partition's items, so a commit writes bytes in proportion to its changes.
//!
//! - `plan.rs`: what a batch writes (records kept, state messages) and what it does to the
//!   entries once committed.
//! - `codec.rs`: state-topic keys and values, and rebuilding the entries at start.
//!
//! Pure: no I/O, no rdkafka; the sink writes and reads the messages, the worker decides.

mod codec;
mod plan;

pub use codec::{decode_key, encode_key, DecodeError, Loader, StateKey};
pub use plan::{Decided, Plan};

pub use crate::source::Loc;

/// The content hash's top bit: the entry was seen in the current round from scratch.
const SEEN: u64 = 1 << 63;

/// A hash of a record key (its bytes: the same for an item's upserts and tombstones).
pub fn key_hash(key: &[u8]) -> u64 {
    first_u64(key)
}

/// A hash of a record's value: equal hashes mean the same bytes were committed.
pub fn content_hash(value: &[u8]) -> u64 {
    first_u64(value) & !SEEN
}

/// SipHash-1-3 with fixed keys: a fixed algorithm, so hashes stay the same across versions
/// and platforms (the state outlives the process; std's `DefaultHasher` promises no such
/// thing), and ~1.2 µs for a 4 KB event where SHA-256 took ~4.5 µs. Not a defence against
/// crafted collisions: Graph assigns the ids, and a mailbox owner crafting a body that
/// collides with its own previous version could only hide that change of their own item.
fn first_u64(bytes: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(KEYS.0, KEYS.1);
    h.write(bytes);
    h.finish()
}

/// "graph-cdc/live/1" as two keys.
const KEYS: (u64, u64) = (0x6772_6170_682d_6364, 0x632f_6c69_7665_2f31);

/// One live item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    /// Content hash; [`SEEN`] is the round-from-scratch flag.
    pub hash: u64,
    pub loc: Loc,
}

impl Entry {
    fn content(&self) -> u64 {
        self.hash & !SEEN
    }

    fn seen(&self) -> bool {
        self.hash & SEEN != 0
    }
}

/// Buckets never hold more than this many entries on average before they split...
const MAX_PER_BUCKET: usize = 256;
/// ...nor fewer than this before they merge (apart from a single bucket).
const MIN_PER_BUCKET: usize = 32;
/// Buckets are sized for this many entries when their count changes.
const TARGET_PER_BUCKET: usize = 128;
/// Most bucket bits (a million buckets: 128 million items).
const MAX_BITS: u8 = 20;

/// The bucket of a key hash among `1 << bits`: its top `bits` bits, so that buckets are
/// ranges of the sorted entries and doubling their count splits each in two.
pub fn bucket_of(key: u64, bits: u8) -> usize {
    if bits == 0 {
        0
    } else {
        (key >> (64 - u32::from(bits))) as usize
    }
}

/// Bucket bits for `n` entries, given the current ones: unchanged while the average stays
/// within [`MIN_PER_BUCKET`, `MAX_PER_BUCKET`] (no flapping), else sized for
/// [`TARGET_PER_BUCKET`].
pub fn next_bits(bits: u8, n: usize) -> u8 {
    let buckets = 1usize << bits;
    let too_full = n > MAX_PER_BUCKET * buckets;
    let too_empty = bits > 0 && n < MIN_PER_BUCKET * buckets;
    if !too_full && !too_empty {
        return bits;
    }
    let mut b = 0u8;
    while b < MAX_BITS && n > TARGET_PER_BUCKET << b {
        b += 1;
    }
    b
}

/// A partition's live items (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveItems {
    /// Sorted by `key`, keys unique.
    entries: Vec<Entry>,
    /// `1 << bits` buckets.
    bits: u8,
    /// Buckets whose message no longer matches the entries (changed by journals since the
    /// last fold), one bit each.
    dirty: Vec<u64>,
    /// Journal messages `0..journals` written since the last fold.
    journals: u32,
    /// Changes those journals hold.
    pending: u32,
    /// The current attempt at a round from scratch (0: none, or not known).
    attempt: u64,
    /// The meta message is in Kafka (else the next commit writes it).
    persisted: bool,
}

impl LiveItems {
    /// A partition with nothing live and nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries built from what a scan of the topic found (`(key hash, content hash,
    /// location)`), not yet written: the next commit writes every bucket.
    pub fn seeded(items: impl IntoIterator<Item = (u64, u64, Loc)>) -> Self {
        let mut entries: Vec<Entry> = items
            .into_iter()
            .map(|(key, hash, loc)| Entry {
                key,
                hash: hash & !SEEN,
                loc,
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.key);
        entries.dedup_by_key(|e| e.key);
        entries.shrink_to_fit();
        let bits = next_bits(0, entries.len());
        let mut s = Self {
            entries,
            bits,
            ..Self::default()
        };
        s.dirty = vec![u64::MAX; s.dirty_words()];
        s
    }

    /// Items live.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.dirty.capacity() * std::mem::size_of::<u64>()
    }

    /// Bucket bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Journal messages since the last fold.
    pub fn journals(&self) -> u32 {
        self.journals
    }

    /// The live entry of a key hash.
    pub fn get(&self, key: u64) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&key, |e| e.key)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Every live entry, sorted by key hash.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// A round from scratch is under way and knows what it has seen.
    pub fn tracking(&self) -> bool {
        self.attempt != 0
    }

    /// The entries a round from scratch has not returned, once the page of `upserted` keys
    /// is counted: what its end tombstones. `first`: the page starts the round (nothing is
    /// seen yet). Empty when the round does not know what it has seen.
    pub fn unseen(&self, upserted: &[u64], first: bool) -> Vec<Entry> {
        if !first && !self.tracking() {
            return Vec::new();
        }
        let page: std::collections::HashSet<u64> = upserted.iter().copied().collect();
        self.entries
            .iter()
            .filter(|e| (first || !e.seen()) && !page.contains(&e.key))
            .copied()
            .collect()
    }

    fn dirty_words(&self) -> usize {
        (1usize << self.bits).div_ceil(64)
    }

    fn mark_dirty(&mut self, key: u64) {
        let b = bucket_of(key, self.bits);
        if self.dirty.len() < self.dirty_words() {
            self.dirty.resize(self.dirty_words(), 0);
        }
        self.dirty[b / 64] |= 1 << (b % 64);
    }

    fn is_dirty(&self, b: usize) -> bool {
        self.dirty
            .get(b / 64)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// The entries of bucket `b` among `1 << bits`.
    fn bucket(entries: &[Entry], b: usize, bits: u8) -> &[Entry] {
        let lo = entries.partition_point(|e| bucket_of(e.key, bits) < b);
        let hi = entries.partition_point(|e| bucket_of(e.key, bits) <= b);
        &entries[lo..hi]
    }
}

#[cfg(test)]
mod tests;
