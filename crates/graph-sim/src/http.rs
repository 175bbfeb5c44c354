//! Graph's HTTP surface: the delta endpoints, the token endpoint, errors as Graph sends them.
//!
//! Path segments are percent-decoded before anything looks at them (a list id ending in
//! `%3D` is the id ending in `=`, a UPN with `%40` is the one with `@`), and matched
//! case-insensitively, as Graph does. Beta-only routes answer `400` under `/v1.0`.
//!
//! ```text
//!   http.rs     routing, the token endpoint, Prefer   rounds.rs   one delta request
//!   batch.rs    POST /$batch                          respond.rs  errors, 410s, pages
//!   directory.rs  users/{u}, groups/{g}               groups_delta.rs  /groups/delta
//!   members.rs  members, transitiveMembers, casts
//!   faulted.rs  caller, fault rules, body faults      transport.rs  redirects, oversized bodies
//!   subscriptions.rs  /subscriptions: change-notification subscriptions
//! ```

mod batch;
mod directory;
mod faulted;
mod groups_delta;
mod members;
mod respond;
mod rounds;
mod subscriptions;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::auth::TokenRequest;
use super::delta::Resource;
use super::faults::FaultKind;
use super::{control, SimState};

pub use respond::{graph_error, render_page};

/// The simulator's whole HTTP app: Graph routes plus `/_sim` control routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .nest("/_sim", control::router())
        .fallback(graph)
        .with_state(state)
}

async fn graph(
    State(sim): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segs = segments(uri.path());
    if segs.len() == 4
        && segs[1].eq_ignore_ascii_case("oauth2")
        && segs[2].eq_ignore_ascii_case("v2.0")
        && segs[3].eq_ignore_ascii_case("token")
    {
        if method != Method::POST {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "use POST",
            );
        }
        return token(&sim, &segs[0], &body);
    }
    if segs.len() == 2 && segs[1].eq_ignore_ascii_case("$batch") {
        if method != Method::POST {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "use POST for $batch",
            );
        }
        let r = batch::batch(&sim, &segs[0], &headers, &body).await;
        return count(&sim, "batch", None, r);
    }
    if segs.len() >= 2
        && (segs[0] == "v1.0" || segs[0] == "beta")
        && segs[1].eq_ignore_ascii_case("subscriptions")
    {
        return subscriptions::request(&sim, &method, &uri, &headers, &segs, &body).await;
    }
    if method != Method::GET {
        return graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "only GET delta requests are simulated",
        );
    }
    dispatch(&sim, &uri, &headers, &segs).await
}

/// A GET, alone or inside a batch: a directory request (users, groups) or a mailbox delta.
async fn dispatch(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    segs: &[String],
) -> Response {
    match directory::request(sim, uri, headers, segs).await {
        Some(r) => r,
        None => rounds::delta_request(sim, uri, headers, segs).await,
    }
}

/// The base URL links are built on: the configured one, or the request's `Host`.
fn base_url(settings: &crate::SimSettings, headers: &HeaderMap) -> String {
    settings
        .public_url
        .clone()
        .or_else(|| {
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(|h| format!("http://{h}"))
        })
        .unwrap_or_default()
}

/// A path's segments, each percent-decoded (`%3D` is `=`, `%40` is `@`; a `+` stays a `+`,
/// as in any path). A `%2F` decodes inside its segment and splits nothing.
pub(crate) fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

fn token(sim: &SimState, tenant: &str, body: &[u8]) -> Response {
    let fault = transport::token_fault(sim);
    if let Some(r) = fault.as_ref().and_then(transport::token_fault_answer) {
        return r;
    }
    let req: TokenRequest = match serde_urlencoded_parse(body) {
        Some(r) => r,
        None => {
            return (StatusCode::BAD_REQUEST, "malformed form body").into_response();
        }
    };
    let lifetime = Duration::from_secs(sim.settings.read().token_lifetime_secs);
    let result = {
        let store = sim.store.read();
        sim.auth.lock().grant(&store, tenant, &req, lifetime)
    };
    match result {
        Ok((access_token, expires_in)) => {
            sim.stats.lock().tokens_issued += 1;
            let answer = serde_json::json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": access_token,
            });
            match fault {
                Some(f) if f.kind == FaultKind::Oversized => {
                    transport::oversized(answer.to_string().into_bytes(), &f)
                }
                _ => axum::Json(answer).into_response(),
            }
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            let body = serde_json::json!({
                "error": e.error,
                "error_description": e.description,
                "error_codes": [e.code],
                "timestamp": Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
                "trace_id": uuid::Uuid::new_v4().to_string(),
                "correlation_id": uuid::Uuid::new_v4().to_string(),
            });
            (status, axum::Json(body)).into_response()
        }
    }
}

