//! The worker: wires the Graph side to the Kafka side.
//!
//! ```text
//!   PartitionReader ──page──▶ SourceBatch ──▶ Committer ──txn(records + offset)──▶ Kafka
//!        ▲                                         │
//!        └────────── advance on commit ◀──── ack ──┘
//! ```
//!
//! One task per partition fetches a page, hands the batch to the committer and waits for the
//! acknowledgement before moving its position: an aborted transaction leaves the position
//! where it was, so the same pages are fetched again. Start-up order matters for exactly
//! once: transactions are initialised first (fencing any older incarnation and aborting its
//! open transaction), then the offsets topic is read to its end with `read_committed`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Credentials, Settings};
use crate::graph::{
    ClientOptions, Credential, GraphClient, GraphError, PartitionReader, TokenProvider,
};
use crate::metrics;
use crate::sink::offsets_store::load_offsets;
use crate::sink::topics::ensure_topics;
use crate::sink::{Committer, SinkError, SinkHandle, SinkOptions, TopicNames};
use crate::source::{Op, PartitionId, PartitionKind, SourceOffset};

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

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Offsets(#[from] crate::sink::offsets_store::OffsetStoreError),
    #[error("Graph setup: {0}")]
    Graph(#[from] GraphError),
    #[error("internal: {0}")]
    Internal(String),
}

/// A partition's state, as the REST API will report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    Running,
    Failed(String),
    Stopped,
}

struct Tracked {
    cancel: CancellationToken,
    state: Arc<Mutex<PartitionState>>,
    /// Set by a resync signal: the partition restarts its round from scratch.
    resync: Arc<AtomicBool>,
}

/// An operator's request (from the REST API), answered on `reply`.
pub struct Request {
    pub command: Command,
    pub reply: tokio::sync::oneshot::Sender<Result<String, CommandError>>,
}

/// What an operator can ask of a running worker.
#[derive(Debug, Clone)]
pub enum Command {
    /// Partitions stop fetching and keep their place.
    Pause,
    /// Paused or stopped partitions go on (stopped ones from their committed offsets).
    Resume,
    /// Partitions stop and their offsets are persisted; offsets may then be changed.
    Stop,
    /// Restarts partitions (all, only failed ones, or one) from their committed offsets.
    Restart {
        only_failed: bool,
        partition: Option<PartitionId>,
    },
    /// Restarts the rounds of one or all partitions from the initial request.
    Resync { partition: Option<PartitionId> },
    /// Writes offsets (`None` resets); only while stopped.
    AlterOffsets(crate::sink::committer::OffsetWrites),
    /// Resets every partition's offset; only while stopped.
    ResetOffsets,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// What every partition task shares.
struct Shared {
    status: Arc<WorkerStatus>,
    client: GraphClient,
    sink: SinkHandle,
    spec: WorkerSpec,
    /// `true` while the connector is paused.
    paused: tokio::sync::watch::Sender<bool>,
    tracked: Mutex<HashMap<PartitionId, Tracked>>,
    shutdown: CancellationToken,
    /// Set when the sink failed fatally: the worker must stop with an error.
    fatal: Mutex<Option<SinkError>>,
}

/// What the worker reports about itself (read by the HTTP server: status, readiness, offsets).
#[derive(Default)]
pub struct WorkerStatus {
    /// The offsets topic was read at start.
    pub offsets_loaded: std::sync::atomic::AtomicBool,
    /// A Graph page was fetched (so a token was obtained).
    pub graph_ok: std::sync::atomic::AtomicBool,
    /// Each partition's state.
    pub partitions: Mutex<std::collections::BTreeMap<PartitionId, PartitionState>>,
    /// Offsets as last committed by this worker (or read at start); where partitions
    /// (re)start from.
    pub offsets: Mutex<std::collections::BTreeMap<PartitionId, SourceOffset>>,
    /// `RUNNING`, `PAUSED` or `STOPPED`.
    pub connector: Mutex<&'static str>,
    /// When each partition last completed a round (or started).
    pub fresh_at: Mutex<HashMap<PartitionId, std::time::Instant>>,
    /// Pages fetched in each partition's current round.
    pub round_pages: Mutex<HashMap<PartitionId, u64>>,
    /// Export per-partition series too.
    pub per_partition_metrics: AtomicBool,
    /// What the Kafka clients last reported about the connection.
    pub kafka: Arc<crate::sink::KafkaHealth>,
    /// Why Kafka could not be reached at start-up (cleared once it was).
    pub kafka_error: Mutex<Option<String>>,
}

impl WorkerStatus {
    fn set_state(&self, p: &PartitionId, st: PartitionState) {
        self.partitions.lock().insert(p.clone(), st);
    }

