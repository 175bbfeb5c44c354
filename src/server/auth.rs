//! The REST API's token (`server.auth_token`): with one set, every endpoint but the probes,
//! the scrape and Graph's notifications (`/healthz`, `/readyz`, `/metrics`,
//! `/notifications`) needs it, reads included (the
//! configuration and the offsets name every tracked mailbox).
//!
//! It is accepted as `Authorization: Bearer <token>` (the scheme in any case), or as the
//! password of `Authorization: Basic` (any user name), since Kafka Connect's own REST
//! security is HTTP Basic and that is what its client libraries send. Tokens are compared
//! by their SHA-256 digests in constant time, so neither the time taken nor the length
//! tells anything about the token; neither is ever logged or echoed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::errors::error;
use super::ServerState;

/// The endpoints open without the token: liveness and readiness probes, the Prometheus
/// scrape, and Graph's change notifications (Graph cannot send the token: a notification
/// proves itself with its `clientState` instead, see `notifications.rs`).
pub const OPEN_PATHS: [&str; 5] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/notifications",
    "/notifications/lifecycle",
];

/// What a request presented.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// No `Authorization` header, or one of a scheme not taken here.
    Nothing,
    /// A credential (the bearer token, or the Basic password).
    Credential(Vec<u8>),
}

/// Reads the `Authorization` header: `Bearer <token>` or `Basic base64(user:token)`, the
/// scheme matched case-insensitively.
fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Presented::Nothing;
    };
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Credential(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .unwrap_or_default();
        return match decoded.iter().position(|&b| b == b':') {
            Some(i) => Presented::Credential(decoded[i + 1..].to_vec()),
            None => Presented::Credential(Vec::new()),
        };
    }
    Presented::Nothing
}

/// Whether `given` is `token`, in constant time (over digests of equal length).
fn matches(given: &[u8], token: &str) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(token.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// `401` with `WWW-Authenticate: Bearer` (RFC 6750: `error="invalid_token"` when one was
/// presented).
fn unauthorized(presented_one: bool) -> Response {
    let (challenge, message) = if presented_one {
        (
            r#"Bearer realm="graph-cdc", error="invalid_token""#,
            "the token presented is not valid",
        )
    } else {
        (
            r#"Bearer realm="graph-cdc""#,
            "authentication required: Authorization: Bearer <server.auth_token>",
        )
    };
    let mut res = error(StatusCode::UNAUTHORIZED, message);
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    res
}

/// Middleware: every request but [`OPEN_PATHS`] needs the token, when one is set.
pub async fn require_token(
    State(s): State<Arc<ServerState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &s.auth_token else {
        return next.run(req).await;
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match presented(req.headers()) {
        Presented::Credential(given) if matches(&given, token) => next.run(req).await,
        Presented::Credential(_) => {
            tracing::debug!(method = %req.method(), path = %req.uri().path(), "REST call refused: invalid token");
            unauthorized(true)
        }
        Presented::Nothing => {
            tracing::debug!(method = %req.method(), path = %req.uri().path(), "REST call refused: no token");
            unauthorized(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn cred(s: &str) -> Presented {
        Presented::Credential(s.as_bytes().to_vec())
    }

    #[test]
    fn bearer_in_any_case_and_basic_password() {
        assert_eq!(presented(&HeaderMap::new()), Presented::Nothing);
        assert_eq!(presented(&with("Bearer tok")), cred("tok"));
        assert_eq!(presented(&with("bearer tok")), cred("tok"));
        assert_eq!(presented(&with("BEARER   tok  ")), cred("tok"));
        assert_eq!(presented(&with("Bearer")), cred(""));
        // `user:tok` and `:tok`; a password may hold colons.
        assert_eq!(presented(&with("Basic dXNlcjp0b2s=")), cred("tok"));
        assert_eq!(presented(&with("basic OnRvaw==")), cred("tok"));
        assert_eq!(presented(&with("Basic dTphOmI=")), cred("a:b"));
        assert_eq!(presented(&with("Basic !!!")), cred(""));
        assert_eq!(presented(&with("Digest x")), Presented::Nothing);
        assert_eq!(presented(&with("Bearertok")), Presented::Nothing);
    }

    #[test]
    fn tokens_match_exactly() {
        assert!(matches(b"s3cret", "s3cret"));
        assert!(!matches(b"s3cre", "s3cret"));
        assert!(!matches(b"s3cret ", "s3cret"));
        assert!(!matches(b"", "s3cret"));
        assert!(!matches(b"S3CRET", "s3cret"));
    }

    #[test]
    fn a_401_challenges_for_a_bearer_token() {
        let r = unauthorized(false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let h = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(h.starts_with("Bearer "), "{h}");
        let r = unauthorized(true);
        let h = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(h.contains("invalid_token"), "{h}");
    }
}
