//! The Kafka side: a transactional producer that commits each page's records together with
//! the partition's offset.
//!
//! - `clients.rs`: each client's librdkafka configuration (defaults, the user's tables, the
//!   properties the connector owns) and the check `validate` runs on it.
//! - `health.rs`: why Kafka cannot be reached, in librdkafka's words (for `/readyz`, logs).
//! - `producer.rs`: the transactional producer, the classification of its errors, and which
//!   records Kafka refused for good.
//! - `records.rs`: a source record as a Kafka record (topic, key, value, headers), and a
//!   dead letter.
//! - `refusals.rs`: finding and blaming records Kafka refuses.
//! - `topics.rs`: creating missing topics (compacted; the dead-letter topic not).
//! - `committer.rs`: the loop that groups batches into transactions, with the heartbeat
//!   for idle partitions' offsets, setting refused records aside.
//! - `readback.rs`, `scan.rs`, `offsets_store.rs`: reading a topic to its end,
//!   `read_committed`: the offsets at start, a partition's keys after a full resync.
//!
//! It knows nothing of Graph: it consumes [`crate::source::SourceBatch`]es.

pub mod clients;
pub mod committer;
pub mod health;
pub mod offsets_store;
pub mod producer;
pub mod readback;
pub mod records;
mod refusals;
pub mod scan;
pub mod topics;

use std::time::Duration;

pub use clients::ClientOptions;
pub use committer::{Committer, SinkHandle, SinkMsg};
pub use health::KafkaHealth;
pub use producer::{classify, TxnErrorClass, TxnProducer};

use crate::source::PartitionKind;

/// Topic of each partition kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub events: String,
    pub calendars: String,
    pub task_lists: String,
    pub tasks: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            events: "graph.events".into(),
            calendars: "graph.calendars".into(),
            task_lists: "graph.todo.lists".into(),
            tasks: "graph.todo.tasks".into(),
        }
    }
}

impl TopicNames {
    pub fn for_kind(&self, kind: PartitionKind) -> &str {
        match kind {
            PartitionKind::CalendarView => &self.events,
            PartitionKind::CalendarList => &self.calendars,
            PartitionKind::TaskLists => &self.task_lists,
            PartitionKind::Tasks => &self.tasks,
        }
    }

    pub fn all(&self) -> [&str; 4] {
        [&self.events, &self.calendars, &self.task_lists, &self.tasks]
    }
}

/// What the sink needs (built from the `[kafka]` and `[worker]` settings).
#[derive(Clone)]
pub struct SinkOptions {
    pub bootstrap_servers: String,
    /// The user's librdkafka properties (security…), by client.
    pub kafka: ClientOptions,
    /// What happens to records Kafka refuses.
    pub errors: ErrorPolicy,
    pub transactional_id: String,
    pub connector: String,
    pub topics: TopicNames,
    pub offsets_topic: String,
    pub transaction_timeout: Duration,
    /// Records per transaction at most.
    pub max_batch_records: usize,
    /// How long a transaction waits for more batches.
    pub linger: Duration,
    /// Idle partitions' offsets are persisted at most this often.
    pub heartbeat_interval: Duration,
}

impl std::fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("kafka", &self.kafka)
            .field("errors", &self.errors)
            .field("transactional_id", &self.transactional_id)
            .field("connector", &self.connector)
            .field("topics", &self.topics)
            .field("offsets_topic", &self.offsets_topic)
            .finish_non_exhaustive()
    }
}

/// `[errors]`: where records Kafka refuses go.
#[derive(Debug, Clone, Default)]
pub struct ErrorPolicy {
    /// `None`: the record's partition fails. `Some(topic)`: the record is dead-lettered there.
    pub dead_letter_topic: Option<String>,
}

/// Errors of the Kafka side.
#[derive(Debug, thiserror::Error, Clone)]
pub enum SinkError {
    /// The transaction was aborted; its batches must be fetched again.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// Kafka refuses a record of this batch for good (too large, topic not writable) and
    /// errors are not tolerated: the partition stops with this reason.
    #[error("record refused: {0}")]
    Rejected(String),
    /// The producer cannot go on (fenced by another worker, fatal broker error…).
    #[error("fatal Kafka error: {0}")]
    Fatal(String),
    /// Creating the producer or the topics failed.
    #[error("Kafka setup failed: {0}")]
    Setup(String),
    /// The sink stopped (shutdown).
    #[error("sink stopped")]
    Stopped,
}
