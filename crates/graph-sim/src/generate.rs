//! Bulk data and random change streams, for tests, the demo, benchmarks and chaos runs.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, NaiveDateTime, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::{
    EventPatch, EventSpec, GroupInfo, GroupSpec, MemberKind, NameSpec, OccurrencePatch, Recurrence,
    RecurrenceKind, Store, TaskSpec, UserInfo, UserPatch, UserSpec,
};
use super::SimError;

fn default_start() -> NaiveDateTime {
    let today = Utc::now().date_naive();
    (today - Duration::days(7))
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
}

/// `POST /_sim/generate`: users with calendars, events, lists and tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateSpec {
    pub users: usize,
    /// UPNs are `{prefix}{n:03}@{domain}`.
    pub prefix: String,
    pub domain: String,
    pub tenant: Option<String>,
    /// Events are placed in `[start, start + days)`; some deliberately outside it.
    pub start: NaiveDateTime,
    pub days: i64,
    pub events_per_user: usize,
    /// Of those, recurring series (up to 8 occurrences each).
    pub recurring_per_user: usize,
    /// Fraction of events placed outside the window.
    pub outside_fraction: f64,
    pub extra_calendars: usize,
    pub events_per_extra_calendar: usize,
    pub extra_lists: usize,
    pub tasks_per_list: usize,
    pub seed: Option<u64>,
    /// Fraction of the users without an Exchange Online mailbox (no mailbox data either).
    pub without_mailbox_fraction: f64,
    /// Security groups over these users, named `{group_prefix}{n:02}`.
    pub groups: usize,
    pub group_prefix: String,
    /// Users each group gets, drawn from the users generated here.
    pub members_per_group: usize,
    /// How many groups (after the first) become members of an earlier group: nesting.
    pub nested_groups: usize,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self {
            users: 3,
            prefix: "user".into(),
            domain: "contoso.com".into(),
            tenant: None,
            start: default_start(),
            days: 30,
            events_per_user: 20,
            recurring_per_user: 2,
            outside_fraction: 0.1,
            extra_calendars: 1,
            events_per_extra_calendar: 5,
            extra_lists: 1,
            tasks_per_list: 5,
            seed: None,
            without_mailbox_fraction: 0.0,
            groups: 0,
            group_prefix: "group".into(),
            members_per_group: 10,
            nested_groups: 0,
        }
    }
}

fn rng_for(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_rng(&mut rand::rng()),
    }
}

/// A random event: in the window, or (with probability `outside`) before or after it.
pub fn random_event(
    rng: &mut impl Rng,
    start: NaiveDateTime,
    days: i64,
    outside: f64,
    recurring: bool,
) -> EventSpec {
    let days = days.max(1);
    let day = if rng.random_bool(outside.clamp(0.0, 1.0)) {
        if rng.random_bool(0.5) {
            -rng.random_range(1..=30)
        } else {
            days + rng.random_range(0..30)
        }
    } else {
        rng.random_range(0..days)
    };
    let all_day = !recurring && rng.random_bool(0.08);
    let date: NaiveDate = (start + Duration::days(day)).date();
    let (s, e) = if all_day {
        let s = date.and_hms_opt(0, 0, 0).unwrap_or(start);
        (s, s + Duration::days(1))
    } else {
        let s = date
            .and_hms_opt(rng.random_range(7..19), [0, 30][rng.random_range(0..2)], 0)
            .unwrap_or(start);
        (
            s,
            s + Duration::minutes([30, 60, 90][rng.random_range(0..3)]),
        )
    };
    let people = [
        "adele", "alex", "diego", "isaiah", "joni", "lee", "megan", "nestor",
    ];
    EventSpec {
        subject: None,
        start: s,
        end: e,
        is_all_day: all_day,
        body: None,
        location: Some(
            ["Room 1", "Room 2", "Teams", "Cafeteria", "HQ 4th floor", ""]
                .choose(rng)
                .copied()
                .unwrap_or("")
                .to_string(),
        ),
        attendees: (0..rng.random_range(0..4))
            .map(|_| {
                format!(
                    "{}@contoso.com",
                    people.choose(rng).copied().unwrap_or("lee")
                )
            })
            .collect(),
        recurrence: recurring.then(|| Recurrence {
            kind: if rng.random_bool(0.5) {
                RecurrenceKind::Daily
            } else {
                RecurrenceKind::Weekly
            },
            interval: 1,
            count: rng.random_range(2..=8),
        }),
    }
}

