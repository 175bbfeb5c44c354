//! `/subscriptions` as Graph answers it: the validation handshake, refused resources and
//! URLs, lifetimes, the per-mailbox limit, renewals, paging, deletes and 404s.

use std::time::Duration;

use graph_sim::SimSettings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{add_user, start, Graph, CLIENT_ID};
use crate::webhook::{control, graph, sub_body, subscribe, Handshake, Hook};

fn fast() -> SimSettings {
    SimSettings {
        notification_delay_ms: 20,
        notification_retry_ms: 20,
        ..Default::default()
    }
}

async fn sim_subscriptions(g: &Graph) -> Vec<Value> {
    let (st, v) = control(g, Method::GET, "/subscriptions", None).await;
    assert_eq!(st, 200);
    v.as_array().cloned().unwrap_or_default()
}

/// The handshake reaches both URLs with a decodable token; the answer is the subscription
/// object with every documented property; GET returns the same.
#[tokio::test]
async fn create_validates_both_urls_and_returns_the_subscription() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "sub@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let mut body = sub_body(
        "/users/SUB@contoso.com/events",
        "created,updated",
        &hook.notify_url(),
        60,
    );
    body["lifecycleNotificationUrl"] = json!(hook.lifecycle_url());
    let s = subscribe(&g, body.clone()).await;
    let tokens = hook.rec.tokens.lock().clone();
    assert_eq!(tokens.len(), 2, "notification and lifecycle URLs validated");
    assert!(
        tokens[0].starts_with("Validation: Testing client application reachability"),
        "{tokens:?}"
    );
    assert_eq!(s["resource"], "/users/SUB@contoso.com/events");
    assert_eq!(s["applicationId"], CLIENT_ID);
    assert_eq!(s["changeType"], "created,updated");
    assert_eq!(s["clientState"], "secretClientValue");
    assert_eq!(s["notificationUrl"], hook.notify_url());
    assert_eq!(s["lifecycleNotificationUrl"], hook.lifecycle_url());
    assert_eq!(s["latestSupportedTlsVersion"], "v1_2");
    assert!(uuid::Uuid::parse_str(s["id"].as_str().unwrap()).is_ok());
    assert!(uuid::Uuid::parse_str(s["creatorId"].as_str().unwrap()).is_ok());
    assert!(s["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("/v1.0/$metadata#subscriptions/$entity"));
    let asked =
        chrono::DateTime::parse_from_rfc3339(body["expirationDateTime"].as_str().unwrap()).unwrap();
    let got =
        chrono::DateTime::parse_from_rfc3339(s["expirationDateTime"].as_str().unwrap()).unwrap();
    assert_eq!(asked, got);
    let id = s["id"].as_str().unwrap();
    let (st, again) = graph(&g, Method::GET, &format!("/subscriptions/{id}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(again["expirationDateTime"], s["expirationDateTime"]);
    let listed = sim_subscriptions(&g).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["mailbox"], user);
    assert_eq!(listed[0]["kind"], "events");
    let st = sim.state.stats.lock().clone();
    assert_eq!(st.count("subscriptions", 201), 1);
    assert_eq!(st.notifications.validations, 2);
}

/// A wrong echo, an error, a still-encoded token, an unreachable endpoint: 400
/// ValidationError with Graph's messages, and no subscription.
#[tokio::test]
async fn failed_handshakes_refuse_the_subscription() {
    let sim = start(fast()).await;
    add_user(&sim, "v@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let cases = [
        (
            Handshake::WrongToken,
            "Response must exactly match validationToken query parameter.",
        ),
        (
            Handshake::Encoded,
            "Response must exactly match validationToken query parameter.",
        ),
        (
            Handshake::ServerError,
            "Notification endpoint must respond with 200 OK to validation request.",
        ),
    ];
    for (h, msg) in cases {
        hook.handshake(h);
        let body = sub_body(
            "users/v@contoso.com/events",
            "created",
            &hook.notify_url(),
            60,
        );
        let (st, v) = graph(&g, Method::POST, "/subscriptions", Some(body)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["code"], "ValidationError");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.starts_with("Subscription validation request failed.") && m.ends_with(msg),
            "{m}"
        );
    }
    // Nothing listens on port 9 of loopback.
    let body = sub_body(
        "users/v@contoso.com/events",
        "created",
        "http://127.0.0.1:9/x",
        60,
    );
    let (st, v) = graph(&g, Method::POST, "/subscriptions", Some(body)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("ValidationError"))
    );
    // A good notification URL but a failing lifecycle URL fails too.
    hook.handshake(Handshake::Echo);
    let mut body = sub_body(
        "users/v@contoso.com/events",
        "created",
        &hook.notify_url(),
        60,
    );
    body["lifecycleNotificationUrl"] = json!("http://127.0.0.1:9/life");
    let (st, _) = graph(&g, Method::POST, "/subscriptions", Some(body)).await;
    assert_eq!(st, 400);
    assert!(sim_subscriptions(&g).await.is_empty());
    assert_eq!(sim.state.stats.lock().notifications.validations_failed, 5);
}

