use std::collections::HashSet;
use std::time::{Duration, Instant};

use graph_sim::faults::{FaultKind, FaultSpec, LinkKind};
use graph_sim::SimSettings;
use serde_json::{json, Value};

use crate::client::{start, tasks, token_request, Graph};

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn gone_on_next_and_delta_links_with_location_of_the_initial_request() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "gone@contoso.com", 5).2;
    let p1 = g.page(&url, Some(2)).await;
    let next = p1.next.unwrap();
    sim.state.add_fault(FaultSpec {
        on: Some(LinkKind::Next),
        count: Some(1),
        ..FaultSpec::new(FaultKind::Gone)
    });
    let r = g.get(&next, Some(2)).await;
    assert_eq!(r.status(), 410);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.ends_with("/tasks/delta?$deltatoken="),
        "{location}"
    );
    assert!(error_code(r)
        .await
        .eq_ignore_ascii_case("syncStateNotFound"));
    // The evicted link stays gone; the Location restarts the round from scratch.
    assert_eq!(g.get(&next, Some(2)).await.status(), 410);
    let (pages, delta) = g.round(&location, Some(2)).await;
    assert_eq!(pages.concat().len(), 5);
    sim.state.add_fault(FaultSpec {
        on: Some(LinkKind::Delta),
        count: Some(1),
        ..FaultSpec::new(FaultKind::Gone)
    });
    let r = g.get(&delta, None).await;
    assert_eq!(r.status(), 410);
    assert!(r.headers().contains_key("location"));
    // Eviction through the control API.
    let (_, delta) = g.round(&location, None).await;
    let n: Value = g
        .http
        .post(g.url("/_sim/evict"))
        .json(&json!({"user": "gone@contoso.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(n["evicted"].as_u64().unwrap() >= 1);
    assert_eq!(g.get(&delta, None).await.status(), 410);
    // A calendar view's Location carries its window.
    let r = g.get(&g.url("/v1.0/users/gone@contoso.com/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-01-02T00:00:00Z"), None).await;
    let v: Value = r.json().await.unwrap();
    sim.state.evict_tokens(None).unwrap();
    let r = g.get(v["@odata.deltaLink"].as_str().unwrap(), None).await;
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.contains("startDateTime=2026-01-01T00%3A00%3A00Z") && loc.ends_with("$deltatoken="),
        "{loc}"
    );
    assert_eq!(g.page(&loc, None).await.status, 200);
}

#[tokio::test]
async fn throttling_with_fractional_retry_after_and_server_errors() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "busy@contoso.com", 1).2;
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        retry_after: Some(2.128),
        ..FaultSpec::new(FaultKind::Throttle)
    });
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2.128");
    assert_eq!(
        g.get(&url, None).await.status(),
        200,
        "count-limited rule is spent"
    );
    for (kind, status) in [
        (FaultKind::Unavailable, 503),
        (FaultKind::GatewayTimeout, 504),
    ] {
        sim.state.add_fault(FaultSpec {
            count: Some(2),
            ..FaultSpec::new(kind)
        });
        assert_eq!(g.get(&url, None).await.status(), status);
        assert_eq!(g.get(&url, None).await.status(), status);
        assert_eq!(g.get(&url, None).await.status(), 200);
    }
    // By probability, and only for one user.
    let other = tasks(&sim, &g, "calm@contoso.com", 1).2;
    sim.state.add_fault(FaultSpec {
        user: Some("busy@contoso.com".into()),
        probability: Some(0.5),
        ..FaultSpec::new(FaultKind::Unavailable)
    });
    let mut hits = 0;
    for _ in 0..40 {
        if g.get(&url, None).await.status() == 503 {
            hits += 1;
        }
        assert_eq!(g.get(&other, None).await.status(), 200);
    }
    assert!((5..35).contains(&hits), "{hits}/40");
    let stats: Value = reqwest::get(g.url("/_sim/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["requests"]["tasks"]["503"].as_u64().unwrap(),
        2 + hits
    );
}

