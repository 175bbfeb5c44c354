//! Group sources: each group's membership partition, and its members' partitions.
//!
//! A group's membership partition lists the group (`graph::members`) and writes each member
//! as a record of the members topic, in its shard (the group's). That topic's compacted
//! view is the membership. The members' partitions are their users' like any other
//! (`sinks.rs`): a large group spreads over the shards, and so over the workers. Each worker
//! carries out what the view says for the shards it owns:
//!
//! - it follows the members topic (`read_committed`, [`follow`]) into a [`Roster`];
//! - a member who appears has its partitions started;
//! - a member who disappears has its partitions halted, then, in one transaction of their
//!   shard, their offsets reset and (`on_member_removed = "tombstone"`) their records
//!   tombstoned (`member-removed`) and their reconciliation state removed ([`depart`]).
//!   With `"keep"` their records and state stay, so a member who comes back is read from
//!   scratch against it (unchanged items write nothing);
//! - once the roster has caught up with the topic, at each shard assignment and when the
//!   connector resumes, the owned shards are reconciled with it ([`reconcile`]): a member's
//!   partitions start; a partition of a group's templates whose user is no member (of any
//!   group giving it) departs.
//!
//! The member's tombstone and its partitions' departure are two transactions (two shards):
//! a crash between them is what the reconciliation at the shard's next start catches. Until
//! then a consumer sees the member gone and its records still there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use crate::graph::members::Members;
use crate::graph::users::DirectoryUser;
use crate::metrics;
use crate::sink::tail::{tail, Follower, Tailed};
use crate::sink::SinkError;
use crate::source::{key_id, PartitionId, PartitionKind, SourceBatch, SourceOffset};

use super::partition::{jittered, sleep_or_cancel};
use super::reconcile::tombstone_all;
use super::supervisor::{spawn_partition, spawn_task, stop_partition, Start};
use super::Shared;

/// Departures carried out side by side (each a transaction of its user's shard).
const DEPARTURES_AT_ONCE: usize = 16;

/// Each group's members (object ids), as the members topic says.
#[derive(Debug, Default)]
pub(super) struct Roster {
    members: HashMap<String, HashSet<String>>,
    /// The topic was read to its end: until then nothing is started or departed.
    ready: bool,
}

/// A group source's partitions for each member, with its policy.
struct Source {
    group: String,
    members: Members,
    tombstone: bool,
}

/// The group sources, listed users left out (their partitions are theirs).
fn sources(shared: &Shared) -> Vec<Source> {
    let listed = super::directory::configured(shared);
    shared
        .spec
        .groups
        .iter()
        .map(|g| Source {
            group: g.group.clone(),
            members: Members::new(g.templates.clone()).with_listed(&listed),
            tombstone: g.tombstone,
        })
        .collect()
}

fn membership_partition(group: &str) -> PartitionId {
    PartitionId::GroupMembers {
        group: group.to_string(),
    }
}

/// Starts following the members topic (none without group sources); the roster's changes
/// are carried out by a task of the worker's set. Stops when the follower is dropped.
pub(super) fn follow(shared: &Arc<Shared>) -> Result<Option<Follower>, SinkError> {
    let groups = &shared.spec.groups;
    if groups.is_empty() {
        return Ok(None);
    }
    let prefixes = groups
        .iter()
        .map(|g| membership_partition(&g.group).key_prefix().to_vec())
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = &shared.spec.sink;
    let follower = tail(
        &opts.consumer_config(),
        opts.topics.for_kind(PartitionKind::GroupMembers),
        &format!("{}-members", opts.connector),
        prefixes,
        shared.spec.offsets_load_timeout,
        tx,
    )?;
    let s = shared.clone();
    spawn_task(shared, async move { watch(s, rx).await });
    Ok(Some(follower))
}

/// Applies what the members topic says, a burst at a time.
async fn watch(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Tailed>) {
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = shared.shutdown.cancelled() => return,
        };
        let mut burst = vec![first];
        while burst.len() < 10_000 {
            match rx.try_recv() {
                Ok(m) => burst.push(m),
                Err(_) => break,
            }
        }
        let mut roster = shared.roster.lock().await;
        let (touched, caught_up) = apply(&shared, &mut roster, burst);
        if caught_up && !roster.ready {
            roster.ready = true;
            let groups = roster.members.len();
            let n = carry_out(&shared, &roster, None).await;
            metrics::members_resumed(groups, n);
        } else if roster.ready && !touched.is_empty() {
            carry_out(&shared, &roster, Some(touched)).await;
        }
    }
}

