//! What the worker reports about itself: partition states, offsets, health, gauges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::Digest as _;

use super::health::Health;
use crate::metrics;
use crate::source::{PartitionId, SourceOffset};

/// The connector's state, as the REST API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectorState {
    /// The worker has not started yet.
    #[default]
    Unassigned,
    Running,
    /// Partitions keep their place and fetch nothing.
    Paused,
    /// Partitions ended with their offsets persisted; offsets may be changed.
    Stopped,
}

impl ConnectorState {
    /// The Kafka Connect name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorState::Unassigned => "UNASSIGNED",
            ConnectorState::Running => "RUNNING",
            ConnectorState::Paused => "PAUSED",
            ConnectorState::Stopped => "STOPPED",
        }
    }
}

/// A partition's task id in the REST API: the first 52 bits of the SHA-256 of its canonical
/// identity ([`PartitionId::to_json`]). It depends on nothing else, so it stays the same while
/// other partitions come and go, and it is a JSON number any client reads exactly (< 2^53).
pub fn task_id(p: &PartitionId) -> u64 {
    let digest = sha2::Sha256::digest(p.to_json().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 12
}

/// A partition's state, as the REST API will report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionState {
    Running,
    Failed(String),
    Stopped,
    /// Graph cannot serve the user (no Exchange Online mailbox, no To Do): the partition
    /// retries rarely, and is not counted as failing.
    Unassigned(String),
}

/// What the worker reports about itself (read by the HTTP server: status, readiness, offsets).
#[derive(Default)]
pub struct WorkerStatus {
    /// The offsets topic was read at start.
    pub offsets_loaded: std::sync::atomic::AtomicBool,
    /// Kafka's and Graph's health as last checked (what `/readyz` reads).
    pub health: Arc<Health>,
    /// Each partition's state. Here and below, keys are the partition's one shared
    /// identity (100,000 partitions, five maps: one copy of each identity, not five).
    pub partitions: Mutex<std::collections::BTreeMap<Arc<PartitionId>, PartitionState>>,
    /// Offsets as last committed by this worker (or read at start), or for a partition
    /// between rounds its last idle poll's (written at the committer's next heartbeat):
    /// where partitions (re)start from, and a parked partition's only copy.
    pub offsets: Mutex<std::collections::BTreeMap<Arc<PartitionId>, SourceOffset>>,
    /// The connector's other workers' REST APIs (and this one's), by worker id, as they
    /// advertised them in the control topic.
    pub peers: Mutex<std::collections::BTreeMap<String, String>>,
    /// Running, paused or stopped (unassigned until the worker starts).
    pub connector: Mutex<ConnectorState>,
    /// When each partition last completed a round (or started).
    pub fresh_at: Mutex<rustc_hash::FxHashMap<Arc<PartitionId>, std::time::Instant>>,
    /// Pages fetched in each partition's current round (none between rounds).
    pub round_pages: Mutex<rustc_hash::FxHashMap<Arc<PartitionId>, u64>>,
    /// Export per-partition series too.
    pub per_partition_metrics: AtomicBool,
    /// What the Kafka clients last reported about the connection.
    pub kafka: Arc<crate::sink::KafkaHealth>,
    /// Where the HTTP server hands Graph's change notifications.
    pub notifications: super::notifications::Inbox,
}

impl WorkerStatus {
    /// Why the worker is not ready, if it is not: the offsets not loaded yet, Kafka not
    /// reached within its window, Graph not answering. Reads state only (no I/O, no client):
    /// `/readyz` answers with it at once, however often it is asked.
    pub fn unready_reasons(&self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        let mut reasons = Vec::new();
        if !self.offsets_loaded.load(Ordering::SeqCst) {
            reasons.push(format!(
                "offsets not loaded yet (worker started {} s ago)",
                self.health.uptime(now).as_secs()
            ));
        }
        reasons.extend(self.health.kafka_problem(now));
        reasons.extend(self.health.graph_problem(now));
        reasons
    }

