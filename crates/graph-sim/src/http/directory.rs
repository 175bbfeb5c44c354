//! Directory requests: `users/{id | userPrincipalName}`, `groups/{id}`, a group's `members`
//! and `transitiveMembers` (with the `microsoft.graph.user` / `microsoft.graph.group` casts),
//! and `groups/delta` (in `groups_delta.rs`).
//!
//! Order, as for mailbox requests: bearer check, the token's permission (`permissions.rs`),
//! fault rules (matched as initial requests: directory links are never evicted), then the
//! object. Unknown users and groups answer `404 Request_ResourceNotFound` "Resource '…' does
//! not exist or one of its queried reference-property objects are not present."
//! (microsoft-graph-docs-contrib issue 7618).

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value};

use super::faulted::{deliver, early_fault, refuse, Answer, Caller};
use super::respond::{bearer_error, graph_error};
use super::{base_url, count};
use crate::auth::Grant;
use crate::faults::{LinkKind, RequestInfo};
use crate::model::{Group, Store, User};
use crate::permissions::Need;
use crate::SimState;

/// Properties a user has here: the default set `user-get` returns without `$select`
/// (businessPhones, displayName, givenName, id, jobTitle, mail, mobilePhone, officeLocation,
/// preferredLanguage, surname, userPrincipalName), and a few more.
pub(super) const USER_DEFAULT: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];
pub(super) const USER_MORE: &[&str] = &["accountEnabled", "mailNickname"];
/// A group's default properties here (group-get returns more; these are the ones kept).
pub(super) const GROUP_PROPS: &[&str] = &[
    "id",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
];

/// What a directory path names.
enum Route {
    User(String),
    Group(String),
    Members {
        group: String,
        transitive: bool,
        cast: Option<Cast>,
    },
    GroupsDelta,
}

/// An OData cast segment on a member list.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Cast {
    User,
    Group,
    /// A member type security groups can hold but this simulator never stores (devices,
    /// contacts, service principals): an empty list.
    Other,
}

impl Route {
    fn parse(rest: &[String]) -> Option<Route> {
        let l: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = l.iter().map(String::as_str).collect();
        Some(match l.as_slice() {
            ["users", _] => Route::User(rest[1].clone()),
            ["groups", "delta"] => Route::GroupsDelta,
            ["groups", _] => Route::Group(rest[1].clone()),
            ["groups", _, m] | ["groups", _, m, _]
                if *m == "members" || *m == "transitivemembers" =>
            {
                let cast = match l.get(3).copied() {
                    None => None,
                    Some("microsoft.graph.user") => Some(Cast::User),
                    Some("microsoft.graph.group") => Some(Cast::Group),
                    Some(
                        "microsoft.graph.device"
                        | "microsoft.graph.orgcontact"
                        | "microsoft.graph.serviceprincipal"
                        | "microsoft.graph.application",
                    ) => Some(Cast::Other),
                    Some(_) => return None,
                };
                Route::Members {
                    group: rest[1].clone(),
                    transitive: *m == "transitivemembers",
                    cast,
                }
            }
            _ => return None,
        })
    }

    /// The label in statistics and fault rules.
    fn endpoint(&self) -> &'static str {
        match self {
            Route::User(_) => "user",
            Route::Group(_) => "group",
            Route::Members {
                transitive: false, ..
            } => "group_members",
            Route::Members {
                transitive: true, ..
            } => "transitive_members",
            Route::GroupsDelta => "groups_delta",
        }
    }
}

/// Serves a directory request; `None` when the path is no directory path.
pub(super) async fn request(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    segs: &[String],
) -> Option<Response> {
    let version = segs.first()?.to_ascii_lowercase();
    if version != "v1.0" && version != "beta" {
        return None;
    }
    let route = Route::parse(&segs[1..])?;
    Some(match serve(sim, uri, headers, &version, route).await {
        Ok(r) => r,
        Err(r) => *r,
    })
}

/// The query options directory requests read (names case-insensitive).
#[derive(Default)]
pub(super) struct Options {
    pub select: Option<Vec<String>>,
    pub top: Option<String>,
    pub skip: Option<String>,
    pub delta: Option<String>,
    pub filter: Option<String>,
    pub count: bool,
}

