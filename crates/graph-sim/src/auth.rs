//! The OAuth2 token endpoint (`/{tenant}/oauth2/v2.0/token`) and access-token checks.
//!
//! Client credentials with a client secret or a signed JWT client assertion (RS256,
//! verified against the client's registered public key). Access tokens are shaped like the
//! identity platform's (a JWT whose claims name the tenant, the app and its `roles`, with a
//! random signature) and are only valid as issued here; they really expire after
//! `token_lifetime_secs`. The roles are fixed when the token is issued (`permissions.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde::Deserialize;

use super::model::Store;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form a token request posts.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// An AAD-style error: HTTP status, `error`, AADSTS code and description.
#[derive(Debug)]
pub struct AuthError {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub description: String,
}

fn err(status: u16, error: &'static str, code: u32, d: impl Into<String>) -> AuthError {
    AuthError {
        status,
        error,
        code,
        description: d.into(),
    }
}

struct Issued {
    grant: Grant,
    expires: Instant,
}

/// Who a valid access token speaks for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant: String,
    pub client_id: String,
    /// The application permissions of its `roles` claim.
    pub roles: Arc<BTreeSet<String>>,
}

/// Access tokens handed out, and assertion ids already used.
#[derive(Default)]
pub struct Tokens {
    issued: HashMap<String, Issued>,
    used_jti: HashSet<String>,
    pub issued_total: u64,
}

/// Why a bearer token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Unknown,
    Expired,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    aud: String,
    iss: String,
    sub: String,
    jti: Option<String>,
    nbf: Option<i64>,
    exp: i64,
}

impl Tokens {
    /// Handles a token request for `tenant`; returns `(access_token, expires_in)`.
    pub fn grant(
        &mut self,
        store: &Store,
        tenant: &str,
        req: &TokenRequest,
        lifetime: Duration,
    ) -> Result<(String, u64), AuthError> {
        if req.grant_type.as_deref() != Some("client_credentials") {
            return Err(err(
                400,
                "unsupported_grant_type",
                70003,
                "AADSTS70003: The app requested an unsupported grant type.",
            ));
        }
        let scope = req.scope.as_deref().unwrap_or("");
        if !scope.ends_with("/.default") {
            return Err(err(400, "invalid_scope", 1002012, "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier."));
        }
        let t = store.tenants.get(tenant).ok_or_else(|| {
            err(
                400,
                "invalid_request",
                90002,
                format!("AADSTS90002: Tenant '{tenant}' not found."),
            )
        })?;
        let client_id = req.client_id.as_deref().unwrap_or("");
        let client = t.clients.get(client_id).ok_or_else(|| {
            err(400, "unauthorized_client", 700016, format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'."))
        })?;
        match (&req.client_secret, &req.client_assertion) {
            (Some(secret), None) => {
                if client.client_secret.as_deref() != Some(secret.as_str()) {
                    return Err(err(
                        401,
                        "invalid_client",
                        7000215,
                        "AADSTS7000215: Invalid client secret provided.",
                    ));
                }
            }
            (None, Some(assertion)) => {
                if req.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
                    return Err(err(
                        400,
                        "invalid_request",
                        50027,
                        "AADSTS50027: client_assertion_type is missing or invalid.",
                    ));
                }
                let pem = client.public_key_pem.as_deref().ok_or_else(|| {
                    err(
                        401,
                        "invalid_client",
                        700027,
                        "AADSTS700027: No certificate is registered for this client.",
                    )
                })?;
                self.check_assertion(
                    assertion,
                    pem,
                    client.x5t_s256.as_deref(),
                    client_id,
                    tenant,
                )?;
            }
            _ => {
                return Err(err(400, "invalid_request", 7000218, "AADSTS7000218: The request body must contain exactly one of 'client_assertion' or 'client_secret'."));
            }
        }
        let grant = Grant {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            roles: Arc::new(store.app_roles(tenant, client_id)),
        };
        let token = access_token(&grant, lifetime);
        self.issued.insert(
            token.clone(),
            Issued {
                grant,
                expires: Instant::now() + lifetime,
            },
        );
        self.issued_total += 1;
        // Forget long-expired tokens so the table stays small.
        if self.issued.len() > 10_000 {
            let now = Instant::now();
            self.issued.retain(|_, i| i.expires > now);
        }
        Ok((token, lifetime.as_secs()))
    }

