//! Settings → what a worker needs.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{ConfigError, Credentials, Delivery, GroupSource, Secret, Settings};
use crate::graph::{ClientOptions, Credential, Rounds};
use crate::sink::notifications::HubOptions;
use crate::sink::SinkOptions;
use crate::source::PartitionId;

use super::health::Windows;

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
    /// Group sources: each group named, with the partitions its sources give a member
    /// (started at run time, as members are listed).
    pub groups: Vec<GroupSource>,
    /// `graph.membership_interval`: how often a group's members are listed again.
    pub membership_interval: Duration,
    /// Each calendar view's `window_roll` (absent: a day); a group source's under its
    /// template (empty user).
    pub window_rolls: HashMap<PartitionId, Duration>,
    /// `graph.reconcile_interval`; `None`: off.
    pub reconcile_interval: Option<Duration>,
    /// `graph.max_pages_per_round`.
    pub max_pages_per_round: u32,
    /// `(partitions, replication factor)` of topics to create when missing.
    pub create_topics: Option<(i32, i32)>,
    /// How long reading the offsets topic may take at start.
    pub offsets_load_timeout: Duration,
    /// How long shutdown (and halting partitions for a command) waits for partition tasks.
    pub shutdown_timeout: Duration,
    /// How often the background check probes Kafka.
    pub health_interval: Duration,
    /// How long a success keeps Kafka reachable and Graph answering for `/readyz`.
    pub readiness: Windows,
    /// How the workers of the connector share its partitions.
    pub sharding: Sharding,
    /// Change notifications (`[notifications]`), when enabled.
    pub notifications: Option<NotificationSpec>,
    /// With `notifications.delivery = "eventhub"`: the event hub the worker reads them from
    /// (`[notifications.eventhub]`; `Debug` masks the connection string).
    pub notification_hub: Option<HubOptions>,
}

/// Change notifications: where Graph posts them and what the worker asks of it.
#[derive(Debug, Clone)]
pub struct NotificationSpec {
    /// Graph posts change notifications here (`notifications.public_url`), or sends them to
    /// this event hub (`notifications.eventhub.notification_url`, `EventHub:https://…`).
    pub url: String,
    /// And lifecycle events here (`{url}/lifecycle`; with an event hub, the same URL: "The
    /// lifecycleNotificationUrl endpoint can be the same as the notificationUrl",
    /// concepts/change-notifications-lifecycle-events.md).
    pub lifecycle_url: String,
    /// `notifications.client_state` (a secret: `Debug` masks it).
    pub client_state: Secret,
    /// `notifications.renew_before`.
    pub renew_before: Duration,
    /// `notifications.max_lifetime`: the longest subscription asked for, when shorter than
    /// the resource's maximum.
    pub max_lifetime: Option<Duration>,
    /// `graph.poll_interval_with_notifications`: a notified partition's poll interval.
    pub poll_interval: Duration,
    /// When the first look for subscriptions left behind runs (`None`: a minute after the
    /// start; then hourly); for tests.
    pub sweep_after: Option<Duration>,
}

/// The workers' group: each partition belongs to a shard, each shard to one worker.
#[derive(Debug, Clone)]
pub struct Sharding {
    /// `worker.shards`: partitions of `topic`.
    pub shards: u32,
    /// `kafka.shards_topic`.
    pub topic: String,
    /// The consumer group of the connector's workers (`{name}.workers`).
    pub group: String,
    /// `kafka.worker_id`: this worker in the group.
    pub worker_id: String,
    /// `kafka.session_timeout`.
    pub session_timeout: Duration,
    /// `kafka.control_topic`: the connector's target state, shared by its workers.
    pub control_topic: String,
    /// Where the other workers reach this one's REST API (`None`: it serves none, and
    /// the others' status leaves its partitions out). Set once the server listens.
    pub advertised_url: Option<String>,
}

impl WorkerSpec {
    /// When partition `id`'s rounds start from scratch on their own.
    pub fn rounds(&self, id: &PartitionId) -> Rounds {
        let d = Rounds::default();
        // Asked at every poll: no identity copied unless some source sets a roll.
        let roll = match self.window_rolls.is_empty() {
            true => None,
            false => self
                .window_rolls
                .get(id)
                .or_else(|| self.window_rolls.get(&id.with_user("")))
                .copied(),
        };
        Rounds {
            window_roll: roll.unwrap_or(d.window_roll),
            reconcile_interval: self.reconcile_interval,
            max_pages_per_round: self.max_pages_per_round,
        }
    }

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
            client: g.client_options(),
            poll_interval: g.poll_interval.0,
            poll_jitter: g.poll_jitter,
            sink: SinkOptions::from(s),
            partitions: s.partitions(),
            groups: s.groups(),
            membership_interval: g.membership_interval.0,
            window_rolls: s.window_rolls(),
            reconcile_interval: Some(g.reconcile_interval.0).filter(|d| !d.is_zero()),
            max_pages_per_round: g.max_pages_per_round,
            create_topics: k
                .create_topics
                .then_some((k.topic_partitions, k.replication_factor)),
            offsets_load_timeout: s.worker.offsets_load_timeout.0,
            shutdown_timeout: s.worker.shutdown_timeout.0,
            health_interval: s.worker.health_interval.0,
            readiness: Windows::new(s.worker.health_interval.0, g.poll_interval.0),
            sharding: Sharding {
                shards: s.worker.shards,
                topic: k.shards_topic.clone(),
                group: format!("{}.workers", s.name),
                worker_id: s.worker_id(),
                session_timeout: k.session_timeout.0,
                control_topic: k.control_topic.clone(),
                advertised_url: None,
            },
            notifications: notification_spec(s),
            notification_hub: notification_hub(s),
        })
    }
}

/// The event hub a worker reads notifications from (`None`: not `delivery = "eventhub"`).
fn notification_hub(s: &Settings) -> Option<HubOptions> {
    let n = &s.notifications;
    let h = n.eventhub.as_ref()?;
    if !n.enabled || n.delivery != Delivery::EventHub {
        return None;
    }
    Some(HubOptions {
        bootstrap_servers: h.bootstrap_servers.clone(),
        topic: h.topic.clone(),
        group: h
            .consumer_group
            .clone()
            // A group per worker: each reads every notification and keeps its own
            // partitions' (a shared group would leave another worker's to its safety net).
            .unwrap_or_else(|| format!("{}.notifications.{}", s.name, s.worker_id())),
        connection_string: h.connection_string.clone(),
        options: h.options.0.clone(),
    })
}

/// The `[notifications]` settings a worker uses (`None`: off).
fn notification_spec(s: &Settings) -> Option<NotificationSpec> {
    let n = &s.notifications;
    if !n.enabled {
        return None;
    }
    let (url, lifecycle_url) = match (n.delivery, &n.eventhub) {
        (Delivery::EventHub, Some(h)) => (h.notification_url.clone(), h.notification_url.clone()),
        (Delivery::EventHub, None) => return None,
        (Delivery::Webhook, _) => {
            let url = n.public_url.clone()?.trim_end_matches('/').to_string();
            (url.clone(), format!("{url}/lifecycle"))
        }
    };
    Some(NotificationSpec {
        lifecycle_url,
        url,
        client_state: n.client_state.clone()?,
        renew_before: n.renew_before.0,
        max_lifetime: n.max_lifetime.map(|d| d.0),
        poll_interval: s.graph.poll_interval_with_notifications.0,
        sweep_after: None,
    })
}
