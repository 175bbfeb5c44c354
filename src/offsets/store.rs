//! Reading the offsets topic to its end, `read_committed`, at start.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::codec::decode;
use crate::source::{PartitionId, SourceOffset};

#[derive(Debug, thiserror::Error)]
pub enum OffsetStoreError {
    #[error("reading offsets topic '{topic}': {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("offsets topic '{0}' not read to its end within {1:?}")]
    Timeout(String, Duration),
}

/// Reads every committed offset of `connector` from `topic` (blocking: call it off the async
/// executor). `config` carries the bootstrap servers and any security options.
pub fn load_offsets(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    timeout: Duration,
) -> Result<HashMap<PartitionId, SourceOffset>, OffsetStoreError> {
    let err = |source| OffsetStoreError::Kafka {
        topic: topic.to_string(),
        source,
    };
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", format!("{connector}-offsets-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(err)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(err)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut out = HashMap::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    let mut pending: HashSet<i32> = HashSet::new();
    for p in &partitions {
        // Empty partitions never report EOF reliably: skip them up front.
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .map_err(err)?;
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(err)?;
            pending.insert(*p);
        }
    }
    if pending.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(err)?;
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(OffsetStoreError::Timeout(topic.to_string(), timeout));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => return Err(err(e)),
            Some(Ok(m)) => {
                let Some(key) = m.key() else { continue };
                match decode(key, m.payload()) {
                    Ok(r) if r.connector == connector => match r.offset {
                        Some(o) => {
                            out.insert(r.partition, o);
                        }
                        None => {
                            out.remove(&r.partition);
                        }
                    },
                    Ok(_) => {}
                    Err(why) => {
                        tracing::warn!(
                            topic,
                            partition = m.partition(),
                            offset = m.offset(),
                            why,
                            "skipping a record of the offsets topic"
                        )
                    }
                }
            }
        }
    }
    Ok(out)
}