/// Creates the users and their data; returns the users.
pub fn generate(store: &mut Store, spec: &GenerateSpec) -> Result<Vec<UserInfo>, SimError> {
    generate_all(store, spec).map(|(users, _)| users)
}

/// Creates the users, their data and the groups over them.
pub fn generate_all(
    store: &mut Store,
    spec: &GenerateSpec,
) -> Result<(Vec<UserInfo>, Vec<GroupInfo>), SimError> {
    let mut rng = rng_for(spec.seed);
    // The directory draws from a stream of its own, so that mailbox data stays what the
    // same seed gave before groups and mailbox-less users existed.
    let mut dir_rng = rng_for(spec.seed.map(|s| s ^ 0x6772_6f75_7073));
    let mut out = Vec::with_capacity(spec.users);
    let first = store.users.len();
    for n in 0..spec.users {
        let upn = format!("{}{:03}@{}", spec.prefix, first + n + 1, spec.domain);
        let info = store.create_user(UserSpec {
            tenant: spec.tenant.clone(),
            user_principal_name: upn,
            id: None,
            display_name: None,
        })?;
        let fraction = spec.without_mailbox_fraction.clamp(0.0, 1.0);
        if fraction > 0.0 && dir_rng.random_bool(fraction) {
            let off = UserPatch {
                mailbox: Some(false),
                ..Default::default()
            };
            out.push(store.patch_user(&info.id, off)?);
            continue;
        }
        for i in 0..spec.events_per_user {
            let recurring = i < spec.recurring_per_user;
            let ev = random_event(
                &mut rng,
                spec.start,
                spec.days,
                spec.outside_fraction,
                recurring,
            );
            store.create_event(&info.id, "primary", ev)?;
        }
        for _ in 0..spec.extra_calendars {
            let cal = store.create_calendar(&info.id, NameSpec::default())?;
            for _ in 0..spec.events_per_extra_calendar {
                let ev = random_event(
                    &mut rng,
                    spec.start,
                    spec.days,
                    spec.outside_fraction,
                    false,
                );
                store.create_event(&info.id, &cal, ev)?;
            }
        }
        for _ in 0..spec.extra_lists {
            store.create_list(&info.id, NameSpec::default())?;
        }
        let lists = store.user_info(&info.id)?.task_lists;
        for list in &lists {
            for _ in 0..spec.tasks_per_list {
                store.create_task(&info.id, list, TaskSpec::default())?;
            }
        }
        out.push(store.user_info(&info.id)?);
    }
    let groups = generate_groups(store, spec, &out, &mut dir_rng)?;
    Ok((out, groups))
}

/// `spec.groups` groups of `members_per_group` of `users` each; groups 1..=`nested_groups`
/// each become a member of a random earlier group.
fn generate_groups(
    store: &mut Store,
    spec: &GenerateSpec,
    users: &[UserInfo],
    rng: &mut StdRng,
) -> Result<Vec<GroupInfo>, SimError> {
    use rand::seq::SliceRandom;
    let first = store.groups.len();
    let mut ids: Vec<String> = Vec::with_capacity(spec.groups);
    for n in 0..spec.groups {
        let mut pool: Vec<&UserInfo> = users.iter().collect();
        pool.shuffle(rng);
        let members = pool
            .into_iter()
            .take(spec.members_per_group)
            .map(|u| u.id.clone())
            .collect();
        let g = store.create_group(GroupSpec {
            tenant: spec.tenant.clone(),
            display_name: Some(format!("{}{:02}", spec.group_prefix, first + n + 1)),
            id: None,
            members,
        })?;
        if n > 0 && n <= spec.nested_groups {
            let parent = ids[rng.random_range(0..n)].clone();
            store.add_member(&parent, &g.id)?;
        }
        ids.push(g.id);
    }
    ids.iter().map(|id| store.group_info(id)).collect()
}

