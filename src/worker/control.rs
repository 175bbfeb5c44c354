//! Operator commands from the REST API, applied: one function per command, behind a short
//! dispatch. The commands themselves and how they are read from requests: `commands.rs`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::sink::control::{self as control_topic, TargetState};
use crate::sink::offsets_store::write_offsets;
use crate::sink::SinkError;
use crate::source::{PartitionId, SourceOffset};

use super::broadcast::{self, Broadcast};
use super::commands::{AlterOffsets, Command, Restart, Resync};
use super::status::{task_id, ConnectorState};
use super::supervisor::{spawn_partition, start_all, Start};
use super::{PartitionState, Shared, Tracked};

/// An operator's request (from the REST API), answered on `reply`.
pub struct Request {
    pub command: Command,
    pub reply: tokio::sync::oneshot::Sender<Result<String, CommandError>>,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It cannot be carried out in the connector's state or as asked (answered `400`, as
    /// Connect does; never `409`, which Connect clients retry as "rebalance in progress").
    #[error("{0}")]
    BadRequest(String),
    /// No such task or partition (`404`).
    #[error("{0}")]
    NotFound(String),
    /// The worker failed to carry it out (`500`).
    #[error("{0}")]
    Failed(String),
}

/// Carries out an operator's command.
pub(super) async fn command(shared: &Arc<Shared>, c: Command) -> Result<String, CommandError> {
    tracing::info!(command = ?c, "operator command");
    match c {
        Command::Pause => set_target(shared, TargetState::Paused).await,
        Command::Resume => set_target(shared, TargetState::Running).await,
        Command::Stop => set_target(shared, TargetState::Stopped).await,
        Command::Restart(r) => restart(shared, r).await,
        Command::Resync(r) => resync(shared, r).await,
        Command::AlterOffsets(a) => alter_offsets(shared, a).await,
        Command::ResetOffsets => reset_offsets(shared).await,
    }
}

fn failed(e: SinkError) -> CommandError {
    CommandError::Failed(e.to_string())
}

/// Offsets change only while the connector is stopped (Connect's words and status).
fn need_stopped(shared: &Shared) -> Result<(), CommandError> {
    if shared.stopped() {
        Ok(())
    } else {
        Err(CommandError::BadRequest(format!(
            "Connectors must be in the STOPPED state before their offsets can be modified: PUT /connectors/{}/stop first",
            shared.spec.sink.connector
        )))
    }
}

/// Pause, resume, stop: written to the control topic first, so that every worker of the
/// connector (each follows the topic) and any started later carry it out, then carried out
/// here.
async fn set_target(shared: &Arc<Shared>, t: TargetState) -> Result<String, CommandError> {
    let (cfg, topic, name) = (
        shared.spec.sink.plain_producer_config(),
        shared.spec.sharding.control_topic.clone(),
        shared.spec.sink.connector.clone(),
    );
    tokio::task::spawn_blocking(move || {
        control_topic::publish(&cfg, &topic, &name, t, Duration::from_secs(30))
    })
    .await
    .map_err(|e| CommandError::Failed(e.to_string()))?
    .map_err(failed)?;
    apply_target(shared, t).await
}

/// Carries a target state out on this worker (from an operator here, or from the control
/// topic); doing it twice changes nothing.
pub(super) async fn apply_target(
    shared: &Arc<Shared>,
    t: TargetState,
) -> Result<String, CommandError> {
    let r = match t {
        TargetState::Paused => Ok(pause(shared)),
        TargetState::Running => Ok(resume(shared)),
        TargetState::Stopped => stop(shared).await,
    };
    if let Err(e) = &r {
        tracing::warn!(target = ?t, error = %e, "carrying out the connector's target state");
    }
    r
}

fn pause(shared: &Shared) -> String {
    shared.paused.send_replace(true);
    *shared.status.connector.lock() = ConnectorState::Paused;
    "paused".into()
}

