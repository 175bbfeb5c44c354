//! `POST /notifications` and `POST /notifications/lifecycle`: where Graph posts change
//! notifications and lifecycle events (`notifications.public_url`, behind the user's
//! ingress). Open without the REST API's token: each notification carries the
//! `clientState` secret instead, checked by the worker's inbox (`worker/notifications.rs`).
//!
//! - Graph's validation handshake: `POST …?validationToken=…` is answered `200` with the
//!   token, `text/plain`, at once (Graph waits 10 s at most).
//! - A notification collection is handed to the worker and answered `202` at once (Graph
//!   expects an answer within 3 s); the rounds it triggers run afterwards.
//! - The ingress in front of the workers picks any of them: notifications of another
//!   worker's subscriptions are forwarded, in the background, to every other worker
//!   advertised in the control topic (the same path, marked [`FORWARDED`] so that nobody
//!   forwards them again); each keeps those of its own partitions.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::graph::subscriptions::Notice;
use crate::metrics;
use crate::worker::InboxError;

use super::errors::error;
use super::ServerState;

type S = State<Arc<ServerState>>;

/// Longest validation token echoed (Graph's are a few hundred characters).
const MAX_TOKEN: usize = 4096;

/// The header a worker forwarding notifications to another sets.
pub const FORWARDED: &str = "x-graph-cdc-forwarded";

pub async fn change(
    State(s): S,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receive(&s, q.as_deref(), &headers, &body, false)
}

pub async fn lifecycle(
    State(s): S,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receive(&s, q.as_deref(), &headers, &body, true)
}

fn receive(
    s: &Arc<ServerState>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    lifecycle: bool,
) -> Response {
    let inbox = &s.status.notifications;
    if let Some(token) = validation_token(query) {
        if !inbox.is_open() {
            return error(
                StatusCode::NOT_FOUND,
                "change notifications are not enabled",
            );
        }
        if token.len() > MAX_TOKEN {
            return error(StatusCode::BAD_REQUEST, "validation token too long");
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            token,
        )
            .into_response();
    }
    let forwarded = headers.contains_key(FORWARDED);
    match inbox.receive(body, lifecycle, forwarded) {
        Ok(r) => {
            if !r.foreign.is_empty() {
                tokio::spawn(forward(s.clone(), r.foreign, lifecycle));
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(e @ InboxError::Closed) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ InboxError::Malformed(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Hands `notices` (of other workers' subscriptions) to every other advertised worker.
async fn forward(s: Arc<ServerState>, notices: Vec<Notice>, lifecycle: bool) {
    let path = if lifecycle {
        "/notifications/lifecycle"
    } else {
        "/notifications"
    };
    let n = notices.len();
    let body = serde_json::json!({ "value": notices }).to_string();
    let peers = super::peers::others(&s);
    let sends = peers.iter().map(|(id, url)| {
        let req = s
            .peers
            .post(format!("{url}{path}"))
            .header(FORWARDED, &s.worker_id)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        async move {
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => "forwarded",
                Ok(_) | Err(_) => "forward_failed",
            };
            metrics::notifications_forwarded(id, n, outcome);
        }
    });
    futures_util::future::join_all(sends).await;
    if peers.is_empty() {
        metrics::notifications_forwarded("", n, "no_other_worker");
    }
}

/// The `validationToken` query parameter, decoded (Graph sends it URL-encoded and expects
/// it back as plain text).
fn validation_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "validationToken")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_token_is_decoded() {
        assert_eq!(
            validation_token(Some("validationToken=Validation%3a+Testing%20client")).as_deref(),
            Some("Validation: Testing client")
        );
        assert_eq!(validation_token(Some("other=1")), None);
        assert_eq!(validation_token(None), None);
    }
}
