//! Graph's paging faults (issue 12, item 7): see `src/graph/guard.rs`. Against the
//! simulator's per-mailbox quirks (`crates/graph-sim/src/quirks.rs`):
//!
//! - nextLinks that cycle under new links (msgraph-sdk-dotnet issue 3082): the partition
//!   goes FAILED naming the loop, after restarting the round from its deltaLink and from
//!   scratch; every other partition of the worker converges; nothing is written twice;
//! - a whole series on one page, past `odata.maxpagesize`: accepted, the partition converges;
//! - a loop that closes once and then stops: the round restarts from its deltaLink and the
//!   partition converges, never FAILED.

use std::collections::HashSet;
use std::time::Duration;

use graph_cdc::source::PartitionId;
use graph_cdc::worker::{PartitionState, WorkerSpec};
use graph_cdc_testkit::harness::wait_until;
use graph_sim::model::{EventPatch, EventSpec, Recurrence, RecurrenceKind};
use graph_sim::quirks::{MailboxQuirks, NextLinkCycle};
use graph_sim::SimServer;

use crate::common::*;

fn view(user: &str) -> PartitionId {
    PartitionId::CalendarView {
        user: user.into(),
        calendar: "primary".into(),
        window: WINDOW.into(),
    }
}

fn set_quirks(sim: &SimServer, upn: &str, q: MailboxQuirks) {
    let id = sim.state.store.read().user(upn).expect("user").id.clone();
    sim.state.quirks.write().insert(id, q);
}

/// The mailbox's `next_link_cycle` quirk as the simulator has it now.
fn cycle_of(sim: &SimServer, upn: &str) -> Option<NextLinkCycle> {
    let id = sim.state.store.read().user(upn).expect("user").id.clone();
    sim.state
        .quirks
        .read()
        .get(&id)
        .and_then(|q| q.next_link_cycle.clone())
}

fn looping(after_pages: u32, fresh_links: bool, loops: Option<u32>) -> MailboxQuirks {
    MailboxQuirks {
        next_link_cycle: Some(NextLinkCycle {
            after_pages,
            back_to: 2,
            fresh_links,
            loops,
        }),
        ..MailboxQuirks::default()
    }
}

/// Renames the first `n` events (single events and series masters) of the user's calendar
/// view, under one store lock: the next delta round sees all of them.
fn change_events(sim: &SimServer, user: &str, n: usize) {
    let ids: Vec<String> = truth(sim, &view(user))
        .into_values()
        .filter(|v| v["type"] != "occurrence" && v["type"] != "exception")
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .take(n)
        .collect();
    assert_eq!(ids.len(), n, "{user} has {n} events to change");
    let mut store = sim.state.store.write();
    for id in &ids {
        let patch = EventPatch {
            subject: Some(format!("changed {id}")),
            ..Default::default()
        };
        store.update_event(user, id, patch).expect("update");
    }
}

fn abandoned(why: &str) -> u64 {
    graph_cdc::metrics::metrics()
        .rounds_abandoned
        .with_label_values(&["calendar_view", why])
        .get()
}

/// Records (key and value, a tombstone's value none) committed more than once: none, as
/// restarted rounds write only what changed and these tests recreate nothing.
fn written_twice(spec: &WorkerSpec) -> Vec<String> {
    let mut seen = HashSet::new();
    all_records(spec)
        .into_iter()
        .filter(|r| !seen.insert((r.key.clone(), r.value.clone())))
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect()
}

fn committed_round(w: &Running, p: &PartitionId) -> u64 {
    w.status.offsets.lock().get(p).map_or(0, |o| o.round)
}

/// A mailbox whose delta round starts looping under fresh nextLinks: abandoned and restarted
/// from its deltaLink, then from scratch, the loop still there: its partition goes FAILED
/// with the reason, its offset still inside the looping round, while the other mailboxes'
/// partitions (changed meanwhile too) converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_whose_next_links_cycle_fails_alone_with_the_reason() {
    let (sim, users) = sim_with_users(3, 50, 3, 71).await;
    let spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    let w = start_worker(&spec);
    converge_except(&sim, &spec, &w, &|_| false);
    let p = view(&users[0]);
    let round = committed_round(&w, &p);
    assert!(round > 1, "its first round is committed");
    let before = abandoned("page_repeated");
    // Page 3's nextLink leads back to page 2 under a new link, forever; the round that shows
    // it has 25 changes and more (their series' occurrences) in pages of 7.
    set_quirks(&sim, &users[0], looping(3, true, None));
    for u in &users {
        change_events(&sim, u, 25);
    }
    let reason = w.failed(&p, Duration::from_secs(90)).await;
    assert!(
        reason.starts_with("paging loop: the round returned a page it had already returned"),
        "{reason}"
    );
    assert!(
        reason.contains("from its deltaLink, then from scratch"),
        "{reason}"
    );
    assert!(
        !reason.contains("token") && !reason.contains(&sim.url()),
        "no link in it: {reason}"
    );
    assert!(
        abandoned("page_repeated") >= before + 3,
        "three abandonments counted"
    );
    // Its committed offset never left the looping round: mid-way, a restart of it.
    let o = w.status.offsets.lock().get(&p).cloned().expect("offset");
    assert!(o.round >= round && o.resync, "{o:?}");
    assert!(
        o.link.is_some() && o.link != o.delta_link,
        "mid-round: {o:?}"
    );
    // Everything else converges and keeps running.
    let prefix = p.key_prefix();
    converge_except(&sim, &spec, &w, &|k| k.starts_with(&prefix));
    for (q, st) in w.status.partitions.lock().iter() {
        if **q != p {
            assert_eq!(*st, PartitionState::Running, "{q}");
        }
    }
    assert!(cycle_of(&sim, &users[0]).is_some(), "the quirk never ended");
    assert_eq!(written_twice(&spec), Vec::<String>::new());
    let r = w.stop().await;
    assert!(r.is_ok(), "worker ended with {r:?}");
}

