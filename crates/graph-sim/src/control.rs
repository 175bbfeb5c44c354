//! The `/_sim` control API: change data, set faults, read the truth and the counters.
//!
//! JSON in and out; errors as `{"error": "..."}` with 400/404/409. Directory routes (users'
//! names and mailboxes, groups, app permissions) are in `control/directory.rs`; change
//! notifications (subscriptions, lifecycle events, delivery faults, the Event Hubs outbox)
//! in `control/subscriptions.rs`.

mod directory;
mod subscriptions;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::delta::{Query, Resource};
use super::faults::FaultSpec;
use super::generate::{GenerateSpec, MutateSpec};
use super::model::{Client, EventPatch, EventSpec, NameSpec, OccurrencePatch, TaskSpec, UserSpec};
use super::present::{parse_zone, Presentation};
use super::quirks::MailboxQuirks;
use super::{SimError, SimState};

type S = State<Arc<SimState>>;

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match &self {
            SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::BadRequest(_) => StatusCode::BAD_REQUEST,
            SimError::Conflict(_) => StatusCode::CONFLICT,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

type R = Result<Response, SimError>;

fn ok(v: Value) -> R {
    Ok(Json(v).into_response())
}

pub fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/clients", post(add_client))
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{user}",
            get(get_user)
                .patch(directory::patch_user)
                .delete(directory::delete_user),
        )
        .route("/users/{user}/calendars", post(create_calendar))
        .route(
            "/users/{user}/calendars/{cal}",
            patch(update_calendar).delete(delete_calendar),
        )
        .route("/users/{user}/calendars/{cal}/events", post(create_event))
        .route(
            "/users/{user}/events/{id}",
            get(get_event).patch(update_event).delete(delete_event),
        )
        .route("/users/{user}/events/{id}/move", post(move_event))
        .route(
            "/users/{user}/quirks",
            get(get_quirks).put(put_quirks).delete(clear_quirks),
        )
        .route(
            "/users/{user}/events/{id}/occurrences/{index}",
            patch(update_occurrence).delete(delete_occurrence),
        )
        .route("/users/{user}/todo/lists", post(create_list))
        .route(
            "/users/{user}/todo/lists/{list}",
            patch(update_list).delete(delete_list),
        )
        .route("/users/{user}/todo/lists/{list}/tasks", post(create_task))
        .route(
            "/users/{user}/todo/lists/{list}/tasks/{id}",
            patch(update_task).delete(delete_task),
        )
        .route("/generate", post(generate))
        .route("/mutate", post(mutate))
        .route(
            "/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/faults/{id}", axum::routing::delete(remove_fault))
        .route("/evict", post(evict))
        .route("/revoke-tokens", post(revoke))
        .route("/settings", get(get_settings).patch(patch_settings))
        .route("/truth", get(truth))
        .route("/stats", get(stats).delete(reset_stats))
        .merge(directory::routes())
        .merge(subscriptions::routes())
}

/// Parses a JSON body into `T`, turning serde's message into a 400 that names the field.
fn body<T: for<'de> Deserialize<'de>>(v: Option<Json<Value>>) -> Result<T, SimError> {
    let v = v.map(|Json(v)| v).unwrap_or(json!({}));
    serde_json::from_value(v).map_err(|e| SimError::BadRequest(e.to_string()))
}

async fn add_client(State(sim): S, b: Option<Json<Value>>) -> R {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        tenant: String,
        /// Application permissions; absent: every one graph-cdc needs.
        #[serde(default)]
        roles: Option<Vec<String>>,
        #[serde(flatten)]
        client: Client,
    }
    let c: C = body(b)?;
    let mut store = sim.store.write();
    let id = c.client.client_id.clone();
    store.add_client(&c.tenant, c.client);
    store.set_app_roles(Some(&c.tenant), &id, c.roles)?;
    ok(json!({"ok": true}))
}

