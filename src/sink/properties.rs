//! What the sink knows of librdkafka properties: the clients it creates, the producer
//! defaults it starts from, and the properties it sets itself, which exactly-once depends on
//! (the settings refuse them in the user's tables, see `config::kafka`).

use rdkafka::config::ClientConfig;

/// Which client a table of options is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Producer,
    Consumer,
    Admin,
}

impl ClientRole {
    /// The settings table of this client's own options.
    pub fn table(self) -> &'static str {
        match self {
            ClientRole::Producer => "kafka.producer_options",
            ClientRole::Consumer => "kafka.consumer_options",
            ClientRole::Admin => "kafka.admin_options",
        }
    }

    /// The client, in words.
    pub fn name(self) -> &'static str {
        match self {
            ClientRole::Producer => "producer",
            ClientRole::Consumer => "consumer",
            ClientRole::Admin => "admin client",
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

/// What every consumer of the sink reads with (besides its `group.id`): committed data only,
/// from the beginning, to the end, committing nothing.
pub const READER_PROPERTIES: &[(&str, &str)] = &[
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "false"),
    ("enable.partition.eof", "true"),
    ("auto.offset.reset", "earliest"),
];

/// `base` as a reader of the sink: [`READER_PROPERTIES`] and the (never committed) `group`.
pub fn reader_config(base: &ClientConfig, group: &str) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", group);
    for (k, v) in READER_PROPERTIES {
        c.set(*k, *v);
    }
    c
}

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

/// Why the connector owns `key` on any of `roles`, if it does.
pub fn owned(key: &str, roles: &[ClientRole]) -> Option<&'static str> {
    OWNED
        .iter()
        .find(|(k, owners, _)| *k == key && owners.iter().any(|o| roles.contains(o)))
        .map(|(_, _, why)| *why)
}
