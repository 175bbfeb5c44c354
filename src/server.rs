//! The HTTP listener (`server.listen`, default `0.0.0.0:8083` like Kafka Connect): Prometheus
//! metrics, health probes and a read-only Kafka Connect-shaped REST API.
//!
//! Errors are `{"error_code": <status>, "message": "..."}` as in Connect. Configuration is
//! shown with every secret masked. Partitions are the connector's tasks; a task's id is
//! derived from its partition's identity ([`task_id`]), so it does not change while other
//! partitions come and go.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::metrics;
use crate::worker::{
    task_id, AlterOffsets, BadRequest, Command, CommandError, PartitionState, Request, Restart,
    RestartQuery, Resync, WorkerStatus,
};

/// What the handlers read.
pub struct ServerState {
    pub name: String,
    pub worker_id: String,
    /// The settings, secrets masked.
    pub config: Value,
    pub status: Arc<WorkerStatus>,
    /// For the readiness probe's Kafka check.
    pub kafka: rdkafka::ClientConfig,
    /// Operator commands to the worker.
    pub commands: tokio::sync::mpsc::Sender<Request>,
    /// Bearer token required by mutating calls, when set.
    pub auth_token: Option<String>,
}

type S = State<Arc<ServerState>>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error_code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/connectors", get(connectors))
        .route("/connectors/{name}", get(connector))
        .route("/connectors/{name}/status", get(status))
        .route(
            "/connectors/{name}/offsets",
            get(offsets).patch(alter_offsets).delete(reset_offsets),
        )
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/stop", put(stop))
        .route("/connectors/{name}/restart", post(restart))
        .route(
            "/connectors/{name}/tasks/{task}/restart",
            post(restart_task),
        )
        .route("/connectors/{name}/partitions/resync", post(resync))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn root(State(s): S) -> Json<Value> {
    Json(
        json!({"version": env!("CARGO_PKG_VERSION"), "connector": s.name, "worker_id": s.worker_id}),
    )
}

async fn prometheus(State(s): S) -> Response {
    s.status.refresh_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
        .into_response()
}

/// Ready when the offsets were loaded, Graph answered, and Kafka answers now.
async fn readyz(State(s): S) -> Response {
    let mut reasons = Vec::new();
    if !s.status.offsets_loaded.load(Ordering::SeqCst) {
        reasons.push("offsets not loaded yet".to_string());
    }
    if !s.status.graph_ok.load(Ordering::Relaxed) {
        reasons.push("no Graph page fetched yet (token or Graph unavailable)".to_string());
    }
    let startup_error = s.status.kafka_error.lock().clone();
    if let Some(why) = startup_error {
        reasons.push(format!("Kafka unreachable: {why}"));
    } else {
        let cfg = s.kafka.clone();
        // Metadata calls block: keep them off the executor.
        let kafka = tokio::task::spawn_blocking(move || {
            crate::sink::health::probe(&cfg, Duration::from_secs(2))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = kafka {
            reasons.push(format!("Kafka unreachable: {e}"));
        }
    }
    if reasons.is_empty() {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

async fn connectors(State(s): S) -> Json<Value> {
    Json(json!([s.name]))
}

/// `None` when `name` is this connector, else the 404 answer.
fn check(s: &ServerState, name: &str) -> Option<Response> {
    (name != s.name).then(|| error(StatusCode::NOT_FOUND, format!("Connector {name} not found")))
}

fn identity(p: &crate::source::PartitionId) -> Value {
    serde_json::from_str(&p.to_json()).unwrap_or(Value::Null)
}

async fn connector(State(s): S, Path(name): Path<String>) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let tasks: Vec<Value> = s
        .status
        .partitions
        .lock()
        .keys()
        .map(|p| json!({"connector": s.name, "task": task_id(p), "partition": identity(p)}))
        .collect();
    Json(json!({"name": s.name, "type": "source", "config": s.config, "tasks": tasks}))
        .into_response()
}

async fn status(State(s): S, Path(name): Path<String>) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let tasks: Vec<Value> = s
        .status
        .partitions
        .lock()
        .iter()
        .map(|(p, st)| {
            let mut t =
                json!({"id": task_id(p), "worker_id": s.worker_id, "partition": identity(p)});
            match st {
                PartitionState::Running => t["state"] = json!("RUNNING"),
                PartitionState::Stopped => t["state"] = json!("UNASSIGNED"),
                PartitionState::Failed(e) => {
                    t["state"] = json!("FAILED");
                    t["trace"] = json!(e);
                }
            }
            t
        })
        .collect();
    Json(json!({
        "name": s.name,
        "type": "source",
        "connector": {"state": s.status.connector.lock().as_str(), "worker_id": s.worker_id},
        "tasks": tasks,
    }))
    .into_response()
}

async fn offsets(State(s): S, Path(name): Path<String>) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let offsets: Vec<Value> = s
        .status
        .offsets
        .lock()
        .iter()
        .map(|(p, o)| json!({"partition": identity(p), "offset": o}))
        .collect();
    Json(json!({"offsets": offsets})).into_response()
}

/// Mutating calls need `Authorization: Bearer <server.auth_token>` when one is set.
async fn require_token(
    State(s): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &s.auth_token else {
        return next.run(req).await;
    };
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing tells nothing about the token.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        next.run(req).await
    } else {
        error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
    }
}

