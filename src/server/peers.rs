//! The connector's other workers, asked for their part of a read (issue 14). Each worker
//! knows only the partitions of the shards it owns; the one an operator asks answers the
//! connector's status, tasks and offsets with every worker's part, as a Kafka Connect worker
//! answers for the whole cluster. The others' REST APIs are where they advertised them in
//! the control topic (`WorkerStatus::peers`); each is asked with `?local=true` (its own part
//! only, so nobody asks further), with the same bearer token, and within [`PEER_TIMEOUT`].
//! A worker that does not answer is named in the reply's `workers`, with why.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use serde_json::{json, Value};

use super::ServerState;

/// How long a worker waits for another's part.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// The client workers ask each other with: the platform's roots, and the REST listener's own
/// certificate chain (`chain`, DER, if it serves HTTPS) so that workers sharing one
/// certificate, self-signed or not, trust each other.
pub fn client(chain: &[&[u8]]) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .timeout(PEER_TIMEOUT)
        .connect_timeout(Duration::from_secs(2));
    for der in chain {
        b = b.add_root_certificate(reqwest::Certificate::from_der(der)?);
    }
    b.build()
}

/// Whether the query asks for this worker's part only (`local=true`).
pub fn local_only(query: Option<&str>) -> bool {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "local" && v == "true")
}

/// One other worker's answer.
pub struct Answer {
    pub worker_id: String,
    pub url: String,
    /// Its JSON, or why there is none.
    pub body: Result<Value, String>,
}

/// The other workers advertised in the control topic: (worker id, REST API URL).
pub fn others(s: &ServerState) -> Vec<(String, String)> {
    s.status
        .peers
        .lock()
        .iter()
        .filter(|(id, _)| **id != s.worker_id)
        .map(|(id, url)| (id.clone(), url.clone()))
        .collect()
}

/// Asks every other advertised worker for `path` (`?local=true`), side by side.
pub async fn ask(s: &ServerState, path: &str) -> Vec<Answer> {
    let asks = others(s).into_iter().map(|(worker_id, url)| async move {
        let mut req = s.peers.get(format!("{url}{path}?local=true"));
        if let Some(t) = &s.auth_token {
            req = req.bearer_auth(t);
        }
        let body = match req.send().await {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("answered {}", r.status())),
            // Without the URL: reqwest's error names it, and the reply carries it anyway.
            Err(e) => Err(e.without_url().to_string()),
        };
        Answer {
            worker_id,
            url,
            body,
        }
    });
    futures_util::future::join_all(asks).await
}

/// The `workers` of a gathered reply: this one, then each other and whether it answered.
pub fn workers(s: &ServerState, answers: &[Answer]) -> Value {
    let mut out = vec![json!({"worker_id": s.worker_id, "answered": true})];
    for a in answers {
        let mut w = json!({"worker_id": a.worker_id, "url": a.url, "answered": a.body.is_ok()});
        if let Err(why) = &a.body {
            w["error"] = json!(why);
        }
        out.push(w);
    }
    Value::Array(out)
}

/// The URL this worker advertises when `server.advertised_url` is not set: the bound port,
/// and the bound address, or (listening on every address) the one this host reaches Kafka
/// from (`bootstrap`'s first server), which the other workers can reach it at too.
pub fn default_advertised(bound: SocketAddr, https: bool, bootstrap: &str) -> String {
    let ip = match bound.ip() {
        ip if !ip.is_unspecified() => ip,
        _ => toward(bootstrap).unwrap_or(IpAddr::from([127, 0, 0, 1])),
    };
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

/// The local address of the route to `bootstrap`'s first server (a UDP "connection" sends
/// nothing).
fn toward(bootstrap: &str) -> Option<IpAddr> {
    let first = bootstrap.split(',').next()?.trim();
    let first = first.rsplit_once("://").map_or(first, |(_, a)| a);
    let target = first.to_socket_addrs().ok()?.next()?;
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_bound_address_or_the_route_to_kafka() {
        let bound: SocketAddr = "127.0.0.1:4711".parse().unwrap();
        assert_eq!(
            default_advertised(bound, false, "broker:9092"),
            "http://127.0.0.1:4711"
        );
        let any: SocketAddr = "0.0.0.0:8083".parse().unwrap();
        assert_eq!(
            default_advertised(any, true, "127.0.0.1:9092"),
            "https://127.0.0.1:8083"
        );
        let v6: SocketAddr = "[::1]:8083".parse().unwrap();
        assert_eq!(default_advertised(v6, false, ""), "http://[::1]:8083");
        assert!(local_only(Some("local=true")));
        assert!(!local_only(Some("expand=status")));
        assert!(!local_only(None));
    }
}
