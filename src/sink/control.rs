//! The control topic (`kafka.control_topic`, compacted, one partition): the connector's
//! target state (running, paused, stopped), written by whichever worker an operator asked and
//! carried out by every worker, the way Kafka Connect keeps a connector's target state in
//! its config topic. Compacted, the last word per connector stays: a worker started later,
//! or restarted, takes it up before it starts any partition.
//!
//! A record's key is the connector's name; its value `{"state":"PAUSED"}`. Workers read the
//! topic to its end at start ([`read_target`]), then follow it ([`follow`]). Blocking calls:
//! off the async executor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::health::HealthContext;
use super::properties::reader_config;
use super::readback::read_to_end;
use super::{Reason, SinkError};

/// What the operator wants the connector to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TargetState {
    Running,
    Paused,
    Stopped,
}

#[derive(Serialize, Deserialize)]
struct Value {
    state: TargetState,
}

fn setup(doing: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> SinkError {
    move |e| SinkError::Setup(Reason::because(doing, e))
}

/// Writes `connector`'s target state (blocking, at most `timeout`). `config`: a plain
/// (non-transactional) producer's configuration.
pub fn publish(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    state: TargetState,
    timeout: Duration,
) -> Result<(), SinkError> {
    let producer: BaseProducer = config
        .create()
        .map_err(setup("creating the control producer"))?;
    let value = serde_json::to_vec(&Value { state }).unwrap_or_default();
    producer
        .send(BaseRecord::to(topic).key(connector).payload(&value))
        .map_err(|(e, _)| SinkError::Setup(Reason::because("writing the target state", e)))?;
    producer
        .flush(timeout)
        .map_err(setup("writing the target state"))
}

/// The target state of `connector` as the topic holds it (`None`: never set), and the offset
/// to follow it from.
pub fn read_target(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    timeout: Duration,
) -> Result<(Option<TargetState>, i64), SinkError> {
    let mut state = None;
    let mut next = 0;
    read_to_end(
        config,
        &format!("{connector}-control-reader"),
        topic,
        timeout,
        |m| {
            next = next.max(m.offset() + 1);
            if m.key() == Some(connector.as_bytes()) {
                if let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                {
                    state = Some(v.state);
                }
            }
        },
    )
    .map_err(|e| SinkError::Setup(Reason::because("reading the control topic", e)))?;
    Ok((state, next))
}

/// Follows the topic from `from` on a thread of its own (`graph-cdc-control`): each new
/// target state of `connector` goes to `tx`. Stops when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn follow(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    from: i64,
    tx: mpsc::UnboundedSender<TargetState>,
) -> Result<Follower, SinkError> {
    let consumer: BaseConsumer<HealthContext> =
        reader_config(config, &format!("{connector}-control-follower"))
            .create_with_context(HealthContext::default())
            .map_err(setup("creating the control follower"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from))
        .map_err(setup("following the control topic"))?;
    consumer
        .assign(&tpl)
        .map_err(setup("following the control topic"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let key = connector.to_string();
    let thread = std::thread::Builder::new()
        .name("graph-cdc-control".into())
        .spawn(move || {
            while !flag.load(Ordering::Acquire) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                if m.key() != Some(key.as_bytes()) {
                    continue;
                }
                if let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                {
                    if tx.send(v.state).is_err() {
                        return;
                    }
                }
            }
        })
        .map_err(|e| SinkError::Setup(Reason::because("starting the control thread", e)))?;
    Ok(Follower {
        stop,
        thread: Some(thread),
    })
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
