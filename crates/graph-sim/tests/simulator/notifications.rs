//! Change notifications as Graph sends them: the payload of event and task changes, the
//! `changeType` filter, ids, batches, delivery faults and retries.

use std::sync::atomic::Ordering;
use std::time::Duration;

use graph_sim::model::{EventPatch, EventSpec, NameSpec, TaskSpec};
use graph_sim::{SimServer, SimSettings};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{add_user, start, Graph, TENANT};
use crate::webhook::{control, sub_body, subscribe, wait, Hook};

pub(crate) fn fast() -> SimSettings {
    SimSettings {
        notification_delay_ms: 20,
        notification_retry_ms: 20,
        ..Default::default()
    }
}

pub(crate) fn event(subject: &str) -> EventSpec {
    EventSpec {
        subject: Some(subject.into()),
        start: "2026-03-02T09:00:00".parse().unwrap(),
        end: "2026-03-02T10:00:00".parse().unwrap(),
        ..Default::default()
    }
}

pub(crate) fn default_list(sim: &SimServer, user: &str) -> String {
    sim.state.store.read().user_info(user).unwrap().task_lists[0].clone()
}

/// Create, update and delete of an event reach a default-calendar subscription as three
/// notifications shaped as Graph's (regular ids without `Prefer: IdType`); an event in
/// another calendar does not.
#[tokio::test]
async fn event_changes_arrive_in_graphs_shape() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "ev@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let s = subscribe(
        &g,
        sub_body(
            "Users/EV%40contoso.com/Events",
            "created,updated,deleted",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let sid = s["id"].as_str().unwrap();
    let other = sim
        .state
        .store
        .write()
        .create_calendar(&user, NameSpec::default())
        .unwrap();
    let id = sim
        .state
        .store
        .write()
        .create_event(&user, "primary", event("one"))
        .unwrap();
    sim.state
        .store
        .write()
        .create_event(&user, &other, event("elsewhere"))
        .unwrap();
    let regular = sim
        .state
        .store
        .read()
        .event_ids(&user, &id)
        .unwrap()
        .regular_id;
    let patch = EventPatch {
        subject: Some("two".into()),
        ..Default::default()
    };
    sim.state
        .store
        .write()
        .update_event(&user, &id, patch)
        .unwrap();
    let (st, _) = control(
        &g,
        Method::DELETE,
        &format!("/users/{user}/events/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let got = hook.wait_notifications(3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hook.notifications().len(),
        3,
        "nothing for the other calendar: {got:?}"
    );
    let types: Vec<&str> = got
        .iter()
        .map(|n| n["changeType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["created", "updated", "deleted"]);
    let path = format!("Users/{user}/Events/{regular}");
    for n in &got {
        assert_eq!(n["subscriptionId"], sid);
        assert_eq!(n["subscriptionExpirationDateTime"], s["expirationDateTime"]);
        assert_eq!(n["clientState"], "secretClientValue");
        assert_eq!(n["tenantId"], TENANT);
        assert_eq!(n["resource"], path);
        let rd = &n["resourceData"];
        assert_eq!(rd["@odata.type"], "#Microsoft.Graph.Event");
        assert_eq!(rd["@odata.id"], path);
        assert_eq!(rd["id"], regular);
        assert!(rd["@odata.etag"].as_str().unwrap().starts_with("W/\""));
        let keys: Vec<&String> = n.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
    }
    assert_ne!(
        got[0]["resourceData"]["@odata.etag"],
        got[1]["resourceData"]["@odata.etag"]
    );
    let listed = control(&g, Method::GET, "/subscriptions", None).await.1;
    assert_eq!(listed[0]["notificationsSent"], 3);
    assert_eq!(sim.state.stats.lock().notifications.delivered, 3);
}

/// A subscription created with `Prefer: IdType="ImmutableId"` names events by immutable id;
/// a move is a delete in the old calendar and a create in the new one.
#[tokio::test]
async fn immutable_ids_and_moves() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "imm@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let cal = sim
        .state
        .store
        .write()
        .create_calendar(&user, NameSpec::default())
        .unwrap();
    let r = g
        .http
        .post(g.url("/v1.0/subscriptions"))
        .bearer_auth(&g.token)
        .header("Prefer", "IdType=\"ImmutableId\"")
        .json(&sub_body(
            &format!("users/{user}/events"),
            "created,deleted",
            &hook.notify_url(),
            60,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    subscribe(
        &g,
        sub_body(
            &format!("users/{user}/calendars/{cal}/events"),
            "created",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let id = sim
        .state
        .store
        .write()
        .create_event(&user, "primary", event("m"))
        .unwrap();
    let moved = sim
        .state
        .store
        .write()
        .move_event(&user, &id, &cal)
        .unwrap();
    let got = hook.wait_notifications(3).await;
    let by: Vec<(String, String)> = got
        .iter()
        .map(|n| {
            (
                n["changeType"].as_str().unwrap().to_string(),
                n["resourceData"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(by.contains(&("created".into(), id.clone())), "{by:?}");
    assert!(
        by.contains(&("deleted".into(), id.clone())),
        "immutable id on delete: {by:?}"
    );
    assert!(
        by.contains(&("created".into(), moved.regular_id.clone())),
        "other calendar, regular ids: {by:?}"
    );
    assert_eq!(got.len(), 3);
}

/// Only the listed change types are sent; task notifications carry the todoTask shape; a
/// deleted list deletes its tasks.
#[tokio::test]
async fn task_changes_and_the_change_type_filter() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "task@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    subscribe(
        &g,
        sub_body(
            &format!("/users/task@contoso.com/todo/lists/{list}/tasks"),
            "deleted",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let t = sim
        .state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    sim.state
        .store
        .write()
        .update_task(
            &user,
            &list,
            &t,
            TaskSpec {
                title: Some("x".into()),
                ..Default::default()
            },
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        hook.notifications().is_empty(),
        "created/updated are not subscribed"
    );
    sim.state
        .store
        .write()
        .delete_task(&user, &list, &t)
        .unwrap();
    let got = hook.wait_notifications(1).await;
    assert_eq!(got.len(), 1);
    let path = format!("Users/{user}/todo/lists/{list}/tasks/{t}");
    assert_eq!(got[0]["changeType"], "deleted");
    assert_eq!(got[0]["resource"], path);
    assert_eq!(
        got[0]["resourceData"]["@odata.type"],
        "#Microsoft.Graph.todoTask"
    );
    assert_eq!(got[0]["resourceData"]["id"], t);
    // A second list with two tasks, then the list deleted: two more.
    let l2 = sim
        .state
        .store
        .write()
        .create_list(&user, NameSpec::default())
        .unwrap();
    subscribe(
        &g,
        sub_body(
            &format!("users/{user}/todo/lists/{l2}/tasks"),
            "created,deleted",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    for _ in 0..2 {
        sim.state
            .store
            .write()
            .create_task(&user, &l2, TaskSpec::default())
            .unwrap();
    }
    sim.state.store.write().delete_list(&user, &l2).unwrap();
    let got = hook.wait_notifications(5).await;
    let of = |t: &str| got[1..].iter().filter(|n| n["changeType"] == t).count();
    assert_eq!((of("created"), of("deleted"), got.len()), (2, 2, 5));
}

/// Random mutations (`/_sim/mutate`) notify too, and several notifications share POSTs.
#[tokio::test]
async fn generated_mutations_notify_in_batches() {
    let sim = start(SimSettings {
        notification_delay_ms: 300,
        ..fast()
    })
    .await;
    let user = add_user(&sim, "gen@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    subscribe(
        &g,
        sub_body(
            &format!("users/{user}/todo/lists/{list}/tasks"),
            "created,updated,deleted",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    for i in 0..10 {
        let (st, _) = control(
            &g,
            Method::POST,
            &format!("/users/{user}/todo/lists/{list}/tasks"),
            Some(json!({"title": format!("t{i}")})),
        )
        .await;
        assert_eq!(st, 201);
    }
    let got = hook.wait_notifications(10).await;
    assert_eq!(got.len(), 10);
    assert!(hook.rec.posts.load(Ordering::SeqCst) < 10, "batched");
    let (st, summary) = control(
        &g,
        Method::POST,
        "/mutate",
        Some(json!({"users": [user], "count": 60, "seed": 3, "structural": false})),
    )
    .await;
    assert_eq!(st, 200, "{summary}");
    assert!(
        wait(|| hook.notifications().len() > 10).await,
        "mutations notify: {summary}"
    );
}

/// Drop, duplicate, reorder (seeded), extra delay, and retries of failed deliveries.
#[tokio::test]
async fn delivery_faults_and_retries() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "df@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    subscribe(
        &g,
        sub_body(
            &format!("users/{user}/todo/lists/{list}/tasks"),
            "created",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let create = |n: usize| {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(
                sim.state
                    .store
                    .write()
                    .create_task(&user, &list, TaskSpec::default())
                    .unwrap(),
            );
        }
        ids
    };
    let faults = |v: Value| control(&g, Method::PUT, "/notifications/faults", Some(v));
    assert_eq!(faults(json!({"drop_probability": 1.0})).await.0, 200);
    create(3);
    assert!(wait(|| sim.state.stats.lock().notifications.dropped == 3).await);
    assert!(hook.notifications().is_empty());
    faults(json!({"duplicate_probability": 1.0})).await;
    let ids = create(2);
    let got = hook.wait_notifications(4).await;
    let seen: Vec<&str> = got
        .iter()
        .map(|n| n["resourceData"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen.iter().filter(|s| **s == ids[0]).count(), 2, "{seen:?}");
    hook.rec.notifications.lock().clear();
    faults(json!({"reorder_window": 20, "seed": 1, "max_extra_delay_ms": 100})).await;
    let ids = {
        let mut store = sim.state.store.write();
        (0..20)
            .map(|_| {
                store
                    .create_task(&user, &list, TaskSpec::default())
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let got = hook.wait_notifications(20).await;
    let seen: Vec<String> = got
        .iter()
        .map(|n| n["resourceData"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(seen, ids, "shuffled");
    let (mut a, mut b) = (seen.clone(), ids.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "nothing lost");
    assert_eq!(faults(json!({"drop_probability": 2.0})).await.0, 400);
    control(&g, Method::DELETE, "/notifications/faults", None).await;
    hook.rec.notifications.lock().clear();
    // Two failures, then success: delivered after two retries.
    hook.rec.fail_next.store(2, Ordering::SeqCst);
    create(1);
    assert_eq!(hook.wait_notifications(1).await.len(), 1);
    assert!(sim.state.stats.lock().notifications.retried >= 2);
    // More failures than retries: given up and counted.
    hook.rec.fail_next.store(10, Ordering::SeqCst);
    create(1);
    assert!(wait(|| sim.state.stats.lock().notifications.failed == 1).await);
    assert_eq!(hook.notifications().len(), 1);
}

/// A change made before a subscription existed is not its business, even when it is
/// dispatched afterwards.
#[tokio::test]
async fn earlier_changes_do_not_reach_new_subscriptions() {
    let sim = start(SimSettings {
        notification_delay_ms: 500,
        ..fast()
    })
    .await;
    let user = add_user(&sim, "late@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let res = format!("users/{user}/todo/lists/{list}/tasks");
    let a = subscribe(&g, sub_body(&res, "created", &hook.notify_url(), 60)).await;
    sim.state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    let b = subscribe(&g, sub_body(&res, "created", &hook.notify_url(), 60)).await;
    sim.state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    let got = hook.wait_notifications(3).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let of = |s: &Value| {
        hook.notifications()
            .iter()
            .filter(|n| n["subscriptionId"] == s["id"])
            .count()
    };
    assert_eq!((of(&a), of(&b)), (2, 1), "{got:?}");
}