/// Moves the roster by `burst`; returns the users whose membership changed and whether the
/// topic was read to its end. Learns the members' principal names (`userPrincipalName`),
/// for the header of their partitions' records.
fn apply(shared: &Shared, roster: &mut Roster, burst: Vec<Tailed>) -> (HashSet<String>, bool) {
    let (mut touched, mut caught_up) = (HashSet::new(), false);
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for m in burst {
        let (key, value) = match m {
            Tailed::CaughtUp => {
                caught_up = true;
                continue;
            }
            Tailed::Record { key, value } => (key, value),
        };
        // Parsed once; the group is the one whose key this is exactly.
        let Some(id) = key_id(&key) else { continue };
        let Some(group) = shared.spec.groups.iter().find_map(|g| {
            (membership_partition(&g.group).record_key(&id)[..] == key[..]).then(|| g.group.clone())
        }) else {
            continue;
        };
        let members = roster.members.entry(group.clone()).or_default();
        let changed = match &value {
            Some(v) => {
                learn_principal(shared, v);
                members.insert(id.clone())
            }
            None => members.remove(&id),
        };
        if changed && roster.ready {
            let c = counts.entry(group).or_default();
            match value {
                Some(_) => c.0 += 1,
                None => c.1 += 1,
            }
            touched.insert(id);
        }
    }
    for (group, (joined, left)) in counts {
        metrics::membership_changed(&membership_partition(&group), joined, left);
    }
    (touched, caught_up)
}

fn learn_principal(shared: &Shared, value: &[u8]) {
    if let Ok(DirectoryUser {
        id,
        user_principal_name: Some(name),
        ..
    }) = serde_json::from_slice::<DirectoryUser>(value)
    {
        let mut principals = shared.principals.lock();
        if principals.get(&id).is_none_or(|n| **n != *name) {
            principals.insert(id, name.into());
        }
    }
}

/// Starts each group's membership partition, and reconciles the owned shards with the
/// roster (a task of the worker's set): at start, at a shard assignment, at a resume.
pub(super) fn start_groups(shared: &Arc<Shared>) {
    for g in &shared.spec.groups {
        spawn_partition(shared, membership_partition(&g.group), Start::Spread);
    }
    reconcile(shared);
}

/// Reconciles the owned shards with the roster (see the module docs), once it is ready.
pub(super) fn reconcile(shared: &Arc<Shared>) {
    if shared.spec.groups.is_empty() {
        return;
    }
    let s = shared.clone();
    spawn_task(shared, async move {
        let roster = s.roster.lock().await;
        if roster.ready {
            carry_out(&s, &roster, None).await;
        }
    });
}

/// Carries the roster out for `users` (`None`: every member, and every user with a group
/// partition running or with an offset): members' partitions of owned shards start,
/// others' depart. Returns how many partitions it started. Nothing while the connector is
/// stopped, and no departure (a write) while it is paused: the resume reconciles.
async fn carry_out(shared: &Arc<Shared>, roster: &Roster, users: Option<HashSet<String>>) -> usize {
    if shared.stopped() {
        return 0;
    }
    let sources = sources(shared);
    let whole = users.is_none();
    let users = users.unwrap_or_else(|| {
        let mut all: HashSet<String> = roster.members.values().flatten().cloned().collect();
        all.extend(known_group_partitions(shared, &sources).map(|p| p.user().to_string()));
        all
    });
    // The task partitions the offsets know, by user: a member's To Do lists bring theirs.
    let mut tasks: HashMap<String, Vec<PartitionId>> = HashMap::new();
    for p in shared.status.offsets.lock().keys() {
        if let PartitionId::Tasks { user, .. } = &**p {
            tasks.entry(user.clone()).or_default().push((**p).clone());
        }
    }
    let mut started = 0;
    let mut departing: Vec<(String, Vec<PartitionId>, bool)> = Vec::new();
    for user in users {
        let (mut wanted, mut unwanted) = (HashSet::new(), HashSet::new());
        let mut tombstone = false;
        for s in &sources {
            let member = roster
                .members
                .get(&s.group)
                .is_some_and(|m| m.contains(&user));
            for p in s.members.of(&user).filter(|p| shared.sinks.owns(p)) {
                if member {
                    wanted.insert(p);
                } else {
                    tombstone |= s.tombstone;
                    unwanted.insert(p);
                }
            }
        }
        for p in &wanted {
            let theirs = match p {
                PartitionId::TaskLists { .. } => tasks.get(&user).map_or(&[][..], Vec::as_slice),
                _ => &[],
            };
            started += start_member_partition(shared, p, theirs);
        }
        let gone: Vec<PartitionId> = unwanted
            .into_iter()
            .filter(|p| !wanted.contains(p) && shared.knows(p))
            .collect();
        if !gone.is_empty() {
            departing.push((user, gone, tombstone));
        }
    }
    // A configured user not resolved yet cannot be told from a member (its partitions are
    // listed by name): a whole reconciliation departs nothing until all are (the last one
    // resolved reconciles again, `directory.rs`).
    if *shared.paused.borrow() {
        return started;
    }
    if whole && !super::directory::settled(shared) {
        tracing::debug!(
            users = departing.len(),
            "configured users not resolved yet; departures left to a later reconciliation"
        );
        return started;
    }
    futures_util::stream::iter(departing)
        .for_each_concurrent(DEPARTURES_AT_ONCE, |(user, ps, tombstone)| async move {
            depart(shared, &user, ps, tombstone).await;
        })
        .await;
    started
}

