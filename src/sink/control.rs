//! The control topic (`kafka.control_topic`, compacted, one partition): the connector's
//! target state (running, paused, stopped), written by whichever worker an operator asked and
//! carried out by every worker, the way Kafka Connect keeps a connector's target state in
//! its config topic. Compacted, the last word per connector stays: a worker started later,
//! or restarted, takes it up before it starts any partition.
//!
//! A record's key is the connector's name; its value `{"state":"PAUSED"}`. Workers read the
//! topic to its end at start ([`read_start`]), then follow it ([`follow`]). Blocking calls:
//! off the async executor.
//!
//! The topic also carries one-shot commands for every worker (a restart, a resync, offsets
//! changed), keyed `{name}/command`, their values the worker's own JSON (this side only
//! carries them: [`publish_command`], [`Control::Command`]). They are events, not state: a
//! worker follows them from where its start read ended, never replaying older ones, and
//! compaction keeping only the last one is harmless.
//!
//! And where each worker's REST API is (`{name}/worker/{id}`, `{"url": …}`; a tombstone when
//! it stops gracefully), so that any worker answers the whole connector's status.

use std::sync::atomic::Ordering;
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
pub use super::tail::Follower;
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

/// What the control topic tells a worker that follows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// The connector's target state changed.
    Target(TargetState),
    /// A command for every worker, as [`publish_command`] wrote it.
    Command(serde_json::Value),
    /// A worker's REST API is at `url` (`None`: the worker left).
    Worker { id: String, url: Option<String> },
}

/// The keys of one connector's records.
struct Keys {
    target: String,
    command: String,
    /// Followed by the worker's id.
    worker: String,
}

impl Keys {
    fn of(connector: &str) -> Self {
        Keys {
            target: connector.to_string(),
            command: command_key(connector),
            worker: format!("{connector}/worker/"),
        }
    }

    /// What a record of the topic says to the connector's workers, if anything.
    fn read(&self, m: &impl Message) -> Option<Control> {
        let key = m.key()?;
        let payload = m.payload();
        if key == self.target.as_bytes() {
            let v = serde_json::from_slice::<Value>(payload?).ok()?;
            return Some(Control::Target(v.state));
        }
        if key == self.command.as_bytes() {
            return serde_json::from_slice(payload?).ok().map(Control::Command);
        }
        let id = key.strip_prefix(self.worker.as_bytes())?;
        let id = String::from_utf8(id.to_vec()).ok()?;
        let url = match payload {
            None => None,
            Some(p) => Some(serde_json::from_slice::<WorkerValue>(p).ok()?.url),
        };
        Some(Control::Worker { id, url })
    }
}

#[derive(Serialize, Deserialize)]
struct WorkerValue {
    url: String,
}

/// The key of `connector`'s commands.
fn command_key(connector: &str) -> String {
    format!("{connector}/command")
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
    let value = serde_json::to_vec(&Value { state }).unwrap_or_default();
    write(
        config,
        topic,
        connector,
        Some(&value),
        timeout,
        "writing the target state",
    )
}

/// Writes a command for every worker of `connector` (blocking, at most `timeout`).
pub fn publish_command(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    command: &serde_json::Value,
    timeout: Duration,
) -> Result<(), SinkError> {
    let value = serde_json::to_vec(command).unwrap_or_default();
    let key = command_key(connector);
    write(
        config,
        topic,
        &key,
        Some(&value),
        timeout,
        "writing a command",
    )
}

/// Writes one record (`None`: a tombstone) with a plain producer, and waits for it.
fn write(
    config: &ClientConfig,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
    timeout: Duration,
    doing: &'static str,
) -> Result<(), SinkError> {
    let producer: BaseProducer = config
        .create()
        .map_err(setup("creating the control producer"))?;
    let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record)
        .map_err(|(e, _)| SinkError::Setup(Reason::because(doing, e)))?;
    producer.flush(timeout).map_err(setup(doing))
}

/// Says where worker `id`'s REST API is (`Some(url)`, at its start) or that it left (`None`,
/// at a graceful stop): every worker answers the connector's status with its peers' parts.
pub fn publish_worker(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    id: &str,
    url: Option<&str>,
    timeout: Duration,
) -> Result<(), SinkError> {
    let key = format!("{}{id}", Keys::of(connector).worker);
    let value =
        url.map(|url| serde_json::to_vec(&WorkerValue { url: url.into() }).unwrap_or_default());
    let doing = "advertising the worker";
    write(config, topic, &key, value.as_deref(), timeout, doing)
}

/// What the topic holds for a starting worker.
#[derive(Debug, Default)]
pub struct Start {
    /// The connector's target state (`None`: never set).
    pub target: Option<TargetState>,
    /// The workers that said where their REST API is and have not left, by id.
    pub workers: std::collections::BTreeMap<String, String>,
    /// The offset to follow the topic from.
    pub next: i64,
}

/// Reads the topic to its end for `connector` (blocking, at most `timeout`).
pub fn read_start(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    timeout: Duration,
) -> Result<Start, SinkError> {
    let mut start = Start::default();
    let keys = Keys::of(connector);
    read_to_end(
        config,
        &format!("{connector}-control-reader"),
        topic,
        timeout,
        |m| {
            start.next = start.next.max(m.offset() + 1);
            // Commands before the start are not replayed: only the state counts.
            match keys.read(m) {
                Some(Control::Target(t)) => start.target = Some(t),
                Some(Control::Worker { id, url: Some(url) }) => {
                    start.workers.insert(id, url);
                }
                Some(Control::Worker { id, url: None }) => {
                    start.workers.remove(&id);
                }
                _ => {}
            }
        },
    )
    .map_err(|e| SinkError::Setup(Reason::because("reading the control topic", e)))?;
    Ok(start)
}

/// Follows the topic from `from` on a thread of its own (`graph-cdc-control`): each new
/// target state, command and worker of `connector` goes to `tx`. Stops when dropped.
pub fn follow(
    config: &ClientConfig,
    topic: &str,
    connector: &str,
    from: i64,
    tx: mpsc::UnboundedSender<Control>,
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
    let keys = Keys::of(connector);
    Follower::spawn("graph-cdc-control", move |stop| {
        while !stop.load(Ordering::Acquire) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            if let Some(c) = keys.read(&m) {
                if tx.send(c).is_err() {
                    return;
                }
            }
        }
    })
}
