//! What can go wrong talking to Graph, with the error behind each failure kept as its
//! `source`.
//!
//! Display texts name the cause as well (logs and partition states print `%e` only), but
//! never a link (delta links carry state tokens: reqwest errors are stored `without_url`),
//! an access token or a secret.

use std::error::Error as StdError;
use std::fmt;

use reqwest::StatusCode;

/// What can go wrong talking to Graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The state token is gone (`410`): the round must restart.
    #[error("sync state gone ({code}); resync required")]
    Gone {
        code: String,
        /// The initial request Graph suggests restarting from.
        location: Option<String>,
    },
    /// A `4xx` other than 401/410/429: this partition's request is wrong (bad user, no access…).
    #[error("Graph answered {status} {code}: {message}")]
    Client {
        status: u16,
        code: String,
        message: String,
    },
    /// Still throttled, failing or malformed after every retry.
    #[error("giving up after {attempts} attempts: {last}")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        last: Transient,
    },
    /// The token endpoint refused us (bad credentials, unknown tenant…).
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// A link or URL that cannot be used.
    #[error("bad URL: {0}")]
    Url(String),
    /// The configured Graph host is not a URL.
    #[error("bad URL: {host}: {source}")]
    Host {
        host: String,
        #[source]
        source: url::ParseError,
    },
    /// The client's request slots are closed: it is shutting down.
    #[error("client is shutting down")]
    Closed(#[from] tokio::sync::AcquireError),
    /// A `3xx`: Graph never redirects delta or `$batch` requests, so this is a
    /// `graph.base_url` behind something else (an http→https redirect, a login proxy), which
    /// waiting does not cure. Not followed: the bearer token stays here. Only the target's
    /// origin is named (the rest may carry a state token).
    #[error("Graph answered {status} redirecting to {to}: redirects are not followed (check graph.base_url)")]
    Redirected { status: u16, to: String },
    /// The partition's rounds keep looping (a repeated nextLink or page, or more than
    /// `graph.max_pages_per_round` pages), even after restarting from scratch: following on
    /// would burn the mailbox's request budget forever (`guard.rs`). The reason names the
    /// loop and what was tried, never a link.
    #[error("paging loop: {0}")]
    PagingLoop(String),
}

impl GraphError {
    /// Errors that mark the partition failed (rather than being retried later).
    pub fn is_partition_fault(&self) -> bool {
        matches!(
            self,
            GraphError::Client { .. }
                | GraphError::Redirected { .. }
                | GraphError::Url(_)
                | GraphError::Host { .. }
                | GraphError::Closed(_)
                | GraphError::PagingLoop(_)
        )
    }

    /// Errors that say Graph itself is not answering (rather than one partition's request
    /// being wrong): no token, or failing past every retry (`5xx`, `429`, no connection).
    pub fn is_service_failure(&self) -> bool {
        matches!(
            self,
            GraphError::Auth(_) | GraphError::RetriesExhausted { .. }
        )
    }
}

