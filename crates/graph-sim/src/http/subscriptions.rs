//! `/subscriptions`: create (after the validation handshake), get, list, renew, reauthorize
//! and delete change-notification subscriptions, answering as Graph does.
//!
//! Answers and their sources:
//! - Create `201` with the subscription (api/subscription-post-subscriptions.md); renew
//!   `PATCH` `200` with it; `DELETE` `204` (concepts/change-notifications-delivery-webhooks.md);
//!   `POST /subscriptions/{id}/reauthorize` `204` (api/subscription-reauthorize.md).
//! - Unknown or expired id: `404 ResourceNotFound` "The object was not found."
//!   (microsoftgraph/msgraph-sdk-php issue 221; microsoft-graph-docs-contrib issue 6599).
//! - A resource not supported: `400 ExtensionError` "Operation: Create; Exception: [Status
//!   Code: BadRequest; Reason: Invalid resource specified in payload]" (microsoft-graph-docs
//!   issue 14948). An unknown user: `404 ExtensionError` "… [Status Code: NotFound; Reason:
//!   The requested user '…' is invalid.]" (microsoft-graph-docs-contrib issue 3201); a user
//!   without a mailbox: "… Reason: REST API is not yet supported for this mailbox.]"
//!   (microsoft-graph-docs issue 6869).
//! - Too long a lifetime: `400 ExtensionError` "Subscription expiration can only be 4230
//!   minutes in the future." (microsoft-graph-docs-contrib issue 7726).
//! - `http` URLs: `400 InvalidRequest` "NotificationUrl scheme='http' is not supported."
//!   (microsoft-graph-docs issue 2751), except on loopback hosts (`127.0.0.1`, `localhost`,
//!   `[::1]`): a test's receiver cannot have a certificate Graph trusts; real Graph would
//!   refuse them.
//! - More than `subscriptions_per_mailbox` Outlook subscriptions: `403 ExtensionError`
//!   "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of
//!   subscriptions has been reached]" (microsoft-graph-docs-contrib issue 112).
//! - Failed handshake: `400 ValidationError` (`notify.rs`).
//! - Missing properties: "expirationDateTime is a required property for subscription
//!   creation" (microsoft-graph-docs-contrib issue 7399); its code is not quoted there, so
//!   `InvalidRequest`, Graph's code for the other malformed-request answers here. An
//!   expiration in the past, a bad `changeType`, a `clientState` over 128 characters: no
//!   answer is documented; `400 InvalidRequest` with a plain message.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Timelike as _, Utc};
use serde_json::{json, Value};

use super::faulted::{early_fault, refuse, Answer, Caller};
use super::respond::{bearer_error, graph_error};
use super::{base_url, count};
use crate::auth::Grant;
use crate::faults::{LinkKind, RequestInfo};
use crate::model::changes::ChangeType;
use crate::notify;
use crate::permissions::Need;
use crate::subscriptions::{event_hub_name, Subscription, Target};
use crate::SimState;

/// Statistics label and fault-rule `endpoint` of these requests.
pub const ENDPOINT: &str = "subscriptions";
/// Subscriptions per page of `GET /subscriptions`.
const PAGE: usize = 100;

fn invalid(m: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "InvalidRequest", m)
}

fn not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

fn extension(status: StatusCode, m: &str) -> Response {
    graph_error(status, "ExtensionError", m)
}

/// Handles `/{version}/subscriptions[/{id}[/reauthorize]]`; `segs[1]` is `subscriptions`.
pub(super) async fn request(
    sim: &Arc<SimState>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    segs: &[String],
    body: &[u8],
) -> Response {
    let r = serve(sim, method, uri, headers, segs, body).await;
    match r {
        Ok(r) => count(sim, ENDPOINT, None, r),
        // Refusals were counted where they were made.
        Err(r) => *r,
    }
}

