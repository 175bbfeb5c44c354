//! Configured users resolved to their object ids before their partitions start.
//!
//! Partition identities and record keys carry a user's object id, which never changes,
//! rather than the principal name the configuration may list, which does (a marriage, a
//! domain change): a renamed user keeps every key. Each configured user (a principal name
//! or an object id) is looked up once (`graph::users`), and its partitions start under the
//! id; the principal name travels beside it in a header. The answers are cached for the
//! worker's life: a restart command or a resume does not look users up again.
//!
//! A user the directory does not know (`404`), or that the app may not read (`403`), fails
//! its partitions with the reason (under their configured identity, since they have no
//! other); the other users go on. Graph not answering is retried, with a growing backoff,
//! until it does or the worker stops.
//!
//! The cached answer is asked again when a mailbox answers `404 ErrorInvalidUser` (Exchange
//! does not know the account: deleted, [`moved`]): a configured principal name now naming
//! another account moves its partitions to that account's id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::graph::users::{lookup, DirectoryUser};
use crate::graph::GraphError;
use crate::metrics;
use crate::source::PartitionId;

use super::partition::{jittered, sleep_or_cancel};
use super::supervisor::{spawn_partition, Start};
use super::{PartitionState, Shared};

/// Starts the configured partitions (resolving their users first) and the task partitions
/// found in the offsets of their users' To Do lists; `unresolved_only`: only those of users
/// not resolved yet (a restart retries them).
pub(super) fn start_configured(shared: &Arc<Shared>, unresolved_only: bool) {
    let mut by_user: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
    for p in &shared.spec.partitions {
        by_user
            .entry(p.user().to_string())
            .or_default()
            .push(p.clone());
    }
    for (user, parts) in by_user {
        let known = shared.directory.lock().get(&key(&user)).cloned();
        match known {
            Some(_) if unresolved_only => {}
            Some(found) => start_user(shared, &found, &parts),
            None => {
                let s = shared.clone();
                let mut tasks = shared.tasks.lock();
                // Checked under the lock shutdown takes the set with (see `supervisor.rs`).
                if shared.shutdown.is_cancelled() {
                    return;
                }
                tasks.spawn(async move { resolve_and_start(&s, user, parts).await });
            }
        }
    }
}

/// Whether `p` is a configured partition whose user could not be resolved; if so, its user
/// is looked up again (a restart of its task).
pub(super) fn retry_unresolved(shared: &Arc<Shared>, p: &PartitionId) -> bool {
    let unresolved =
        shared.spec.partitions.contains(p) && !shared.directory.lock().contains_key(&key(p.user()));
    if unresolved {
        let parts: Vec<PartitionId> = shared
            .spec
            .partitions
            .iter()
            .filter(|q| q.user() == p.user())
            .cloned()
            .collect();
        let (s, user) = (shared.clone(), p.user().to_string());
        shared
            .tasks
            .lock()
            .spawn(async move { resolve_and_start(&s, user, parts).await });
    }
    unresolved
}

/// The configured partitions as they run: under their user's object id once resolved.
pub(super) fn configured(shared: &Shared) -> Vec<PartitionId> {
    let dir = shared.directory.lock();
    shared
        .spec
        .partitions
        .iter()
        .map(|p| match dir.get(&key(p.user())) {
            Some(found) => p.with_user(&found.id),
            None => p.clone(),
        })
        .collect()
}

/// Whether every configured user is resolved (their partitions known by object id).
pub(super) fn settled(shared: &Shared) -> bool {
    let dir = shared.directory.lock();
    shared
        .spec
        .partitions
        .iter()
        .all(|p| dir.contains_key(&key(p.user())))
}

/// The user's principal name, by object id, once resolved.
pub(super) fn principal(shared: &Shared, id: &str) -> Option<Arc<str>> {
    shared.principals.lock().get(id).cloned()
}

/// Configured names compare without case, as Graph compares principal names.
fn key(user: &str) -> String {
    user.to_ascii_lowercase()
}