/// Partitions of the group sources' templates, of owned shards, running or with an offset.
fn known_group_partitions<'a>(
    shared: &'a Shared,
    sources: &'a [Source],
) -> impl Iterator<Item = PartitionId> + 'a {
    let mut known: HashSet<PartitionId> = shared
        .tracked
        .lock()
        .keys()
        .map(|p| (**p).clone())
        .collect();
    known.extend(shared.status.offsets.lock().keys().map(|p| (**p).clone()));
    known.into_iter().filter(|p| {
        !matches!(p, PartitionId::GroupMembers { .. })
            && shared.sinks.owns(p)
            && sources.iter().any(|s| s.members.owns(p))
    })
}

/// Starts a member's partition (if not running) and the task partitions `tasks` (its To Do
/// lists' in the offsets). Returns how many started.
fn start_member_partition(shared: &Arc<Shared>, p: &PartitionId, tasks: &[PartitionId]) -> usize {
    std::iter::once(p)
        .chain(tasks)
        .filter(|p| spawn_partition(shared, (*p).clone(), Start::Spread))
        .count()
}

/// A departed member's partitions of one shard (`ps`): halted (so that none commits after
/// its reset), with the task partitions of its To Do lists; then, in one transaction, their
/// offsets reset and, with `tombstone`, a tombstone for each of their live records and the
/// removal of their state. An aborted transaction is tried again; a shard given up
/// meanwhile is left to its next owner's reconciliation.
async fn depart(shared: &Arc<Shared>, user: &str, ps: Vec<PartitionId>, tombstone: bool) {
    // Its own partitions first: a To Do lists partition halted mid-commit has started the
    // task partitions that commit names by the time it ends, so none can escape the list
    // gathered below (found by `group_crash`: a list found while its member left kept its
    // tasks live).
    shared.halt("member removed", ps.iter()).await;
    let mut all = ps;
    if all
        .iter()
        .any(|p| matches!(p, PartitionId::TaskLists { .. }))
    {
        let is_task =
            |p: &PartitionId| matches!(p, PartitionId::Tasks { user: u, .. } if u == user);
        let mut tasks: HashSet<PartitionId> = shared
            .tracked
            .lock()
            .keys()
            .filter(|p| is_task(p))
            .map(|p| (**p).clone())
            .collect();
        tasks.extend(
            shared
                .status
                .offsets
                .lock()
                .keys()
                .filter(|p| is_task(p))
                .map(|p| (**p).clone()),
        );
        shared.halt("member removed", tasks.iter()).await;
        all.extend(tasks);
    }
    let all: Vec<Arc<PartitionId>> = all.into_iter().map(Arc::new).collect();
    let shard = shared.sinks.router.shard(&all[0]);
    let mut attempts = 0u32;
    loop {
        if shared.shutdown.is_cancelled() || !all.iter().all(|p| shared.sinks.owns(p)) {
            return;
        }
        let why = match commit_departure(shared, &all, tombstone).await {
            Ok(()) => {
                metrics::member_departed(user, all.len(), tombstone);
                return;
            }
            Err(Departure::Retry(why)) => why,
            Err(Departure::Sink(SinkError::Fenced(_))) => {
                let _ = shared.fenced.send(shard);
                return;
            }
            Err(Departure::Sink(e)) => {
                tracing::warn!(user, shard, error = %e, "a departed member's partitions could not be reset; its shard's next owner will");
                return;
            }
        };
        attempts += 1;
        let wait = jittered(
            Duration::from_millis(200).saturating_mul(1 << attempts.min(8)),
            0.2,
        );
        tracing::warn!(user, attempts, wait_ms = wait.as_millis() as u64, error = %why, "resetting a departed member's partitions failed; retrying");
        if !sleep_or_cancel(wait, &shared.shutdown).await {
            return;
        }
    }
}

enum Departure {
    /// Reading keys back, or an aborted transaction.
    Retry(String),
    Sink(SinkError),
}

/// The departure's transaction (see [`depart`]); once committed, the partitions are no more.
async fn commit_departure(
    shared: &Arc<Shared>,
    all: &[Arc<PartitionId>],
    tombstone: bool,
) -> Result<(), Departure> {
    let (mut records, mut state, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    if tombstone {
        for p in all {
            let round = shared
                .status
                .offsets
                .lock()
                .get(&**p)
                .map_or(1, |o| o.round);
            let (r, s, gone) =
                tombstone_all(shared, std::slice::from_ref(p), round, "member-removed")
                    .await
                    .map_err(Departure::Retry)?;
            records.extend(r);
            state.extend(s);
            removed.extend(gone);
        }
    }
    // The batch is the first partition's; its offset is reset with the others' (the last
    // word for a partition in a transaction is the one written).
    let batch = SourceBatch {
        partition: all[0].clone(),
        records,
        offset: SourceOffset::INITIAL,
        resets: all.to_vec(),
        starts: Vec::new(),
        runs: Vec::new(),
        full_round: None,
        state,
        principal: None,
    };
    match shared.sinks.commit_located(batch).await {
        Ok(_) => {
            for p in &removed {
                shared.states.remove(p);
            }
            for p in all {
                stop_partition(shared, p);
            }
            Ok(())
        }
        Err(SinkError::Aborted(why)) => Err(Departure::Retry(why.to_string())),
        Err(e) => Err(Departure::Sink(e)),
    }
}