async fn serve(
    sim: &Arc<SimState>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    segs: &[String],
    body: &[u8],
) -> Answer<Response> {
    let (grant, caller) = authorize(sim, headers)?;
    let fault = sim.faults.lock().check(&RequestInfo {
        user_id: "",
        upn: "",
        endpoint: ENDPOINT,
        link: LinkKind::Initial,
    });
    if let Some(f) = &fault {
        early_fault(&caller, f, None).await?;
    }
    notify::sweep(sim);
    let version = segs[0].as_str();
    let ctx = format!("{}/{version}", base_url(&sim.settings.read(), headers));
    let id = segs.get(2).map(String::as_str);
    let action = segs.get(3).map(|s| s.to_ascii_lowercase());
    Ok(match (method.as_str(), id, action.as_deref(), segs.len()) {
        ("POST", None, None, 2) => create(sim, &grant, headers, &ctx, body).await,
        ("GET", None, None, 2) => list(sim, &grant, &ctx, uri),
        ("GET", Some(id), None, 3) => with_own(sim, &grant, id, |s| ok_json(s, &ctx)),
        ("PATCH", Some(id), None, 3) => renew(sim, &grant, id, &ctx, body),
        ("DELETE", Some(id), None, 3) => delete(sim, &grant, id),
        ("POST", Some(id), Some("reauthorize"), 4) => with_own(sim, &grant, id, |s| {
            s.reauthorize_since = None;
            StatusCode::NO_CONTENT.into_response()
        }),
        (_, _, _, n) if n <= 4 => graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "The HTTP method is not supported for this resource.",
        ),
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Resource not found for the segment.",
        ),
    })
}

/// The bearer token: any valid one may manage its app's subscriptions; creating one also
/// needs the resource's read permission (checked in `create`).
fn authorize<'a>(sim: &'a SimState, headers: &HeaderMap) -> Answer<(Grant, Caller<'a>)> {
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    let grant = match sim.auth.lock().check_grant(authz) {
        Ok(g) => g,
        Err(e) => return refuse(count(sim, ENDPOINT, None, bearer_error(e))),
    };
    let caller = Caller {
        sim,
        endpoint: ENDPOINT,
        user_id: String::new(),
        upn: String::new(),
        bearer: authz
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string(),
    };
    Ok((grant, caller))
}

/// The subscription with its `@odata.context`; `ctx` is `{base}/{version}`.
fn ok_json(s: &Subscription, ctx: &str) -> Response {
    let mut v = s.to_json();
    if let Value::Object(m) = &mut v {
        let ctx = format!("{ctx}/$metadata#subscriptions/$entity");
        m.insert("@odata.context".into(), Value::from(ctx));
    }
    axum::Json(v).into_response()
}

/// Runs `f` on the caller's own live subscription `id`, or answers 404.
fn with_own(
    sim: &SimState,
    grant: &Grant,
    id: &str,
    f: impl FnOnce(&mut Subscription) -> Response,
) -> Response {
    let mut subs = sim.subscriptions.lock();
    match subs
        .get_mut(id)
        .filter(|s| s.tenant == grant.tenant && s.client_id == grant.client_id)
    {
        Some(s) => f(s),
        None => not_found(),
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Checks a requested expiration against the resource's longest lifetime.
fn check_expiry(sim: &SimState, target: &Target, v: &Value) -> Answer<DateTime<Utc>> {
    if v.is_null() {
        return Err(Box::new(invalid(
            "expirationDateTime is a required property for subscription creation",
        )));
    }
    let t = parse_time(v).ok_or_else(|| Box::new(invalid("Invalid expirationDateTime.")))?;
    // Graph keeps seven fractional digits (100 ns), as it answers them.
    let t = t.with_nanosecond(t.nanosecond() / 100 * 100).unwrap_or(t);
    let now = Utc::now();
    if t <= now {
        return Err(Box::new(invalid(
            "expirationDateTime must be in the future.",
        )));
    }
    let max_secs = sim
        .settings
        .read()
        .subscription_max_secs
        .map(|s| s as i64)
        .unwrap_or(target.max_minutes() * 60);
    if t > now + chrono::Duration::seconds(max_secs) {
        return Err(Box::new(extension(
            StatusCode::BAD_REQUEST,
            &format!(
                "Subscription expiration can only be {} minutes in the future.",
                max_secs / 60
            ),
        )));
    }
    Ok(t)
}

/// Checks a notification URL: an Event Hubs one, HTTPS, or HTTP on a loopback host.
fn check_url(name: &str, url: &str) -> Answer<()> {
    if url
        .get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("EventHub:"))
    {
        return match event_hub_name(url) {
            Some(_) => Ok(()),
            None => Err(Box::new(invalid(&format!("Invalid {name} '{url}'.")))),
        };
    }
    let u =
        url::Url::parse(url).map_err(|_| Box::new(invalid(&format!("Invalid {name} '{url}'."))))?;
    let loopback = matches!(
        u.host_str(),
        Some("127.0.0.1") | Some("localhost") | Some("[::1]")
    );
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        s => {
            let prop = if name == "notificationUrl" {
                "NotificationUrl"
            } else {
                "LifecycleNotificationUrl"
            };
            Err(Box::new(invalid(&format!(
                "{prop} scheme='{s}' is not supported."
            ))))
        }
    }
}

