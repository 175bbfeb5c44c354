//! The Graph HTTP client: one GET of a delta page (or a subscription's request), with Graph's
//! throttling rules.
//!
//! - `429`, `503`, `504` (and other `5xx`, timeouts, cut connections, malformed bodies) are
//!   retried: after `Retry-After` when given (fractional seconds allowed), else exponential
//!   backoff with jitter, up to `max_retries`.
//! - `401` renews the token once and retries; a `401` to a request sent with an older token
//!   than the current one (another request renewed it meanwhile) just retries with the
//!   current one.
//! - A `3xx` is not followed and fails the partition (see [`GraphError::Redirected`]); a
//!   body over `max_response_bytes` is not read and retried (see `http.rs`).
//! - `410` is returned to the reader (it decides how to resync); other `4xx` are the
//!   partition's fault.
//! - At most `max_concurrency_per_mailbox` requests per user and `max_concurrency` overall
//!   are in flight, the items of a JSON batch included (see `batch.rs`); the permits are
//!   not held while waiting to retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::Semaphore;

use super::auth::{AccessToken, TokenProvider};
use super::batch::{Batcher, Mailbox};
use super::delta::{parse_listing, parse_page, DeltaPage};
use super::error::{AuthError, GraphError, MalformedPage, Transient};
use super::http::{location_origin, read_capped};
use super::options::{prefer, ClientOptions};
use crate::metrics;
use crate::source::PartitionKind;

/// The metrics label of requests no partition kind makes (user lookups, group listings).
pub const DIRECTORY: &str = "directory";

/// Shared by every partition reader of a worker.
pub struct GraphClient {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    opts: ClientOptions,
    global: Arc<Semaphore>,
    /// Each mailbox's permits, while someone holds them (see [`Mailboxes`]).
    mailboxes: Mutex<Mailboxes>,
    batcher: Option<Batcher>,
}

/// Mailboxes' request permits, by lower-cased user. An entry only the map holds has no
/// request in flight: such entries are dropped whenever the map has doubled since the last
/// sweep, so a worker polling 25,000 mailboxes a minute keeps those in flight, not all of
/// them (issue 15).
#[derive(Default)]
struct Mailboxes {
    map: HashMap<String, Arc<Semaphore>>,
    /// The size that triggers the next sweep.
    sweep_at: usize,
}

impl Mailboxes {
    fn get(&mut self, user: &str, permits: usize) -> Arc<Semaphore> {
        if let Some(s) = self.map.get(user) {
            return s.clone();
        }
        if self.map.len() >= self.sweep_at {
            // Nobody else holds it: no permit is taken, a fresh one is the same.
            self.map.retain(|_, s| Arc::strong_count(s) > 1);
            self.map.shrink_to_fit();
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let s = Arc::new(Semaphore::new(permits.max(1)));
        self.map.insert(user.to_string(), s.clone());
        s
    }
}

/// Why one attempt failed and whether to wait before the next.
enum Attempt<T> {
    Done(T),
    Retry {
        reason: Transient,
        after: Option<Duration>,
    },
    RenewToken(AccessToken),
    Fail(GraphError),
}

impl GraphClient {
    pub fn new(http: reqwest::Client, tokens: Arc<TokenProvider>, opts: ClientOptions) -> Self {
        let global = Arc::new(Semaphore::new(opts.max_concurrency.max(1)));
        let batcher = opts
            .batch_polls
            .then(|| Batcher::start(http.clone(), tokens.clone(), opts.clone(), global.clone()));
        Self {
            http,
            tokens,
            global,
            opts,
            mailboxes: Mutex::default(),
            batcher,
        }
    }

