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
//!
//! Graph runs the items of a batch against their mailboxes as requests of their own, at
//! most 4 at a time per mailbox (NOTES.md, "$batch"; Outlook's limit of 4 concurrent
//! requests per mailbox counts them). So a batch holds one of the client's global permits
//! and, for each mailbox, one of that mailbox's permits per item it carries, taken in the
//! order of the mailboxes' keys (so two batches never wait on each other); and a batch never
//! carries more items of one mailbox than `max_concurrency_per_mailbox` (more go in another
//! batch).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::auth::TokenProvider;
use super::delta::{parse_page, DeltaPage};
use super::http::read_capped;
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
    mailbox: Mailbox,
    reply: oneshot::Sender<Option<DeltaPage>>,
}

/// The mailbox a poll reads, and its request permits (the client's, shared with requests
/// sent on their own).
pub struct Mailbox {
    /// The user, lower-cased.
    pub key: String,
    pub permits: Arc<Semaphore>,
}

/// What a batch's sender shares: the HTTP client, tokens, tunables and the global permits.
struct Ctx {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    opts: ClientOptions,
    global: Arc<Semaphore>,
}

/// Handle to the batching task.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batching task on the current Tokio runtime; `global` are the client's
    /// permits of requests in flight overall.
    pub fn start(
        http: reqwest::Client,
        tokens: Arc<TokenProvider>,
        opts: ClientOptions,
        global: Arc<Semaphore>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            http,
            tokens,
            opts,
            global,
        };
        tokio::spawn(run(rx, Arc::new(ctx)));
        Self { tx }
    }

    /// The page of this deltaLink poll, or `None` when the batch did not answer it with one.
    pub async fn submit(
        &self,
        kind: PartitionKind,
        url: &str,
        mailbox: Mailbox,
    ) -> Option<DeltaPage> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                kind,
                url: url.to_string(),
                mailbox,
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Job>, ctx: Arc<Ctx>) {
    let per_mailbox = ctx.opts.max_concurrency_per_mailbox.max(1);
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
            for batch in plan(jobs, per_mailbox, |(_, j)| &j.mailbox.key) {
                tokio::spawn(send(ctx.clone(), root.clone(), batch));
            }
        }
    }
}

