//! The endpoints that change something: each reads its command (`crate::worker::Command`)
//! from the path, query or body, sends it to the worker and answers with the outcome.
//!
//! Status codes are Connect's: `202` for pause, resume, stop and a connector restart, `204`
//! (no body) for a task restart, `200` with a message for offsets changes; `400` for a
//! request that cannot be carried out as it stands (offsets changes while not `STOPPED`, a
//! malformed or empty body), never `409`, which Connect clients retry as "rebalance in
//! progress"; `415` for a body that is not declared JSON.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::connect::check;
use super::errors::{error, json_body};
use super::{ServerState, S};
use crate::worker::{
    AlterOffsets, BadRequest, Command, CommandError, Request, Restart, RestartQuery, Resync,
};

/// Sends a command to the worker; `ok` is the status of a success, answered with the
/// worker's message (or no body for `204`).
async fn send(s: &ServerState, command: Command, ok: StatusCode) -> Response {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if s.commands.send(Request { command, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the worker is not running");
    }
    match rx.await {
        Ok(Ok(_)) if ok == StatusCode::NO_CONTENT => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(message)) => (ok, Json(json!({"message": message}))).into_response(),
        Ok(Err(CommandError::BadRequest(m))) => error(StatusCode::BAD_REQUEST, m),
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

/// [`checked_send`] of a command read from a JSON body: `415` when the body is not declared
/// JSON, `400` when it is not JSON or not the command.
async fn checked_send_body(
    s: &ServerState,
    name: &str,
    body: Result<Json<Value>, JsonRejection>,
    expects: &str,
    parse: impl FnOnce(&Value) -> Result<Command, BadRequest>,
    ok: StatusCode,
) -> Response {
    if let Some(r) = check(s, name) {
        return r;
    }
    let body = match json_body(body, expects) {
        Ok(b) => b,
        Err((status, message)) => return error(status, message),
    };
    match parse(&body) {
        Ok(c) => send(s, c, ok).await,
        Err(BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
    }
}

/// `PUT …/pause`.
pub async fn pause(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Pause, StatusCode::ACCEPTED).await
}

/// `PUT …/resume`.
pub async fn resume(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Resume, StatusCode::ACCEPTED).await
}

/// `PUT …/stop`.
pub async fn stop(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::Stop, StatusCode::ACCEPTED).await
}

/// `POST …/restart`: partitions are this connector's tasks, so a restart always restarts
/// them (`onlyFailed=true`: the failed ones only).
pub async fn restart(
    State(s): S,
    Path(name): Path<String>,
    Query(q): Query<RestartQuery>,
) -> Response {
    let c = Command::Restart(Restart::from_query(&q));
    checked_send(&s, &name, c, StatusCode::ACCEPTED).await
}

/// `POST …/tasks/{task}/restart`: one partition, by its task id; `204` as in Connect.
pub async fn restart_task(State(s): S, Path((name, task)): Path<(String, u64)>) -> Response {
    let c = Command::Restart(Restart::from_task(task));
    checked_send(&s, &name, c, StatusCode::NO_CONTENT).await
}

/// `POST …/partitions/resync` with `{"partition": {…}}` or `{"all": true}`.
pub async fn resync(
    State(s): S,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let parse = |b: &Value| Resync::from_body(b).map(Command::Resync);
    checked_send_body(&s, &name, body, Resync::BODY, parse, StatusCode::ACCEPTED).await
}

/// `PATCH …/offsets` with `{"offsets":[{"partition":{…},"offset":{…} or null}]}` (KIP-875).
pub async fn alter_offsets(
    State(s): S,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let parse = |b: &Value| AlterOffsets::from_body(b).map(Command::AlterOffsets);
    checked_send_body(&s, &name, body, AlterOffsets::BODY, parse, StatusCode::OK).await
}

/// `DELETE …/offsets`: resets every partition.
pub async fn reset_offsets(State(s): S, Path(name): Path<String>) -> Response {
    checked_send(&s, &name, Command::ResetOffsets, StatusCode::OK).await
}
