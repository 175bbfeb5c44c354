//! Reading back which keys a partition has in its topic (for the deletions a full resync
//! cannot report). Blocking: call it off the async executor.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{SinkError, SinkOptions};

/// The keys starting with `prefix` that are live (not tombstoned) in `topic`, as a
/// `read_committed` consumer sees it now. Reads the whole topic: full resyncs are rare.
pub fn live_keys(
    opts: &SinkOptions,
    topic: &str,
    prefix: &[u8],
    timeout: Duration,
) -> Result<HashSet<Vec<u8>>, SinkError> {
    let err = |e: KafkaError| SinkError::Aborted(format!("reading back {topic}: {e}"));
    let consumer: BaseConsumer = opts
        .client_config()
        .set("group.id", format!("{}-resync-scan", opts.connector))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(err)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = HashSet::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .map_err(err)?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .map_err(err)?;
                pending.insert(p.id());
            }
        }
    }
    let mut live = HashSet::new();
    if pending.is_empty() {
        return Ok(live);
    }
    consumer.assign(&tpl).map_err(err)?;
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(SinkError::Aborted(format!(
                "reading back {topic} timed out"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => return Err(err(e)),
            Some(Ok(m)) => {
                let Some(key) = m.key().filter(|k| k.starts_with(prefix)) else {
                    continue;
                };
                if m.payload().is_some() {
                    live.insert(key.to_vec());
                } else {
                    live.remove(key);
                }
            }
        }
    }
    Ok(live)
}
