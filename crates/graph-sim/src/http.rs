//! Graph's HTTP surface: the delta endpoints, the token endpoint, errors as Graph sends them.
//!
//! Paths are matched case-insensitively, as Graph does. Beta-only routes answer `400` under
//! `/v1.0`. Every delta request passes, in order: bearer check, mailbox limits, fault rules,
//! then the page itself.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::auth::{BearerError, TokenRequest};
use super::delta::{self, Lookup, PageParams, Query, Record, Resource, TokenState};
use super::faults::{FaultKind, LinkKind, Refusal, RequestInfo};
use super::present::{parse_zone, Presentation};
use super::{control, SimError, SimState};

/// The simulator's whole HTTP app: Graph routes plus `/_sim` control routes.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .nest("/_sim", control::router())
        .fallback(graph)
        .with_state(state)
}

/// A Graph error response: `{"error":{"code","message","innerError":{…}}}`.
pub fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("request-id", v);
    }
    r
}

fn with_retry_after(mut r: Response, secs: f64) -> Response {
    // Graph sends whole seconds; fractional values are seen in the wild (NOTES.md).
    let v = if secs.fract() == 0.0 {
        format!("{}", secs as u64)
    } else {
        format!("{secs}")
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

async fn graph(
    State(sim): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
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
        return token(&sim, segs[0], &body);
    }
    if segs.len() == 2 && segs[1].eq_ignore_ascii_case("$batch") {
        if method != Method::POST {
            return graph_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request_BadRequest",
                "use POST for $batch",
            );
        }
        let r = batch(&sim, segs[0], &headers, &body).await;
        return count(&sim, "batch", None, r);
    }
    if method != Method::GET {
        return graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "only GET delta requests are simulated",
        );
    }
    match delta_request(&sim, &uri, &headers, &segs).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

fn token(sim: &SimState, tenant: &str, body: &[u8]) -> Response {
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
            axum::Json(serde_json::json!({
                "token_type": "Bearer",
                "expires_in": expires_in,
                "ext_expires_in": expires_in,
                "access_token": access_token,
            }))
            .into_response()
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
fn route(rest: &[&str]) -> Option<(Resource, bool)> {
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

struct Prefer {
    page_size: Option<usize>,
    timezone: Option<String>,
}

fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer {
        page_size: None,
        timezone: None,
    };
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
                }
            }
        }
    }
    p
}

#[derive(serde::Deserialize)]
struct BatchRequest {
    requests: Vec<BatchItem>,
}

#[derive(serde::Deserialize)]
struct BatchItem {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: std::collections::HashMap<String, String>,
}

/// Up to 20 requests in one `POST /{version}/$batch` (NOTES.md, JSON batching). Each item is
/// served as if it came alone (token check, mailbox limits, faults), all at once, so a
/// mailbox's fifth concurrent item is throttled alone; responses come back in random order,
/// each with its own status, headers and body.
async fn batch(sim: &Arc<SimState>, version: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    use rand::seq::SliceRandom;
    let bad = |m: &str| graph_error(StatusCode::BAD_REQUEST, "BadRequest", m);
    let version = version.to_ascii_lowercase();
    if version != "v1.0" && version != "beta" {
        return graph_error(StatusCode::NOT_FOUND, "NotFound", "unknown API version");
    }
    let req: BatchRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("Invalid batch payload: {e}")),
    };
    if req.requests.is_empty() || req.requests.len() > 20 {
        return bad("A batch holds between 1 and 20 requests.");
    }
    let mut ids = std::collections::HashSet::new();
    if !req.requests.iter().all(|r| ids.insert(r.id.as_str())) {
        return bad("Batch request ids must be unique.");
    }
    let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
    // Links inside the answers are absolute, on the host the batch was sent to.
    let host = headers.get(axum::http::header::HOST).cloned();
    let items = req.requests.into_iter().map(|item| {
        let auth = auth.clone();
        let host = host.clone();
        let version = version.clone();
        async move {
            let r = batch_item(sim, &version, auth, host, &item).await;
            let status = r.status().as_u16();
            let mut hdrs = serde_json::Map::new();
            for name in ["retry-after", "location", "content-type"] {
                if let Some(v) = r.headers().get(name).and_then(|v| v.to_str().ok()) {
                    hdrs.insert(name.into(), v.into());
                }
            }
            // A body cut short inside a batch: the item fails, the batch stands.
            let body = axum::body::to_bytes(r.into_body(), usize::MAX).await;
            let (status, body) = match body {
                Ok(b) => (status, b),
                Err(_) => (
                    500,
                    Bytes::from_static(
                        b"{\"error\":{\"code\":\"generalException\",\"message\":\"cut\"}}",
                    ),
                ),
            };
            let body = String::from_utf8(body.to_vec())
                .ok()
                .and_then(|b| serde_json::value::RawValue::from_string(b).ok());
            serde_json::json!({
                "id": item.id,
                "status": status,
                "headers": hdrs,
                "body": body,
            })
        }
    });
    let mut responses = futures_util::future::join_all(items).await;
    responses.shuffle(&mut rand::rng());
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "responses": responses })),
    )
        .into_response()
}

