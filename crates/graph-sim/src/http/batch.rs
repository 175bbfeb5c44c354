//! `POST /{version}/$batch`: JSON batching (NOTES.md, JSON batching).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::respond::graph_error;
use super::{dispatch, segments};
use crate::SimState;

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
pub(super) async fn batch(
    sim: &Arc<SimState>,
    version: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
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
    let segs = segments(uri.path());
    dispatch(sim, &uri, &headers, &segs).await
}
