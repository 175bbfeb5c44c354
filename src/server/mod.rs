//! The HTTP listener (`server.listen`, default `127.0.0.1:8083`, Kafka Connect's port):
//! Prometheus metrics, health probes and a Kafka Connect-shaped REST API, over HTTP or HTTPS.
//!
//! # Files
//!
//! - `mod.rs`: [`ServerState`], the routes, serving; health, readiness, metrics.
//! - `auth.rs`: the token every endpoint but the probes and the scrape needs, when one is set.
//! - `errors.rs`: Connect's `{"error_code": <status>, "message": "..."}` for every failure,
//!   axum's own answers included.
//! - `connect.rs`: the read endpoints, in Connect's shapes.
//! - `commands.rs`: the endpoints that change something, as worker commands.
//! - `tls.rs`: HTTPS with rustls (`server.tls_cert_path`, `server.tls_key_path`).
//! - `notifications.rs`: Graph's change notifications (`POST /notifications`), handed to the
//!   worker.
//!
//! Configuration is shown with every secret masked. Partitions are the connector's tasks; a
//! task's id is derived from its partition's identity ([`crate::worker::task_id`]), so it
//! does not change while other partitions come and go.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::metrics;
use crate::worker::{Request, WorkerStatus};

mod auth;
mod commands;
mod connect;
mod errors;
mod notifications;
pub mod peers;
mod tls;

pub use auth::OPEN_PATHS;
pub use connect::{flatten, CONNECTOR_CLASS};
pub use errors::error;
pub use tls::{TlsConfig, TlsError, TlsListener};

/// The largest request body taken (an offsets `PATCH` naming every partition of a large
/// deployment; the body of `GET …/offsets` sent back).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// What the handlers read.
pub struct ServerState {
    pub name: String,
    pub worker_id: String,
    /// The settings, secrets masked.
    pub config: Value,
    pub status: Arc<WorkerStatus>,
    /// Operator commands to the worker.
    pub commands: tokio::sync::mpsc::Sender<Request>,
    /// Bearer token every endpoint but [`OPEN_PATHS`] requires, when set.
    pub auth_token: Option<String>,
    /// The client the connector's other workers are asked with ([`peers::client`]).
    pub peers: reqwest::Client,
}

type S = State<Arc<ServerState>>;

pub fn router(state: Arc<ServerState>) -> Router {
    use commands as c;
    use connect as r;
    Router::new()
        .route("/", get(r::root))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/connector-plugins", get(r::plugins))
        .route("/connectors", get(r::connectors))
        .route("/connectors/{name}", get(r::connector))
        .route("/connectors/{name}/config", get(r::config))
        .route("/connectors/{name}/status", get(r::status))
        .route("/connectors/{name}/tasks", get(r::tasks))
        .route(
            "/connectors/{name}/tasks/{task}/status",
            get(r::task_status),
        )
        .route(
            "/connectors/{name}/offsets",
            get(r::offsets)
                .patch(c::alter_offsets)
                .delete(c::reset_offsets)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/connectors/{name}/pause", put(c::pause))
        .route("/connectors/{name}/resume", put(c::resume))
        .route("/connectors/{name}/stop", put(c::stop))
        .route("/connectors/{name}/restart", post(c::restart))
        .route(
            "/connectors/{name}/tasks/{task}/restart",
            post(c::restart_task),
        )
        .route("/connectors/{name}/partitions/resync", post(c::resync))
        .route("/notifications", post(notifications::change))
        .route("/notifications/lifecycle", post(notifications::lifecycle))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(errors::json_errors))
        .with_state(state)
}

/// Serves plain HTTP until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// Serves HTTPS with `tls`, or plain HTTP without it, until `shutdown` completes.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    tls: Option<TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(listener, &tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
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

/// Ready when the offsets were loaded, Kafka was reached recently and Graph answers, as the
/// worker's background check and partitions last recorded ([`WorkerStatus::unready_reasons`]).
/// It only reads that state: no client, no network, so it answers at once and a flood of
/// probes costs Kafka nothing.
async fn readyz(State(s): S) -> Response {
    let reasons = s.status.unready_reasons();
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