/// The `validation` delivery fault fails handshakes of a well-behaved endpoint.
#[tokio::test]
async fn validation_faults_fail_handshakes() {
    let sim = start(fast()).await;
    add_user(&sim, "vf@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    for (fault, msg) in [
        ("timeout", "Subscription validation request timed out."),
        ("wrong_token", "Subscription validation request failed. Response must exactly match validationToken query parameter."),
        ("error", "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."),
    ] {
        let (st, _) = control(&g, Method::PUT, "/notifications/faults", Some(json!({"validation": fault}))).await;
        assert_eq!(st, 200);
        let body = sub_body("users/vf@contoso.com/events", "created", &hook.notify_url(), 60);
        let (st, v) = graph(&g, Method::POST, "/subscriptions", Some(body)).await;
        assert_eq!(st, 400);
        assert_eq!(v["error"]["message"], msg);
    }
    control(&g, Method::DELETE, "/notifications/faults", None).await;
    let body = sub_body(
        "users/vf@contoso.com/events",
        "created",
        &hook.notify_url(),
        60,
    );
    subscribe(&g, body).await;
}

/// Resources Graph does not notify on, unknown users and lists, `http` URLs off loopback,
/// `/me`, bad properties: each refused as Graph refuses it, before any handshake.
#[tokio::test]
async fn unsupported_requests_are_refused() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "r@contoso.com");
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let url = hook.notify_url();
    let invalid = "Operation: Create; Exception: [Status Code: BadRequest; Reason: Invalid resource specified in payload]";
    for resource in [
        "users/r@contoso.com/calendars".to_string(),
        "users/r@contoso.com/todo/lists".to_string(),
        "users/r@contoso.com/calendarView".to_string(),
        format!("users/{user}/todo/lists/{list}"),
        "users/r@contoso.com/events?$filter=subject eq 'x'".to_string(),
    ] {
        let (st, v) = graph(
            &g,
            Method::POST,
            "/subscriptions",
            Some(sub_body(&resource, "created", &url, 60)),
        )
        .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (400, Some("ExtensionError")),
            "{resource}"
        );
        assert_eq!(v["error"]["message"], invalid);
    }
    let (st, v) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(
            "users/nobody@contoso.com/events",
            "created",
            &url,
            60,
        )),
    )
    .await;
    assert_eq!(st, 404);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("The requested user 'nobody@contoso.com' is invalid."));
    let (st, _) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(
            "users/r@contoso.com/todo/lists/AQMkNope/tasks",
            "created",
            &url,
            60,
        )),
    )
    .await;
    assert_eq!(st, 404);
    let (st, v) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(
            "users/r@contoso.com/events",
            "created",
            "http://hook.example.com/n",
            60,
        )),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("InvalidRequest"))
    );
    assert_eq!(
        v["error"]["message"],
        "NotificationUrl scheme='http' is not supported."
    );
    let (st, _) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body("me/events", "created", &url, 60)),
    )
    .await;
    assert_eq!(st, 400);
    let mut b = sub_body("users/r@contoso.com/events", "created,moved", &url, 60);
    let (st, _) = graph(&g, Method::POST, "/subscriptions", Some(b.clone())).await;
    assert_eq!(st, 400, "changeType");
    b["changeType"] = json!("created");
    b["clientState"] = json!("x".repeat(129));
    let (st, _) = graph(&g, Method::POST, "/subscriptions", Some(b.clone())).await;
    assert_eq!(st, 400, "clientState");
    b["clientState"] = json!("x".repeat(128));
    b.as_object_mut().unwrap().remove("expirationDateTime");
    let (st, v) = graph(&g, Method::POST, "/subscriptions", Some(b)).await;
    assert_eq!(st, 400);
    assert_eq!(
        v["error"]["message"],
        "expirationDateTime is a required property for subscription creation"
    );
    assert!(
        hook.rec.tokens.lock().is_empty(),
        "no handshake for refused requests"
    );
    // Without a bearer token: 401.
    let r = g
        .http
        .post(g.url("/v1.0/subscriptions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Outlook events live up to 10,080 minutes, To Do tasks up to 4,230; `subscription_max_secs`
/// overrides both, and an expired subscription is gone.
#[tokio::test]
async fn lifetimes_are_capped_and_expired_subscriptions_vanish() {
    let sim = start(fast()).await;
    let user = add_user(&sim, "life@contoso.com");
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let url = hook.notify_url();
    let events = "users/life@contoso.com/events";
    let tasks = format!("users/life@contoso.com/todo/lists/{list}/tasks");
    subscribe(&g, sub_body(events, "created", &url, 10_079)).await;
    let (st, v) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(events, "created", &url, 10_081)),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "ExtensionError");
    assert_eq!(
        v["error"]["message"],
        "Subscription expiration can only be 10080 minutes in the future."
    );
    subscribe(&g, sub_body(&tasks, "created", &url, 4_229)).await;
    let (st, v) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(&tasks, "created", &url, 4_231)),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["error"]["message"],
        "Subscription expiration can only be 4230 minutes in the future."
    );
    let (st, _) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(events, "created", &url, -1)),
    )
    .await;
    assert_eq!(st, 400, "in the past");

    let sim2 = start(SimSettings {
        subscription_max_secs: Some(2),
        ..fast()
    })
    .await;
    add_user(&sim2, "short@contoso.com");
    let g2 = Graph::new(&sim2).await;
    let mut b = sub_body("users/short@contoso.com/events", "created", &url, 0);
    let (st, _) = graph(
        &g2,
        Method::POST,
        "/subscriptions",
        Some(sub_body(
            "users/short@contoso.com/events",
            "created",
            &url,
            1,
        )),
    )
    .await;
    assert_eq!(st, 400, "a minute is past the 2 s override");
    let exp = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    b["expirationDateTime"] = json!(exp.to_rfc3339());
    let s = subscribe(&g2, b).await;
    let id = s["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let (st, v) = graph(&g2, Method::GET, &format!("/subscriptions/{id}"), None).await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "ResourceNotFound");
    assert!(sim_subscriptions(&g2).await.is_empty());
    assert_eq!(
        sim2.state.stats.lock().notifications.subscriptions_expired,
        1
    );
    assert!(
        !sim2.state.store.read().journal.on,
        "no journal without subscriptions"
    );
}

