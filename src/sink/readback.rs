//! Reading a topic as a `read_committed` consumer sees it: from its beginning to its end
//! (the offsets and state topics at start, a partition's keys when its state is first
//! built), or the records at given locations (the keys of tombstones). Blocking: call it
//! off the async executor.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::health::HealthContext;
use super::properties::reader_config;
use crate::source::Loc;

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

impl ReadError {
    /// Wraps librdkafka's errors about `topic`.
    fn kafka(topic: &str) -> impl Fn(KafkaError) -> ReadError + Copy + '_ {
        move |source| ReadError::Kafka {
            topic: topic.to_string(),
            source,
        }
    }
}

/// A `read_committed` consumer of the records of `topic`; `group` names its (never
/// committed) consumer group. Its context keeps librdkafka's error events (end of partition
/// among them) out of the error log.
fn consumer(
    config: &ClientConfig,
    group: &str,
    topic: &str,
) -> Result<BaseConsumer<HealthContext>, ReadError> {
    reader_config(config, group)
        .create_with_context(HealthContext::default())
        .map_err(ReadError::kafka(topic))
}

/// What a poll of a reading consumer brought.
enum Polled<'a> {
    Record(BorrowedMessage<'a>),
    /// The end of a partition.
    End(i32),
    Nothing,
}

/// Polls `consumer` once, failing once past `deadline`. Transient consumer errors (a broker
/// connection lost…) are waited out until the deadline; the reading resumes where it was.
fn poll<'a>(
    consumer: &'a BaseConsumer<HealthContext>,
    topic: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<Polled<'a>, ReadError> {
    if Instant::now() > deadline {
        return Err(ReadError::Timeout(topic.to_string(), timeout));
    }
    Ok(match consumer.poll(Duration::from_millis(200)) {
        None => Polled::Nothing,
        Some(Err(KafkaError::PartitionEOF(p))) => Polled::End(p),
        Some(Err(e)) => {
            tracing::debug!(topic, error = %e, "consumer error while reading; going on");
            Polled::Nothing
        }
        Some(Ok(m)) => Polled::Record(m),
    })
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
    let err = ReadError::kafka(topic);
    let consumer = consumer(config, group, topic)?;
    // The true high watermarks: a `read_committed` client's are the last stable offsets.
    let mut uncommitted = reader_config(config, &format!("{group}-watermarks"));
    uncommitted.set("isolation.level", "read_uncommitted");
    let watermarks: BaseConsumer<HealthContext> = uncommitted
        .create_with_context(HealthContext::default())
        .map_err(err)?;
    // Right after the topic is created (or while the broker settles) metadata and
    // watermarks can fail for a while (NotLeaderForPartition, LeaderNotAvailable…): retry
    // until the deadline instead of failing the worker.
    let deadline = Instant::now() + timeout;
    let (tpl, mut pending) = loop {
        match plan(&consumer, &watermarks, topic) {
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
    // A `read_committed` consumer's end is the last stable offset (LSO): a transaction
    // still open (another shard's, a zombie's until fenced or timed out) holds it before
    // records committed after that transaction began. So the read goes on to the high
    // watermark seen at the start: a partition is read once the consumer's position
    // reaches it, or, when what is left below it delivers nothing (aborted transactions,
    // transaction markers: librdkafka's position counts delivered records only), once the
    // LSO passed it and a read again from the position ended (a seek makes librdkafka say
    // the end again).
    let mut ended: HashSet<i32> = HashSet::new();
    let mut reread: HashSet<i32> = HashSet::new();
    while !pending.is_empty() {
        match poll(&consumer, topic, deadline, timeout)? {
            Polled::Nothing => {}
            Polled::End(p) => {
                ended.insert(p);
            }
            Polled::Record(m) => each(&m),
        }
        if ended.is_empty() {
            continue;
        }
        let position = consumer.position().map_err(err)?;
        for p in std::mem::take(&mut ended) {
            let at = position
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            let Some(&high) = pending.get(&p) else {
                continue;
            };
            if at >= high || reread.contains(&p) {
                pending.remove(&p);
                continue;
            }
            let (_, stable) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(err)?;
            if stable >= high {
                let from = if at >= 0 {
                    Offset::Offset(at)
                } else {
                    Offset::Beginning
                };
                consumer
                    .seek(topic, p, from, Duration::from_secs(10))
                    .map_err(err)?;
                reread.insert(p);
            } else {
                // Transactions open at the start still are: look again shortly.
                ended.insert(p);
            }
        }
        if !ended.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The partitions of `topic` that hold records, assigned from their beginning, with their
/// high watermarks (asked of `watermarks`, a `read_uncommitted` client).
fn plan(
    consumer: &BaseConsumer<HealthContext>,
    watermarks: &BaseConsumer<HealthContext>,
    topic: &str,
) -> Result<(TopicPartitionList, HashMap<i32, i64>), KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut pending = HashMap::new();
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
        let (low, high) = watermarks.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            pending.insert(p.id(), high);
        }
    }
    Ok((tpl, pending))
}

/// Past this many offsets to the next record wanted, seeking beats reading through.
const SEEK_GAP: i64 = 500;

/// The keys of the records of `topic` at `locs` (as a `read_committed` consumer sees them);
/// a location whose record is not there (compacted away, or never written) is left out.
/// Costs a read per location, or less where they are close together.
pub fn keys_at(
    config: &ClientConfig,
    group: &str,
    topic: &str,
    locs: &[Loc],
    timeout: Duration,
) -> Result<HashMap<Loc, Vec<u8>>, ReadError> {
    let err = ReadError::kafka(topic);
    let mut want: BTreeMap<i32, VecDeque<i64>> = BTreeMap::new();
    for (p, o) in locs.iter().filter_map(|l| l.get()) {
        want.entry(p).or_default().push_back(o);
    }
    let mut out = HashMap::new();
    if want.is_empty() {
        return Ok(out);
    }
    let consumer = consumer(config, group, topic)?;
    let mut tpl = TopicPartitionList::new();
    for (p, offsets) in &mut want {
        offsets.make_contiguous().sort_unstable();
        let first = offsets.front().copied().unwrap_or(0);
        tpl.add_partition_offset(topic, *p, Offset::Offset(first))
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let deadline = Instant::now() + timeout;
    while !want.is_empty() {
        let m = match poll(&consumer, topic, deadline, timeout)? {
            Polled::Nothing => continue,
            Polled::End(p) => {
                want.remove(&p);
                continue;
            }
            Polled::Record(m) => m,
        };
        let (p, o) = (m.partition(), m.offset());
        let Some(offsets) = want.get_mut(&p) else {
            continue;
        };
        while offsets.front().is_some_and(|w| *w < o) {
            offsets.pop_front();
        }
        // Only a wanted record's key is copied, not those of the records read through.
        if offsets.front() == Some(&o) {
            offsets.pop_front();
            if let (Some(key), Some(l)) = (m.key(), Loc::new(p, o)) {
                out.insert(l, key.to_vec());
            }
        }
        drop(m);
        match offsets.front().copied() {
            None => {
                want.remove(&p);
            }
            Some(next) if next - o > SEEK_GAP => consumer
                .seek(topic, p, Offset::Offset(next), Duration::from_secs(10))
                .map_err(err)?,
            Some(_) => {}
        }
    }
    Ok(out)
}
