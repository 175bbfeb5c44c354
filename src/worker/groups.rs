//! Group sources: each group's membership partition, and its members' partitions.
//!
//! The membership partition's batches say which members' partitions start, run and reset
//! (`graph::members`); the partition loop carries that out as for To Do lists. What is
//! left here: starting the membership partitions and, at start, the members' partitions
//! the offsets know (a member's partitions must not wait for the next listing, an hour
//! away by default); the principal names the listing gives, for the records' header; and
//! what a departed member's reset adds to the transaction.

use std::collections::HashSet;
use std::sync::Arc;

use crate::graph::members::Members;
use crate::graph::users::DirectoryUser;
use crate::metrics;
use crate::source::{PartitionId, SourceBatch};

use super::supervisor::spawn_partition;
use super::Shared;

/// The partitions group `group`'s sources give each member (see `config::GroupSource`).
pub(super) fn templates(shared: &Shared, group: &str) -> Vec<PartitionId> {
    shared
        .spec
        .groups
        .iter()
        .filter(|g| g.group == group)
        .flat_map(|g| g.templates.iter().cloned())
        .collect()
}

/// Starts each group's membership partition, and the members' partitions found in the
/// offsets (with the task partitions of their To Do lists), as task partitions found in
/// the offsets are started for configured users.
pub(super) fn start_groups(shared: &Arc<Shared>) {
    let groups = &shared.spec.groups;
    if groups.is_empty() {
        return;
    }
    let all: Vec<PartitionId> = groups.iter().flat_map(|g| g.templates.clone()).collect();
    // Only asked which partitions are members' (any user): no knowledge to seed.
    let members = Members::new(all).with_listed(&super::directory::configured(shared));
    let resumed: Vec<PartitionId> = {
        let offsets = shared.status.offsets.lock();
        let mut principals = shared.principals.lock();
        let owned: Vec<&PartitionId> = offsets.keys().filter(|p| members.owns(p)).collect();
        // A member's To Do lists partition brings its task partitions.
        let lists: HashSet<&str> = owned
            .iter()
            .filter(|p| matches!(p, PartitionId::TaskLists { .. }))
            .map(|p| p.user())
            .collect();
        let tasks = offsets.keys().filter(
            |p| matches!(p, PartitionId::Tasks { user, .. } if lists.contains(user.as_str())),
        );
        for p in &owned {
            if let Some(name) = offsets.get(*p).and_then(|o| o.principal.as_deref()) {
                principals
                    .entry(p.user().to_string())
                    .or_insert_with(|| name.into());
            }
        }
        owned
            .iter()
            .map(|p| (*p).clone())
            .chain(tasks.cloned())
            .collect()
    };
    metrics::members_resumed(groups.len(), resumed.len());
    for g in groups {
        spawn_partition(
            shared,
            PartitionId::GroupMembers {
                group: g.group.clone(),
            },
        );
    }
    for p in resumed {
        spawn_partition(shared, p);
    }
}

/// The principal names of the members a listing page carries (`userPrincipalName`), for
/// the header of their partitions' records; a member without one goes without.
pub(super) fn learn_principals(shared: &Shared, batch: &SourceBatch) {
    let mut principals = shared.principals.lock();
    for r in &batch.records {
        let Some(raw) = &r.value else { continue };
        if let Ok(DirectoryUser {
            id,
            user_principal_name: Some(name),
            ..
        }) = serde_json::from_slice::<DirectoryUser>(raw)
        {
            if principals.get(&id).is_none_or(|n| **n != *name) {
                principals.insert(id, name.into());
            }
        }
    }
}

/// A membership batch's departed members: their To Do lists' task partitions (running or
/// with an offset) are reset with their other partitions, and all of them are halted before
/// the commit so that none commits after its reset. Returns whether their records are to be
/// tombstoned (`on_member_removed = "tombstone"`, the caller's part). With `keep` their
/// reconciliation state is kept too, so a member who comes back is read from scratch
/// against it (unchanged items write nothing).
pub(super) async fn departed(shared: &Arc<Shared>, batch: &mut SourceBatch) -> bool {
    let tombstone = match &*batch.partition {
        PartitionId::GroupMembers { group } => shared
            .spec
            .groups
            .iter()
            .any(|g| g.group == *group && g.tombstone),
        _ => false,
    };
    let joined = batch
        .starts
        .iter()
        .map(|p| p.user())
        .collect::<HashSet<_>>()
        .len();
    if batch.resets.is_empty() {
        if joined > 0 {
            metrics::membership_changed(&batch.partition, joined, 0);
        }
        return tombstone;
    }
    // Their own partitions first: a To Do list partition halted mid-commit has started the
    // task partitions that commit names by the time it ends, so none can escape the list
    // gathered below (found by `group_crash`: a list found while its member left kept its
    // tasks live).
    shared
        .halt("member removed", batch.resets.iter().map(|p| &**p))
        .await;
    let users: HashSet<String> = batch
        .resets
        .iter()
        .filter(|p| matches!(***p, PartitionId::TaskLists { .. }))
        .map(|p| p.user().to_string())
        .collect();
    let is_task =
        |p: &PartitionId| matches!(p, PartitionId::Tasks { user, .. } if users.contains(user));
    let mut tasks: Vec<PartitionId> = shared
        .tracked
        .lock()
        .keys()
        .filter(|p| is_task(p))
        .cloned()
        .collect();
    tasks.extend(
        shared
            .status
            .offsets
            .lock()
            .keys()
            .filter(|p| is_task(p))
            .cloned(),
    );
    tasks.sort();
    tasks.dedup();
    shared.halt("member removed", tasks.iter()).await;
    batch.resets.extend(tasks.into_iter().map(Arc::new));
    let left: HashSet<&str> = batch.resets.iter().map(|p| p.user()).collect();
    metrics::membership_changed(&batch.partition, joined, left.len());
    tombstone
}
