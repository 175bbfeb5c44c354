//! Settings: defaults → TOML file (`--config`) → `GRAPH_CDC__SECTION__KEY` environment
//! variables, with the `config` crate.
//!
//! The structs below are the documentation: every field says what it does; unknown keys
//! are refused; values from a closed set are enums that refuse anything else, naming the
//! accepted ones. Every error names its key (`graph.page_size: …`, `sources[1].end: …`).
//!
//! # Where defaults live
//!
//! Every default of a setting is in [`DEFAULTS`] and nowhere else: a TOML document layered
//! under the file and the environment. The options of the two sides are built from the
//! settings here ([`Settings::sink_options`] in `build.rs`, [`GraphSettings::client_options`]
//! in `graph.rs`), every field from a setting, so neither side's own defaults (the Graph client's
//! `ClientOptions::default()`, for its tests) ever reach a worker; the sink has none.
//! [`Settings::defaults`] is [`DEFAULTS`] alone, for what runs without a settings file (the
//! demo, `SinkOptions::new` in tests). The librdkafka properties the producer starts from
//! are the sink's ([`crate::sink::properties::PRODUCER_DEFAULTS`]): they are not settings.
//!
//! # Files
//!
//! - `mod.rs`: [`DEFAULTS`], [`Settings`] and its smaller sections, loading.
//! - `graph.rs`: `[graph]`, the national cloud, the credentials, the Graph client's options.
//! - `kafka.rs`: `[kafka]` (with the librdkafka option tables) and `[errors]`.
//! - `server.rs`: `[server]`: the listen address, the token rule, the TLS files.
//! - `notifications.rs`: `[notifications]`: change notifications.
//! - `types.rs`: durations (`30s`) and secrets.
//! - `timezones.rs`: the time zone names Graph accepts.
//! - `lenient.rs`: numbers and booleans from the environment's strings.
//! - `build.rs`: [`Settings::defaults`], and settings → the sink's options.
//! - `validate.rs`: what a type cannot express, each problem naming its key.
//!
//! # Secrets in errors
//!
//! No error shows the value of a secret: type errors under a key that names one
//! ([`crate::redact::is_sensitive`]: `server.auth_token`, `graph.client_secret`…) have their
//! quoted values masked, and TOML syntax errors lose the quoted source line.
//!
//! Imports run one way: config → `sink`, `graph` (whose options it builds) → `redact`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod build;
mod graph;
mod kafka;
mod lenient;
mod notifications;
mod server;
mod sources;
mod timezones;
mod types;
mod validate;

/// Where the producer's defaults live now; kept here for callers of the old path.
pub use crate::sink::properties::PRODUCER_DEFAULTS;
pub use graph::{Cloud, Credentials, GraphSettings};
pub use kafka::{ErrorSettings, KafkaOptions, KafkaSettings, Tolerance, TopicSettings};
pub use notifications::{event_hub_url, Delivery, EventHubSettings, NotificationSettings};
pub use server::{parse_listen, ListenHost, ServerFiles, TlsPem};
pub use sources::{GroupSource, OnMemberRemoved, Source};
pub use timezones::WINDOWS_ZONES;
pub use types::{parse_duration, Dur, Secret};
pub use validate::{topic_name, MIN_POLL_INTERVAL, MIN_REQUEST_TIMEOUT};

/// Every default, in one place (a TOML document layered under the file and the environment).
pub const DEFAULTS: &str = r#"
name = "graph-cdc"

[graph]
cloud = "global"
page_size = 100
poll_interval = "60s"
poll_jitter = 0.1
timezone = "UTC"
max_concurrency_per_mailbox = 4
batch_polls = false
immutable_ids = true
max_concurrency = 64
request_timeout = "30s"
max_retries = 10
base_backoff = "500ms"
max_backoff = "60s"
max_response_bytes = 67108864
allow_insecure_http = false
reconcile_interval = "7d"
max_pages_per_round = 10000
membership_interval = "1h"
poll_interval_with_notifications = "15m"

[kafka]
bootstrap_servers = "localhost:9092"
offsets_topic = "graph-cdc-offsets"
state_topic = "graph-cdc-state"
create_topics = true
topic_partitions = 6
replication_factor = 1
transaction_timeout = "60s"
shards_topic = "graph-cdc-shards"
control_topic = "graph-cdc-control"
session_timeout = "10s"