impl Options {
    pub fn parse(uri: &Uri) -> Self {
        let mut o = Options::default();
        for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match k.to_ascii_lowercase().as_str() {
                "$select" => {
                    o.select = Some(
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    )
                }
                "$top" => o.top = Some(v.into_owned()),
                "$skiptoken" => o.skip = Some(v.into_owned()),
                "$deltatoken" => o.delta = Some(v.into_owned()),
                "$filter" => o.filter = Some(v.into_owned()),
                "$count" => o.count = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        o
    }
}

async fn serve(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    version: &str,
    route: Route,
) -> Answer<Response> {
    let endpoint = route.endpoint();
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    let grant = match sim.auth.lock().check_grant(authz) {
        Ok(g) => g,
        Err(e) => return refuse(count(sim, endpoint, None, bearer_error(e))),
    };
    let need = match route {
        Route::User(_) => Need::Users,
        _ => Need::GroupMembers,
    };
    if !need.granted(&grant.roles) {
        return refuse(count(sim, endpoint, None, need.denied(Default::default())));
    }
    let caller = Caller {
        sim,
        endpoint,
        user_id: String::new(),
        upn: String::new(),
        bearer: authz
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string(),
    };
    let fault = sim.faults.lock().check(&RequestInfo {
        user_id: "",
        upn: "",
        endpoint,
        link: LinkKind::Initial,
    });
    if let Some(f) = &fault {
        early_fault(&caller, f, None).await?;
    }
    let base = base_url(&sim.settings.read(), headers);
    let ctx = format!("{base}/{version}/$metadata#");
    let opts = Options::parse(uri);
    let body = {
        let store = sim.store.read();
        match &route {
            Route::User(key) => get_user(&store, &grant, key, &opts, &ctx),
            Route::Group(id) => get_group(&store, &grant, id, &opts, &ctx),
            Route::Members {
                group,
                transitive,
                cast,
            } => {
                let list = super::members::MemberList {
                    transitive: *transitive,
                    cast: *cast,
                    consistent: headers
                        .get("consistencylevel")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.eq_ignore_ascii_case("eventual")),
                };
                let link_base = format!("{base}{}", uri.path());
                list.page(&store, &grant, group, &opts, uri, &ctx, &link_base)
            }
            Route::GroupsDelta => {
                let link_base = format!("{base}{}", uri.path());
                let size = super::prefer(headers).page_size;
                super::groups_delta::page(&store, &grant, &opts, size, &ctx, &link_base)
            }
        }
    };
    match body {
        Ok(b) => Ok(deliver(&caller, fault.as_ref(), b, None)),
        Err(r) => refuse(caller.answer(*r)),
    }
}

pub(super) fn not_found(key: &str) -> Box<Response> {
    Box::new(graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
        ),
    ))
}

/// `$select` names checked against an entity's properties: "Could not find a property named
/// '…' on type 'microsoft.graph.user'." is how OData refuses an unknown one.
pub(super) fn checked<'a>(
    select: &'a Option<Vec<String>>,
    known: &[&[&str]],
    entity: &str,
) -> Result<Option<&'a [String]>, Box<Response>> {
    let Some(sel) = select else { return Ok(None) };
    for p in sel {
        if !known
            .iter()
            .flat_map(|k| k.iter())
            .any(|k| k.eq_ignore_ascii_case(p))
        {
            return Err(Box::new(graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!(
                    "Could not find a property named '{p}' on type 'microsoft.graph.{entity}'."
                ),
            )));
        }
    }
    Ok(Some(sel))
}

/// `#users`, or `#users(id,mail)` for a projection (as user-get's `$select` example shows).
pub(super) fn context(ctx: &str, set: &str, select: Option<&[String]>) -> String {
    match select {
        Some(s) => format!("{ctx}{set}({})", s.join(",")),
        None => format!("{ctx}{set}"),
    }
}

/// A user's value of a property (`Null` for those not kept here).
fn user_prop(u: &User, name: &str) -> Value {
    match name {
        "id" => u.id.clone().into(),
        "userPrincipalName" => u.upn.clone().into(),
        "mail" => u.mail.clone().map_or(Value::Null, Value::from),
        "displayName" => u.display_name.clone().into(),
        "givenName" => u
            .display_name
            .split_whitespace()
            .next()
            .map_or(Value::Null, Value::from),
        "businessPhones" => Value::Array(vec![]),
        "accountEnabled" => true.into(),
        "mailNickname" => u.upn.split('@').next().unwrap_or("").into(),
        _ => Value::Null,
    }
}

