//! Delivering notifications: the endpoint validation handshake, the dispatcher that turns the
//! change journal into change notifications, lifecycle notifications, and delivery faults.
//!
//! Facts modelled (concepts/change-notifications-delivery-webhooks.md unless said):
//! - Validation: "POST https://{notificationUrl}?validationToken={opaqueTokenCreatedByMicrosoftGraph}"
//!   with `Content-Type: text/plain; charset=utf-8`; the endpoint must answer within 10 s
//!   with 200, `text/plain` and the decoded token, or "Microsoft Graph doesn't create the
//!   subscription" (includes/change-notifications-delivery-notificationurl-validation.md).
//!   The token reads "Validation: Testing client application reachability for subscription
//!   Request-Id: …" (microsoft-graph-docs issue 21160): spaces and a colon, so a receiver
//!   must URL-decode it.
//! - Delivery: "send a 2xx class code back to Microsoft Graph. If Microsoft Graph doesn't
//!   receive a 2xx class code within 3 seconds, it tries to resend the change notification
//!   multiple times, for up to 4 hours ... it discards the change notification". Here the
//!   retries are bounded by `SimSettings::notification_retries` with doubling back-off;
//!   given-up notifications earn their subscriptions a `missed` lifecycle event.
//! - Batching: "Microsoft Graph may send multiple notifications that correspond to different
//!   subscriptions in the same POST request": one POST per notification URL per dispatch.
//! - Reauthorization: "The flow of change notifications may continue for a while, giving you
//!   extra time to respond. However, eventually change notification delivery pauses ... Any
//!   notifications about resource changes that happen [meanwhile] ... are lost"
//!   (concepts/change-notifications-lifecycle-events.md): after
//!   `SimSettings::reauthorization_grace_secs` without `reauthorize` or a renewal, changes of
//!   the subscription are dropped (counted as `paused`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::subscriptions::{event_hub_name, EventHubMessage, LifecycleEvent, Subscription};
use crate::SimState;

/// How often the dispatcher looks at the journal.
const TICK: Duration = Duration::from_millis(20);
/// Graph's validation deadline.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Graph's delivery deadline.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How a validation handshake is made to fail (`NotificationFaults::validation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationFault {
    /// As if the endpoint echoed something else than the token.
    WrongToken,
    /// As if the endpoint never answered within 10 s (without waiting them).
    Timeout,
    /// As if the endpoint answered `500`.
    Error,
}

/// Delivery faults, set at `/_sim/notifications/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationFaults {
    /// Probability that a change notification is never sent.
    pub drop_probability: f64,
    /// Probability that a change notification is sent twice.
    pub duplicate_probability: f64,
    /// Each POST waits a random 0..=this many milliseconds more.
    pub max_extra_delay_ms: u64,
    /// Notifications of one POST are shuffled within windows of this many (0, 1: in order).
    pub reorder_window: usize,
    /// Every validation handshake fails this way while set.
    pub validation: Option<ValidationFault>,
    /// Seed of the faults' random choices (deterministic runs); random when absent.
    pub seed: Option<u64>,
}

impl NotificationFaults {
    pub fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop_probability", self.drop_probability),
            ("duplicate_probability", self.duplicate_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be within 0..=1"));
            }
        }
        Ok(())
    }
}

/// The faults in force and their random source.
pub struct FaultState {
    pub spec: NotificationFaults,
    rng: StdRng,
}

impl Default for FaultState {
    fn default() -> Self {
        Self {
            spec: NotificationFaults::default(),
            rng: StdRng::from_os_rng(),
        }
    }
}

impl FaultState {
    /// Replaces the faults; a seed restarts the random sequence.
    pub fn set(&mut self, spec: NotificationFaults) {
        self.rng = match spec.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        self.spec = spec;
    }
}