/// `https://host/v1.0/users/…?$deltatoken=…` → (`https://host/v1.0`, `users/…?$deltatoken=…`).
fn split(url: &str) -> Option<(String, String)> {
    if let Some(parts) = split_plain(url) {
        return Some(parts);
    }
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

/// [`split`] without parsing, for a link already in the form Url serialises (lower-case
/// `http(s)://host[:port]/…`, no user info, no fragment, no escapes to normalise): what
/// Graph's links and the simulator's are. `None`: parse it.
fn split_plain(url: &str) -> Option<(String, String)> {
    let (scheme, after) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let slash = after.find('/')?;
    let authority = &after[..slash];
    let plain =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':');
    let default_port = (scheme == "https" && authority.ends_with(":443"))
        || (scheme == "http" && authority.ends_with(":80"));
    if authority.is_empty() || !authority.chars().all(plain) || default_port {
        return None;
    }
    let path = &after[slash + 1..];
    // Characters Url leaves as they are in a path and a query; dot segments it would fold.
    let kept = |c: char| c.is_ascii_alphanumeric() || "-._~!$&()*+,;=:@/?%".contains(c);
    let escapes_whole = path.match_indices('%').all(|(i, _)| {
        path.as_bytes()
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !path.chars().all(kept) || !escapes_whole || path.contains("/.") || path.starts_with('.') {
        return None;
    }
    let (version, rest) = path.split_once('/')?;
    if version != "v1.0" && version != "beta" {
        return None;
    }
    Some((
        format!("{scheme}://{authority}/{version}"),
        rest.to_string(),
    ))
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

/// Splits `items` (in order) into batches of at most [`MAX_BATCH`] items, none with more than
/// `per_mailbox` items of one mailbox.
fn plan<T>(items: Vec<T>, per_mailbox: usize, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut batches: Vec<(Vec<T>, HashMap<String, usize>)> = Vec::new();
    for item in items {
        let k = key(&item).to_string();
        let fits = |(b, n): &(Vec<T>, HashMap<String, usize>)| {
            b.len() < MAX_BATCH && n.get(&k).copied().unwrap_or(0) < per_mailbox
        };
        let i = match batches.iter().position(fits) {
            Some(i) => i,
            None => {
                batches.push((Vec::new(), HashMap::new()));
                batches.len() - 1
            }
        };
        let (b, n) = &mut batches[i];
        *n.entry(k).or_default() += 1;
        b.push(item);
    }
    batches.into_iter().map(|(b, _)| b).collect()
}

/// One global permit, and per mailbox one permit per item, mailboxes in key order.
async fn permits(ctx: &Ctx, jobs: &[(String, Job)]) -> Option<Vec<OwnedSemaphorePermit>> {
    let mut per_mailbox: BTreeMap<&str, (u32, &Arc<Semaphore>)> = BTreeMap::new();
    for (_, j) in jobs {
        per_mailbox
            .entry(&j.mailbox.key)
            .or_insert((0, &j.mailbox.permits))
            .0 += 1;
    }
    let mut held = vec![ctx.global.clone().acquire_owned().await.ok()?];
    for (n, permits) in per_mailbox.into_values() {
        held.push(permits.clone().acquire_many_owned(n).await.ok()?);
    }
    Some(held)
}

async fn send(ctx: Arc<Ctx>, root: String, jobs: Vec<(String, Job)>) {
    let (http, tokens, opts) = (&ctx.http, &ctx.tokens, &ctx.opts);
    // Held until the answer is read: Graph runs the items while the batch is in flight.
    let held = permits(&ctx, &jobs).await;
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
    let token = if held.is_some() {
        tokens.token().await.ok()
    } else {
        None
    };
    let answer = match token {
        Some(token) => http
            .post(format!("{root}/$batch"))
            .bearer_auth(token.secret())
            .timeout(opts.request_timeout)
            .json(&serde_json::json!({ "requests": requests }))
            .send()
            .await
            .ok(),
        None => None,
    };
    let status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
    let body: Option<Bytes> = match answer {
        Some(r) if r.status().is_success() => read_capped(r, opts.max_response_bytes).await.ok(),
        _ => None,
    };
    drop(held);
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
    use super::{plan, split, MAX_BATCH};

    #[test]
    fn batches_carry_at_most_the_mailbox_limit_of_one_mailbox() {
        // 9 polls of alice, 2 of bob, 30 of 30 other mailboxes; 4 per mailbox at most.
        let mut items: Vec<String> = (0..9).map(|_| "alice".to_string()).collect();
        items.extend(["bob".to_string(), "bob".to_string()]);
        items.extend((0..30).map(|i| format!("u{i}")));
        let batches = plan(items.clone(), 4, |s| s.as_str());
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), items.len());
        for b in &batches {
            assert!(b.len() <= MAX_BATCH);
            for who in b {
                assert!(b.iter().filter(|x| *x == who).count() <= 4, "{b:?}");
            }
        }
        // Alice's 9 need three batches; the rest fill them up in order.
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].iter().filter(|x| *x == "alice").count(), 4);
        assert_eq!(batches[0].len(), MAX_BATCH);
        // One per mailbox: every batch has one poll of alice at most.
        let one = plan(items, 1, |s| s.as_str());
        assert!(one
            .iter()
            .all(|b| b.iter().filter(|x| *x == "alice").count() <= 1));
        assert_eq!(one.len(), 9);
    }

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

    /// The shortcut answers as the parser does, or leaves the link to it.
    #[test]
    fn plain_links_split_as_parsed_ones() {
        let parsed = |u: &str| {
            let u = url::Url::parse(u).unwrap();
            let path = u.path().trim_start_matches('/').to_string();
            let (version, rest) = path.split_once('/').unwrap();
            let root = format!("{}/{version}", u.origin().ascii_serialization());
            (root, format!("{rest}?{}", u.query().unwrap_or_default()))
        };
        for link in [
            "https://graph.microsoft.com/v1.0/users/a1b2/calendarView/delta?$deltatoken=Ab-_c.d~e",
            "http://127.0.0.1:8080/beta/users/u@x.com/calendars/delta?$skiptoken=1&x=2",
            "https://graph.microsoft.com/v1.0/users/a%40b/calendarView/delta?$deltatoken=x%2By",
        ] {
            assert_eq!(super::split_plain(link), Some(parsed(link)), "{link}");
        }
        for odd in [
            "https://Graph.Microsoft.com/v1.0/users/x?a=1",
            "https://graph.microsoft.com:443/v1.0/users/x?a=1",
            "https://u:p@graph.microsoft.com/v1.0/users/x?a=1",
            "https://graph.microsoft.com/v1.0/users/x?a=%4",
            "https://graph.microsoft.com/v1.0/users/../x?a=1",
            "https://graph.microsoft.com/v1.0/users/x?a=b c",
            "https://graph.microsoft.com/v1.0/users/x#frag",
        ] {
            assert_eq!(super::split_plain(odd), None, "{odd}: left to the parser");
            assert!(split(odd).is_some(), "{odd}: still split, by the parser");
        }
    }
}