    /// Polls a deltaLink: in a JSON batch when enabled, else (or when the batch did not
    /// answer it with a page) as a request of its own.
    pub async fn poll_delta(
        &self,
        user: &str,
        kind: PartitionKind,
        url: &str,
    ) -> Result<DeltaPage, GraphError> {
        if let Some(b) = &self.batcher {
            let mailbox = Mailbox {
                key: user.to_ascii_lowercase(),
                permits: self.mailbox(user),
            };
            if let Some(page) = b.submit(kind, url, mailbox).await {
                return Ok(page);
            }
        }
        self.get_page(user, kind, url).await
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    fn mailbox(&self, user: &str) -> Arc<Semaphore> {
        let permits = self.opts.max_concurrency_per_mailbox;
        self.mailboxes
            .lock()
            .get(&user.to_ascii_lowercase(), permits)
    }

    /// Fetches and parses one delta page of `user`'s mailbox, retrying what Graph says to retry.
    pub async fn get_page(
        &self,
        user: &str,
        kind: PartitionKind,
        url: &str,
    ) -> Result<DeltaPage, GraphError> {
        self.get_parsed(user, Some(kind), url, |b| {
            parse_page(b).map_err(Transient::from)
        })
        .await
    }

    /// Fetches and parses one page of a directory listing (group members: no delta, a page
    /// without nextLink ends it), with the same retries and limits as a delta page.
    pub async fn get_listing_page(
        &self,
        owner: &str,
        kind: PartitionKind,
        url: &str,
    ) -> Result<DeltaPage, GraphError> {
        self.get_parsed(owner, Some(kind), url, |b| {
            parse_listing(b).map_err(Transient::from)
        })
        .await
    }

    /// Fetches one JSON answer (a directory object, a page of a listing) under `user`'s
    /// per-mailbox limit, with the same retries as a delta page; a body that is not a `T` is
    /// retried like a malformed page.
    /// `kind`: the partition kind asking, `None` for the directory (metrics say `directory`;
    /// no `Prefer` header).
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        user: &str,
        kind: Option<PartitionKind>,
        url: &str,
    ) -> Result<T, GraphError> {
        self.get_parsed(user, kind, url, |b| {
            serde_json::from_slice(&b).map_err(|e| Transient::from(MalformedPage::Answer(e)))
        })
        .await
    }

    /// Sends `method` with a JSON `body` (subscriptions: `POST`, `PATCH`, `DELETE`) under
    /// `user`'s per-mailbox limit, with the same retries as a delta page, and parses a JSON
    /// answer (`None`: no content). `label` names the request in the metrics.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        user: &str,
        label: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>, GraphError> {
        let request = Request {
            method,
            body: body.map(|b| b.to_string().into_bytes()),
            label,
        };
        self.request_parsed(user, None, &request, url, |b| {
            if b.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Transient::from(MalformedPage::Answer(e)))
        })
        .await
    }

    async fn get_parsed<T>(
        &self,
        user: &str,
        kind: Option<PartitionKind>,
        url: &str,
        parse: impl Fn(bytes::Bytes) -> Result<T, Transient>,
    ) -> Result<T, GraphError> {
        let label = kind.map_or(DIRECTORY, PartitionKind::as_str);
        let request = Request {
            method: reqwest::Method::GET,
            body: None,
            label,
        };
        self.request_parsed(user, kind, &request, url, parse).await
    }

