//! Who may use `/subscriptions`: the resource's read permission, one app's subscriptions
//! apart from another's, tenants apart; and the fault rules and counters reaching them.

use graph_sim::SimSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{add_user, start, Graph, CLIENT_ID};
use crate::webhook::{control, graph, sub_body, subscribe, Hook};

fn fast() -> SimSettings {
    SimSettings {
        notification_delay_ms: 20,
        ..Default::default()
    }
}

/// Subscription requests are counted and the fault rules reach them.
#[tokio::test]
async fn fault_rules_reach_subscription_requests() {
    let sim = start(fast()).await;
    add_user(&sim, "f@contoso.com");
    let g = Graph::new(&sim).await;
    let (st, _) = control(
        &g,
        Method::POST,
        "/faults",
        Some(
            json!({"kind": "throttle", "endpoint": "subscriptions", "count": 1, "retry_after": 2}),
        ),
    )
    .await;
    assert_eq!(st, 201);
    let r = g
        .http
        .get(g.url("/v1.0/subscriptions"))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let (st, v) = graph(&g, Method::GET, "/subscriptions", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["value"], json!([]));
    let stats = sim.state.stats.lock().clone();
    assert_eq!(
        (
            stats.count("subscriptions", 429),
            stats.count("subscriptions", 200)
        ),
        (1, 1)
    );
}

/// Creating needs the resource's read permission (Calendars.Read, Tasks.Read.All); an app
/// sees and manages only its own subscriptions; another tenant's users are unknown.
#[tokio::test]
async fn permissions_and_apps_are_separate() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "p@contoso.com");
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    sim.state
        .store
        .write()
        .create_user(graph_sim::model::UserSpec {
            tenant: Some("fabrikam".into()),
            user_principal_name: "x@fabrikam.com".into(),
            id: None,
            display_name: None,
        })
        .unwrap();
    let hook = Hook::start().await;
    let url = hook.notify_url();
    sim.state
        .set_app_roles(None, CLIENT_ID, Some(vec!["Tasks.Read.All".into()]))
        .unwrap();
    let g = Graph::new(&sim).await;
    let events = sub_body("users/p@contoso.com/events", "created", &url, 60);
    let (st, v) = graph(&g, Method::POST, "/subscriptions", Some(events.clone())).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("ErrorAccessDenied"))
    );
    let tasks = sub_body(
        &format!("users/{user}/todo/lists/{list}/tasks"),
        "created",
        &url,
        60,
    );
    let mine = subscribe(&g, tasks).await;
    let (st, _) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body("users/x@fabrikam.com/events", "created", &url, 60)),
    )
    .await;
    assert_eq!(st, 404, "another tenant's user");
    // A second app of the tenant.
    sim.state
        .add_secret_client(crate::client::TENANT, "other-app", "other-secret");
    let r = g
        .http
        .post(g.url(&format!("/{}/oauth2/v2.0/token", crate::client::TENANT)))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "other-app"),
            ("client_secret", "other-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    let token: Value = r.json().await.unwrap();
    let other = Graph {
        http: g.http.clone(),
        base: g.base.clone(),
        token: token["access_token"].as_str().unwrap().to_string(),
        immutable_ids: true,
    };
    let theirs = subscribe(&other, events).await;
    assert_eq!(theirs["applicationId"], "other-app");
    let (_, list_mine) = graph(&g, Method::GET, "/subscriptions", None).await;
    let ids: Vec<&str> = list_mine["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine["id"].as_str().unwrap()]);
    let mine_id = mine["id"].as_str().unwrap();
    for m in [Method::GET, Method::DELETE] {
        let (st, _) = graph(&other, m, &format!("/subscriptions/{mine_id}"), None).await;
        assert_eq!(st, 404, "not the other app's");
    }
    assert_eq!(
        control(&g, Method::GET, "/subscriptions", None)
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