#[tokio::test]
async fn malformed_truncated_and_slow_answers() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "flaky@contoso.com", 20).2;
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        ..FaultSpec::new(FaultKind::Malformed)
    });
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "not JSON");
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        ..FaultSpec::new(FaultKind::Truncated)
    });
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "body cut short");
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        delay_ms: Some(300),
        ..FaultSpec::new(FaultKind::Slow)
    });
    let t0 = Instant::now();
    assert_eq!(g.get(&url, None).await.status(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // The same link answers normally after the faults: nothing moved.
    let p = g.page(&url, None).await;
    assert_eq!(p.items.len(), 10);
}

#[tokio::test]
async fn fifth_concurrent_request_per_mailbox_is_throttled_and_budget_is_enforced() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "hot@contoso.com", 1).2;
    let cold = tasks(&sim, &g, "cold@contoso.com", 1).2;
    sim.state.add_fault(FaultSpec {
        user: Some("hot@contoso.com".into()),
        delay_ms: Some(400),
        ..FaultSpec::new(FaultKind::Slow)
    });
    let futs: Vec<_> = (0..5).map(|_| g.get(&url, None)).collect();
    let (results, cold_status) = tokio::join!(futures_util::future::join_all(futs), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        g.get(&cold, None).await.status()
    });
    let statuses: Vec<u16> = results.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4);
    assert_eq!(cold_status, 200, "another mailbox is not affected");
    let throttled = results.iter().find(|r| r.status() == 429).unwrap();
    assert!(throttled.headers().contains_key("retry-after"));
    let user_id = sim
        .state
        .store
        .read()
        .user_id("hot@contoso.com")
        .unwrap()
        .to_string();
    assert_eq!(sim.state.stats.lock().max_in_flight[&user_id], 4);
    sim.state.faults.lock().clear();
    // Request budget: 3 per window.
    sim.state.settings.write().mailbox_budget = 3;
    sim.state.mailboxes.reset();
    for _ in 0..3 {
        assert_eq!(g.get(&url, None).await.status(), 200);
    }
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 429);
    let wait: f64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 1.0);
}

#[tokio::test]
async fn expired_token_fault_answers_401_until_a_new_token_is_fetched() {
    let sim = start(SimSettings::default()).await;
    let mut g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "sleepy@contoso.com", 1).2;
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        ..FaultSpec::new(FaultKind::Unauthorized)
    });
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "InvalidAuthenticationToken");
    assert_eq!(g.get(&url, None).await.status(), 401, "that token is dead");
    g.token = crate::client::get_token(&g.http, &g.base).await;
    assert_eq!(g.get(&url, None).await.status(), 200);
}

