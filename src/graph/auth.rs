//! OAuth2 client credentials against the Microsoft identity platform (or the simulator).
//!
//! The token is cached and renewed ahead of its expiry, fetched by one request at a time
//! whoever needs it, within `graph.request_timeout`; a `401` from Graph drops it only if it
//! is still the token the request was sent with (see `client.rs`). Secrets and tokens never
//! reach logs or errors.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::Digest as _;

use super::error::AuthError;
use super::http::{location_origin, read_capped};
use super::options::ClientOptions;

/// How the app proves who it is.
#[derive(Clone)]
pub enum Credential {
    Secret(String),
    /// A certificate (PEM) and its private key (PEM, PKCS#8 or PKCS#1 RSA).
    Certificate {
        cert_pem: String,
        key_pem: String,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(***)"),
            Credential::Certificate { .. } => f.write_str("Certificate(***)"),
        }
    }
}

/// An access token, and the generation it belongs to: each successful fetch makes a new
/// generation, so a `401` can tell the token it was sent with from a newer one.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<str>,
    generation: u64,
}

impl AccessToken {
    /// The bearer token itself (never logged).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// 1 for the first token fetched, then one more per fetch.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(***, generation {})", self.generation)
    }
}

struct Cached {
    token: AccessToken,
    renew_at: Instant,
}

/// The fetch in flight, shared by everyone waiting for a token.
type Fetch = Shared<BoxFuture<'static, Result<AccessToken, Arc<AuthError>>>>;

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The generation of the newest token fetched (the cached one's, while there is one).
    generation: u64,
    /// The fetch in flight: set only when none is, cleared only by that fetch.
    in_flight: Option<Fetch>,
}

/// What a token request needs (shared with the task that fetches).
struct Fetcher {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: Credential,
    /// The whole fetch, answer read included.
    timeout: Duration,
    max_response_bytes: u64,
}

/// Fetches and caches access tokens, one fetch at a time: callers needing a token while
/// one is being fetched wait for that fetch and share its result (token or error), and
/// the fetch gives up after `graph.request_timeout`.
pub struct TokenProvider {
    fetcher: Arc<Fetcher>,
    state: Arc<Mutex<State>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenProvider {
    /// `graph_host` gives the scope (`{graph_host}/.default`); `opts` the fetch's timeout
    /// (`request_timeout`) and largest answer (`max_response_bytes`). `http` should follow
    /// no redirects ([`super::http::client`]); a `3xx` is refused here either way.
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        graph_host: &str,
        credential: Credential,
        opts: &ClientOptions,
    ) -> Self {
        Self {
            fetcher: Arc::new(Fetcher {
                http,
                token_url,
                client_id,
                scope: format!("{}/.default", graph_host.trim_end_matches('/')),
                credential,
                timeout: opts.request_timeout,
                max_response_bytes: opts.max_response_bytes,
            }),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// A valid access token: the cached one, else the one the fetch in flight brings (a
    /// fetch is started when none is).
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let fetch = {
            let mut st = self.state.lock();
            if let Some(c) = &st.cached {
                if Instant::now() < c.renew_at {
                    return Ok(c.token.clone());
                }
            }
            match &st.in_flight {
                Some(f) => f.clone(),
                None => {
                    // Its own task: it goes on (and times out) whoever waits for it.
                    let task = tokio::spawn(fetch_and_keep(
                        self.fetcher.clone(),
                        Arc::downgrade(&self.state),
                    ));
                    let f = async move {
                        task.await
                            .unwrap_or_else(|_| Err(Arc::new(AuthError::Interrupted)))
                    }
                    .boxed()
                    .shared();
                    st.in_flight = Some(f.clone());
                    f
                }
            }
        };
        fetch.await.map_err(AuthError::Shared)
    }

    /// After a `401` answered to a request sent with `stale`: drops the cached token if it
    /// is still that one. Returns `true` when a newer token already exists (another request
    /// renewed it meanwhile): retry with it, nothing to drop.
    pub fn invalidate(&self, stale: &AccessToken) -> bool {
        let mut st = self.state.lock();
        if st.generation > stale.generation {
            return true;
        }
        // `stale` is the newest token: the cached one, if it is still cached.
        st.cached = None;
        false
    }
}

/// One fetch, bounded by the timeout; its token is cached before anyone gets it.
async fn fetch_and_keep(
    fetcher: Arc<Fetcher>,
    state: Weak<Mutex<State>>,
) -> Result<AccessToken, Arc<AuthError>> {
    let fetched = tokio::time::timeout(fetcher.timeout, fetcher.fetch())
        .await
        .unwrap_or(Err(AuthError::Timeout(fetcher.timeout)));
    let Some(state) = state.upgrade() else {
        return Err(Arc::new(AuthError::Interrupted));
    };
    let mut st = state.lock();
    st.in_flight = None;
    let (secret, lifetime) = fetched.map_err(Arc::new)?;
    st.generation += 1;
    let token = AccessToken {
        secret,
        generation: st.generation,
    };
    // Renew 5 minutes early, or at 80% of a short lifetime.
    let early = Duration::from_secs(300).min(lifetime / 5);
    st.cached = Some(Cached {
        token: token.clone(),
        renew_at: Instant::now() + lifetime.saturating_sub(early),
    });
    drop(st);
    crate::metrics::token_renewed(lifetime);
    Ok(token)
}

impl Fetcher {
    async fn fetch(&self) -> Result<(Arc<str>, Duration), AuthError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.clone())),
            Credential::Certificate { cert_pem, key_pem } => {
                let jwt = client_assertion(&self.token_url, &self.client_id, cert_pem, key_pem)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", jwt));
            }
        }
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            // Without the URL: a token URL names no secret, but the same rule holds everywhere.
            .map_err(|e| AuthError::Unreachable(e.without_url()))?;
        let status = resp.status();
        if status.is_redirection() {
            // Never followed: a 307/308 would post the credential again, to `Location`.
            return Err(AuthError::Redirected {
                status,
                to: location_origin(&resp),
            });
        }
        let body = read_capped(resp, self.max_response_bytes).await?;
        if !status.is_success() {
            let e: TokenError = serde_json::from_slice(&body).unwrap_or(TokenError {
                error: None,
                error_description: None,
            });
            return Err(AuthError::Refused {
                status,
                error: e.error.unwrap_or_default(),
                description: e.error_description.unwrap_or_default(),
            });
        }
        let a: TokenAnswer = serde_json::from_slice(&body).map_err(AuthError::Answer)?;
        Ok((
            a.access_token.into(),
            Duration::from_secs(a.expires_in.max(1)),
        ))
    }
}

/// The DER bytes of the first certificate in a PEM file.
fn cert_der(cert_pem: &str) -> Result<Vec<u8>, AuthError> {
    let b64: String = cert_pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(AuthError::Certificate)
}

/// A signed JWT client assertion (RS256, `x5t#S256`, lifetime 10 minutes).
pub fn client_assertion(
    token_url: &str,
    client_id: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<String, AuthError> {
    let der = cert_der(cert_pem)?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t_s256 =
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der)));
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).map_err(AuthError::Key)?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(AuthError::Sign)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