[kafka.topics]
events = "graph.events"
calendars = "graph.calendars"
task_lists = "graph.todo.lists"
tasks = "graph.todo.tasks"
members = "graph.group.members"

[worker]
heartbeat_interval = "30s"
max_batch_records = 5000
linger = "100ms"
shutdown_timeout = "10s"
offsets_load_timeout = "60s"
shards = 8
health_interval = "10s"

[notifications]
enabled = false
delivery = "webhook"
renew_before = "24h"
allow_insecure_url = false

[server]
listen = "127.0.0.1:8083"
allow_unauthenticated = false
per_partition_metrics = false

[log]
format = "text"
filter = "info"

[errors]
tolerance = "none"
"#;

/// Why settings were refused. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file does not exist.
    #[error("config file {0}: not found")]
    Missing(PathBuf),
    /// A layer could not be read or parsed (TOML syntax, an unreadable file), in the
    /// `config` crate's words (which name the file and the place).
    #[error("config: {0}")]
    Load(String),
    /// Values refused, one message per problem, each naming its key.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Connector name: part of every offset key and of the transactional id.
    pub name: String,
    /// `[graph]`: the tenant, the credentials, how to talk to Graph.
    pub graph: GraphSettings,
    /// `[kafka]`: the brokers, topics and librdkafka properties.
    pub kafka: KafkaSettings,
    /// `[worker]`: transactions and pacing.
    pub worker: WorkerSettings,
    /// `[server]`: metrics, health and the REST API.
    pub server: ServerSettings,
    /// `[notifications]`: change notifications as triggers of delta rounds.
    pub notifications: NotificationSettings,
    /// `[log]`: format and filter.
    pub log: LogSettings,
    /// `[errors]`: what happens to records Kafka refuses.
    pub errors: ErrorSettings,
    /// What to track.
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// `[worker]`: transactions and pacing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Idle partitions' fresh deltaLinks are written together at most this often (or as soon
    /// as 2,048 of a shard wait).
    pub heartbeat_interval: Dur,
    /// Records per Kafka transaction at most.
    pub max_batch_records: usize,
    /// How long a transaction waits to group pages of several partitions.
    pub linger: Dur,
    /// Time allowed to finish the open transaction at shutdown.
    pub shutdown_timeout: Dur,
    /// Time allowed to read the offsets topic at start.
    pub offsets_load_timeout: Dur,
    /// How often the worker checks in the background that Kafka answers (one metadata
    /// request on one long-lived client); `/readyz` reads the result. Kafka counts as
    /// unreachable when no check succeeded for 3 intervals (at least 30 s).
    pub health_interval: Dur,
    /// How many shards the partitions are spread over (each partition's shard is a hash of
    /// its user's id, or of its group's for a group source's); workers share the shards
    /// through Kafka's group protocol, so at most this many workers share the work. Every
    /// worker of a connector must say the same, and `kafka.shards_topic` must have this
    /// many partitions (created so when missing). 1–256.
    pub shards: u32,
}

