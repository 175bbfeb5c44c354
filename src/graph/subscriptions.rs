//! Change notifications (issue 16): which partitions Graph can notify of, the subscription
//! requests (`/subscriptions`: create, renew, delete, list), and the notifications Graph
//! posts.
//!
//! A notification only says *that* something changed; what changed still comes from the
//! partition's delta query (NOTES.md, "Change notifications"), so nothing here reaches Kafka.
//!
//! Graph offers subscriptions on a user's Outlook events (`users/{id}/events`, at most 10,080
//! minutes) and on the tasks of one To Do list (`users/{id}/todo/lists/{list}/tasks`, 4,230
//! minutes); not on calendars or To Do lists themselves, nor on a group's transitive members:
//! those partitions are polled (README, "Change notifications").

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::client::GraphClient;
use super::error::GraphError;
use crate::source::PartitionId;

/// The metrics label of subscription requests.
pub const SUBSCRIPTIONS: &str = "subscriptions";

/// What Graph can notify of for a partition: the resource to subscribe to and the longest
/// lifetime it allows (a calendar view is notified of all its user's events: a change
/// outside the window costs one empty poll).
pub fn resource_of(p: &PartitionId) -> Option<(String, Duration)> {
    const MINUTE: u64 = 60;
    match p {
        // `users/{id}/events` covers the default calendar only (microsoft-graph-docs-contrib
        // issue 51): another calendar's view subscribes to that calendar's events.
        PartitionId::CalendarView { user, calendar, .. } => Some((
            match calendar.as_str() {
                "primary" => format!("users/{user}/events"),
                c => format!("users/{user}/calendars/{c}/events"),
            },
            Duration::from_secs(10_080 * MINUTE),
        )),
        PartitionId::Tasks { user, list } => Some((
            format!("users/{user}/todo/lists/{list}/tasks"),
            Duration::from_secs(4_230 * MINUTE),
        )),
        _ => None,
    }
}

/// The longest subscription Graph allows for a partition, if it offers one (no allocation:
/// asked for every subscription at each renewal scan).
pub fn max_lifetime_of(p: &PartitionId) -> Option<Duration> {
    match p {
        PartitionId::CalendarView { .. } => Some(Duration::from_secs(10_080 * 60)),
        PartitionId::Tasks { .. } => Some(Duration::from_secs(4_230 * 60)),
        _ => None,
    }
}

/// A subscription as Graph answers it (its `clientState` is not kept: a secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub expiration_date_time: DateTime<Utc>,
    #[serde(default)]
    pub notification_url: String,
}

/// What a new subscription asks for.
pub struct NewSubscription<'a> {
    pub resource: &'a str,
    pub notification_url: &'a str,
    /// Where lifecycle events go (`missed`, `subscriptionRemoved`, `reauthorizationRequired`).
    pub lifecycle_url: Option<&'a str>,
    /// Sent back with every notification: how the worker tells Graph's from forgeries.
    pub client_state: &'a str,
    pub expiration: DateTime<Utc>,
}

fn url(graph_host: &str, rest: &str) -> String {
    format!(
        "{}/v1.0/subscriptions{rest}",
        graph_host.trim_end_matches('/')
    )
}

/// `POST /subscriptions`: Graph validates `notification_url` (and the lifecycle URL) before
/// it answers.
pub async fn create(
    client: &GraphClient,
    graph_host: &str,
    user: &str,
    new: &NewSubscription<'_>,
) -> Result<Subscription, GraphError> {
    let mut body = json!({
        "changeType": "created,updated,deleted",
        "notificationUrl": new.notification_url,
        "resource": new.resource,
        "expirationDateTime": new.expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "clientState": new.client_state,
    });
    if let Some(l) = new.lifecycle_url {
        body["lifecycleNotificationUrl"] = l.into();
    }
    let url = url(graph_host, "");
    client
        .send_json(user, SUBSCRIPTIONS, Method::POST, &url, Some(&body))
        .await?
        .ok_or_else(|| GraphError::Client {
            status: 201,
            code: "NoContent".into(),
            message: "a created subscription without a body".into(),
        })
}