/// What a `resource` names, for a caller in `tenant`.
fn target(sim: &SimState, tenant: &str, resource: &str) -> Answer<Target> {
    let path = resource.trim().trim_start_matches('/');
    let invalid_resource = || {
        extension(
            StatusCode::BAD_REQUEST,
            "Operation: Create; Exception: [Status Code: BadRequest; Reason: Invalid resource specified in payload]",
        )
    };
    if path.contains('?') {
        return Err(Box::new(invalid_resource()));
    }
    let segs = super::segments(path);
    let l: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = l.iter().map(String::as_str).collect();
    if l.first() == Some(&"me") {
        // An app-only token has no signed-in user.
        return Err(Box::new(graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "/me request is only valid with delegated authentication flow.",
        )));
    }
    enum Kind {
        Events(Option<String>),
        Tasks(String),
    }
    let kind = match l.as_slice() {
        ["users", _, "events"] | ["users", _, "calendar", "events"] => Kind::Events(None),
        ["users", _, "calendars", _, "events"] => Kind::Events(Some(segs[3].clone())),
        ["users", _, "todo", "lists", _, "tasks"] => Kind::Tasks(segs[4].clone()),
        _ => return Err(Box::new(invalid_resource())),
    };
    let key = &segs[1];
    let store = sim.store.read();
    let user = match store.user(key) {
        Ok(u) if u.tenant == tenant => u,
        _ => {
            return Err(Box::new(extension(
                StatusCode::NOT_FOUND,
                &format!("Operation: Create; Exception: [Status Code: NotFound; Reason: The requested user '{key}' is invalid.]"),
            )))
        }
    };
    if !user.mailbox {
        return Err(Box::new(extension(
            StatusCode::NOT_FOUND,
            "Operation: Create; Exception: [Status Code: NotFound; Reason: REST API is not yet supported for this mailbox.]",
        )));
    }
    // Exchange's ErrorItemNotFound text for a folder it does not have.
    let missing = || {
        extension(
            StatusCode::NOT_FOUND,
            "Operation: Create; Exception: [Status Code: NotFound; Reason: The specified object was not found in the store.]",
        )
    };
    let user_id = user.id.clone();
    Ok(match kind {
        Kind::Events(None) => Target::Events {
            calendar: user.primary_calendar.clone(),
            user_id,
        },
        Kind::Events(Some(c)) => Target::Events {
            calendar: store
                .calendar_id(&user_id, &c)
                .map_err(|_| Box::new(missing()))?,
            user_id,
        },
        Kind::Tasks(list) => {
            let l = user.lists.get(&list).ok_or_else(|| Box::new(missing()))?;
            Target::Tasks {
                list: l.data.id.as_str().into(),
                user_id,
            }
        }
    })
}

