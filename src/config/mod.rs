//! Settings: defaults → TOML file (`--config`) → `GRAPH_CDC__SECTION__KEY` environment
//! variables, with the `config` crate.
//!
//! The structs below are the documentation: every field says what it does; unknown keys
//! are refused; the defaults live in [`DEFAULTS`] only. Every error names its key
//! (`graph.page_size: …`, `sources[1].end: …`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::source::PartitionId;

mod kafka;
mod validate;

pub use kafka::{
    is_sensitive, ClientRole, ErrorSettings, KafkaOptions, KafkaSettings, Tolerance, TopicSettings,
    OWNED, PRODUCER_DEFAULTS,
};

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
max_concurrency = 64
request_timeout = "30s"
max_retries = 10
max_backoff = "60s"

[kafka]
bootstrap_servers = "localhost:9092"
offsets_topic = "graph-cdc-offsets"
create_topics = true
topic_partitions = 6
replication_factor = 1
transaction_timeout = "60s"

[kafka.topics]
events = "graph.events"
calendars = "graph.calendars"
task_lists = "graph.todo.lists"
tasks = "graph.todo.tasks"

[worker]
heartbeat_interval = "30s"
max_batch_records = 5000
linger = "100ms"
shutdown_timeout = "10s"
offsets_load_timeout = "60s"

[server]
listen = "0.0.0.0:8083"
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
    #[error("config file {0}: not found")]
    Missing(PathBuf),
    #[error("config: {0}")]
    Load(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A secret string: shown as `***` by `Debug`, `Display` and `Serialize`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A duration written `250ms`, `30s`, `5m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Parses `250ms`, `30s`, `1.5s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (use 250ms, 30s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit '{u}' in '{s}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Connector name: part of every offset key and of the transactional id.
    pub name: String,
    pub graph: GraphSettings,
    pub kafka: KafkaSettings,
    pub worker: WorkerSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
    /// What happens to records Kafka refuses.
    pub errors: ErrorSettings,
    /// What to track.
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// `[graph]`: the tenant, the app's credentials and how to talk to Graph.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSettings {
    /// Directory (tenant) id or domain.
    #[serde(default)]
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    #[serde(default)]
    pub client_id: String,
    /// Client secret (prefer `GRAPH_CDC__GRAPH__CLIENT_SECRET` or `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the client secret (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Certificate (PEM) for certificate credentials, with `private_key_path`.
    #[serde(default)]
    pub certificate_path: Option<PathBuf>,
    /// The certificate's RSA private key (PEM).
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// National cloud: `global`, `usgov`, `usgov-dod` or `china`.
    pub cloud: String,
    /// Override of the Graph host (`/v1.0` and `/beta` are appended), e.g. a simulator.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Override of the login host (token URL: `{authority_url}/{tenant_id}/oauth2/v2.0/token`).
    #[serde(default)]
    pub authority_url: Option<String>,
    /// `Prefer: odata.maxpagesize` (1..=1000).
    pub page_size: usize,
    /// How often a partition polls its deltaLink.
    pub poll_interval: Dur,
    /// Random spread of polls, a fraction of `poll_interval` (0 ≤ jitter < 1).
    pub poll_jitter: f64,
    /// `Prefer: outlook.timezone` for calendar views (Windows or IANA name).
    pub timezone: String,
    /// Requests in flight per mailbox (Outlook allows 4).
    pub max_concurrency_per_mailbox: usize,
    /// Requests in flight overall.
    pub max_concurrency: usize,
    /// Send idle deltaLink polls in JSON batches (`POST /$batch`, up to 20 per request);
    /// items Graph does not answer with 200 are retried one by one.
    pub batch_polls: bool,
    /// Timeout of one Graph request.
    pub request_timeout: Dur,
    /// Retries of a throttled, failing or malformed request before the partition waits.
    pub max_retries: u32,
    /// Longest wait between retries without `Retry-After`.
    pub max_backoff: Dur,
}

/// `[worker]`: transactions and pacing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Idle partitions' fresh deltaLinks are written together at most this often.
    pub heartbeat_interval: Dur,
    /// Records per Kafka transaction at most.
    pub max_batch_records: usize,
    /// How long a transaction waits to group pages of several partitions.
    pub linger: Dur,
    /// Time allowed to finish the open transaction at shutdown.
    pub shutdown_timeout: Dur,
    /// Time allowed to read the offsets topic at start.
    pub offsets_load_timeout: Dur,
}

/// `[server]`: the HTTP listener (metrics, health, REST).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: String,
    /// Bearer token required by mutating REST calls (set it in production).
    #[serde(default)]
    pub auth_token: Option<Secret>,
    /// File holding `auth_token`.
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// Also export one series per partition (staleness, pages in the current round, state):
    /// off by default, since 10,000 partitions must not mean 10,000 series.
    pub per_partition_metrics: bool,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

/// `[[sources]]`: one entry per kind and set of users.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// One calendar of each user over a fixed window `[start, end)`.
    CalendarView {
        users: Vec<String>,
        /// `primary` (v1.0 route) or a calendar id (beta route).
        #[serde(default = "primary")]
        calendar: String,
        /// Window start, RFC 3339 with offset.
        start: String,
        /// Window end (exclusive), RFC 3339 with offset.
        end: String,
    },
    /// Each user's calendars.
    CalendarList { users: Vec<String> },
    /// Each user's To Do lists, and the tasks of every list.
    Todo { users: Vec<String> },
}

fn primary() -> String {
    "primary".into()
}

/// How the app authenticates, read from the settings (and files) at load time.
#[derive(Clone)]
pub enum Credentials {
    Secret(Secret),
    Certificate { cert_pem: String, key_pem: Secret },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Secret(_) => f.write_str("Secret(***)"),
            Credentials::Certificate { .. } => f.write_str("Certificate(***)"),
        }
    }
}

