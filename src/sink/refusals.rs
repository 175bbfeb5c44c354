//! Records Kafka refuses for good (too large, a topic the principal may not write): finding
//! them before they are sent where the limit is known, and blaming the right ones when the
//! broker refuses a whole request. The committer decides what happens to them (dead letter
//! or a failed partition).

use std::collections::HashMap;
use std::sync::Arc;

use super::handle::BatchAck;
use super::producer::{Refused, Tag};
use crate::source::{PartitionId, SourceBatch, SourceRecord};

/// A batch waiting for its transaction, with the records to dead-letter instead of writing.
pub(super) struct Pending {
    pub batch: SourceBatch,
    pub ack: BatchAck,
    /// Record index → why Kafka refuses it.
    pub dead: HashMap<usize, Fault>,
}

/// Why Kafka refuses a record.
#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub class: &'static str,
    pub message: String,
}

/// Records Kafka refused, by partition and item, with their size: a page fetched again
/// after an abort brings them back, and they must not be sent again. Looked up for every
/// record of every transaction, so by reference, without building a key.
#[derive(Default)]
pub(super) struct Known {
    by_partition: HashMap<Arc<PartitionId>, HashMap<String, (usize, Fault)>>,
    len: usize,
}

/// Refused records remembered at most (a few per partition at worst).
const KNOWN_REFUSED_MAX: usize = 10_000;

impl Known {
    /// The refusal of this very record (same item, same size), if it was refused before.
    fn get(&self, partition: &PartitionId, r: &SourceRecord) -> Option<&Fault> {
        if self.len == 0 {
            return None; // the usual case: nothing was ever refused, nothing to hash
        }
        self.by_partition
            .get(partition)?
            .get(r.id.as_str())
            .filter(|(size, _)| *size == data_size(r))
            .map(|(_, f)| f)
    }

    pub fn insert(&mut self, partition: &Arc<PartitionId>, r: &SourceRecord, fault: Fault) {
        if self.len >= KNOWN_REFUSED_MAX {
            *self = Known::default();
        }
        let old = self
            .by_partition
            .entry(partition.clone())
            .or_default()
            .insert(r.id.clone(), (data_size(r), fault));
        self.len += usize::from(old.is_none());
    }
}

/// Records refused before anything is sent: known refusals of the same record, and records
/// over the producer's size limit.
pub(super) fn screen(batches: &[Pending], known: &Known, max_message_bytes: usize) -> Vec<Refused> {
    let mut out = Vec::new();
    for (i, p) in batches.iter().enumerate() {
        for (j, r) in p.batch.records.iter().enumerate() {
            if p.dead.contains_key(&j) {
                continue;
            }
            if let Some(f) = known.get(&p.batch.partition, r) {
                out.push(Refused {
                    tag: Tag::new(i, j),
                    class: f.class,
                    message: f.message.clone(),
                });
            } else if let Some(size) = over_limit(r, &p.batch.partition, max_message_bytes) {
                out.push(Refused {
                    tag: Tag::new(i, j),
                    class: "record_too_large",
                    message: format!(
                        "the record is {size} bytes, over the producer's limit of {} bytes (message.max.bytes)",
                        max_message_bytes
                    ),
                });
            }
        }
    }
    out
}

/// The records to blame for a refusal. The broker refuses a whole produce request when one
/// of its records is over the topic's `max.message.bytes`: the innocent records of that
/// request are reported too. Of the records refused as too large, only the largest is blamed
/// per attempt; the transaction is then retried and, if still refused, the next one is.
pub(super) fn suspects(batches: &[Pending], refused: Vec<Refused>) -> Vec<Refused> {
    let size = |r: &Refused| {
        batches
            .get(r.tag.batch())
            .and_then(|p| p.batch.records.get(r.tag.record()))
            .map_or(0, data_size)
    };
    let (mut large, mut other): (Vec<Refused>, Vec<Refused>) = refused
        .into_iter()
        .partition(|r| r.class == "record_too_large");
    if let Some(i) = (0..large.len()).max_by_key(|&i| size(&large[i])) {
        other.push(large.swap_remove(i));
    }
    other
}

/// Key and value bytes of a record.
pub(super) fn data_size(r: &SourceRecord) -> usize {
    r.key.len() + r.value.as_ref().map_or(0, |v| v.len())
}

/// The size librdkafka counts against `message.max.bytes` (key, value, headers and the
/// record's framing, rounded up so a record that passes here is not refused there), when it
/// is over `max`.
fn over_limit(r: &SourceRecord, partition: &PartitionId, max: usize) -> Option<usize> {
    const FRAMING: usize = 128;
    let data = data_size(r);
    if data + 4096 < max {
        return None; // headers cannot make up the difference: skip the identity's JSON
    }
    let size = data + partition.to_json().len() + 160 + FRAMING;
    (size > max).then_some(size)
}
