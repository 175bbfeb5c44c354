//! Security groups over real HTTP: nested members listed transitively and paged, direct
//! members with their types, `/groups/delta` with `members@delta`, the control routes, and
//! groups and membership churn from the generator.

use std::collections::BTreeSet;

use graph_sim::SimSettings;
use serde_json::{json, Value};

use crate::client::{add_user, start, Graph};
use crate::users::{control, get};

const SELECT: &str = "$select=id,userPrincipalName,mail";

async fn create_group(g: &Graph, members: &[&str]) -> String {
    let (s, v) = control(
        g,
        reqwest::Method::POST,
        "/groups",
        json!({"tenant": "contoso", "members": members}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Follows nextLinks from `path`; returns every page's `value`.
async fn pages(g: &Graph, path: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut url = g.url(path);
    loop {
        let r = g.http.get(&url).bearer_auth(&g.token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let v: Value = r.json().await.unwrap();
        out.push(v["value"].as_array().unwrap().clone());
        match v["@odata.nextLink"].as_str() {
            Some(n) => {
                assert!(n.contains("$select=id,userPrincipalName,mail") || !path.contains(SELECT));
                url = n.to_string();
            }
            None => return out,
        }
    }
}

fn ids(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn transitive_user_members_come_once_through_nested_groups() {
    let sim = start(SimSettings::default()).await;
    let u: Vec<String> = (1..=5)
        .map(|n| add_user(&sim, &format!("u{n}@contoso.com")))
        .collect();
    let g = Graph::new(&sim).await;
    let inner = create_group(&g, &["u1@contoso.com", &u[1], &u[2]]).await;
    let outer = create_group(&g, &[&u[2], &u[3], &inner]).await;
    create_group(&g, &[&u[4]]).await;
    let path =
        format!("/v1.0/groups/{outer}/transitiveMembers/microsoft.graph.user?{SELECT}&$top=2");
    let got = pages(&g, &path).await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    let all = got.concat();
    assert_eq!(
        ids(&all),
        u[..4].iter().cloned().collect(),
        "u3 once, u5 not"
    );
    for item in &all {
        let mut k: Vec<&String> = item.as_object().unwrap().keys().collect();
        k.sort();
        assert_eq!(
            k,
            ["id", "mail", "userPrincipalName"],
            "cast lists carry no type"
        );
    }
    let (_, v) = get(
        &g,
        &format!("/v1.0/groups/{outer}/transitiveMembers/microsoft.graph.user?{SELECT}"),
    )
    .await;
    assert!(v["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("$metadata#users(id,userPrincipalName,mail)"));
    assert!(v.get("@odata.nextLink").is_none());
    // Direct members carry their type; the uncast transitive list holds the nested group.
    let (_, v) = get(&g, &format!("/v1.0/groups/{outer}/members?$select=id")).await;
    let types: BTreeSet<(String, String)> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["@odata.type"].as_str().unwrap().into(),
                m["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("#microsoft.graph.user", &u[2]),
        ("#microsoft.graph.user", &u[3]),
        ("#microsoft.graph.group", &inner),
    ]
    .into_iter()
    .map(|(t, i)| (t.to_string(), i.clone()))
    .collect();
    assert_eq!(types, want);
    let (_, v) = get(&g, &format!("/v1.0/groups/{outer}/transitiveMembers")).await;
    assert_eq!(
        v["value"].as_array().unwrap().len(),
        5,
        "four users and the inner group"
    );
    let (_, v) = get(
        &g,
        &format!("/v1.0/groups/{outer}/transitiveMembers/microsoft.graph.group?$count=true"),
    )
    .await;
    assert_eq!(
        ids(v["value"].as_array().unwrap()),
        BTreeSet::from([inner.clone()])
    );
    assert!(
        v.get("@odata.count").is_none(),
        "$count needs ConsistencyLevel: eventual"
    );
    // Fault rules reach directory endpoints by their names.
    let rule = json!({"kind": "throttle", "endpoint": "transitive_members", "count": 1, "retry_after": 0.5});
    assert_eq!(
        control(&g, reqwest::Method::POST, "/faults", rule).await.0,
        201
    );
    let r = g
        .http
        .get(g.url(&path))
        .bearer_auth(&g.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "0.5");
    assert_eq!(get(&g, &path).await.0, 200);
    // Limits and unknown groups.
    let (s, v) = get(
        &g,
        &format!("/v1.0/groups/{outer}/transitiveMembers/microsoft.graph.user?$top=1000"),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_BadRequest"))
    );
    let (s, v) = get(
        &g,
        "/v1.0/groups/00000000-0000-0000-0000-000000000000/members",
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    // Membership changes show at once.
    let del = format!("/groups/{inner}/members/u1@contoso.com");
    assert_eq!(
        control(&g, reqwest::Method::DELETE, &del, json!(null))
            .await
            .0,
        200
    );
    assert_eq!(
        control(&g, reqwest::Method::DELETE, &del, json!(null))
            .await
            .0,
        404
    );
    let all = pages(&g, &path).await.concat();
    assert_eq!(ids(&all), u[1..4].iter().cloned().collect());
    let (s, _) = control(
        &g,
        reqwest::Method::DELETE,
        &format!("/groups/{inner}"),
        json!(null),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(get(&g, &format!("/v1.0/groups/{inner}")).await.0, 404);
    let all = pages(&g, &path).await.concat();
    assert_eq!(ids(&all), u[2..4].iter().cloned().collect());
    let (_, info) = control(
        &g,
        reqwest::Method::GET,
        &format!("/groups/{outer}"),
        json!(null),
    )
    .await;
    assert_eq!(info["transitiveUsers"].as_array().unwrap().len(), 2);
    assert!(sim.state.stats.lock().count("transitive_members", 200) >= 4);
}

#[tokio::test]
async fn transitive_members_page_by_100_by_default() {
    let sim = start(SimSettings::default()).await;
    let ids: Vec<String> = (0..150)
        .map(|n| add_user(&sim, &format!("m{n:03}@contoso.com")))
        .collect();
    let g = Graph::new(&sim).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let group = create_group(&g, &refs).await;
    let got = pages(
        &g,
        &format!("/v1.0/groups/{group}/transitiveMembers/microsoft.graph.user?{SELECT}"),
    )
    .await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [100, 50]);
    let got = pages(
        &g,
        &format!("/v1.0/groups/{group}/members/microsoft.graph.user?{SELECT}&$top=999"),
    )
    .await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [150]);
    let r = g
        .http
        .get(g.url(&format!(
            "/v1.0/groups/{group}/transitiveMembers/microsoft.graph.user?$count=true&$top=1"
        )))
        .bearer_auth(&g.token)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["@odata.count"], 150);
}

/// One round of `/groups/delta` from `url`, pages of `size` members; returns the group
/// objects in order and the deltaLink.
async fn delta_round(g: &Graph, url: &str, size: usize) -> (Vec<Value>, String) {
    let mut objects = Vec::new();
    let mut url = url.to_string();
    loop {
        let r = g
            .http
            .get(&url)
            .bearer_auth(&g.token)
            .header("Prefer", format!("odata.maxpagesize={size}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let v: Value = r.json().await.unwrap();
        objects.extend(v["value"].as_array().unwrap().iter().cloned());
        match (
            v["@odata.nextLink"].as_str(),
            v["@odata.deltaLink"].as_str(),
        ) {
            (Some(n), None) => url = n.to_string(),
            (None, Some(d)) => return (objects, d.to_string()),
            _ => panic!("exactly one link: {v}"),
        }
    }
}

fn delta_members(objects: &[Value]) -> Vec<(String, bool)> {
    objects
        .iter()
        .flat_map(|o| o["members@delta"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m.get("@removed").is_some(),
            )
        })
        .collect()
}

#[tokio::test]
async fn groups_delta_reports_direct_membership_changes() {
    let sim = start(SimSettings::default()).await;
    let u: Vec<String> = (1..=6)
        .map(|n| add_user(&sim, &format!("d{n}@contoso.com")))
        .collect();
    let g = Graph::new(&sim).await;
    let nested = create_group(&g, &[&u[5]]).await;
    let group = create_group(&g, &[&u[0], &u[1], &u[2], &u[3], &nested]).await;
    let url = g.url(&format!(
        "/v1.0/groups/delta?$filter=id eq '{group}'&$select=members"
    ));
    let (objects, delta) = delta_round(&g, &url, 2).await;
    assert_eq!(objects.len(), 3, "a big group is repeated over pages");
    assert!(objects.iter().all(|o| o["id"] == json!(group)));
    let first = delta_members(&objects);
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|(_, removed)| !removed));
    let added = format!("/groups/{group}/members");
    control(&g, reqwest::Method::POST, &added, json!({"member": u[4]})).await;
    control(
        &g,
        reqwest::Method::DELETE,
        &format!("/groups/{group}/members/{}", u[0]),
        json!(null),
    )
    .await;
    // A change inside the nested group is not a change of this group's direct members.
    control(
        &g,
        reqwest::Method::POST,
        &format!("/groups/{nested}/members"),
        json!({"member": u[0]}),
    )
    .await;
    let (objects, delta) = delta_round(&g, &delta, 100).await;
    assert_eq!(objects.len(), 1);
    let mut changes = delta_members(&objects);
    changes.sort();
    let mut want = vec![(u[0].clone(), true), (u[4].clone(), false)];
    want.sort();
    assert_eq!(changes, want);
    let removed = objects[0]["members@delta"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == json!(u[0]))
        .unwrap()
        .clone();
    assert_eq!(
        removed,
        json!({"@odata.type": "#microsoft.graph.user", "id": u[0], "@removed": {"reason": "deleted"}})
    );
    let (objects, delta) = delta_round(&g, &delta, 100).await;
    assert!(objects.is_empty(), "nothing changed since: {objects:?}");
    control(
        &g,
        reqwest::Method::DELETE,
        &format!("/groups/{group}"),
        json!(null),
    )
    .await;
    let (objects, _) = delta_round(&g, &delta, 100).await;
    assert_eq!(
        objects,
        [json!({"id": group, "@removed": {"reason": "deleted"}})]
    );
    let (s, v) = get(&g, "/v1.0/groups/delta?$filter=displayName eq 'x'").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("Request_UnsupportedQuery"))
    );
}

#[tokio::test]
async fn generated_groups_nest_and_membership_churns_only_when_asked() {
    let sim = start(SimSettings::default()).await;
    let g = Graph::new(&sim).await;
    let (s, v) = control(
        &g,
        reqwest::Method::POST,
        "/generate",
        json!({"users": 8, "tenant": "contoso", "events_per_user": 2, "recurring_per_user": 0,
               "groups": 3, "members_per_group": 3, "nested_groups": 2,
               "without_mailbox_fraction": 1.0, "seed": 11}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    let nested: usize = groups
        .iter()
        .map(|gr| {
            gr["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["kind"] == "group")
                .count()
        })
        .sum();
    assert_eq!(nested, 2);
    assert!(groups
        .iter()
        .all(|gr| gr["transitiveUsers"].as_array().unwrap().len() >= 3));
    let users = v["users"].as_array().unwrap();
    assert!(users.iter().all(|u| u["mailbox"] == false));
    let upn = users[0]["userPrincipalName"].as_str().unwrap();
    let (s, _) = get(&g, &format!("/v1.0/users/{upn}/todo/lists/delta")).await;
    assert_eq!(s, 404);
    let snapshot = |sim: &graph_sim::SimServer| {
        let store = sim.state.store.read();
        store
            .group_ids()
            .iter()
            .map(|id| store.group_info(id).unwrap().transitive_users)
            .collect::<Vec<_>>()
    };
    let before = snapshot(&sim);
    let (_, summary) = control(
        &g,
        reqwest::Method::POST,
        "/mutate",
        json!({"count": 200, "seed": 3}),
    )
    .await;
    assert!(summary["ops"].get("member_add").is_none(), "{summary}");
    assert_eq!(snapshot(&sim), before, "no churn unless asked");
    let (_, summary) = control(
        &g,
        reqwest::Method::POST,
        "/mutate",
        json!({"count": 200, "seed": 3, "membership": true}),
    )
    .await;
    assert!(
        summary["ops"]["member_add"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["ops"]["member_remove"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_ne!(snapshot(&sim), before);
}
