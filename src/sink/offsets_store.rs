//! Reading the offsets topic to its end, `read_committed`, at start; and writing operator
//! changes to it outside any shard's transaction (the connector is stopped then).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::readback::{read_to_end, ReadError};
use super::{Reason, SinkError};
use crate::offsets::{decode_key, decode_value, encode_key, encode_value, DecodeError};
use crate::source::{PartitionId, SourceOffset};

/// Why the offsets could not be read.
pub type OffsetStoreError = ReadError;

/// Reads the committed offsets of `connector`'s partitions that `keep` says from `topic`
/// (blocking: call it off the async executor). `config` carries the bootstrap servers and any security options.
pub fn load_offsets(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    keep: impl Fn(&PartitionId) -> bool,
    timeout: Duration,
) -> Result<HashMap<PartitionId, SourceOffset>, OffsetStoreError> {
    let mut out = HashMap::new();
    let group = format!("{connector}-offsets-reader");
    let skip = |m: &rdkafka::message::BorrowedMessage<'_>, why: DecodeError| {
        tracing::warn!(
            topic,
            partition = m.partition(),
            offset = m.offset(),
            why = %why,
            "skipping a record of the offsets topic"
        )
    };
    read_to_end(config, &group, topic, timeout, |m| {
        let Some(key) = m.key() else { return };
        // The topic holds every round's offsets until compaction catches up, most of them
        // other shards' when a worker takes a few: their values are never parsed.
        let partition = match decode_key(key) {
            Ok((name, p)) if name == connector && keep(&p) => p,
            Ok(_) => return,
            Err(why) => return skip(m, why),
        };
        match decode_value(m.payload()) {
            Ok(Some(o)) => {
                out.insert(partition, o);
            }
            Ok(None) => {
                out.remove(&partition);
            }
            Err(why) => skip(m, why),
        }
    })?;
    Ok(out)
}

/// Writes operator changes to `connector`'s offsets (`None` resets a partition) with a plain
/// idempotent producer (blocking, at most `timeout`). For a stopped connector only: no shard
/// commits meanwhile, and each shard's owner reads its offsets again before it resumes. Not
/// through the shards' transactional producers, which only their owners may use (another
/// worker's initialising one would fence its owner).
pub fn write_offsets(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    writes: &[(PartitionId, Option<SourceOffset>)],
    timeout: Duration,
) -> Result<(), SinkError> {
    let failed = |e| SinkError::Setup(Reason::because("writing the offsets", e));
    let mut config = config.clone();
    config.set("enable.idempotence", "true");
    let producer: BaseProducer = config.create().map_err(failed)?;
    for (p, o) in writes {
        let key = encode_key(connector, p);
        let value = o.as_ref().map(encode_value);
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(&key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(failed(e)),
            }
        }
    }
    producer.flush(timeout).map_err(failed)
}