async fn resolve_and_start(shared: &Arc<Shared>, user: String, parts: Vec<PartitionId>) {
    let mut failures = 0u32;
    loop {
        let found = tokio::select! {
            r = resolve(shared, &user) => r,
            _ = shared.shutdown.cancelled() => return,
        };
        // Graph's health (`/readyz`) hears of lookups as of any other request.
        let health = &shared.status.health.graph;
        match &found {
            Ok(_) => health.succeeded(),
            Err(e) if e.is_service_failure() => health.failed(e.to_string()),
            Err(_) => {}
        }
        match found {
            Ok(found) => {
                shared.directory.lock().insert(key(&user), found.clone());
                start_user(shared, &found, &parts);
                // Group members can be told from listed users now (`groups.rs`).
                if settled(shared) {
                    super::groups::reconcile(shared);
                }
                return;
            }
            Err(e) if e.is_partition_fault() => {
                let why = format!("user '{user}' could not be resolved to an object id: {e}");
                for p in &parts {
                    metrics::partition_failed(p, &why);
                    shared
                        .status
                        .set_state(&Arc::new(p.clone()), PartitionState::Failed(why.clone()));
                }
                return;
            }
            Err(e) => {
                failures += 1;
                let wait = jittered(Duration::from_secs(5).saturating_mul(failures.min(60)), 0.2);
                metrics::user_lookup_retry(&user, &e.to_string(), wait);
                if !sleep_or_cancel(wait, &shared.shutdown).await {
                    return;
                }
            }
        }
    }
}

/// `p`'s mailbox answered `404 ErrorInvalidUser`: if its user was configured by principal
/// name and that name now belongs to another account (the old one deleted, the name given to
/// a new one), the name's partitions move to the new account's id: the old id's partitions
/// stop (their records and offsets stay, under the old id), the new one's start. Returns
/// whether they moved (then `p`'s task ends); `false` leaves `p` to its usual handling.
pub(super) async fn moved(shared: &Arc<Shared>, p: &PartitionId) -> bool {
    let old = p.user().to_string();
    let name = shared
        .directory
        .lock()
        .iter()
        .find(|(name, u)| u.id == old && name.contains('@'))
        .map(|(name, _)| name.clone());
    let Some(name) = name else { return false };
    let found = match lookup(&shared.client, &shared.spec.graph_host, &name).await {
        Ok(found) if found.id != old => found,
        _ => return false,
    };
    metrics::user_moved(&name, &old, &found.id);
    shared.directory.lock().insert(name.clone(), found.clone());
    let parts: Vec<PartitionId> = shared
        .spec
        .partitions
        .iter()
        .filter(|q| key(q.user()) == name)
        .cloned()
        .collect();
    let stale: Vec<Arc<PartitionId>> = shared
        .tracked
        .lock()
        .keys()
        .filter(|q| q.user() == old && &***q != p)
        .cloned()
        .collect();
    let s = shared.clone();
    shared.tasks.lock().spawn(async move {
        s.halt("user moved", stale.iter().map(|q| &**q)).await;
        for q in &stale {
            s.status.set_state(q, PartitionState::Stopped);
        }
        start_user(&s, &found, &parts);
    });
    true
}

/// Looks `user` up; a name the directory does not know may be a renamed user's old name: the
/// offsets remember which id last read under it, and that id is looked up instead.
async fn resolve(shared: &Shared, user: &str) -> Result<DirectoryUser, GraphError> {
    let host = &shared.spec.graph_host;
    match lookup(&shared.client, host, user).await {
        Err(e @ GraphError::Client { status: 404, .. }) if user.contains('@') => {
            let id = shared
                .status
                .offsets
                .lock()
                .iter()
                .find(|(_, o)| {
                    o.principal
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(user))
                })
                .map(|(p, _)| p.user().to_string());
            let Some(id) = id else {
                return Err(e);
            };
            let found = lookup(&shared.client, host, &id).await?;
            metrics::user_renamed(
                user,
                found.user_principal_name.as_deref().unwrap_or(&found.id),
                &found.id,
            );
            Ok(found)
        }
        r => r,
    }
}

/// Starts `parts` (configured under `found`'s name or id) under `found`'s object id, with the
/// task partitions the offsets know for its To Do lists.
fn start_user(shared: &Arc<Shared>, found: &DirectoryUser, parts: &[PartitionId]) {
    let principal: Arc<str> = found
        .user_principal_name
        .as_deref()
        .unwrap_or(&found.id)
        .into();
    shared
        .principals
        .lock()
        .insert(found.id.clone(), principal.clone());
    let ids: Vec<PartitionId> = parts.iter().map(|p| p.with_user(&found.id)).collect();
    // A name that failed to resolve before (shown `FAILED` under it) now runs under the id.
    {
        let mut states = shared.status.partitions.lock();
        for (p, id) in parts.iter().zip(&ids) {
            if p != id {
                states.remove(p);
            }
        }
    }
    let lists = ids
        .iter()
        .any(|p| matches!(p, PartitionId::TaskLists { .. }));
    let tasks: Vec<PartitionId> = if lists {
        PartitionId::tasks_of(&shared.status.offsets.lock(), &found.id)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    metrics::user_resolved(&found.id, &principal, ids.len() + tasks.len());
    for p in ids.into_iter().chain(tasks) {
        spawn_partition(shared, p, Start::Spread);
    }
}
