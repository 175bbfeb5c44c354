//! JSON batching of deltaLink polls (`graph.batch_polls`).
//!
//! Most requests of a steady worker are polls of idle deltaLinks. The batcher gathers polls
//! for a few milliseconds and sends up to 20 of them in one `POST {base}/{version}/$batch`
//! (links made relative, as batching requires). Graph answers every item with its own status
//! in any order; an item answered with a page is parsed in place (a slice of the batch body,
//! as for a single request), anything else (429 inside the batch, 410, 401, a malformed
//! body, a failed batch) goes back to the caller, which sends that poll on its own through
//! the normal path with its retry, throttling and resync rules. Batching can only save
//! requests, never change what is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::auth::TokenProvider;
use super::delta::{parse_page, DeltaPage};
use super::options::{prefer, ClientOptions};
use crate::metrics;
use crate::source::PartitionKind;

/// Graph's limit of requests per batch.
pub const MAX_BATCH: usize = 20;
/// How long the first poll of a batch waits for company.
const GATHER: Duration = Duration::from_millis(20);

struct Job {
    kind: PartitionKind,
    url: String,
    reply: oneshot::Sender<Option<DeltaPage>>,
}

/// Handle to the batching task.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batching task on the current Tokio runtime.
    pub fn start(http: reqwest::Client, tokens: Arc<TokenProvider>, opts: ClientOptions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, http, tokens, opts));
        Self { tx }
    }

    /// The page of this deltaLink poll, or `None` when the batch did not answer it with one.
    pub async fn submit(&self, kind: PartitionKind, url: &str) -> Option<DeltaPage> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                kind,
                url: url.to_string(),
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Job>,
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    opts: ClientOptions,
) {
    let ctx = Arc::new((http, tokens, opts));
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + GATHER;
        while jobs.len() < MAX_BATCH {
            tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => jobs.push(j),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // One batch per API root (`…/v1.0` and `…/beta` cannot share one).
        let mut by_root: HashMap<String, Vec<(String, Job)>> = HashMap::new();
        for j in jobs {
            match split(&j.url) {
                Some((root, rel)) => by_root.entry(root).or_default().push((rel, j)),
                None => {
                    let _ = j.reply.send(None);
                }
            }
        }
        for (root, jobs) in by_root {
            tokio::spawn(send(ctx.clone(), root, jobs));
        }
    }
}

/// `https://host/v1.0/users/…?$deltatoken=…` → (`https://host/v1.0`, `users/…?$deltatoken=…`).
fn split(url: &str) -> Option<(String, String)> {
    let u = url::Url::parse(url).ok()?;
    let path = u.path().trim_start_matches('/');
    let (version, rest) = path.split_once('/')?;
    if !version.eq_ignore_ascii_case("v1.0") && !version.eq_ignore_ascii_case("beta") {
        return None;
    }
    let root = format!("{}/{version}", u.origin().ascii_serialization());
    let rel = match u.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    Some((root, rel))
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    responses: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    id: String,
    status: u16,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

async fn send(
    ctx: Arc<(reqwest::Client, Arc<TokenProvider>, ClientOptions)>,
    root: String,
    jobs: Vec<(String, Job)>,
) {
    let (http, tokens, opts) = &*ctx;
    let requests: Vec<serde_json::Value> = jobs
        .iter()
        .enumerate()
        .map(|(i, (rel, job))| {
            serde_json::json!({
                "id": i.to_string(),
                "method": "GET",
                "url": rel,
                "headers": { "Prefer": prefer(opts, job.kind).join(", ") },
            })
        })
        .collect();
    let started = Instant::now();
    let answer = match tokens.token().await {
        Ok(token) => http
            .post(format!("{root}/$batch"))
            .bearer_auth(&*token)
            .timeout(opts.request_timeout)
            .json(&serde_json::json!({ "requests": requests }))
            .send()
            .await
            .ok(),
        Err(_) => None,
    };
    let status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
    let body: Option<Bytes> = match answer {
        Some(r) if r.status().is_success() => r.bytes().await.ok(),
        _ => None,
    };
    let mut pages: HashMap<usize, DeltaPage> = HashMap::new();
    if let Some(body) = &body {
        if let Some(answer) = std::str::from_utf8(body)
            .ok()
            .and_then(|t| serde_json::from_str::<Answer>(t).ok())
        {
            for item in answer.responses {
                let (Ok(i), 200, Some(raw)) = (item.id.parse::<usize>(), item.status, item.body)
                else {
                    continue;
                };
                if let Ok(page) = parse_page(body.slice_ref(raw.get().as_bytes())) {
                    pages.insert(i, page);
                }
            }
        }
    }
    metrics::graph_batch(status, jobs.len(), pages.len(), started.elapsed());
    for (i, (_, job)) in jobs.into_iter().enumerate() {
        let page = pages.remove(&i);
        metrics::graph_batched_poll(job.kind, page.is_some());
        let _ = job.reply.send(page);
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn links_are_split_into_root_and_relative_url() {
        assert_eq!(
            split(
                "https://graph.microsoft.com/v1.0/users/a%40b/calendarView/delta?$deltatoken=x%2By"
            ),
            Some((
                "https://graph.microsoft.com/v1.0".into(),
                "users/a%40b/calendarView/delta?$deltatoken=x%2By".into()
            ))
        );
        assert_eq!(
            split("http://127.0.0.1:8080/beta/users/u/calendars/delta?$deltatoken=t")
                .unwrap()
                .0,
            "http://127.0.0.1:8080/beta"
        );
        assert_eq!(split("https://graph.microsoft.com/v2/users/x"), None);
        assert_eq!(split("not a url"), None);
    }
}
