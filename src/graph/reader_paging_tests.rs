//! The paging guard under the reader (`guard.rs`): which way an abandoned round restarts,
//! and whole rounds against the simulator's paging quirks, fetched and advanced as the
//! worker does (a refetch after an aborted commit, a prefetch on a copy that is dropped).

use std::sync::Arc;
use std::time::Duration;

use graph_sim::model::{EventPatch, EventSpec, Recurrence, RecurrenceKind, UserSpec};
use graph_sim::quirks::{MailboxQuirks, NextLinkCycle};
use graph_sim::{SimServer, SimSettings};

use super::*;
use crate::graph::http::testing::token_provider;
use crate::graph::options::ClientOptions;

const HOST: &str = "https://graph.microsoft.com";
const NEXT: &str =
    "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$skiptoken=2";
const DELTA: &str =
    "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$deltatoken=1";

fn list_reader(link: Option<&str>, delta: Option<&str>, round: u64) -> PartitionReader {
    let id = Arc::new(PartitionId::CalendarList {
        user: "a@contoso.com".into(),
    });
    let committed = SourceOffset {
        link: link.map(Into::into),
        delta_link: delta.map(Into::into),
        round,
        resync: false,
        ..SourceOffset::INITIAL
    };
    PartitionReader::new(id, HOST, Some(committed), Rounds::default()).unwrap()
}

fn reason(e: GraphError) -> String {
    assert!(e.is_partition_fault(), "{e}");
    match e {
        GraphError::PagingLoop(r) => r,
        other => panic!("not a paging loop: {other}"),
    }
}

#[test]
fn a_looping_delta_round_restarts_from_its_delta_link_then_from_scratch_then_fails() {
    let mut r = list_reader(Some(NEXT), Some(DELTA), 4);
    r.abandon(Loop::LinkRepeated).unwrap();
    let o = r.offset().clone();
    assert_eq!(
        (o.link.as_deref(), o.delta_link.as_deref(), o.round),
        (Some(DELTA), Some(DELTA), 4),
        "back to the round's deltaLink"
    );
    assert!(
        o.resync && !r.fresh,
        "a delta round again, its records marked"
    );
    assert!(r.at_round_start());
    r.abandon(Loop::LinkRepeated).unwrap();
    let o = r.offset().clone();
    assert_eq!(
        (o.link, o.delta_link, o.round),
        (None, None, 4),
        "from scratch"
    );
    assert!(
        o.resync && r.fresh,
        "a round from scratch, reconciled at its end"
    );
    assert_eq!(o.reason, None, "its tombstones say resync");
    let why = reason(r.abandon(Loop::LinkRepeated).unwrap_err());
    assert!(
        why.contains("repeated a nextLink")
            && why.contains("from its deltaLink, then from scratch"),
        "{why}"
    );
    assert!(
        !why.contains("token") && !why.contains("https"),
        "no link: {why}"
    );
    assert_eq!(r.offset().link, None, "failing moves nothing");
}

#[test]
fn a_looping_first_round_restarts_from_scratch_once_then_fails() {
    let mut r = list_reader(Some(NEXT), None, 1);
    r.abandon(Loop::PageRepeated).unwrap();
    assert_eq!(r.offset().link, None);
    assert!(r.fresh && r.offset().resync);
    let why = reason(r.abandon(Loop::PageRepeated).unwrap_err());
    assert!(
        why.contains("returned a page it had already returned") && !why.contains("deltaLink"),
        "{why}"
    );
}

fn page(items: &[&str], last: bool) -> DeltaPage {
    DeltaPage {
        items: items
            .iter()
            .map(|id| super::super::delta::DeltaItem {
                id: id.to_string(),
                removed: None,
                raw: bytes::Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
            })
            .collect(),
        next_link: (!last).then(|| NEXT.into()),
        delta_link: last.then(|| DELTA.into()),
    }
}

#[test]
fn a_round_that_completes_ends_the_abandonments_in_a_row() {
    let mut r = list_reader(Some(NEXT), Some(DELTA), 4);
    r.abandon(Loop::TooManyPages).unwrap();
    // The round from the deltaLink completes.
    r.guard.fetched(DELTA, &page(&["a"], true)).unwrap();
    let b = r.batch(page(&["a"], true));
    r.advance(b.offset, &[]);
    assert_eq!(r.offset().round, 5);
    // The next round's loop starts from its deltaLink again, not from scratch.
    r.abandon(Loop::TooManyPages).unwrap();
    assert_eq!(r.offset().link.as_deref(), Some(DELTA));
    assert!(!r.fresh);
}

