//! Kafka Connect's read endpoints, in its shapes: connectors (with `?expand=status|info`),
//! a connector, its configuration, status, tasks and offsets, a task's status, the plugins.
//!
//! Partitions are the connector's tasks, under their stable ids ([`task_id`]); task objects
//! also carry the partition's identity as `partition`. Status, tasks and offsets are the
//! whole connector's: the other workers' parts are gathered (`peers.rs`) unless the query
//! says `local=true`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::error;
use super::peers::{self, local_only};
use super::{ServerState, S};
use crate::source::PartitionId;
use crate::worker::{task_id, PartitionState};

/// The connector's class, as `GET /connector-plugins` and `connector.class` name it.
pub const CONNECTOR_CLASS: &str = "graph-cdc";

/// `None` when `name` is this connector, else the 404 answer.
pub fn check(s: &ServerState, name: &str) -> Option<Response> {
    (name != s.name).then(|| error(StatusCode::NOT_FOUND, format!("Connector {name} not found")))
}

pub fn identity(p: &PartitionId) -> Value {
    serde_json::from_str(&p.to_json()).unwrap_or(Value::Null)
}

/// A task's state in Connect's shape (`trace` only when it failed).
fn task_state(s: &ServerState, p: &PartitionId, st: &PartitionState) -> Value {
    let mut t = json!({"id": task_id(p), "worker_id": s.worker_id, "partition": identity(p)});
    match st {
        PartitionState::Running => t["state"] = json!("RUNNING"),
        PartitionState::Stopped => t["state"] = json!("UNASSIGNED"),
        PartitionState::Unassigned(why) => {
            t["state"] = json!("UNASSIGNED");
            t["trace"] = json!(why);
        }
        PartitionState::Failed(e) => {
            t["state"] = json!("FAILED");
            t["trace"] = json!(e);
        }
    }
    t
}

/// [`status_of`] with the other workers' tasks (unless `local`), and who answered.
async fn gathered_status(s: &ServerState, local: bool) -> Value {
    let mut v = status_of(s);
    if local {
        return v;
    }
    let answers = peers::ask(s, &format!("/connectors/{}/status", s.name)).await;
    for a in &answers {
        if let (Ok(theirs), Some(Value::Array(ours))) = (&a.body, v.get_mut("tasks")) {
            ours.extend(theirs["tasks"].as_array().into_iter().flatten().cloned());
        }
    }
    v["workers"] = peers::workers(s, &answers);
    v
}

/// Connect's `ConnectorStateInfo`.
fn status_of(s: &ServerState) -> Value {
    let tasks: Vec<Value> = s
        .status
        .partitions
        .lock()
        .iter()
        .map(|(p, st)| task_state(s, p, st))
        .collect();
    json!({
        "name": s.name,
        "type": "source",
        "connector": {"state": s.status.connector.lock().as_str(), "worker_id": s.worker_id},
        "tasks": tasks,
    })
}

/// Connect's `ConnectorInfo` (the configuration as the settings' own tree, secrets masked).
fn info_of(s: &ServerState) -> Value {
    let tasks: Vec<Value> = s
        .status
        .partitions
        .lock()
        .keys()
        .map(|p| json!({"connector": s.name, "task": task_id(p), "partition": identity(p)}))
        .collect();
    json!({"name": s.name, "type": "source", "config": s.config, "tasks": tasks})
}

/// A JSON tree as Connect's flat string map: nested keys joined with `.`, lists of scalars
/// comma-separated (Connect's list values), lists of tables indexed (`sources[0].kind`),
/// nulls left out.
pub fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            _ => None,
        }
    }
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            Value::Null => {}
            Value::Object(m) => {
                for (k, x) in m {
                    walk(&join(k), x, out);
                }
            }
            Value::Array(a) => match a.iter().map(scalar).collect::<Option<Vec<_>>>() {
                Some(items) => {
                    out.insert(prefix.to_string(), items.join(","));
                }
                None => {
                    for (i, x) in a.iter().enumerate() {
                        walk(&format!("{prefix}[{i}]"), x, out);
                    }
                }
            },
            other => {
                out.insert(prefix.to_string(), scalar(other).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// `GET /`: the version and who answers.
pub async fn root(State(s): S) -> Json<Value> {
    Json(
        json!({"version": env!("CARGO_PKG_VERSION"), "connector": s.name, "worker_id": s.worker_id}),
    )
}

/// `GET /connectors`: `["name"]`; with `?expand=status` and/or `?expand=info`:
/// `{"name": {"status": …, "info": …}}` (unknown expansions are ignored, as in Connect).
pub async fn connectors(State(s): S, RawQuery(query): RawQuery) -> Json<Value> {
    let expand: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "expand")
        .map(|(_, v)| v.into_owned())
        .collect();
    if expand.is_empty() {
        return Json(json!([s.name]));
    }
    let mut one = serde_json::Map::new();
    for e in expand {
        match e.as_str() {
            "status" => one.insert("status".into(), gathered_status(&s, false).await),
            "info" => one.insert("info".into(), info_of(&s)),
            _ => None,
        };
    }
    Json(json!({ s.name.clone(): one }))
}

/// `GET /connectors/{name}`.
pub async fn connector(State(s): S, Path(name): Path<String>) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    Json(info_of(&s)).into_response()
}

