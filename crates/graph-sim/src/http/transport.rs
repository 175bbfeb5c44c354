//! Faults of the transport rather than of Graph's logic, on delta requests and on the token
//! endpoint: a redirect (`redirect`) and a body too large to hold (`oversized`); plus the
//! token endpoint's share of the ordinary faults (rules naming `endpoint: "token"`).
//!
//! Graph never redirects a delta request and the identity platform answers a token request
//! itself, but what stands in front of them can: a TLS-terminating proxy sending `http://`
//! to `https://` (`301`/`308`), a captive portal or a misrouted private endpoint. A `307` or
//! `308` keeps the method and body (RFC 9110 §15.4.8, §15.4.9), so a client that follows it
//! from the token endpoint posts its client secret again, to wherever `Location` points;
//! `reqwest` follows up to 10 redirects unless told not to (its `redirect::Policy` docs).
//! Bodies: a delta page is bounded by `odata.maxpagesize` only in items, and series pages
//! can exceed it (NOTES.md, msgraph-sdk-dotnet issues 3070, 3082); a proxy's error page
//! or a runaway answer has no bound at all.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::respond::with_retry_after;
use crate::faults::{FaultKind, FaultSpec, LinkKind, RequestInfo, TOKEN_ENDPOINT};
use crate::SimState;

/// Where `redirect` points when the rule does not say.
pub const DEFAULT_LOCATION: &str = "https://redirect.invalid/";
/// An `oversized` body when the rule does not say: 256 MiB.
pub const DEFAULT_BODY_BYTES: u64 = 256 << 20;

/// `307 Temporary Redirect` to the rule's `location`.
pub fn redirect(f: &FaultSpec) -> Response {
    let mut r = (StatusCode::TEMPORARY_REDIRECT, "").into_response();
    let to = f.location.as_deref().unwrap_or(DEFAULT_LOCATION);
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert("location", v);
    }
    r
}

/// `200` with `body`, then whitespace up to the rule's `body_bytes` in all, streamed in
/// 64 KiB chunks without a `Content-Length` (nothing of that size is ever held here).
pub fn oversized(body: Vec<u8>, f: &FaultSpec) -> Response {
    const CHUNK: usize = 64 * 1024;
    let total = f.body_bytes.unwrap_or(DEFAULT_BODY_BYTES);
    let padding = total.saturating_sub(body.len() as u64);
    let spaces = Bytes::from(vec![b' '; CHUNK]);
    let chunks = (0..padding.div_ceil(CHUNK as u64)).map(move |i| {
        let left = padding - i * CHUNK as u64;
        Ok::<_, std::io::Error>(spaces.slice(..left.min(CHUNK as u64) as usize))
    });
    let stream = futures_util::stream::iter(std::iter::once(Ok(Bytes::from(body))).chain(chunks));
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// The fault rule a token request fires, if any (only rules naming the token endpoint).
pub fn token_fault(sim: &SimState) -> Option<FaultSpec> {
    sim.faults.lock().check(&RequestInfo {
        user_id: "",
        upn: "",
        endpoint: TOKEN_ENDPOINT,
        link: LinkKind::Initial,
    })
}

/// A token request's answer when its fault replaces the grant (`oversized` pads a real
/// grant instead, see [`oversized`]; `slow`, `gone`, `unauthorized` and `truncated` do not
/// apply to the token endpoint).
pub fn token_fault_answer(f: &FaultSpec) -> Option<Response> {
    let aad = |status: StatusCode, error: &str, description: &str| {
        let body = serde_json::json!({"error": error, "error_description": description});
        (status, axum::Json(body)).into_response()
    };
    Some(match f.kind {
        FaultKind::Redirect => redirect(f),
        FaultKind::Throttle => with_retry_after(
            aad(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "Too many requests; retry later.",
            ),
            f.retry_after.unwrap_or(1.0),
        ),
        FaultKind::Unavailable => aad(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The service is temporarily unavailable; retry later.",
        ),
        FaultKind::GatewayTimeout => aad(
            StatusCode::GATEWAY_TIMEOUT,
            "temporarily_unavailable",
            "Gateway Timeout",
        ),
        FaultKind::Malformed => {
            let mut r = Response::new(Body::from("<html><body>Service unavailable</body></html>"));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/html"));
            r
        }
        _ => return None,
    })
}
