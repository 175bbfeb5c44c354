//! One delta request, in the order Graph handles it: bearer check, mailbox limits, fault
//! rules, the sync state behind the link, the page, and the link to what follows.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;

use super::respond::{
    futures_stream, gone, graph_error, json_response, render_page, unauthorized, with_retry_after,
    Gone,
};
use super::{count, parse_bound, prefer, route, Prefer};
use crate::auth::BearerError;
use crate::delta::{self, Lookup, PageParams, Query, Resource, TokenState};
use crate::faults::{FaultKind, FaultSpec, LinkKind, Refusal, RequestInfo};
use crate::present::{parse_zone, Presentation};
use crate::quirks::{cycle_link, loop_closed, MailboxQuirks};
use crate::tokens::expired_message;
use crate::{SimError, SimSettings, SimState};

/// Serves one delta request (`segs`: the percent-decoded path segments).
pub(super) async fn delta_request(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    segs: &[String],
) -> Response {
    match serve(sim, uri, headers, segs).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

/// A step's result: on with a value, or the request answered already (boxed: a `Response`
/// is large and most steps go on).
type Answer<T> = Result<T, Box<Response>>;

fn refuse<T>(r: Response) -> Answer<T> {
    Err(Box::new(r))
}

fn bad(m: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", m)
}

/// Who asks, for what: known once the request is authenticated.
struct Caller<'a> {
    sim: &'a SimState,
    endpoint: &'static str,
    user_id: String,
    upn: String,
    bearer: String,
}

impl Caller<'_> {
    /// Counts an answer to this caller and passes it on.
    fn answer(&self, r: Response) -> Response {
        count(self.sim, self.endpoint, Some(&self.user_id), r)
    }
}

/// The query string: tokens, window, OData options (names case-insensitive).
#[derive(Default)]
struct Params {
    skip: Option<String>,
    delta: Option<String>,
    start: Option<String>,
    end: Option<String>,
    select: Option<Vec<String>>,
    rejected: Option<String>,
}

impl Params {
    fn parse(uri: &Uri) -> Self {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match k.to_ascii_lowercase().as_str() {
                "$skiptoken" => p.skip = Some(v.into_owned()),
                "$deltatoken" => p.delta = Some(v.into_owned()),
                "startdatetime" => p.start = Some(v.into_owned()),
                "enddatetime" => p.end = Some(v.into_owned()),
                "$select" => p.select = Some(v.split(',').map(|s| s.trim().to_string()).collect()),
                "$expand" | "$filter" | "$orderby" | "$search" | "$top" => {
                    p.rejected = Some(k.into_owned())
                }
                _ => {}
            }
        }
        p
    }

    fn link(&self) -> LinkKind {
        match (&self.skip, &self.delta) {
            (Some(_), _) => LinkKind::Next,
            (None, Some(t)) if !t.is_empty() => LinkKind::Delta,
            _ => LinkKind::Initial,
        }
    }

    /// The state token the request carries (an empty `$deltatoken` is an initial request).
    fn token(&self) -> Option<&str> {
        self.skip
            .as_deref()
            .or(self.delta.as_deref())
            .filter(|t| !t.is_empty())
    }
}

async fn serve(
    sim: &Arc<SimState>,
    uri: &Uri,
    headers: &HeaderMap,
    segs: &[String],
) -> Answer<Response> {
    let version = segs
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    if version != "v1.0" && version != "beta" {
        return refuse(graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "unknown API version",
        ));
    }
    if segs.len() < 3 || !segs[1].eq_ignore_ascii_case("users") {
        return refuse(bad("Resource not found for the segment."));
    }
    let Some((resource, beta_only)) = route(&segs[3..]) else {
        return refuse(bad(&format!(
            "Resource not found for the segment '{}'.",
            segs.last().map_or("", String::as_str)
        )));
    };
    let caller = authorize(sim, headers, &segs[2], resource.kind())?;
    if beta_only && version == "v1.0" {
        return refuse(count(
            sim,
            caller.endpoint,
            None,
            bad(&format!(
                "Resource not found for the segment '{}'.",
                segs[3]
            )),
        ));
    }
    let settings = sim.settings.read().clone();
    let _slot = enter_mailbox(&caller, &settings)?;
    let params = Params::parse(uri);
    let prefs = prefer(headers);
    let fault = sim.faults.lock().check(&RequestInfo {
        user_id: &caller.user_id,
        upn: &caller.upn,
        endpoint: caller.endpoint,
        link: params.link(),
    });
    if let Some(f) = &fault {
        early_fault(&caller, f, params.token()).await?;
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
    let quirks = sim
        .quirks
        .read()
        .get(&caller.user_id)
        .cloned()
        .unwrap_or_default();
    let is_view = matches!(resource, Resource::CalendarView { .. });
    let mut state = match params.token() {
        Some(t) => linked_state(&caller, &settings, t, &prefs)?,
        None => initial_state(&caller, resource, &params, &prefs, &base, &path)?,
    };
    if state.page == 1 && is_view && quirks.next_link_cycle.is_some() {
        state.cycle = Some(Default::default());
    }
    if fault.as_ref().is_some_and(|f| f.kind == FaultKind::Gone) {
        // Checked after the lookup, so that the 410 names the round's initial request.
        let why = Gone::Reset {
            initial_url: &state.initial_url,
        };
        return refuse(caller.answer(gone(why, settings.gone_location)));
    }
    let (pres, size, page) = build_page(&caller, &settings, &state, &prefs, &quirks)?;
    let entity = state.query.resource.entity();
    let (link_name, link_token) = next_link(sim, &settings, &quirks, &state, &page);
    let token_param = if page.next.is_some() {
        "$skiptoken"
    } else {
        "$deltatoken"
    };
    let link_url = format!("{base}{path}?{token_param}={link_token}");
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
        st.largest_page = st.largest_page.max(page.records.len() as u64);
    }
    if let Some(f) = fault.as_ref().filter(|f| f.kind == FaultKind::Oversized) {
        return Ok(caller.answer(super::transport::oversized(body.into_bytes(), f)));
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
            json_response(Body::from_stream(futures_stream(half)), Some(full))
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
    Ok(caller.answer(resp))
}