fn group_prop(g: &Group, name: &str) -> Value {
    match name {
        "id" => g.id.clone().into(),
        "displayName" => g.display_name.clone().into(),
        "mailNickname" => g.mail_nickname.clone().into(),
        "groupTypes" => Value::Array(vec![]),
        "mailEnabled" => false.into(),
        "securityEnabled" => true.into(),
        _ => Value::Null,
    }
}

/// The canonical spelling of a selected property.
fn canonical<'a>(known: &[&'a str], p: &str) -> Option<&'a str> {
    known.iter().copied().find(|k| k.eq_ignore_ascii_case(p))
}

/// A user as JSON: the selection (or the default set); with `limited`, only the id is
/// given, every other property null ("Limited information returned for inaccessible member
/// objects", permissions-overview; an app with GroupMember.Read.All alone gets "mail: null",
/// Microsoft Q&A 2259512).
pub(super) fn user_object(
    u: &User,
    select: Option<&[String]>,
    limited: bool,
) -> Map<String, Value> {
    let all: Vec<&str> = USER_DEFAULT.iter().chain(USER_MORE).copied().collect();
    let names: Vec<&str> = match select {
        Some(s) => s.iter().filter_map(|p| canonical(&all, p)).collect(),
        None => USER_DEFAULT.to_vec(),
    };
    names
        .into_iter()
        .map(|n| {
            let v = if limited && n != "id" {
                Value::Null
            } else {
                user_prop(u, n)
            };
            (n.to_string(), v)
        })
        .collect()
}

pub(super) fn group_object(g: &Group, select: Option<&[String]>) -> Map<String, Value> {
    let names: Vec<&str> = match select {
        Some(s) => s.iter().filter_map(|p| canonical(GROUP_PROPS, p)).collect(),
        None => GROUP_PROPS.to_vec(),
    };
    names
        .into_iter()
        .map(|n| (n.to_string(), group_prop(g, n)))
        .collect()
}

fn with_context(ctx: String, obj: Map<String, Value>) -> String {
    let mut out = Map::new();
    out.insert("@odata.context".into(), ctx.into());
    out.extend(obj);
    Value::Object(out).to_string()
}

/// `GET /users/{id | userPrincipalName}` ("Get user"; a UPN case-insensitively). With
/// `$select` only the selected properties come back (the example's answer has no `id`).
fn get_user(
    store: &Store,
    grant: &Grant,
    key: &str,
    opts: &Options,
    ctx: &str,
) -> Result<String, Box<Response>> {
    let u = match store.user(key) {
        Ok(u) if u.tenant == grant.tenant => u,
        _ => return Err(not_found(key)),
    };
    let select = checked(&opts.select, &[USER_DEFAULT, USER_MORE], "user")?;
    let ctx = format!("{}/$entity", context(ctx, "users", select));
    Ok(with_context(ctx, user_object(u, select, false)))
}

/// `GET /groups/{id}`.
fn get_group(
    store: &Store,
    grant: &Grant,
    id: &str,
    opts: &Options,
    ctx: &str,
) -> Result<String, Box<Response>> {
    let g = live_group(store, grant, id)?;
    let select = checked(&opts.select, &[GROUP_PROPS], "group")?;
    let ctx = format!("{}/$entity", context(ctx, "groups", select));
    Ok(with_context(ctx, group_object(g, select)))
}

pub(super) fn live_group<'a>(
    store: &'a Store,
    grant: &Grant,
    id: &str,
) -> Result<&'a Group, Box<Response>> {
    match store.group(id) {
        Ok(g) if g.tenant == grant.tenant => Ok(g),
        _ => Err(not_found(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_casts() {
        let r = |p: &[&str]| Route::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(matches!(r(&["users", "a@b.c"]), Some(Route::User(_))));
        assert!(matches!(r(&["Groups", "Delta"]), Some(Route::GroupsDelta)));
        assert!(matches!(
            r(&["groups", "g", "transitiveMembers", "microsoft.graph.user"]),
            Some(Route::Members {
                transitive: true,
                cast: Some(Cast::User),
                ..
            })
        ));
        assert!(r(&["groups", "g", "members", "microsoft.graph.nothing"]).is_none());
        assert!(r(&["users", "a", "calendars", "delta"]).is_none());
    }
}
