//! One delta request, in the order Graph handles it: bearer check, permission, the mailbox,
//! mailbox limits, fault rules, the sync state behind the link, the page, and the link to
//! what follows.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;

use super::faulted::{bad, deliver, early_fault, refuse, Answer, Caller};
use super::respond::{bearer_error, gone, graph_error, render_page, with_retry_after, Gone};
use super::{count, parse_bound, prefer, route, Prefer};
use crate::delta::{self, Lookup, PageParams, Query, Resource, TokenState};
use crate::faults::{FaultKind, LinkKind, Refusal, RequestInfo};
use crate::permissions::Need;
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
    let base = super::base_url(&settings, headers);
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
    let applied = prefs
        .page_size
        .and_then(|_| HeaderValue::from_str(&format!("odata.maxpagesize={size}")).ok());
    Ok(deliver(&caller, fault.as_ref(), body, applied))
}

/// The bearer check (first, as Graph does it), the token's permission, then the mailbox in
/// the caller's tenant.
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
    let grant = match sim.auth.lock().check_grant(authz) {
        Ok(g) => g,
        Err(e) => return refuse(count(sim, endpoint, None, bearer_error(e))),
    };
    let need = Need::for_endpoint(endpoint);
    if !need.granted(&grant.roles) {
        let todo = sim.settings.read().todo_denied;
        return refuse(count(sim, endpoint, None, need.denied(todo)));
    }
    let store = sim.store.read();
    match store.user(user_key) {
        Ok(u) if u.tenant == grant.tenant && !u.mailbox => {
            drop(store);
            refuse(count(sim, endpoint, None, mailbox_not_enabled()))
        }
        Ok(u) if u.tenant == grant.tenant => Ok(Caller {
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

/// A user without an Exchange Online mailbox (no license): "404 … MailboxNotEnabledForRESTAPI"
/// (microsoft-graph-docs-contrib issue 6519; O365/python-o365 issue 588), "The mailbox is
/// either inactive, soft-deleted, or is hosted on-premise." (a user with a Teams-only license,
/// MicrosoftDocs/azure-docs issue 85666; microsoftgraph/msgraph-sdk-javascript issue 1756;
/// iyear/E5SubBot issue 39). To Do lives in the same mailbox; no To Do-specific answer is
/// documented, so its endpoints answer the same.
fn mailbox_not_enabled() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "MailboxNotEnabledForRESTAPI",
        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
    )
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