/// `GET /connectors/{name}/config`: the configuration as Connect's flat string map
/// ([`flatten`]), with `connector.class`; secrets masked.
pub async fn config(State(s): S, Path(name): Path<String>) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let mut flat = flatten(&s.config);
    flat.insert("connector.class".into(), CONNECTOR_CLASS.into());
    flat.insert("name".into(), s.name.clone());
    Json(flat).into_response()
}

/// `GET /connectors/{name}/status`.
pub async fn status(State(s): S, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    Json(gathered_status(&s, local_only(q.as_deref())).await).into_response()
}

/// `GET /connectors/{name}/tasks`: `[{"id": {"connector", "task"}, "config": {…}}]`, a
/// task's configuration being its partition (`partition` as its canonical JSON, and each
/// field as `partition.<field>`).
pub async fn tasks(State(s): S, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let mut tasks = local_tasks(&s);
    if !local_only(q.as_deref()) {
        for a in peers::ask(&s, &format!("/connectors/{name}/tasks")).await {
            if let Ok(Value::Array(theirs)) = a.body {
                tasks.extend(theirs);
            }
        }
    }
    Json(tasks).into_response()
}

fn local_tasks(s: &ServerState) -> Vec<Value> {
    s.status
        .partitions
        .lock()
        .keys()
        .map(|p| {
            let mut config = BTreeMap::new();
            config.insert("task.class".to_string(), CONNECTOR_CLASS.to_string());
            config.insert("partition".to_string(), p.to_json());
            if let Value::Object(fields) = identity(p) {
                for (k, v) in fields {
                    if let Value::String(v) = v {
                        config.insert(format!("partition.{k}"), v);
                    }
                }
            }
            json!({"id": {"connector": s.name, "task": task_id(p)}, "config": config})
        })
        .collect()
}

/// `GET /connectors/{name}/tasks/{task}/status`.
pub async fn task_status(
    State(s): S,
    Path((name, task)): Path<(String, u64)>,
    RawQuery(q): RawQuery,
) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let found = s
        .status
        .partitions
        .lock()
        .iter()
        .find(|(p, _)| task_id(p) == task)
        .map(|(p, st)| task_state(&s, p, st));
    if let Some(t) = found {
        return Json(t).into_response();
    }
    if !local_only(q.as_deref()) {
        let path = format!("/connectors/{name}/tasks/{task}/status");
        if let Some(t) = peers::ask(&s, &path)
            .await
            .into_iter()
            .find_map(|a| a.body.ok())
        {
            return Json(t).into_response();
        }
    }
    error(StatusCode::NOT_FOUND, format!("no task {task}"))
}

/// `GET /connectors/{name}/offsets` (KIP-875). Written straight to the body, not built as a
/// JSON tree: a worker with 100,000 partitions answered with 300 MB of `Value`s (issue 15).
pub async fn offsets(State(s): S, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    if let Some(r) = check(&s, &name) {
        return r;
    }
    let theirs = match local_only(q.as_deref()) {
        true => Vec::new(),
        false => peers::ask(&s, &format!("/connectors/{name}/offsets")).await,
    };
    let mut body = Vec::with_capacity(64 * 1024);
    body.extend_from_slice(b"{\"offsets\":[");
    let mut first = true;
    let mut sep = |body: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            body.push(b',');
        }
    };
    for (p, o) in s.status.offsets.lock().iter() {
        sep(&mut body);
        body.extend_from_slice(b"{\"partition\":");
        body.extend_from_slice(p.to_json().as_bytes());
        body.extend_from_slice(b",\"offset\":");
        // An offset always serialises (strings and numbers only).
        let _ = serde_json::to_writer(&mut body, o);
        body.push(b'}');
    }
    for a in theirs {
        let Ok(v) = a.body else { continue };
        for o in v["offsets"].as_array().into_iter().flatten() {
            sep(&mut body);
            let _ = serde_json::to_writer(&mut body, o);
        }
    }
    body.extend_from_slice(b"]}");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `GET /connector-plugins`.
pub async fn plugins() -> Json<Value> {
    Json(
        json!([{"class": CONNECTOR_CLASS, "type": "source", "version": env!("CARGO_PKG_VERSION")}]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_makes_a_flat_string_map() {
        let v = json!({
            "name": "c",
            "graph": {"client_secret": "***", "page_size": 100, "batch_polls": false, "x": null},
            "kafka": {"options": {"sasl.password": "***"}},
            "sources": [{"kind": "todo", "users": ["a@b.c", "d@e.f"]}],
            "empty": [],
        });
        let f = flatten(&v);
        let want: BTreeMap<String, String> = [
            ("name", "c"),
            ("graph.client_secret", "***"),
            ("graph.page_size", "100"),
            ("graph.batch_polls", "false"),
            ("kafka.options.sasl.password", "***"),
            ("sources[0].kind", "todo"),
            ("sources[0].users", "a@b.c,d@e.f"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(f, want);
    }
}
