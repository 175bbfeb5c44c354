//! The state topic's records, and rebuilding each partition's entries from them at start.
//!
//! Keys are JSON, like the offsets topic's, so they are the same bytes every time
//! (compaction keys on bytes): `["<connector>",{identity},"meta"]`,
//! `["<connector>",{identity},"b",<bucket>]`, `["<connector>",{identity},"j",<journal>]`.
//! Values are little-endian binary, a tag byte and a version byte first:
//!
//! - meta `M 1 <bits: u8>`: the partition has `1 << bits` buckets;
//! - bucket `B 1 (<key hash: u64> <content hash: u64> <location: u64>)*`, sorted by key hash;
//! - journal `J 1 <attempt: u64> <n: u32> (<key> <content> <location>)*n <n: u32> <key>*n
//!   <n: u32> <key>*n`: items upserted, items removed, and items a round from scratch saw
//!   unchanged (`attempt` names that round's attempt, 0 outside one).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;

use super::{Entry, LiveItems, Loc, SEEN};
use crate::source::{BadIdentity, PartitionId, Slot};

/// Which record of a partition's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKey {
    Meta,
    Bucket(u32),
    Journal(u32),
}

/// The key of one of `partition`'s state records.
pub fn encode_key(connector: &str, partition: &PartitionId, k: StateKey) -> Bytes {
    let head = format!("[{},{}", Value::from(connector), partition.to_json());
    Bytes::from(match k {
        StateKey::Meta => format!("{head},\"meta\"]"),
        StateKey::Bucket(n) => format!("{head},\"b\",{n}]"),
        StateKey::Journal(n) => format!("{head},\"j\",{n}]"),
    })
}

