//! One change-notification subscription per partition Graph offers them for (a calendar
//! view: its user's events; a To Do task list: its tasks), held while the partition runs on
//! this worker (issue 16; README, "Change notifications").
//!
//! A partition that starts is queued for a subscription ([`Subscriptions::want`]); [`run`]
//! creates it (Graph validates the webhook first), asks for close to the resource's longest
//! lifetime, renews it `notifications.renew_before` ahead of its expiry (or half-way, for
//! lifetimes shorter than twice that), recreates it when Graph removed it, and deletes it
//! once the partition ends here (stopped, failed, its list gone). Its id and expiry are
//! written with every offset of the partition: a worker that takes its shard, or restarts,
//! reuses it ([`Subscriptions::adopt`]), and a shard that moves hands it over instead of
//! deleting it ([`Subscriptions::hand_over`]). A request
//! that fails is retried with a growing backoff; meanwhile the partition is polled at
//! `graph.poll_interval`, as without notifications. Only a partition with a live subscription
//! is polled at the longer `graph.poll_interval_with_notifications`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::graph::subscriptions::{self as graph, max_lifetime_of, resource_of, NewSubscription};
use crate::metrics;
use crate::source::{PartitionId, SourceOffset, SubscriptionRef};

use super::spec::NotificationSpec;
use super::supervisor::poke;
use super::Shared;

/// Requests to Graph in flight at once (each creation makes Graph call the webhook too).
const CONCURRENCY: usize = 16;
/// How often the worker looks for subscriptions due for renewal.
const RENEW_SCAN: Duration = Duration::from_secs(15);
/// Asked for this much less than a resource's longest lifetime (clocks differ).
const MARGIN: Duration = Duration::from_secs(120);

/// What a lifecycle event asks of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Graph removed it: create it again.
    Removed,
    /// Graph wants it reauthorized.
    Reauthorize,
}

/// A partition's subscription.
#[derive(Debug, Default)]
struct Sub {
    id: Option<String>,
    expires: Option<DateTime<Utc>>,
    /// Requests in a row that failed.
    failures: u32,
    /// Not before (after a failure).
    retry_at: Option<Instant>,
    /// Its partition leaves this worker (its shard moves, the worker stops) but goes on:
    /// the subscription stays for whoever runs it next (its offset records it).
    handed_over: bool,
}

#[derive(Debug)]
enum Todo {
    Create(Arc<PartitionId>),
    Renew(Arc<PartitionId>, String),
    Reauthorize(Arc<PartitionId>, String),
    /// A subscription (with the partition's user, for the mailbox limit) to delete.
    Delete(Arc<PartitionId>, String),
}

#[derive(Default)]
struct Table {
    subs: FxHashMap<Arc<PartitionId>, Sub>,
    ids: HashMap<String, Arc<PartitionId>>,
    todo: VecDeque<Todo>,
}

/// The worker's subscriptions.
pub(super) struct Subscriptions {
    pub spec: NotificationSpec,
    table: Mutex<Table>,
    wake: Notify,
}