fn resume(shared: &Arc<Shared>) -> String {
    shared.paused.send_replace(false);
    let was_stopped = shared.stopped();
    *shared.status.connector.lock() = ConnectorState::Running;
    if was_stopped {
        start_all(shared);
    } else {
        // Members who left while paused depart now (`groups.rs`).
        super::groups::reconcile(shared);
    }
    "resumed".into()
}

async fn stop(shared: &Shared) -> Result<String, CommandError> {
    let all: Vec<PartitionId> = shared
        .tracked
        .lock()
        .keys()
        .map(|p| (**p).clone())
        .collect();
    shared.halt("stop", &all).await;
    shared.sinks.flush().await.map_err(failed)?;
    shared.paused.send_replace(false);
    *shared.status.connector.lock() = ConnectorState::Stopped;
    Ok("stopped".into())
}

/// A restart asked here: this worker's part, and every other worker's through the control
/// topic (a task id this worker does not know may be another's).
async fn restart(shared: &Arc<Shared>, r: Restart) -> Result<String, CommandError> {
    if !broadcast::others(shared) {
        return restart_here(shared, r).await;
    }
    let here = match restart_here(shared, r.clone()).await {
        Ok(done) => done,
        // Another worker's task, or none: its owner, if any, says so in its log.
        Err(CommandError::NotFound(_)) if matches!(r, Restart::Task(_)) => {
            "not a task of this worker".into()
        }
        Err(e) => return Err(e),
    };
    let task = matches!(r, Restart::Task(_));
    broadcast::publish(shared, Broadcast::Restart(r)).await?;
    Ok(match task {
        true => format!("{here}; sent to every worker for the one that runs it"),
        false => format!("{here} here; sent to every worker"),
    })
}

/// A restart's part on this worker: the partitions it runs.
pub(super) async fn restart_here(shared: &Arc<Shared>, r: Restart) -> Result<String, CommandError> {
    let (only_failed, partition) = match r {
        Restart::All { only_failed } => (only_failed, None),
        Restart::Task(id) => (false, Some(partition_of_task(shared, id)?)),
    };
    if shared.stopped() {
        return Err(CommandError::BadRequest(format!(
            "the connector is STOPPED: resume it first (PUT /connectors/{}/resume)",
            shared.spec.sink.connector
        )));
    }
    let targets: Vec<PartitionId> = {
        let tracked = shared.tracked.lock();
        let states = shared.status.partitions.lock();
        let failed = |p: &PartitionId| matches!(states.get(p), Some(PartitionState::Failed(_)));
        tracked
            .keys()
            .filter(|p| partition.as_ref().is_none_or(|q| q == &***p))
            .filter(|p| !only_failed || failed(p))
            .map(|p| (**p).clone())
            .collect()
    };
    if let Some(p) = &partition {
        if targets.is_empty() && super::directory::retry_unresolved(shared, p) {
            return Ok("restarted 1 partitions".into());
        }
        if targets.is_empty() && !shared.knows(p) {
            return Err(CommandError::NotFound(format!("no partition {p}")));
        }
    }
    shared.halt("restart", &targets).await;
    for p in &targets {
        spawn_partition(shared, p.clone(), Start::Now);
    }
    // Users that could not be resolved have no task to restart: look them up again.
    if partition.is_none() {
        super::directory::start_configured(shared, true);
    }
    Ok(format!("restarted {} partitions", targets.len()))
}

/// The partition a task id names, among those the status endpoint lists (where ids are
/// read from).
fn partition_of_task(shared: &Shared, id: u64) -> Result<PartitionId, CommandError> {
    let matching: Vec<PartitionId> = shared
        .status
        .partitions
        .lock()
        .keys()
        .filter(|p| task_id(p) == id)
        .map(|p| (**p).clone())
        .collect();
    match <[PartitionId; 1]>::try_from(matching) {
        Ok([p]) => Ok(p),
        Err(m) if m.is_empty() => Err(CommandError::NotFound(format!("no task {id}"))),
        // Two identities sharing 52 bits of a hash: name the partition instead.
        Err(_) => Err(CommandError::BadRequest(format!(
            "task id {id} names more than one partition: use the connector restart or a resync by partition"
        ))),
    }
}

