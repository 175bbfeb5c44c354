//! Change notifications as triggers (issue 16; README, "Change notifications").
//!
//! Graph posts a notification when a subscribed resource changes; the HTTP server hands it to
//! the worker's [`Inbox`] (in the status, so the server needs nothing else of the worker),
//! which checks its `clientState` and queues it; [`run`] maps it to its partition by the
//! subscription id and starts that partition's round at once (`supervisor::poke`: coalesced,
//! many notifications one round). A notification is a trigger, never data: records still
//! come only from the partition's delta pages, under every rule that holds for polls.
//!
//! The subscriptions themselves (one per partition Graph offers them for: created once the
//! partition runs, renewed before they expire, deleted once it ends) are in
//! `subscriptions.rs`.
//!
//! Unknown subscriptions, a wrong `clientState`, malformed bodies and replays (the same
//! change of the same item delivered again) are counted and dropped. Lifecycle events:
//! `missed` starts a round; `subscriptionRemoved` recreates the subscription and starts a
//! round; `reauthorizationRequired` reauthorizes it and starts a round.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;

use crate::graph::subscriptions::{parse_notices, Notice};
use crate::metrics;

use super::subscriptions::Lifecycle;
use super::supervisor::{poke, Poked};
use super::Shared;

/// Notifications queued between the HTTP server and the worker at most: past that, Graph's
/// posts are still answered (`202`) but counted `overloaded` and dropped, and the safety-net
/// polls catch up.
const QUEUE: usize = 65_536;

/// Recent changes remembered to tell replays (Graph delivering the same change again).
const REMEMBERED: usize = 16_384;

/// Where the HTTP server hands Graph's posts: open while a worker with `[notifications]`
/// runs.
#[derive(Default)]
pub struct Inbox {
    door: Mutex<Option<Door>>,
}

struct Door {
    /// SHA-256 of the client state: compared in constant time, never kept in the clear here.
    digest: [u8; 32],
    tx: mpsc::Sender<Inbound>,
    /// Whether a subscription is this worker's.
    ours: Ours,
}

/// Whether a subscription id is one of this worker's.
pub(super) type Ours = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One notification on its way to the worker.
pub(super) struct Inbound {
    pub notice: Notice,
    /// Posted to the lifecycle URL.
    pub lifecycle: bool,
}

/// What a post held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    /// Queued for the worker.
    pub accepted: usize,
    /// Dropped: a wrong client state, or the queue full.
    pub dropped: usize,
    /// Of other workers' subscriptions (the ingress in front of the workers picks any): for
    /// the caller to hand to the others (see [`Inbox::receive`]).
    pub foreign: Vec<Notice>,
}

/// Why a post was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("change notifications are not enabled on this worker")]
    Closed,
    #[error("not a notification collection: {0}")]
    Malformed(String),
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Inbox {
    /// Takes a post of Graph's (`lifecycle`: to the lifecycle URL): each notification with
    /// the right client state is queued for the worker, unless its subscription is another
    /// worker's and the post was not `forwarded` by one already: those are handed back, to
    /// be forwarded to the other workers (each keeps those of its partitions).
    pub fn receive(
        &self,
        body: &[u8],
        lifecycle: bool,
        forwarded: bool,
    ) -> Result<Received, InboxError> {
        let kind = if lifecycle { "lifecycle" } else { "change" };
        let door = self.door.lock();
        let Some(door) = door.as_ref() else {
            return Err(InboxError::Closed);
        };
        let notices = parse_notices(body).map_err(|e| {
            metrics::notification_received(kind, "malformed", "");
            InboxError::Malformed(e.to_string())
        })?;
        let mut r = Received::default();
        for notice in notices {
            let presented = digest(notice.client_state.as_deref().unwrap_or_default());
            if !bool::from(presented.ct_eq(&door.digest)) {
                metrics::notification_received(kind, "wrong_client_state", &notice.subscription_id);
                r.dropped += 1;
                continue;
            }
            if !forwarded && !(door.ours)(&notice.subscription_id) {
                r.foreign.push(notice);
                continue;
            }
            let id = notice.subscription_id.clone();
            match door.tx.try_send(Inbound { notice, lifecycle }) {
                Ok(()) => r.accepted += 1,
                Err(_) => {
                    metrics::notification_received(kind, "overloaded", &id);
                    r.dropped += 1;
                }
            }
        }
        Ok(r)
    }

    /// Whether the worker takes notifications (the server answers Graph's validation only
    /// then).
    pub fn is_open(&self) -> bool {
        self.door.lock().is_some()
    }

    /// Opens the door for a worker whose notifications carry `client_state` and whose
    /// subscriptions `ours` tells.
    pub(super) fn open(&self, client_state: &str, ours: Ours) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(QUEUE);
        *self.door.lock() = Some(Door {
            digest: digest(client_state),
            tx,
            ours,
        });
        rx
    }

    /// Closes it (the worker stops).
    pub(super) fn close(&self) {
        *self.door.lock() = None;
    }
}