/// The HTTP client notifications and handshakes go out with (no proxy: receivers in tests
/// listen on loopback).
fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// Why a validation handshake failed, with the answer Graph gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationError {
    /// No `200`, or no answer at all: "Subscription validation request failed. Notification
    /// endpoint must respond with 200 OK to validation request." (splunk/azure-functions-splunk
    /// issue 26, code `ValidationError`).
    Status,
    /// Another body: "Subscription validation request failed. Response must exactly match
    /// validationToken query parameter." (microsoftgraph/java-spring-webhooks-sample issue 82).
    Mismatch,
    /// "Subscription validation request timed out." (mattermost-plugin-mscalendar issue 444,
    /// `400 ValidationError`).
    Timeout,
}

impl ValidationError {
    pub fn message(self) -> &'static str {
        match self {
            ValidationError::Status => "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            ValidationError::Mismatch => "Subscription validation request failed. Response must exactly match validationToken query parameter.",
            ValidationError::Timeout => "Subscription validation request timed out.",
        }
    }
}

/// `url` with `name=value` appended to its query, the value percent-encoded.
fn with_query(url: &str, name: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}{name}={}",
        utf8_percent_encode(value, NON_ALPHANUMERIC)
    )
}

/// Runs the validation handshake against `url` (not for Event Hubs URLs).
pub async fn validate(sim: &SimState, url: &str) -> Result<(), ValidationError> {
    let fault = sim.notification_faults.lock().spec.validation;
    sim.stats.lock().notifications.validations += 1;
    let result = handshake(url, fault).await;
    if result.is_err() {
        sim.stats.lock().notifications.validations_failed += 1;
    }
    result
}

async fn handshake(url: &str, fault: Option<ValidationFault>) -> Result<(), ValidationError> {
    if fault == Some(ValidationFault::Timeout) {
        return Err(ValidationError::Timeout);
    }
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let sent = client()
        .post(with_query(url, "validationToken", &token))
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(VALIDATION_TIMEOUT)
        .send()
        .await;
    let r = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(ValidationError::Timeout),
        Err(_) => return Err(ValidationError::Status),
    };
    match fault {
        Some(ValidationFault::Error) => return Err(ValidationError::Status),
        Some(ValidationFault::WrongToken) => return Err(ValidationError::Mismatch),
        _ => {}
    }
    if r.status() != reqwest::StatusCode::OK {
        return Err(ValidationError::Status);
    }
    let plain = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/plain")
        });
    let body = r.text().await.map_err(|e| {
        if e.is_timeout() {
            ValidationError::Timeout
        } else {
            ValidationError::Status
        }
    })?;
    if plain && body == token {
        Ok(())
    } else {
        Err(ValidationError::Mismatch)
    }
}

/// What an Event Hub receives when a subscription delivering to it is created: "Your
/// application receives validation messages whenever it creates a new subscription. You
/// should ignore these notifications." (concepts/change-notifications-delivery-event-hubs.md,
/// with this body: `NA` everywhere, the reachability text as `changeType`).
pub fn event_hub_validation(hub: String) -> EventHubMessage {
    let body = json!({"value": [{
        "subscriptionId": "NA",
        "subscriptionExpirationDateTime": "NA",
        "clientState": "NA",
        "changeType": format!(
            "Validation: Testing client application reachability for subscription Request-Id: {}",
            uuid::Uuid::new_v4()
        ),
        "resource": "NA",
        "resourceData": {"@odata.type": "NA", "@odata.id": "NA", "id": "NA"},
    }]});
    EventHubMessage {
        hub,
        subscription_id: "NA".into(),
        body: body.to_string().into_bytes(),
    }
}

/// Keeps the change journal on exactly while some subscription exists (and forgets changes
/// nobody will hear of).
pub fn sync_journal(sim: &SimState) {
    let empty = sim.subscriptions.lock().is_empty();
    let mut store = sim.store.write();
    store.journal.on = !empty;
    if empty {
        store.journal.pending.clear();
    }
}

/// Removes expired subscriptions, counting them.
pub fn sweep(sim: &SimState) {
    let n = sim.subscriptions.lock().sweep(chrono::Utc::now());
    if n > 0 {
        sim.stats.lock().notifications.subscriptions_expired += n as u64;
        sync_journal(sim);
    }
}

/// Starts the dispatcher; it stops when `stop` is cancelled.
pub fn spawn(sim: Arc<SimState>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(TICK) => dispatch(&sim),
            }
        }
    })
}

