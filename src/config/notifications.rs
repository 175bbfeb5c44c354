//! `[notifications]`: change notifications as triggers of delta rounds (issue 16; README,
//! "Change notifications").

use serde::{Deserialize, Serialize};

use super::{Dur, KafkaOptions, Secret};

/// `[notifications]`: Graph tells the worker *that* a partition changed (a change
/// notification) and the worker runs its delta round at once, instead of waiting for its next
/// poll. Records still come only from delta pages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// Subscribe to change notifications for the partitions Graph offers them for (calendar
    /// views: the user's events; To Do task lists: their tasks). Off by default.
    pub enabled: bool,
    /// How notifications reach the workers: `webhook` (Graph posts to `public_url`) or
    /// `eventhub` (Graph sends them to an Azure event hub, `[notifications.eventhub]`, which
    /// the workers consume through its Kafka endpoint).
    pub delivery: Delivery,
    /// The HTTPS URL Graph posts notifications to: an ingress in front of the workers'
    /// `server.listen` that forwards `…/notifications` and `…/notifications/lifecycle` to
    /// the listener's `/notifications` paths. Required when `enabled` with
    /// `delivery = "webhook"`.
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
    /// `[notifications.eventhub]`: where Graph sends notifications, and how the workers read
    /// them, with `delivery = "eventhub"`.
    #[serde(default)]
    pub eventhub: Option<EventHubSettings>,
}

/// `[notifications.eventhub]`: an Azure event hub Graph sends the notifications to, read by
/// the workers through Event Hubs' Kafka-compatible endpoint (README, "Change
/// notifications").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubSettings {
    /// The `notificationUrl` (and `lifecycleNotificationUrl`) given to Graph:
    /// `EventHub:https://<namespace>.servicebus.windows.net/eventhubname/<hub>?tenantId=<tenant
    /// domain>`, or the Key Vault form `EventHub:https://<vault>.vault.azure.net/secrets/<secret>?tenantId=…`.
    pub notification_url: String,
    /// The namespace's Kafka endpoint, `<namespace>.servicebus.windows.net:9093`.
    pub bootstrap_servers: String,
    /// The event hub (a Kafka topic on that endpoint).
    pub topic: String,
    /// A connection string of a shared access policy with `Listen` on the hub (the SASL
    /// PLAIN password, user `$ConnectionString`). A secret: never logged or shown. Without
    /// it the consumer connects without SASL (the test bed's plaintext broker).
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// The consumer group a worker reads the hub in (default `{name}.notifications.{worker
    /// id}`: a group per worker, so that each reads every notification and keeps those of
    /// its own partitions; a group shared by the workers splits the hub's partitions among
    /// them, and a notification reaching another worker waits for its partition's
    /// safety-net poll).
    #[serde(default)]
    pub consumer_group: Option<String>,
    /// librdkafka properties of the hub's consumer, applied last (e.g.
    /// `"security.protocol" = "plaintext"` for a test broker).
    #[serde(default)]
    pub options: KafkaOptions,
}

/// `notifications.delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Graph posts to `notifications.public_url`.
    Webhook,
    /// Graph sends to the event hub of `[notifications.eventhub]`.
    #[serde(rename = "eventhub")]
    EventHub,
}

