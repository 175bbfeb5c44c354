//! Change notifications delivered through Azure Event Hubs (`notifications.delivery =
//! "eventhub"`; issue 16; README, "Change notifications").
//!
//! Graph sends each notification collection to the hub named by the subscriptions'
//! `EventHub:` URL; the worker reads the hub through its Kafka endpoint
//! (`sink::notifications`) and hands each message to the same [`Inbox`] the webhook uses
//! (same `clientState` check, same counters; change notifications and lifecycle events
//! apart, as the webhook's two paths). Graph's validation message (every field `NA`, put into
//! the hub at each new subscription) is counted and ignored.
//!
//! A message's offset is committed only once the rounds it triggered are committed: each
//! partition it names (with the right client state, known here) is poked at once, and the
//! message is *done* once every such partition has completed a round that started after the
//! poke (it is parked again, not due, and its `fresh_at` is later than the poke), or left this
//! worker, or the message has waited `graph.poll_interval_with_notifications` for it (its
//! safety-net poll is due by then). Every second the highest contiguous done offset of each
//! hub partition is committed. A worker killed in between reads those messages again: a
//! replay only triggers rounds again.
//!
//! [`Inbox`]: super::notifications::Inbox

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::metrics;
use crate::sink::notifications::{HubCommit, HubConsumer, HubMessage, HubOptions};
use crate::source::PartitionId;

use super::scheduler::Parked;
use super::supervisor::{poke, Poked};
use super::{Shared, Tracked};

/// How often messages are checked for their rounds.
const CHECK: Duration = Duration::from_millis(50);
/// How often done offsets are committed.
const COMMIT: Duration = Duration::from_secs(1);
/// How long a notice of a subscription not known here (yet) is tried again: a worker
/// starting reads the hub before its shards' partitions (and their subscriptions, read with
/// their offsets) are up.
const GRACE: Duration = Duration::from_secs(20);

/// Reads the hub until the worker stops.
pub(super) async fn run(shared: Arc<Shared>, opts: HubOptions) {
    let Some(subs) = shared.subscriptions.clone() else {
        return;
    };
    let started = tokio::task::spawn_blocking(move || HubConsumer::start(&opts)).await;
    let (consumer, mut rx) = match started {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return metrics::eventhub_unavailable(&e.to_string()),
        Err(e) => return metrics::eventhub_unavailable(&e.to_string()),
    };
    let digest: [u8; 32] = Sha256::digest(subs.spec.client_state.expose().as_bytes()).into();
    let mut book = Book::default();
    // A round not done by then (its partition backing off, failing) is not waited for any
    // longer: the partition's safety-net poll is due by then anyway.
    let cap = subs.spec.poll_interval.max(Duration::from_secs(60));
    let done = |p: &PartitionId, at: Instant| at.elapsed() > cap || settled(&shared, p, at);
    let mut check = tokio::time::interval(CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed_at = Instant::now();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => {
                    let (waits, later) = take(&shared, &digest, &m);
                    book.add(m.epoch, m.partition, m.offset, waits, later);
                }
                None => break,
            },
            _ = check.tick() => {
                book.retry(|id| resolve(&shared, id));
                book.settle(done);
                if committed_at.elapsed() >= COMMIT {
                    committed_at = Instant::now();
                    if let Some(c) = book.commits() {
                        consumer.commit(c);
                    }
                }
            }
        }
    }
    // What is done by now is committed; the rest is read again by whoever reads next.
    book.settle(done);
    if let Some(c) = book.commits() {
        consumer.commit(c);
    }
    let _ = tokio::task::spawn_blocking(move || consumer.stop()).await;
}

/// A partition to wait for, with the time of its poke (what its next completed round must
/// follow).
type Wait = (Arc<PartitionId>, Instant);
/// A notice of a subscription not known here yet, tried again until the deadline.
type Later = (String, Instant);

/// Pokes the partition of subscription `id`, if it runs here.
fn resolve(shared: &Shared, id: &str) -> Option<Wait> {
    let p = shared.subscriptions.as_ref()?.partition_of(id)?;
    // Poked here too (the inbox's worker pokes it again, coalesced), so that the round
    // waited for is one that starts after the notification.
    match poke(shared, &p) {
        Poked::NotHere => None,
        _ => Some((p, Instant::now())),
    }
}

