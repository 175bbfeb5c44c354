//! The HTTP listener (`server.listen`, default `0.0.0.0:8083` like Kafka Connect): Prometheus
//! metrics, health probes and a read-only Kafka Connect-shaped REST API.
//!
//! Errors are `{"error_code": <status>, "message": "..."}` as in Connect. Configuration is
//! shown with every secret masked.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::metrics;
use crate::worker::{PartitionState, WorkerStatus};

/// What the handlers read.
pub struct ServerState {
    pub name: String,
    pub worker_id: String,
    /// The settings, secrets masked.
    pub config: Value,
    pub status: Arc<WorkerStatus>,
    /// For the readiness probe's Kafka check.
    pub kafka: rdkafka::ClientConfig,
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
        .route("/connectors/{name}/offsets", get(offsets))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
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

async fn prometheus() -> Response {
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
    let cfg = s.kafka.clone();
    // Metadata calls block: keep them off the executor.
    let kafka = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
        c.fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = kafka {
        reasons.push(format!("Kafka unreachable: {e}"));
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
        .enumerate()
        .map(|(i, p)| json!({"connector": s.name, "task": i, "partition": identity(p)}))
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
        .enumerate()
        .map(|(i, (p, st))| {
            let mut t = json!({"id": i, "worker_id": s.worker_id, "partition": identity(p)});
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
        "connector": {"state": "RUNNING", "worker_id": s.worker_id},
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
