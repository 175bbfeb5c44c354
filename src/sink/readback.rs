//! Reading a topic from its beginning to its end as a `read_committed` consumer sees it:
//! the offsets topic at start, and a partition's keys after a full resync. Blocking: call
//! it off the async executor.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::health::HealthContext;
use super::properties::reader_config;

/// Why a topic could not be read to its end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("reading '{topic}': {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("'{0}' not read to its end within {1:?}")]
    Timeout(String, Duration),
}

/// Calls `each` for every committed record of `topic`, in order per partition, until every
/// partition's end; `group` names the (never committed) consumer group.
pub fn read_to_end(
    config: &ClientConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    let err = |source| ReadError::Kafka {
        topic: topic.to_string(),
        source,
    };
    // Its context keeps librdkafka's error events (end of partition among them) out of the
    // error log.
    let consumer: BaseConsumer<HealthContext> = reader_config(config, group)
        .create_with_context(HealthContext::default())
        .map_err(err)?;
    // Right after the topic is created (or while the broker settles) metadata and
    // watermarks can fail for a while (NotLeaderForPartition, LeaderNotAvailable…): retry
    // until the deadline instead of failing the worker.
    let deadline = Instant::now() + timeout;
    let (tpl, mut pending) = loop {
        match plan(&consumer, topic) {
            Ok(p) => break p,
            Err(e) if Instant::now() + Duration::from_millis(250) < deadline => {
                tracing::debug!(topic, error = %e, "topic not readable yet; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(err(e)),
        }
    };
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).map_err(err)?;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(ReadError::Timeout(topic.to_string(), timeout));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            // Transient consumer errors (a broker connection lost…) are waited out until
            // the deadline; the reading resumes where it was.
            Some(Err(e)) => {
                tracing::debug!(topic, error = %e, "consumer error while reading; going on")
            }
            Some(Ok(m)) => each(&m),
        }
    }
    Ok(())
}

/// The partitions of `topic` that hold records, assigned from their beginning.
fn plan(
    consumer: &BaseConsumer<HealthContext>,
    topic: &str,
) -> Result<(TopicPartitionList, HashSet<i32>), KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = HashSet::new();
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ))?;
    if let Some(e) = t.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    for p in t.partitions() {
        // Empty partitions never report EOF reliably: skip them up front.
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            pending.insert(p.id());
        }
    }
    Ok((tpl, pending))
}
