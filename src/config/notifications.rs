//! `[notifications]`: change notifications as triggers of delta rounds (issue 16; README,
//! "Change notifications").

use serde::{Deserialize, Serialize};

use super::{Dur, Secret};

/// `[notifications]`: Graph tells the worker *that* a partition changed (a change
/// notification) and the worker runs its delta round at once, instead of waiting for its next
/// poll. Records still come only from delta pages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Subscribe to change notifications for the partitions Graph offers them for (calendar
    /// views: the user's events; To Do task lists: their tasks). Off by default.
    pub enabled: bool,
    /// How notifications reach the workers: `webhook` (Graph posts to `public_url`).
    pub delivery: Delivery,
    /// The HTTPS URL Graph posts notifications to: an ingress in front of the workers'
    /// `server.listen` that forwards `…/notifications` and `…/notifications/lifecycle` to
    /// the listener's `/notifications` paths. Required when `enabled`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The secret Graph sends back with every notification (`clientState`, at most 128
    /// characters): notifications without it are dropped. Required when `enabled`.
    #[serde(default)]
    pub client_state: Option<Secret>,
    /// Renew a subscription this long before it expires (each is asked for close to its
    /// resource's maximum: 10,080 minutes for events, 4,230 for To Do tasks).
    pub renew_before: Dur,
    /// Longest subscription asked for (`None`: each resource's maximum); for tests.
    #[serde(default)]
    pub max_lifetime: Option<Dur>,
    /// Allow a `public_url` over plain HTTP (tests against the simulator only: Graph refuses
    /// them).
    pub allow_insecure_url: bool,
}

/// `notifications.delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Graph posts to `notifications.public_url`.
    Webhook,
}

/// `[notifications]` problems, each naming its key.
pub(super) fn check(errs: &mut Vec<String>, n: &NotificationSettings) {
    if !n.enabled {
        return;
    }
    match n.public_url.as_deref().map(url::Url::parse) {
        None => errs.push("notifications.public_url: required when notifications.enabled".into()),
        Some(Err(e)) => errs.push(format!("notifications.public_url: not a URL ({e})")),
        Some(Ok(u)) => {
            if u.scheme() != "https" && !(u.scheme() == "http" && n.allow_insecure_url) {
                errs.push(format!(
                    "notifications.public_url: Graph posts only to https URLs, not '{}' \
                     (notifications.allow_insecure_url is for tests against the simulator)",
                    u.scheme()
                ));
            }
            if u.query().is_some() {
                errs.push("notifications.public_url: must not have a query".into());
            }
        }
    }
    match &n.client_state {
        None => errs.push("notifications.client_state: required when notifications.enabled".into()),
        Some(s) if s.expose().len() < 16 || s.expose().len() > 128 => errs
            .push("notifications.client_state: 16 to 128 characters (Graph's limit is 128)".into()),
        Some(_) => {}
    }
    if n.renew_before.0.is_zero() {
        errs.push("notifications.renew_before: must be longer than 0".into());
    }
}
