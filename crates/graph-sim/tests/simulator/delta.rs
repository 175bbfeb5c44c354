use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDateTime;
use graph_sim::generate::{GenerateSpec, MutateSpec};
use graph_sim::model::{EventPatch, EventSpec, NameSpec, Recurrence, RecurrenceKind, TaskSpec};
use graph_sim::SimSettings;
use serde_json::Value;

use crate::client::{add_user, apply, start, truth, Graph};

fn t(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").expect("time")
}

fn event(subject: &str, s: &str, e: &str) -> EventSpec {
    EventSpec {
        subject: Some(subject.into()),
        start: t(s),
        end: t(e),
        is_all_day: false,
        body: Some(String::new()),
        location: None,
        attendees: vec![],
        recurrence: None,
    }
}

fn subjects(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|i| i["subject"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

/// The walkthrough of `shared/graph/seeds/002_…`: five events in pages of two, then a round
/// with one deletion and one addition.
#[tokio::test]
async fn seed_walkthrough_five_events_in_pages_of_two_then_one_delete_and_one_add() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "samanthab@contoso.onmicrosoft.com");
    let seeds = [
        (
            "Plan shopping list",
            "2016-12-09T20:30:00",
            "2016-12-09T22:00:00",
        ),
        ("Pick up car", "2016-12-10T01:00:00", "2016-12-10T02:00:00"),
        ("Get food", "2016-12-10T19:30:00", "2016-12-10T21:30:00"),
        ("Prepare food", "2016-12-10T22:00:00", "2016-12-11T00:00:00"),
        ("Rest!", "2016-12-12T02:00:00", "2016-12-12T07:30:00"),
    ];
    let mut ids = Vec::new();
    for (s, a, b) in seeds {
        ids.push(
            sim.state
                .store
                .write()
                .create_event(&user, "primary", event(s, a, b))
                .unwrap(),
        );
    }
    let g = Graph::new(&sim).await;
    // The sample's lower-case parameter names.
    let first = g.url("/v1.0/users/samanthab@contoso.onmicrosoft.com/calendarView/delta?startdatetime=2016-12-01T00:00:00Z&enddatetime=2016-12-30T00:00:00Z");
    let p1 = g.page(&first, Some(2)).await;
    assert_eq!(
        (p1.status, p1.items.len(), p1.delta.is_none()),
        (200, 2, true)
    );
    let next1 = p1.next.expect("nextLink");
    assert!(next1.starts_with(&g.base) && next1.contains("/calendarView/delta?$skiptoken="));
    assert!(
        !next1.contains("startdatetime"),
        "state lives in the token: {next1}"
    );
    let p2 = g.page(&next1, Some(2)).await;
    assert_eq!(p2.items.len(), 2);
    let p3 = g.page(&p2.next.expect("nextLink 2"), Some(2)).await;
    assert_eq!(p3.items.len(), 1);
    assert!(p3.next.is_none());
    let delta = p3.delta.expect("deltaLink");
    assert!(delta.contains("$deltatoken="));
    let all: Vec<Value> = [p1.items, p2.items, p3.items].concat();
    assert_eq!(subjects(&all), {
        let mut v: Vec<String> = seeds.iter().map(|s| s.0.to_string()).collect();
        v.sort();
        v
    });
    for it in &all {
        assert_eq!(it["@odata.type"], "#microsoft.graph.event");
        assert!(it["@odata.etag"].as_str().unwrap().starts_with("W/\""));
        assert_eq!(it["start"]["timeZone"], "UTC");
        assert_eq!(it["type"], "singleInstance");
    }
    // Nothing changed: an empty round with a fresh deltaLink.
    let idle = g.page(&delta, Some(2)).await;
    assert!(idle.items.is_empty() && idle.delta.is_some());
    // Next round: one deletion, one addition.
    sim.state
        .store
        .write()
        .delete_event(&user, &ids[1])
        .unwrap();
    let added = sim
        .state
        .store
        .write()
        .create_event(
            &user,
            "primary",
            event(
                "Attend service",
                "2016-12-25T06:00:00",
                "2016-12-25T07:30:00",
            ),
        )
        .unwrap();
    let (pages, _) = g.round(&delta, Some(2)).await;
    let items: Vec<Value> = pages.concat();
    assert_eq!(items.len(), 2, "{items:?}");
    let removed: Vec<&Value> = items
        .iter()
        .filter(|i| i.get("@removed").is_some())
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["id"], ids[1].as_str());
    assert_eq!(removed[0]["@removed"]["reason"], "deleted");
    let upsert = items.iter().find(|i| i.get("@removed").is_none()).unwrap();
    assert_eq!(
        (
            upsert["id"].as_str().unwrap(),
            upsert["subject"].as_str().unwrap()
        ),
        (added.as_str(), "Attend service")
    );
}

