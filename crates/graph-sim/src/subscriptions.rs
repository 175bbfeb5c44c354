//! Change-notification subscriptions (`/subscriptions`), as Graph keeps them.
//!
//! A subscription watches one collection: a mailbox's default calendar (`users/{id}/events`),
//! one of its calendars (`users/{id}/calendars/{id}/events`) or one To Do list
//! (`users/{id}/todo/lists/{id}/tasks`). The HTTP side is `http/subscriptions.rs`, delivery
//! is `notify.rs`, the control side `control/subscriptions.rs`.
//!
//! Facts modelled, with their sources:
//! - Lifetimes: Outlook events up to 10,080 minutes (`shared/graph/NOTES.md`, Change
//!   notifications; subscription resource, "Maximum length of subscription per resource
//!   type"), To Do tasks up to 4,230 minutes (NOTES.md). An expired subscription is gone:
//!   "If you don't renew a subscription in time, Microsoft Graph deletes the subscription,
//!   and the app won't receive future change notifications" (concepts/
//!   change-notifications-delivery-webhooks.md, Renew a subscription).
//! - "There is a maximum limit of 1000 active subscriptions for Outlook resources per
//!   mailbox for all applications" (concepts/outlook-change-notifications-overview.md).
//! - `users/{id}/events` covers the default calendar only ("It seems that `me/events` only
//!   subscribes to default calendar", microsoft-graph-docs-contrib issues 51 and 6150);
//!   `calendars/{id}/events` "is viable despite being undocumented" (issue 51).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use crate::model::changes::{Change, ChangeType, ChangedItem};
use crate::model::graph_time;

/// Outlook (event) subscriptions' longest lifetime, in minutes.
pub const OUTLOOK_MAX_MINUTES: i64 = 10_080;
/// To Do (todoTask) subscriptions' longest lifetime, in minutes.
pub const TODO_MAX_MINUTES: i64 = 4_230;

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Events of one calendar of a mailbox.
    Events { user_id: String, calendar: Arc<str> },
    /// Tasks of one To Do list.
    Tasks { user_id: String, list: Arc<str> },
}

impl Target {
    pub fn user_id(&self) -> &str {
        match self {
            Target::Events { user_id, .. } | Target::Tasks { user_id, .. } => user_id,
        }
    }

    /// Longest lifetime Graph grants this kind of resource, in minutes.
    pub fn max_minutes(&self) -> i64 {
        match self {
            Target::Events { .. } => OUTLOOK_MAX_MINUTES,
            Target::Tasks { .. } => TODO_MAX_MINUTES,
        }
    }

    /// Whether it is an Outlook resource (counted against the per-mailbox limit).
    pub fn is_outlook(&self) -> bool {
        matches!(self, Target::Events { .. })
    }

    fn watches(&self, c: &Change) -> bool {
        match (self, &c.item) {
            (Target::Events { user_id, calendar }, ChangedItem::Event { calendar: cal, .. }) => {
                *user_id == c.user_id && calendar == cal
            }
            (Target::Tasks { user_id, list }, ChangedItem::Task { list: l, .. }) => {
                *user_id == c.user_id && list == l
            }
            _ => false,
        }
    }
}

/// A subscription as Graph keeps it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    /// The `resource` as the client sent it (Graph echoes it).
    pub resource: String,
    pub target: Target,
    /// The `changeType` as sent, and what it lists.
    pub change_type: String,
    pub change_types: Vec<ChangeType>,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expires: DateTime<Utc>,
    pub tls: String,
    /// The app that created it (`applicationId`) and its tenant.
    pub client_id: String,
    pub tenant: String,
    /// Created with `Prefer: IdType="ImmutableId"`: notifications name items by their
    /// immutable ids ("Immutable ID with change notifications", concepts/
    /// outlook-immutable-id.md); otherwise by their regular ids.
    pub immutable_ids: bool,
    /// A `reauthorizationRequired` lifecycle event was sent and not answered yet (since).
    pub reauthorize_since: Option<Instant>,
    /// When it was created: changes made before are not its business.
    pub created: Instant,
    /// Creation order, for stable listings.
    pub serial: u64,
    /// Change notifications delivered for it.
    pub sent: u64,
}

/// Graph's date-time as subscriptions carry it: seven fractional digits and `Z`.
pub fn graph_instant(t: DateTime<Utc>) -> String {
    format!("{}Z", graph_time(t.naive_utc()))
}

