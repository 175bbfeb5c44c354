//! What the worker reports about itself: partition states, offsets, health, gauges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::metrics;
use crate::source::{PartitionId, SourceOffset};

/// A partition's state, as the REST API will report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    Running,
    Failed(String),
    Stopped,
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
    pub(super) fn set_state(&self, p: &PartitionId, st: PartitionState) {
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