#[test]
fn a_restart_forgets_the_rounds_marks() {
    let mut r = list_reader(Some(NEXT), Some(DELTA), 4);
    r.guard.fetched(NEXT, &page(&["a"], false)).unwrap();
    r.advance(r.batch(page(&["a"], false)).offset, &[]);
    assert_eq!(r.guard.before(NEXT), Err(Loop::LinkRepeated));
    // A 410 sends it back to the deltaLink: the same pages come again, legitimately.
    r.resync("resyncRequired", None);
    assert_eq!(r.guard.before(NEXT), Ok(()));
    assert_eq!(r.guard.fetched(NEXT, &page(&["a"], false)), Ok(()));
    r.advance(r.batch(page(&["a"], false)).offset, &[]);
    // So does the resync signal.
    r.restart();
    assert_eq!(r.guard.before(NEXT), Ok(()));
}

// Against the simulator, over HTTP.

const USER: &str = "loop@contoso.com";
const WINDOW: &str = "2026-05-01T00:00:00Z/2026-06-01T00:00:00Z";

/// A simulator with one mailbox of `singles` single events and one daily series of
/// `series` occurrences (none if 0), a client of it with pages of `page_size`, and a reader
/// of the mailbox's calendar view allowing `max_pages` pages a round.
async fn setup(
    singles: u32,
    series: u32,
    page_size: usize,
    max_pages: u32,
) -> (SimServer, GraphClient, PartitionReader, String) {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .expect("simulator");
    sim.state
        .add_secret_client("contoso", "graph-cdc", "s3cr3t");
    let user_id = {
        let mut store = sim.state.store.write();
        let info = store
            .create_user(UserSpec {
                tenant: Some("contoso".into()),
                user_principal_name: USER.into(),
                id: None,
                display_name: None,
            })
            .expect("user");
        let at = |day: u32| -> chrono::NaiveDateTime {
            format!("2026-05-{day:02}T09:00:00").parse().unwrap()
        };
        for day in 1..=singles {
            let e = EventSpec {
                subject: Some(format!("single {day}")),
                start: at(day % 28 + 1),
                end: at(day % 28 + 1) + chrono::Duration::minutes(30),
                ..Default::default()
            };
            store.create_event(USER, "primary", e).expect("event");
        }
        if series > 0 {
            let e = EventSpec {
                subject: Some("daily".into()),
                start: at(2),
                end: at(2) + chrono::Duration::minutes(15),
                recurrence: Some(Recurrence {
                    kind: RecurrenceKind::Daily,
                    interval: 1,
                    count: series,
                }),
                ..Default::default()
            };
            store.create_event(USER, "primary", e).expect("series");
        }
        info.id
    };
    let opts = ClientOptions {
        page_size,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retries: 3,
        ..ClientOptions::default()
    };
    let http = crate::graph::http::client(&opts).expect("client");
    let tokens = Arc::new(token_provider(&sim.url(), "s3cr3t", &opts));
    let client = GraphClient::new(http, tokens, opts);
    let id = Arc::new(PartitionId::CalendarView {
        user: USER.into(),
        calendar: "primary".into(),
        window: WINDOW.into(),
    });
    let rounds = Rounds {
        max_pages_per_round: max_pages,
        ..Rounds::default()
    };
    let reader = PartitionReader::new(id, &sim.url(), None, rounds).unwrap();
    (sim, client, reader, user_id)
}

fn set_quirks(sim: &SimServer, user_id: &str, q: Option<MailboxQuirks>) {
    let mut quirks = sim.state.quirks.write();
    match q {
        Some(q) => quirks.insert(user_id.to_string(), q),
        None => quirks.remove(user_id),
    };
}

fn cycle(after_pages: u32, fresh_links: bool) -> MailboxQuirks {
    MailboxQuirks {
        next_link_cycle: Some(NextLinkCycle {
            after_pages,
            back_to: 2,
            fresh_links,
            loops: None,
        }),
        ..MailboxQuirks::default()
    }
}

fn abandoned(why: &str) -> u64 {
    metrics::metrics()
        .rounds_abandoned
        .with_label_values(&["calendar_view", why])
        .get()
}