fn serde_urlencoded_parse(body: &[u8]) -> Option<TokenRequest> {
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        map.insert(k.into_owned(), serde_json::Value::from(v.into_owned()));
    }
    serde_json::from_value(serde_json::Value::Object(map)).ok()
}

/// Which delta endpoint a path names, and whether it exists only in beta.
fn route(rest: &[String]) -> Option<(Resource, bool)> {
    let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let placeholder = NaiveDateTime::default();
    match l.as_slice() {
        ["calendarview", "delta"] | ["calendar", "calendarview", "delta"] => Some((
            Resource::CalendarView {
                calendar: None,
                start: placeholder,
                end: placeholder,
            },
            false,
        )),
        ["calendars", _, "calendarview", "delta"] => Some((
            Resource::CalendarView {
                calendar: Some(rest[1].to_string()),
                start: placeholder,
                end: placeholder,
            },
            true,
        )),
        ["calendars", "delta"] => Some((Resource::CalendarList, true)),
        ["todo", "lists", "delta"] => Some((Resource::TaskLists, false)),
        ["todo", "lists", _, "tasks", "delta"] => Some((
            Resource::Tasks {
                list: rest[2].to_string(),
            },
            false,
        )),
        _ => None,
    }
}

/// Parses a window bound: RFC 3339 with an offset, or a bare date-time read as UTC.
fn parse_bound(s: &str) -> Option<NaiveDateTime> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).naive_utc());
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// What a request's `Prefer` headers ask for (several headers, or one with comma-separated
/// values: both reach Graph the same way).
#[derive(Debug, Default, PartialEq, Eq)]
struct Prefer {
    page_size: Option<usize>,
    timezone: Option<String>,
    /// `IdType="ImmutableId"` (learn.microsoft.com/graph/outlook-immutable-id).
    immutable_ids: bool,
}

fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for h in headers.get_all("prefer") {
        let Ok(s) = h.to_str() else { continue };
        for part in s.split(',') {
            let part = part.trim();
            if let Some((k, v)) = part.split_once('=') {
                let k = k.trim().to_ascii_lowercase();
                if k == "odata.maxpagesize" {
                    p.page_size = v.trim().parse().ok();
                } else if k == "outlook.timezone" {
                    p.timezone = Some(v.trim().trim_matches('"').to_string());
                } else if k == "idtype" {
                    p.immutable_ids = v
                        .trim()
                        .trim_matches('"')
                        .eq_ignore_ascii_case("ImmutableId");
                }
            }
        }
    }
    p
}

/// Counts a Graph answer in the statistics and passes it on.
fn count(sim: &SimState, endpoint: &str, user: Option<&str>, r: Response) -> Response {
    let mut st = sim.stats.lock();
    *st.requests
        .entry(endpoint.to_string())
        .or_default()
        .entry(r.status().as_u16())
        .or_default() += 1;
    if let Some(u) = user {
        *st.by_user.entry(u.to_string()).or_default() += 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded_one_by_one() {
        assert_eq!(
            segments("/v1.0/users/a%40contoso.com/todo/lists/AQ%2BMk%3D/tasks/delta"),
            [
                "v1.0",
                "users",
                "a@contoso.com",
                "todo",
                "lists",
                "AQ+Mk=",
                "tasks",
                "delta"
            ]
        );
        assert_eq!(segments("/x/a+b/c%2Fd"), ["x", "a+b", "c/d"]);
        assert_eq!(segments("/x/%ZZ"), ["x", "%ZZ"], "invalid escapes stay");
    }

    #[test]
    fn prefer_values_from_one_or_several_headers() {
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            "odata.maxpagesize=7, IdType=\"ImmutableId\""
                .parse()
                .unwrap(),
        );
        h.append(
            "prefer",
            "outlook.timezone=\"W. Europe Standard Time\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            prefer(&h),
            Prefer {
                page_size: Some(7),
                timezone: Some("W. Europe Standard Time".into()),
                immutable_ids: true,
            }
        );
        let mut h = HeaderMap::new();
        h.append("prefer", "IdType=\"RestId\"".parse().unwrap());
        assert!(!prefer(&h).immutable_ids);
    }
}