async fn create_user(State(sim): S, b: Option<Json<Value>>) -> R {
    let spec: UserSpec = body(b)?;
    let info = sim.store.write().create_user(spec)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list_users(State(sim): S) -> R {
    let store = sim.store.read();
    let mut users: Vec<_> = store
        .users
        .keys()
        .filter_map(|id| store.user_info(id).ok())
        .collect();
    users.sort_by(|a, b| a.user_principal_name.cmp(&b.user_principal_name));
    ok(json!(users))
}

async fn get_user(State(sim): S, Path(user): Path<String>) -> R {
    ok(json!(sim.store.read().user_info(&user)?))
}

fn created(id: String) -> R {
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

async fn create_calendar(State(sim): S, Path(user): Path<String>, b: Option<Json<Value>>) -> R {
    let id = sim
        .store
        .write()
        .create_calendar(&user, body::<NameSpec>(b)?)?;
    created(id)
}

async fn update_calendar(
    State(sim): S,
    Path((user, cal)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    sim.store.write().update_calendar(&user, &cal, body(b)?)?;
    ok(json!({"ok": true}))
}

async fn delete_calendar(State(sim): S, Path((user, cal)): Path<(String, String)>) -> R {
    sim.store.write().delete_calendar(&user, &cal)?;
    ok(json!({"ok": true}))
}

async fn create_event(
    State(sim): S,
    Path((user, cal)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    let mut store = sim.store.write();
    let id = store.create_event(&user, &cal, body::<EventSpec>(b)?)?;
    let ids = store.event_ids(&user, &id)?;
    Ok((StatusCode::CREATED, Json(ids)).into_response())
}

async fn get_event(State(sim): S, Path((user, id)): Path<(String, String)>) -> R {
    ok(json!(sim.store.read().event_ids(&user, &id)?))
}

/// `POST …/events/{id}/move {"calendar": "<id or primary>"}`: a new regular id, the same
/// immutable one.
async fn move_event(
    State(sim): S,
    Path((user, id)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct M {
        calendar: String,
    }
    let m: M = body(b)?;
    ok(json!(sim.store.write().move_event(
        &user,
        &id,
        &m.calendar
    )?))
}

async fn update_event(
    State(sim): S,
    Path((user, id)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    sim.store
        .write()
        .update_event(&user, &id, body::<EventPatch>(b)?)?;
    ok(json!({"ok": true}))
}

async fn delete_event(State(sim): S, Path((user, id)): Path<(String, String)>) -> R {
    sim.store.write().delete_event(&user, &id)?;
    ok(json!({"ok": true}))
}

async fn update_occurrence(
    State(sim): S,
    Path((user, id, index)): Path<(String, String, u32)>,
    b: Option<Json<Value>>,
) -> R {
    let p: OccurrencePatch = body(b)?;
    sim.store.write().update_occurrence(&user, &id, index, p)?;
    ok(json!({"ok": true}))
}

/// `?reported=false` deletes it as Graph does: no delta round reports it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OccurrenceDelete {
    #[serde(default = "yes")]
    reported: bool,
}

fn yes() -> bool {
    true
}

async fn delete_occurrence(
    State(sim): S,
    Path((user, id, index)): Path<(String, String, u32)>,
    QueryParams(q): QueryParams<OccurrenceDelete>,
) -> R {
    let mut store = sim.store.write();
    if q.reported {
        store.delete_occurrence(&user, &id, index)?;
    } else {
        store.delete_occurrence_unreported(&user, &id, index)?;
    }
    ok(json!({"ok": true}))
}

async fn get_quirks(State(sim): S, Path(user): Path<String>) -> R {
    let id = sim.store.read().user(&user)?.id.clone();
    let q = sim.quirks.read().get(&id).cloned().unwrap_or_default();
    ok(json!(q))
}

async fn put_quirks(State(sim): S, Path(user): Path<String>, b: Option<Json<Value>>) -> R {
    let q: MailboxQuirks = body(b)?;
    q.validate()?;
    let id = sim.store.read().user(&user)?.id.clone();
    sim.quirks.write().insert(id, q.clone());
    ok(json!(q))
}

async fn clear_quirks(State(sim): S, Path(user): Path<String>) -> R {
    let id = sim.store.read().user(&user)?.id.clone();
    sim.quirks.write().remove(&id);
    ok(json!({"ok": true}))
}

async fn create_list(State(sim): S, Path(user): Path<String>, b: Option<Json<Value>>) -> R {
    let id = sim.store.write().create_list(&user, body(b)?)?;
    created(id)
}

async fn update_list(
    State(sim): S,
    Path((user, list)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    sim.store.write().update_list(&user, &list, body(b)?)?;
    ok(json!({"ok": true}))
}

async fn delete_list(State(sim): S, Path((user, list)): Path<(String, String)>) -> R {
    sim.store.write().delete_list(&user, &list)?;
    ok(json!({"ok": true}))
}

async fn create_task(
    State(sim): S,
    Path((user, list)): Path<(String, String)>,
    b: Option<Json<Value>>,
) -> R {
    let id = sim
        .store
        .write()
        .create_task(&user, &list, body::<TaskSpec>(b)?)?;
    created(id)
}

async fn update_task(
    State(sim): S,
    Path((user, list, id)): Path<(String, String, String)>,
    b: Option<Json<Value>>,
) -> R {
    sim.store.write().update_task(&user, &list, &id, body(b)?)?;
    ok(json!({"ok": true}))
}

async fn delete_task(State(sim): S, Path((user, list, id)): Path<(String, String, String)>) -> R {
    sim.store.write().delete_task(&user, &list, &id)?;
    ok(json!({"ok": true}))
}

async fn generate(State(sim): S, b: Option<Json<Value>>) -> R {
    let spec: GenerateSpec = body(b)?;
    let (users, groups) = super::generate::generate_all(&mut sim.store.write(), &spec)?;
    if groups.is_empty() {
        ok(json!({"users": users}))
    } else {
        ok(json!({"users": users, "groups": groups}))
    }
}

async fn mutate(State(sim): S, b: Option<Json<Value>>) -> R {
    let spec: MutateSpec = body(b)?;
    let summary = super::generate::mutate(&mut sim.store.write(), &spec);
    ok(json!(summary))
}

async fn list_faults(State(sim): S) -> R {
    ok(json!(sim.faults.lock().list()))
}

async fn add_fault(State(sim): S, b: Option<Json<Value>>) -> R {
    let spec: FaultSpec = body(b)?;
    if spec.probability.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(SimError::BadRequest(
            "probability must be within 0..=1".into(),
        ));
    }
    let id = sim.add_fault(spec);
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

async fn clear_faults(State(sim): S) -> R {
    sim.faults.lock().clear();
    ok(json!({"ok": true}))
}

async fn remove_fault(State(sim): S, Path(id): Path<u64>) -> R {
    if sim.faults.lock().remove(id) {
        ok(json!({"ok": true}))
    } else {
        Err(SimError::NotFound(format!("fault {id}")))
    }
}

async fn evict(State(sim): S, b: Option<Json<Value>>) -> R {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct E {
        #[serde(default)]
        user: Option<String>,
    }
    let e: E = body(b)?;
    let n = sim.evict_tokens(e.user.as_deref())?;
    ok(json!({"evicted": n}))
}

async fn revoke(State(sim): S) -> R {
    let n = sim.auth.lock().revoke(None);
    ok(json!({"revoked": n}))
}

async fn get_settings(State(sim): S) -> R {
    ok(json!(*sim.settings.read()))
}

async fn patch_settings(State(sim): S, b: Option<Json<Value>>) -> R {
    let patch = b.map(|Json(v)| v).unwrap_or(json!({}));
    let Value::Object(patch) = patch else {
        return Err(SimError::BadRequest("expected a JSON object".into()));
    };
    let mut current = serde_json::to_value(&*sim.settings.read())
        .map_err(|e| SimError::BadRequest(e.to_string()))?;
    if let Value::Object(m) = &mut current {
        for (k, v) in patch {
            if !m.contains_key(&k) {
                return Err(SimError::BadRequest(format!("unknown setting '{k}'")));
            }
            m.insert(k, v);
        }
    }
    let new = serde_json::from_value(current).map_err(|e| SimError::BadRequest(e.to_string()))?;
    *sim.settings.write() = new;
    ok(json!(*sim.settings.read()))
}

/// `GET /_sim/truth?user=..&kind=calendar_view&calendar=primary&start=..&end=..&timezone=..&id_type=..`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthParams {
    pub user: String,
    pub kind: String,
    #[serde(default)]
    pub calendar: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub list: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    /// `immutable` (default: what a client sending `Prefer: IdType="ImmutableId"`, as
    /// graph-cdc does by default, stores) or `regular` (what every other client stores).
    #[serde(default)]
    pub id_type: Option<String>,
}

/// Builds the query a truth request describes.
pub fn truth_query(sim: &SimState, p: &TruthParams) -> Result<(Query, Presentation), SimError> {
    let user = sim.store.read().user(&p.user)?.id.clone();
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| SimError::BadRequest(format!("'{name}' is required for {}", p.kind)))
    };
    let time = |s: String| {
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.naive_utc())
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f"))
            .map_err(|_| SimError::BadRequest(format!("bad date-time '{s}'")))
    };
    let resource = match p.kind.as_str() {
        "calendar_view" => Resource::CalendarView {
            calendar: p
                .calendar
                .clone()
                .filter(|c| !c.eq_ignore_ascii_case("primary")),
            start: time(need(&p.start, "start")?)?,
            end: time(need(&p.end, "end")?)?,
        },
        "calendar_list" => Resource::CalendarList,
        "task_lists" => Resource::TaskLists,
        "tasks" => Resource::Tasks {
            list: need(&p.list, "list")?,
        },
        k => return Err(SimError::BadRequest(format!("unknown kind '{k}'"))),
    };
    let tz = match &p.timezone {
        Some(z) => parse_zone(z)?,
        None => None,
    };
    let immutable_ids = match p.id_type.as_deref() {
        None | Some("immutable") => true,
        Some("regular") => false,
        Some(t) => {
            return Err(SimError::BadRequest(format!(
                "unknown id_type '{t}' (immutable or regular)"
            )))
        }
    };
    Ok((
        Query {
            user,
            resource,
            select: None,
        },
        Presentation {
            tz,
            select: None,
            immutable_ids,
        },
    ))
}

async fn truth(State(sim): S, QueryParams(p): QueryParams<TruthParams>) -> R {
    let (q, pres) = truth_query(&sim, &p)?;
    let items = sim.truth(&q, &pres)?;
    let items: BTreeMap<String, Value> = items
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
        .collect();
    ok(json!({"count": items.len(), "items": items}))
}

async fn stats(State(sim): S) -> R {
    let st = sim.stats.lock().clone();
    ok(json!({
        "total": st.total(),
        "requests": st.requests,
        "by_user": st.by_user,
        "pages": st.pages,
        "records": st.records,
        "largest_page": st.largest_page,
        "tokens_issued": st.tokens_issued,
        "max_in_flight": st.max_in_flight,
        "state_tokens": sim.tokens.lock().len(),
        "notifications": st.notifications,
        "subscriptions": sim.subscriptions.lock().len(),
    }))
}

async fn reset_stats(State(sim): S) -> R {
    *sim.stats.lock() = Default::default();
    ok(json!({"ok": true}))
}