/// The bearer check (first, as Graph does it), then the mailbox in the caller's tenant.
fn authorize<'a>(
    sim: &'a SimState,
    headers: &HeaderMap,
    user_key: &str,
    endpoint: &'static str,
) -> Answer<Caller<'a>> {
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
            return refuse(count(sim, endpoint, None, unauthorized(msg)));
        }
    };
    let store = sim.store.read();
    match store.user(user_key) {
        Ok(u) if u.tenant == tenant => Ok(Caller {
            sim,
            endpoint,
            user_id: u.id.clone(),
            upn: u.upn.clone(),
            bearer,
        }),
        _ => {
            drop(store);
            refuse(count(
                sim,
                endpoint,
                None,
                graph_error(
                    StatusCode::NOT_FOUND,
                    "ErrorInvalidUser",
                    &format!("The requested user '{user_key}' is invalid."),
                ),
            ))
        }
    }
}

/// Outlook's per-mailbox limits: a slot held while the request is served, or a 429.
fn enter_mailbox(caller: &Caller<'_>, settings: &SimSettings) -> Answer<crate::faults::Slot> {
    let sim = caller.sim;
    match sim.mailboxes.enter(
        &caller.user_id,
        settings.mailbox_concurrency,
        settings.mailbox_budget,
        Duration::from_secs(settings.budget_window_secs),
    ) {
        Ok((slot, n)) => {
            let mut st = sim.stats.lock();
            let m = st.max_in_flight.entry(caller.user_id.clone()).or_default();
            *m = (*m).max(n);
            Ok(slot)
        }
        Err(Refusal::Concurrency) => {
            let r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            );
            refuse(caller.answer(with_retry_after(r, 1.0)))
        }
        Err(Refusal::Budget(wait)) => {
            let r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                "Application is over its MailboxRequests limit.",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0);
            refuse(caller.answer(with_retry_after(r, secs)))
        }
    }
}

/// Faults answered before the page is built (the `gone` fault resets the token here and
/// answers once the round's initial request is known).
async fn early_fault(caller: &Caller<'_>, f: &FaultSpec, token: Option<&str>) -> Answer<()> {
    let sim = caller.sim;
    match f.kind {
        FaultKind::Gone => {
            if let Some(t) = token {
                sim.tokens.lock().evict(t);
            }
        }
        FaultKind::Throttle => {
            let r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests.",
            );
            return refuse(caller.answer(with_retry_after(r, f.retry_after.unwrap_or(1.0))));
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
            return refuse(caller.answer(r));
        }
        FaultKind::GatewayTimeout => {
            let r = graph_error(
                StatusCode::GATEWAY_TIMEOUT,
                "UnknownError",
                "Gateway Timeout",
            );
            return refuse(caller.answer(r));
        }
        FaultKind::Unauthorized => {
            sim.auth.lock().revoke(Some(&caller.bearer));
            return refuse(caller.answer(unauthorized(
                "Lifetime validation failed, the token is expired.",
            )));
        }
        FaultKind::Slow => {
            tokio::time::sleep(Duration::from_millis(f.delay_ms.unwrap_or(2000))).await;
        }
        // Answered with the page, below.
        FaultKind::Malformed | FaultKind::Truncated => {}
        FaultKind::Redirect => return refuse(caller.answer(super::transport::redirect(f))),
        // Answered with the page, below.
        FaultKind::Oversized => {}
    }
    Ok(())
}