/// Fetches and advances as the worker does until a round ends (its batches returned) or
/// the reader fails; each page is fetched twice first (its commit "aborted" once), and the
/// next page is prefetched on a copy of the reader that is then dropped (its commit failed).
async fn round(
    r: &mut PartitionReader,
    c: &GraphClient,
    max_fetches: usize,
) -> Result<Vec<SourceBatch>, GraphError> {
    let mut batches = Vec::new();
    for _ in 0..max_fetches {
        let _aborted = r.next_batch(c).await?;
        let b = r.next_batch(c).await?;
        let ended = b.offset.round > r.offset().round;
        if !ended {
            let mut ahead = r.clone();
            ahead.advance(b.offset.clone(), &[]);
            let _dropped = ahead.next_batch(c).await?;
        }
        r.advance(b.offset.clone(), &[]);
        batches.push(b);
        if ended {
            return Ok(batches);
        }
    }
    panic!("no end after {max_fetches} pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_refetched_after_an_abort_or_a_dropped_prefetch_are_no_loop() {
    let (_sim, c, mut r, _) = setup(20, 0, 3, 10_000).await;
    let batches = round(&mut r, &c, 100).await.expect("a round");
    assert_eq!(batches.len(), 7, "20 events in pages of 3");
    assert_eq!(r.offset().round, 2);
    assert!(!r.offset().resync, "never abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_past_maxpagesize_are_accepted() {
    let (sim, c, mut r, user) = setup(5, 12, 3, 10_000).await;
    set_quirks(
        &sim,
        &user,
        Some(MailboxQuirks {
            whole_series_pages: true,
            ..MailboxQuirks::default()
        }),
    );
    let batches = round(&mut r, &c, 100).await.expect("a round");
    let largest = batches.iter().map(|b| b.records.len()).max().unwrap();
    assert!(
        largest >= 13,
        "the master and its 12 occurrences: {largest}"
    );
    let items: usize = batches.iter().map(|b| b.records.len()).sum();
    assert_eq!(items, 5 + 13);
    assert!(!r.offset().resync, "never abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_looping_under_fresh_links_fails_after_a_restart_from_scratch() {
    let (sim, c, mut r, user) = setup(20, 0, 3, 10_000).await;
    set_quirks(&sim, &user, Some(cycle(3, true)));
    let before = abandoned("page_repeated");
    let e = round(&mut r, &c, 100).await.unwrap_err();
    let why = reason(e);
    assert!(
        why.contains("already returned") && why.contains("from scratch"),
        "{why}"
    );
    assert!(!why.contains(&sim.url()), "no link: {why}");
    assert!(abandoned("page_repeated") >= before + 2, "counted");
    // Each attempt got as far as the loop: three pages, then page 2 again.
    assert!(r.offset().link.is_some() && r.offset().round == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_round_that_stops_looping_after_its_restart_completes() {
    let (sim, c, mut r, user) = setup(20, 0, 3, 10_000).await;
    round(&mut r, &c, 100).await.expect("the first round");
    // Twelve changes: four pages; page 2 links to itself.
    set_quirks(&sim, &user, Some(cycle(2, false)));
    change_events(&sim, 12);
    let before = abandoned("link_repeated");
    let b = r.next_batch(&c).await.expect("page 1");
    r.advance(b.offset, &[]);
    let b = r.next_batch(&c).await.expect("page 2");
    r.advance(b.offset, &[]);
    // Page 2's nextLink is the link that fetched it: abandoned before it is followed, the
    // round starts over from its deltaLink (page 1 again).
    let b = r.next_batch(&c).await.expect("page 1 again");
    assert_eq!(abandoned("link_repeated"), before + 1);
    assert!(
        b.records.iter().all(|rec| rec.resync),
        "marked as a restart"
    );
    assert_eq!(b.full_round, None, "still a delta round");
    // The mailbox pages properly again: the restarted round completes.
    set_quirks(&sim, &user, None);
    r.advance(b.offset, &[]);
    let rest = round(&mut r, &c, 100).await.expect("the round completes");
    let changed: usize = rest.iter().map(|b| b.records.len()).sum::<usize>() + 3;
    assert_eq!(changed, 12, "every change, once");
    assert_eq!(r.offset().round, 3);
    // And a later loop goes back to its deltaLink first again.
    assert_eq!(
        r.guard.abandon(Loop::LinkRepeated, true),
        Abandon::FromDeltaLink
    );
}

/// Renames the first `n` events of the mailbox (one store lock: one delta round sees all).
fn change_events(sim: &SimServer, n: usize) {
    let ids: Vec<String> = {
        let q = graph_sim::control::TruthParams {
            user: USER.into(),
            kind: "calendar_view".into(),
            calendar: Some("primary".into()),
            start: Some("2026-05-01T00:00:00Z".into()),
            end: Some("2026-06-01T00:00:00Z".into()),
            list: None,
            timezone: None,
            id_type: None,
        };
        let (q, pres) = graph_sim::control::truth_query(&sim.state, &q).expect("query");
        sim.state
            .truth(&q, &pres)
            .expect("truth")
            .into_keys()
            .collect()
    };
    let mut store = sim.state.store.write();
    for id in ids.iter().take(n) {
        let patch = EventPatch {
            subject: Some(format!("changed {id}")),
            ..Default::default()
        };
        store.update_event(USER, id, patch).expect("update");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_max_pages_per_round_is_abandoned_then_fails() {
    let (_sim, c, mut r, _) = setup(20, 0, 3, 4).await;
    let before = abandoned("too_many_pages");
    let why = reason(round(&mut r, &c, 100).await.unwrap_err());
    assert!(why.contains("graph.max_pages_per_round = 4"), "{why}");
    assert!(abandoned("too_many_pages") >= before + 2);
}
