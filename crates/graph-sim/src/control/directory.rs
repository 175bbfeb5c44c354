//! Control routes for the directory: user renames and mailbox switches, groups and their
//! members, and the application permissions of app registrations.

use std::sync::Arc;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, ok, R, S};
use crate::model::{GroupSpec, UserPatch};
use crate::SimState;

pub(super) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{group}", get(get_group).delete(delete_group))
        .route("/groups/{group}/members", axum::routing::post(add_members))
        .route("/groups/{group}/members/{member}", delete(remove_member))
        .route(
            "/clients/{client}/roles",
            get(get_roles).put(put_roles).delete(reset_roles),
        )
}

/// `PATCH /_sim/users/{u}` `{"userPrincipalName"?, "mail"?, "mailbox"?}`.
pub(super) async fn patch_user(
    State(sim): S,
    Path(user): Path<String>,
    b: Option<Json<Value>>,
) -> R {
    let p: UserPatch = body(b)?;
    ok(json!(sim.store.write().patch_user(&user, p)?))
}

/// `DELETE /_sim/users/{u}`: the user and its mailbox are gone (see `Store::delete_user`).
pub(super) async fn delete_user(State(sim): S, Path(user): Path<String>) -> R {
    sim.store.write().delete_user(&user)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_groups(State(sim): S) -> R {
    let store = sim.store.read();
    let groups: Vec<_> = store
        .group_ids()
        .iter()
        .filter_map(|id| store.group_info(id).ok())
        .collect();
    ok(json!(groups))
}

async fn create_group(State(sim): S, b: Option<Json<Value>>) -> R {
    let spec: GroupSpec = body(b)?;
    let info = sim.store.write().create_group(spec)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn get_group(State(sim): S, Path(group): Path<String>) -> R {
    ok(json!(sim.store.read().group_info(&group)?))
}

async fn delete_group(State(sim): S, Path(group): Path<String>) -> R {
    sim.store.write().delete_group(&group)?;
    ok(json!({"ok": true}))
}

/// `{"member": "<user id, UPN or group id>"}` or `{"members": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Members {
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

async fn add_members(State(sim): S, Path(group): Path<String>, b: Option<Json<Value>>) -> R {
    let m: Members = body(b)?;
    let mut store = sim.store.write();
    for key in m.member.iter().chain(&m.members) {
        store.add_member(&group, key)?;
    }
    ok(json!(store.group_info(&group)?))
}

async fn remove_member(State(sim): S, Path((group, member)): Path<(String, String)>) -> R {
    let mut store = sim.store.write();
    store.remove_member(&group, &member)?;
    ok(json!(store.group_info(&group)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantParam {
    #[serde(default)]
    tenant: Option<String>,
}

async fn get_roles(
    State(sim): S,
    Path(client): Path<String>,
    QueryParams(t): QueryParams<TenantParam>,
) -> R {
    let store = sim.store.read();
    let tenant = match t.tenant {
        Some(t) => t,
        None => store
            .tenants
            .iter()
            .find(|(_, v)| v.clients.contains_key(&client))
            .map(|(t, _)| t.clone())
            .ok_or_else(|| crate::SimError::NotFound(format!("client {client}")))?,
    };
    ok(json!({"tenant": tenant, "roles": store.app_roles(&tenant, &client)}))
}

/// `PUT /_sim/clients/{client}/roles` `{"roles": [...], "tenant"?}`: the app's application
/// permissions from now on (tokens issued before keep theirs).
async fn put_roles(State(sim): S, Path(client): Path<String>, b: Option<Json<Value>>) -> R {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        roles: Vec<String>,
        #[serde(default)]
        tenant: Option<String>,
    }
    let p: P = body(b)?;
    let n = sim.set_app_roles(p.tenant.as_deref(), &client, Some(p.roles.clone()))?;
    ok(json!({"roles": p.roles, "tenants": n}))
}

async fn reset_roles(
    State(sim): S,
    Path(client): Path<String>,
    QueryParams(t): QueryParams<TenantParam>,
) -> R {
    let n = sim.set_app_roles(t.tenant.as_deref(), &client, None)?;
    ok(json!({"roles": crate::permissions::DEFAULT_ROLES, "tenants": n}))
}