/// The state behind a `$skiptoken` or `$deltatoken`, or the `410` it answers.
fn linked_state(
    caller: &Caller<'_>,
    settings: &SimSettings,
    token: &str,
    prefs: &Prefer,
) -> Answer<TokenState> {
    let sim = caller.sim;
    let policy = settings.gone_location;
    let keep = settings.sync_state_generations;
    let looked_up = sim.tokens.lock().lookup(token, keep);
    let s = match looked_up {
        Lookup::Found(s) => s,
        Lookup::Reset(initial_url) => {
            let why = Gone::Reset {
                initial_url: &initial_url,
            };
            return refuse(caller.answer(gone(why, policy)));
        }
        Lookup::Expired {
            generation,
            highest,
            initial_url,
        } => {
            let why = Gone::Expired {
                message: expired_message(generation, highest, keep),
                initial_url: &initial_url,
            };
            return refuse(caller.answer(gone(why, policy)));
        }
        Lookup::Unknown => return refuse(caller.answer(gone(Gone::Unknown, policy))),
    };
    // Where ids are bound to a calendar view's sync state (a setting; To Do items and
    // calendars have one kind of id each).
    let view = matches!(s.query.resource, Resource::CalendarView { .. });
    if settings.id_type_bound_links && view && s.immutable_ids != prefs.immutable_ids {
        let why = Gone::IdTypeChanged {
            initial_url: &s.initial_url,
        };
        return refuse(caller.answer(gone(why, policy)));
    }
    if s.cursor.is_some() {
        Ok(s)
    } else {
        // A deltaLink starts a new round of the changes since its round.
        Ok(s.next_round(sim.store.read().seq))
    }
}

/// The state of an initial request (an empty `$deltatoken`, as in a 410's `Location`, is one
/// too), after the checks calendar views make.
fn initial_state(
    caller: &Caller<'_>,
    mut resource: Resource,
    params: &Params,
    prefs: &Prefer,
    base: &str,
    path: &Arc<str>,
) -> Answer<TokenState> {
    if let Resource::CalendarView { start, end, .. } = &mut resource {
        if let Some(k) = &params.rejected {
            return refuse(caller.answer(bad(&format!(
                "The query parameter '{k}' is not supported with delta."
            ))));
        }
        if params.select.is_some() {
            return refuse(caller.answer(bad(
                "The query parameter '$select' is not supported with calendarView delta.",
            )));
        }
        let (Some(a), Some(b)) = (
            params.start.as_deref().and_then(parse_bound),
            params.end.as_deref().and_then(parse_bound),
        ) else {
            return refuse(caller.answer(graph_error(
                StatusCode::BAD_REQUEST,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
            )));
        };
        *start = a;
        *end = b;
    }
    let mut initial_url = format!("{base}{path}?");
    if let (Some(a), Some(b)) = (&params.start, &params.end) {
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
    let sim = caller.sim;
    let query = Query {
        user: caller.user_id.clone(),
        resource,
        select: params.select.clone(),
    };
    let upto = sim.store.read().seq;
    let mut state = TokenState::initial(Arc::new(query), path.clone(), initial_url.into(), upto);
    state.chain = sim.tokens.lock().new_chain();
    state.immutable_ids = prefs.immutable_ids;
    Ok(state)
}

/// The page `state` fetches, how it is presented, and the page size applied.
fn build_page(
    caller: &Caller<'_>,
    settings: &SimSettings,
    state: &TokenState,
    prefs: &Prefer,
    quirks: &MailboxQuirks,
) -> Answer<(Presentation, usize, delta::Page)> {
    let view = matches!(state.query.resource, Resource::CalendarView { .. });
    let tz = match prefs.timezone.as_deref().map(parse_zone).transpose() {
        Ok(z) => z.flatten(),
        Err(e) => return refuse(caller.answer(bad(&e.to_string()))),
    };
    let pres = Presentation {
        tz: if view { tz } else { None },
        select: state.query.select.clone(),
        immutable_ids: prefs.immutable_ids,
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
        whole_items: view && quirks.whole_series_pages,
    };
    let store = caller.sim.store.read();
    match delta::page(&store, state, &params) {
        Ok(p) => Ok((pres, size, p)),
        Err(SimError::NotFound(what)) => {
            drop(store);
            refuse(caller.answer(graph_error(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                &format!("The specified object was not found in the store: {what}."),
            )))
        }
        Err(e) => {
            drop(store);
            refuse(caller.answer(bad(&e.to_string())))
        }
    }
}

/// The link a page ends with: a nextLink (which a looping round may bend back) or, at the
/// end of the round, a deltaLink for the changes after it.
fn next_link(
    sim: &SimState,
    settings: &SimSettings,
    quirks: &MailboxQuirks,
    state: &TokenState,
    page: &delta::Page,
) -> (&'static str, String) {
    let capacity = settings.token_cache_capacity;
    let mut tokens = sim.tokens.lock();
    match &page.next {
        Some(cursor) => {
            let next = TokenState {
                cursor: Some(cursor.clone()),
                replay: page.replay.clone().or(state.replay.clone()),
                page: state.page + 1,
                ..state.clone()
            };
            let (token, closed) = match (&state.cycle, &quirks.next_link_cycle) {
                (Some(links), Some(cycle)) => cycle_link(&mut tokens, links, cycle, next, capacity),
                _ => (tokens.issue(next, capacity), false),
            };
            drop(tokens);
            if closed {
                loop_closed(&mut sim.quirks.write(), &state.query.user);
            }
            ("@odata.nextLink", token)
        }
        None => {
            let next = TokenState {
                since: state.upto,
                cursor: None,
                replay: None,
                initial: false,
                cycle: None,
                ..state.clone()
            };
            ("@odata.deltaLink", tokens.issue(next, capacity))
        }
    }
}