    async fn request_parsed<T>(
        &self,
        user: &str,
        kind: Option<PartitionKind>,
        request: &Request,
        url: &str,
        parse: impl Fn(bytes::Bytes) -> Result<T, Transient>,
    ) -> Result<T, GraphError> {
        let mailbox = self.mailbox(user);
        let mut renewed = false;
        // 401s to requests sent with a token older than the current one.
        let mut outdated = 0u32;
        let mut attempt = 0u32;
        loop {
            let outcome = {
                let _global = self.global.acquire().await?;
                let _mbx = mailbox.acquire().await?;
                self.attempt(kind, request, url, &parse).await
            };
            match outcome {
                Attempt::Done(page) => return Ok(page),
                Attempt::Fail(e) => return Err(e),
                Attempt::RenewToken(stale) => {
                    // Drops the token only if it is still the one that was refused.
                    let newer = self.tokens.invalidate(&stale);
                    if newer && outdated < 3 {
                        // Another request renewed it meanwhile: retry with the newer one.
                        outdated += 1;
                    } else if !renewed {
                        renewed = true;
                    } else {
                        // Still refused with a fresh token: the whole app may be affected
                        // (consent revoked, token endpoint trouble), so the partition waits
                        // rather than fails.
                        return Err(AuthError::FreshTokenRefused.into());
                    }
                }
                Attempt::Retry { reason, after } => {
                    attempt += 1;
                    if attempt > self.opts.max_retries {
                        return Err(GraphError::RetriesExhausted {
                            attempts: attempt,
                            last: reason,
                        });
                    }
                    let wait = after.unwrap_or_else(|| self.backoff(attempt));
                    metrics::graph_retry(request.label, &reason.to_string(), wait, after.is_some());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .opts
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.max_backoff);
        // "Equal jitter": between half and all of the step.
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    async fn attempt<T>(
        &self,
        kind: Option<PartitionKind>,
        request: &Request,
        url: &str,
        parse: &impl Fn(bytes::Bytes) -> Result<T, Transient>,
    ) -> Attempt<T> {
        let token = match self.tokens.token().await {
            Ok(t) => t,
            // The token endpoint may be throttled or down too: retry those.
            Err(e) => {
                return Attempt::Retry {
                    reason: Transient::Token(e),
                    after: None,
                }
            }
        };
        let mut req = self
            .http
            .request(request.method.clone(), url)
            .bearer_auth(token.secret())
            .timeout(self.opts.request_timeout);
        for p in kind.map(|k| prefer(&self.opts, k)).unwrap_or_default() {
            req = req.header("Prefer", p);
        }
        if let Some(b) = &request.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.clone());
        }
        let kind = request.label;
        let started = Instant::now();
        let in_flight = &metrics::metrics().in_flight;
        in_flight.inc();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                in_flight.dec();
                metrics::graph_request(kind, 0, started.elapsed());
                // Without the URL: a delta link carries the sync state token.
                return Attempt::Retry {
                    reason: Transient::Request(e.without_url()),
                    after: None,
                };
            }
        };
        let status = resp.status();
        if status.is_redirection() {
            in_flight.dec();
            metrics::graph_request(kind, status.as_u16(), started.elapsed());
            return Attempt::Fail(GraphError::Redirected {
                status: status.as_u16(),
                to: location_origin(&resp),
            });
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, self.opts.max_response_bytes).await;
        in_flight.dec();
        metrics::graph_request(kind, status.as_u16(), started.elapsed());
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    reason: e.into(),
                    after: None,
                }
            }
        };
        if status.is_success() {
            return match parse(body) {
                Ok(p) => Attempt::Done(p),
                Err(reason) => Attempt::Retry {
                    reason,
                    after: None,
                },
            };
        }
        let (code, message) = error_code(&body);
        match status {
            StatusCode::UNAUTHORIZED => Attempt::RenewToken(token),
            StatusCode::GONE => Attempt::Fail(GraphError::Gone { code, location }),
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => {
                if status == StatusCode::TOO_MANY_REQUESTS {
                    metrics::graph_throttled(kind, retry_after);
                }
                Attempt::Retry {
                    reason: Transient::Status { status, code },
                    after: retry_after,
                }
            }
            s if s.is_server_error() => Attempt::Retry {
                reason: Transient::Status { status, code },
                after: retry_after,
            },
            s => Attempt::Fail(GraphError::Client {
                status: s.as_u16(),
                code,
                message,
            }),
        }
    }
}

/// What one request sends: its method, its JSON body, and its label in the metrics (the
/// partition kind, `directory`, `subscriptions`).
struct Request {
    method: reqwest::Method,
    body: Option<Vec<u8>>,
    label: &'static str,
}

/// `error.code` and `error.message` of a Graph error body, when there is one.
fn error_code(body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(o) => (o.error.code, o.error.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