/// `[server]`: the HTTP listener (metrics, health, REST).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the HTTP listener, `host:port` (`127.0.0.1:8083`, `[::]:8083`; port 0:
    /// any free port). Loopback by default; any other address needs `auth_token`,
    /// `auth_token_file` or `allow_unauthenticated`.
    pub listen: String,
    /// Bearer token the REST API requires (every endpoint but `/healthz`, `/readyz` and
    /// `/metrics`). Required when `listen` is not a loopback address, unless
    /// `allow_unauthenticated` is set.
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// File holding `auth_token` (e.g. a mounted Kubernetes secret); read at start.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Serve the REST API without a token on a non-loopback `listen` address: anyone who
    /// can reach the port can then stop the connector and rewrite its offsets. Off by
    /// default; set it only behind another access control (a NetworkPolicy, a proxy).
    pub allow_unauthenticated: bool,
    /// PEM certificate chain of the REST listener: with `tls_key_path`, it serves HTTPS.
    #[serde(default)]
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key of `tls_cert_path` (both or neither).
    #[serde(default)]
    pub tls_key_path: Option<PathBuf>,
    /// Also export one series per partition (staleness, pages in the current round, state):
    /// off by default, since 10,000 partitions must not mean 10,000 series.
    pub per_partition_metrics: bool,
    /// The URL the connector's other workers reach this worker's REST API at
    /// (`http://10.0.3.7:8083`, a pod's DNS name…), advertised in `kafka.control_topic`:
    /// any worker answers the connector's status with every worker's partitions. Default:
    /// `http(s)://` this host's address toward Kafka (loopback when `listen` is) and the
    /// port the listener bound.
    #[serde(default)]
    pub advertised_url: Option<String>,
    /// What validation read from the token and TLS files as these settings were loaded
    /// (see [`ServerSettings::files`]).
    #[serde(skip)]
    files: Option<std::sync::Arc<ServerFiles>>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (human-readable lines) or `json` (one object per line).
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// As written in the settings.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Settings {
    /// Defaults → `path` → environment, then validation.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut b = defaults_layer();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Missing(p.to_path_buf()));
            }
            b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
        }
        Self::build(b.add_source(env()))
    }

    /// Defaults → a TOML string (→ environment when `with_env`), then validation.
    pub fn from_toml_str(toml: &str, with_env: bool) -> Result<Self, ConfigError> {
        let mut b =
            defaults_layer().add_source(config::File::from_str(toml, config::FileFormat::Toml));
        if with_env {
            b = b.add_source(env());
        }
        Self::build(b)
    }

    fn build(b: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Self, ConfigError> {
        let mut s = Self::deserialize_layers(b)?;
        let files = s.validated()?;
        s.server.files = Some(std::sync::Arc::new(files));
        Ok(s)
    }

    /// The layers of `b` as settings, unvalidated.
    fn deserialize_layers(
        b: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Self, ConfigError> {
        let raw: Value = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(without_source_lines(&e.to_string())))?;
        // Through serde_path_to_error so type errors and unknown keys name their path; the
        // environment's strings are read as numbers or booleans where a key wants one.
        let s: Settings = serde_path_to_error::deserialize(lenient::Lenient(raw)).map_err(|e| {
            let path = e.path().to_string();
            let mut inner = e.into_inner().to_string();
            if path.split('.').any(crate::redact::is_sensitive) {
                inner = without_quoted(&inner);
            }
            let msg = match inner.strip_prefix("unknown field `") {
                Some(rest) => {
                    let field = rest.split('`').next().unwrap_or("");
                    let key = if path == field || path.ends_with(&format!(".{field}")) {
                        path.clone()
                    } else if path.is_empty() || path == "." {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                    format!("unknown key '{key}' ({inner})")
                }
                None => format!("{path}: {inner}"),
            };
            ConfigError::Invalid(vec![msg])
        })?;
        Ok(s)
    }

    /// `kafka.worker_id`, else `$HOSTNAME`, else `worker-0`.
    pub fn worker_id(&self) -> String {
        self.kafka
            .worker_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "worker-0".into())
    }

    /// `{name}`: each shard's producer uses `{name}-shard-{n}`, the same on every worker, so
    /// a worker taking a shard over fences whoever wrote it before.
    pub fn transactional_id(&self) -> String {
        self.name.clone()
    }

    /// The settings as JSON with every secret masked (for the REST API and `validate`).
    pub fn redacted_json(&self) -> Value {
        // `Secret`s serialise masked; librdkafka properties are masked by name.
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for table in [
            "options",
            "producer_options",
            "consumer_options",
            "admin_options",
        ] {
            if let Some(Value::Object(opts)) = v.pointer_mut(&format!("/kafka/{table}")) {
                crate::redact::mask_object(opts);
            }
        }
        v
    }
}

/// The first layer: [`DEFAULTS`].
fn defaults_layer() -> config::ConfigBuilder<config::builder::DefaultState> {
    config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
}

/// The last layer: `GRAPH_CDC__SECTION__KEY` variables, every value the string it is
/// (`lenient.rs` reads numbers and booleans where a key wants one).
fn env() -> config::Environment {
    config::Environment::with_prefix("GRAPH_CDC")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(false)
}

/// `msg` without the quoted source of a TOML syntax error (`3 | client_secret = "…`): the
/// line may hold a secret. The position (line and column) and the reason stay.
fn without_source_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| {
            let t = l.trim_start();
            let t = t
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !t.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `msg` with every value serde quotes (`` `987654321` ``, `"hunter2"`) masked: for errors
/// under a key holding a secret.
fn without_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quote = None;
    for c in msg.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str(crate::redact::MASK);
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        out.push_str(crate::redact::MASK);
    }
    out
}

#[cfg(test)]
mod tests;