/// The last changes seen, to drop replays.
#[derive(Default)]
struct Recent {
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl Recent {
    /// `true` the first time `key` is seen (among the last [`REMEMBERED`]).
    fn first(&mut self, key: u64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// What makes a change a replay of another: the same subscription, change, item and
/// version (an `@odata.etag`; without one two changes cannot be told apart, so none is a
/// replay).
fn replay_key(n: &Notice) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let etag = n.resource_data.as_ref()?.etag.as_deref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&n.subscription_id, &n.change_type, &n.resource, etag).hash(&mut h);
    Some(h.finish())
}

/// Carries out the notifications queued in `rx` until the worker stops.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Inbound>) {
    let Some(subs) = shared.subscriptions.clone() else {
        return;
    };
    let mut recent = Recent::default();
    loop {
        let inbound = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let Inbound { notice, lifecycle } = inbound;
        let kind = if lifecycle { "lifecycle" } else { "change" };
        let id = &notice.subscription_id;
        let Some(partition) = subs.partition_of(id) else {
            metrics::notification_received(kind, "unknown_subscription", id);
            continue;
        };
        if !lifecycle && replay_key(&notice).is_some_and(|k| !recent.first(k)) {
            metrics::notification_received(kind, "replayed", id);
            continue;
        }
        metrics::notification_received(kind, "accepted", id);
        if lifecycle {
            match notice.lifecycle_event.as_deref() {
                Some("subscriptionRemoved") => subs.lifecycle(&partition, Lifecycle::Removed),
                Some("reauthorizationRequired") => {
                    subs.lifecycle(&partition, Lifecycle::Reauthorize)
                }
                // `missed`: notifications were lost; the round finds what they said.
                _ => {}
            }
        }
        let effect = match poke(&shared, &partition) {
            Poked::Woken => "woken",
            Poked::AlreadyDue => "already_due",
            Poked::Running => "running",
            Poked::NotHere => "not_here",
        };
        metrics::notification_triggered(&partition, effect);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_inbox_checks_the_client_state_and_queues_the_rest() {
        let inbox = Inbox::default();
        assert!(matches!(
            inbox.receive(b"{}", false, false),
            Err(InboxError::Closed)
        ));
        let mut rx = inbox.open(
            "a-client-state-of-some-length",
            Arc::new(|id: &str| id != "s4"),
        );
        let body = br#"{"value":[
            {"subscriptionId":"s1","clientState":"a-client-state-of-some-length","changeType":"updated"},
            {"subscriptionId":"s2","clientState":"forged","changeType":"updated"},
            {"subscriptionId":"s3","changeType":"created"},
            {"subscriptionId":"s4","clientState":"a-client-state-of-some-length","changeType":"deleted"}]}"#;
        let r = inbox.receive(body, false, false).unwrap();
        assert_eq!((r.accepted, r.dropped), (1, 2));
        // Another worker's: handed back to be forwarded, as Graph sent it.
        assert_eq!(r.foreign.len(), 1);
        let again = serde_json::json!({ "value": r.foreign }).to_string();
        assert!(again.contains("\"clientState\":\"a-client-state-of-some-length\""));
        let got = rx.recv().await.unwrap();
        assert_eq!(got.notice.subscription_id, "s1");
        assert!(!got.lifecycle);
        // Forwarded by another worker: kept, known or not.
        let r = inbox.receive(again.as_bytes(), false, true).unwrap();
        assert_eq!((r.accepted, r.foreign.len()), (1, 0));
        assert_eq!(rx.recv().await.unwrap().notice.subscription_id, "s4");
        assert!(matches!(
            inbox.receive(b"not json", true, false),
            Err(InboxError::Malformed(_))
        ));
        inbox.close();
        assert!(!inbox.is_open());
    }

    #[test]
    fn a_change_seen_again_is_a_replay_and_one_without_etag_never_is() {
        let mut recent = Recent::default();
        let n: Notice = serde_json::from_str(
            r#"{"subscriptionId":"s","changeType":"updated","resource":"Users/u/Events/e",
                "resourceData":{"@odata.etag":"W/\"1\""}}"#,
        )
        .unwrap();
        let k = replay_key(&n).unwrap();
        assert!(recent.first(k));
        assert!(!recent.first(k));
        let mut newer = n.clone();
        newer.resource_data.as_mut().unwrap().etag = Some("W/\"2\"".into());
        assert!(recent.first(replay_key(&newer).unwrap()));
        let mut bare = n;
        bare.resource_data = None;
        assert!(replay_key(&bare).is_none());
    }
}
