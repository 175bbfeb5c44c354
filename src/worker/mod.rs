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
//!
//! Partition tasks are owned by the worker (a `JoinSet`), never detached: shutdown cancels
//! them and waits until they have ended, at most `worker.shutdown_timeout`, before the
//! committer stops.
//!
//! - `spec.rs`: settings → [`WorkerSpec`].
//! - `status.rs`: [`WorkerStatus`], partition and connector states, task ids, the gauges.
//! - `commands.rs`: operator commands, each read from its REST request.
//! - `control.rs`: applying operator commands.
//! - `links.rs`: offsets' links checked against their partition's route (from the offsets
//!   topic at start, from `PATCH …/offsets`).
//! - `directory.rs`: configured users resolved to object ids before their partitions start.
//! - `groups.rs`: group sources: membership partitions, and members' partitions started and
//!   departed as the members topic says.
//! - `supervisor.rs`: starting and stopping partition tasks.
//! - `partition.rs`: a partition's loop.
//! - `reconcile.rs`: a page reconciled with its partition's live items before its commit
//!   (what is left out, what a round from scratch or a removed list tombstones).
//! - `notifications.rs`, `subscriptions.rs`: change notifications (issue 16): what Graph
//!   posts, as triggers of rounds; each notified partition's subscription.
//! - `health.rs`: what `/readyz` reads, and the background Kafka check that keeps it current
//!   (a task of the same `JoinSet`, ended by the same shutdown).

mod broadcast;
mod commands;
mod control;
mod directory;
mod eventhub;
mod groups;
mod health;
mod links;
mod notifications;
mod ownership;
mod partition;
mod reconcile;
mod scheduler;
mod sinks;
mod spec;
mod status;
mod subscriptions;
mod supervisor;

pub use commands::{AlterOffsets, BadRequest, Command, Restart, RestartQuery, Resync};
pub use control::{CommandError, Request};
pub use health::{Check, Health, Windows};
pub use notifications::{Inbox, InboxError, Received};
pub use spec::{NotificationSpec, Sharding, WorkerSpec};
pub use status::{task_id, ConnectorState, PartitionState, WorkerStatus};

