//! `graph.immutable_ids`: an event moved between two tracked calendars of one mailbox.
//!
//! Outlook's default ids change when an item moves to another calendar; with
//! `Prefer: IdType="ImmutableId"` they stay for the item's life in the mailbox
//! (learn.microsoft.com/graph/outlook-immutable-id). That is why the setting is on by
//! default: with it, a move is a tombstone in the old calendar's partition and the same id
//! in the new one's; without it, the same event turns up under a new key, and nothing ties
//! it to the one that went.

use std::time::{Duration, Instant};

use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_sim::model::{EventSpec, NameSpec, Recurrence, RecurrenceKind, UserSpec};
use graph_sim::SimServer;
use serde_json::Value;

use crate::common::*;

const UPN: &str = "mover@contoso.com";

fn event(subject: &str, day: u32, occurrences: u32) -> EventSpec {
    EventSpec {
        subject: Some(subject.into()),
        start: format!("2026-05-{day:02}T09:00:00").parse().unwrap(),
        end: format!("2026-05-{day:02}T10:00:00").parse().unwrap(),
        recurrence: (occurrences > 0).then_some(Recurrence {
            kind: RecurrenceKind::Daily,
            interval: 1,
            count: occurrences,
        }),
        ..Default::default()
    }
}

/// A user with a second calendar, a series and two single events in the primary one;
/// returns the simulator, the user id, the second calendar and the single event to move.
async fn mailbox() -> (SimServer, String, String, String) {
    let sim = graph_cdc_testkit::harness::start_sim().await;
    let (user, team, moving) = {
        let mut s = sim.state.store.write();
        let user = s
            .create_user(UserSpec {
                tenant: Some(TENANT.into()),
                user_principal_name: UPN.into(),
                id: None,
                display_name: None,
            })
            .unwrap()
            .id;
        let team = s.create_calendar(&user, NameSpec::default()).unwrap();
        s.create_event(&user, "primary", event("Standup", 4, 3))
            .unwrap();
        s.create_event(&user, "primary", event("Stays", 12, 0))
            .unwrap();
        let moving = s
            .create_event(&user, "primary", event("Offsite", 20, 0))
            .unwrap();
        (user, team, moving)
    };
    (sim, user, team, moving)
}

/// The user's two calendars, keyed (as the worker keys them) by its object id.
fn partitions(user: &str, team: &str) -> [PartitionId; 2] {
    ["primary", team].map(|calendar| PartitionId::CalendarView {
        user: user.into(),
        calendar: calendar.into(),
        window: WINDOW.into(),
    })
}

/// Waits until both partitions' compacted views equal the truth in `id_type`.
fn converge(sim: &SimServer, spec: &WorkerSpec, w: &Running, parts: &[PartitionId], id_type: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        let records = read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events);
        let view = compacted(&records);
        let odd = parts
            .iter()
            .find(|p| view_of(&view, p) != truth_as(sim, p, Some(id_type)));
        let Some(p) = odd else {
            return;
        };
        if let Some(end) = w.ended.lock().clone() {
            panic!("the worker stopped by itself ({end})");
        }
        assert!(Instant::now() < deadline, "{p} did not converge");
        std::thread::sleep(Duration::from_millis(300));
    });
}

/// The ids a partition's records name, in commit order, each with whether it was a
/// tombstone.
fn history(spec: &WorkerSpec, p: &PartitionId) -> Vec<(String, bool)> {
    let prefix = p.record_key("");
    let prefix = &prefix[..prefix.len() - 3];
    read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
        .into_iter()
        .filter(|r| r.key.starts_with(prefix))
        .map(|r| {
            let key: Value = serde_json::from_slice(&r.key).unwrap();
            (key["id"].as_str().unwrap().to_string(), r.value.is_none())
        })
        .collect()
}

/// Runs the worker over both calendars, moves the event, and returns the ids the moved
/// event had before and after the move in the records of each partition.
async fn move_between_tracked_calendars(immutable: bool) -> (String, String) {
    let (sim, user, team, moving) = mailbox().await;
    let parts = partitions(&user, &team);
    let mut spec = spec(&sim, &bootstrap(), parts.to_vec());
    spec.client.immutable_ids = immutable;
    let id_type = if immutable { "immutable" } else { "regular" };
    let w = start_worker(&spec);
    converge(&sim, &spec, &w, &parts, id_type);
    let before = sim.state.store.read().event_ids(&user, &moving).unwrap();
    let after = sim
        .state
        .store
        .write()
        .move_event(&user, &moving, &team)
        .unwrap();
    converge(&sim, &spec, &w, &parts, id_type);
    w.stop().await.expect("clean stop");
    let (old, new) = if immutable {
        (before.id, after.id)
    } else {
        (before.regular_id, after.regular_id)
    };
    let primary = history(&spec, &parts[0]);
    let second = history(&spec, &parts[1]);
    assert_eq!(
        primary.iter().rfind(|(id, _)| *id == old),
        Some(&(old.clone(), true)),
        "the old calendar's partition ends with a tombstone of {old}: {primary:?}"
    );
    assert_eq!(
        second.iter().rfind(|(id, _)| *id == new),
        Some(&(new.clone(), false)),
        "the new calendar's partition holds {new}: {second:?}"
    );
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
    (old, new)
}

/// With `graph.immutable_ids` on (the default), the moved event keeps its id in both
/// partitions' records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_event_keeps_its_id_with_immutable_ids() {
    let (old, new) = move_between_tracked_calendars(true).await;
    assert_eq!(old, new);
    assert!(old.starts_with("AAkALg"), "an immutable id: {old}");
}

/// With it off, Outlook's default ids: the move gives the event a new id, so the new
/// calendar's partition has a record no key relates to the one the old partition removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_event_changes_its_id_without_immutable_ids() {
    let (old, new) = move_between_tracked_calendars(false).await;
    assert_ne!(old, new);
    assert!(old.starts_with("AAMkAG") && new.starts_with("AAMkAG"));
}