#[tokio::test]
async fn control_api_over_http() {
    let sim = start(SimSettings::default()).await;
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}/_sim{p}", sim.url());
    let user: Value = http
        .post(u("/users"))
        .json(&json!({"tenant": "contoso", "userPrincipalName": "zoe@contoso.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["userPrincipalName"], "zoe@contoso.com");
    let ev: Value = http.post(u("/users/zoe@contoso.com/calendars/primary/events")).json(&json!({"subject": "Hello", "start": "2026-01-01T10:00:00", "end": "2026-01-01T11:00:00"})).send().await.unwrap().json().await.unwrap();
    let id = ev["id"].as_str().unwrap();
    let r = http
        .patch(u(&format!("/users/zoe@contoso.com/events/{id}")))
        .json(&json!({"subject": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(u("/users/zoe@contoso.com/calendars/primary/events")).json(&json!({"subject": "x", "start": "2026-01-01T10:00:00", "end": "2026-01-01T11:00:00", "colour": 1})).send().await.unwrap();
    assert_eq!(r.status(), 400, "unknown fields are refused");
    assert!(r.text().await.unwrap().contains("colour"));
    let tr: Value = http.get(u("/truth?user=zoe@contoso.com&kind=calendar_view&start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tr["items"][id]["subject"], "Hi");
    let gen: Value = http
        .post(u("/generate"))
        .json(&json!({"users": 2, "tenant": "contoso", "events_per_user": 4, "seed": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gen["users"].as_array().unwrap().len(), 2);
    let m: Value = http
        .post(u("/mutate"))
        .json(&json!({"count": 30, "seed": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        m["ops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
            > 10
    );
    let f: Value = http
        .post(u("/faults"))
        .json(&json!({"kind": "throttle", "probability": 0.5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list: Value = http
        .get(u("/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["id"], f["id"]);
    assert_eq!(
        http.post(u("/faults"))
            .json(&json!({"kind": "explode"}))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        http.delete(u(&format!("/faults/{}", f["id"])))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.patch(u("/settings"))
            .json(&json!({"replay_probability": 0.5}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(sim.state.settings.read().replay_probability, 0.5);
    assert_eq!(
        http.patch(u("/settings"))
            .json(&json!({"no_such": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        http.delete(u("/users/zoe@contoso.com/events/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// JSON batching: up to 20 requests per `POST /$batch`, relative URLs, each answered with its
/// own status (a throttled item fails alone inside a 200 batch), responses in any order.
#[tokio::test]
async fn json_batches_answer_each_item_on_its_own() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let mut rels = Vec::new();
    for i in 0..6 {
        let upn = format!("batch{i}@contoso.com");
        let url = tasks(&sim, &g, &upn, 3).2;
        // Follow the round to its deltaLink: the batch polls those.
        let (_, delta) = g.round(&url, None).await;
        let rel = delta
            .split_once("/v1.0/")
            .map(|(_, r)| r.to_string())
            .expect("relative link");
        rels.push((upn, rel));
    }
    // The third user is throttled: only its item fails.
    sim.state.add_fault(FaultSpec {
        user: Some("batch2@contoso.com".into()),
        retry_after: Some(1.5),
        ..FaultSpec::new(FaultKind::Throttle)
    });
    let requests: Vec<Value> = rels
        .iter()
        .enumerate()
        .map(|(i, (_, rel))| {
            json!({"id": i.to_string(), "method": "GET", "url": rel,
                   "headers": {"Prefer": "odata.maxpagesize=2"}})
        })
        .collect();
    let post = |body: Value| {
        g.http
            .post(g.url("/v1.0/$batch"))
            .bearer_auth(&g.token)
            .json(&body)
            .send()
    };
    let r = post(json!({ "requests": requests })).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let responses = v["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 6);
    for resp in responses {
        let i: usize = resp["id"].as_str().unwrap().parse().unwrap();
        if i == 2 {
            assert_eq!(resp["status"], 429);
            assert_eq!(resp["headers"]["retry-after"], "1.5");
            assert_eq!(resp["body"]["error"]["code"], "TooManyRequests");
        } else {
            assert_eq!(resp["status"], 200, "{resp}");
            assert!(resp["body"]["value"].as_array().unwrap().is_empty());
            let link = resp["body"]["@odata.deltaLink"].as_str().unwrap();
            assert!(
                link.starts_with(&g.base) && link.contains("$deltatoken="),
                "{link}"
            );
        }
    }
    // Any order: over a few batches the order differs from the request order.
    let mut orders = HashSet::new();
    for _ in 0..5 {
        let v: Value = post(json!({ "requests": requests }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let order: Vec<String> = v["responses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        orders.insert(order);
    }
    assert!(orders.len() > 1, "responses come back in any order");
    // Limits: 21 requests, duplicate ids, absolute URLs, no token.
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": rels[0].1}))
        .collect();
    assert_eq!(
        post(json!({ "requests": many })).await.unwrap().status(),
        400
    );
    let dup = json!({"requests": [
        {"id": "1", "method": "GET", "url": rels[0].1},
        {"id": "1", "method": "GET", "url": rels[1].1}]});
    assert_eq!(post(dup).await.unwrap().status(), 400);
    let abs = json!({"requests": [{"id": "a", "method": "GET", "url": g.url("/v1.0/users/x")}]});
    let v: Value = post(abs).await.unwrap().json().await.unwrap();
    assert_eq!(v["responses"][0]["status"], 400);
    let r = g
        .http
        .post(g.url("/v1.0/$batch"))
        .json(&json!({ "requests": [{"id": "1", "method": "GET", "url": rels[0].1}] }))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["responses"][0]["status"], 401,
        "each item is authenticated"
    );
    assert!(sim.state.stats.lock().count("batch", 200) >= 7);
}

/// `redirect` and `oversized` on a delta request and on the token endpoint, where only rules
/// naming it apply.
#[tokio::test]
async fn redirects_and_oversized_bodies_on_delta_and_token_requests() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let url = tasks(&sim, &g, "far@contoso.com", 3).2;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let elsewhere = "https://elsewhere.invalid/v1.0/x?$deltatoken=1";
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        location: Some(elsewhere.into()),
        ..FaultSpec::new(FaultKind::Redirect)
    });
    let r = http.get(&url).bearer_auth(&g.token).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], elsewhere);
    // A page, then whitespace up to the size asked for, with no length announced.
    sim.state.add_fault(FaultSpec {
        count: Some(1),
        body_bytes: Some(1_000_000),
        ..FaultSpec::new(FaultKind::Oversized)
    });
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.content_length().is_none());
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 1_000_000);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["value"].as_array().unwrap().len(), 3);
    // The token endpoint: rules for every Graph request leave it alone.
    sim.state.add_fault(FaultSpec::new(FaultKind::Throttle));
    let base = sim.url();
    let token = || token_request(&http, &base);
    assert_eq!(token().await.status(), 200);
    sim.state.faults.lock().clear();
    let on_token = |kind| FaultSpec {
        endpoint: Some(graph_sim::faults::TOKEN_ENDPOINT.into()),
        count: Some(1),
        ..FaultSpec::new(kind)
    };
    let trap = "http://127.0.0.1:9/steal";
    sim.state.add_fault(FaultSpec {
        location: Some(trap.into()),
        ..on_token(FaultKind::Redirect)
    });
    let r = token().await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (307, trap)
    );
    sim.state.add_fault(FaultSpec {
        body_bytes: Some(100_000),
        ..on_token(FaultKind::Oversized)
    });
    let body = token().await.bytes().await.unwrap();
    assert_eq!(body.len(), 100_000);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    sim.state.add_fault(FaultSpec {
        retry_after: Some(2.5),
        ..on_token(FaultKind::Throttle)
    });
    let r = token().await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "2.5")
    );
    assert_eq!(token().await.status(), 200, "count-limited rules are spent");
}