fn parse_change_types(s: &str) -> Option<Vec<ChangeType>> {
    let mut v = Vec::new();
    for part in s.split(',') {
        let t = match part.trim().to_ascii_lowercase().as_str() {
            "created" => ChangeType::Created,
            "updated" => ChangeType::Updated,
            "deleted" => ChangeType::Deleted,
            _ => return None,
        };
        if !v.contains(&t) {
            v.push(t);
        }
    }
    (!v.is_empty()).then_some(v)
}

async fn create(
    sim: &Arc<SimState>,
    grant: &Grant,
    headers: &HeaderMap,
    ctx: &str,
    body: &[u8],
) -> Response {
    let Ok(b) = serde_json::from_slice::<Value>(body) else {
        return invalid("Invalid JSON in the request body.");
    };
    let text = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    let Some(resource) = text("resource") else {
        return invalid("resource is a required property for subscription creation");
    };
    let Some(change_type) = text("changeType") else {
        return invalid("changeType is a required property for subscription creation");
    };
    let Some(notification_url) = text("notificationUrl") else {
        return invalid("notificationUrl is a required property for subscription creation");
    };
    let Some(change_types) = parse_change_types(&change_type) else {
        return invalid(&format!("Invalid changeType '{change_type}'."));
    };
    let client_state = text("clientState");
    if client_state
        .as_ref()
        .is_some_and(|c| c.chars().count() > 128)
    {
        return invalid("clientState must be at most 128 characters long.");
    }
    let tls = text("latestSupportedTlsVersion").unwrap_or_else(|| "v1_2".into());
    if !["v1_0", "v1_1", "v1_2", "v1_3"].contains(&tls.as_str()) {
        return invalid(&format!("Invalid latestSupportedTlsVersion '{tls}'."));
    }
    let lifecycle_url = text("lifecycleNotificationUrl");
    let target = match target(sim, &grant.tenant, &resource) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // "Creating a subscription requires read scope to the resource" (subscription-post-subscriptions).
    let need = match target {
        Target::Events { .. } => Need::Calendars,
        Target::Tasks { .. } => Need::Tasks,
    };
    if !need.granted(&grant.roles) {
        return need.denied(sim.settings.read().todo_denied);
    }
    let expires = match check_expiry(
        sim,
        &target,
        b.get("expirationDateTime").unwrap_or(&Value::Null),
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    for (name, url) in [
        ("notificationUrl", Some(&notification_url)),
        ("lifecycleNotificationUrl", lifecycle_url.as_ref()),
    ] {
        if let Some(Err(r)) = url.map(|u| check_url(name, u)) {
            return *r;
        }
    }
    if target.is_outlook() {
        let limit = sim.settings.read().subscriptions_per_mailbox;
        if sim.subscriptions.lock().outlook_count(target.user_id()) >= limit {
            return extension(
                StatusCode::FORBIDDEN,
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions has been reached]",
            );
        }
    }
    // Both endpoints are validated; Event Hubs ones never are.
    for url in [Some(&notification_url), lifecycle_url.as_ref()]
        .into_iter()
        .flatten()
        .filter(|u| event_hub_name(u).is_none())
    {
        if let Err(e) = notify::validate(sim, url).await {
            return graph_error(StatusCode::BAD_REQUEST, "ValidationError", e.message());
        }
    }
    // Event Hubs get a validation message instead of a handshake.
    for url in [Some(&notification_url), lifecycle_url.as_ref()]
        .into_iter()
        .flatten()
    {
        if let Some(hub) = event_hub_name(url) {
            sim.eventhub.push(notify::event_hub_validation(hub));
        }
    }
    let immutable_ids = super::prefer(headers).immutable_ids;
    let s = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        resource,
        target,
        change_type,
        change_types,
        notification_url,
        lifecycle_url,
        client_state,
        expires,
        tls,
        client_id: grant.client_id.clone(),
        tenant: grant.tenant.clone(),
        immutable_ids,
        reauthorize_since: None,
        created: std::time::Instant::now(),
        serial: 0,
        sent: 0,
    };
    let mut r = ok_json(&s, ctx);
    *r.status_mut() = StatusCode::CREATED;
    {
        let mut subs = sim.subscriptions.lock();
        // The limit again: another creation may have finished during the handshake.
        if s.target.is_outlook() {
            let limit = sim.settings.read().subscriptions_per_mailbox;
            if subs.outlook_count(s.target.user_id()) >= limit {
                return extension(
                    StatusCode::FORBIDDEN,
                    "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions has been reached]",
                );
            }
        }
        subs.insert(s);
    }
    notify::sync_journal(sim);
    sim.stats.lock().notifications.subscriptions_created += 1;
    r
}