async fn batch_item(
    sim: &Arc<SimState>,
    version: &str,
    auth: Option<HeaderValue>,
    host: Option<HeaderValue>,
    item: &BatchItem,
) -> Response {
    if !item.method.eq_ignore_ascii_case("GET") {
        return graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "only GET delta requests are simulated",
        );
    }
    // Items carry URLs relative to the version, never absolute ones.
    if item.url.contains("://") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Batch request URLs must be relative.",
        );
    }
    let path = format!("/{version}/{}", item.url.trim_start_matches('/'));
    let Ok(uri) = path.parse::<Uri>() else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid request URL.",
        );
    };
    let mut headers = HeaderMap::new();
    if let Some(a) = auth {
        headers.insert(axum::http::header::AUTHORIZATION, a);
    }
    if let Some(h) = host {
        headers.insert(axum::http::header::HOST, h);
    }
    for (k, v) in &item.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let upath = uri.path().to_string();
    let segs: Vec<&str> = upath.trim_matches('/').split('/').collect();
    match delta_request(sim, &uri, &headers, &segs).await {
        Ok(r) | Err(r) => r,
    }
}

async fn delta_request(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    segs: &[&str],
) -> Result<Response, Response> {
    let bad = |m: &str| graph_error(StatusCode::BAD_REQUEST, "BadRequest", m);
    let version = segs
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    if version != "v1.0" && version != "beta" {
        return Err(graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown API version",
        ));
    }
    if segs.len() < 3 || !segs[1].eq_ignore_ascii_case("users") {
        return Err(bad("Resource not found for the segment."));
    }
    let user_key = percent(segs[2]);
    let Some((mut resource, beta_only)) = route(&segs[3..]) else {
        return Err(bad(&format!(
            "Resource not found for the segment '{}'.",
            segs.last().unwrap_or(&"")
        )));
    };
    let endpoint = resource.kind();
    // Authenticate first, as Graph does.
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    let bearer = authz
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let tenant = match sim.auth.lock().check(authz) {
        Ok(t) => t,
        Err(e) => {
            let msg = match e {
                BearerError::Missing => "Access token is empty.",
                BearerError::Unknown => "Invalid access token.",
                BearerError::Expired => "Lifetime validation failed, the token is expired.",
            };
            return Err(count(sim, endpoint, None, unauthorized(msg)));
        }
    };
    if beta_only && version == "v1.0" {
        return Err(count(
            sim,
            endpoint,
            None,
            bad(&format!(
                "Resource not found for the segment '{}'.",
                segs[3]
            )),
        ));
    }
    let (user_id, upn) = {
        let store = sim.store.read();
        match store.user(&user_key) {
            Ok(u) if u.tenant == tenant => (u.id.clone(), u.upn.clone()),
            _ => {
                drop(store);
                return Err(count(
                    sim,
                    endpoint,
                    None,
                    graph_error(
                        StatusCode::NOT_FOUND,
                        "ErrorInvalidUser",
                        &format!("The requested user '{user_key}' is invalid."),
                    ),
                ));
            }
        }
    };
    let settings = sim.settings.read().clone();
    // Outlook's per-mailbox limits.
    let _slot = match sim.mailboxes.enter(
        &user_id,
        settings.mailbox_concurrency,
        settings.mailbox_budget,
        Duration::from_secs(settings.budget_window_secs),
    ) {
        Ok((slot, n)) => {
            let mut st = sim.stats.lock();
            let m = st.max_in_flight.entry(user_id.clone()).or_default();
            *m = (*m).max(n);
            slot
        }
        Err(Refusal::Concurrency) => {
            let r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            );
            return Err(count(
                sim,
                endpoint,
                Some(&user_id),
                with_retry_after(r, 1.0),
            ));
        }
        Err(Refusal::Budget(wait)) => {
            let r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                "Application is over its MailboxRequests limit.",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0);
            return Err(count(
                sim,
                endpoint,
                Some(&user_id),
                with_retry_after(r, secs),
            ));
        }
    };

    // Query string: tokens, window, OData options (names case-insensitive).
    let mut skip = None;
    let mut delta_tok = None;
    let mut start = None;
    let mut end = None;
    let mut select = None;
    let mut rejected = None;
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.to_ascii_lowercase().as_str() {
            "$skiptoken" => skip = Some(v.into_owned()),
            "$deltatoken" => delta_tok = Some(v.into_owned()),
            "startdatetime" => start = Some(v.into_owned()),
            "enddatetime" => end = Some(v.into_owned()),
            "$select" => select = Some(v.split(',').map(|s| s.trim().to_string()).collect()),
            "$expand" | "$filter" | "$orderby" | "$search" | "$top" => {
                rejected = Some(k.into_owned())
            }
            _ => {}
        }
    }
    let prefs = prefer(headers);
    let link = match (&skip, &delta_tok) {
        (Some(_), _) => LinkKind::Next,
        (None, Some(t)) if !t.is_empty() => LinkKind::Delta,
        _ => LinkKind::Initial,
    };
    let fault = sim.faults.lock().check(&RequestInfo {
        user_id: &user_id,
        upn: &upn,
        endpoint,
        link,
    });
    let token_str = skip.clone().or(delta_tok.clone()).filter(|t| !t.is_empty());
    if let Some(f) = &fault {
        match f.kind {
            FaultKind::Gone => {
                if let Some(t) = &token_str {
                    sim.tokens.lock().evict(t);
                }
            }
            FaultKind::Throttle => {
                let r = graph_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Too many requests.",
                );
                return Err(count(
                    sim,
                    endpoint,
                    Some(&user_id),
                    with_retry_after(r, f.retry_after.unwrap_or(1.0)),
                ));
            }
            FaultKind::Unavailable => {
                let r = graph_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "Service Unavailable",
                );
                let r = match f.retry_after {
                    Some(s) => with_retry_after(r, s),
                    None => r,
                };
                return Err(count(sim, endpoint, Some(&user_id), r));
            }
            FaultKind::GatewayTimeout => {
                let r = graph_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UnknownError",
                    "Gateway Timeout",
                );
                return Err(count(sim, endpoint, Some(&user_id), r));
            }
            FaultKind::Unauthorized => {
                sim.auth.lock().revoke(Some(&bearer));
                return Err(count(
                    sim,
                    endpoint,
                    Some(&user_id),
                    unauthorized("Lifetime validation failed, the token is expired."),
                ));
            }
            FaultKind::Slow => {
                tokio::time::sleep(Duration::from_millis(f.delay_ms.unwrap_or(2000))).await;
            }
            FaultKind::Malformed | FaultKind::Truncated => {}
        }
    }

    let base = settings
        .public_url
        .clone()
        .or_else(|| {
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(|h| format!("http://{h}"))
        })
        .unwrap_or_default();
    let path: Arc<str> = uri.path().into();
    let state = match &token_str {
        Some(t) => match sim.tokens.lock().lookup(t) {
            Lookup::Found(s) => {
                if s.cursor.is_some() {
                    s
                } else {
                    // A deltaLink starts a new round of the changes since its round.
                    TokenState {
                        since: s.since,
                        upto: sim.store.read().seq,
                        initial: false,
                        cursor: None,
                        replay: None,
                        ..s
                    }
                }
            }
            Lookup::Gone(location) => {
                return Err(count(sim, endpoint, Some(&user_id), gone(Some(&location))));
            }
            Lookup::Unknown => {
                return Err(count(sim, endpoint, Some(&user_id), gone(None)));
            }
        },
        None => {
            // An initial request (an empty $deltatoken, as in a 410's Location, is one too).
            if let Resource::CalendarView {
                start: s, end: e, ..
            } = &mut resource
            {
                if let Some(k) = rejected {
                    return Err(count(
                        sim,
                        endpoint,
                        Some(&user_id),
                        bad(&format!(
                            "The query parameter '{k}' is not supported with delta."
                        )),
                    ));
                }
                if select.is_some() {
                    return Err(count(
                        sim,
                        endpoint,
                        Some(&user_id),
                        bad("The query parameter '$select' is not supported with calendarView delta."),
                    ));
                }
                let (Some(a), Some(b)) = (
                    start.as_deref().and_then(parse_bound),
                    end.as_deref().and_then(parse_bound),
                ) else {
                    return Err(count(sim, endpoint, Some(&user_id), graph_error(
                        StatusCode::BAD_REQUEST,
                        "ErrorInvalidParameter",
                        "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
                    )));
                };
                *s = a;
                *e = b;
            }
            let mut initial_url = format!("{base}{path}?");
            if let (Some(a), Some(b)) = (&start, &end) {
                if matches!(resource, Resource::CalendarView { .. }) {
                    initial_url.push_str(
                        &url::form_urlencoded::Serializer::new(String::new())
                            .append_pair("startDateTime", a)
                            .append_pair("endDateTime", b)
                            .finish(),
                    );
                    initial_url.push('&');
                }
            }
            initial_url.push_str("$deltatoken=");
            TokenState {
                query: Arc::new(Query {
                    user: user_id.clone(),
                    resource,
                    select: select.clone(),
                }),
                path: path.clone(),
                initial_url: initial_url.into(),
                since: 0,
                upto: sim.store.read().seq,
                initial: true,
                cursor: None,
                replay: None,
            }
        }
    };
    if let Some(f) = &fault {
        if f.kind == FaultKind::Gone && token_str.is_some() {
            return Err(count(
                sim,
                endpoint,
                Some(&user_id),
                gone(Some(&state.initial_url)),
            ));
        }
    }
    let tz = match prefs.timezone.as_deref().map(parse_zone).transpose() {
        Ok(z) => z.flatten(),
        Err(e) => return Err(count(sim, endpoint, Some(&user_id), bad(&e.to_string()))),
    };
    let pres = Presentation {
        tz: if matches!(state.query.resource, Resource::CalendarView { .. }) {
            tz
        } else {
            None
        },
        select: state.query.select.clone(),
    };
    let size = prefs
        .page_size
        .unwrap_or(settings.default_page_size)
        .clamp(1, settings.max_page_size);
    let params = PageParams {
        size,
        scan_limit: settings.scan_limit,
        replay_probability: settings.replay_probability,
        empty_page_probability: settings.empty_page_probability,
    };
    let page = {
        let store = sim.store.read();
        match delta::page(&store, &state, &params) {
            Ok(p) => p,
            Err(SimError::NotFound(what)) => {
                drop(store);
                return Err(count(
                    sim,
                    endpoint,
                    Some(&user_id),
                    graph_error(
                        StatusCode::NOT_FOUND,
                        "ErrorItemNotFound",
                        &format!("The specified object was not found in the store: {what}."),
                    ),
                ));
            }
            Err(e) => {
                drop(store);
                return Err(count(sim, endpoint, Some(&user_id), bad(&e.to_string())));
            }
        }
    };
    let entity = state.query.resource.entity();
    let (link_name, token_param, next_state) = match page.next {
        Some(cursor) => (
            "@odata.nextLink",
            "$skiptoken",
            TokenState {
                cursor: Some(cursor),
                replay: page.replay.clone().or(state.replay.clone()),
                ..state.clone()
            },
        ),
        None => (
            "@odata.deltaLink",
            "$deltatoken",
            TokenState {
                since: state.upto,
                cursor: None,
                replay: None,
                initial: false,
                ..state.clone()
            },
        ),
    };
    let new_token = sim
        .tokens
        .lock()
        .issue(next_state, settings.token_cache_capacity);
    let link_url = format!("{base}{path}?{token_param}={new_token}");
    let body = render_page(
        &base,
        &version,
        entity,
        link_name,
        &link_url,
        &page.records,
        &pres,
    );
    {
        let mut st = sim.stats.lock();
        st.pages += 1;
        st.records += page.records.len() as u64;
    }
    let resp = match fault.map(|f| f.kind) {
        Some(FaultKind::Malformed) => {
            let cut = body.len() / 3;
            let mut garbage = body.as_bytes()[..cut].to_vec();
            garbage.extend_from_slice(b"<html><body>Internal error</body></html>");
            json_response(Body::from(garbage), None)
        }
        Some(FaultKind::Truncated) => {
            // Announce the full length, send half, then cut the connection.
            let full = body.len();
            let half = Bytes::copy_from_slice(&body.as_bytes()[..full / 2]);
            let stream = futures_stream(half);
            json_response(Body::from_stream(stream), Some(full))
        }
        _ => {
            let mut r = json_response(Body::from(body), None);
            if prefs.page_size.is_some() {
                if let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={size}")) {
                    r.headers_mut().insert("preference-applied", v);
                }
            }
            r
        }
    };
    Ok(count(sim, endpoint, Some(&user_id), resp))
}