/// Sends a command to the worker and turns its answer into a response.
async fn send(s: &ServerState, command: Command, ok: StatusCode) -> Response {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if s.commands.send(Request { command, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the worker is not running");
    }
    match rx.await {
        Ok(Ok(message)) => (ok, Json(json!({"message": message}))).into_response(),
        Ok(Err(CommandError::Conflict(m))) => error(StatusCode::CONFLICT, m),
        Ok(Err(CommandError::NotFound(m))) => error(StatusCode::NOT_FOUND, m),
        Ok(Err(CommandError::Failed(m))) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the worker stopped"),
    }
}

/// [`send`] for this connector only.
async fn checked_send(s: &ServerState, name: &str, command: Command, ok: StatusCode) -> Response {
    match check(s, name) {
        Some(r) => r,
        None => send(s, command, ok).await,
    }
}

async fn pause(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Pause, StatusCode::ACCEPTED).await
}

async fn resume(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Resume, StatusCode::ACCEPTED).await
}

async fn stop(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Stop, StatusCode::ACCEPTED).await
}

/// [`checked_send`] of a command read from the request body (`400` when it is not one).
async fn checked_send_parsed(
    s: &ServerState,
    name: &str,
    command: Result<Command, BadRequest>,
    ok: StatusCode,
) -> Response {
    if let Some(r) = check(s, name) {
        return r;
    }
    match command {
        Ok(c) => send(s, c, ok).await,
        Err(BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// Partitions are this connector's tasks, so a restart always restarts them
/// (`onlyFailed=true`: the failed ones only).
async fn restart(
    State(s): S,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RestartQuery>,
) -> Response {
    let c = Command::Restart(Restart::from_query(&q));
    checked_send(&s, &name, c, StatusCode::ACCEPTED).await
}

/// One partition, by its task id.
async fn restart_task(State(s): S, Path((name, task)): Path<(String, u64)>) -> Response {
    let c = Command::Restart(Restart::from_task(task));
    checked_send(&s, &name, c, StatusCode::ACCEPTED).await
}

async fn resync(State(s): S, Path(name): Path<String>, body: Option<Json<Value>>) -> Response {
    let c = Resync::from_body(body.as_ref().map(|Json(b)| b)).map(Command::Resync);
    checked_send_parsed(&s, &name, c, StatusCode::ACCEPTED).await
}

/// `PATCH` with `{"offsets":[{"partition":{…},"offset":{…} or null}]}` (KIP-875).
async fn alter_offsets(
    State(s): S,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let c = AlterOffsets::from_body(body.as_ref().map(|Json(b)| b)).map(Command::AlterOffsets);
    checked_send_parsed(&s, &name, c, StatusCode::OK).await
}

async fn reset_offsets(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::ResetOffsets, StatusCode::OK).await
}