    /// Forgets what it knows of the partitions `gone` says (their shard went to another
    /// worker).
    pub(super) fn forget(&self, gone: impl Fn(&PartitionId) -> bool) {
        self.partitions.lock().retain(|p, _| !gone(p));
        self.fresh_at.lock().retain(|p, _| !gone(p));
        self.round_pages.lock().retain(|p, _| !gone(p));
    }

    pub(super) fn set_state(&self, p: &Arc<PartitionId>, st: PartitionState) {
        // An entry keeps its key: the identity it was first given.
        let mut states = self.partitions.lock();
        match states.get_mut(&**p) {
            Some(s) => *s = st,
            None => {
                states.insert(p.clone(), st);
            }
        }
    }

    /// Brings the gauges derived from partition states up to date (called before a scrape).
    pub fn refresh_metrics(&self) {
        let m = metrics::metrics();
        let now = std::time::Instant::now();
        let per_partition = self.per_partition_metrics.load(Ordering::Relaxed);
        let fresh = self.fresh_at.lock();
        // Membership partitions list their group every `membership_interval` (an hour by
        // default): their age would hide the data partitions' in the maximum.
        let stalest = fresh
            .iter()
            .filter(|(p, _)| p.kind() != crate::source::PartitionKind::GroupMembers)
            .map(|(_, t)| now.duration_since(*t).as_secs_f64())
            .fold(0.0, f64::max);
        m.staleness_max.set(stalest);
        if per_partition {
            m.partition_staleness.reset();
            m.partition_pages.reset();
            m.partition_state.reset();
            let pages = self.round_pages.lock();
            for (p, t) in fresh.iter() {
                let label = p.to_json();
                m.partition_staleness
                    .with_label_values(&[&label])
                    .set(now.duration_since(*t).as_secs_f64());
                let n = pages.get(p).copied().unwrap_or(0);
                m.partition_pages.with_label_values(&[&label]).set(n as i64);
            }
        }
        drop(fresh);
        let paused = *self.connector.lock() == ConnectorState::Paused;
        let offsets = self.offsets.lock();
        let partitions = self.partitions.lock();
        m.partitions.reset();
        m.partitions_tracked.set(partitions.len() as i64);
        for (p, st) in partitions.iter() {
            let state = match st {
                PartitionState::Failed(_) => "failed",
                PartitionState::Stopped => "stopped",
                PartitionState::Unassigned(_) => "unassigned",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(user: &str) -> PartitionId {
        PartitionId::TaskLists { user: user.into() }
    }

    #[test]
    fn task_ids_depend_on_the_partition_only() {
        let p = PartitionId::Tasks {
            user: "alice@contoso.com".into(),
            list: "AQMkADTaskList1".into(),
        };
        let id = task_id(&p);
        // A fixed function of the identity: the same in every process and release.
        assert_eq!(id, task_id(&p.clone()));
        assert!(id < 1 << 52, "exact as a JSON number");
        assert_eq!(
            task_id(&lists("alice@contoso.com")),
            0xb_d91d_e886_862b,
            "the first 52 bits of SHA-256 of the canonical identity"
        );
        // Others appearing or disappearing cannot move it: there is no position in it.
        let others: Vec<PartitionId> = (0..200).map(|i| lists(&format!("u{i}@x"))).collect();
        let mut ids: Vec<u64> = others.iter().map(task_id).collect();
        assert!(!ids.contains(&id));
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), others.len(), "distinct");
    }

    #[test]
    fn connector_states_keep_their_rest_names() {
        let names: Vec<&str> = [
            ConnectorState::Unassigned,
            ConnectorState::Running,
            ConnectorState::Paused,
            ConnectorState::Stopped,
        ]
        .into_iter()
        .map(ConnectorState::as_str)
        .collect();
        assert_eq!(names, ["UNASSIGNED", "RUNNING", "PAUSED", "STOPPED"]);
        assert_eq!(ConnectorState::default(), ConnectorState::Unassigned);
    }
}
