//! The Kafka side: a transactional producer that commits each page's records together with
//! the partition's offset.
//!
//! - `properties.rs`: what it knows of librdkafka properties: its clients, the producer's
//!   defaults, the properties it owns (the settings refuse them in the user's tables).
//! - `clients.rs`: each client's librdkafka configuration (defaults, the user's tables, the
//!   properties the connector owns) and the check `validate` runs on it.
//! - `error.rs`: [`SinkError`], with the librdkafka (or I/O) error behind it as its source.
//! - `health.rs`: why Kafka cannot be reached, in librdkafka's words, and the one long-lived
//!   client the worker's background health check probes with (`/readyz` reads its results).
//! - `producer.rs`: the transactional producer, the classification of its errors, and which
//!   records Kafka refused for good.
//! - `records.rs`: a source record as a Kafka record (topic, key, value, headers), and a
//!   dead letter.
//! - `refusals.rs`: finding and blaming records Kafka refuses.
//! - `topics.rs`: creating missing topics (compacted; the dead-letter topic not).
//! - `handle.rs`: the worker's end of the committer ([`SinkHandle`]) and what it can ask.
//! - `committer.rs`: the loop that groups batches into transactions, with the heartbeat
//!   for idle partitions' offsets, setting refused records aside.
//! - `state.rs`: the state topic (`crate::live`): state records written with the records
//!   they describe, the whole topic read at start.
//! - `readback.rs`, `scan.rs`, `offsets_store.rs`: reading topics back, `read_committed`:
//!   to their end (the offsets at start; a partition's live keys, once, when a worker
//!   upgraded from a version without reconciliation state builds it), or the records at
//!   given locations (the keys of tombstones).
//! - `tail.rs`: following a topic from its beginning, then as it grows (the members topic,
//!   each group's membership).
//! - `notifications.rs`: the consumer of the Azure event hub change notifications come
//!   through (`notifications.delivery = "eventhub"`), committing only what the worker says.
//!
//! It knows nothing of Graph (it consumes [`crate::source::SourceBatch`]es) nor of the
//! settings: `config` builds its [`SinkOptions`].

pub mod clients;
pub mod committer;
pub mod control;
mod error;
pub mod handle;
pub mod health;
pub mod membership;
pub mod notifications;
pub mod offsets_store;
pub mod producer;
pub mod properties;
pub mod readback;
pub mod records;
mod refusals;
pub mod scan;
pub mod state;
pub mod tail;
pub mod topics;

use std::time::Duration;

pub use clients::ClientOptions;
pub use committer::Committer;
pub use error::{Cause, Reason, SinkError};
pub use handle::{SinkHandle, SinkMsg};
pub use health::KafkaHealth;
pub use producer::{classify, TxnErrorClass, TxnProducer};

use crate::source::PartitionKind;

/// Topic of each partition kind (`[kafka.topics]`; the settings hold the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub events: String,
    pub calendars: String,
    pub task_lists: String,
    pub tasks: String,
    /// Group members (`group_members` partitions).
    pub members: String,
}

impl TopicNames {
    pub fn for_kind(&self, kind: PartitionKind) -> &str {
        match kind {
            PartitionKind::CalendarView => &self.events,
            PartitionKind::CalendarList => &self.calendars,
            PartitionKind::TaskLists => &self.task_lists,
            PartitionKind::Tasks => &self.tasks,
            PartitionKind::GroupMembers => &self.members,
        }
    }

    pub fn all(&self) -> [&str; 5] {
        [
            &self.events,
            &self.calendars,
            &self.task_lists,
            &self.tasks,
            &self.members,
        ]
    }
}

/// What the sink needs, built from the `[kafka]`, `[worker]` and `[errors]` settings: the
/// sink knows no defaults of its own. `Settings::sink_options` builds it from settings, and
/// `SinkOptions::new` from the built-in defaults with a broker and an identity (tests and
/// tools without a settings file); both are in `config::build`.
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
    /// The compacted topic of each partition's live items (see `crate::live`).
    pub state_topic: String,
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
            .field("state_topic", &self.state_topic)
            .finish_non_exhaustive()
    }
}

/// `[errors]`: where records Kafka refuses go.
#[derive(Debug, Clone, Default)]
pub struct ErrorPolicy {
    /// `None`: the record's partition fails. `Some(topic)`: the record is dead-lettered there.
    pub dead_letter_topic: Option<String>,
}
