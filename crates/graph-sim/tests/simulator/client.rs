//! A minimal Graph client for the simulator tests: tokens, pages, rounds, replicas.
//! Deliberately independent of the connector's own Graph client.

use std::collections::BTreeMap;

use graph_sim::{SimServer, SimSettings};
use serde_json::Value;

pub const TENANT: &str = "contoso";
pub const CLIENT_ID: &str = "test-app";
pub const SECRET: &str = "test-secret";

pub async fn start(settings: SimSettings) -> SimServer {
    let sim = SimServer::start("127.0.0.1:0", settings)
        .await
        .expect("bind simulator");
    sim.state.add_secret_client(TENANT, CLIENT_ID, SECRET);
    sim
}

pub fn add_user(sim: &SimServer, upn: &str) -> String {
    sim.state
        .store
        .write()
        .create_user(graph_sim::model::UserSpec {
            tenant: Some(TENANT.into()),
            user_principal_name: upn.into(),
            id: None,
            display_name: None,
        })
        .expect("create user")
        .id
}

/// A user with `n` tasks in its default list; returns (user id, list id, tasks delta URL).
pub fn tasks(sim: &SimServer, g: &Graph, upn: &str, n: usize) -> (String, String, String) {
    let user = add_user(sim, upn);
    let list = sim.state.store.read().user_info(&user).unwrap().task_lists[0].clone();
    for _ in 0..n {
        sim.state
            .store
            .write()
            .create_task(&user, &list, graph_sim::model::TaskSpec::default())
            .unwrap();
    }
    let url = g.url(&format!("/v1.0/users/{upn}/todo/lists/{list}/tasks/delta"));
    (user, list, url)
}

pub struct Graph {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    /// Send `Prefer: IdType="ImmutableId"` (as graph-cdc does by default, and as the truth
    /// endpoint presents ids by default).
    pub immutable_ids: bool,
}

pub struct Page {
    pub status: u16,
    pub items: Vec<Value>,
    pub next: Option<String>,
    pub delta: Option<String>,
}

impl Graph {
    pub async fn new(sim: &SimServer) -> Self {
        let http = reqwest::Client::new();
        let token = get_token(&http, &sim.url()).await;
        Self {
            http,
            base: sim.url(),
            token,
            immutable_ids: true,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, url: &str, page_size: Option<usize>) -> reqwest::Response {
        let mut req = self.http.get(url).bearer_auth(&self.token);
        if let Some(n) = page_size {
            req = req.header("Prefer", format!("odata.maxpagesize={n}"));
        }
        if self.immutable_ids {
            req = req.header("Prefer", "IdType=\"ImmutableId\"");
        }
        req.send().await.expect("request")
    }

    pub async fn page(&self, url: &str, page_size: Option<usize>) -> Page {
        let r = self.get(url, page_size).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("json body");
        Page {
            status,
            items: body["value"].as_array().cloned().unwrap_or_default(),
            next: body["@odata.nextLink"].as_str().map(str::to_string),
            delta: body["@odata.deltaLink"].as_str().map(str::to_string),
        }
    }

    /// Follows a round from `url` to its deltaLink; returns every page's items.
    pub async fn round(&self, url: &str, page_size: Option<usize>) -> (Vec<Vec<Value>>, String) {
        let mut pages = Vec::new();
        let mut url = url.to_string();
        for _ in 0..100_000 {
            let p = self.page(&url, page_size).await;
            assert_eq!(p.status, 200, "page {url}");
            assert!(
                p.next.is_some() != p.delta.is_some(),
                "exactly one of nextLink/deltaLink"
            );
            pages.push(p.items);
            match (p.next, p.delta) {
                (Some(n), _) => url = n,
                (None, Some(d)) => return (pages, d),
                _ => unreachable!(),
            }
        }
        panic!("round did not end");
    }
}

/// The test app's client-credentials request to the simulator's token endpoint.
pub async fn token_request(http: &reqwest::Client, base: &str) -> reqwest::Response {
    http.post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token request")
}

pub async fn get_token(http: &reqwest::Client, base: &str) -> String {
    let r = token_request(http, base).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("token json");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Applies a page to a replica the way a compacted topic would.
pub fn apply(replica: &mut BTreeMap<String, Value>, items: &[Value]) {
    for it in items {
        let id = it["id"].as_str().expect("id").to_string();
        if it.get("@removed").is_some() {
            replica.remove(&id);
        } else {
            replica.insert(id, it.clone());
        }
    }
}

/// The simulator's truth as parsed JSON values.
pub async fn truth(sim: &SimServer, query: &str) -> BTreeMap<String, Value> {
    let v: Value = reqwest::get(format!("{}/_sim/truth?{query}", sim.url()))
        .await
        .expect("truth")
        .json()
        .await
        .expect("truth json");
    assert!(v.get("items").is_some(), "truth answer: {v}");
    serde_json::from_value(v["items"].clone()).expect("items map")
}