/// What kind of notification a POST carries (for the counters).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Change,
    Lifecycle,
}

/// Turns the changes old enough into notifications and sends them off.
fn dispatch(sim: &Arc<SimState>) {
    if sim.subscriptions.lock().is_empty() {
        return;
    }
    sweep(sim);
    let (delay, grace) = {
        let s = sim.settings.read();
        (
            Duration::from_millis(s.notification_delay_ms),
            Duration::from_secs(s.reauthorization_grace_secs),
        )
    };
    let Some(until) = Instant::now().checked_sub(delay) else {
        return;
    };
    let changes = {
        let mut store = sim.store.write();
        if store.journal.pending.is_empty() {
            return;
        }
        store.journal.drain_until(until)
    };
    if changes.is_empty() {
        return;
    }
    // Notifications by URL, in the order of their changes.
    let mut posts: Vec<(String, Vec<Value>)> = Vec::new();
    let mut by_url: HashMap<String, usize> = HashMap::new();
    let mut hub: Vec<EventHubMessage> = Vec::new();
    let mut paused = 0u64;
    {
        let mut subs = sim.subscriptions.lock();
        for c in &changes {
            let ids: Vec<String> = subs.wanting(c).map(|s| s.id.clone()).collect();
            for id in ids {
                let Some(s) = subs.get_mut(&id) else { continue };
                if s.reauthorize_since.is_some_and(|t| t.elapsed() >= grace) {
                    paused += 1;
                    continue;
                }
                s.sent += 1;
                let n = s.notification(c);
                match event_hub_name(&s.notification_url) {
                    Some(h) => hub.push(EventHubMessage {
                        hub: h,
                        subscription_id: s.id.clone(),
                        body: json!({ "value": [n] }).to_string().into_bytes(),
                    }),
                    None => {
                        let i = *by_url.entry(s.notification_url.clone()).or_insert_with(|| {
                            posts.push((s.notification_url.clone(), Vec::new()));
                            posts.len() - 1
                        });
                        posts[i].1.push(n);
                    }
                }
            }
        }
    }
    let mut faults = sim.notification_faults.lock();
    let mut counts = (0u64, 0u64);
    let hub = apply_faults(&mut faults, hub, &mut counts);
    let mut planned = Vec::new();
    for (url, items) in posts {
        let items = apply_faults(&mut faults, items, &mut counts);
        if items.is_empty() {
            continue;
        }
        let extra = match faults.spec.max_extra_delay_ms {
            0 => 0,
            m => faults.rng.random_range(0..=m),
        };
        planned.push((url, items, Duration::from_millis(extra)));
    }
    drop(faults);
    {
        let mut st = sim.stats.lock();
        st.notifications.paused += paused;
        st.notifications.dropped += counts.0;
        st.notifications.duplicated += counts.1;
        st.notifications.delivered += hub.len() as u64;
    }
    for m in hub {
        sim.eventhub.push(m);
    }
    for (url, items, extra) in planned {
        tokio::spawn(deliver_changes(sim.clone(), url, items, extra));
    }
}

/// Delivers change notifications; when they are given up, their subscriptions that have a
/// lifecycle URL hear `missed` ("missed lifecycle events alert you that some change
/// notifications weren't delivered", concepts/change-notifications-lifecycle-events.md).
async fn deliver_changes(sim: Arc<SimState>, url: String, items: Vec<Value>, extra: Duration) {
    let ids: Vec<String> = items
        .iter()
        .filter_map(|n| n["subscriptionId"].as_str().map(str::to_string))
        .collect();
    if deliver(sim.clone(), url, items, extra, Kind::Change).await {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for id in ids.into_iter().filter(|id| seen.insert(id.clone())) {
        let s = sim.subscriptions.lock().get(&id).cloned();
        if let Some(s) = s {
            send_lifecycle(&sim, &s, LifecycleEvent::Missed);
        }
    }
}

/// Drops, duplicates and shuffles notifications as the faults say; counts (dropped,
/// duplicated).
fn apply_faults<T: Clone>(f: &mut FaultState, items: Vec<T>, counts: &mut (u64, u64)) -> Vec<T> {
    let spec = f.spec.clone();
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        if spec.drop_probability > 0.0 && f.rng.random_bool(spec.drop_probability) {
            counts.0 += 1;
            continue;
        }
        if spec.duplicate_probability > 0.0 && f.rng.random_bool(spec.duplicate_probability) {
            counts.1 += 1;
            out.push(it.clone());
        }
        out.push(it);
    }
    if spec.reorder_window > 1 {
        for chunk in out.chunks_mut(spec.reorder_window) {
            chunk.shuffle(&mut f.rng);
        }
    }
    out
}

