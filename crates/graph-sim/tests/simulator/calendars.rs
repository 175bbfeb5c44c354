//! Calendar-view behaviours a connector must survive: ids that change when an event moves
//! (unless immutable ids are asked for), occurrence deletions no delta round reports, pages
//! past `odata.maxpagesize`, and rounds whose nextLinks never end.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use graph_sim::model::{EventSpec, NameSpec, Recurrence, RecurrenceKind};
use graph_sim::{SimServer, SimSettings};
use serde_json::{json, Value};

use crate::client::{add_user, apply, start, truth, Graph};

const WINDOW: &str = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
const TRUTH_WINDOW: &str = "start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z";

fn event(subject: &str, day: u32, occurrences: u32) -> EventSpec {
    EventSpec {
        subject: Some(subject.into()),
        start: format!("2026-01-{day:02}T09:00:00").parse().unwrap(),
        end: format!("2026-01-{day:02}T09:30:00").parse().unwrap(),
        body: Some(String::new()),
        recurrence: (occurrences > 0).then_some(Recurrence {
            kind: RecurrenceKind::Daily,
            interval: 1,
            count: occurrences,
        }),
        ..Default::default()
    }
}

fn create(sim: &SimServer, user: &str, cal: &str, e: EventSpec) -> String {
    sim.state.store.write().create_event(user, cal, e).unwrap()
}

