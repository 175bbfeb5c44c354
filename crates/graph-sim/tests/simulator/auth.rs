use std::time::Duration;

use base64::Engine as _;
use graph_sim::model::Client;
use graph_sim::SimSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::client::{add_user, start, Graph, TENANT};

const KEY: &str = include_str!("../../../graph-cdc-testkit/fixtures/test-client.key");
const CERT: &str = include_str!("../../../graph-cdc-testkit/fixtures/test-client.crt");
const PUBKEY: &str = include_str!("../../../graph-cdc-testkit/fixtures/test-client.pub.pem");

fn thumbprint() -> String {
    let b64: String = CERT.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

fn assertion(aud: &str, client: &str, jti: &str, x5t: Option<String>, lifetime: i64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.x5t_s256 = x5t;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"aud": aud, "iss": client, "sub": client, "jti": jti, "nbf": now, "exp": now + lifetime});
    jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(KEY.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn post_token(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn client_secret_and_certificate_assertions() {
    let sim = start(SimSettings::default()).await;
    sim.state.store.write().add_client(
        TENANT,
        Client {
            client_id: "cert-app".into(),
            client_secret: None,
            public_key_pem: Some(PUBKEY.into()),
            x5t_s256: Some(thumbprint()),
        },
    );
    let base = sim.url();
    let scope = ("scope", "https://graph.microsoft.com/.default");
    let (s, v) = post_token(
        &base,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "test-app"),
            ("client_secret", "wrong"),
            scope,
        ],
    )
    .await;
    assert_eq!((s, v["error"].as_str().unwrap()), (401, "invalid_client"));
    assert!(!v.to_string().contains("wrong"), "the secret is not echoed");
    let (s, v) = post_token(
        &base,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "test-app"),
            ("client_secret", "test-secret"),
            ("scope", "User.Read"),
        ],
    )
    .await;
    assert_eq!((s, v["error"].as_str().unwrap()), (400, "invalid_scope"));
    let aud = format!("{base}/{TENANT}/oauth2/v2.0/token");
    let typ = (
        "client_assertion_type",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    );
    let good = assertion(&aud, "cert-app", "j1", Some(thumbprint()), 300);
    let (s, v) = post_token(
        &base,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cert-app"),
            typ,
            ("client_assertion", &good),
            scope,
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].as_u64().unwrap() > 3000);
    let (s, _) = post_token(
        &base,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cert-app"),
            typ,
            ("client_assertion", &good),
            scope,
        ],
    )
    .await;
    assert_eq!(s, 401, "a replayed jti is refused");
    for bad in [
        assertion(&aud, "cert-app", "j2", None, 300),
        assertion(&aud, "cert-app", "j3", Some("bogus".into()), 300),
        assertion(
            "https://elsewhere/x/oauth2/v2.0/token",
            "cert-app",
            "j4",
            Some(thumbprint()),
            300,
        ),
        assertion(&aud, "other-app", "j5", Some(thumbprint()), 300),
        assertion(&aud, "cert-app", "j6", Some(thumbprint()), 3600),
    ] {
        let (s, v) = post_token(
            &base,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "cert-app"),
                typ,
                ("client_assertion", &bad),
                scope,
            ],
        )
        .await;
        assert_eq!(s, 401, "{v}");
    }
    // A tampered signature.
    let mut forged = assertion(&aud, "cert-app", "j7", Some(thumbprint()), 300);
    let i = forged.rfind('.').unwrap() + 10;
    let c = if &forged[i..=i] == "A" { "B" } else { "A" };
    forged.replace_range(i..=i, c);
    let (s, _) = post_token(
        &base,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cert-app"),
            typ,
            ("client_assertion", &forged),
            scope,
        ],
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn access_tokens_really_expire() {
    let sim = start(SimSettings {
        token_lifetime_secs: 1,
        ..Default::default()
    })
    .await;
    add_user(&sim, "amy@contoso.com");
    let g = Graph::new(&sim).await;
    let url = g.url("/v1.0/users/amy@contoso.com/todo/lists/delta");
    assert_eq!(g.get(&url, None).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = g.get(&url, None).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    let r = g.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token at all");
    let r = g
        .http
        .get(&url)
        .bearer_auth("made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
