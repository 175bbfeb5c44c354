//! The state topic (see `crate::live`): a batch's state records written with their slots
//! filled in, the whole topic read back at start, and where records landed read back for
//! the keys of tombstones.

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

/// Why the state records could not be written.
pub(super) enum StateError {
    /// Records of the transaction were refused for good (found waiting for their delivery).
    Refused(Vec<Refused>),
    /// Records failed delivery without saying why (purged after the transaction failed):
    /// the transaction cannot commit, and only its commit says why.
    Failed(SinkError),
    Sink(SinkError),
}

/// Sends the batches' state records, after their data records (`sent` of them, tagged):
/// when some state record needs to say where a record landed, the data records are waited
/// for first and each slot gets its record's location. Answers those locations by batch
/// (empty when none was needed; [`Loc::NONE`] for a record that did not reach its topic).
pub(super) fn write_state(
    producer: &TxnProducer,
    topic: &str,
    batches: &[Pending],
    sent: usize,
) -> Result<Vec<Vec<Loc>>, StateError> {
    let slotted = |b: &SourceBatch| b.state.iter().any(|w| !w.slots.is_empty());
    let mut locs: Vec<Vec<Loc>> = Vec::new();
    if batches.iter().any(|p| slotted(&p.batch))
        && std::env::var("GRAPH_CDC_EXP").as_deref() != Ok("noflush")
    {
        locs = batches
            .iter()
            .map(|p| vec![Loc::NONE; p.batch.records.len()])
            .collect();
        let delivered = producer.delivered(sent).map_err(StateError::Sink)?;
        // The transaction cannot commit: say whose records are at fault now (a record sent
        // after a refusal fails too, without saying why).
        let refused = producer.refused_now();
        if !refused.is_empty() {
            return Err(StateError::Refused(refused));
        }
        if let Some(e) = producer.failed_now() {
            return Err(StateError::Failed(e));
        }
        for (tag, partition, offset) in delivered {
            let (i, j) = (tag.batch(), tag.record());
            // A dead letter landed in the dead-letter topic, not in its record's topic.
            if batches.get(i).is_some_and(|p| p.dead.contains_key(&j)) {
                continue;
            }
            if let Some(l) = locs.get_mut(i).and_then(|b| b.get_mut(j)) {
                *l = Loc::new(partition, offset).unwrap_or(Loc::NONE);
            }
        }
    }
    for (i, p) in batches.iter().enumerate() {
        for w in &p.batch.state {
            let value = w.value.as_ref().map(|v| {
                let mut v = v.clone();
                for s in &w.slots {
                    let landed = locs.get(i).and_then(|b| b.get(s.record));
                    let at = v.get_mut(s.at..s.at + 8);
                    // Else the slot keeps the location it was written with.
                    if let (Some(l), Some(at)) = (landed.filter(|l| l.get().is_some()), at) {
                        at.copy_from_slice(&l.0.to_le_bytes());
                    }
                }
                v
            });
            let mut rec: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, Tag::NONE.0).key(&w.key[..]);
            if let Some(v) = &value {
                rec = rec.payload(&v[..]);
            }
            producer.send(rec).map_err(|e| match e {
                Ok(r) => StateError::Refused(vec![r]),
                Err(e) => StateError::Sink(e),
            })?;
        }
    }
    Ok(locs)
}

/// Reads the state of `connector` from `topic` to its end (blocking: call it off the async
/// executor): each partition's live items as last committed.
pub fn load_state(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    timeout: Duration,
) -> Result<HashMap<PartitionId, LiveItems>, ReadError> {
    let mut loader = Loader::new(connector);
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
