//! Settings → what a worker needs.

use std::time::Duration;

use crate::config::{ConfigError, Credentials, Settings};
use crate::graph::{ClientOptions, Credential};
use crate::sink::{SinkOptions, TopicNames};
use crate::source::PartitionId;

/// Everything a worker needs, resolved from the settings.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Graph host, e.g. `https://graph.microsoft.com` (the simulator's URL in tests).
    pub graph_host: String,
    pub token_url: String,
    pub client_id: String,
    pub credential: Credential,
    pub client: ClientOptions,
    pub poll_interval: Duration,
    /// ± fraction of `poll_interval`.
    pub poll_jitter: f64,
    pub sink: SinkOptions,
    /// The configured partitions (task partitions of To Do lists are found at run time).
    pub partitions: Vec<PartitionId>,
    /// `(partitions, replication factor)` of topics to create when missing.
    pub create_topics: Option<(i32, i32)>,
    /// How long reading the offsets topic may take at start.
    pub offsets_load_timeout: Duration,
}

impl WorkerSpec {
    /// Resolves validated settings (reading credential files) into a worker spec.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let credential = match s
            .graph
            .credentials()
            .map_err(|e| ConfigError::Invalid(vec![e]))?
        {
            Credentials::Secret(secret) => Credential::Secret(secret.expose().to_string()),
            Credentials::Certificate { cert_pem, key_pem } => Credential::Certificate {
                cert_pem,
                key_pem: key_pem.expose().to_string(),
            },
        };
        let g = &s.graph;
        let k = &s.kafka;
        Ok(Self {
            graph_host: g.graph_base_url(),
            token_url: g.token_url(),
            client_id: g.client_id.clone(),
            credential,
            client: ClientOptions {
                page_size: g.page_size,
                timezone: Some(g.timezone.clone()).filter(|t| !t.eq_ignore_ascii_case("utc")),
                max_concurrency_per_mailbox: g.max_concurrency_per_mailbox,
                max_concurrency: g.max_concurrency,
                batch_polls: g.batch_polls,
                request_timeout: g.request_timeout.0,
                max_retries: g.max_retries,
                max_backoff: g.max_backoff.0,
                ..Default::default()
            },
            poll_interval: g.poll_interval.0,
            poll_jitter: g.poll_jitter,
            sink: SinkOptions {
                bootstrap_servers: k.bootstrap_servers.clone(),
                kafka: crate::sink::ClientOptions {
                    all: k.options.0.clone(),
                    producer: k.producer_options.0.clone(),
                    consumer: k.consumer_options.0.clone(),
                    admin: k.admin_options.0.clone(),
                },
                errors: crate::sink::ErrorPolicy {
                    dead_letter_topic: match s.errors.tolerance {
                        crate::config::Tolerance::All => s.errors.dead_letter_topic.clone(),
                        crate::config::Tolerance::None => None,
                    },
                },
                transactional_id: s.transactional_id(),
                connector: s.name.clone(),
                topics: TopicNames {
                    events: k.topics.events.clone(),
                    calendars: k.topics.calendars.clone(),
                    task_lists: k.topics.task_lists.clone(),
                    tasks: k.topics.tasks.clone(),
                },
                offsets_topic: k.offsets_topic.clone(),
                transaction_timeout: k.transaction_timeout.0,
                max_batch_records: s.worker.max_batch_records,
                linger: s.worker.linger.0,
                heartbeat_interval: s.worker.heartbeat_interval.0,
            },
            partitions: s.partitions(),
            create_topics: k
                .create_topics
                .then_some((k.topic_partitions, k.replication_factor)),
            offsets_load_timeout: s.worker.offsets_load_timeout.0,
        })
    }
}
