//! `[kafka]` and `[errors]`: where records and offsets go, the librdkafka properties of each
//! client, and what happens to a record Kafka refuses.
//!
//! librdkafka properties come in four tables, applied in this order (a later one wins):
//! the connector's defaults ([`PRODUCER_DEFAULTS`]), `[kafka.options]` (every client), then
//! `[kafka.producer_options]`, `[kafka.consumer_options]` or `[kafka.admin_options]` (that
//! client only, like Kafka Connect's `producer.override.*`). Properties exactly-once depends
//! on are the connector's ([`OWNED`]): setting one is refused, naming the key and the reason.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `[kafka]`: where records and offsets go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Compacted topic holding the source offsets.
    pub offsets_topic: String,
    /// This worker's identity; `transactional.id` is `{name}-{worker_id}`.
    /// Default: `$HOSTNAME` (a StatefulSet pod name), else `worker-0`.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// Create missing topics (compacted) at start.
    pub create_topics: bool,
    /// Partitions of the data topics it creates.
    pub topic_partitions: i32,
    /// Replication factor of the topics it creates (3 in production).
    pub replication_factor: i32,
    /// `transaction.timeout.ms` of the producer.
    pub transaction_timeout: crate::config::Dur,
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

/// `[kafka.topics]`: the topic of each kind of record.
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

/// Which client a table of options is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Producer,
    Consumer,
    Admin,
}

impl ClientRole {
    /// The table of this client's own options.
    pub fn table(self) -> &'static str {
        match self {
            ClientRole::Producer => "kafka.producer_options",
            ClientRole::Consumer => "kafka.consumer_options",
            ClientRole::Admin => "kafka.admin_options",
        }
    }

    pub const ALL: [ClientRole; 3] = [
        ClientRole::Producer,
        ClientRole::Consumer,
        ClientRole::Admin,
    ];
}

/// Producer properties the connector sets unless the user's options say otherwise.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // Large events (HTML bodies) shrink several times: more of them fit the size limits.
    ("compression.type", "zstd"),
    ("linger.ms", "5"),
    // Same partitioning as Java clients, so keys land where Kafka Connect would put them.
    ("partitioner", "murmur2_random"),
];

/// Properties the connector owns: `(property, clients it is set on, why)`. Setting one in
/// any options table is refused.
pub const OWNED: &[(&str, &[ClientRole], &str)] = &[
    (
        "bootstrap.servers",
        &[
            ClientRole::Producer,
            ClientRole::Consumer,
            ClientRole::Admin,
        ],
        "set kafka.bootstrap_servers instead",
    ),
    (
        "transactional.id",
        &[ClientRole::Producer],
        "it is {name}-{worker_id}: the identity that fences an older incarnation of this worker",
    ),
    (
        "enable.idempotence",
        &[ClientRole::Producer],
        "transactions need the idempotent producer",
    ),
    (
        "transaction.timeout.ms",
        &[ClientRole::Producer],
        "set kafka.transaction_timeout instead",
    ),
    (
        "isolation.level",
        &[ClientRole::Consumer],
        "offsets and keys must be read read_committed, or aborted writes would count",
    ),
    (
        "group.id",
        &[ClientRole::Consumer],
        "the connector's consumers assign partitions themselves and commit nothing",
    ),
    (
        "enable.auto.commit",
        &[ClientRole::Consumer],
        "the connector's consumers commit nothing",
    ),
    (
        "enable.partition.eof",
        &[ClientRole::Consumer],
        "reading to the end of a topic depends on it",
    ),
    (
        "auto.offset.reset",
        &[ClientRole::Consumer],
        "offsets are always read from the beginning",
    ),
];

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
                if let Some((_, owners, why)) = OWNED.iter().find(|(k, _, _)| k == key) {
                    if owners.iter().any(|o| roles.contains(o)) {
                        errs.push(format!(
                            "{table}.\"{key}\": set by the connector, not configurable ({why})"
                        ));
                    }
                }
            }
        }
    }
}

/// librdkafka properties; `Debug` masks values whose name says password, secret, token or key.
#[derive(Clone, Default, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

/// Whether a librdkafka property holds a secret.
pub fn is_sensitive(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    // `ssl.key.location` and friends name files, not secrets, but masking a path costs
    // nothing and a rule with exceptions is how secrets leak.
    ["password", "secret", "token", "key", "jaas"]
        .iter()
        .any(|s| k.contains(s))
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_sensitive(k) { "***" } else { v.as_str() })),
            )
            .finish()
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
