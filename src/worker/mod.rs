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
//! - `spec.rs`: settings → [`WorkerSpec`].
//! - `status.rs`: [`WorkerStatus`], partition states and the gauges derived from them.
//! - `control.rs`: operator commands.
//! - `supervisor.rs`: starting and stopping partition tasks.
//! - `partition.rs`: a partition's loop.

mod control;
mod partition;
mod spec;
mod status;
mod supervisor;

pub use control::{Command, CommandError, Request};
pub use spec::WorkerSpec;
pub use status::{PartitionState, WorkerStatus};

use control::command;
use supervisor::start_all;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::graph::{GraphClient, GraphError, TokenProvider};
use crate::metrics;
use crate::sink::offsets_store::load_offsets;
use crate::sink::topics::ensure_topics;
use crate::sink::{Committer, SinkError, SinkHandle};
use crate::source::PartitionId;

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

struct Tracked {
    cancel: CancellationToken,
    state: Arc<Mutex<PartitionState>>,
    /// Set by a resync signal: the partition restarts its round from scratch.
    resync: Arc<AtomicBool>,
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