use control::command;
use supervisor::stop_all;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::graph::{GraphClient, GraphError, TokenProvider};
use crate::metrics;
use crate::sink::control::{self as control_topic, Control};
use crate::sink::membership::{shard_count, Membership, MembershipOptions, ShardEvent};
use crate::sink::topics::{ensure_shards_topic, ensure_topics};
use crate::sink::SinkError;
use crate::source::PartitionId;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Offsets(#[from] crate::sink::offsets_store::OffsetStoreError),
    #[error("Graph setup: {0}")]
    Graph(#[from] GraphError),
    /// A blocking step (Kafka probe, committer start or stop, offsets load) did not finish.
    #[error("worker task panicked or was cancelled")]
    Join(#[from] tokio::task::JoinError),
    #[error("building the HTTP client for Graph")]
    HttpClient(#[source] reqwest::Error),
    #[error("the committer thread panicked: {0}")]
    CommitterPanicked(String),
    /// The shards topic and `worker.shards` disagree.
    #[error("{0}")]
    Shards(String),
}

/// A partition this worker runs, or ran (its state is the status's).
enum Tracked {
    /// A task runs it.
    Task(Arc<TaskHandle>),
    /// Between polls, without a task (`scheduler.rs`).
    Parked(scheduler::Parked),
    /// Its task ended (halted, failed, stopped): a command starts it again.
    Ended,
}

/// What halting, resyncing and the task itself share of a running partition.
struct TaskHandle {
    cancel: CancellationToken,
    /// Set by a resync signal: the partition restarts its round from scratch.
    resync: AtomicBool,
    /// Set by a change notification: the partition polls again as soon as its round ends.
    poked: AtomicBool,
    /// Cancelled once the task has ended (returned, panicked or aborted).
    ended: CancellationToken,
}

impl Tracked {
    /// The partition runs: its task has not ended yet, or it is parked.
    fn alive(&self) -> bool {
        match self {
            Tracked::Task(h) => !h.ended.is_cancelled(),
            Tracked::Parked(_) => true,
            Tracked::Ended => false,
        }
    }
}

/// What every partition task shares.
struct Shared {
    status: Arc<WorkerStatus>,
    client: GraphClient,
    /// The committers of the shards this worker owns (`sinks.rs`).
    sinks: sinks::Sinks,
    spec: WorkerSpec,
    /// `true` while the connector is paused.
    paused: tokio::sync::watch::Sender<bool>,
    tracked: Mutex<rustc_hash::FxHashMap<Arc<PartitionId>, Tracked>>,
    /// Parked partitions' due times (`scheduler.rs`).
    scheduler: scheduler::Scheduler,
    /// Every partition task (see `supervisor.rs`) and the health check (`health.rs`).
    tasks: Mutex<JoinSet<()>>,
    shutdown: CancellationToken,
    /// Set when the sink failed fatally: the worker must stop with an error.
    fatal: Mutex<Option<SinkError>>,
    /// Shards whose producer another worker fenced (see `ownership::fenced`).
    fenced: tokio::sync::mpsc::UnboundedSender<u32>,
    /// Each partition's live items (see `reconcile.rs`).
    states: reconcile::States,
    /// Configured users (lowercase) as the directory answered them (see `directory.rs`).
    directory: Mutex<HashMap<String, crate::graph::users::DirectoryUser>>,
    /// Principal names by object id, for the records' header.
    principals: Mutex<HashMap<String, Arc<str>>>,
    /// Each group's members (see `groups.rs`); held while they are carried out.
    roster: tokio::sync::Mutex<groups::Roster>,
    /// Change notifications' subscriptions, when `[notifications]` is on.
    subscriptions: Option<Arc<subscriptions::Subscriptions>>,
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
    *status.connector.lock() = ConnectorState::Running;
    status.health.set_windows(spec.readiness);
    tokio::pin!(shutdown);
    // 0. Kafka reachable (credentials, certificates): until it is, say why and wait.
    let mut attempt = 0u32;
    loop {
        let cfg = spec.sink.admin_config();
        let probe = tokio::task::spawn_blocking(move || {
            crate::sink::health::probe(&cfg, Duration::from_secs(10))
        })
        .await?;
        let Err(why) = probe else { break };
        attempt += 1;
        let wait = Duration::from_secs(2u64.saturating_pow(attempt.min(5)).min(30));
        metrics::kafka_unreachable(&why, wait);
        status.health.kafka.failed(why);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    status.health.kafka.succeeded();
    if let Some((parts, repl)) = spec.create_topics {
        ensure_topics(&spec.sink, parts, repl).await?;
        let sh = &spec.sharding;
        ensure_shards_topic(&spec.sink, &sh.topic, sh.shards, &sh.control_topic, repl).await?;
    }
    // 1. The shards topic must say as many shards as this worker: all workers must agree.
    let (cfg, topic) = (spec.sink.consumer_config(), spec.sharding.topic.clone());
    let found = tokio::task::spawn_blocking(move || {
        // A topic just created may take a moment to appear in the metadata.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match shard_count(&cfg, &topic, Duration::from_secs(10)) {
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                r => break r,
            }
        }
    })
    .await??;
    if found != spec.sharding.shards {
        return Err(WorkerError::Shards(format!(
            "kafka.shards_topic '{}' has {found} partitions but worker.shards is {}: every worker of a connector must use as many shards as its shards topic has partitions (give a new topic to change the count)",
            spec.sharding.topic, spec.sharding.shards
        )));
    }
    // 2. The connector's target state, as an operator last set it through any worker.
    let (cfg, topic, name, timeout) = (
        spec.sink.consumer_config(),
        spec.sharding.control_topic.clone(),
        spec.sink.connector.clone(),
        spec.offsets_load_timeout,
    );
    let start = tokio::task::spawn_blocking(move || {
        control_topic::read_start(&cfg, &topic, &name, timeout)
    })
    .await??;
    let (target, next) = (start.target, start.next);
    *status.peers.lock() = start.workers;
    let (targets_tx, mut targets) = tokio::sync::mpsc::unbounded_channel();
    let follower = control_topic::follow(
        &spec.sink.consumer_config(),
        &spec.sharding.control_topic,
        &spec.sink.connector,
        next,
        targets_tx,
    )?;
    advertise(&spec, spec.sharding.advertised_url.clone()).await;
    tracing::info!(partitions = spec.partitions.len(), shards = spec.sharding.shards, worker_id = %spec.sharding.worker_id, "worker starting");

    let http = crate::graph::http::client(&spec.client).map_err(WorkerError::HttpClient)?;
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        spec.token_url.clone(),
        spec.client_id.clone(),
        &default_scope_host(&spec.graph_host),
        spec.credential.clone(),
        &spec.client,
    ));
    let client = GraphClient::new(http, tokens, spec.client.clone());
    let sinks = sinks::Sinks::new(&spec, status.kafka.clone());
    let (fenced_tx, mut fenced) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        status,
        client,
        sinks,
        paused: tokio::sync::watch::channel(false).0,
        tracked: Mutex::default(),
        scheduler: scheduler::Scheduler::new(
            spec.client.max_concurrency * crate::graph::batch::MAX_BATCH,
        ),
        tasks: Mutex::new(JoinSet::new()),
        shutdown: CancellationToken::new(),
        fatal: Mutex::new(None),
        fenced: fenced_tx,
        states: reconcile::States::default(),
        directory: Mutex::new(HashMap::new()),
        principals: Mutex::new(HashMap::new()),
        roster: tokio::sync::Mutex::new(groups::Roster::default()),
        subscriptions: spec
            .notifications
            .clone()
            .map(|n| Arc::new(subscriptions::Subscriptions::new(n))),
        spec,
    });
    // Should this future be dropped half-way, the tasks (which hold `shared`) go too.
    let abort_tasks = AbortTasksOnDrop(Arc::downgrade(&shared));
    supervisor::spawn_task(&shared, scheduler::run(shared.clone()));
    if let Some(subs) = &shared.subscriptions {
        let inbox = shared
            .status
            .notifications
            .open(subs.spec.client_state.expose(), {
                let known = subs.clone();
                Arc::new(move |id: &str| known.partition_of(id).is_some())
            });
        supervisor::spawn_task(&shared, notifications::run(shared.clone(), inbox));
        supervisor::spawn_task(&shared, subscriptions::run(shared.clone()));
        if let Some(hub) = shared.spec.notification_hub.clone() {
            supervisor::spawn_task(&shared, eventhub::run(shared.clone(), hub));
        }
    }
    // Every worker follows each group's membership (its shards may hold any member's).
    let members = groups::follow(&shared)?;
    if let Some(t) = target {
        let _ = control::apply_target(&shared, t).await;
    }
    // 3. Join the workers' group: the shards it assigns start (`ownership.rs`).
    let sh = &shared.spec.sharding;
    let opts = MembershipOptions {
        group: sh.group.clone(),
        topic: sh.topic.clone(),
        worker_id: sh.worker_id.clone(),
        session_timeout: sh.session_timeout,
        revoke_timeout: shared.spec.shutdown_timeout + Duration::from_secs(30),
    };
    let cfg = shared.spec.sink.consumer_config();
    let (membership, mut shard_events) =
        tokio::task::spawn_blocking(move || Membership::start(cfg, opts)).await??;
    start_health_check(&shared);
    let mut failed: Option<WorkerError> = None;
    let (rechecks_tx, mut rechecks) = tokio::sync::mpsc::unbounded_channel::<u32>();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
            _ = shared.shutdown.cancelled() => break,
            Some(event) = shard_events.recv() => match event {
                ShardEvent::Assigned(shards) => {
                    if let Err(e) = ownership::assigned(&shared, &shards).await {
                        failed = Some(e);
                        break;
                    }
                }
                ShardEvent::Revoked { shards, lost, done } => {
                    ownership::revoked(&shared, &shards, lost).await;
                    let _ = done.send(());
                }
                ShardEvent::Failed(why) => {
                    failed = Some(WorkerError::Shards(why));
                    break;
                }
            },
            Some(n) = fenced.recv() => {
                if ownership::fenced(&shared, n).await {
                    let (tx, wait) = (rechecks_tx.clone(), sh.session_timeout);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(n);
                    });
                }
            }
            Some(n) = rechecks.recv() => ownership::recheck(&shared, n, &membership),
            Some(c) = targets.recv() => match c {
                Control::Target(t) => {
                    let _ = control::apply_target(&shared, t).await;
                }
                Control::Command(v) => broadcast::apply(&shared, v).await,
                Control::Worker { id, url } => {
                    let mut peers = shared.status.peers.lock();
                    match url {
                        Some(url) => peers.insert(id, url),
                        None => peers.remove(&id),
                    };
                }
            },
            Some(req) = commands.recv() => {
                let answer = command(&shared, req.command).await;
                let _ = req.reply.send(answer);
            }
        }
    }
    // Subscriptions outlive a stop: the restarted worker (or another) reuses them.
    if let Some(subs) = &shared.subscriptions {
        subs.hand_over(|_| true);
    }
    shared.shutdown.cancel();
    shared.status.notifications.close();
    // In-flight commits are waited for; tasks still there after the timeout are aborted, so
    // that none holds a committer's handle any more.
    stop_all(&shared, shared.spec.shutdown_timeout).await;
    let fatal = shared.fatal.lock().take();
    drop(abort_tasks);
    // The committers commit what they hold and stop; then the group hears this worker
    // leave (its shards revoked: nothing left to do), and the others take them.
    let closed = shared.sinks.close_all().await;
    drop(shard_events);
    drop(follower);
    drop(members);
    tokio::task::spawn_blocking(move || membership.stop()).await?;
    if shared.spec.sharding.advertised_url.is_some() {
        advertise(&shared.spec, None).await;
    }
    match (failed, fatal, closed) {
        (Some(e), _, _) => Err(e),
        (None, Some(e), _) => Err(e.into()),
        (None, None, Ok(())) => Ok(()),
        (None, None, Err(e)) => Err(e.into()),
    }
}

