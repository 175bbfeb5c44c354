//! Settings → the options of the Kafka side: every field from a setting, so the defaults a
//! worker runs with are [`DEFAULTS`]'s (the Graph client's options are built in `graph.rs`).
//!
//! [`DEFAULTS`]: super::DEFAULTS

use std::sync::LazyLock;

use super::{defaults_layer, Settings, Tolerance};
use crate::sink::{ClientOptions, ErrorPolicy, SinkOptions, TopicNames};

/// [`super::DEFAULTS`] alone, read once.
static BUILT_IN: LazyLock<Settings> = LazyLock::new(|| {
    // A constant of this crate, not input: the tests load it (`defaults_are_settings`).
    Settings::deserialize_layers(defaults_layer())
        .expect("config::DEFAULTS deserialises into Settings")
});

impl Settings {
    /// The built-in defaults ([`super::DEFAULTS`]) alone, not validated: no tenant, no
    /// credentials, no sources. The base of what runs without a settings file (the demo,
    /// [`SinkOptions::new`]).
    pub fn defaults() -> Settings {
        BUILT_IN.clone()
    }

    /// What the sink needs: `[kafka]`, `[worker]`, `[errors]` and the connector's identity.
    pub fn sink_options(&self) -> SinkOptions {
        let k = &self.kafka;
        SinkOptions {
            bootstrap_servers: k.bootstrap_servers.clone(),
            kafka: ClientOptions {
                all: k.options.0.clone(),
                producer: k.producer_options.0.clone(),
                consumer: k.consumer_options.0.clone(),
                admin: k.admin_options.0.clone(),
            },
            errors: ErrorPolicy {
                dead_letter_topic: match self.errors.tolerance {
                    Tolerance::All => self.errors.dead_letter_topic.clone(),
                    Tolerance::None => None,
                },
            },
            transactional_id: self.transactional_id(),
            connector: self.name.clone(),
            topics: TopicNames {
                events: k.topics.events.clone(),
                calendars: k.topics.calendars.clone(),
                task_lists: k.topics.task_lists.clone(),
                tasks: k.topics.tasks.clone(),
                members: k.topics.members.clone(),
            },
            offsets_topic: k.offsets_topic.clone(),
            state_topic: k.state_topic.clone(),
            transaction_timeout: k.transaction_timeout.0,
            max_batch_records: self.worker.max_batch_records,
            linger: self.worker.linger.0,
            heartbeat_interval: self.worker.heartbeat_interval.0,
        }
    }
}

/// The sink's options come from more than `[kafka]` (`[worker]` batching, `[errors]`, the
/// connector's name), hence from the whole settings.
impl From<&Settings> for SinkOptions {
    fn from(s: &Settings) -> Self {
        s.sink_options()
    }
}

impl SinkOptions {
    /// The built-in defaults ([`Settings::defaults`]) with where to connect and who writes:
    /// for tests and tools that have no settings file. Change any field afterwards (unique
    /// topic names, a shorter linger…).
    pub fn new(
        bootstrap_servers: impl Into<String>,
        connector: impl Into<String>,
        transactional_id: impl Into<String>,
    ) -> Self {
        let mut s = Settings::defaults();
        s.name = connector.into();
        s.kafka.bootstrap_servers = bootstrap_servers.into();
        let mut o = s.sink_options();
        o.transactional_id = transactional_id.into();
        o
    }
}
