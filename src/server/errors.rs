//! Every failure the server answers is Kafka Connect's `{"error_code": <status>, "message":
//! "…"}`: the handlers' own ([`error`]), request bodies that are not what an endpoint takes
//! ([`json_body`]), and whatever axum answers by itself (its extractors' plain-text
//! rejections, `405` with an empty body), rewritten by [`json_errors`].

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The longest plain-text error body [`json_errors`] keeps as the message (axum's own are
/// one line).
const MAX_MESSAGE: usize = 4096;

/// A Connect error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error_code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

/// A request body that must be JSON, as an endpoint reads it: `415` when the request does not
/// say it carries JSON (no or another `Content-Type`), `400` when it is not valid JSON (an
/// empty body included); either message names what the endpoint `expects`. The refusal is
/// the status and message of an [`error`].
pub fn json_body(
    body: Result<Json<Value>, JsonRejection>,
    expects: &str,
) -> Result<Value, (StatusCode, String)> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::MissingJsonContentType(_)) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a JSON body (Content-Type: application/json): {expects}"),
        )),
        Err(e) => Err((e.status(), format!("{}; expected {expects}", e.body_text()))),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Middleware: an error answer that is not JSON yet (axum's rejections in plain text, its
/// `405` with no body) becomes a JSON error of the same status, with the text (or the
/// status's reason) as the message; `Allow` and `WWW-Authenticate` are kept.
pub async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(res.headers()) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let message = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let mut out = error(status, message);
    for name in [header::ALLOW, header::WWW_AUTHENTICATE, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