/// Why a record of the state topic is not one of ours.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("key is not JSON: {0}")]
    KeyNotJson(#[source] serde_json::Error),
    #[error("key is not [name, partition, \"meta\" | \"b\", n | \"j\", n]")]
    KeyShape,
    #[error("{0}")]
    Partition(#[from] BadIdentity),
    #[error("value is not a {0} record of version 1 (or is truncated)")]
    Value(&'static str),
}

/// `(connector, partition, which)` of a state key.
pub fn decode_key(key: &[u8]) -> Result<(String, PartitionId, StateKey), DecodeError> {
    let k: Value = serde_json::from_slice(key).map_err(DecodeError::KeyNotJson)?;
    let parts = k.as_array().ok_or(DecodeError::KeyShape)?;
    let (Some(name), Some(identity), Some(kind)) = (
        parts.first().and_then(Value::as_str),
        parts.get(1),
        parts.get(2).and_then(Value::as_str),
    ) else {
        return Err(DecodeError::KeyShape);
    };
    let n = || {
        parts
            .get(3)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(DecodeError::KeyShape)
    };
    let which = match (kind, parts.len()) {
        ("meta", 3) => StateKey::Meta,
        ("b", 4) => StateKey::Bucket(n()?),
        ("j", 4) => StateKey::Journal(n()?),
        _ => return Err(DecodeError::KeyShape),
    };
    Ok((name.to_string(), PartitionId::from_json(identity)?, which))
}

pub(super) fn encode_meta(bits: u8) -> Vec<u8> {
    vec![b'M', 1, bits]
}

/// Writes entries; a location that stands for a record of the batch becomes a slot holding
/// [`Loc::UNKNOWN`] (`pending` gives its record, and the location to keep should it not land).
fn put_entries(
    out: &mut Vec<u8>,
    slots: &mut Vec<Slot>,
    entries: impl Iterator<Item = Entry>,
    pending: &dyn Fn(Loc) -> Option<(usize, Loc)>,
) {
    for e in entries {
        out.extend_from_slice(&e.key.to_le_bytes());
        out.extend_from_slice(&e.content().to_le_bytes());
        let loc = match pending(e.loc) {
            Some((record, keep)) => {
                slots.push(Slot {
                    at: out.len(),
                    record,
                    keep,
                });
                Loc::UNKNOWN
            }
            None => e.loc,
        };
        out.extend_from_slice(&loc.0.to_le_bytes());
    }
}

pub(super) fn encode_bucket(
    entries: &[Entry],
    pending: &dyn Fn(Loc) -> Option<(usize, Loc)>,
) -> (Vec<u8>, Vec<Slot>) {
    let mut out = Vec::with_capacity(2 + entries.len() * 24);
    out.extend_from_slice(&[b'B', 1]);
    let mut slots = Vec::new();
    put_entries(&mut out, &mut slots, entries.iter().copied(), pending);
    (out, slots)
}

/// One journal record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Journal {
    pub attempt: u64,
    pub ups: Vec<Entry>,
    pub dels: Vec<u64>,
    pub seen: Vec<u64>,
}

pub(super) fn encode_journal(
    j: &Journal,
    pending: &dyn Fn(Loc) -> Option<(usize, Loc)>,
) -> (Vec<u8>, Vec<Slot>) {
    let mut out = Vec::with_capacity(22 + j.ups.len() * 24 + (j.dels.len() + j.seen.len()) * 8);
    out.extend_from_slice(&[b'J', 1]);
    out.extend_from_slice(&j.attempt.to_le_bytes());
    let mut slots = Vec::new();
    out.extend_from_slice(&(j.ups.len() as u32).to_le_bytes());
    put_entries(&mut out, &mut slots, j.ups.iter().copied(), pending);
    for keys in [&j.dels, &j.seen] {
        out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for k in keys.iter() {
            out.extend_from_slice(&k.to_le_bytes());
        }
    }
    (out, slots)
}

/// Reads little-endian numbers off a value.
struct Reader<'a>(&'a [u8], &'static str);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Value(self.1));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn entry(&mut self) -> Result<Entry, DecodeError> {
        Ok(Entry {
            key: self.u64()?,
            hash: self.u64()? & !SEEN,
            loc: Loc(self.u64()?),
        })
    }

    fn head(&mut self, tag: u8) -> Result<(), DecodeError> {
        match self.take(2)? {
            [t, 1] if *t == tag => Ok(()),
            _ => Err(DecodeError::Value(self.1)),
        }
    }

    /// `n` items, refusing counts the rest of the value cannot hold.
    fn many<T>(
        &mut self,
        n: usize,
        size: usize,
        mut f: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        if self.0.len() < n.saturating_mul(size) {
            return Err(DecodeError::Value(self.1));
        }
        (0..n).map(|_| f(self)).collect()
    }
}

fn decode_meta(v: &[u8]) -> Result<u8, DecodeError> {
    let mut r = Reader(v, "meta");
    r.head(b'M')?;
    match r.take(1)? {
        [bits] if *bits <= super::MAX_BITS => Ok(*bits),
        _ => Err(DecodeError::Value("meta")),
    }
}

fn decode_bucket(v: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    let mut r = Reader(v, "bucket");
    r.head(b'B')?;
    if r.0.len() % 24 != 0 {
        return Err(DecodeError::Value("bucket"));
    }
    let n = r.0.len() / 24;
    r.many(n, 24, Reader::entry)
}

fn decode_journal(v: &[u8]) -> Result<Journal, DecodeError> {
    let mut r = Reader(v, "journal");
    r.head(b'J')?;
    let attempt = r.u64()?;
    let n = r.u32()? as usize;
    let ups = r.many(n, 24, Reader::entry)?;
    let n = r.u32()? as usize;
    let dels = r.many(n, 8, Reader::u64)?;
    let n = r.u32()? as usize;
    let seen = r.many(n, 8, Reader::u64)?;
    if !r.0.is_empty() {
        return Err(DecodeError::Value("journal"));
    }
    Ok(Journal {
        attempt,
        ups,
        dels,
        seen,
    })
}

/// Which partitions a [`Loader`] keeps.
type Keep = Box<dyn Fn(&PartitionId) -> bool + Send>;

