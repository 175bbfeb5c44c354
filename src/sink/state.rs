//! The state topic (see `crate::live`): a batch's state records written in its transaction
//! and again, with where its records landed, in the next; the whole topic read at start.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;

use super::producer::{Refused, Tag, TxnProducer};
use super::readback::{read_to_end, ReadError};
use super::refusals::Pending;
use super::SinkError;
use crate::live::{LiveItems, Loader};
use crate::source::{Loc, PartitionId, SourceBatch};

/// A state record to write again, its slots filled in (see
/// [`StateWrite`](crate::source::StateWrite)).
pub(super) struct Rewrite {
    key: bytes::Bytes,
    value: Vec<u8>,
}

/// Sends the state records of the transaction: first the records of the previous one that
/// said where its records landed, written again with the locations now known (before this
/// transaction's own, so a newer record of the same key still wins), then the batches'
/// (their slots say [`Loc::UNKNOWN`], or the location to keep for a dead-lettered record).
pub(super) fn write_state(
    producer: &TxnProducer,
    topic: &str,
    rewrites: &[Rewrite],
    batches: &[Pending],
) -> Result<(), Result<Refused, SinkError>> {
    for r in rewrites {
        send(producer, topic, &r.key, Some(&r.value))?;
    }
    for p in batches {
        // Slots hold `Loc::UNKNOWN` as decided: only a dead-lettered record's slots change
        // (to the location to keep), so values are copied only in a batch with dead letters.
        let landed: Vec<Loc> = if p.dead.is_empty() {
            Vec::new()
        } else {
            (0..p.batch.records.len())
                .map(|j| {
                    if p.dead.contains_key(&j) {
                        Loc::NONE
                    } else {
                        Loc::UNKNOWN
                    }
                })
                .collect()
        };
        for w in &p.batch.state {
            let filled = (!landed.is_empty() && !w.slots.is_empty())
                .then(|| w.filled(&landed))
                .flatten();
            send(
                producer,
                topic,
                &w.key,
                filled.as_deref().or(w.value.as_deref()),
            )?;
        }
    }
    Ok(())
}

/// After a commit: where each batch's records landed (`sent` records were tagged), and the
/// batches' state records to write again with those locations. Nothing when no state record
/// asks for them. The records are delivered by then; only their reports may wait to be
/// served, so this takes a moment at most.
pub(super) fn located(
    producer: &TxnProducer,
    batches: &[Pending],
    sent: usize,
) -> (Vec<Vec<Loc>>, Vec<Rewrite>) {
    let slotted = |b: &SourceBatch| b.state.iter().any(|w| !w.slots.is_empty());
    if !batches.iter().any(|p| slotted(&p.batch)) {
        return (Vec::new(), Vec::new());
    }
    // A report not served in time leaves its location unknown (see `live/`), not wrong.
    let mut locs: Vec<Vec<Loc>> = batches
        .iter()
        .map(|p| vec![Loc::UNKNOWN; p.batch.records.len()])
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut reported = 0;
    while reported < sent && std::time::Instant::now() < deadline {
        for (tag, partition, offset) in producer.take_delivered() {
            reported += 1;
            if let Some(l) = locs
                .get_mut(tag.batch())
                .and_then(|b| b.get_mut(tag.record()))
            {
                *l = Loc::new(partition, offset).unwrap_or(Loc::UNKNOWN);
            }
        }
    }
    let mut rewrites = Vec::new();
    for (i, p) in batches.iter().enumerate() {
        // A dead letter landed in the dead-letter topic, not in its record's topic.
        for j in p.dead.keys() {
            if let Some(l) = locs[i].get_mut(*j) {
                *l = Loc::NONE;
            }
        }
        for w in p.batch.state.iter().filter(|w| !w.slots.is_empty()) {
            if let Some(value) = w.filled(&locs[i]) {
                rewrites.push(Rewrite {
                    key: w.key.clone(),
                    value,
                });
            }
        }
    }
    (locs, rewrites)
}

fn send(
    producer: &TxnProducer,
    topic: &str,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), Result<Refused, SinkError>> {
    let mut rec: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(topic, Tag::NONE.0).key(key);
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    producer.send(rec)
}

/// Reads the state of `connector`'s partitions that `keep` says from `topic` to its end
/// (blocking: call it off the async executor): each one's live items as last committed.
pub fn load_state(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    keep: impl Fn(&PartitionId) -> bool + Send + 'static,
    timeout: Duration,
) -> Result<HashMap<PartitionId, LiveItems>, ReadError> {
    let mut loader = Loader::new(connector).keeping(keep);
    let group = format!("{connector}-state-reader");
    read_to_end(config, &group, topic, timeout, |m| {
        let Some(key) = m.key() else { return };
        if let Err(why) = loader.add(key, m.payload()) {
            tracing::warn!(
                topic,
                partition = m.partition(),
                offset = m.offset(),
                why = %why,
                "skipping a record of the state topic"
            );
        }
    })?;
    Ok(loader.finish())
}