    fn check_assertion(
        &mut self,
        assertion: &str,
        pem: &str,
        x5t: Option<&str>,
        client_id: &str,
        tenant: &str,
    ) -> Result<(), AuthError> {
        let bad = |d: String| {
            err(
                401,
                "invalid_client",
                700027,
                format!(
                    "AADSTS700027: Client assertion failed signature validation or is invalid: {d}"
                ),
            )
        };
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| bad(e.to_string()))?;
        if header.alg != Algorithm::RS256 && header.alg != Algorithm::PS256 {
            return Err(bad("unsupported algorithm".into()));
        }
        let thumb = header
            .x5t_s256
            .as_deref()
            .or(header.x5t.as_deref())
            .ok_or_else(|| bad("missing x5t#S256 header".into()))?;
        if let Some(expected) = x5t {
            if thumb != expected {
                return Err(bad("certificate thumbprint does not match".into()));
            }
        }
        let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let mut v = Validation::new(header.alg);
        // Audience is checked below: the host part depends on how the client reached us.
        v.validate_aud = false;
        v.validate_nbf = true;
        v.leeway = 60;
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v)
            .map_err(|e| bad(e.to_string()))?;
        let c = data.claims;
        if !c.aud.ends_with(&format!("/{tenant}/oauth2/v2.0/token")) {
            return Err(bad(format!(
                "audience '{}' is not this token endpoint",
                c.aud
            )));
        }
        if c.iss != client_id || c.sub != client_id {
            return Err(bad("iss and sub must be the client id".into()));
        }
        let now = chrono::Utc::now().timestamp();
        let start = c.nbf.unwrap_or(now);
        if c.exp - start > 600 + 60 {
            return Err(bad("assertion lifetime exceeds 10 minutes".into()));
        }
        let jti = c.jti.ok_or_else(|| bad("missing jti".into()))?;
        if !self.used_jti.insert(jti) {
            return Err(bad("assertion replayed (jti already used)".into()));
        }
        Ok(())
    }

    /// Checks a bearer token; returns its tenant.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, BearerError> {
        self.check_grant(authorization).map(|g| g.tenant)
    }

    /// Checks a bearer token; returns what it grants.
    pub fn check_grant(&self, authorization: Option<&str>) -> Result<Grant, BearerError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(BearerError::Missing)?;
        let issued = self.issued.get(token).ok_or(BearerError::Unknown)?;
        if issued.expires <= Instant::now() {
            return Err(BearerError::Expired);
        }
        Ok(issued.grant.clone())
    }

    /// Forgets one token (an "expired token" fault) or all of them.
    pub fn revoke(&mut self, token: Option<&str>) -> usize {
        match token {
            Some(t) => usize::from(self.issued.remove(t).is_some()),
            None => {
                let n = self.issued.len();
                self.issued.clear();
                n
            }
        }
    }
}

/// A token shaped like an app-only Graph access token: header, claims (`aud`, `iss`, `tid`,
/// `appid`, `roles`, `idtyp`, lifetime) and a random signature, each base64url.
fn access_token(g: &Grant, lifetime: Duration) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut rng = rand::rng();
    let nonce: [u8; 24] = rng.random();
    let signature: [u8; 48] = rng.random();
    let now = chrono::Utc::now().timestamp();
    let header =
        serde_json::json!({"typ": "JWT", "nonce": b64(&nonce), "alg": "RS256", "kid": "graph-sim"});
    let claims = serde_json::json!({
        "aud": "https://graph.microsoft.com",
        "iss": format!("https://sts.windows.net/{}/", g.tenant),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime.as_secs() as i64,
        "appid": g.client_id,
        "idtyp": "app",
        "roles": *g.roles,
        "tid": g.tenant,
        "uti": b64(&nonce[..12]),
        "ver": "1.0",
    });
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&signature)
    )
}
