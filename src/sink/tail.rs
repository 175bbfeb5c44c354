//! Following a topic as a `read_committed` consumer sees it, on a thread of its own: first
//! from its beginning to its end (then [`Tailed::CaughtUp`]), then each record as it comes.
//! Only records whose keys start with one of the given prefixes are passed on. The worker
//! follows the members topic this way: its compacted view is each group's membership
//! (`worker::groups`). The control topic's follower (`control.rs`) shares [`Follower`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::health::HealthContext;
use super::properties::reader_config;
use super::readback::read_to_end;
use super::{Reason, SinkError};

/// What a tail passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tailed {
    /// A committed record (`None`: a tombstone). Before [`Tailed::CaughtUp`], a failed read
    /// from the beginning is tried again: records may come twice, in their order each time.
    Record {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Everything the topic held when the tail started has been passed on.
    CaughtUp,
}

/// A thread following a topic; stops (and is joined) when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Runs `body` on a thread named `name` until it returns; `body` watches the flag it
    /// is given, set when the follower is dropped.
    pub(super) fn spawn(
        name: &str,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> Result<Self, SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&flag))
            .map_err(|e| SinkError::Setup(Reason::because("starting a follower thread", e)))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Follows `topic` (see the module docs), passing to `tx` the records whose keys start with
/// one of `prefixes`; `group` names the (never committed) consumer groups. A read to the end
/// that fails (`timeout`) is logged and tried again until it succeeds.
pub fn tail(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    prefixes: Vec<Vec<u8>>,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Tailed>,
) -> Result<Follower, SinkError> {
    let (config, topic, group) = (config.clone(), topic.to_string(), group.to_string());
    let wanted = move |k: &[u8]| prefixes.iter().any(|p| k.starts_with(p));
    // Whether the receiver is still there.
    let pass =
        move |tx: &mpsc::UnboundedSender<Tailed>, key: Option<&[u8]>, value: Option<&[u8]>| {
            match key {
                Some(k) if wanted(k) => tx
                    .send(Tailed::Record {
                        key: k.to_vec(),
                        value: value.map(<[u8]>::to_vec),
                    })
                    .is_ok(),
                _ => true,
            }
        };
    Follower::spawn("graph-cdc-tail", move |stop| {
        // 1. To the end, from the beginning.
        let mut next: HashMap<i32, i64> = HashMap::new();
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let mut open = true;
            let read = read_to_end(&config, &group, &topic, timeout, |m| {
                next.insert(m.partition(), m.offset() + 1);
                open = open && pass(&tx, m.key(), m.payload());
            });
            if !open {
                return;
            }
            match read {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "reading a followed topic to its end failed; reading it again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if tx.send(Tailed::CaughtUp).is_err() {
            return;
        }
        // 2. Each new record, from where the read ended.
        let consumer: BaseConsumer<HealthContext> =
            match reader_config(&config, &group).create_with_context(HealthContext::default()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(topic = %topic, error = %e, "cannot follow a topic");
                    return;
                }
            };
        while !stop.load(Ordering::Acquire) {
            match assign_from(&consumer, &topic, &next) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "cannot follow a topic yet; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        while !stop.load(Ordering::Acquire) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            if !pass(&tx, m.key(), m.payload()) {
                return;
            }
        }
    })
}

/// Assigns every partition of `topic`: where `next` says, else from its beginning (it was
/// empty when the read to the end began).
fn assign_from(
    consumer: &BaseConsumer<HealthContext>,
    topic: &str,
    next: &HashMap<i32, i64>,
) -> Result<(), rdkafka::error::KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let from = next
                .get(&p.id())
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            tpl.add_partition_offset(topic, p.id(), from)?;
        }
    }
    if tpl.count() == 0 {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    consumer.assign(&tpl)
}