/// Hands message `m` to the inbox and pokes the partitions it names; returns them, and the
/// subscriptions not known here yet.
fn take(shared: &Shared, digest: &[u8; 32], m: &HubMessage) -> (Vec<Wait>, Vec<Later>) {
    if shared.subscriptions.is_none() {
        return (Vec::new(), Vec::new());
    }
    let items = match serde_json::from_slice::<Value>(&m.payload) {
        Ok(Value::Object(mut o)) => match o.remove("value") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    if items.is_empty() {
        metrics::eventhub_message("malformed", m.partition, m.offset);
        return (Vec::new(), Vec::new());
    }
    let (mut changes, mut lifecycle) = (Vec::new(), Vec::new());
    for item in items {
        if is_validation(&item) {
            metrics::eventhub_message("validation", m.partition, m.offset);
        } else if item.get("lifecycleEvent").is_some() {
            lifecycle.push(item);
        } else {
            changes.push(item);
        }
    }
    let (mut waits, mut later) = (Vec::new(), Vec::new());
    for (items, is_lifecycle) in [(changes, false), (lifecycle, true)] {
        if items.is_empty() {
            continue;
        }
        metrics::eventhub_message("notices", m.partition, m.offset);
        // Partitions first: the inbox takes the items.
        for item in &items {
            let state = item.get("clientState").and_then(Value::as_str);
            let presented: [u8; 32] = Sha256::digest(state.unwrap_or_default().as_bytes()).into();
            if !bool::from(presented.ct_eq(digest)) {
                continue;
            }
            let Some(id) = item.get("subscriptionId").and_then(Value::as_str) else {
                continue;
            };
            match resolve(shared, id) {
                Some(w) => waits.push(w),
                None => later.push((id.to_string(), Instant::now() + GRACE)),
            }
        }
        let body = serde_json::json!({ "value": items }).to_string();
        // A closed inbox (the worker stopping) or a malformed item: counted by the inbox.
        // Taken as forwarded: the worker keeps its own partitions' notices and counts the
        // others `unknown_subscription` (the workers' webhook forwarding is the server's; with
        // the hub, each worker of the group reads some of its partitions).
        let _ = shared
            .status
            .notifications
            .receive(body.as_bytes(), is_lifecycle, true);
    }
    (waits, later)
}

/// Graph's validation message: every field `NA`, a `changeType` of `Validation: …`
/// (concepts/change-notifications-delivery-event-hubs.md, "Handling validation
/// notifications"): to be ignored.
fn is_validation(item: &Value) -> bool {
    let na = |k: &str| item.get(k).and_then(Value::as_str) == Some("NA");
    let change = item.get("changeType").and_then(Value::as_str).unwrap_or("");
    na("subscriptionId") && (change.starts_with("Validation:") || na("clientState"))
}

/// Whether partition `p`, poked at `at`, has completed a round that started since: it is
/// parked, not due for a notification, and its last round ended after `at`; or it no
/// longer runs here.
fn settled(shared: &Shared, p: &PartitionId, at: Instant) -> bool {
    {
        let tracked = shared.tracked.lock();
        match tracked.get(p) {
            None | Some(Tracked::Ended) => return true,
            Some(Tracked::Task(_)) => return false,
            Some(Tracked::Parked(Parked { poked: true, .. })) => return false,
            Some(Tracked::Parked(_)) => {}
        }
    }
    shared.status.fresh_at.lock().get(p).is_none_or(|t| *t > at)
}

/// The messages read and not committed yet, by hub partition, in offset order.
#[derive(Default)]
struct Book {
    epoch: u64,
    partitions: BTreeMap<i32, VecDeque<Entry>>,
}

struct Entry {
    offset: i64,
    /// Partitions whose rounds the message still waits for.
    waits: Vec<Wait>,
    /// Subscriptions it names that are not known here yet.
    later: Vec<Later>,
}

impl Entry {
    fn done(&self) -> bool {
        self.waits.is_empty() && self.later.is_empty()
    }
}

impl Book {
    fn add(
        &mut self,
        epoch: u64,
        partition: i32,
        offset: i64,
        waits: Vec<Wait>,
        later: Vec<Later>,
    ) {
        // A rebalance: what was read before is read again from the committed offsets.
        if epoch != self.epoch {
            self.epoch = epoch;
            self.partitions.clear();
        }
        self.partitions
            .entry(partition)
            .or_default()
            .push_back(Entry {
                offset,
                waits,
                later,
            });
    }

    /// Tries the subscriptions not known yet again: known now, they become waits; past
    /// their deadline, they are given up (another worker's, or gone).
    fn retry(&mut self, mut resolve: impl FnMut(&str) -> Option<Wait>) {
        let now = Instant::now();
        for q in self.partitions.values_mut() {
            for e in q.iter_mut().filter(|e| !e.later.is_empty()) {
                let mut found = Vec::new();
                e.later.retain(|(id, deadline)| match resolve(id) {
                    Some(w) => {
                        found.push(w);
                        false
                    }
                    None => *deadline > now,
                });
                e.waits.extend(found);
            }
        }
    }

    fn settle(&mut self, mut done: impl FnMut(&PartitionId, Instant) -> bool) {
        for q in self.partitions.values_mut() {
            for e in q.iter_mut() {
                e.waits.retain(|(p, at)| !done(p, *at));
            }
        }
    }

    /// The offsets to commit now: after each partition's leading done messages.
    fn commits(&mut self) -> Option<HubCommit> {
        let mut next = BTreeMap::new();
        for (p, q) in &mut self.partitions {
            let mut last = None;
            while q.front().is_some_and(Entry::done) {
                last = q.pop_front().map(|e| e.offset);
            }
            if let Some(o) = last {
                next.insert(*p, o + 1);
            }
        }
        (!next.is_empty()).then_some(HubCommit {
            epoch: self.epoch,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(u: &str) -> Arc<PartitionId> {
        Arc::new(PartitionId::Tasks {
            user: u.into(),
            list: "l".into(),
        })
    }

    #[test]
    fn only_the_leading_done_messages_are_committed() {
        let mut b = Book::default();
        let t0 = Instant::now();
        b.add(1, 0, 10, vec![(part("a"), t0)], Vec::new());
        b.add(1, 0, 11, Vec::new(), Vec::new());
        b.add(1, 1, 5, vec![(part("b"), t0)], Vec::new());
        b.add(1, 1, 6, Vec::new(), Vec::new());
        assert_eq!(b.commits(), None);
        // `a`'s round is done, `b`'s not yet.
        b.settle(|p, _| *p == *part("a"));
        let c = b.commits().unwrap();
        assert_eq!(c.epoch, 1);
        assert_eq!(c.next, BTreeMap::from([(0, 12)]));
        assert_eq!(b.commits(), None);
        b.settle(|_, _| true);
        assert_eq!(b.commits().unwrap().next, BTreeMap::from([(1, 7)]));
        // A rebalance forgets what was pending.
        b.add(1, 2, 3, vec![(part("c"), t0)], Vec::new());
        b.add(2, 0, 12, Vec::new(), Vec::new());
        assert_eq!(b.commits().unwrap().next, BTreeMap::from([(0, 13)]));
    }

    #[test]
    fn an_unknown_subscription_waits_until_known_or_its_deadline() {
        let mut b = Book::default();
        let now = Instant::now();
        let soon = now + Duration::from_secs(60);
        b.add(1, 0, 1, Vec::new(), vec![("s1".into(), soon)]);
        b.add(1, 0, 2, Vec::new(), vec![("gone".into(), now)]);
        b.retry(|_| None);
        assert_eq!(b.commits(), None);
        // Known now: its partition is waited for, then done.
        b.retry(|id| (id == "s1").then(|| (part("a"), Instant::now())));
        assert_eq!(b.commits(), None);
        b.settle(|_, _| true);
        assert_eq!(b.commits().unwrap().next, BTreeMap::from([(0, 3)]));
    }

    #[test]
    fn graphs_validation_message_is_recognised() {
        let v: Value = serde_json::from_str(
            r#"{"subscriptionId":"NA","subscriptionExpirationDateTime":"NA","clientState":"NA",
                "changeType":"Validation: Testing client application reachability for subscription Request-Id: 522a8e7e-096a-494c-aaf1-ac0dcfca45b7",
                "resource":"NA","resourceData":{"@odata.type":"NA","@odata.id":"NA","id":"NA"}}"#,
        )
        .unwrap();
        assert!(is_validation(&v));
        let n: Value = serde_json::from_str(
            r#"{"subscriptionId":"s1","clientState":"x","changeType":"updated"}"#,
        )
        .unwrap();
        assert!(!is_validation(&n));
    }
}