/// A resync asked here: of one partition, by its owner (this worker, or another through the
/// control topic); of every partition, by every worker.
async fn resync(shared: &Arc<Shared>, r: Resync) -> Result<String, CommandError> {
    match &r.partition {
        Some(p) if broadcast::elsewhere(shared, p) => {
            let (p, shard) = (p.clone(), shared.sinks.router.shard(p));
            broadcast::publish(shared, Broadcast::Resync(r)).await?;
            Ok(format!(
                "partition {p} is in shard {shard}, another worker's: resync sent to it"
            ))
        }
        Some(_) => resync_here(shared, r),
        None if broadcast::others(shared) => {
            let here = resync_here(shared, r.clone()).unwrap_or_else(|_| "nothing".into());
            broadcast::publish(shared, Broadcast::Resync(r)).await?;
            Ok(format!("{here} here; sent to every worker"))
        }
        None => resync_here(shared, r),
    }
}

/// A resync's part on this worker: the partitions it runs.
pub(super) fn resync_here(shared: &Shared, r: Resync) -> Result<String, CommandError> {
    let mut tracked = shared.tracked.lock();
    let mut n = 0;
    for (p, t) in tracked.iter_mut() {
        if r.partition.as_ref().is_none_or(|q| q == &**p) {
            match t {
                Tracked::Task(h) => h.resync.store(true, Ordering::SeqCst),
                // Woken now, to restart its round at once, as a running one would.
                Tracked::Parked(parked) => {
                    parked.resync = true;
                    let now = tokio::time::Instant::now();
                    parked.seq = shared.scheduler.schedule(p.clone(), now);
                }
                Tracked::Ended => {}
            }
            n += 1;
        }
    }
    if n == 0 {
        return Err(CommandError::NotFound("no such partition running".into()));
    }
    Ok(format!("resync requested for {n} partitions"))
}

/// `PATCH …/offsets` (while stopped), whatever shards they are in: written to the offsets
/// topic here, then every worker reads its shards' offsets again (see [`change_offsets`]).
async fn alter_offsets(shared: &Arc<Shared>, a: AlterOffsets) -> Result<String, CommandError> {
    need_stopped(shared)?;
    let AlterOffsets(writes) = a;
    super::links::check_writes(&shared.spec.graph_host, &writes)?;
    change_offsets(shared, writes).await?;
    Ok("The offsets for this connector have been altered successfully".into())
}

/// `DELETE …/offsets` (while stopped): every partition with an offset in the topic, and
/// every configured one, is reset, whichever worker owns it.
async fn reset_offsets(shared: &Arc<Shared>) -> Result<String, CommandError> {
    need_stopped(shared)?;
    let all = super::ownership::all_offsets(shared)
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let mut targets: BTreeSet<PartitionId> = all.into_keys().collect();
    targets.extend(shared.status.offsets.lock().keys().map(|p| (**p).clone()));
    targets.extend(super::directory::configured(shared));
    change_offsets(shared, targets.into_iter().map(|p| (p, None)).collect()).await?;
    Ok("The offsets for this connector have been reset successfully".into())
}

/// Writes offset changes outside any shard's transaction (the connector is stopped: no
/// shard commits), then has every worker, this one included, read its shards' offsets
/// again before it resumes. Writing through a shard's transactional producer would fence
/// its owner.
async fn change_offsets(
    shared: &Arc<Shared>,
    writes: Vec<(PartitionId, Option<SourceOffset>)>,
) -> Result<(), CommandError> {
    let (cfg, topic, name) = (
        shared.spec.sink.plain_producer_config(),
        shared.spec.sink.offsets_topic.clone(),
        shared.spec.sink.connector.clone(),
    );
    tokio::task::spawn_blocking(move || {
        write_offsets(&cfg, &topic, &name, &writes, Duration::from_secs(30))
    })
    .await
    .map_err(|e| CommandError::Failed(e.to_string()))?
    .map_err(failed)?;
    if broadcast::others(shared) {
        broadcast::publish(shared, Broadcast::OffsetsChanged).await?;
    }
    super::ownership::reload_offsets(shared)
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    Ok(())
}
