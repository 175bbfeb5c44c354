//! Operator commands that reach every worker of the connector (issue 14): the worker an
//! operator asked carries out its part and writes the command to the control topic
//! (`sink::control`), which every worker follows; each carries out its own part, for the
//! partitions of the shards it owns. Pause, resume and stop are target states instead
//! (`control.rs`): they are kept, not replayed.
//!
//! - a restart (all, only the failed, or one task) and a resync (all, or one partition):
//!   each worker restarts or resyncs those it runs;
//! - offsets changed (`PATCH`/`DELETE …/offsets`, while stopped): the asked worker wrote
//!   them to the offsets topic; each reads its shards' offsets again before it resumes.
//!
//! A command names the worker it came from, which does not carry it out twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::sink::control as control_topic;
use crate::source::PartitionId;

use super::commands::{Restart, Resync};
use super::control::CommandError;
use super::Shared;

/// A command for every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    Restart(Restart),
    Resync(Resync),
    /// Offsets were written while the connector was stopped: owners read theirs again.
    OffsetsChanged,
}

impl Broadcast {
    /// The command as the control topic carries it, sent by worker `from`.
    pub fn to_json(&self, from: &str) -> Value {
        match self {
            Broadcast::Restart(Restart::All { only_failed }) => {
                json!({"from": from, "restart": {"only_failed": only_failed}})
            }
            Broadcast::Restart(Restart::Task(id)) => json!({"from": from, "restart": {"task": id}}),
            Broadcast::Resync(Resync { partition: Some(p) }) => {
                let p: Value = serde_json::from_str(&p.to_json()).unwrap_or_default();
                json!({"from": from, "resync": {"partition": p}})
            }
            Broadcast::Resync(Resync { partition: None }) => {
                json!({"from": from, "resync": {"all": true}})
            }
            Broadcast::OffsetsChanged => json!({"from": from, "offsets_changed": true}),
        }
    }

    /// A command read from the control topic, with the worker it came from; `None` for one
    /// this version does not know (a newer worker's: left alone).
    pub fn from_json(v: &Value) -> Option<(String, Broadcast)> {
        let from = v.get("from")?.as_str()?.to_string();
        let b = if let Some(r) = v.get("restart") {
            match r.get("task").and_then(Value::as_u64) {
                Some(id) => Broadcast::Restart(Restart::Task(id)),
                None => Broadcast::Restart(Restart::All {
                    only_failed: r.get("only_failed")?.as_bool()?,
                }),
            }
        } else if let Some(r) = v.get("resync") {
            Broadcast::Resync(Resync::from_body(r).ok()?)
        } else if v.get("offsets_changed") == Some(&Value::Bool(true)) {
            Broadcast::OffsetsChanged
        } else {
            return None;
        };
        Some((from, b))
    }
}

/// Writes `b` to the control topic for the other workers.
pub(super) async fn publish(shared: &Arc<Shared>, b: Broadcast) -> Result<(), CommandError> {
    let value = b.to_json(&shared.spec.sharding.worker_id);
    let (cfg, topic, name) = (
        shared.spec.sink.plain_producer_config(),
        shared.spec.sharding.control_topic.clone(),
        shared.spec.sink.connector.clone(),
    );
    tokio::task::spawn_blocking(move || {
        control_topic::publish_command(&cfg, &topic, &name, &value, Duration::from_secs(30))
    })
    .await
    .map_err(|e| CommandError::Failed(e.to_string()))?
    .map_err(|e| CommandError::Failed(e.to_string()))
}

/// Whether another worker may own some partitions: this one does not own every shard.
pub(super) fn others(shared: &Shared) -> bool {
    shared.sinks.owned().len() < shared.spec.sharding.shards as usize
}

/// Whether `p` is another worker's (its shard is not this one's).
pub(super) fn elsewhere(shared: &Shared, p: &PartitionId) -> bool {
    !shared.sinks.owns(p)
}

/// Carries out a command another worker wrote (this worker's part of it).
pub(super) async fn apply(shared: &Arc<Shared>, v: Value) {
    let Some((from, b)) = Broadcast::from_json(&v) else {
        tracing::warn!(command = %v, "a command of the control topic this worker does not know");
        return;
    };
    if from == shared.spec.sharding.worker_id {
        return;
    }
    tracing::info!(command = ?b, from, "command from another worker");
    let r = match b {
        Broadcast::Restart(r) => super::control::restart_here(shared, r).await,
        Broadcast::Resync(r) => super::control::resync_here(shared, r),
        Broadcast::OffsetsChanged => super::ownership::reload_offsets(shared)
            .await
            .map(|n| format!("{n} offsets read again"))
            .map_err(|e| CommandError::Failed(e.to_string())),
    };
    match r {
        Ok(done) => tracing::info!(from, done, "command carried out"),
        // Not this worker's partition: its owner carries it out.
        Err(CommandError::NotFound(_)) => {}
        Err(e) => tracing::warn!(from, error = %e, "command from another worker failed here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_as_written_and_unknown_ones_are_left() {
        let p = PartitionId::CalendarList { user: "u1".into() };
        for b in [
            Broadcast::Restart(Restart::All { only_failed: true }),
            Broadcast::Restart(Restart::Task(42)),
            Broadcast::Resync(Resync { partition: Some(p) }),
            Broadcast::Resync(Resync { partition: None }),
            Broadcast::OffsetsChanged,
        ] {
            let v = b.to_json("w2");
            assert_eq!(Broadcast::from_json(&v), Some(("w2".into(), b)), "{v}");
        }
        assert_eq!(
            Broadcast::from_json(&json!({"from": "w9", "rebalance": {}})),
            None
        );
        assert_eq!(Broadcast::from_json(&json!({"restart": {"task": 1}})), None);
    }
}
