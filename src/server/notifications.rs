//! `POST /notifications` and `POST /notifications/lifecycle`: where Graph posts change
//! notifications and lifecycle events (`notifications.public_url`, behind the user's
//! ingress). Open without the REST API's token: each notification carries the
//! `clientState` secret instead, checked by the worker's inbox (`worker/notifications.rs`).
//!
//! - Graph's validation handshake: `POST …?validationToken=…` is answered `200` with the
//!   token, `text/plain`, at once (Graph waits 10 s at most).
//! - A notification collection is handed to the worker and answered `202` at once (Graph
//!   expects an answer within 3 s); the rounds it triggers run afterwards.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::worker::InboxError;

use super::errors::error;
use super::ServerState;

type S = State<Arc<ServerState>>;

/// Longest validation token echoed (Graph's are a few hundred characters).
const MAX_TOKEN: usize = 4096;

pub async fn change(State(s): S, RawQuery(q): RawQuery, body: Bytes) -> Response {
    receive(&s, q.as_deref(), &body, false)
}

pub async fn lifecycle(State(s): S, RawQuery(q): RawQuery, body: Bytes) -> Response {
    receive(&s, q.as_deref(), &body, true)
}

fn receive(s: &ServerState, query: Option<&str>, body: &[u8], lifecycle: bool) -> Response {
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
    match inbox.receive(body, lifecycle) {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e @ InboxError::Closed) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ InboxError::Malformed(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
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
