//! Control routes for change notifications: every subscription (so tests can check nothing
//! leaked), lifecycle events on demand, delivery faults, and the Event Hubs outbox.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, ok, R, S};
use crate::notify::{self, NotificationFaults};
use crate::subscriptions::{LifecycleEvent, Target};
use crate::{SimError, SimState};

pub(super) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/subscriptions", get(list))
        .route("/subscriptions/{id}/lifecycle", post(lifecycle))
        .route(
            "/notifications/faults",
            get(get_faults).put(put_faults).delete(clear_faults),
        )
        .route("/eventhub", get(drain_eventhub))
}

/// `GET /_sim/subscriptions`: every live subscription, of every app, in creation order.
async fn list(State(sim): S) -> R {
    notify::sweep(&sim);
    let subs = sim.subscriptions.lock();
    let all: Vec<Value> = subs
        .all()
        .into_iter()
        .map(|s| {
            let (kind, collection) = match &s.target {
                Target::Events { calendar, .. } => ("events", calendar.to_string()),
                Target::Tasks { list, .. } => ("tasks", list.to_string()),
            };
            json!({
                "id": s.id,
                "resource": s.resource,
                "kind": kind,
                "mailbox": s.target.user_id(),
                "collection": collection,
                "changeType": s.change_type,
                "notificationUrl": s.notification_url,
                "lifecycleNotificationUrl": s.lifecycle_url,
                "expirationDateTime": s.expires_str(),
                "applicationId": s.client_id,
                "tenant": s.tenant,
                "immutableIds": s.immutable_ids,
                "needsReauthorization": s.reauthorize_since.is_some(),
                "notificationsSent": s.sent,
            })
        })
        .collect();
    ok(json!(all))
}

/// `POST /_sim/subscriptions/{id}/lifecycle {"event": "missed" | "subscriptionRemoved" |
/// "reauthorizationRequired"}`: sends that lifecycle notification. `subscriptionRemoved`
/// deletes the subscription; `reauthorizationRequired` marks it until `reauthorize` or a
/// renewal (its notifications pause after `reauthorization_grace_secs`).
async fn lifecycle(State(sim): S, Path(id): Path<String>, b: Option<Json<Value>>) -> R {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct L {
        event: LifecycleEvent,
    }
    let l: L = body(b)?;
    let s = {
        let mut subs = sim.subscriptions.lock();
        let s = subs
            .get_mut(&id)
            .ok_or_else(|| SimError::NotFound(format!("subscription {id}")))?;
        if s.lifecycle_url.is_none() {
            return Err(SimError::Conflict(format!(
                "subscription {id} has no lifecycleNotificationUrl"
            )));
        }
        match l.event {
            LifecycleEvent::ReauthorizationRequired => {
                s.reauthorize_since
                    .get_or_insert_with(std::time::Instant::now);
                s.clone()
            }
            LifecycleEvent::SubscriptionRemoved => subs.remove(&id).expect("present above"),
            LifecycleEvent::Missed => s.clone(),
        }
    };
    if l.event == LifecycleEvent::SubscriptionRemoved {
        sim.stats.lock().notifications.subscriptions_removed += 1;
        notify::sync_journal(&sim);
    }
    notify::send_lifecycle(&sim, &s, l.event);
    ok(json!({"sent": l.event.as_str(), "subscription": id}))
}

async fn get_faults(State(sim): S) -> R {
    ok(json!(sim.notification_faults.lock().spec))
}

/// `PUT /_sim/notifications/faults` replaces every delivery fault (see [`NotificationFaults`]).
async fn put_faults(State(sim): S, b: Option<Json<Value>>) -> R {
    let f: NotificationFaults = body(b)?;
    f.check().map_err(SimError::BadRequest)?;
    sim.notification_faults.lock().set(f.clone());
    ok(json!(f))
}

async fn clear_faults(State(sim): S) -> R {
    sim.notification_faults
        .lock()
        .set(NotificationFaults::default());
    ok(json!({"ok": true}))
}

/// `GET /_sim/eventhub`: takes every message waiting in the Event Hubs outbox (bodies in
/// base64, as they are bytes on a hub).
async fn drain_eventhub(State(sim): S) -> R {
    let msgs: Vec<Value> = sim
        .eventhub
        .drain()
        .into_iter()
        .map(|m| {
            json!({
                "hub": m.hub,
                "subscriptionId": m.subscription_id,
                "body": base64::engine::general_purpose::STANDARD.encode(&m.body),
            })
        })
        .collect();
    ok(json!(msgs))
}
