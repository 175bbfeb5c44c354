//! Paths as Graph decodes them, and the sync state behind links: generations, the 410s they
//! end in (with and without `Location`), and the id type a calendar view's state is bound to.

use graph_sim::model::{EventSpec, NameSpec};
use graph_sim::{GoneLocation, SimSettings};
use serde_json::{json, Value};

use crate::client::{start, tasks, Graph};

async fn error(r: reqwest::Response) -> (u16, Option<String>, String, String) {
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let v: Value = r.json().await.unwrap();
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let message = v["error"]["message"].as_str().unwrap_or("").to_string();
    (status, location, code, message)
}

/// A deltaLink after three more responses of its sync state: expired.
async fn aged(g: &Graph, delta: String) -> String {
    for _ in 0..3 {
        assert_eq!(g.page(&delta, None).await.status, 200);
    }
    delta
}

fn ids(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Every route takes its segments percent-decoded: a UPN with `%40`, a list or calendar id
/// ending `%3D` (base64 padding), in plain requests and in `$batch` items; a `+` stays a `+`.
#[tokio::test]
async fn path_segments_are_percent_decoded_on_every_route() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (user, list, plain) = tasks(&sim, &g, "pat+cal@contoso.com", 3);
    assert!(list.ends_with('='), "ids carry base64 padding: {list}");
    let cal = sim
        .state
        .store
        .write()
        .create_calendar(&user, NameSpec::default())
        .unwrap();
    assert!(cal.ends_with('='));
    sim.state
        .store
        .write()
        .create_event(
            &user,
            &cal,
            EventSpec {
                subject: Some("Review".into()),
                start: "2026-01-05T10:00:00".parse().unwrap(),
                end: "2026-01-05T11:00:00".parse().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    let enc = |s: &str| {
        s.replace('@', "%40")
            .replace('=', "%3D")
            .replace('+', "%2B")
    };
    let upn = "pat+cal@contoso.com";
    let (want, _) = g.round(&plain, None).await;
    let w = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
    for url in [
        format!(
            "/v1.0/users/{}/todo/lists/{}/tasks/delta",
            enc(upn),
            enc(&list)
        ),
        format!(
            "/v1.0/users/pat+cal%40contoso.com/todo/lists/{}/tasks/delta",
            enc(&list)
        ),
        format!("/v1.0/users/{}/todo/lists/delta", enc(upn)),
    ] {
        let (pages, _) = g.round(&g.url(&url), None).await;
        assert!(!pages.concat().is_empty(), "{url}");
        if url.contains("/tasks/") {
            assert_eq!(ids(&pages.concat()), ids(&want.concat()), "{url}");
        }
    }
    let view = format!(
        "/beta/users/{}/calendars/{}/calendarView/delta?{w}",
        enc(upn),
        enc(&cal)
    );
    let (pages, _) = g.round(&g.url(&view), None).await;
    assert_eq!(pages.concat()[0]["subject"], "Review");
    // A batch item's relative URL is decoded the same way.
    let item = format!("users/{}/todo/lists/{}/tasks/delta", enc(upn), enc(&list));
    let v: Value = g
        .http
        .post(g.url("/v1.0/$batch"))
        .bearer_auth(&g.token)
        .json(&json!({"requests": [{"id": "1", "method": "GET", "url": item}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["responses"][0]["status"], 200, "{v}");
    // The control API's paths too.
    let r = g
        .http
        .patch(g.url(&format!(
            "/_sim/users/{}/todo/lists/{}",
            enc(upn),
            enc(&list)
        )))
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A `+` is a `+` in a path, not a space.
    let r = g
        .get(
            &g.url("/v1.0/users/pat cal@contoso.com/todo/lists/delta"),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
}

/// Outlook keeps three generations of a sync state: every response is a new one, and a
/// link three responses old answers 410 `SyncStateNotFound` with Exchange's message and,
/// as the reports show, no `Location`. Zero generations keeps them all.
#[tokio::test]
async fn old_links_of_a_sync_state_expire_after_three_generations() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (_, _, url) = tasks(&sim, &g, "gen@contoso.com", 8);
    let link1 = g.page(&url, Some(1)).await.next.unwrap(); // generation 1
    let link2 = g.page(&link1, Some(1)).await.next.unwrap(); // 2
    let p3 = g.page(&link2, Some(1)).await; // issues 3
    let link4 = g.page(&p3.next.unwrap(), Some(1)).await.next.unwrap(); // 4: [4][2][3] kept
    let (status, location, code, message) = error(g.get(&link1, Some(1)).await).await;
    assert_eq!(
        (status, location, code.as_str()),
        (410, None, "SyncStateNotFound")
    );
    assert_eq!(
        message,
        "The sync state generation is not found; generation=1;[highest=4][4][2][3]."
    );
    // The newest three still answer, each answer a generation of its own.
    let again = g.page(&link2, Some(1)).await;
    assert_eq!((again.status, again.items), (200, p3.items));
    assert_eq!(g.page(&link4, Some(1)).await.status, 200);
    // A deltaLink polled three more times has aged out as well.
    let (_, delta) = g.round(&url, None).await;
    for _ in 0..3 {
        assert_eq!(g.page(&delta, None).await.status, 200);
    }
    assert_eq!(g.get(&delta, None).await.status(), 410);
    // With every generation kept, nothing expires.
    sim.state.settings.write().sync_state_generations = 0;
    assert_eq!(g.page(&link1, Some(1)).await.status, 200);
}

/// Which 410s name the initial request in `Location` is a knob: documented (resets do,
/// expired generations do not), always, never. Following a `Location` is a full round.
#[tokio::test]
async fn gone_answers_with_and_without_location() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (_, _, url) = tasks(&sim, &g, "loc@contoso.com", 2);
    let patch = |v: Value| g.http.patch(g.url("/_sim/settings")).json(&v).send();
    // Documented: an expired generation has none, a reset has one.
    let (_, d) = g.round(&url, None).await;
    let old = aged(&g, d).await;
    assert_eq!(error(g.get(&old, None).await).await.1, None);
    let (_, d) = g.round(&url, None).await;
    sim.state.evict_tokens(Some("loc@contoso.com")).unwrap();
    let loc = error(g.get(&d, None).await)
        .await
        .1
        .expect("a reset names the restart");
    assert!(loc.ends_with("/tasks/delta?$deltatoken="), "{loc}");
    // Always: the expired link too, and following it is a full round.
    assert_eq!(
        patch(json!({"gone_location": "always"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        sim.state.settings.read().gone_location,
        GoneLocation::Always
    );
    let (_, d) = g.round(&url, None).await;
    let old = aged(&g, d).await;
    let loc = error(g.get(&old, None).await).await.1.expect("always");
    let (pages, _) = g.round(&loc, None).await;
    assert_eq!(pages.concat().len(), 2);
    // Never: not even a reset.
    patch(json!({"gone_location": "never"})).await.unwrap();
    let (_, d) = g.round(&url, None).await;
    sim.state.evict_tokens(None).unwrap();
    let (status, location, _, _) = error(g.get(&d, None).await).await;
    assert_eq!((status, location), (410, None));
    assert_eq!(
        patch(json!({"gone_location": "sometimes"}))
            .await
            .unwrap()
            .status(),
        400
    );
}

/// Graph documents delta links as "compatible with both ID formats": a calendar view's link
/// followed with the other `Prefer: IdType` answers, in that id type. Where a real tenant
/// was seen to refuse it with 410 `SyncStateInvalid` (alcionai/corso PR 3176), the
/// `id_type_bound_links` setting does the same; To Do ids have one kind, so its links never do.
#[tokio::test]
async fn a_calendar_view_link_followed_with_another_id_type() {
    let sim = start(SimSettings::default()).await;
    let mut g = Graph::new(&sim).await;
    let (user, _, tasks_url) = tasks(&sim, &g, "idt@contoso.com", 1);
    let view = g.url("/v1.0/users/idt@contoso.com/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z");
    let (_, delta) = g.round(&view, None).await;
    let (_, tasks_delta) = g.round(&tasks_url, None).await;
    let id = sim
        .state
        .store
        .write()
        .create_event(
            &user,
            "primary",
            EventSpec {
                start: "2026-01-05T10:00:00".parse().unwrap(),
                end: "2026-01-05T11:00:00".parse().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    let regular = sim
        .state
        .store
        .read()
        .event_ids(&user, &id)
        .unwrap()
        .regular_id;
    g.immutable_ids = false;
    let p = g.page(&delta, None).await;
    assert_eq!(p.status, 200);
    assert_eq!(
        ids(&p.items),
        vec![regular],
        "the regular id, from an immutable chain"
    );
    sim.state.settings.write().id_type_bound_links = true;
    let (status, location, code, _) = error(g.get(&delta, None).await).await;
    assert_eq!(
        (status, location, code.as_str()),
        (410, None, "SyncStateInvalid")
    );
    assert_eq!(g.page(&tasks_delta, None).await.status, 200);
    g.immutable_ids = true;
    assert_eq!(g.page(&delta, None).await.status, 200);
}
