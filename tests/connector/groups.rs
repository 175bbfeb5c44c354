//! Group sources (issue 13, item 1): a group's transitive user members are the source's
//! users. Members who join have their partitions started without a restart; members who
//! leave have theirs stopped and their offsets reset, their records kept
//! (`on_member_removed = "keep"`) or tombstoned in the same transaction (`"tombstone"`); a
//! restarted worker resumes the members' partitions from the offsets, even when it cannot
//! list the group any more.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use graph_cdc::config::GroupSource;
use graph_cdc::metrics::MEMBERSHIP_CHANGES;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{PartitionState, WorkerSpec};
use graph_sim::model::{EventPatch, GroupSpec};
use graph_sim::SimServer;
use serde_json::Value;

use crate::common::*;

pub(crate) const OUTER: &str = "0b0e6c4e-0000-4000-8000-00000000000a";
pub(crate) const INNER: &str = "0b0e6c4e-0000-4000-8000-00000000000b";

pub(crate) fn templates() -> Vec<PartitionId> {
    vec![
        PartitionId::CalendarView {
            user: String::new(),
            calendar: "primary".into(),
            window: WINDOW.into(),
        },
        PartitionId::CalendarList {
            user: String::new(),
        },
        PartitionId::TaskLists {
            user: String::new(),
        },
    ]
}

pub(crate) fn members_partition() -> PartitionId {
    PartitionId::GroupMembers {
        group: OUTER.into(),
    }
}

/// The first difference between the topics and the truth for `members` (their partitions,
/// and the members topic naming exactly them); `None` when equal.
pub(crate) fn difference(sim: &SimServer, spec: &WorkerSpec, members: &[String]) -> Option<String> {
    let b = &spec.sink.bootstrap_servers;
    let mut views = BTreeMap::new();
    for t in spec.sink.topics.all() {
        views.insert(t.to_string(), compacted(&read_all(b, t)));
    }
    for p in all_partitions(sim, WINDOW) {
        if !members.contains(&p.user().to_string()) {
            continue;
        }
        let got = view_of(&views[spec.sink.topics.for_kind(p.kind())], &p);
        if got != truth(sim, &p) {
            return Some(format!(
                "{p}: {} records, truth {}",
                got.len(),
                truth(sim, &p).len()
            ));
        }
    }
    let g = members_partition();
    let listed = view_of(&views[&spec.sink.topics.members], &g);
    let want: BTreeSet<Vec<u8>> = members.iter().map(|u| g.record_key(u).to_vec()).collect();
    let got: BTreeSet<Vec<u8>> = listed.keys().cloned().collect();
    if got != want {
        return Some(format!(
            "members topic: {} keys, want {}",
            got.len(),
            want.len()
        ));
    }
    for (k, v) in &listed {
        let id = graph_cdc::source::key_id(k).unwrap_or_default();
        if v.get("id").and_then(Value::as_str) != Some(id.as_str())
            || v.get("userPrincipalName").is_none()
        {
            return Some(format!("member value {v}"));
        }
    }
    None
}

pub(crate) fn converge(sim: &SimServer, spec: &WorkerSpec, members: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        match difference(sim, spec, members) {
            None => return,
            Some(d) if Instant::now() > deadline => panic!("not converged: {d}"),
            Some(_) => std::thread::sleep(Duration::from_millis(400)),
        }
    });
}

/// The partitions of `user` (task partitions of its live lists included).
pub(crate) fn partitions_of(sim: &SimServer, user: &str) -> Vec<PartitionId> {
    all_partitions(sim, WINDOW)
        .into_iter()
        .filter(|p| p.user() == user)
        .collect()
}

/// Live records (the compacted view) of `user`'s partitions in the data topics.
pub(crate) fn live_of(spec: &WorkerSpec, user: &str) -> usize {
    let needle = format!("\"user\":\"{user}\"");
    let records = tokio::task::block_in_place(|| all_records(spec));
    compacted(&records)
        .keys()
        .filter(|k| String::from_utf8_lossy(k).contains(&needle))
        .count()
}

/// Records of `user`'s partitions in the data topics.
fn records_of(spec: &WorkerSpec, user: &str) -> usize {
    let needle = format!("\"user\":\"{user}\"");
    tokio::task::block_in_place(|| all_records(spec))
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.key).contains(&needle))
        .count()
}