/// The service principal id standing for an app (`creatorId` of app-only subscriptions: "the
/// id of the service principal corresponding to the app", subscription resource): a stable
/// GUID-shaped digest of tenant and client id.
pub fn service_principal_id(tenant: &str, client_id: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(format!("sp/{tenant}/{client_id}").as_bytes());
    let h: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Subscription {
    pub fn expires_str(&self) -> String {
        graph_instant(self.expires)
    }

    pub fn wants(&self, c: &Change) -> bool {
        c.at >= self.created && self.change_types.contains(&c.change) && self.target.watches(c)
    }

    /// The subscription object, as `POST`, `GET` and `PATCH /subscriptions` return it
    /// (subscription resource, JSON representation; the create example's answer).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": null,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": self.expires_str(),
            "creatorId": service_principal_id(&self.tenant, &self.client_id),
            "includeResourceData": false,
            "latestSupportedTlsVersion": self.tls,
            "encryptionCertificate": null,
            "encryptionCertificateId": null,
            "notificationUrlAppId": null,
        })
    }

    /// One change notification for `c` (concepts/change-notifications-delivery-webhooks.md,
    /// Change notification example: `resource` and `@odata.id` as
    /// `Users/{user}/Messages/{id}`, `@odata.type` `#Microsoft.Graph.Message`). Events follow
    /// it (`Users/{uid}/Events/{id}`, `#Microsoft.Graph.Event`). No todoTask notification is
    /// documented; tasks follow the same pattern (`Users/{uid}/todo/lists/{list}/tasks/{id}`,
    /// `#Microsoft.Graph.todoTask`).
    pub fn notification(&self, c: &Change) -> Value {
        let (path, odata_type, id, etag) = match &c.item {
            ChangedItem::Event {
                id,
                regular_id,
                etag,
                ..
            } => {
                let id = if self.immutable_ids { id } else { regular_id };
                (
                    format!("Users/{}/Events/{id}", c.user_id),
                    "#Microsoft.Graph.Event",
                    id,
                    etag,
                )
            }
            ChangedItem::Task { list, id, etag } => (
                format!("Users/{}/todo/lists/{list}/tasks/{id}", c.user_id),
                "#Microsoft.Graph.todoTask",
                id,
                etag,
            ),
        };
        json!({
            "subscriptionId": self.id,
            "subscriptionExpirationDateTime": self.expires_str(),
            "changeType": c.change.as_str(),
            "resource": path,
            "resourceData": {
                "@odata.type": odata_type,
                "@odata.id": path,
                "@odata.etag": etag,
                "id": id,
            },
            "clientState": self.client_state,
            "tenantId": self.tenant,
        })
    }

    /// A lifecycle notification (concepts/change-notifications-lifecycle-events.md,
    /// Structure of a lifecycle notification).
    pub fn lifecycle(&self, event: LifecycleEvent) -> Value {
        json!({
            "subscriptionId": self.id,
            "subscriptionExpirationDateTime": self.expires_str(),
            "tenantId": self.tenant,
            "clientState": self.client_state,
            "lifecycleEvent": event.as_str(),
        })
    }
}

/// The three lifecycle events (concepts/change-notifications-lifecycle-events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum LifecycleEvent {
    #[serde(rename = "missed")]
    Missed,
    #[serde(rename = "subscriptionRemoved")]
    SubscriptionRemoved,
    #[serde(rename = "reauthorizationRequired")]
    ReauthorizationRequired,
}

impl LifecycleEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::Missed => "missed",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
        }
    }
}

/// Every subscription, by id.
#[derive(Debug, Default)]
pub struct Subscriptions {
    map: HashMap<String, Subscription>,
    next_serial: u64,
}

impl Subscriptions {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Stores a new subscription (its `serial` is set here).
    pub fn insert(&mut self, mut s: Subscription) {
        self.next_serial += 1;
        s.serial = self.next_serial;
        self.map.insert(s.id.clone(), s);
    }

    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.map.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        self.map.get_mut(id)
    }

    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        self.map.remove(id)
    }

    /// Removes the subscriptions expired at `now`; returns how many.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.expires > now);
        before - self.map.len()
    }

    /// Active Outlook subscriptions on a mailbox, for all apps.
    pub fn outlook_count(&self, user_id: &str) -> usize {
        self.map
            .values()
            .filter(|s| s.target.is_outlook() && s.target.user_id() == user_id)
            .count()
    }

    /// Every subscription, in creation order.
    pub fn all(&self) -> Vec<&Subscription> {
        let mut v: Vec<&Subscription> = self.map.values().collect();
        v.sort_by_key(|s| s.serial);
        v
    }

    /// Subscriptions of one app, in creation order (app-only `GET /subscriptions` lists
    /// "all subscriptions created with the Application", microsoft-graph-docs PR 2379).
    pub fn of_app(&self, tenant: &str, client_id: &str) -> Vec<&Subscription> {
        let mut v: Vec<&Subscription> = self
            .map
            .values()
            .filter(|s| s.tenant == tenant && s.client_id == client_id)
            .collect();
        v.sort_by_key(|s| s.serial);
        v
    }

    /// Subscriptions wanting change `c`.
    pub fn wanting<'a>(&'a self, c: &'a Change) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.map.values().filter(move |s| s.wants(c))
    }
}