/// `POST /_sim/mutate`: a burst of random creates, updates and deletes of every kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MutateSpec {
    pub count: usize,
    /// Only these users (id or UPN); all when absent.
    pub users: Option<Vec<String>>,
    /// Window new and moved events are placed in (mostly).
    pub start: NaiveDateTime,
    pub days: i64,
    /// Also create and delete task lists and calendars (partitions come and go).
    pub structural: bool,
    /// Also add users to groups and remove members from groups (of the users' tenants).
    pub membership: bool,
    pub seed: Option<u64>,
}

impl Default for MutateSpec {
    fn default() -> Self {
        Self {
            count: 10,
            users: None,
            start: default_start(),
            days: 30,
            structural: true,
            membership: false,
            seed: None,
        }
    }
}

/// What a mutation burst did, by operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MutateSummary {
    pub ops: BTreeMap<String, u64>,
}

/// Applies `spec.count` random changes; operations that find nothing to act on are skipped.
pub fn mutate(store: &mut Store, spec: &MutateSpec) -> MutateSummary {
    let mut rng = rng_for(spec.seed);
    let mut summary = MutateSummary::default();
    let mut users: Vec<String> = match &spec.users {
        Some(u) => u
            .iter()
            .filter_map(|k| store.user_id(k).map(str::to_string))
            .collect(),
        None => store.users.keys().cloned().collect(),
    };
    users.sort();
    if users.is_empty() {
        return summary;
    }
    let mut ops: Vec<(&str, u32)> = vec![
        ("event_create", 20),
        ("event_update", 25),
        ("event_move", 6),
        ("event_delete", 10),
        ("occurrence_update", 4),
        ("occurrence_delete", 3),
        ("task_create", 12),
        ("task_update", 12),
        ("task_delete", 6),
    ];
    if spec.structural {
        ops.extend([
            ("list_create", 2),
            ("list_rename", 2),
            ("list_delete", 1),
            ("calendar_create", 1),
            ("calendar_rename", 1),
        ]);
    }
    if spec.membership {
        ops.extend([("member_add", 6), ("member_remove", 4)]);
    }
    let total: u32 = ops.iter().map(|(_, w)| w).sum();
    for _ in 0..spec.count {
        let user = users[rng.random_range(0..users.len())].clone();
        let mut pick = rng.random_range(0..total);
        let op = ops
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(o, _)| *o)
            .unwrap_or("event_update");
        let done = match op {
            "member_add" | "member_remove" => churn(store, &mut rng, &user, op),
            _ => apply(store, &mut rng, &user, op, spec),
        };
        if done.is_some() {
            *summary.ops.entry(op.to_string()).or_default() += 1;
        }
    }
    summary
}

/// Membership churn: `user` joins a random group of its tenant it is not in, or a random
/// user member leaves a random group.
fn churn(store: &mut Store, rng: &mut StdRng, user: &str, op: &str) -> Option<()> {
    let tenant = store.users.get(user)?.tenant.clone();
    let groups: Vec<String> = store
        .group_ids()
        .into_iter()
        .filter(|g| store.group(g).is_ok_and(|g| g.tenant == tenant))
        .collect();
    if op == "member_add" {
        let open: Vec<String> = groups
            .into_iter()
            .filter(|g| {
                store
                    .group(g)
                    .is_ok_and(|g| !g.members.get(user).is_some_and(|m| m.live))
            })
            .collect();
        let g = pick(rng, &open)?;
        return store.add_member(&g, user).ok();
    }
    let g = pick(rng, &groups)?;
    let members: Vec<String> = store
        .group(&g)
        .ok()?
        .live_members()
        .filter(|(_, m)| m.kind == MemberKind::User)
        .map(|(id, _)| id.clone())
        .collect();
    let m = pick(rng, &members)?;
    store.remove_member(&g, &m).ok()
}

fn pick<T: Clone>(rng: &mut impl Rng, v: &[T]) -> Option<T> {
    v.choose(rng).cloned()
}