/// POSTs `{"value": items}` to `url`, retrying failures as the settings say; false when
/// given up.
async fn deliver(
    sim: Arc<SimState>,
    url: String,
    items: Vec<Value>,
    extra: Duration,
    kind: Kind,
) -> bool {
    if !extra.is_zero() {
        tokio::time::sleep(extra).await;
    }
    let n = items.len() as u64;
    let body = json!({ "value": items }).to_string();
    let (retries, base) = {
        let s = sim.settings.read();
        (s.notification_retries, s.notification_retry_ms)
    };
    for attempt in 0..=retries {
        if attempt > 0 {
            sim.stats.lock().notifications.retried += 1;
            let backoff = base.saturating_mul(1u64 << (attempt - 1).min(16));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        let sent = client()
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.clone())
            .timeout(DELIVERY_TIMEOUT)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            let mut st = sim.stats.lock();
            st.notifications.posts += 1;
            match kind {
                Kind::Change => st.notifications.delivered += n,
                Kind::Lifecycle => st.notifications.lifecycle_sent += n,
            }
            return true;
        }
    }
    let mut st = sim.stats.lock();
    match kind {
        Kind::Change => st.notifications.failed += n,
        Kind::Lifecycle => st.notifications.lifecycle_failed += n,
    }
    false
}

/// Sends a lifecycle notification for `s` to its `lifecycleNotificationUrl` (in the
/// background); false when it has none ("Existing subscriptions without a
/// lifecycleNotificationUrl property don't receive the lifecycle notifications").
pub fn send_lifecycle(sim: &Arc<SimState>, s: &Subscription, event: LifecycleEvent) -> bool {
    let Some(url) = s.lifecycle_url.clone() else {
        return false;
    };
    let n = s.lifecycle(event);
    match event_hub_name(&url) {
        Some(hub) => {
            sim.eventhub.push(EventHubMessage {
                hub,
                subscription_id: s.id.clone(),
                body: json!({ "value": [n] }).to_string().into_bytes(),
            });
            sim.stats.lock().notifications.lifecycle_sent += 1;
        }
        None => {
            let sim = sim.clone();
            tokio::spawn(async move {
                deliver(sim, url, vec![n], Duration::ZERO, Kind::Lifecycle).await;
            });
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_percent_encoded_into_the_query() {
        assert_eq!(
            with_query("http://h/x", "validationToken", "a b:c"),
            "http://h/x?validationToken=a%20b%3Ac"
        );
        assert_eq!(
            with_query("http://h/x?k=1", "validationToken", "t"),
            "http://h/x?k=1&validationToken=t"
        );
    }

    #[test]
    fn seeded_faults_repeat_and_count() {
        let run = || {
            let mut f = FaultState::default();
            f.set(NotificationFaults {
                drop_probability: 0.3,
                duplicate_probability: 0.3,
                reorder_window: 4,
                seed: Some(7),
                ..Default::default()
            });
            let mut counts = (0, 0);
            let out = apply_faults(&mut f, (0..100).collect::<Vec<u32>>(), &mut counts);
            (out, counts)
        };
        let (a, ca) = run();
        assert_eq!(run(), (a.clone(), ca));
        assert!(ca.0 > 10 && ca.1 > 10, "{ca:?}");
        assert_eq!(a.len() as u64, 100 - ca.0 + ca.1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_ne!(a, sorted, "shuffled within windows");
    }
}
