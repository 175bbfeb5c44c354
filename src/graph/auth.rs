//! OAuth2 client credentials against the Microsoft identity platform (or the simulator).
//!
//! The token is cached and renewed ahead of its expiry; a `401` from Graph invalidates it
//! once (see `client.rs`). Secrets and tokens never reach logs or errors.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::Mutex;

use super::error::AuthError;

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

struct Cached {
    token: Arc<str>,
    renew_at: Instant,
}

/// Fetches and caches access tokens.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: Credential,
    cached: Mutex<Option<Cached>>,
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
    /// `graph_host` gives the scope (`{graph_host}/.default`).
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        graph_host: &str,
        credential: Credential,
    ) -> Self {
        Self {
            http,
            token_url,
            client_id,
            scope: format!("{}/.default", graph_host.trim_end_matches('/')),
            credential,
            cached: Mutex::new(None),
        }
    }

    /// A valid access token, fetched when none is cached or it is about to expire.
    pub async fn token(&self) -> Result<Arc<str>, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.renew_at {
                return Ok(c.token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await?;
        // Renew 5 minutes early, or at 80% of a short lifetime.
        let early = Duration::from_secs(300).min(lifetime / 5);
        *cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(early),
        });
        crate::metrics::token_renewed(lifetime);
        Ok(token)
    }

    /// Drops the cached token if it is still `stale` (after a `401`).
    pub async fn invalidate(&self, stale: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &*c.token == stale) {
            *cached = None;
        }
    }

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
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Read(e.without_url()))?;
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
