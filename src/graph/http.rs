//! The transport rules every Graph and token request shares.
//!
//! - No redirect is followed: a `3xx` comes back to the caller as the status it is. A `307`
//!   or `308` keeps the method and body, so following one from the token endpoint would post
//!   the client secret (or assertion) to wherever `Location` points; Graph itself never
//!   redirects a delta or `$batch` request.
//! - A body is read chunk by chunk and given up at `graph.max_response_bytes`: an answer too
//!   large (or a `Content-Length` announcing one) is an error, never an allocation of that size.

use bytes::{Bytes, BytesMut};

use super::error::{AuthError, Transient};
use super::options::ClientOptions;

/// Why a body could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the cap (announced or read so far).
    #[error("answer larger than graph.max_response_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// The body did not arrive whole (cut connection, timeout).
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// A Graph answer's body: retried.
impl From<BodyError> for Transient {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => Transient::TooLarge { limit },
            BodyError::Read(e) => Transient::Body(e),
        }
    }
}

/// The token endpoint's answer.
impl From<BodyError> for AuthError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => AuthError::TooLarge { limit },
            BodyError::Read(e) => AuthError::Read(e),
        }
    }
}

/// The HTTP client for Graph and the token endpoint: no redirects, a connection pool sized
/// to the client's concurrency.
pub fn client(opts: &ClientOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(opts.max_concurrency.max(1))
        .build()
}

/// The body of `resp`, read incrementally up to `limit` bytes.
pub async fn read_capped(mut resp: reqwest::Response, limit: u64) -> Result<Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(
        resp.content_length().unwrap_or(0).min(limit).min(1 << 20) as usize,
    );
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.without_url())? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The origin (`scheme://host:port`) of a redirect's `Location`, for messages: the rest of
/// it may carry a state token.
pub fn location_origin(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|| "nowhere".into())
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny HTTP/1.1 server on loopback for the Graph side's unit tests: each accepted
    //! connection gets the next canned answer (or the default one), and every request's
    //! head and body are kept. Also the token provider those tests share.

    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::graph::auth::{Credential, TokenProvider};
    use crate::graph::options::ClientOptions;

    /// One canned answer: status line and headers, then a body (sent in chunks when large).
    #[derive(Clone)]
    pub struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
        /// Wait this long before answering.
        pub delay: std::time::Duration,
    }

    impl Answer {
        pub fn json(status: u16, body: &str) -> Self {
            Self {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.as_bytes().to_vec(),
                delay: std::time::Duration::ZERO,
            }
        }

        /// A token endpoint granting `access_token` for an hour.
        pub fn token(access_token: &str) -> Self {
            Self::json(
                200,
                &format!(
                    r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{access_token}"}}"#
                ),
            )
        }

        pub fn header(mut self, k: &str, v: &str) -> Self {
            self.headers.push((k.into(), v.into()));
            self
        }
    }

    /// The app `graph-cdc` with client secret `secret`, getting its tokens from the tenant
    /// `contoso` of the identity platform (or simulator) at `login`.
    pub fn token_provider(login: &str, secret: &str, opts: &ClientOptions) -> TokenProvider {
        TokenProvider::new(
            super::client(opts).expect("client"),
            format!("{login}/contoso/oauth2/v2.0/token"),
            "graph-cdc".into(),
            "https://graph.microsoft.com",
            Credential::Secret(secret.into()),
            opts,
        )
    }

    /// A running server: its base URL, what it received, and its script.
    pub struct Server {
        pub url: String,
        pub received: Arc<Mutex<Vec<String>>>,
        script: Arc<Mutex<std::collections::VecDeque<Answer>>>,
        fallback: Arc<Mutex<Answer>>,
    }

    impl Server {
        /// Answers `script` in order, then `fallback` for ever.
        pub async fn start(script: Vec<Answer>, fallback: Answer) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let received = Arc::new(Mutex::new(Vec::new()));
            let script: Arc<Mutex<std::collections::VecDeque<Answer>>> =
                Arc::new(Mutex::new(script.into_iter().collect()));
            let fallback = Arc::new(Mutex::new(fallback));
            let (r, s, f) = (received.clone(), script.clone(), fallback.clone());
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    let (r, s, f) = (r.clone(), s.clone(), f.clone());
                    tokio::spawn(async move {
                        let Some(request) = read_request(&mut sock).await else {
                            return;
                        };
                        r.lock().push(request);
                        let a = s.lock().pop_front().unwrap_or_else(|| f.lock().clone());
                        tokio::time::sleep(a.delay).await;
                        let mut head = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", a.status);
                        for (k, v) in &a.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str(&format!("content-length: {}\r\n\r\n", a.body.len()));
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        for chunk in a.body.chunks(64 * 1024) {
                            if sock.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Self {
                url,
                received,
                script,
                fallback,
            }
        }

        /// Queues more answers.
        pub fn then(&self, a: Answer) {
            self.script.lock().push_back(a);
        }

        pub fn set_fallback(&self, a: Answer) {
            *self.fallback.lock() = a;
        }

        pub fn requests(&self) -> Vec<String> {
            self.received.lock().clone()
        }
    }

    /// The request's head and body (by `content-length`), as text.
    async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        loop {
            let n = sock.read(&mut tmp).await.ok()?;
            if n == 0 {
                return (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned());
            }
            buf.extend_from_slice(&tmp[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Some(text);
                }
            }
        }
    }
}
