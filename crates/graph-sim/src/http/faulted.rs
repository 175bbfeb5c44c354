//! What mailbox and directory requests share once authenticated: the caller, its counted
//! answers, and the fault rules (those answered before the body is built, and those that
//! spoil the body).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::count;
use super::respond::{futures_stream, graph_error, json_response, unauthorized, with_retry_after};
use crate::faults::{FaultKind, FaultSpec};
use crate::SimState;

/// A step's result: on with a value, or the request answered already (boxed: a `Response`
/// is large and most steps go on).
pub(super) type Answer<T> = Result<T, Box<Response>>;

pub(super) fn refuse<T>(r: Response) -> Answer<T> {
    Err(Box::new(r))
}

pub(super) fn bad(m: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", m)
}

/// Who asks, for what: known once the request is authenticated.
pub(super) struct Caller<'a> {
    pub sim: &'a SimState,
    pub endpoint: &'static str,
    /// The mailbox's user id; empty for directory requests.
    pub user_id: String,
    pub upn: String,
    pub bearer: String,
}

impl Caller<'_> {
    /// Counts an answer to this caller and passes it on.
    pub fn answer(&self, r: Response) -> Response {
        let user = Some(self.user_id.as_str()).filter(|u| !u.is_empty());
        count(self.sim, self.endpoint, user, r)
    }
}

/// Faults answered before the page is built (the `gone` fault resets the token here and
/// answers once the round's initial request is known).
pub(super) async fn early_fault(
    caller: &Caller<'_>,
    f: &FaultSpec,
    token: Option<&str>,
) -> Answer<()> {
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

/// A JSON body as sent, or as a body-spoiling fault sends it; `applied` is the
/// `Preference-Applied` value of a plain answer.
pub(super) fn deliver(
    caller: &Caller<'_>,
    fault: Option<&FaultSpec>,
    body: String,
    applied: Option<HeaderValue>,
) -> Response {
    let resp = match fault.map(|f| f.kind) {
        Some(FaultKind::Oversized) => {
            let f = fault.expect("matched above");
            super::transport::oversized(body.into_bytes(), f)
        }
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
            if let Some(v) = applied {
                r.headers_mut().insert("preference-applied", v);
            }
            r
        }
    };
    caller.answer(resp)
}