/// Half a body, then (after it had time to reach the client) a cut connection.
fn futures_stream(
    half: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(half), |state| async move {
        match state {
            Some(h) => Some((Ok(h), None)),
            None => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated truncation",
                );
                Some((Err(cut), None))
            }
        }
    })
}

fn json_response(body: Body, content_length: Option<usize>) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
    );
    if let Some(n) = content_length {
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            h.insert("content-length", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    r
}

pub fn render_page(
    base: &str,
    version: &str,
    entity: &str,
    link_name: &str,
    link: &str,
    records: &[Record],
    pres: &Presentation,
) -> String {
    let approx: usize = records
        .iter()
        .map(|r| match r {
            Record::Upsert(j) => j.len() + 1,
            Record::Removed(id) => id.len() + 80,
        })
        .sum();
    let mut out = String::with_capacity(approx + link.len() + 200);
    out.push_str("{\"@odata.context\":\"");
    out.push_str(base);
    out.push('/');
    out.push_str(version);
    out.push_str("/$metadata#Collection(");
    out.push_str(entity);
    out.push_str(")\",\"value\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match r {
            Record::Upsert(j) => out.push_str(&pres.apply(j)),
            Record::Removed(id) => {
                out.push_str("{\"@odata.type\":\"#microsoft.graph.");
                out.push_str(entity);
                out.push_str("\",\"id\":");
                out.push_str(&serde_json::Value::from(&**id).to_string());
                out.push_str(",\"@removed\":{\"reason\":\"deleted\"}}");
            }
        }
    }
    out.push_str("],\"");
    out.push_str(link_name);
    out.push_str("\":");
    out.push_str(&serde_json::Value::from(link).to_string());
    out.push('}');
    out
}

fn unauthorized(msg: &str) -> Response {
    let mut r = graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", msg);
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\""),
    );
    r
}

fn gone(location: Option<&str>) -> Response {
    let mut r = graph_error(
        StatusCode::GONE,
        "SyncStateNotFound",
        "The sync state generation is not found. Please do a full resync.",
    );
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        r.headers_mut().insert("location", l);
    }
    r
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
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
