//! Lifecycle notifications (`missed`, `reauthorizationRequired`, `subscriptionRemoved`) and
//! delivery to Azure Event Hubs (the outbox).

use std::sync::atomic::Ordering;
use std::time::Duration;

use graph_sim::model::TaskSpec;
use graph_sim::SimSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{add_user, start, Graph, TENANT};
use crate::notifications::{default_list, event, fast};
use crate::webhook::{control, graph, sub_body, subscribe, wait, Hook};

/// `missed` reaches the lifecycle URL; `reauthorizationRequired` pauses notifications after
/// the grace period until `reauthorize`; `subscriptionRemoved` deletes the subscription.
#[tokio::test]
async fn lifecycle_events() {
    let sim = start(SimSettings {
        reauthorization_grace_secs: 0,
        ..fast()
    })
    .await;
    let user = add_user(&sim, "lc@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let mut b = sub_body(
        &format!("users/{user}/todo/lists/{list}/tasks"),
        "created",
        &hook.notify_url(),
        60,
    );
    b["lifecycleNotificationUrl"] = json!(hook.lifecycle_url());
    let s = subscribe(&g, b).await;
    let id = s["id"].as_str().unwrap().to_string();
    let fire = |event: &'static str| {
        let g = &g;
        let id = id.clone();
        async move {
            control(
                g,
                Method::POST,
                &format!("/subscriptions/{id}/lifecycle"),
                Some(json!({"event": event})),
            )
            .await
            .0
        }
    };
    assert_eq!(fire("missed").await, 200);
    let l = hook.wait_lifecycle(1).await;
    assert_eq!(l[0]["lifecycleEvent"], "missed");
    assert_eq!(l[0]["subscriptionId"], id.as_str());
    assert_eq!(l[0]["clientState"], "secretClientValue");
    assert_eq!(l[0]["tenantId"], TENANT);
    assert_eq!(fire("reauthorizationRequired").await, 200);
    assert_eq!(
        hook.wait_lifecycle(2).await[1]["lifecycleEvent"],
        "reauthorizationRequired"
    );
    assert_eq!(
        control(&g, Method::GET, "/subscriptions", None).await.1[0]["needsReauthorization"],
        true
    );
    sim.state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    assert!(wait(|| sim.state.stats.lock().notifications.paused == 1).await);
    assert!(hook.notifications().is_empty(), "paused until reauthorized");
    let r = g
        .http
        .post(g.url(&format!("/v1.0/subscriptions/{id}/reauthorize")))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    sim.state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    assert_eq!(hook.wait_notifications(1).await.len(), 1);
    assert_eq!(fire("subscriptionRemoved").await, 200);
    assert_eq!(
        hook.wait_lifecycle(3).await[2]["lifecycleEvent"],
        "subscriptionRemoved"
    );
    let (st, _) = graph(&g, Method::GET, &format!("/subscriptions/{id}"), None).await;
    assert_eq!(st, 404);
    assert_eq!(fire("missed").await, 404);
    assert!(wait(|| sim.state.stats.lock().notifications.lifecycle_sent == 3).await);
    assert_eq!(
        sim.state.stats.lock().notifications.subscriptions_removed,
        1
    );
}

/// `EventHub:` URLs are neither validated nor called: notifications wait in the outbox, one
/// message per notification, keyed by subscription.
#[tokio::test]
async fn event_hub_urls_fill_the_outbox() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "eh@contoso.com");
    let g = Graph::new(&sim).await;
    let url =
        "EventHub:https://ns.servicebus.windows.net/eventhubname/graph-events?tenantId=contoso.com";
    let s = subscribe(
        &g,
        sub_body(&format!("users/{user}/events"), "created", url, 60),
    )
    .await;
    assert_eq!(sim.state.stats.lock().notifications.validations, 0);
    // The hub gets a validation message to ignore, before any notification.
    let v = sim.state.eventhub.drain();
    assert_eq!(
        (v.len(), v[0].hub.as_str(), v[0].subscription_id.as_str()),
        (1, "graph-events", "NA")
    );
    let body: Value = serde_json::from_slice(&v[0].body).unwrap();
    assert!(body["value"][0]["changeType"]
        .as_str()
        .unwrap()
        .starts_with("Validation: Testing client application reachability"));
    sim.state
        .store
        .write()
        .create_event(&user, "primary", event("a"))
        .unwrap();
    sim.state
        .store
        .write()
        .create_event(&user, "primary", event("b"))
        .unwrap();
    let mut msgs = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), sim.state.eventhub.recv())
            .await
            .expect("message");
        msgs.push(m);
    }
    for m in &msgs {
        assert_eq!(m.hub, "graph-events");
        assert_eq!(m.subscription_id, s["id"].as_str().unwrap());
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["value"].as_array().unwrap().len(), 1);
        assert_eq!(v["value"][0]["changeType"], "created");
    }
    assert_ne!(msgs[0].body, msgs[1].body);
    assert!(sim.state.eventhub.is_empty());
}

/// Notifications given up after the last retry earn a `missed` lifecycle event.
#[tokio::test]
async fn given_up_notifications_send_missed() {
    let sim = start(SimSettings {
        notification_retries: 1,
        ..fast()
    })
    .await;
    let user = add_user(&sim, "miss@contoso.com");
    let list = default_list(&sim, &user);
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let mut b = sub_body(
        &format!("users/{user}/todo/lists/{list}/tasks"),
        "created",
        &hook.notify_url(),
        60,
    );
    b["lifecycleNotificationUrl"] = json!(hook.lifecycle_url());
    let s = subscribe(&g, b).await;
    hook.rec.fail_next.store(2, Ordering::SeqCst);
    sim.state
        .store
        .write()
        .create_task(&user, &list, TaskSpec::default())
        .unwrap();
    let l = hook.wait_lifecycle(1).await;
    assert_eq!(l[0]["lifecycleEvent"], "missed");
    assert_eq!(l[0]["subscriptionId"], s["id"]);
    assert!(hook.notifications().is_empty());
    assert_eq!(sim.state.stats.lock().notifications.failed, 1);
}