async fn control(g: &Graph, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = g
        .http
        .request(method, g.url(&format!("/_sim{path}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn removed(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .filter(|i| i.get("@removed").is_some())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn upserted(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .filter(|i| i.get("@removed").is_none())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// A series moved to another calendar: with `Prefer: IdType="ImmutableId"` the old view
/// removes and the new view adds the same ids; without it the old view removes the old
/// regular ids and the new view adds new ones. Each client's replicas equal the truth in
/// its id type.
#[tokio::test]
async fn a_moved_event_keeps_its_immutable_id_and_gets_a_new_regular_one() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "mover@contoso.com");
    let team = sim
        .state
        .store
        .write()
        .create_calendar(&user, NameSpec::default())
        .unwrap();
    let id = create(&sim, &user, "primary", event("Standup", 5, 3));
    create(&sim, &user, "primary", event("Stays", 6, 0));
    let immutable = Graph::new(&sim).await;
    let mut regular = Graph::new(&sim).await;
    regular.immutable_ids = false;
    let views = [
        format!("/v1.0/users/mover@contoso.com/calendarView/delta?{WINDOW}"),
        format!("/beta/users/mover@contoso.com/calendars/{team}/calendarView/delta?{WINDOW}"),
    ];
    // (client, view) -> (replica, deltaLink)
    let mut state = Vec::new();
    for g in [&immutable, &regular] {
        for v in &views {
            let (pages, delta) = g.round(&g.url(v), None).await;
            let mut replica = BTreeMap::new();
            apply(&mut replica, &pages.concat());
            state.push((replica, delta));
        }
    }
    let (_, before) = control(
        &immutable,
        reqwest::Method::GET,
        &format!("/users/{user}/events/{id}"),
        json!(null),
    )
    .await;
    let old_regular = before["regularId"].as_str().unwrap().to_string();
    assert!(
        state[2].0.contains_key(&old_regular),
        "regular clients see the regular id"
    );
    assert!(
        state[0].0.contains_key(&id),
        "immutable clients see the immutable id"
    );
    let (status, moved) = control(
        &regular,
        reqwest::Method::POST,
        &format!("/users/mover@contoso.com/events/{old_regular}/move"),
        json!({"calendar": team}),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["id"], id.as_str());
    let new_regular = moved["regularId"].as_str().unwrap().to_string();
    assert_ne!(new_regular, old_regular);
    let mut rounds = Vec::new();
    for (i, g) in [&immutable, &immutable, &regular, &regular]
        .into_iter()
        .enumerate()
    {
        let (pages, _) = g.round(&state[i].1, None).await;
        let items = pages.concat();
        apply(&mut state[i].0, &items);
        rounds.push(items);
    }
    let series =
        |base: &str, items: &BTreeSet<String>| items.iter().filter(|i| i.starts_with(base)).count();
    // Immutable: the same four ids (master and three occurrences) leave and arrive.
    assert_eq!(series(&id, &removed(&rounds[0])), 4);
    assert_eq!(removed(&rounds[0]), upserted(&rounds[1]));
    // Regular: the old ids leave, new ones arrive, seriesMasterId follows.
    assert_eq!(series(&old_regular, &removed(&rounds[2])), 4);
    assert_eq!(series(&new_regular, &upserted(&rounds[3])), 4);
    assert!(rounds[3]
        .iter()
        .filter(|i| i["type"] == "occurrence")
        .all(|i| i["seriesMasterId"] == new_regular.as_str()));
    for (i, (id_type, cal)) in [
        ("immutable", "primary"),
        ("immutable", team.as_str()),
        ("regular", "primary"),
        ("regular", team.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        let q = format!(
            "user={user}&kind=calendar_view&calendar={cal}&{TRUTH_WINDOW}&id_type={id_type}"
        );
        assert_eq!(state[i].0, truth(&sim, &q).await, "{q}");
    }
    // The old regular id is gone from the mailbox; the immutable one finds the event.
    let path = format!("/users/{user}/events/{old_regular}");
    assert_eq!(
        control(&regular, reqwest::Method::GET, &path, json!(null))
            .await
            .0,
        404
    );
    let (_, now) = control(
        &regular,
        reqwest::Method::GET,
        &format!("/users/{user}/events/{id}"),
        json!(null),
    )
    .await;
    assert_eq!(
        (now["regularId"].as_str(), now["calendar"].as_str()),
        (Some(new_regular.as_str()), Some(team.as_str()))
    );
}

/// Deleting one occurrence of a series is not reported by delta: the round after it is
/// empty, later changes of the series do not report it either, and only a fresh full round
/// (or the truth) shows it gone (docs PR 4501). The reported variant is the contrast.
#[tokio::test]
async fn a_deleted_occurrence_is_not_reported_by_delta() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "gap@contoso.com");
    let g = Graph::new(&sim).await;
    let id = create(&sim, &user, "primary", event("Daily", 5, 5));
    let url = g.url(&format!(
        "/v1.0/users/gap@contoso.com/calendarView/delta?{WINDOW}"
    ));
    let (pages, delta) = g.round(&url, None).await;
    let mut replica = BTreeMap::new();
    apply(&mut replica, &pages.concat());
    assert_eq!(replica.len(), 6, "master and five occurrences");
    let q = format!("user=gap@contoso.com&kind=calendar_view&{TRUTH_WINDOW}");
    let path = format!("/users/gap@contoso.com/events/{id}/occurrences/2?reported=false");
    assert_eq!(
        control(&g, reqwest::Method::DELETE, &path, json!(null))
            .await
            .0,
        200
    );
    let (pages, delta) = g.round(&delta, None).await;
    assert!(pages.concat().is_empty(), "silence: {:?}", pages.concat());
    let tr = truth(&sim, &q).await;
    let stale: Vec<&String> = replica.keys().filter(|k| !tr.contains_key(*k)).collect();
    assert_eq!(stale.len(), 1, "exactly the deleted occurrence is stale");
    assert!(stale[0].starts_with(&id) && stale[0].ends_with("20260107T090000"));
    assert_eq!(replica.len(), tr.len() + 1);
    // A change to the series is reported, the deleted occurrence still is not.
    sim.state
        .store
        .write()
        .update_event(
            &user,
            &id,
            graph_sim::model::EventPatch {
                subject: Some("Daily sync".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (pages, delta) = g.round(&delta, None).await;
    let items = pages.concat();
    assert_eq!(items.len(), 5, "master and the four occurrences left");
    assert!(removed(&items).is_empty());
    apply(&mut replica, &items);
    assert_eq!(
        replica.len(),
        truth(&sim, &q).await.len() + 1,
        "the gap stays"
    );
    // Only a full round heals it.
    let (pages, _) = g.round(&url, None).await;
    let mut fresh = BTreeMap::new();
    apply(&mut fresh, &pages.concat());
    assert_eq!(fresh, truth(&sim, &q).await);
    // The simulator's reported variant, for contrast, is seen by the next round.
    let path = format!("/users/gap@contoso.com/events/{id}/occurrences/3");
    assert_eq!(
        control(&g, reqwest::Method::DELETE, &path, json!(null))
            .await
            .0,
        200
    );
    let (pages, _) = g.round(&delta, None).await;
    assert_eq!(removed(&pages.concat()).len(), 1);
}

/// With the `whole_series_pages` quirk, a series is never split: its page holds the master
/// and every occurrence, past `odata.maxpagesize`; without it no page is larger.
#[tokio::test]
async fn a_whole_series_on_one_page_exceeds_maxpagesize() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "big@contoso.com");
    let g = Graph::new(&sim).await;
    for day in 1..=3 {
        create(&sim, &user, "primary", event("Single", day, 0));
    }
    create(&sim, &user, "primary", event("Series", 10, 8));
    create(&sim, &user, "primary", event("Single", 20, 0));
    let url = g.url(&format!(
        "/v1.0/users/big@contoso.com/calendarView/delta?{WINDOW}"
    ));
    let (pages, _) = g.round(&url, Some(3)).await;
    assert!(pages.iter().all(|p| p.len() <= 3));
    assert_eq!(sim.state.stats.lock().largest_page, 3);
    let quirks = "/users/big@contoso.com/quirks";
    let (status, _) = control(
        &g,
        reqwest::Method::PUT,
        quirks,
        json!({"whole_series_pages": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (pages, _) = g.round(&url, Some(3)).await;
    let largest = pages.iter().map(Vec::len).max().unwrap();
    assert!(largest >= 9, "master and 8 occurrences together: {largest}");
    assert_eq!(
        sim.state.stats.lock().largest_page,
        largest as u64,
        "counted"
    );
    let big = pages.iter().find(|p| p.len() == largest).unwrap();
    let masters = big.iter().filter(|i| i["type"] == "seriesMaster").count();
    let occurrences = big.iter().filter(|i| i["type"] == "occurrence").count();
    assert_eq!((masters, occurrences), (1, 8));
    let mut replica = BTreeMap::new();
    apply(&mut replica, &pages.concat());
    let q = format!("user=big@contoso.com&kind=calendar_view&{TRUTH_WINDOW}");
    assert_eq!(replica, truth(&sim, &q).await);
}

/// Follows `n` links from `url`; returns each page's ids and the link it ended with.
async fn follow(g: &Graph, url: &str, n: usize) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut url = url.to_string();
    for _ in 0..n {
        let p = g.page(&url, Some(2)).await;
        assert_eq!(p.status, 200, "{url}");
        assert!(p.delta.is_none(), "a looping round never ends");
        let mut ids: Vec<String> = p
            .items
            .iter()
            .map(|i| i["id"].as_str().unwrap().into())
            .collect();
        ids.sort();
        url = p.next.unwrap();
        out.push((ids, url.clone()));
    }
    out
}

/// The `next_link_cycle` quirk: after page 3 the nextLink goes back to page 2, forever, and
/// the loop outlives the sync state's generations. With the same links, a client sees the
/// loop by its links; with fresh links (as msgraph-sdk-dotnet issue 3082 reports) only by
/// the repeated payloads. Without the quirk, the round resumes and ends.
#[tokio::test]
async fn next_links_that_cycle_forever() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "loop@contoso.com");
    let g = Graph::new(&sim).await;
    for day in 1..=10 {
        create(&sim, &user, "primary", event("Single", day, 0));
    }
    let url = g.url(&format!(
        "/v1.0/users/loop@contoso.com/calendarView/delta?{WINDOW}"
    ));
    let quirks = "/users/loop@contoso.com/quirks";
    let put = |v: Value| control(&g, reqwest::Method::PUT, quirks, v);
    assert_eq!(
        put(json!({"next_link_cycle": {"after_pages": 1}})).await.0,
        400
    );
    assert_eq!(
        put(json!({"next_link_cycle": {"after_pages": 3, "back_to": 4}}))
            .await
            .0,
        400
    );
    assert_eq!(
        put(json!({"next_link_cycle": {"after_pages": 3}})).await.0,
        200
    );
    // Page 1 (the initial request), then pages 2, 3, 2, 3, … with two links only.
    let pages = follow(&g, &url, 12).await;
    let links: HashSet<&String> = pages.iter().map(|(_, l)| l).collect();
    assert_eq!(links.len(), 2, "the same two nextLinks over and over");
    assert_eq!(pages[2].1, pages[0].1, "page 3 links back to page 2's link");
    for k in 1..pages.len() - 2 {
        assert_eq!(pages[k].0, pages[k + 2].0, "pages repeat");
    }
    // Fresh links: page 3 repeats itself, each time under a new link.
    let fresh = json!({"next_link_cycle": {"after_pages": 3, "back_to": 3, "fresh_links": true}});
    assert_eq!(put(fresh).await.0, 200);
    let pages = follow(&g, &url, 8).await;
    let links: HashSet<&String> = pages.iter().map(|(_, l)| l).collect();
    assert_eq!(links.len(), pages.len(), "every nextLink is new");
    assert!(
        pages[2..].iter().all(|(ids, _)| *ids == pages[2].0),
        "the payload repeats"
    );
    // The quirk gone, the same link goes on to the end of the round.
    let last = pages.last().unwrap().1.clone();
    assert_eq!(
        control(&g, reqwest::Method::DELETE, quirks, json!(null))
            .await
            .0,
        200
    );
    let (rest, _) = g.round(&last, Some(2)).await;
    let mut seen: BTreeSet<String> = pages.iter().flat_map(|(ids, _)| ids.clone()).collect();
    seen.extend(upserted(&rest.concat()));
    let q = format!("user=loop@contoso.com&kind=calendar_view&{TRUTH_WINDOW}");
    let want: BTreeSet<String> = truth(&sim, &q).await.into_keys().collect();
    assert_eq!(seen, want);
}

/// `loops: n`: the loop closes n times, then the quirk switches itself off and the round the
/// loop was in goes on to its end.
#[tokio::test]
async fn a_next_link_cycle_that_closes_a_set_number_of_times() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "twice@contoso.com");
    let g = Graph::new(&sim).await;
    for day in 1..=10 {
        create(&sim, &user, "primary", event("Single", day, 0));
    }
    let url = g.url(&format!(
        "/v1.0/users/twice@contoso.com/calendarView/delta?{WINDOW}"
    ));
    let quirks = "/users/twice@contoso.com/quirks";
    let put = |v: Value| control(&g, reqwest::Method::PUT, quirks, v);
    assert_eq!(
        put(json!({"next_link_cycle": {"after_pages": 2, "loops": 0}}))
            .await
            .0,
        400
    );
    let (status, q) = put(json!({"next_link_cycle": {"after_pages": 3, "loops": 2}})).await;
    assert_eq!((status, &q["next_link_cycle"]["loops"]), (200, &json!(2)));
    // Pages 1, 2, 3, then 2, 3 and 2, 3 again (two loops), then on to the round's end.
    let (pages, _) = g.round(&url, Some(2)).await;
    for k in [1, 2] {
        assert_eq!(pages[k], pages[k + 2], "page {} repeats", k + 1);
        assert_eq!(pages[k], pages[k + 4], "page {} repeats again", k + 1);
    }
    let (status, q) = control(&g, reqwest::Method::GET, quirks, json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(q["next_link_cycle"], Value::Null, "switched off: {q}");
    let mut seen = BTreeSet::new();
    for p in &pages {
        seen.extend(upserted(p));
    }
    let tq = format!("user=twice@contoso.com&kind=calendar_view&{TRUTH_WINDOW}");
    let want: BTreeSet<String> = truth(&sim, &tq).await.into_keys().collect();
    assert_eq!(seen, want);
    // Later rounds page as documented: the same round without the loops.
    let (plain, _) = g.round(&url, Some(2)).await;
    assert_eq!(pages.len(), plain.len() + 4, "two loops of 2 pages");
}