/// Rebuilds every partition's entries from the state topic, read in order: the last record
/// of a key wins, a tombstone removes it.
#[derive(Default)]
pub struct Loader {
    connector: String,
    /// The partitions to load (`None`: all); the others' values are never decoded.
    keep: Option<Keep>,
    metas: HashMap<PartitionId, u8>,
    buckets: HashMap<(PartitionId, u32), Vec<Entry>>,
    journals: HashMap<(PartitionId, u32), Journal>,
}

impl Loader {
    /// Loads the state of `connector` (records of other connectors are skipped).
    pub fn new(connector: &str) -> Self {
        Self {
            connector: connector.to_string(),
            ..Self::default()
        }
    }

    /// Loads only the partitions `keep` says (a worker taking some shards reads the topic's
    /// records of every shard).
    pub fn keeping(mut self, keep: impl Fn(&PartitionId) -> bool + Send + 'static) -> Self {
        self.keep = Some(Box::new(keep));
        self
    }

    /// Takes one record; `Err` says why it is not one of ours (skip it, it is not fatal).
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), DecodeError> {
        let (connector, p, which) = decode_key(key)?;
        if connector != self.connector || self.keep.as_ref().is_some_and(|keep| !keep(&p)) {
            return Ok(());
        }
        match (which, value) {
            (StateKey::Meta, Some(v)) => {
                self.metas.insert(p, decode_meta(v)?);
            }
            (StateKey::Meta, None) => {
                self.metas.remove(&p);
            }
            (StateKey::Bucket(n), Some(v)) => {
                self.buckets.insert((p, n), decode_bucket(v)?);
            }
            (StateKey::Bucket(n), None) => {
                self.buckets.remove(&(p, n));
            }
            (StateKey::Journal(n), Some(v)) => {
                self.journals.insert((p, n), decode_journal(v)?);
            }
            (StateKey::Journal(n), None) => {
                self.journals.remove(&(p, n));
            }
        }
        Ok(())
    }

    /// Each partition with a meta record: its buckets, then its journals in order. Buckets
    /// and journals of a partition without one (a state being removed) are left out.
    pub fn finish(mut self) -> HashMap<PartitionId, LiveItems> {
        let mut by_partition: HashMap<PartitionId, Vec<(u32, Journal)>> = HashMap::new();
        for ((p, n), j) in self.journals.drain() {
            by_partition.entry(p).or_default().push((n, j));
        }
        let mut out = HashMap::with_capacity(self.metas.len());
        for (p, bits) in self.metas.drain() {
            let mut entries = Vec::new();
            for b in 0..1u32 << bits {
                if let Some(mut e) = self.buckets.remove(&(p.clone(), b)) {
                    entries.append(&mut e);
                }
            }
            // Already sorted and unique unless a record was tampered with: make sure.
            entries.sort_unstable_by_key(|e| e.key);
            entries.dedup_by_key(|e| e.key);
            entries.shrink_to_fit();
            let mut items = LiveItems {
                entries,
                bits,
                persisted: true,
                ..LiveItems::default()
            };
            let mut journals = by_partition.remove(&p).unwrap_or_default();
            journals.sort_unstable_by_key(|(n, _)| *n);
            for (n, j) in journals {
                items.replay(&j);
                items.journals = items.journals.max(n + 1);
            }
            out.insert(p, items);
        }
        out
    }
}

impl LiveItems {
    /// Applies a journal read back at start (see [`Journal`]).
    fn replay(&mut self, j: &Journal) {
        if j.attempt != self.attempt {
            self.clear_seen();
            self.attempt = j.attempt;
        }
        let tracking = self.attempt != 0;
        let flag = if tracking { SEEN } else { 0 };
        let mut net: Vec<(u64, Option<(u64, Loc)>)> = j
            .ups
            .iter()
            .map(|e| (e.key, Some((e.content() | flag, e.loc))))
            .collect();
        net.extend(j.dels.iter().map(|k| (*k, None)));
        self.pending = self
            .pending
            .saturating_add(u32::try_from(net.len()).unwrap_or(u32::MAX));
        self.apply_net(net);
        if tracking {
            self.mark_seen(&j.seen);
        }
    }
}