fn list(sim: &SimState, grant: &Grant, ctx: &str, uri: &axum::http::Uri) -> Response {
    let skip: usize = uri
        .query()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k.eq_ignore_ascii_case("$skiptoken"))
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0);
    let subs = sim.subscriptions.lock();
    let mine = subs.of_app(&grant.tenant, &grant.client_id);
    let page: Vec<Value> = mine
        .iter()
        .skip(skip)
        .take(PAGE)
        .map(|s| s.to_json())
        .collect();
    let mut out = json!({
        "@odata.context": format!("{ctx}/$metadata#subscriptions"),
        "value": page,
    });
    if skip + PAGE < mine.len() {
        out["@odata.nextLink"] =
            Value::from(format!("{ctx}/subscriptions?$skiptoken={}", skip + PAGE));
    }
    axum::Json(out).into_response()
}

fn renew(sim: &SimState, grant: &Grant, id: &str, ctx: &str, body: &[u8]) -> Response {
    let Ok(b) = serde_json::from_slice::<Value>(body) else {
        return invalid("Invalid JSON in the request body.");
    };
    let target = match sim.subscriptions.lock().get(id) {
        Some(s) if s.tenant == grant.tenant && s.client_id == grant.client_id => s.target.clone(),
        _ => return not_found(),
    };
    let expires = match check_expiry(
        sim,
        &target,
        b.get("expirationDateTime").unwrap_or(&Value::Null),
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let r = with_own(sim, grant, id, |s| {
        s.expires = expires;
        // "renewing your subscription also reauthorizes your endpoint" (lifecycle events).
        s.reauthorize_since = None;
        ok_json(s, ctx)
    });
    if r.status() == StatusCode::OK {
        sim.stats.lock().notifications.subscriptions_renewed += 1;
    }
    r
}

fn delete(sim: &SimState, grant: &Grant, id: &str) -> Response {
    let removed = {
        let mut subs = sim.subscriptions.lock();
        match subs.get(id) {
            Some(s) if s.tenant == grant.tenant && s.client_id == grant.client_id => {
                subs.remove(id).is_some()
            }
            _ => false,
        }
    };
    if !removed {
        return not_found();
    }
    notify::sync_journal(sim);
    sim.stats.lock().notifications.subscriptions_deleted += 1;
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_types_parse_as_a_comma_list() {
        assert_eq!(
            parse_change_types("created, Updated,created"),
            Some(vec![ChangeType::Created, ChangeType::Updated])
        );
        assert_eq!(parse_change_types(""), None);
        assert_eq!(parse_change_types("created,moved"), None);
    }

    #[test]
    fn urls_must_be_https_except_on_loopback_and_event_hubs() {
        assert!(check_url("notificationUrl", "https://hook.example.com/n").is_ok());
        assert!(check_url("notificationUrl", "http://127.0.0.1:9/n").is_ok());
        assert!(check_url("notificationUrl", "http://localhost:9/n").is_ok());
        assert!(check_url("notificationUrl", "http://[::1]:9/n").is_ok());
        assert!(check_url(
            "notificationUrl",
            "EventHub:https://ns.servicebus.windows.net/eventhubname/h?tenantId=x"
        )
        .is_ok());
        let r = check_url("notificationUrl", "http://hook.example.com/n").unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(check_url("notificationUrl", "not a url").is_err());
    }
}