/// Offsets in the offsets topic's compacted view, by partition key.
fn offsets_view(spec: &WorkerSpec) -> std::collections::HashMap<Vec<u8>, Vec<u8>> {
    tokio::task::block_in_place(|| {
        compacted(&read_all(
            &spec.sink.bootstrap_servers,
            &spec.sink.offsets_topic,
        ))
    })
}

/// Waits until none of `theirs` runs or has an offset.
async fn stopped_and_reset(
    w: &graph_cdc_testkit::harness::InProcessWorker,
    spec: &WorkerSpec,
    theirs: &[PartitionId],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: Vec<_> = theirs
            .iter()
            .filter(|p| w.state(p) == Some(PartitionState::Running))
            .collect();
        let offsets = offsets_view(spec);
        let with_offset: Vec<_> = theirs
            .iter()
            .filter(|p| {
                let key = graph_cdc::offsets::encode_key(&spec.sink.connector, p);
                offsets.contains_key(key.as_bytes())
            })
            .collect();
        if running.is_empty() && with_offset.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running {running:?}, with offsets {with_offset:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn change_an_event(sim: &SimServer, user: &str, subject: &str) {
    let p = &partitions_of(sim, user)[0];
    let event = truth(sim, p)
        .keys()
        .next()
        .and_then(|k| graph_cdc::source::key_id(k))
        .expect("an event");
    sim.state
        .store
        .write()
        .update_event(
            user,
            &event,
            EventPatch {
                subject: Some(subject.into()),
                ..Default::default()
            },
        )
        .expect("update");
}

/// OUTER = {ids[0], ids[1], INNER}, INNER = {ids[2]}.
pub(crate) fn nested_groups(sim: &SimServer, ids: &[String]) {
    let mut store = sim.state.store.write();
    let group = |id: &str, members: Vec<String>| GroupSpec {
        tenant: Some(TENANT.into()),
        id: Some(id.into()),
        display_name: Some(id.into()),
        members,
    };
    store
        .create_group(group(INNER, vec![ids[2].clone()]))
        .expect("inner group");
    store
        .create_group(group(
            OUTER,
            vec![ids[0].clone(), ids[1].clone(), INNER.into()],
        ))
        .expect("outer group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_and_a_restart_resumes_them_from_the_offsets() {
    let (sim, ids) = sim_with_users(4, 12, 2, 41).await;
    nested_groups(&sim, &ids);
    let mut spec = spec(&sim, &bootstrap(), Vec::new());
    spec.groups = vec![GroupSource {
        group: OUTER.into(),
        templates: templates(),
        tombstone: false,
    }];
    spec.membership_interval = Duration::from_millis(500);
    spec.poll_interval = Duration::from_millis(200);
    let w = start_worker(&spec);

    // 3 members, one of them through the nested group; the fourth user is not tracked.
    let mut members: Vec<String> = ids[..3].to_vec();
    converge(&sim, &spec, &members);
    assert_eq!(records_of(&spec, &ids[3]), 0, "not a member");
    assert_eq!(w.state(&members_partition()), Some(PartitionState::Running));
    // The listing's principal names reach the members' records.
    let upn = sim
        .state
        .store
        .read()
        .user_info(&ids[2])
        .expect("user")
        .user_principal_name;
    let headers: Vec<_> = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
    })
    .into_iter()
    .filter(|r| String::from_utf8_lossy(&r.key).contains(&ids[2]))
    .map(|r| r.headers.get("graph-cdc.user-principal-name").cloned())
    .collect();
    assert!(!headers.is_empty());
    assert!(
        headers.iter().all(|h| h.as_deref() == Some(upn.as_str())),
        "{headers:?}"
    );

    // A member joins (through the nested group): its partitions start, no restart.
    sim.state
        .store
        .write()
        .add_member(INNER, &ids[3])
        .expect("add");
    members.push(ids[3].clone());
    converge(&sim, &spec, &members);

    // A member leaves: its partitions stop, their offsets are reset, their records stay.
    let left = ids[1].clone();
    let kept = records_of(&spec, &left);
    sim.state
        .store
        .write()
        .remove_member(OUTER, &left)
        .expect("remove");
    members.retain(|u| *u != left);
    converge(&sim, &spec, &members);
    stopped_and_reset(&w, &spec, &partitions_of(&sim, &left)).await;
    change_an_event(&sim, &left, "after leaving");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        records_of(&spec, &left),
        kept,
        "kept, and nothing more written"
    );
    w.stop().await.expect("stop");

    // Restarted, unable to list the group (GroupMember.Read.All revoked): the members'
    // partitions still resume from the offsets and catch up with a change made meanwhile.
    sim.state
        .set_app_roles(
            None,
            CLIENT,
            Some(vec![
                "Calendars.Read".into(),
                "Tasks.Read.All".into(),
                "User.Read.All".into(),
            ]),
        )
        .expect("roles");
    change_an_event(&sim, &ids[0], "while stopped");
    let w = start_worker(&spec);
    converge(&sim, &spec, &members);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        w.state(&members_partition()),
        Some(PartitionState::Failed(_))
    ) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            w.state(&members_partition())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in partitions_of(&sim, &ids[0]) {
        assert_eq!(w.state(&p), Some(PartitionState::Running), "{p}");
    }
    assert_eq!(
        records_of(&spec, &left),
        kept,
        "the departed member stays stopped"
    );
    w.stop().await.expect("stop");
}

