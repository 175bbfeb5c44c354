//! `[kafka]` and `[errors]`: where records and offsets go, the librdkafka properties of each
//! client, and what happens to a record Kafka refuses.
//!
//! librdkafka properties come in four tables, applied in this order (a later one wins): the
//! connector's defaults ([`PRODUCER_DEFAULTS`]), `[kafka.options]` (every client), then
//! `[kafka.producer_options]`, `[kafka.consumer_options]` or `[kafka.admin_options]` (that
//! client only, like Kafka Connect's `producer.override.*`). Properties exactly-once depends
//! on are the connector's ([`OWNED`]): setting one is refused, naming the key and the reason.
//! What the sink knows of properties is the sink's (`sink/properties.rs`); this file checks
//! the user's tables against it.
//!
//! [`PRODUCER_DEFAULTS`]: crate::sink::properties::PRODUCER_DEFAULTS
//! [`OWNED`]: crate::sink::properties::OWNED

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::redact::MaskedMap;
use crate::sink::properties::{owned, ClientRole};

/// `[kafka]`: where records and offsets go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Compacted topic holding the source offsets: a topic of its own (not a data topic).
    pub offsets_topic: String,
    /// Compacted topic holding what each partition has live (per item a key hash, a
    /// content hash and where its record is), written with the records it describes: how a
    /// round from scratch tombstones what it no longer returns and repeats nothing that did
    /// not change. A topic of its own (neither a data topic nor the offsets topic).
    pub state_topic: String,
    /// This worker's identity in the group of the connector's workers (status, logs);
    /// distinct per worker. Default: `$HOSTNAME` (a StatefulSet pod name), else `worker-0`.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Create missing topics (compacted) at start.
    pub create_topics: bool,
    /// Partitions of the data topics it creates.
    pub topic_partitions: i32,
    /// Replication factor of the topics it creates (3 in production).
    pub replication_factor: i32,
    /// `transaction.timeout.ms` of the producer (at least 1s).
    pub transaction_timeout: super::Dur,
    /// The coordination topic: one partition per shard (`worker.shards`), no records. The
    /// connector's workers form the consumer group `{name}.workers` on it, and each owns
    /// the shards assigned to it.
    pub shards_topic: String,
    /// The control topic (compacted, one partition): each connector's target state
    /// (running, paused, stopped) as an operator last set it through any worker; every worker
    /// follows it, and takes it up at start.
    pub control_topic: String,
    /// `session.timeout.ms` of that group: how long a worker may go unheard before its
    /// shards move to the others (6s–300s, within the broker's group session bounds).
    pub session_timeout: super::Dur,
    /// `[kafka.topics]`: the topic of each kind of record.
    pub topics: TopicSettings,
    /// Any librdkafka property, passed to every client (`"security.protocol" = "SASL_SSL"`).
    #[serde(default)]
    pub options: KafkaOptions,
    /// librdkafka properties of the producer only, applied after `options`
    /// (`"compression.type" = "lz4"`, `"message.max.bytes" = "4000000"`).
    #[serde(default)]
    pub producer_options: KafkaOptions,
    /// librdkafka properties of the consumers only (offsets and key read-back), after `options`.
    #[serde(default)]
    pub consumer_options: KafkaOptions,
    /// librdkafka properties of the admin client only (topic creation), after `options`.
    #[serde(default)]
    pub admin_options: KafkaOptions,
}

/// `[kafka.topics]`: the topic of each kind of record. Names follow Kafka's rule (1 to 249
/// of `[a-zA-Z0-9._-]`, not `.` or `..`); kinds may share a topic, except `calendars` and
/// `task_lists`, whose keys have the same shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Calendar-view events.
    pub events: String,
    /// Calendars of calendar lists.
    pub calendars: String,
    /// To Do task lists.
    pub task_lists: String,
    /// To Do tasks.
    pub tasks: String,
    /// Group sources' members (`group_members` partitions).
    pub members: String,
}

/// `[errors]`: records Kafka refuses (too large, topic not writable), like Kafka Connect's
/// `errors.*` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSettings {
    /// `none`: the record's partition stops (`FAILED`, with the reason in its status) and
    /// the others go on. `all`: the record goes to `dead_letter_topic` instead, in the same
    /// transaction as the partition's offset, and the partition goes on.
    pub tolerance: Tolerance,
    /// Topic of refused records (required with `tolerance = "all"`); created with
    /// `cleanup.policy=delete` when `kafka.create_topics` is on.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

/// `errors.tolerance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tolerance {
    None,
    All,
}

impl KafkaSettings {
    /// Refuses options the connector owns; every message names the table and the key.
    pub fn check_owned(&self, errs: &mut Vec<String>) {
        let tables = [
            ("kafka.options", &self.options, &ClientRole::ALL[..]),
            (
                "kafka.producer_options",
                &self.producer_options,
                &[ClientRole::Producer][..],
            ),
            (
                "kafka.consumer_options",
                &self.consumer_options,
                &[ClientRole::Consumer][..],
            ),
            (
                "kafka.admin_options",
                &self.admin_options,
                &[ClientRole::Admin][..],
            ),
        ];
        for (table, opts, roles) in tables {
            for key in opts.0.keys() {
                if let Some(why) = owned(key, roles) {
                    errs.push(format!(
                        "{table}.\"{key}\": set by the connector, not configurable ({why})"
                    ));
                }
            }
        }
    }
}

/// librdkafka properties; `Debug` masks values whose name says password, secret, token or key.
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        MaskedMap(&self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for KafkaOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flat_options(d).map(KafkaOptions)
    }
}

/// librdkafka names contain dots, which the `config` crate turns into nested tables (and
/// environment variables into `_`): flatten them back to `a.b.c`.
fn flat_options<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            // No librdkafka property has an underscore: those come from environment names.
            Value::String(s) => {
                out.insert(prefix.replace('_', "."), s.clone());
            }
            Value::Null => {}
            other => {
                out.insert(prefix.replace('_', "."), other.to_string());
            }
        }
    }
    let v = Value::deserialize(d)?;
    let mut out = BTreeMap::new();
    walk("", &v, &mut out);
    Ok(out)
}