/// PATCH renews within the cap (and only the app's own subscriptions); reauthorize answers
/// 204; DELETE 204 then 404.
#[tokio::test]
async fn renew_reauthorize_and_delete() {
    let sim = start(fast()).await;
    add_user(&sim, "ren@contoso.com");
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    let s = subscribe(
        &g,
        sub_body(
            "users/ren@contoso.com/events",
            "created",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let id = s["id"].as_str().unwrap();
    let later = (chrono::Utc::now() + chrono::Duration::minutes(600))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (st, v) = graph(
        &g,
        Method::PATCH,
        &format!("/subscriptions/{id}"),
        Some(json!({"expirationDateTime": later})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(v["expirationDateTime"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(&later).unwrap()
    );
    let too_late = (chrono::Utc::now() + chrono::Duration::minutes(20_000)).to_rfc3339();
    let (st, _) = graph(
        &g,
        Method::PATCH,
        &format!("/subscriptions/{id}"),
        Some(json!({"expirationDateTime": too_late})),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = graph(
        &g,
        Method::PATCH,
        "/subscriptions/00000000-0000-0000-0000-000000000000",
        Some(json!({"expirationDateTime": later})),
    )
    .await;
    assert_eq!(st, 404);
    let r = g
        .http
        .post(g.url(&format!("/beta/subscriptions/{id}/reauthorize")))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (st, _) = graph(&g, Method::DELETE, &format!("/subscriptions/{id}"), None).await;
    assert_eq!(st, 204);
    for m in [Method::GET, Method::DELETE] {
        let (st, v) = graph(&g, m, &format!("/subscriptions/{id}"), None).await;
        assert_eq!(
            (st, v["error"]["message"].as_str()),
            (404, Some("The object was not found."))
        );
    }
    let n = sim.state.stats.lock().notifications.clone();
    assert_eq!((n.subscriptions_renewed, n.subscriptions_deleted), (1, 1));
}

/// `GET /subscriptions` pages at 100 with `@odata.nextLink`; the mailbox limit answers 403
/// for Outlook resources only.
#[tokio::test]
async fn listing_pages_and_the_mailbox_limit() {
    let sim = start(SimSettings {
        subscriptions_per_mailbox: 103,
        ..fast()
    })
    .await;
    let user = add_user(&sim, "many@contoso.com");
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    let g = Graph::new(&sim).await;
    let hook = Hook::start().await;
    for _ in 0..103 {
        subscribe(
            &g,
            sub_body(
                "users/many@contoso.com/events",
                "created",
                &hook.notify_url(),
                60,
            ),
        )
        .await;
    }
    let (st, v) = graph(
        &g,
        Method::POST,
        "/subscriptions",
        Some(sub_body(
            "users/many@contoso.com/events",
            "created",
            &hook.notify_url(),
            60,
        )),
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(v["error"]["code"], "ExtensionError");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Maximum number of subscriptions has been reached"));
    // To Do is not an Outlook resource.
    subscribe(
        &g,
        sub_body(
            &format!("users/many@contoso.com/todo/lists/{list}/tasks"),
            "created",
            &hook.notify_url(),
            60,
        ),
    )
    .await;
    let (st, first) = graph(&g, Method::GET, "/subscriptions", None).await;
    assert_eq!(st, 200);
    assert_eq!(first["value"].as_array().unwrap().len(), 100);
    let next = first["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_string();
    let r = g
        .http
        .get(&next)
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["value"].as_array().unwrap().len(), 4);
    assert!(second.get("@odata.nextLink").is_none());
    let mut ids: Vec<String> = first["value"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["value"].as_array().unwrap())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 104);
}