#[tokio::test]
async fn calendar_views_report_changes_outside_the_window_as_removed_and_expand_series() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "alice@contoso.com");
    let g = Graph::new(&sim).await;
    let mut series = event("Standup", "2026-01-05T09:00:00", "2026-01-05T09:15:00");
    series.recurrence = Some(Recurrence {
        kind: RecurrenceKind::Daily,
        interval: 1,
        count: 5,
    });
    let (inside, outside, sid) = {
        let mut s = sim.state.store.write();
        let a = s
            .create_event(
                &user,
                "primary",
                event("In", "2026-01-10T10:00:00", "2026-01-10T11:00:00"),
            )
            .unwrap();
        let b = s
            .create_event(
                &user,
                "primary",
                event("Out", "2026-03-10T10:00:00", "2026-03-10T11:00:00"),
            )
            .unwrap();
        let c = s.create_event(&user, "primary", series).unwrap();
        (a, b, c)
    };
    let url = g.url("/v1.0/users/alice@contoso.com/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z");
    let (pages, delta) = g.round(&url, Some(3)).await;
    let items: Vec<Value> = pages.concat();
    let ids: HashSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert!(ids.contains(inside.as_str()) && !ids.contains(outside.as_str()));
    // Master + 5 occurrences + the single event.
    assert_eq!(items.len(), 7, "{ids:?}");
    let types: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "occurrence").count(), 5);
    assert!(types.contains(&"seriesMaster"));
    let occ = items.iter().find(|i| i["type"] == "occurrence").unwrap();
    assert_eq!(occ["seriesMasterId"], sid.as_str());
    assert!(
        occ.get("subject").is_none(),
        "occurrences carry few properties"
    );
    // Move the in-window event out, change the out-of-window one, cancel an occurrence,
    // turn another into an exception.
    {
        let mut s = sim.state.store.write();
        s.update_event(
            &user,
            &inside,
            EventPatch {
                start: Some(t("2026-05-01T10:00:00")),
                ..Default::default()
            },
        )
        .unwrap();
        s.update_event(
            &user,
            &outside,
            EventPatch {
                subject: Some("Still out".into()),
                ..Default::default()
            },
        )
        .unwrap();
        s.delete_occurrence(&user, &sid, 1).unwrap();
        s.update_occurrence(
            &user,
            &sid,
            2,
            graph_sim::model::OccurrencePatch {
                subject: Some("Moved standup".into()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let (pages, _) = g.round(&delta, Some(50)).await;
    let items: Vec<Value> = pages.concat();
    let removed: HashSet<&str> = items
        .iter()
        .filter(|i| i.get("@removed").is_some())
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(removed.contains(inside.as_str()), "moved out of the window");
    assert!(
        removed.contains(outside.as_str()),
        "changed outside the window"
    );
    assert!(
        removed
            .iter()
            .any(|r| r.starts_with(&sid) && r.len() > sid.len()),
        "cancelled occurrence"
    );
    let exception = items
        .iter()
        .find(|i| i["type"] == "exception")
        .expect("exception");
    assert_eq!(exception["subject"], "Moved standup");
    // The replica built from both rounds equals the truth.
    let mut replica = BTreeMap::new();
    let (p0, _) = g.round(&url, Some(100)).await;
    apply(&mut replica, &p0.concat());
    let tr = truth(&sim, "user=alice@contoso.com&kind=calendar_view&start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z").await;
    assert_eq!(replica, tr);
    assert_eq!(tr.len(), 5, "master + 3 occurrences + 1 exception");
}

#[tokio::test]
async fn beta_only_routes_and_option_checks() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "bob@contoso.com");
    let cal = sim
        .state
        .store
        .write()
        .create_calendar(
            &user,
            NameSpec {
                name: Some("Team".into()),
            },
        )
        .unwrap();
    sim.state
        .store
        .write()
        .create_event(
            &user,
            &cal,
            event("Team lunch", "2026-01-10T12:00:00", "2026-01-10T13:00:00"),
        )
        .unwrap();
    let g = Graph::new(&sim).await;
    let w = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
    for path in [
        format!("/v1.0/users/{user}/calendars/delta"),
        format!("/v1.0/users/{user}/calendars/{cal}/calendarView/delta?{w}"),
    ] {
        let r = g.get(&g.url(&path), None).await;
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["code"].is_string() && v["error"]["innerError"]["request-id"].is_string()
        );
    }
    let (pages, _) = g
        .round(
            &g.url(&format!(
                "/beta/users/{user}/calendars/{cal}/calendarView/delta?{w}"
            )),
            None,
        )
        .await;
    assert_eq!(subjects(&pages.concat()), vec!["Team lunch"]);
    let (pages, _) = g
        .round(&g.url(&format!("/beta/users/{user}/calendars/delta")), None)
        .await;
    assert_eq!(pages.concat().len(), 2);
    assert_eq!(
        g.get(
            &g.url(&format!(
                "/v1.0/users/{user}/calendarView/delta?{w}&$select=subject"
            )),
            None
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        g.get(
            &g.url(&format!("/v1.0/users/{user}/calendarView/delta")),
            None
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        g.get(
            &g.url("/v1.0/users/nobody@contoso.com/todo/lists/delta"),
            None
        )
        .await
        .status(),
        404
    );
    // To Do accepts $select and keeps it across the round.
    let lists = sim.state.store.read().user_info(&user).unwrap().task_lists;
    sim.state
        .store
        .write()
        .create_task(
            &user,
            &lists[0],
            TaskSpec {
                title: Some("Buy milk".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (pages, delta) = g
        .round(
            &g.url(&format!(
                "/v1.0/users/{user}/todo/lists/{}/tasks/delta?$select=title",
                lists[0]
            )),
            None,
        )
        .await;
    let item = &pages.concat()[0];
    assert_eq!(item["title"], "Buy milk");
    assert!(item.get("status").is_none(), "projected: {item}");
    sim.state
        .store
        .write()
        .create_task(
            &user,
            &lists[0],
            TaskSpec {
                title: Some("Eggs".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (pages, _) = g.round(&delta, None).await;
    assert!(pages.concat()[0].get("status").is_none());
}

#[tokio::test]
async fn incremental_rounds_for_calendar_lists_task_lists_and_tasks() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "carol@contoso.com");
    let g = Graph::new(&sim).await;
    let lists_url = g.url("/v1.0/users/carol@contoso.com/todo/lists/delta");
    let cals_url = g.url("/beta/users/carol@contoso.com/calendars/delta");
    let (p, lists_delta) = g.round(&lists_url, Some(1)).await;
    assert_eq!(p.concat().len(), 1, "the default list");
    let default_list = p.concat()[0]["id"].as_str().unwrap().to_string();
    assert_eq!(p.concat()[0]["wellknownListName"], "defaultList");
    let (_, cals_delta) = g.round(&cals_url, None).await;
    let tasks_url = g.url(&format!(
        "/v1.0/users/carol@contoso.com/todo/lists/{default_list}/tasks/delta"
    ));
    let (_, tasks_delta) = g.round(&tasks_url, None).await;
    let (new_list, new_cal, task) = {
        let mut s = sim.state.store.write();
        let l = s
            .create_list(
                &user,
                NameSpec {
                    name: Some("Groceries".into()),
                },
            )
            .unwrap();
        let c = s
            .create_calendar(
                &user,
                NameSpec {
                    name: Some("Birthdays".into()),
                },
            )
            .unwrap();
        let t = s
            .create_task(
                &user,
                &default_list,
                TaskSpec {
                    title: Some("Call mom".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        (l, c, t)
    };
    let (p, lists_delta) = g.round(&lists_delta, None).await;
    assert_eq!(
        p.concat()
            .iter()
            .map(|i| i["displayName"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["Groceries"]
    );
    let (p, cals_delta) = g.round(&cals_delta, None).await;
    assert_eq!(p.concat()[0]["name"], "Birthdays");
    let (p, tasks_delta) = g.round(&tasks_delta, None).await;
    assert_eq!(p.concat()[0]["title"], "Call mom");
    {
        let mut s = sim.state.store.write();
        s.delete_list(&user, &new_list).unwrap();
        s.delete_calendar(&user, &new_cal).unwrap();
        s.update_task(
            &user,
            &default_list,
            &task,
            TaskSpec {
                status: Some("completed".into()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let (p, _) = g.round(&lists_delta, None).await;
    assert_eq!(
        p.concat(),
        vec![
            serde_json::json!({"@odata.type": "#microsoft.graph.todoTaskList", "id": new_list, "@removed": {"reason": "deleted"}})
        ]
    );
    let (p, _) = g.round(&cals_delta, None).await;
    assert_eq!(p.concat()[0]["@removed"]["reason"], "deleted");
    let (p, _) = g.round(&tasks_delta, None).await;
    assert_eq!(p.concat()[0]["status"], "completed");
    assert!(p.concat()[0]["completedDateTime"]["dateTime"].is_string());
    // The tasks of a deleted list are gone.
    let r = g
        .get(
            &g.url(&format!(
                "/v1.0/users/carol@contoso.com/todo/lists/{new_list}/tasks/delta"
            )),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn replays_and_empty_pages_are_switchable() {
    let settings = SimSettings {
        replay_probability: 1.0,
        // With 100 items in pages of 5 (20+ pages), no empty page at all has a
        // chance of 0.5^20: the assertion below cannot flake.
        empty_page_probability: 0.5,
        ..Default::default()
    };
    let sim = start(settings).await;
    sim.state.add_secret_client("default", "x", "y");
    let user = add_user(&sim, "dave@contoso.com");
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    for _ in 0..100 {
        sim.state
            .store
            .write()
            .create_task(&user, &list, TaskSpec::default())
            .unwrap();
    }
    let g = Graph::new(&sim).await;
    let (pages, _) = g
        .round(
            &g.url(&format!("/v1.0/users/{user}/todo/lists/{list}/tasks/delta")),
            Some(5),
        )
        .await;
    let ids: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 100);
    assert!(ids.len() > 100, "some items were sent twice in the round");
    assert!(
        pages.iter().any(|p| p.is_empty()),
        "some pages were empty with a nextLink"
    );
}

#[tokio::test]
async fn outlook_timezone_preference_converts_times() {
    let sim = start(SimSettings::default()).await;
    let user = add_user(&sim, "erin@contoso.com");
    sim.state
        .store
        .write()
        .create_event(
            &user,
            "primary",
            event("Call", "2026-01-10T20:00:00", "2026-01-10T21:00:00"),
        )
        .unwrap();
    let g = Graph::new(&sim).await;
    let r = g
        .http
        .get(g.url("/v1.0/users/erin@contoso.com/calendarView/delta?startDateTime=2026-01-10T00:00:00-08:00&endDateTime=2026-01-11T00:00:00-08:00"))
        .bearer_auth(&g.token)
        .header("Prefer", "outlook.timezone=\"Pacific Standard Time\"")
        .header("Prefer", "IdType=\"ImmutableId\"")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ev = &v["value"][0];
    assert_eq!(ev["start"]["dateTime"], "2026-01-10T12:00:00.0000000");
    assert_eq!(ev["start"]["timeZone"], "Pacific Standard Time");
    let tr = truth(&sim, "user=erin@contoso.com&kind=calendar_view&start=2026-01-10T08:00:00Z&end=2026-01-11T08:00:00Z&timezone=Pacific%20Standard%20Time").await;
    assert_eq!(tr.values().next().unwrap(), ev);
}

/// Random changes of every kind between rounds, replays and empty pages switched on,
/// small pages: after every round the replica equals the truth endpoint, for every partition.
#[tokio::test]
async fn truth_agrees_with_a_replay_of_all_rounds() {
    let settings = SimSettings {
        replay_probability: 0.2,
        empty_page_probability: 0.1,
        ..Default::default()
    };
    let sim = start(settings).await;
    let start_t = t("2026-03-01T00:00:00");
    let spec = GenerateSpec {
        users: 3,
        tenant: Some("contoso".into()),
        start: start_t,
        days: 20,
        seed: Some(7),
        ..Default::default()
    };
    let users = graph_sim::generate::generate(&mut sim.state.store.write(), &spec).unwrap();
    let g = Graph::new(&sim).await;
    let w = "startDateTime=2026-03-01T00:00:00Z&endDateTime=2026-03-21T00:00:00Z";
    // (url of the current round, truth query, replica) per partition.
    let mut parts: Vec<(String, String, BTreeMap<String, Value>)> = Vec::new();
    for u in &users {
        let upn = &u.user_principal_name;
        parts.push((
            g.url(&format!("/v1.0/users/{upn}/calendarView/delta?{w}")),
            format!(
                "user={upn}&kind=calendar_view&start=2026-03-01T00:00:00Z&end=2026-03-21T00:00:00Z"
            ),
            BTreeMap::new(),
        ));
        parts.push((
            g.url(&format!("/beta/users/{upn}/calendars/delta")),
            format!("user={upn}&kind=calendar_list"),
            BTreeMap::new(),
        ));
        parts.push((
            g.url(&format!("/v1.0/users/{upn}/todo/lists/delta")),
            format!("user={upn}&kind=task_lists"),
            BTreeMap::new(),
        ));
        // The default list never goes away.
        let default_list = &u.task_lists[0];
        parts.push((
            g.url(&format!(
                "/v1.0/users/{upn}/todo/lists/{default_list}/tasks/delta"
            )),
            format!("user={upn}&kind=tasks&list={default_list}"),
            BTreeMap::new(),
        ));
    }
    let mut changes = 0;
    for round in 0..8u64 {
        for (url, query, replica) in parts.iter_mut() {
            let (pages, delta) = g.round(url, Some(3)).await;
            for p in &pages {
                apply(replica, p);
            }
            *url = delta;
            let tr = truth(&sim, query).await;
            assert_eq!(*replica, tr, "round {round}: {query}");
        }
        let s = graph_sim::generate::mutate(
            &mut sim.state.store.write(),
            &MutateSpec {
                count: 40,
                start: start_t,
                days: 20,
                seed: Some(round),
                ..Default::default()
            },
        );
        changes += s.ops.values().sum::<u64>();
    }
    assert!(changes > 200, "{changes} changes applied");
}