/// One Event Hubs message: the JSON Graph would have sent to the hub.
#[derive(Debug, Clone)]
pub struct EventHubMessage {
    /// The hub named by the `notificationUrl`.
    pub hub: String,
    /// The subscription it is about (a good partition key).
    pub subscription_id: String,
    /// `{"value":[…]}`, one notification.
    pub body: Vec<u8>,
}

/// What Graph would have sent to Azure Event Hubs, kept in memory: a `notificationUrl` of
/// the form `EventHub:https://<namespace>.servicebus.windows.net/eventhubname/<hub>?tenantId=…`
/// (or the older Key Vault form `EventHub:https://<vault>.vault.azure.net/secrets/<secret>?…`,
/// concepts/change-notifications-delivery-event-hubs.md) is never called over HTTP and never
/// validated ("You don't need to reply to the notification URL validation", same page); the
/// hub gets a validation message instead (`notify::event_hub_validation`).
#[derive(Debug, Default)]
pub struct EventHubOutbox {
    queue: Mutex<VecDeque<EventHubMessage>>,
    ready: tokio::sync::Notify,
}

impl EventHubOutbox {
    pub fn push(&self, m: EventHubMessage) {
        self.queue.lock().push_back(m);
        self.ready.notify_one();
    }

    /// The next message, waiting for one.
    pub async fn recv(&self) -> EventHubMessage {
        loop {
            let notified = self.ready.notified();
            if let Some(m) = self.queue.lock().pop_front() {
                return m;
            }
            notified.await;
        }
    }

    /// Every message waiting now.
    pub fn drain(&self) -> Vec<EventHubMessage> {
        self.queue.lock().drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The hub an `EventHub:` URL names, or `None` when the URL is not an Event Hubs one.
pub fn event_hub_name(url: &str) -> Option<String> {
    let rest = url
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("EventHub:"))
        .map(|_| &url[9..])?;
    let u = url::Url::parse(rest).ok()?;
    let segs: Vec<&str> = u.path_segments()?.filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [kind, name] if kind.eq_ignore_ascii_case("eventhubname") => Some(name.to_string()),
        [kind, name] if kind.eq_ignore_ascii_case("secrets") => Some(name.to_string()),
        _ => None,
    }
}

/// Notification counters (in [`crate::Stats`]).
#[derive(Debug, Default, Clone, Serialize)]
pub struct NotificationStats {
    pub subscriptions_created: u64,
    pub subscriptions_renewed: u64,
    pub subscriptions_deleted: u64,
    pub subscriptions_expired: u64,
    /// Removed by a `subscriptionRemoved` lifecycle event.
    pub subscriptions_removed: u64,
    pub validations: u64,
    pub validations_failed: u64,
    /// Change notifications acknowledged with a 2xx (or put in the Event Hubs outbox).
    pub delivered: u64,
    /// POSTs that carried them (a POST may batch several).
    pub posts: u64,
    /// Dropped by the `drop_probability` fault.
    pub dropped: u64,
    /// Sent twice by the `duplicate_probability` fault.
    pub duplicated: u64,
    /// Given up after the last retry.
    pub failed: u64,
    /// Delivery attempts repeated after a failure.
    pub retried: u64,
    /// Not sent: the subscription waited for reauthorization too long.
    pub paused: u64,
    pub lifecycle_sent: u64,
    pub lifecycle_failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_hub_urls_name_their_hub() {
        assert_eq!(
            event_hub_name(
                "EventHub:https://ns.servicebus.windows.net/eventhubname/graph?tenantId=contoso.com"
            )
            .as_deref(),
            Some("graph")
        );
        assert_eq!(
            event_hub_name("EventHub:https://kv.vault.azure.net/secrets/conn?tenantId=x")
                .as_deref(),
            Some("conn")
        );
        assert_eq!(event_hub_name("https://hook.example.com/x"), None);
        assert_eq!(event_hub_name("EventHub:https://ns/whatever"), None);
    }

    #[test]
    fn creator_ids_are_stable_guids() {
        let a = service_principal_id("contoso", "app");
        assert_eq!(a, service_principal_id("contoso", "app"));
        assert_ne!(a, service_principal_id("fabrikam", "app"));
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