/// Why one attempt at a page failed in a way worth retrying (the last one is kept when the
/// retries run out).
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    /// No answer: connection refused or cut, timeout…
    #[error("request failed: {}", Chain(.0))]
    Request(#[source] reqwest::Error),
    /// The answer's body did not arrive whole.
    #[error("body cut short: {}", Chain(.0))]
    Body(#[source] reqwest::Error),
    /// `429`, `503`, `504` or another `5xx`, with Graph's error code.
    #[error("{status} {code}")]
    Status { status: StatusCode, code: String },
    /// A `2xx` whose body is not a delta page.
    #[error(transparent)]
    Malformed(#[from] MalformedPage),
    /// No access token (the token endpoint may be throttled or down too).
    #[error("authentication failed: {0}")]
    Token(#[source] AuthError),
    /// The answer was larger than `graph.max_response_bytes`: read no further.
    #[error("answer larger than graph.max_response_bytes ({limit} bytes): not read")]
    TooLarge { limit: u64 },
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token endpoint unreachable: {}", Chain(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("reading token answer: {}", Chain(.0))]
    Read(#[source] reqwest::Error),
    /// The endpoint's own `error` and `error_description` (they never echo the secret).
    #[error("token endpoint answered {status}: {error} {description}")]
    Refused {
        status: StatusCode,
        error: String,
        description: String,
    },
    /// A `2xx` answer without a usable token. (serde's text names a field or a type, and
    /// the value only of a field of the wrong type, never a well-formed `access_token`.)
    #[error("token answer not understood: {0}")]
    Answer(#[source] serde_json::Error),
    /// The certificate's base64 body does not decode.
    #[error("certificate is not a PEM certificate")]
    Certificate(#[source] base64::DecodeError),
    /// The private key cannot be read (the text never quotes the key).
    #[error("private key is not an RSA PEM key")]
    Key(#[source] jsonwebtoken::errors::Error),
    #[error("signing the client assertion: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Graph refused a freshly issued token: consent revoked, missing permission…
    #[error("Graph answered 401 again with a fresh token")]
    FreshTokenRefused,
    /// A `3xx` from the token endpoint: not followed, since a `307`/`308` would post the
    /// credential again to wherever it points (only its origin is named).
    #[error("token endpoint answered {status} redirecting to {to}: redirects are not followed (check graph.authority_url)")]
    Redirected { status: StatusCode, to: String },
    /// The answer was larger than `graph.max_response_bytes`.
    #[error("token answer larger than graph.max_response_bytes ({limit} bytes): not read")]
    TooLarge { limit: u64 },
    /// No answer within `graph.request_timeout`.
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The fetch was cut short (the worker is stopping).
    #[error("token fetch interrupted")]
    Interrupted,
    /// The outcome of a fetch shared by every caller that waited for it.
    #[error(transparent)]
    Shared(std::sync::Arc<AuthError>),
}

/// A page that cannot be used (retried like a transport error).
#[derive(Debug, thiserror::Error)]
pub enum MalformedPage {
    #[error("malformed delta page: {0}")]
    Utf8(#[source] std::str::Utf8Error),
    #[error("malformed delta page: {0}")]
    Json(#[source] serde_json::Error),
    #[error("malformed delta page: expected exactly one of @odata.nextLink and @odata.deltaLink")]
    Links,
    /// A listing page (group members) with a deltaLink or an `@removed` item.
    #[error("malformed listing page: a listing has no @odata.deltaLink and no @removed items")]
    Listing,
    #[error("malformed delta page: item without an id: {0}")]
    Item(#[source] serde_json::Error),
    /// Another answer (a directory object, a listing) not in the shape asked for.
    #[error("malformed answer: {0}")]
    Answer(#[source] serde_json::Error),
}

/// An error and its sources, `: `-separated: reqwest's own text ("error sending request")
/// says little, the cause is in its sources.
struct Chain<'a>(&'a reqwest::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_as_sources_and_named_in_the_text() {
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = GraphError::RetriesExhausted {
            attempts: 3,
            last: Transient::Malformed(MalformedPage::Json(json)),
        };
        assert!(e
            .to_string()
            .starts_with("giving up after 3 attempts: malformed delta page: EOF"));
        let last = e.source().expect("the last attempt's error");
        assert!(last.is::<Transient>());
        // `transparent`: the page's own source (serde's error) comes next.
        assert!(last.source().is_some_and(|s| s.is::<serde_json::Error>()));
        let auth = GraphError::from(AuthError::FreshTokenRefused);
        assert_eq!(
            auth.to_string(),
            "authentication failed: Graph answered 401 again with a fresh token"
        );
        assert!(auth.source().is_some_and(|s| s.is::<AuthError>()));
        assert!(!auth.is_partition_fault());
        let host = url::Url::parse("not a host").unwrap_err();
        let e = GraphError::Host {
            host: "not a host".into(),
            source: host,
        };
        assert!(e.is_partition_fault());
        assert!(e.source().is_some_and(|s| s.is::<url::ParseError>()));
    }
}