/// With `whole_series_pages`, a daily series of 20 occurrences comes on one page of 21
/// records for pages of 7: accepted as it is, in the first sync and after the series
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_past_maxpagesize_are_accepted() {
    let (sim, users) = sim_with_users(2, 20, 3, 72).await;
    let at = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap();
    let series = sim
        .state
        .store
        .write()
        .create_event(
            &users[0],
            "primary",
            EventSpec {
                subject: Some("Daily stand-up".into()),
                start: at("2026-05-04T09:00:00"),
                end: at("2026-05-04T09:15:00"),
                recurrence: Some(Recurrence {
                    kind: RecurrenceKind::Daily,
                    interval: 1,
                    count: 20,
                }),
                ..Default::default()
            },
        )
        .expect("series");
    set_quirks(
        &sim,
        &users[0],
        MailboxQuirks {
            whole_series_pages: true,
            ..MailboxQuirks::default()
        },
    );
    let spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    assert_eq!(spec.client.page_size, 7);
    let w = start_worker(&spec);
    converge_except(&sim, &spec, &w, &|_| false);
    let largest = sim.state.stats.lock().largest_page;
    assert!(largest >= 21, "the series came on one page: {largest}");
    // The series changes: all of it again, on one page of a delta round.
    sim.state.stats.lock().largest_page = 0;
    let p = view(&users[0]);
    let round = committed_round(&w, &p);
    let patch = EventPatch {
        subject: Some("Daily stand-up (moved room)".into()),
        ..Default::default()
    };
    sim.state
        .store
        .write()
        .update_event(&users[0], &series, patch)
        .expect("update");
    tokio::task::block_in_place(|| {
        wait_until("the change round", Duration::from_secs(60), || {
            committed_round(&w, &p) > round && difference(&sim, &spec, WINDOW).is_none()
        })
    });
    assert!(sim.state.stats.lock().largest_page >= 21);
    for (q, st) in w.status.partitions.lock().iter() {
        assert_eq!(*st, PartitionState::Running, "{q}");
    }
    assert_eq!(written_twice(&spec), Vec::<String>::new());
    let r = w.stop().await;
    assert!(r.is_ok(), "worker ended with {r:?}");
}

/// A loop that closes once and is gone by the time the round restarts (the quirk's
/// `loops: 1`: the simulator switches it off itself, where a test doing so would race the
/// worker): the round is abandoned at the repeated nextLink, restarts from its deltaLink and
/// completes; the partition converges and never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_that_stops_after_one_abandonment_is_recovered_from() {
    let (sim, users) = sim_with_users(2, 50, 3, 73).await;
    let spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    let w = start_worker(&spec);
    converge_except(&sim, &spec, &w, &|_| false);
    let p = view(&users[0]);
    let round = committed_round(&w, &p);
    let before = abandoned("link_repeated");
    // Page 2's nextLink is the link that fetched it, once.
    set_quirks(&sim, &users[0], looping(2, false, Some(1)));
    change_events(&sim, &users[0], 25);
    tokio::task::block_in_place(|| {
        wait_until("the loop", Duration::from_secs(60), || {
            cycle_of(&sim, &users[0]).is_none()
        })
    });
    converge_except(&sim, &spec, &w, &|_| false);
    assert!(
        abandoned("link_repeated") > before,
        "the repeated nextLink was seen"
    );
    assert!(committed_round(&w, &p) > round, "the round completed");
    assert_eq!(w.state(&p), Some(PartitionState::Running));
    assert_eq!(written_twice(&spec), Vec::<String>::new());
    let r = w.stop().await;
    assert!(r.is_ok(), "worker ended with {r:?}");
}