/// Says in the control topic where this worker's REST API is (`None`: it left), if it
/// serves one; a failure costs only the others' view of its partitions.
async fn advertise(spec: &WorkerSpec, url: Option<String>) {
    let Some(own) = spec.sharding.advertised_url.clone() else {
        return;
    };
    let (cfg, topic, name, id) = (
        spec.sink.plain_producer_config(),
        spec.sharding.control_topic.clone(),
        spec.sink.connector.clone(),
        spec.sharding.worker_id.clone(),
    );
    let left = url.is_none();
    let r = tokio::task::spawn_blocking(move || {
        control_topic::publish_worker(
            &cfg,
            &topic,
            &name,
            &id,
            url.as_deref(),
            Duration::from_secs(10),
        )
    })
    .await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(url = %own, left, "advertised the REST API to the other workers")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "advertising the REST API to the other workers"),
        Err(e) => tracing::warn!(error = %e, "advertising the REST API to the other workers"),
    }
}

/// Starts the background health check in the worker's `JoinSet`: the shutdown that ends the
/// partition tasks ends it too.
fn start_health_check(shared: &Shared) {
    let mut tasks = shared.tasks.lock();
    // Checked under the lock shutdown takes the set with, like a partition task's start.
    if shared.shutdown.is_cancelled() {
        return;
    }
    let interval = shared.spec.health_interval;
    let probe = health::KafkaCheck::new(
        shared.spec.sink.admin_config(),
        health::probe_timeout(interval),
    );
    tasks.spawn(health::run(
        shared.status.health.clone(),
        probe,
        interval,
        shared.shutdown.child_token(),
    ));
}