/// `PATCH /subscriptions/{id}`: a new expiration (a `404`: the subscription is gone).
pub async fn renew(
    client: &GraphClient,
    graph_host: &str,
    user: &str,
    id: &str,
    expiration: DateTime<Utc>,
) -> Result<Option<Subscription>, GraphError> {
    let body = json!({
        "expirationDateTime": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let url = url(graph_host, &format!("/{id}"));
    match client
        .send_json(user, SUBSCRIPTIONS, Method::PATCH, &url, Some(&body))
        .await
    {
        Ok(s) => Ok(s),
        Err(GraphError::Client { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `DELETE /subscriptions/{id}`; one already gone (`404`) is as good.
pub async fn delete(
    client: &GraphClient,
    graph_host: &str,
    user: &str,
    id: &str,
) -> Result<(), GraphError> {
    let url = url(graph_host, &format!("/{id}"));
    match client
        .send_json::<serde_json::Value>(user, SUBSCRIPTIONS, Method::DELETE, &url, None)
        .await
    {
        Ok(_) | Err(GraphError::Client { status: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `GET /subscriptions`: the app's subscriptions, every page (`@odata.nextLink`).
pub async fn list(client: &GraphClient, graph_host: &str) -> Result<Vec<Subscription>, GraphError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        value: Vec<Subscription>,
        #[serde(default, rename = "@odata.nextLink")]
        next: Option<String>,
    }
    let mut out = Vec::new();
    let mut url = Some(url(graph_host, ""));
    // One page per request; a listing that loops is cut (Graph's pages are 100 long).
    let mut pages = 0;
    while let Some(u) = url.take() {
        let page: Option<Page> = client
            .send_json(SUBSCRIPTIONS, SUBSCRIPTIONS, Method::GET, &u, None)
            .await?;
        let Some(page) = page else { break };
        out.extend(page.value);
        pages += 1;
        url = page.next.filter(|_| pages < 100_000);
    }
    Ok(out)
}

/// The user a subscription's resource names (`users/{id}/…`, as the worker sent it).
pub fn user_of(resource: &str) -> Option<&str> {
    let r = resource.trim_start_matches('/');
    let mut parts = r.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(u), Some(id)) if u.eq_ignore_ascii_case("users") && !id.is_empty() => Some(id),
        _ => None,
    }
}

/// `POST /subscriptions/{id}/reauthorize`, after a `reauthorizationRequired` lifecycle event.
pub async fn reauthorize(
    client: &GraphClient,
    graph_host: &str,
    user: &str,
    id: &str,
) -> Result<(), GraphError> {
    let url = url(graph_host, &format!("/{id}/reauthorize"));
    client
        .send_json::<serde_json::Value>(user, SUBSCRIPTIONS, Method::POST, &url, None)
        .await
        .map(|_| ())
}

/// One notification of a `POST` Graph sends: a change, or a lifecycle event (serialised
/// back as Graph sent it when a worker forwards it to another).
#[derive(Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub subscription_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The changed item (its id and version), when Graph says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_data: Option<ResourceData>,
}

/// A change notification's `resourceData`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ResourceData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(
        default,
        rename = "@odata.etag",
        skip_serializing_if = "Option::is_none"
    )]
    pub etag: Option<String>,
}

impl std::fmt::Debug for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client state is a secret.
        f.debug_struct("Notice")
            .field("subscription_id", &self.subscription_id)
            .field("change_type", &self.change_type)
            .field("resource", &self.resource)
            .field("lifecycle_event", &self.lifecycle_event)
            .finish_non_exhaustive()
    }
}

/// A notification collection (`{"value":[…]}`), as Graph posts it to a webhook or to Event
/// Hubs.
pub fn parse_notices(body: &[u8]) -> Result<Vec<Notice>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Collection {
        value: Vec<Notice>,
    }
    serde_json::from_slice::<Collection>(body).map(|c| c.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_and_tasks_have_subscriptions() {
        let view = PartitionId::CalendarView {
            user: "u1".into(),
            calendar: "primary".into(),
            window: "-1d/+1d".into(),
        };
        let (r, max) = resource_of(&view).unwrap();
        assert_eq!(r, "users/u1/events");
        assert_eq!(max, Duration::from_secs(10_080 * 60));
        let tasks = PartitionId::Tasks {
            user: "u1".into(),
            list: "L=".into(),
        };
        assert_eq!(
            resource_of(&tasks).unwrap().0,
            "users/u1/todo/lists/L=/tasks"
        );
        let other = PartitionId::CalendarView {
            user: "u1".into(),
            calendar: "C2".into(),
            window: "-1d/+1d".into(),
        };
        assert_eq!(
            resource_of(&other).unwrap().0,
            "users/u1/calendars/C2/events"
        );
        assert!(resource_of(&PartitionId::CalendarList { user: "u1".into() }).is_none());
        for p in [&view, &tasks, &other] {
            assert_eq!(max_lifetime_of(p), resource_of(p).map(|r| r.1));
        }
        assert_eq!(
            max_lifetime_of(&PartitionId::TaskLists { user: "u1".into() }),
            None
        );
        assert!(resource_of(&PartitionId::TaskLists { user: "u1".into() }).is_none());
    }

    #[test]
    fn a_resource_names_its_user() {
        assert_eq!(user_of("users/u1/events"), Some("u1"));
        assert_eq!(user_of("/Users/u1/todo/lists/L/tasks"), Some("u1"));
        assert_eq!(user_of("me/events"), None);
        assert_eq!(user_of("users/"), None);
    }

    #[test]
    fn notices_parse_and_hide_their_client_state() {
        let body =
            br#"{"value":[{"subscriptionId":"s1","clientState":"sekrit","changeType":"updated",
            "resource":"Users/u1/Events/e1","tenantId":"t"},
            {"subscriptionId":"s2","lifecycleEvent":"missed","clientState":"sekrit"}]}"#;
        let n = parse_notices(body).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].change_type.as_deref(), Some("updated"));
        assert_eq!(n[1].lifecycle_event.as_deref(), Some("missed"));
        assert!(!format!("{n:?}").contains("sekrit"));
        assert!(parse_notices(b"{\"value\":3}").is_err());
    }
}
