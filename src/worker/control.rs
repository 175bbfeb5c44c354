//! Operator commands from the REST API: pause, resume, stop, restart, resync, offsets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::sink::SinkError;
use crate::source::PartitionId;

use super::supervisor::{spawn_partition, start_all};
use super::{PartitionState, Shared};

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

/// Carries out an operator's command.
pub(super) async fn command(shared: &Arc<Shared>, c: Command) -> Result<String, CommandError> {
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