fn apply(
    store: &mut Store,
    rng: &mut StdRng,
    user: &str,
    op: &str,
    spec: &MutateSpec,
) -> Option<()> {
    let u = store.users.get(user)?;
    let calendars: Vec<String> = u.calendars.live().map(|c| c.data.id.clone()).collect();
    let cal = pick(rng, &calendars)?;
    let events: Vec<(String, u32)> = u
        .events
        .get(cal.as_str())
        .map(|c| {
            c.live()
                .map(|e| {
                    (
                        e.data.id.clone(),
                        e.data.recurrence.as_ref().map_or(0, |r| r.count),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let lists: Vec<(String, bool)> = u
        .lists
        .live()
        .map(|l| (l.data.id.clone(), l.data.wellknown))
        .collect();
    let (list, _) = pick(rng, &lists)?;
    let tasks: Vec<String> = u
        .tasks
        .get(list.as_str())
        .map(|c| c.live().map(|t| t.data.id.clone()).collect())
        .unwrap_or_default();
    let series: Vec<(String, u32)> = events.iter().filter(|(_, n)| *n > 0).cloned().collect();
    match op {
        "event_create" => {
            let recurring = rng.random_bool(0.1);
            let ev = random_event(rng, spec.start, spec.days, 0.05, recurring);
            store.create_event(user, &cal, ev).ok().map(drop)
        }
        "event_update" => {
            let (id, _) = pick(rng, &events)?;
            let patch = EventPatch {
                subject: Some(super::text::title(rng, 4)),
                ..Default::default()
            };
            store.update_event(user, &id, patch).ok()
        }
        "event_move" => {
            // Sometimes out of (or back into) the window.
            let (id, _) = pick(rng, &events)?;
            let ev = random_event(rng, spec.start, spec.days, 0.3, false);
            let patch = EventPatch {
                start: Some(ev.start),
                ..Default::default()
            };
            store.update_event(user, &id, patch).ok()
        }
        "event_delete" => {
            let (id, _) = pick(rng, &events)?;
            store.delete_event(user, &id).ok()
        }
        "occurrence_update" => {
            let (id, n) = pick(rng, &series)?;
            let p = OccurrencePatch {
                subject: Some(format!("{} (moved)", super::text::title(rng, 2))),
                ..Default::default()
            };
            store
                .update_occurrence(user, &id, rng.random_range(0..n), p)
                .ok()
        }
        "occurrence_delete" => {
            let (id, n) = pick(rng, &series)?;
            store
                .delete_occurrence(user, &id, rng.random_range(0..n))
                .ok()
        }
        "task_create" => store
            .create_task(user, &list, TaskSpec::default())
            .ok()
            .map(drop),
        "task_update" => {
            let id = pick(rng, &tasks)?;
            let status = ["notStarted", "inProgress", "completed"][rng.random_range(0..3)];
            let s = TaskSpec {
                status: Some(status.into()),
                title: Some(super::text::title(rng, 3)),
                ..Default::default()
            };
            store.update_task(user, &list, &id, s).ok()
        }
        "task_delete" => {
            let id = pick(rng, &tasks)?;
            store.delete_task(user, &list, &id).ok()
        }
        "list_create" => {
            let id = store.create_list(user, NameSpec::default()).ok()?;
            for _ in 0..rng.random_range(0..4) {
                store.create_task(user, &id, TaskSpec::default()).ok()?;
            }
            Some(())
        }
        "list_rename" => store.update_list(user, &list, NameSpec::default()).ok(),
        "list_delete" => {
            let deletable: Vec<String> = lists
                .iter()
                .filter(|(_, w)| !w)
                .map(|(i, _)| i.clone())
                .collect();
            let id = pick(rng, &deletable)?;
            store.delete_list(user, &id).ok()
        }
        "calendar_create" => store
            .create_calendar(user, NameSpec::default())
            .ok()
            .map(drop),
        "calendar_rename" => store.update_calendar(user, &cal, NameSpec::default()).ok(),
        _ => None,
    }
}
