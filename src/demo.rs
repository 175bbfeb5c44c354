//! `graph-cdc demo`: the whole pipeline on embedded parts, no Azure tenant and no Kafka.
//!
//! It starts the Graph simulator on loopback with demo users, librdkafka's in-process mock
//! cluster as Kafka, and a worker tracking every kind of partition; a stream of changes is
//! applied to the simulator while a consumer prints each committed record. The mock cluster
//! is for showing the flow only: it does not hide aborted records, so exactly-once is proven
//! against a real broker in the tests, never here.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Dur, Secret, Settings, Source};
use crate::worker::{self, WorkerSpec};
use graph_sim::generate::{GenerateSpec, MutateSpec};
use graph_sim::{SimServer, SimSettings};

/// Demo knobs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub users: usize,
    /// Random changes applied per second.
    pub changes_per_second: usize,
    pub poll_interval: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            users: 3,
            changes_per_second: 3,
            poll_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the simulator: {0}")]
    Sim(#[from] std::io::Error),
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("generating demo data: {0}")]
    Data(#[from] graph_sim::SimError),
    #[error("demo settings: {0}")]
    Settings(#[from] ConfigError),
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

/// Runs the demo until `shutdown` completes; prints records to `out` as they commit.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
    out: impl Write + Send + 'static,
) -> Result<(), DemoError> {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default()).await?;
    let secret = uuid::Uuid::new_v4().to_string();
    sim.state
        .add_secret_client("contoso", "graph-cdc-demo", &secret);
    let gen = GenerateSpec {
        users: opts.users,
        tenant: Some("contoso".into()),
        events_per_user: 8,
        tasks_per_list: 3,
        ..Default::default()
    };
    let users = graph_sim::generate::generate(&mut sim.state.store.write(), &gen)?;
    let window_start = gen.start.and_utc();
    let window_end = window_start + chrono::Duration::days(gen.days);
    let users: Vec<String> = users.into_iter().map(|u| u.user_principal_name).collect();

    let mock = MockCluster::new(1)?;
    let settings = demo_settings(
        &sim.url(),
        &secret,
        &mock.bootstrap_servers(),
        &opts,
        users,
        (window_start, window_end),
    );
    settings.validate()?;
    let spec = WorkerSpec::from_settings(&settings)?;
    for t in spec.sink.topics.all() {
        mock.create_topic(t, 3, 1)?;
    }
    mock.create_topic(&spec.sink.offsets_topic, 1, 1)?;
    mock.create_topic(&spec.sink.state_topic, 3, 1)?;
    let shards = spec.sharding.shards as i32;
    mock.create_topic(&spec.sharding.topic, shards, 1)?;
    mock.create_topic(&spec.sharding.control_topic, 1, 1)?;
    let bootstrap = spec.sink.bootstrap_servers.clone();
    let topics: Vec<String> = spec.sink.topics.all().map(str::to_string).into();

    let stop = CancellationToken::new();
    // The change stream.
    let changes = {
        let state = sim.state.clone();
        let stop = stop.clone();
        let per_sec = opts.changes_per_second;
        let (start, days) = (gen.start, gen.days);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            while !stop.is_cancelled() {
                let spec = MutateSpec {
                    count: per_sec,
                    start,
                    days,
                    ..Default::default()
                };
                graph_sim::generate::mutate(&mut state.store.write(), &spec);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };
    // The printing consumer.
    let printer = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || print_records(&bootstrap, &topics, &stop, out))
    };
    let result = worker::run(spec, shutdown).await;
    stop.cancel();
    let _ = changes.await;
    let _ = printer.await;
    drop(mock);
    sim.stop().await;
    result.map_err(Into::into)
}

/// The demo's settings: the built-in defaults ([`Settings::defaults`]) pointed at the
/// simulator and the mock cluster, with every kind of partition for each user, and shorter
/// waits so changes show within seconds.
fn demo_settings(
    sim_url: &str,
    secret: &str,
    bootstrap: &str,
    opts: &DemoOptions,
    users: Vec<String>,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Settings {
    let mut s = Settings::defaults();
    s.name = "graph-cdc-demo".into();
    let g = &mut s.graph;
    g.tenant_id = "contoso".into();
    g.client_id = "graph-cdc-demo".into();
    g.client_secret = Some(Secret::new(secret));
    g.base_url = Some(sim_url.into());
    g.authority_url = Some(sim_url.into());
    g.page_size = 20;
    g.poll_interval = Dur(opts.poll_interval);
    g.poll_jitter = 0.2;
    let k = &mut s.kafka;
    k.bootstrap_servers = bootstrap.into();
    k.worker_id = Some("0".into());
    // The demo creates the topics on the mock cluster itself.
    k.create_topics = false;
    k.transaction_timeout = Dur(Duration::from_secs(30));
    let w = &mut s.worker;
    w.linger = Dur(Duration::from_millis(50));
    w.heartbeat_interval = Dur(Duration::from_secs(10));
    w.offsets_load_timeout = Dur(Duration::from_secs(10));
    let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    s.sources = vec![
        Source::CalendarView {
            users: Some(users.clone()),
            group: None,
            on_member_removed: Default::default(),
            calendar: "primary".into(),
            start: rfc3339(start),
            end: rfc3339(end),
            window_roll: Dur(Duration::from_secs(86_400)),
        },
        Source::CalendarList {
            users: Some(users.clone()),
            group: None,
            on_member_removed: Default::default(),
        },
        Source::Todo {
            users: Some(users),
            group: None,
            on_member_removed: Default::default(),
        },
    ];
    s
}

fn print_records(
    bootstrap: &str,
    topics: &[String],
    stop: &CancellationToken,
    mut out: impl Write,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "graph-cdc-demo-printer")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let _ = writeln!(out, "{:<18} {:<6} {:<58} summary", "topic", "op", "key");
    while !stop.is_cancelled() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let op = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "graph-cdc.op"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let summary = m
            .payload()
            .map(summarise)
            .unwrap_or_else(|| "(tombstone)".into());
        let _ = writeln!(
            out,
            "{:<18} {:<6} {:<58} {}",
            m.topic(),
            op,
            shorten(&key, 58),
            summary
        );
    }
    Ok(())
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}

/// A one-line summary of an item: its title and, for events, its start.
fn summarise(v: &[u8]) -> String {
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(v) else {
        return format!("{} bytes", v.len());
    };
    let title = ["subject", "title", "displayName", "name"]
        .iter()
        .find_map(|k| j.get(*k).and_then(|s| s.as_str()))
        .unwrap_or("");
    let kind = j.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let start = j
        .pointer("/start/dateTime")
        .and_then(|s| s.as_str())
        .map(|s| s.get(..16).unwrap_or(s))
        .unwrap_or("");
    let status = j.get("status").and_then(|s| s.as_str()).unwrap_or("");
    let parts: Vec<&str> = [title, kind, start, status]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    format!("{} ({} bytes)", parts.join(" · "), v.len())
}