/// `[notifications]` problems, each naming its key.
pub(super) fn check(errs: &mut Vec<String>, n: &NotificationSettings) {
    if !n.enabled {
        return;
    }
    match n.delivery {
        Delivery::Webhook => check_public_url(errs, n),
        Delivery::EventHub => match &n.eventhub {
            None => errs.push(
                "notifications.eventhub: required when notifications.delivery = \"eventhub\""
                    .into(),
            ),
            Some(h) => check_eventhub(errs, h),
        },
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

/// `notifications.public_url` (webhook delivery).
fn check_public_url(errs: &mut Vec<String>, n: &NotificationSettings) {
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
}

/// `[notifications.eventhub]`.
fn check_eventhub(errs: &mut Vec<String>, h: &EventHubSettings) {
    if let Err(why) = event_hub_url(&h.notification_url) {
        errs.push(format!("notifications.eventhub.notification_url: {why}"));
    }
    if h.bootstrap_servers.trim().is_empty() {
        errs.push("notifications.eventhub.bootstrap_servers: required (<namespace>.servicebus.windows.net:9093)".into());
    }
    if h.topic.trim().is_empty() {
        errs.push("notifications.eventhub.topic: required (the event hub's name)".into());
    }
    if h.consumer_group
        .as_deref()
        .is_some_and(|g| g.trim().is_empty())
    {
        errs.push("notifications.eventhub.consumer_group: must not be empty".into());
    }
    if h.connection_string
        .as_ref()
        .is_some_and(|c| c.expose().trim().is_empty())
    {
        errs.push("notifications.eventhub.connection_string: must not be empty".into());
    }
}

/// Checks an `EventHub:` notification URL's form (Graph's, concepts/
/// change-notifications-delivery-event-hubs.md): `EventHub:https://<namespace>.servicebus.
/// windows.net/eventhubname/<hub>?tenantId=<domain>` (role-based access) or
/// `EventHub:https://<vault>.vault.azure.net/secrets/<secret>?tenantId=<domain>` (Key
/// Vault). Returns the hub (or secret) it names.
pub fn event_hub_url(url: &str) -> Result<String, String> {
    let rest = url
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("EventHub:"))
        .map(|_| &url[9..])
        .ok_or("must start with 'EventHub:https://'")?;
    let u = url::Url::parse(rest).map_err(|e| format!("not a URL after 'EventHub:' ({e})"))?;
    if u.scheme() != "https" {
        return Err(format!(
            "must be 'EventHub:https://…', not '{}'",
            u.scheme()
        ));
    }
    if !u
        .query_pairs()
        .any(|(k, v)| k == "tenantId" && !v.is_empty())
    {
        return Err("must end with '?tenantId=<your tenant's domain>'".into());
    }
    let segs: Vec<&str> = u
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    match segs.as_slice() {
        [kind, name] if kind.eq_ignore_ascii_case("eventhubname") => Ok(name.to_string()),
        [kind, name] if kind.eq_ignore_ascii_case("secrets") => Ok(name.to_string()),
        _ => Err(
            "the path must be '/eventhubname/<hub>' (or '/secrets/<secret>' for Key Vault)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::event_hub_url;

    #[test]
    fn event_hub_urls_have_graphs_form() {
        assert_eq!(
            event_hub_url("EventHub:https://ns.servicebus.windows.net/eventhubname/graph?tenantId=contoso.com"),
            Ok("graph".to_string())
        );
        assert_eq!(
            event_hub_url("EventHub:https://kv.vault.azure.net/secrets/conn?tenantId=contoso.com"),
            Ok("conn".to_string())
        );
        for bad in [
            "https://ns.servicebus.windows.net/eventhubname/graph?tenantId=c",
            "EventHub:http://ns.servicebus.windows.net/eventhubname/graph?tenantId=c",
            "EventHub:https://ns.servicebus.windows.net/eventhubname/graph",
            "EventHub:https://ns.servicebus.windows.net/graph?tenantId=c",
            "EventHub:",
        ] {
            assert!(event_hub_url(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use crate::config::Settings;

    const BASE: &str = "[graph]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n[[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\n";
    const HUB: &str =
        "EventHub:https://ns.servicebus.windows.net/eventhubname/graph?tenantId=contoso.com";

    fn err(toml: &str) -> String {
        match Settings::from_toml_str(toml, false) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn eventhub_delivery_names_its_keys_and_hides_the_connection_string() {
        let on = "[notifications]\nenabled = true\ndelivery = \"eventhub\"\nclient_state = \"a-long-enough-client-state\"\n";
        let e = err(&format!("{BASE}{on}"));
        assert!(e.contains("notifications.eventhub: required"), "{e}");
        // No public URL needed: Graph sends to the hub.
        assert!(!e.contains("public_url"), "{e}");
        let e = err(&format!(
            "{BASE}{on}[notifications.eventhub]\nnotification_url = \"https://ns.servicebus.windows.net/graph\"\nbootstrap_servers = \"\"\ntopic = \"\"\nconnection_string = \"Endpoint=sb://ns/;SharedAccessKey=hush\"\n"
        ));
        assert!(
            e.contains(
                "notifications.eventhub.notification_url: must start with 'EventHub:https://'"
            ),
            "{e}"
        );
        assert!(
            e.contains("notifications.eventhub.bootstrap_servers: required"),
            "{e}"
        );
        assert!(e.contains("notifications.eventhub.topic: required"), "{e}");
        assert!(!e.contains("hush"), "{e}");
        let e = err(&format!(
            "{BASE}{on}[notifications.eventhub]\nnotification_url = \"{HUB}\"\nbootstrap_servers = \"b:9093\"\ntopic = \"graph\"\nunknown = 1\n"
        ));
        assert!(e.contains("unknown"), "{e}");
        let s = Settings::from_toml_str(
            &format!(
                "{BASE}{on}[notifications.eventhub]\nnotification_url = \"{HUB}\"\nbootstrap_servers = \"ns.servicebus.windows.net:9093\"\ntopic = \"graph\"\nconnection_string = \"Endpoint=sb://ns/;SharedAccessKey=hush\"\n[notifications.eventhub.options]\n\"fetch.wait.max.ms\" = \"50\"\n"
            ),
            false,
        )
        .unwrap();
        assert!(!s.redacted_json().to_string().contains("hush"));
        let w = crate::worker::WorkerSpec::from_settings(&s).unwrap();
        let n = w.notifications.as_ref().unwrap();
        assert_eq!(n.url, HUB);
        assert_eq!(n.lifecycle_url, HUB);
        let h = w.notification_hub.as_ref().unwrap();
        assert_eq!(
            h.group,
            format!("graph-cdc.notifications.{}", s.worker_id())
        );
        assert_eq!(h.topic, "graph");
        assert_eq!(
            h.options.get("fetch.wait.max.ms").map(String::as_str),
            Some("50")
        );
        assert_eq!(
            h.client_config().get("sasl.password"),
            Some("Endpoint=sb://ns/;SharedAccessKey=hush")
        );
        assert!(!format!("{w:?}").contains("hush"));
    }
}