    /// Brings the gauges derived from partition states up to date (called before a scrape).
    pub fn refresh_metrics(&self) {
        let m = metrics::metrics();
        let now = std::time::Instant::now();
        let per_partition = self.per_partition_metrics.load(Ordering::Relaxed);
        let fresh = self.fresh_at.lock();
        let stalest = fresh
            .values()
            .map(|t| now.duration_since(*t).as_secs_f64())
            .fold(0.0, f64::max);
        m.staleness_max.set(stalest);
        if per_partition {
            m.partition_staleness.reset();
            m.partition_pages.reset();
            m.partition_state.reset();
            for (p, t) in fresh.iter() {
                m.partition_staleness
                    .with_label_values(&[&p.to_json()])
                    .set(now.duration_since(*t).as_secs_f64());
            }
            for (p, n) in self.round_pages.lock().iter() {
                m.partition_pages
                    .with_label_values(&[&p.to_json()])
                    .set(*n as i64);
            }
        }
        drop(fresh);
        let paused = *self.connector.lock() == "PAUSED";
        let offsets = self.offsets.lock();
        let partitions = self.partitions.lock();
        m.partitions.reset();
        m.partitions_tracked.set(partitions.len() as i64);
        for (p, st) in partitions.iter() {
            let state = match st {
                PartitionState::Failed(_) => "failed",
                PartitionState::Stopped => "stopped",
                PartitionState::Running if paused => "paused",
                PartitionState::Running if offsets.get(p).is_none_or(|o| o.round <= 1) => {
                    "initial_sync"
                }
                PartitionState::Running => "running",
            };
            m.partitions
                .with_label_values(&[p.kind().as_str(), state])
                .inc();
            if per_partition {
                m.partition_state
                    .with_label_values(&[&p.to_json(), state])
                    .set(1);
            }
        }
    }
}

/// Runs a worker until `shutdown` completes or Kafka fails fatally.
pub async fn run(spec: WorkerSpec, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    let (_commands, rx) = tokio::sync::mpsc::channel(1);
    run_with_status(spec, Arc::new(WorkerStatus::default()), rx, shutdown).await
}

/// [`run`], reporting into `status`.
pub async fn run_with_status(
    spec: WorkerSpec,
    status: Arc<WorkerStatus>,
    mut commands: tokio::sync::mpsc::Receiver<Request>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    *status.connector.lock() = "RUNNING";
    tokio::pin!(shutdown);
    // 0. Kafka reachable (credentials, certificates): until it is, say why and wait.
    let mut attempt = 0u32;
    loop {
        let cfg = spec.sink.admin_config();
        let probe = tokio::task::spawn_blocking(move || {
            crate::sink::health::probe(&cfg, Duration::from_secs(10))
        })
        .await
        .map_err(|e| WorkerError::Internal(e.to_string()))?;
        let Err(why) = probe else { break };
        attempt += 1;
        let wait = Duration::from_secs(2u64.saturating_pow(attempt.min(5)).min(30));
        metrics::kafka_unreachable(&why, wait);
        *status.kafka_error.lock() = Some(why);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    *status.kafka_error.lock() = None;
    if let Some((parts, repl)) = spec.create_topics {
        ensure_topics(&spec.sink, parts, repl).await?;
    }
    // 1. Transactions first: fences an older worker with the same transactional.id.
    let sink_opts = spec.sink.clone();
    let health = status.kafka.clone();
    let (sink, committer) =
        tokio::task::spawn_blocking(move || Committer::start(sink_opts, health))
            .await
            .map_err(|e| WorkerError::Internal(e.to_string()))??;
    // 2. Then the committed offsets.
    let cfg = spec.sink.consumer_config();
    let (topic, name, timeout) = (
        spec.sink.offsets_topic.clone(),
        spec.sink.connector.clone(),
        spec.offsets_load_timeout,
    );
    let loaded = tokio::task::spawn_blocking(move || load_offsets(&cfg, &topic, &name, timeout))
        .await
        .map_err(|e| WorkerError::Internal(e.to_string()))??;
    status
        .offsets_loaded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    status
        .offsets
        .lock()
        .extend(loaded.iter().map(|(k, v)| (k.clone(), v.clone())));
    tracing::info!(offsets = loaded.len(), partitions = spec.partitions.len(), transactional_id = %spec.sink.transactional_id, "worker starting");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.client.max_concurrency.max(1))
        .build()
        .map_err(|e| WorkerError::Internal(format!("HTTP client: {e}")))?;
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        spec.token_url.clone(),
        spec.client_id.clone(),
        &default_scope_host(&spec.graph_host),
        spec.credential.clone(),
    ));
    let client = GraphClient::new(http, tokens, spec.client.clone());
    let shared = Arc::new(Shared {
        status,
        client,
        sink,
        paused: tokio::sync::watch::channel(false).0,
        tracked: Mutex::new(HashMap::new()),
        shutdown: CancellationToken::new(),
        fatal: Mutex::new(None),
        spec,
    });
    start_all(&shared);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
            _ = shared.shutdown.cancelled() => break,
            Some(req) = commands.recv() => {
                let answer = command(&shared, req.command).await;
                let _ = req.reply.send(answer);
            }
        }
    }
    shared.shutdown.cancel();
    // Give partition tasks a moment to drop their handles to the committer.
    for _ in 0..50 {
        if shared
            .tracked
            .lock()
            .values()
            .all(|t| *t.state.lock() != PartitionState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fatal = shared.fatal.lock().take();
    drop(shared);
    let joined = tokio::task::spawn_blocking(move || committer.join())
        .await
        .map_err(|e| WorkerError::Internal(e.to_string()))?;
    match (fatal, joined) {
        (Some(e), _) => Err(e.into()),
        (None, Ok(Ok(()))) => Ok(()),
        (None, Ok(Err(e))) => Err(e.into()),
        (None, Err(_)) => Err(WorkerError::Internal("committer thread panicked".into())),
    }
}

/// The scope's resource host: Graph's own host for the national clouds, else the given host.
fn default_scope_host(graph_host: &str) -> String {
    graph_host.trim_end_matches('/').to_string()
}

impl Shared {
    /// Whether a partition is tracked or has a committed offset.
    fn knows(&self, p: &PartitionId) -> bool {
        self.tracked.lock().contains_key(p) || self.status.offsets.lock().contains_key(p)
    }

    fn stopped(&self) -> bool {
        *self.status.connector.lock() == "STOPPED"
    }

    /// Cancels the given partitions and waits (a few seconds at most) until they ended.
    async fn halt(&self, ids: &[PartitionId]) {
        let states: Vec<Arc<Mutex<PartitionState>>> = {
            let tracked = self.tracked.lock();
            ids.iter()
                .filter_map(|p| tracked.get(p))
                .map(|t| {
                    t.cancel.cancel();
                    t.state.clone()
                })
                .collect()
        };
        for _ in 0..500 {
            if states.iter().all(|s| *s.lock() != PartitionState::Running) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts the configured partitions and the task partitions found in the offsets.
fn start_all(shared: &Arc<Shared>) {
    let mut start: Vec<PartitionId> = shared.spec.partitions.clone();
    let known: Vec<PartitionId> = shared.status.offsets.lock().keys().cloned().collect();
    for p in known {
        if let PartitionId::Tasks { user, .. } = &p {
            if start.contains(&PartitionId::TaskLists { user: user.clone() }) {
                start.push(p);
            }
        }
    }
    for p in start {
        spawn_partition(shared, p);
    }
}

/// Carries out an operator's command.
async fn command(shared: &Arc<Shared>, c: Command) -> Result<String, CommandError> {
    tracing::info!(command = ?c, "operator command");
    let all: Vec<PartitionId> = shared.tracked.lock().keys().cloned().collect();
    let need_stopped = || {
        if shared.stopped() {
            Ok(())
        } else {
            Err(CommandError::Conflict(
                "offsets can only be changed while the connector is STOPPED".into(),
            ))
        }
    };
    let failed = |e: SinkError| CommandError::Failed(e.to_string());
    match c {
        Command::Pause => {
            shared.paused.send_replace(true);
            *shared.status.connector.lock() = "PAUSED";
            Ok("paused".into())
        }
        Command::Resume => {
            shared.paused.send_replace(false);
            let was_stopped = shared.stopped();
            *shared.status.connector.lock() = "RUNNING";
            if was_stopped {
                start_all(shared);
            }
            Ok("resumed".into())
        }
        Command::Stop => {
            shared.halt(&all).await;
            shared.sink.flush().await.map_err(failed)?;
            shared.paused.send_replace(false);
            *shared.status.connector.lock() = "STOPPED";
            Ok("stopped".into())
        }
        Command::Restart {
            only_failed,
            partition,
        } => {
            if shared.stopped() {
                return Err(CommandError::Conflict(
                    "the connector is STOPPED: resume it".into(),
                ));
            }
            let targets: Vec<PartitionId> = {
                let tracked = shared.tracked.lock();
                tracked
                    .iter()
                    .filter(|(p, _)| partition.as_ref().is_none_or(|q| q == *p))
                    .filter(|(_, t)| {
                        !only_failed || matches!(*t.state.lock(), PartitionState::Failed(_))
                    })
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            if let Some(p) = &partition {
                if targets.is_empty() && !shared.knows(p) {
                    return Err(CommandError::NotFound(format!("no partition {p}")));
                }
            }
            shared.halt(&targets).await;
            for p in &targets {
                spawn_partition(shared, p.clone());
            }
            Ok(format!("restarted {} partitions", targets.len()))
        }
        Command::Resync { partition } => {
            let tracked = shared.tracked.lock();
            let mut n = 0;
            for (p, t) in tracked.iter() {
                if partition.as_ref().is_none_or(|q| q == p) {
                    t.resync.store(true, Ordering::SeqCst);
                    n += 1;
                }
            }
            if n == 0 {
                return Err(CommandError::NotFound("no such partition running".into()));
            }
            Ok(format!("resync requested for {n} partitions"))
        }
        Command::AlterOffsets(writes) => {
            need_stopped()?;
            shared
                .sink
                .write_offsets(writes.clone())
                .await
                .map_err(failed)?;
            let mut offsets = shared.status.offsets.lock();
            for (p, o) in writes {
                match o {
                    Some(o) => offsets.insert(p, o),
                    None => offsets.remove(&p),
                };
            }
            Ok("The offsets for this connector have been altered successfully".into())
        }
        Command::ResetOffsets => {
            need_stopped()?;
            let mut targets: std::collections::BTreeSet<PartitionId> =
                shared.status.offsets.lock().keys().cloned().collect();
            targets.extend(shared.spec.partitions.iter().cloned());
            let writes = targets.into_iter().map(|p| (p, None)).collect();
            shared.sink.write_offsets(writes).await.map_err(failed)?;
            shared.status.offsets.lock().clear();
            Ok("The offsets for this connector have been reset successfully".into())
        }
    }
}

fn spawn_partition(shared: &Arc<Shared>, id: PartitionId) {
    let mut tracked = shared.tracked.lock();
    if tracked
        .get(&id)
        .is_some_and(|t| *t.state.lock() == PartitionState::Running)
    {
        return;
    }
    let committed = shared.status.offsets.lock().get(&id).cloned();
    let id = Arc::new(id);
    let reader = match PartitionReader::new(id.clone(), &shared.spec.graph_host, committed) {
        Ok(r) => r,
        Err(e) => {
            metrics::partition_failed(&id, &e.to_string());
            return;
        }
    };
    let cancel = shared.shutdown.child_token();
    let state = Arc::new(Mutex::new(PartitionState::Running));
    let resync = Arc::new(AtomicBool::new(false));
    tracked.insert(
        (*id).clone(),
        Tracked {
            cancel: cancel.clone(),
            state: state.clone(),
            resync: resync.clone(),
        },
    );
    shared.status.set_state(&id, PartitionState::Running);
    shared
        .status
        .fresh_at
        .lock()
        .entry((*id).clone())
        .or_insert_with(std::time::Instant::now);
    let shared = shared.clone();
    let fut = async move {
        let mut reader = reader;
        let end = partition_loop(&shared, &mut reader, &cancel, &resync).await;
        // Where it stands is where it restarts (unless it was removed and reset meanwhile).
        if shared.tracked.lock().contains_key(&*id) {
            shared
                .status
                .offsets
                .lock()
                .insert((*id).clone(), reader.offset().clone());
        }
        shared.status.set_state(&id, end.clone());
        *state.lock() = end;
    };
    tokio::spawn(fut);
}

fn stop_partition(shared: &Shared, id: &PartitionId) {
    if let Some(t) = shared.tracked.lock().remove(id) {
        t.cancel.cancel();
    }
    shared.status.offsets.lock().remove(id);
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

fn jittered(base: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let f = 1.0 + rand::rng().random_range(-jitter..jitter);
    base.mul_f64(f.max(0.0))
}

async fn partition_loop(
    shared: &Arc<Shared>,
    reader: &mut PartitionReader,
    cancel: &CancellationToken,
    resync: &AtomicBool,
) -> PartitionState {
    let id = reader.id.clone();
    let mut failures = 0u32;
    let mut aborts = 0u32;
    let mut paused = shared.paused.subscribe();
    // Initial-sync progress, logged at most every 10 seconds.
    let (mut pages, mut records) = (0u64, 0u64);
    let mut last_progress = std::time::Instant::now();
    // The next page, fetched while the previous one was being committed (see below).
    let mut prefetched: Option<Result<crate::source::SourceBatch, GraphError>> = None;
    loop {
        if cancel.is_cancelled() {
            return PartitionState::Stopped;
        }
        // Paused: keep the place and wait.
        while *paused.borrow_and_update() {
            prefetched = None;
            tokio::select! {
                r = paused.changed() => if r.is_err() { return PartitionState::Stopped },
                _ = cancel.cancelled() => return PartitionState::Stopped,
            }
        }
        if resync.swap(false, Ordering::SeqCst) {
            metrics::resync(&id, "signal", "initial");
            reader.restart();
            prefetched = None;
        }
        let round = reader.offset().round;
        let fetched = match prefetched.take() {
            Some(r) => r,
            // Boxed, like the other large sub-futures below: a parked partition (10,000 of
            // them) then holds a small future instead of room for an HTTP request.
            None => tokio::select! {
                r = Box::pin(reader.next_batch(&shared.client)) => r,
                _ = cancel.cancelled() => return PartitionState::Stopped,
            },
        };
        let batch = match fetched {
            Ok(b) => {
                shared
                    .status
                    .graph_ok
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                b
            }
            // The list of a task partition is gone: stop tracking it and forget its offset.
            Err(GraphError::Client { status: 404, .. }) if id.kind() == PartitionKind::Tasks => {
                tracing::info!(partition = %id, "task list no longer exists; resetting its offset");
                let _ = Box::pin(shared.sink.write_offsets(vec![((*id).clone(), None)])).await;
                shared.tracked.lock().remove(&*id);
                return PartitionState::Stopped;
            }
            Err(e) if e.is_partition_fault() => {
                metrics::partition_failed(&id, &e.to_string());
                return PartitionState::Failed(e.to_string());
            }
            Err(e) => {
                // Throttled or failing past every retry, auth trouble: try again later,
                // from the same position.
                failures += 1;
                let wait = jittered(Duration::from_secs(5).saturating_mul(failures.min(12)), 0.2);
                tracing::warn!(partition = %id, error = %e, wait_secs = wait.as_secs(), "fetch failed; retrying later");
                if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                    return PartitionState::Stopped;
                }
                continue;
            }
        };
        failures = 0;
        let mut batch = batch;
        if let Some(seen) = batch.full_resync_seen.take() {
            match Box::pin(tombstones_after_full_resync(shared, &batch, &seen)).await {
                Ok(extra) => batch.records.extend(extra),
                // The same page is fetched again and the comparison retried.
                Err(e) => {
                    tracing::warn!(partition = %id, error = %e, "reading back keys after a full resync failed; retrying");
                    if !Box::pin(sleep_or_cancel(Duration::from_secs(1), cancel)).await {
                        return PartitionState::Stopped;
                    }
                    continue;
                }
            }
            if id.kind() == PartitionKind::TaskLists {
                for r in batch.records.iter().filter(|r| r.op == Op::Delete) {
                    batch.resets.push(Arc::new(PartitionId::Tasks {
                        user: id.user().to_string(),
                        list: r.id.clone(),
                    }));
                }
            }
        }
        let ids: Vec<(Op, String)> = batch.records.iter().map(|r| (r.op, r.id.clone())).collect();
        let offset = batch.offset.clone();
        let round_done = offset.round > round;
        if batch.records.is_empty() && batch.resets.is_empty() {
            if Box::pin(shared.sink.idle(id.clone(), offset.clone()))
                .await
                .is_err()
            {
                return PartitionState::Stopped;
            }
            reader.advance(offset, &ids);
        } else {
            let lists: Vec<(Op, String)> = if id.kind() == PartitionKind::TaskLists {
                ids.clone()
            } else {
                Vec::new()
            };
            // New lists get their task partition's first offset in this same transaction.
            for (op, list) in &lists {
                let p = PartitionId::Tasks {
                    user: id.user().to_string(),
                    list: list.clone(),
                };
                if *op == Op::Upsert && !shared.knows(&p) {
                    batch.starts.push(Arc::new(p));
                }
            }
            // Mid-round, the next page is fetched while this one commits, on a copy of the
            // reader that assumes the commit: a partition would otherwise wait a whole
            // transaction between pages. Nothing of it reaches the sink before the commit is
            // acknowledged; if the commit fails, it is dropped and the page refetched.
            let mut ahead = (!round_done).then(|| {
                let mut a = reader.clone();
                a.advance(offset.clone(), &ids);
                a
            });
            let (committed, next) = match ahead.as_mut() {
                Some(a) => {
                    let fetch = async {
                        tokio::select! {
                            r = a.next_batch(&shared.client) => Some(r),
                            _ = cancel.cancelled() => None,
                        }
                    };
                    Box::pin(async { tokio::join!(shared.sink.commit(batch), fetch) }).await
                }
                None => (Box::pin(shared.sink.commit(batch)).await, None),
            };
            match committed {
                Ok(()) => {
                    aborts = 0;
                    shared
                        .status
                        .offsets
                        .lock()
                        .insert((*id).clone(), offset.clone());
                    match (ahead, next) {
                        (Some(a), Some(next)) => {
                            *reader = a;
                            prefetched = Some(next);
                        }
                        _ => reader.advance(offset, &ids),
                    }
                    for (op, list) in lists {
                        let p = PartitionId::Tasks {
                            user: id.user().to_string(),
                            list,
                        };
                        match op {
                            Op::Upsert => spawn_partition(shared, p),
                            Op::Delete => stop_partition(shared, &p),
                        }
                    }
                }
                Err(SinkError::Aborted(why)) => {
                    // The position did not move: the same page is fetched again, after a
                    // backoff that grows while its transactions keep failing.
                    aborts += 1;
                    let wait = jittered(
                        Duration::from_millis(100)
                            .saturating_mul(1 << aborts.min(9))
                            .min(Duration::from_secs(30)),
                        0.2,
                    );
                    metrics::commit_retry(&id, aborts, wait, &why);
                    if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                        return PartitionState::Stopped;
                    }
                    continue;
                }
                Err(SinkError::Rejected(why)) => {
                    metrics::partition_failed(&id, &why);
                    return PartitionState::Failed(why);
                }
                Err(e) => {
                    if matches!(e, SinkError::Fatal(_)) {
                        *shared.fatal.lock() = Some(e);
                        shared.shutdown.cancel();
                    }
                    return PartitionState::Stopped;
                }
            }
        }
        {
            let mut rp = shared.status.round_pages.lock();
            let n = rp.entry((*id).clone()).or_default();
            *n = if round_done { 0 } else { *n + 1 };
        }
        if round == 1 {
            pages += 1;
            records += ids.len() as u64;
            if round_done || last_progress.elapsed() >= Duration::from_secs(10) {
                metrics::initial_sync_progress(&id, pages, records);
                last_progress = std::time::Instant::now();
            }
        }
        if round_done {
            let now = std::time::Instant::now();
            let age = shared
                .status
                .fresh_at
                .lock()
                .insert((*id).clone(), now)
                .map_or(Duration::ZERO, |t| now.duration_since(t));
            metrics::round_completed(&id, round, age);
            let wait = jittered(shared.spec.poll_interval, shared.spec.poll_jitter);
            if !Box::pin(sleep_or_cancel(wait, cancel)).await {
                return PartitionState::Stopped;
            }
        }
    }
}

/// After a full resync round: tombstones for the partition's keys in Kafka that the round
/// did not return (Graph reports no deletions in a full round).
async fn tombstones_after_full_resync(
    shared: &Arc<Shared>,
    batch: &crate::source::SourceBatch,
    seen: &std::collections::HashSet<String>,
) -> Result<Vec<crate::source::SourceRecord>, SinkError> {
    let p = batch.partition.clone();
    let opts = shared.spec.sink.clone();
    let topic = opts.topics.for_kind(p.kind()).to_string();
    let prefix = p.key_prefix();
    let live = tokio::task::spawn_blocking(move || {
        crate::sink::scan::live_keys(&opts, &topic, &prefix, Duration::from_secs(120))
    })
    .await
    .map_err(|e| SinkError::Aborted(e.to_string()))??;
    let n_live = live.len();
    let in_batch: std::collections::HashSet<&str> =
        batch.records.iter().map(|r| r.id.as_str()).collect();
    let mut out = Vec::new();
    for key in live {
        let Some(item) = crate::source::key_id(&key) else {
            continue;
        };
        if seen.contains(&item) || in_batch.contains(item.as_str()) {
            continue;
        }
        out.push(crate::source::SourceRecord {
            partition: p.clone(),
            key: key.into(),
            id: item,
            value: None,
            op: Op::Delete,
            round: batch
                .records
                .first()
                .map_or(batch.offset.round.saturating_sub(1), |r| r.round),
            removed_reason: Some("resync".into()),
            resync: true,
        });
    }
    tracing::info!(partition = %p, returned = seen.len(), in_kafka = n_live, tombstones = out.len(), "full resync complete; tombstoning the items it no longer returns");
    Ok(out)
}
