//! A tiny webhook receiver for the change-notification tests: answers Graph's validation
//! handshake (or misbehaves on purpose) and records every notification it gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::client::Graph;

/// How the receiver answers validation handshakes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Echo,
    WrongToken,
    ServerError,
    /// Echoes the token still percent-encoded (a receiver that forgot to decode it).
    Encoded,
}

#[derive(Default)]
pub struct Recorded {
    pub notifications: Mutex<Vec<Value>>,
    pub lifecycle: Mutex<Vec<Value>>,
    /// Decoded tokens of the handshakes received.
    pub tokens: Mutex<Vec<String>>,
    /// POSTs of notifications received (a POST may batch several).
    pub posts: AtomicUsize,
    /// Answer the next this many notification POSTs with 500.
    pub fail_next: AtomicUsize,
    handshake: Mutex<Option<Handshake>>,
}

pub struct Hook {
    pub base: String,
    pub rec: Arc<Recorded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    pub async fn start() -> Self {
        let rec = Arc::new(Recorded::default());
        let app = Router::new()
            .route("/notify", post(notify))
            .route("/lifecycle", post(lifecycle))
            .with_state(rec.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, rec, task }
    }

    pub fn notify_url(&self) -> String {
        format!("{}/notify", self.base)
    }

    pub fn lifecycle_url(&self) -> String {
        format!("{}/lifecycle", self.base)
    }

    pub fn handshake(&self, h: Handshake) {
        *self.rec.handshake.lock() = Some(h);
    }

    pub fn notifications(&self) -> Vec<Value> {
        self.rec.notifications.lock().clone()
    }

    pub fn lifecycle(&self) -> Vec<Value> {
        self.rec.lifecycle.lock().clone()
    }

    /// Waits until at least `n` notifications arrived (or 10 s passed); returns them.
    pub async fn wait_notifications(&self, n: usize) -> Vec<Value> {
        wait(|| self.rec.notifications.lock().len() >= n).await;
        self.notifications()
    }

    pub async fn wait_lifecycle(&self, n: usize) -> Vec<Value> {
        wait(|| self.rec.lifecycle.lock().len() >= n).await;
        self.lifecycle()
    }
}

/// Polls `f` every 20 ms for up to 10 s.
pub async fn wait(f: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn handshake_answer(rec: &Recorded, token: String) -> Response {
    rec.tokens.lock().push(token.clone());
    let mode = *rec.handshake.lock();
    match mode.unwrap_or(Handshake::Echo) {
        Handshake::Echo => ([("content-type", "text/plain")], token).into_response(),
        Handshake::WrongToken => ([("content-type", "text/plain")], "nope").into_response(),
        Handshake::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Handshake::Encoded => {
            let enc = token.replace(' ', "%20").replace(':', "%3A");
            ([("content-type", "text/plain")], enc).into_response()
        }
    }
}

type Q = Query<std::collections::HashMap<String, String>>;

async fn notify(State(rec): State<Arc<Recorded>>, Query(q): Q, body: Bytes) -> Response {
    if let Some(t) = q.get("validationToken") {
        return handshake_answer(&rec, t.clone());
    }
    if rec
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    rec.posts.fetch_add(1, Ordering::SeqCst);
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let items = v["value"].as_array().cloned().unwrap_or_default();
    rec.notifications.lock().extend(items);
    StatusCode::ACCEPTED.into_response()
}

async fn lifecycle(State(rec): State<Arc<Recorded>>, Query(q): Q, body: Bytes) -> Response {
    if let Some(t) = q.get("validationToken") {
        return handshake_answer(&rec, t.clone());
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let items = v["value"].as_array().cloned().unwrap_or_default();
    rec.lifecycle.lock().extend(items);
    StatusCode::ACCEPTED.into_response()
}

/// A request to Graph's `/v1.0{path}` with the test app's token; returns status and JSON.
pub async fn graph(
    g: &Graph,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = g
        .http
        .request(method, g.url(&format!("/v1.0{path}")))
        .bearer_auth(&g.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A subscription request body expiring in `minutes`.
pub fn sub_body(resource: &str, change: &str, url: &str, minutes: i64) -> Value {
    let exp = chrono::Utc::now() + chrono::Duration::minutes(minutes);
    json!({
        "changeType": change,
        "notificationUrl": url,
        "resource": resource,
        "expirationDateTime": exp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "clientState": "secretClientValue",
    })
}

/// Creates a subscription; panics unless Graph answered 201.
pub async fn subscribe(g: &Graph, body: Value) -> Value {
    let (st, v) = graph(g, reqwest::Method::POST, "/subscriptions", Some(body)).await;
    assert_eq!(st, 201, "{v}");
    v
}

/// The simulator's control API.
pub async fn control(
    g: &Graph,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = g.http.request(method, g.url(&format!("/_sim{path}")));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
