//! Answers as Graph shapes them: error bodies, `410 Gone` in its flavours, and delta pages.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::auth::BearerError;
use crate::delta::Record;
use crate::present::Presentation;
use crate::GoneLocation;

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

pub fn with_retry_after(mut r: Response, secs: f64) -> Response {
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

pub fn unauthorized(msg: &str) -> Response {
    let mut r = graph_error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", msg);
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\""),
    );
    r
}

/// A `401` for a bearer token that is missing, unknown or expired.
pub fn bearer_error(e: BearerError) -> Response {
    unauthorized(match e {
        BearerError::Missing => "Access token is empty.",
        BearerError::Unknown => "Invalid access token.",
        BearerError::Expired => "Lifetime validation failed, the token is expired.",
    })
}

/// Why a link answers `410 Gone`.
pub enum Gone<'a> {
    /// A synchronization reset: the `gone` fault or `/_sim/evict`.
    Reset { initial_url: &'a str },
    /// The link's generation is older than the ones its sync state keeps.
    Expired {
        message: String,
        initial_url: &'a str,
    },
    /// A calendar view's link sent with another `Prefer: IdType` than its chain started with,
    /// where `SimSettings::id_type_bound_links` says so: "Handle SyncStateInvalid error when
    /// ImmutableIDs are enabled after initial backup ... if a delta URL constructed without
    /// the immutable ID header is used" (alcionai/corso PR 3176).
    IdTypeChanged { initial_url: &'a str },
    /// A token never issued, or dropped from the token cache: nothing is known about it.
    Unknown,
}

/// A `410` with the code Graph sends for it and, as `policy` says, a `Location`.
pub fn gone(why: Gone<'_>, policy: GoneLocation) -> Response {
    let (code, message, location, documented) = match why {
        Gone::Reset { initial_url } => (
            "SyncStateNotFound",
            "The sync state generation is not found. Please do a full resync.".to_string(),
            Some(initial_url),
            true,
        ),
        Gone::Expired {
            message,
            initial_url,
        } => ("SyncStateNotFound", message, Some(initial_url), false),
        Gone::IdTypeChanged { initial_url } => (
            "SyncStateInvalid",
            "The sync state is not valid for this request's IdType preference. Please do a full resync."
                .to_string(),
            Some(initial_url),
            false,
        ),
        Gone::Unknown => (
            "SyncStateNotFound",
            "The sync state generation is not found.".to_string(),
            None,
            false,
        ),
    };
    let send = match policy {
        GoneLocation::Documented => documented,
        GoneLocation::Always => true,
        GoneLocation::Never => false,
    };
    let mut r = graph_error(StatusCode::GONE, code, &message);
    if let Some(l) = location
        .filter(|_| send)
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        r.headers_mut().insert("location", l);
    }
    r
}

/// Half a body, then (after it had time to reach the client) a cut connection.
pub fn futures_stream(
    half: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(half), |state| async move {
        match state {
            Some(h) => Some((Ok(h), None)),
            None => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let cut = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated truncation",
                );
                Some((Err(cut), None))
            }
        }
    })
}

pub fn json_response(body: Body, content_length: Option<usize>) -> Response {
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

/// A delta page's body: `@odata.context`, `value` and the one link.
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
            Record::Upsert(j, _) => j.len() + 1,
            Record::Removed(id, _) => id.len() + 80,
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
            Record::Upsert(j, alias) => out.push_str(&pres.apply(j, alias.as_deref())),
            Record::Removed(id, alias) => {
                out.push_str("{\"@odata.type\":\"#microsoft.graph.");
                out.push_str(entity);
                out.push_str("\",\"id\":");
                let id = pres.id(id, alias.as_deref());
                out.push_str(&serde_json::Value::from(&*id).to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_follows_the_policy() {
        let has = |why, policy| gone(why, policy).headers().contains_key("location");
        let url = "http://x/v1.0/users/u/todo/lists/delta?$deltatoken=";
        let expired = || Gone::Expired {
            message: "m".into(),
            initial_url: url,
        };
        assert!(has(
            Gone::Reset { initial_url: url },
            GoneLocation::Documented
        ));
        assert!(!has(expired(), GoneLocation::Documented));
        assert!(has(expired(), GoneLocation::Always));
        assert!(!has(Gone::Reset { initial_url: url }, GoneLocation::Never));
        assert!(!has(Gone::Unknown, GoneLocation::Always), "nothing to name");
        assert_eq!(
            gone(
                Gone::IdTypeChanged { initial_url: url },
                GoneLocation::Documented
            )
            .status(),
            StatusCode::GONE
        );
    }
}