impl Subscriptions {
    pub fn new(spec: NotificationSpec) -> Self {
        Self {
            spec,
            table: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// `id` runs here: it gets a subscription, if Graph offers one for it.
    pub fn want(&self, id: &Arc<PartitionId>) {
        if max_lifetime_of(id).is_none() {
            return;
        }
        let mut t = self.table.lock();
        if t.subs.contains_key(&**id) {
            return;
        }
        t.subs.insert(id.clone(), Sub::default());
        t.todo.push_back(Todo::Create(id.clone()));
        drop(t);
        self.wake.notify_one();
    }

    /// `id` ended here: its subscription is deleted, unless it was handed over.
    pub fn release(&self, id: &PartitionId) {
        let mut t = self.table.lock();
        let Some((key, sub)) = t.subs.remove_entry(id) else {
            return;
        };
        if let Some(s) = sub.id {
            t.ids.remove(&s);
            if !sub.handed_over {
                t.todo.push_back(Todo::Delete(key, s));
                drop(t);
                self.wake.notify_one();
            }
        }
    }

    /// The partitions `leaving` says go on elsewhere (their shard moves) or later (the
    /// worker stops): their subscriptions are kept when they end here.
    pub fn hand_over(&self, leaving: impl Fn(&PartitionId) -> bool) {
        for (p, sub) in self.table.lock().subs.iter_mut() {
            if leaving(p) {
                sub.handed_over = true;
            }
        }
    }

    /// The subscriptions recorded in the offsets of partitions this worker takes: reused,
    /// unless expired (or about to: then a new one is made, the old one left to expire).
    pub fn adopt<'a>(
        &self,
        offsets: impl IntoIterator<Item = (&'a Arc<PartitionId>, &'a SourceOffset)>,
    ) {
        let soon = Utc::now() + chrono::Duration::minutes(5);
        let mut t = self.table.lock();
        for (p, o) in offsets {
            let Some(r) = o.subscription.as_deref() else {
                continue;
            };
            let Some(expires) = DateTime::from_timestamp(r.expires, 0).filter(|e| *e > soon) else {
                continue;
            };
            if max_lifetime_of(p).is_none() {
                continue;
            }
            if let Some(old) = t.subs.get(&**p).and_then(|s| s.id.clone()) {
                t.ids.remove(&old);
            }
            t.subs.insert(
                p.clone(),
                Sub {
                    id: Some(r.id.clone()),
                    expires: Some(expires),
                    ..Sub::default()
                },
            );
            t.ids.insert(r.id.clone(), p.clone());
        }
    }

    /// What `id`'s offset records of its subscription (written with every offset).
    pub fn record_of(&self, id: &PartitionId) -> Option<Box<SubscriptionRef>> {
        let t = self.table.lock();
        let s = t.subs.get(id)?;
        Some(Box::new(SubscriptionRef {
            id: s.id.clone()?,
            expires: s.expires?.timestamp(),
        }))
    }

    /// The partition a subscription is for.
    pub fn partition_of(&self, subscription: &str) -> Option<Arc<PartitionId>> {
        self.table.lock().ids.get(subscription).cloned()
    }

    /// `id` has a live subscription (so it is polled at the longer interval).
    pub fn covers(&self, id: &PartitionId) -> bool {
        let now = Utc::now();
        self.table
            .lock()
            .subs
            .get(id)
            .is_some_and(|s| s.id.is_some() && s.expires.is_some_and(|e| e > now))
    }

    /// A lifecycle event for `id`'s subscription.
    pub fn lifecycle(&self, id: &Arc<PartitionId>, event: Lifecycle) {
        let mut t = self.table.lock();
        let Some(sub) = t.subs.get_mut(&**id) else {
            return;
        };
        let todo = match (event, sub.id.clone()) {
            (Lifecycle::Removed, Some(old)) => {
                sub.id = None;
                sub.expires = None;
                t.ids.remove(&old);
                Todo::Create(id.clone())
            }
            (Lifecycle::Reauthorize, Some(s)) => Todo::Reauthorize(id.clone(), s),
            (_, None) => return,
        };
        t.todo.push_back(todo);
        drop(t);
        self.wake.notify_one();
    }

    /// How many are live.
    fn active(&self) -> usize {
        self.table.lock().ids.len()
    }

    /// The lifetime asked for `max` (the resource's longest).
    fn lifetime(&self, max: Duration) -> Duration {
        let max = self.spec.max_lifetime.map_or(max, |m| m.min(max));
        if max > MARGIN * 2 {
            max - MARGIN
        } else {
            max
        }
    }

    /// Renewed this long before it expires.
    fn renew_margin(&self, lifetime: Duration) -> Duration {
        self.spec.renew_before.min(lifetime / 2)
    }

    /// How often renewals are looked for: often enough for the shortest lifetime asked.
    fn scan_interval(&self) -> Duration {
        self.spec.max_lifetime.map_or(RENEW_SCAN, |l| {
            (l / 8).clamp(Duration::from_secs(1), RENEW_SCAN)
        })
    }

    /// Up to `n` requests due now; renewals found by a scan when `scan`.
    fn next(&self, n: usize, scan: bool) -> Vec<Todo> {
        let mut t = self.table.lock();
        if scan {
            let now = Utc::now();
            let due: Vec<Todo> = t
                .subs
                .iter()
                .filter_map(|(p, s)| {
                    let (id, expires) = (s.id.as_ref()?, s.expires?);
                    let max = max_lifetime_of(p)?;
                    let margin = self.renew_margin(self.lifetime(max));
                    let margin = chrono::Duration::from_std(margin).ok()?;
                    (expires - margin <= now).then(|| Todo::Renew(p.clone(), id.clone()))
                })
                .collect();
            t.todo.extend(due);
        }
        let now = Instant::now();
        let mut out = Vec::new();
        let mut later = VecDeque::new();
        while out.len() < n {
            let Some(todo) = t.todo.pop_front() else {
                break;
            };
            let waiting = match &todo {
                Todo::Create(p) | Todo::Renew(p, _) | Todo::Reauthorize(p, _) => t
                    .subs
                    .get(&**p)
                    .and_then(|s| s.retry_at)
                    .is_some_and(|at| at > now),
                Todo::Delete(..) => false,
            };
            if waiting {
                later.push_back(todo);
            } else {
                out.push(todo);
            }
        }
        t.todo.extend(later);
        out
    }

    /// A request for `p` failed: retried after a backoff growing with the failures in a row.
    fn failed(&self, p: &PartitionId, action: &str, why: &str, retry: Option<Todo>) {
        metrics::subscription_failed(p, action, why);
        let mut t = self.table.lock();
        if let Some(sub) = t.subs.get_mut(p) {
            sub.failures += 1;
            let wait = Duration::from_secs(5).saturating_mul(1 << sub.failures.min(8));
            sub.retry_at = Some(Instant::now() + wait.min(Duration::from_secs(900)));
            if let Some(r) = retry {
                t.todo.push_back(r);
            }
        }
    }
}

/// How long after the worker starts, and then how often, it looks for subscriptions left
/// behind (see [`sweep`]).
const SWEEP_FIRST: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Creates, renews and deletes the worker's subscriptions until it stops.
pub(super) async fn run(shared: Arc<Shared>) {
    let Some(subs) = shared.subscriptions.clone() else {
        return;
    };
    let mut last_scan = Instant::now();
    let mut next_sweep = Instant::now() + subs.spec.sweep_after.unwrap_or(SWEEP_FIRST);
    loop {
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + SWEEP_EVERY;
            let s = shared.clone();
            // In the background: a listing of 100,000 subscriptions is 1,000 pages.
            super::supervisor::spawn_task(&shared, async move { sweep(&s).await });
        }
        let scan = last_scan.elapsed() >= subs.scan_interval();
        if scan {
            last_scan = Instant::now();
        }
        let batch = subs.next(CONCURRENCY, scan);
        let busy = !batch.is_empty();
        futures_util::future::join_all(batch.into_iter().map(|t| carry_out(&shared, &subs, t)))
            .await;
        metrics::subscriptions_active(subs.active());
        if busy {
            continue;
        }
        tokio::select! {
            _ = subs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

async fn carry_out(shared: &Shared, subs: &Subscriptions, todo: Todo) {
    let (client, host) = (&shared.client, shared.spec.graph_host.as_str());
    match todo {
        Todo::Create(p) => {
            let Some((resource, max)) = resource_of(&p) else {
                return;
            };
            let lifetime = subs.lifetime(max);
            let expiration = Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or_default();
            let new = NewSubscription {
                resource: &resource,
                notification_url: &subs.spec.url,
                lifecycle_url: Some(&subs.spec.lifecycle_url),
                client_state: subs.spec.client_state.expose(),
                expiration,
            };
            match graph::create(client, host, p.user(), &new).await {
                Ok(s) => {
                    let mut t = subs.table.lock();
                    match t.subs.get_mut(&*p) {
                        // Released meanwhile: not wanted any more.
                        None => t.todo.push_back(Todo::Delete(p.clone(), s.id.clone())),
                        Some(sub) => {
                            *sub = Sub {
                                id: Some(s.id.clone()),
                                expires: Some(s.expiration_date_time),
                                ..Sub::default()
                            };
                            t.ids.insert(s.id.clone(), p.clone());
                        }
                    }
                    drop(t);
                    let expires = s.expiration_date_time.to_rfc3339();
                    metrics::subscription_changed(&p, "created", &s.id, &expires);
                    // A poll now: it reads what changed before the subscription existed
                    // (Graph notifies only of later changes), and its offset records the
                    // subscription.
                    poke(shared, &p);
                }
                Err(e) => subs.failed(&p, "create", &e.to_string(), Some(Todo::Create(p.clone()))),
            }
        }
        Todo::Renew(p, id) => {
            let Some(max) = max_lifetime_of(&p) else {
                return;
            };
            let expiration =
                Utc::now() + chrono::Duration::from_std(subs.lifetime(max)).unwrap_or_default();
            match graph::renew(client, host, p.user(), &id, expiration).await {
                Ok(Some(s)) => {
                    if let Some(sub) = subs.table.lock().subs.get_mut(&*p) {
                        sub.expires = Some(s.expiration_date_time);
                        sub.failures = 0;
                    }
                    metrics::subscription_changed(
                        &p,
                        "renewed",
                        &id,
                        &s.expiration_date_time.to_rfc3339(),
                    );
                }
                // Gone (expired, removed): a new one.
                Ok(None) => {
                    subs.lifecycle(&p, Lifecycle::Removed);
                    metrics::subscription_changed(&p, "recreated", &id, "");
                }
                Err(e) => subs.failed(&p, "renew", &e.to_string(), None),
            }
        }
        Todo::Reauthorize(p, id) => match graph::reauthorize(client, host, p.user(), &id).await {
            Ok(()) => metrics::subscription_changed(&p, "reauthorized", &id, ""),
            Err(e) => subs.failed(
                &p,
                "reauthorize",
                &e.to_string(),
                Some(Todo::Reauthorize(p.clone(), id)),
            ),
        },
        Todo::Delete(p, id) => match graph::delete(client, host, p.user(), &id).await {
            Ok(()) => metrics::subscription_changed(&p, "deleted", &id, ""),
            // Left to expire: at most the resource's lifetime.
            Err(e) => metrics::subscription_failed(&p, "delete", &e.to_string()),
        },
    }
}

/// Deletes subscriptions left behind: the app's subscriptions posting to this connector's
/// URL, for a user of a shard this worker owns, that no partition here holds (made by a
/// worker killed before its partition's next commit recorded them, or for a partition
/// removed meanwhile). Subscriptions made in the last ten minutes are left alone (one being
/// made here right now is not in the table yet).
async fn sweep(shared: &Shared) {
    let Some(subs) = &shared.subscriptions else {
        return;
    };
    let (client, host) = (&shared.client, shared.spec.graph_host.as_str());
    let all = match graph::list(client, host).await {
        Ok(all) => all,
        Err(e) => {
            let p = PartitionId::GroupMembers {
                group: String::new(),
            };
            metrics::subscription_failed(&p, "list", &e.to_string());
            return;
        }
    };
    let young = |e: DateTime<Utc>, resource: &str| {
        let max = resource_max(resource);
        let lifetime = chrono::Duration::from_std(subs.lifetime(max)).unwrap_or_default();
        e > Utc::now() + lifetime - chrono::Duration::minutes(10)
    };
    let mut left = 0;
    for s in all {
        if s.notification_url != subs.spec.url || young(s.expiration_date_time, &s.resource) {
            continue;
        }
        let Some(user) = graph::user_of(&s.resource) else {
            continue;
        };
        let owner = Arc::new(PartitionId::CalendarList {
            user: user.to_string(),
        });
        if !shared.sinks.owns(&owner) || subs.partition_of(&s.id).is_some() {
            continue;
        }
        match graph::delete(client, host, user, &s.id).await {
            Ok(()) => {
                left += 1;
                metrics::subscription_changed(&owner, "swept", &s.id, "");
            }
            Err(e) => metrics::subscription_failed(&owner, "sweep", &e.to_string()),
        }
    }
    tracing::debug!(deleted = left, "subscriptions left behind swept");
}

/// The longest lifetime of the resource a subscription names (events, else To Do tasks).
fn resource_max(resource: &str) -> Duration {
    if resource.to_ascii_lowercase().contains("/todo/") {
        Duration::from_secs(4_230 * 60)
    } else {
        Duration::from_secs(10_080 * 60)
    }
}