const CLOUDS: &[(&str, &str, &str)] = &[
    (
        "global",
        "https://graph.microsoft.com",
        "https://login.microsoftonline.com",
    ),
    (
        "usgov",
        "https://graph.microsoft.us",
        "https://login.microsoftonline.us",
    ),
    (
        "usgov-dod",
        "https://dod-graph.microsoft.us",
        "https://login.microsoftonline.us",
    ),
    (
        "china",
        "https://microsoftgraph.chinacloudapi.cn",
        "https://login.chinacloudapi.cn",
    ),
];

impl GraphSettings {
    fn cloud(&self) -> Option<&(&str, &str, &str)> {
        CLOUDS.iter().find(|c| c.0 == self.cloud)
    }

    /// The Graph host: the override, or the cloud's.
    pub fn graph_base_url(&self) -> String {
        self.base_url
            .clone()
            .or_else(|| self.cloud().map(|c| c.1.to_string()))
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string()
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        let authority = self
            .authority_url
            .clone()
            .or_else(|| self.cloud().map(|c| c.2.to_string()))
            .unwrap_or_default();
        format!(
            "{}/{}/oauth2/v2.0/token",
            authority.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// Reads the credentials (secret, secret file or certificate files).
    pub fn credentials(&self) -> Result<Credentials, String> {
        let read = |p: &Path, key: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("graph.{key}: cannot read {}: {e}", p.display()))
        };
        match (
            &self.client_secret,
            &self.client_secret_file,
            &self.certificate_path,
            &self.private_key_path,
        ) {
            (Some(s), None, None, None) if !s.expose().is_empty() => Ok(Credentials::Secret(s.clone())),
            (None, Some(f), None, None) => {
                let s = read(f, "client_secret_file")?;
                let s = s.trim();
                if s.is_empty() {
                    return Err(format!("graph.client_secret_file: {} is empty", f.display()));
                }
                Ok(Credentials::Secret(Secret::new(s)))
            }
            (None, None, Some(c), Some(k)) => {
                let cert_pem = read(c, "certificate_path")?;
                if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("graph.certificate_path: {} is not a PEM certificate", c.display()));
                }
                let key_pem = read(k, "private_key_path")?;
                if !key_pem.contains("PRIVATE KEY-----") {
                    return Err(format!("graph.private_key_path: {} is not a PEM private key", k.display()));
                }
                Ok(Credentials::Certificate { cert_pem, key_pem: Secret::new(key_pem) })
            }
            (None, None, Some(_), None) => Err("graph.private_key_path: required with certificate_path".into()),
            (None, None, None, Some(_)) => Err("graph.certificate_path: required with private_key_path".into()),
            (None, None, None, None) | (Some(_), None, None, None) => Err(
                "graph.client_secret: no credentials: set client_secret, client_secret_file, or certificate_path and private_key_path".into(),
            ),
            _ => Err("graph.client_secret: set exactly one of client_secret, client_secret_file, or certificate_path with private_key_path".into()),
        }
    }
}

/// Normalises an RFC 3339 time to UTC with seconds and `Z`.
fn utc(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{s}' is not an RFC 3339 time with an offset ({e})"))
}

fn window(start: &str, end: &str) -> Result<(DateTime<Utc>, DateTime<Utc>, String), String> {
    let (s, e) = (utc(start)?, utc(end)?);
    Ok((
        s,
        e,
        format!(
            "{}/{}",
            s.format("%Y-%m-%dT%H:%M:%SZ"),
            e.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    ))
}

impl Settings {
    /// Defaults → `path` → environment, then validation.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
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
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(toml, config::FileFormat::Toml));
        if with_env {
            b = b.add_source(env());
        }
        Self::build(b)
    }

    fn build(b: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Self, ConfigError> {
        let raw: Value = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        // Through serde_path_to_error so type errors and unknown keys name their path.
        let s: Settings = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
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
        s.validate()?;
        Ok(s)
    }

    /// The configured partitions (the task partitions of To Do lists are found at run time).
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.sources
            .iter()
            .filter_map(|s| source_partitions(s).ok())
            .flatten()
            .collect()
    }

    pub fn worker_id(&self) -> String {
        self.kafka
            .worker_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "worker-0".into())
    }

    /// `{name}-{worker_id}`: a second worker with the same identity fences the first.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.name, self.worker_id())
    }

    /// The settings as JSON with every secret masked (for the REST API and `validate`).
    pub fn redacted_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for table in [
            "options",
            "producer_options",
            "consumer_options",
            "admin_options",
        ] {
            if let Some(Value::Object(opts)) = v.pointer_mut(&format!("/kafka/{table}")) {
                for (k, val) in opts.iter_mut() {
                    if is_sensitive(k) {
                        *val = Value::from("***");
                    }
                }
            }
        }
        v
    }
}

fn source_partitions(s: &Source) -> Result<Vec<PartitionId>, String> {
    Ok(match s {
        Source::CalendarView {
            users,
            calendar,
            start,
            end,
        } => {
            let (_, _, w) = window(start, end)?;
            users
                .iter()
                .map(|u| PartitionId::CalendarView {
                    user: u.clone(),
                    calendar: calendar.clone(),
                    window: w.clone(),
                })
                .collect()
        }
        Source::CalendarList { users } => users
            .iter()
            .map(|u| PartitionId::CalendarList { user: u.clone() })
            .collect(),
        Source::Todo { users } => users
            .iter()
            .map(|u| PartitionId::TaskLists { user: u.clone() })
            .collect(),
    })
}

fn env() -> config::Environment {
    config::Environment::with_prefix("GRAPH_CDC")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

#[cfg(test)]
mod tests;