/// `on_member_removed = "tombstone"`: a departed member's records (events, To Do lists and
/// tasks) are tombstoned (`member-removed`) with its offsets reset, but those of a partition
/// its user is listed for (its calendar list); the other members' are untouched; a member
/// who comes back is written again from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_members_records_are_tombstoned_and_come_back_with_it() {
    let (sim, ids) = sim_with_users(3, 10, 3, 43).await;
    nested_groups(&sim, &ids);
    // The member who will leave is also listed for its calendar list: that one stays.
    let left = ids[2].clone();
    let listed = PartitionId::CalendarList { user: left.clone() };
    let mut spec = spec(&sim, &bootstrap(), vec![listed.clone()]);
    spec.groups = vec![GroupSource {
        group: OUTER.into(),
        templates: templates(),
        tombstone: true,
    }];
    spec.membership_interval = Duration::from_millis(500);
    spec.poll_interval = Duration::from_millis(200);
    let w = start_worker(&spec);
    let mut members: Vec<String> = ids[..3].to_vec();
    converge(&sim, &spec, &members);

    // The member in the nested group leaves through it.
    let had = live_of(&spec, &left);
    let stays = truth(&sim, &listed).len();
    assert!(stays > 0);
    let tasks = partitions_of(&sim, &left)
        .iter()
        .filter(|p| matches!(p, PartitionId::Tasks { .. }))
        .map(|p| truth(&sim, p).len())
        .sum::<usize>();
    assert!(had > 0 && tasks > 0, "{had} live records, {tasks} tasks");
    let others: Vec<usize> = ids[..2].iter().map(|u| records_of(&spec, u)).collect();
    let left_counted = || {
        graph_cdc::metrics::metrics()
            .membership_changes
            .with_label_values(&[OUTER, "left"])
            .get()
    };
    let left_before = left_counted();
    sim.state
        .store
        .write()
        .remove_member(INNER, &left)
        .expect("remove");
    members.retain(|u| *u != left);
    converge(&sim, &spec, &members);
    let group_ones: Vec<PartitionId> = partitions_of(&sim, &left)
        .into_iter()
        .filter(|p| *p != listed)
        .collect();
    stopped_and_reset(&w, &spec, &group_ones).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_of(&spec, &left) > stays {
        assert!(Instant::now() < deadline, "{} live", live_of(&spec, &left));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let needle = format!("\"user\":\"{left}\"");
    let tombstones: Vec<_> = tokio::task::block_in_place(|| all_records(&spec))
        .into_iter()
        .filter(|r| r.value.is_none() && String::from_utf8_lossy(&r.key).contains(&needle))
        .collect();
    assert_eq!(
        tombstones.len(),
        had - stays,
        "one tombstone per live record"
    );
    assert_eq!(
        live_of(&spec, &left),
        stays,
        "the listed calendar list stays"
    );
    assert_eq!(w.state(&listed), Some(PartitionState::Running));
    assert!(
        tombstones.iter().all(|r| r
            .headers
            .get("graph-cdc.removed-reason")
            .map(String::as_str)
            == Some("member-removed")),
        "{:?}",
        tombstones.first().map(|r| &r.headers)
    );
    let now: Vec<usize> = ids[..2].iter().map(|u| records_of(&spec, u)).collect();
    assert_eq!(now, others, "the other members' records are untouched");
    assert!(
        left_counted() > left_before,
        "counted in {MEMBERSHIP_CHANGES}"
    );

    // It comes back: everything is written again, from scratch.
    sim.state
        .store
        .write()
        .add_member(OUTER, &left)
        .expect("add");
    members.push(left.clone());
    converge(&sim, &spec, &members);
    assert_eq!(live_of(&spec, &left), had);
    w.stop().await.expect("stop");
}
