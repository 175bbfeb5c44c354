//! Starting and stopping partition tasks.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::graph::PartitionReader;
use crate::metrics;
use crate::source::PartitionId;

use super::partition::partition_loop;
use super::{PartitionState, Shared, Tracked};

/// Starts the configured partitions and the task partitions found in the offsets.
pub(super) fn start_all(shared: &Arc<Shared>) {
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

pub(super) fn spawn_partition(shared: &Arc<Shared>, id: PartitionId) {
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

pub(super) fn stop_partition(shared: &Shared, id: &PartitionId) {
    if let Some(t) = shared.tracked.lock().remove(id) {
        t.cancel.cancel();
    }
    shared.status.offsets.lock().remove(id);
}