/// Aborts the partition tasks when dropped, unless they are already gone.
struct AbortTasksOnDrop(Weak<Shared>);

impl Drop for AbortTasksOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.tasks.lock().abort_all();
        }
    }
}

/// The message a panic carried, if it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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

    /// `p` no longer runs here: its change notifications' subscription goes.
    fn released(&self, p: &PartitionId) {
        if let Some(s) = &self.subscriptions {
            s.release(p);
        }
    }

    /// How long `p` waits for its next poll: longer when Graph notifies of its changes.
    fn poll_interval_of(&self, p: &PartitionId) -> Duration {
        match &self.subscriptions {
            Some(s) if s.covers(p) => s.spec.poll_interval,
            _ => self.spec.poll_interval,
        }
    }

    fn stopped(&self) -> bool {
        *self.status.connector.lock() == ConnectorState::Stopped
    }

    /// Cancels the given partitions and waits until their tasks ended (in-flight commits
    /// included), at most `worker.shutdown_timeout`; `command` says what halts them.
    async fn halt<'a>(&self, command: &str, ids: impl IntoIterator<Item = &'a PartitionId>) {
        let ended: Vec<CancellationToken> = {
            let mut tracked = self.tracked.lock();
            let mut ended = Vec::new();
            for p in ids {
                let Some((p, t)) = tracked.get_key_value(p) else {
                    continue;
                };
                match t {
                    Tracked::Task(h) => {
                        h.cancel.cancel();
                        ended.push(h.ended.clone());
                    }
                    // No task to wait for: its position is in the status already.
                    Tracked::Parked(_) => {
                        let p = p.clone();
                        self.status.set_state(&p, PartitionState::Stopped);
                        self.released(&p);
                        tracked.insert(p, Tracked::Ended);
                    }
                    Tracked::Ended => {}
                }
            }
            ended
        };
        let timeout = self.spec.shutdown_timeout;
        let all = futures_util::future::join_all(ended.iter().map(|e| e.cancelled()));
        if tokio::time::timeout(timeout, all).await.is_err() {
            let pending = ended.iter().filter(|e| !e.is_cancelled()).count();
            metrics::halt_timed_out(command, pending, timeout);
        }
    }
}
