//! The directory side of users over real HTTP: the lookup by id or UPN, a rename that keeps
//! the id, users without a mailbox, and app permissions (403s, limited member information,
//! roles fixed in the token).

use base64::Engine as _;
use graph_sim::SimSettings;
use serde_json::{json, Value};

use crate::client::{add_user, get_token, start, tasks, Graph, CLIENT_ID};

pub async fn get(g: &Graph, path: &str) -> (u16, Value) {
    let r = g
        .http
        .get(g.url(path))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn control(g: &Graph, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
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

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

const SELECT: &str = "$select=id,userPrincipalName,mail";

#[tokio::test]
async fn a_user_is_found_by_id_or_any_case_of_its_upn() {
    let sim = start(SimSettings::default()).await;
    let id = add_user(&sim, "Alice@contoso.com");
    let g = Graph::new(&sim).await;
    let upper = id.to_uppercase();
    for key in ["alice@contoso.com", "ALICE%40CONTOSO.COM", &id, &upper] {
        let (s, v) = get(&g, &format!("/v1.0/users/{key}?{SELECT}")).await;
        assert_eq!(s, 200, "{key}: {v}");
        assert_eq!(
            keys(&v),
            ["@odata.context", "id", "mail", "userPrincipalName"],
            "only the selection"
        );
        assert!(v["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("/v1.0/$metadata#users(id,userPrincipalName,mail)/$entity"));
        assert_eq!(
            (&v["id"], &v["userPrincipalName"], &v["mail"]),
            (
                &json!(id),
                &json!("Alice@contoso.com"),
                &json!("Alice@contoso.com")
            )
        );
    }
    let (s, v) = get(&g, &format!("/beta/users/{id}")).await;
    assert_eq!(s, 200);
    assert!(v["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("#users/$entity"));
    assert_eq!(v["displayName"], "Alice");
    assert!(v.get("businessPhones").is_some(), "the default set: {v}");
    let (s, v) = get(&g, &format!("/v1.0/users/bob@contoso.com?{SELECT}")).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "Request_ResourceNotFound");
    assert_eq!(
        v["error"]["message"],
        "Resource 'bob@contoso.com' does not exist or one of its queried reference-property objects are not present."
    );
    let (s, v) = get(&g, "/v1.0/users/alice@contoso.com?$select=id,nonsense").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    // Mailbox routes take either key too, in any case.
    for key in [id.as_str(), "ALICE@contoso.com"] {
        let (s, _) = get(&g, &format!("/v1.0/users/{key}/todo/lists/delta")).await;
        assert_eq!(s, 200, "{key}");
    }
    // Inside a batch as well.
    let r = g
        .http
        .post(g.url("/v1.0/$batch"))
        .bearer_auth(&g.token)
        .json(&json!({"requests": [{"id": "1", "method": "GET", "url": format!("/users/alice@contoso.com?{SELECT}")}]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["responses"][0]["status"], 200, "{v}");
    assert_eq!(v["responses"][0]["body"]["id"], json!(id));
    assert_eq!(sim.state.stats.lock().count("user", 404), 1);
}

#[tokio::test]
async fn a_renamed_user_keeps_its_id_and_every_item() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (id, list, url) = tasks(&sim, &g, "jane.doe@contoso.com", 5);
    let by_id = g.url(&format!("/v1.0/users/{id}/todo/lists/{list}/tasks/delta"));
    let (pages, by_upn_link) = g.round(&url, None).await;
    let before: Vec<Value> = pages.concat();
    let (_, by_id_link) = g.round(&by_id, None).await;
    let (s, v) = control(
        &g,
        reqwest::Method::PATCH,
        "/users/Jane.Doe@contoso.com",
        json!({"userPrincipalName": "jane.smith@contoso.com"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["id"], &v["mail"]),
        (&json!(id), &json!("jane.smith@contoso.com"))
    );
    // The old name is unknown everywhere: lookup, mailbox routes, links built on it.
    let (s, v) = get(&g, &format!("/v1.0/users/jane.doe@contoso.com?{SELECT}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    assert_eq!(g.page(&url, None).await.status, 404);
    assert_eq!(g.page(&by_upn_link, None).await.status, 404);
    let (s, v) = get(&g, &format!("/v1.0/users/JANE.SMITH@contoso.com?{SELECT}")).await;
    assert_eq!((s, &v["id"]), (200, &json!(id)));
    // Same ids, same items; links built on the id go on and see no change.
    let renamed = g.url(&format!(
        "/v1.0/users/jane.smith@contoso.com/todo/lists/{list}/tasks/delta"
    ));
    let (pages, _) = g.round(&renamed, None).await;
    assert_eq!(pages.concat(), before);
    let (pages, _) = g.round(&by_id_link, None).await;
    assert!(pages.concat().is_empty());
    let (s, _) = control(
        &g,
        reqwest::Method::POST,
        "/users",
        json!({"tenant": "contoso", "userPrincipalName": "jane.doe@contoso.com"}),
    )
    .await;
    assert_eq!(s, 201, "the old name is free for someone else");
    let (s, _) = control(
        &g,
        reqwest::Method::PATCH,
        &format!("/users/{id}"),
        json!({"userPrincipalName": "JANE.DOE@contoso.com"}),
    )
    .await;
    assert_eq!(s, 409, "a name in use cannot be taken");
}

#[tokio::test]
async fn a_deleted_user_is_invalid_for_its_mailbox_unknown_to_the_directory_and_leaves_its_groups()
{
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (id, _, url) = tasks(&sim, &g, "gone@contoso.com", 3);
    let view = format!("/v1.0/users/{id}/calendarView/delta?startDateTime=2026-05-01T00:00:00Z&endDateTime=2026-06-01T00:00:00Z");
    assert_eq!(get(&g, &view).await.0, 200);
    let (s, v) = control(
        &g,
        reqwest::Method::POST,
        "/groups",
        json!({"tenant": "contoso", "id": "g-del", "members": [id]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let r = g
        .http
        .delete(g.url(&format!("/_sim/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, v) = get(&g, &view).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "ErrorInvalidUser", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is invalid"));
    assert_eq!(g.page(&url, None).await.status, 404, "To Do too");
    let (s, v) = get(&g, &format!("/v1.0/users/gone@contoso.com?{SELECT}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    let (s, v) = get(
        &g,
        "/v1.0/groups/g-del/transitiveMembers/microsoft.graph.user",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"], json!([]), "no longer a member");
    let (s, v) = control(
        &g,
        reqwest::Method::POST,
        "/users",
        json!({"tenant": "contoso", "userPrincipalName": "gone@contoso.com"}),
    )
    .await;
    assert_eq!(s, 201, "the name is free: {v}");
    assert_ne!(v["id"], json!(id), "a new account, a new id");
}

#[tokio::test]
async fn a_user_without_a_mailbox_answers_mailbox_not_enabled() {
    let sim = start(SimSettings::default()).await;
    let (_, list, _) = {
        let g = Graph::new(&sim).await;
        tasks(&sim, &g, "nolicense@contoso.com", 1)
    };
    let g = Graph::new(&sim).await;
    let w = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
    let paths = [
        format!("/v1.0/users/nolicense@contoso.com/calendarView/delta?{w}"),
        "/beta/users/nolicense@contoso.com/calendars/delta".to_string(),
        "/v1.0/users/nolicense@contoso.com/todo/lists/delta".to_string(),
        format!("/v1.0/users/nolicense@contoso.com/todo/lists/{list}/tasks/delta"),
    ];
    let switch = |on: bool| {
        control(
            &g,
            reqwest::Method::PATCH,
            "/users/nolicense@contoso.com",
            json!({"mailbox": on}),
        )
    };
    assert_eq!(switch(false).await.1["mailbox"], false);
    for p in &paths {
        let (s, v) = get(&g, p).await;
        assert_eq!(s, 404, "{p}");
        assert_eq!(v["error"]["code"], "MailboxNotEnabledForRESTAPI");
        assert_eq!(
            v["error"]["message"],
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
        );
    }
    let (s, _) = get(&g, "/v1.0/users/nolicense@contoso.com").await;
    assert_eq!(s, 200, "the directory still knows the user");
    switch(true).await;
    for p in &paths {
        assert_eq!(get(&g, p).await.0, 200, "{p}");
    }
}

fn roles_claim(token: &str) -> Vec<String> {
    let claims = token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    serde_json::from_value(v["roles"].clone()).unwrap()
}

#[tokio::test]
async fn missing_permissions_answer_as_graph_does() {
    let sim = start(SimSettings::default()).await;
    let (_, list, _) = {
        let g = Graph::new(&sim).await;
        tasks(&sim, &g, "perm@contoso.com", 1)
    };
    let group = sim
        .state
        .store
        .write()
        .create_group(graph_sim::model::GroupSpec {
            tenant: Some("contoso".into()),
            members: vec!["perm@contoso.com".into()],
            ..Default::default()
        })
        .unwrap()
        .id;
    let old = Graph::new(&sim).await;
    assert_eq!(
        roles_claim(&old.token),
        [
            "Calendars.Read",
            "GroupMember.Read.All",
            "Tasks.Read.All",
            "User.Read.All"
        ]
    );
    let w = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
    let cal = format!("/v1.0/users/perm@contoso.com/calendarView/delta?{w}");
    let todo = format!("/v1.0/users/perm@contoso.com/todo/lists/{list}/tasks/delta");
    let user = format!("/v1.0/users/perm@contoso.com?{SELECT}");
    let members = format!("/v1.0/groups/{group}/transitiveMembers/microsoft.graph.user?{SELECT}");
    let (s, v) = control(
        &old,
        reqwest::Method::PUT,
        &format!("/clients/{CLIENT_ID}/roles"),
        json!({"roles": ["Calendars.Read"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        get(&old, &members).await.0,
        200,
        "a token keeps the roles it was issued with"
    );
    let mut g = Graph::new(&sim).await;
    assert_eq!(roles_claim(&g.token), ["Calendars.Read"]);
    assert_eq!(get(&g, &cal).await.0, 200);
    for p in [&user, &members, &format!("/v1.0/groups/{group}/members")] {
        let (s, v) = get(&g, p).await;
        assert_eq!(s, 403, "{p}");
        assert_eq!(v["error"]["code"], "Authorization_RequestDenied");
        assert_eq!(
            v["error"]["message"],
            "Insufficient privileges to complete the operation."
        );
    }
    let (s, v) = get(&g, &todo).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("accessDenied"))
    );
    // With GroupMember.Read.All alone, members the app may not read come back limited.
    control(
        &g,
        reqwest::Method::PUT,
        &format!("/clients/{CLIENT_ID}/roles"),
        json!({"roles": ["GroupMember.Read.All"], "tenant": "contoso"}),
    )
    .await;
    g.token = get_token(&g.http, &g.base).await;
    let (s, v) = get(&g, &cal).await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "ErrorAccessDenied");
    assert_eq!(
        v["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    let (s, v) = get(&g, &members).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["value"][0],
        json!({"@odata.type": "#microsoft.graph.user", "id": v["value"][0]["id"], "userPrincipalName": null, "mail": null})
    );
    sim.state.settings.write().todo_denied = graph_sim::permissions::TodoDenied::Unauthorized;
    let (s, v) = get(&g, &todo).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("UnknownError"))
    );
    let (s, v) = control(
        &g,
        reqwest::Method::DELETE,
        &format!("/clients/{CLIENT_ID}/roles"),
        json!(null),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    g.token = get_token(&g.http, &g.base).await;
    for p in [&cal, &todo, &user, &members] {
        assert_eq!(get(&g, p).await.0, 200, "{p}");
    }
    let (s, _) = control(
        &g,
        reqwest::Method::PUT,
        "/clients/nobody/roles",
        json!({"roles": []}),
    )
    .await;
    assert_eq!(s, 404);
}
