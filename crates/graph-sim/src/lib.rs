#![recursion_limit = "256"]
//! A Microsoft Graph simulator for tests, demos and benchmarks.
//!
//! It serves, over real HTTP, everything graph-cdc reads from Graph, following
//! `shared/graph/NOTES.md`: the five delta endpoints under `/v1.0` and `/beta`, the user
//! lookup and security groups (members, transitive members, `/groups/delta`), the OAuth2
//! token endpoint with app permissions, throttling and mailbox limits, and switchable faults. A control API under
//! `/_sim` creates and changes data, sets faults and reports the *truth*: the current state
//! of a partition, which a correct compacted topic must equal.
//!
//! ```text
//!   model.rs    mailboxes, items, change stamps      delta.rs   rounds, pages, the truth
//!   tokens.rs   sync state: tokens and generations   quirks.rs  per-mailbox paging quirks
//!   present.rs  time zones, $select, id types        auth.rs    token endpoint
//!   faults.rs   fault rules and mailbox limits       http.rs    Graph routes
//!   control.rs  /_sim control API                    generate.rs bulk data and mutations
//!   permissions.rs  app roles each endpoint needs, and the 403s without them
//!   subscriptions.rs  change-notification subscriptions, the Event Hubs outbox
//!   notify.rs   validation handshake, notification dispatcher, delivery faults
//! ```
//!
//! Change notifications (issue 16): `/subscriptions` under `/v1.0` and `/beta` creates,
//! renews, lists and deletes webhook subscriptions on a mailbox's events or a To Do list's
//! tasks, after the validation handshake Graph runs against the notification URL; every
//! change of a watched event or task then reaches it as a change notification after
//! `notification_delay_ms` (or goes to [`subscriptions::EventHubOutbox`] for `EventHub:`
//! URLs). `/_sim/subscriptions` lists them and sends lifecycle events;
//! `/_sim/notifications/faults` drops, duplicates, delays, reorders and fails handshakes.
//! The dispatcher runs with [`SimServer::start`] and [`serve`]; a bare [`SimState`] records
//! changes for its subscriptions but sends nothing.

pub mod auth;
pub mod control;
pub mod delta;
pub mod faults;
pub mod generate;
pub mod http;
pub mod model;
pub mod notify;
pub mod permissions;
pub mod present;
pub mod quirks;
pub mod subscriptions;
pub mod text;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors of the simulator's own operations (mapped to Graph or control-API answers).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
}

/// Tunables, readable and patchable at `/_sim/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSettings {
    /// Lifetime of issued access tokens, in seconds (Graph: about an hour).
    pub token_lifetime_secs: u64,
    /// Concurrent requests per mailbox before `429` (Outlook: 4).
    pub mailbox_concurrency: usize,
    /// Requests per mailbox per `budget_window_secs` before `429` (Outlook: 10,000 / 10 min).
    pub mailbox_budget: usize,
    pub budget_window_secs: u64,
    /// State tokens kept; older ones are forgotten (then `410` without `Location`).
    pub token_cache_capacity: usize,
    /// Generations of sync state kept per chain (0: all): a link older than the newest this
    /// many answers `410 SyncStateNotFound` (3: "generation=149;[highest=157][157][155][156]",
    /// microsoftgraph/microsoft-graph-docs issue 2350; see `tokens.rs`).
    pub sync_state_generations: usize,
    /// Which `410` answers carry a `Location` header (see [`GoneLocation`]).
    pub gone_location: GoneLocation,
    /// A calendar view's link sent with another `Prefer: IdType` than its chain started
    /// with answers `410 SyncStateInvalid`, as reported in alcionai/corso PR 3176. Off by
    /// default: Graph documents links as "compatible with both ID formats, so your
    /// application does not need to re-synchronize" (concepts/outlook-immutable-id.md,
    /// Immutable ID with delta query).
    pub id_type_bound_links: bool,
    /// Probability that a page repeats an item already sent in the round.
    pub replay_probability: f64,
    /// Probability that a page is empty but still carries a nextLink.
    pub empty_page_probability: f64,
    /// Page size without `Prefer: odata.maxpagesize`.
    pub default_page_size: usize,
    /// Largest page size honoured.
    pub max_page_size: usize,
    /// Index entries examined per page before an empty page is returned anyway.
    pub scan_limit: usize,
    /// Base URL put in links; by default taken from the request's `Host`.
    pub public_url: Option<String>,
    /// How To Do answers a token without `Tasks.Read.All` (`permissions.rs`).
    pub todo_denied: permissions::TodoDenied,
    /// Milliseconds between a change and its change notification (Graph: "doesn't delay
    /// sending notifications", within its SLA; concepts/change-notifications-delivery-webhooks.md).
    pub notification_delay_ms: u64,
    /// Overrides every subscription's longest lifetime (10,080 minutes for Outlook events,
    /// 4,230 for To Do tasks), so tests can make subscriptions expire within seconds.
    pub subscription_max_secs: Option<u64>,
    /// Active Outlook subscriptions per mailbox, all apps together (Graph: 1,000).
    pub subscriptions_per_mailbox: usize,
    /// Deliveries repeated after a failed one (Graph keeps trying for up to 4 hours).
    pub notification_retries: u32,
    /// First wait before a repeated delivery, doubling each time.
    pub notification_retry_ms: u64,
    /// Seconds change notifications still flow after a `reauthorizationRequired` lifecycle
    /// event before they pause until the subscription is reauthorized or renewed.
    pub reauthorization_grace_secs: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 3599,
            mailbox_concurrency: 4,
            mailbox_budget: 10_000,
            budget_window_secs: 600,
            token_cache_capacity: 1_000_000,
            sync_state_generations: 3,
            gone_location: GoneLocation::Documented,
            id_type_bound_links: false,
            replay_probability: 0.0,
            empty_page_probability: 0.0,
            default_page_size: 10,
            max_page_size: 1000,
            scan_limit: 5000,
            public_url: None,
            todo_denied: permissions::TodoDenied::Forbidden,
            notification_delay_ms: 200,
            subscription_max_secs: None,
            subscriptions_per_mailbox: 1000,
            notification_retries: 3,
            notification_retry_ms: 500,
            reauthorization_grace_secs: 60,
        }
    }
}

/// Which `410 Gone` answers name the initial request in a `Location` header.
///
/// Graph documents a "synchronization reset" as "a response code of 410 (gone) and a Location
/// header containing a request URL with an empty $deltaToken" (concepts/delta-query-overview.md,
/// Synchronization reset), while an Outlook token that fell out of its sync state answers 410
/// `SyncStateNotFound` with no `Location` (the response quoted in
/// microsoftgraph/microsoft-graph-docs issue 2350 has only `request-id`, `client-request-id`,
/// `x-ms-ags-diagnostic` and `duration` headers). A client must handle both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneLocation {
    /// Resets (the `gone` fault, `/_sim/evict`) carry it; expired generations, tokens the
    /// cache dropped and id-type changes do not.
    #[default]
    Documented,
    /// Every 410 whose initial request is known carries it.
    Always,
    /// No 410 carries it.
    Never,
}

/// Request counters, readable at `/_sim/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Graph requests by endpoint kind, then HTTP status.
    pub requests: HashMap<String, HashMap<u16, u64>>,
    /// Graph requests by user id.
    pub by_user: HashMap<String, u64>,
    pub pages: u64,
    pub records: u64,
    /// The most records one page held (past `odata.maxpagesize` only with the
    /// `whole_series_pages` quirk).
    pub largest_page: u64,
    pub tokens_issued: u64,
    /// Highest number of concurrent requests seen per user id.
    pub max_in_flight: HashMap<String, usize>,
    /// Subscriptions and change notifications.
    pub notifications: subscriptions::NotificationStats,
}

impl Stats {
    pub fn total(&self) -> u64 {
        self.requests.values().flat_map(|m| m.values()).sum()
    }

    /// Requests of one endpoint kind answered with `status`.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of any endpoint kind answered with `status`.
    pub fn answered(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    /// The most concurrent requests any one user had.
    pub fn peak_in_flight(&self) -> usize {
        self.max_in_flight.values().copied().max().unwrap_or(0)
    }
}

/// Everything the simulator knows; shared by the HTTP handlers and in-process tests.
#[derive(Default)]
pub struct SimState {
    pub store: RwLock<model::Store>,
    pub tokens: Mutex<delta::TokenTable>,
    pub auth: Mutex<auth::Tokens>,
    pub faults: Mutex<faults::Faults>,
    pub mailboxes: faults::Mailboxes,
    pub stats: Mutex<Stats>,
    pub settings: RwLock<SimSettings>,
    /// Per-mailbox paging quirks, by user id.
    pub quirks: RwLock<quirks::Quirks>,
    /// Change-notification subscriptions.
    pub subscriptions: Mutex<subscriptions::Subscriptions>,
    /// Notifications for `EventHub:` URLs, for a relay to take.
    pub eventhub: subscriptions::EventHubOutbox,
    /// Delivery faults and their random source.
    pub notification_faults: Mutex<notify::FaultState>,
}

impl SimState {
    pub fn new(settings: SimSettings) -> Arc<Self> {
        Arc::new(Self {
            settings: RwLock::new(settings),
            ..Self::default()
        })
    }

    /// Registers an app that can get tokens with a client secret.
    pub fn add_secret_client(&self, tenant: &str, client_id: &str, secret: &str) {
        self.store.write().add_client(
            tenant,
            model::Client {
                client_id: client_id.into(),
                client_secret: Some(secret.into()),
                public_key_pem: None,
                x5t_s256: None,
            },
        );
    }

    /// Sets the application permissions of an app (in `tenant`, or wherever it is
    /// registered); `None` restores the defaults. Tokens issued before keep their roles.
    pub fn set_app_roles(
        &self,
        tenant: Option<&str>,
        client_id: &str,
        roles: Option<Vec<String>>,
    ) -> Result<usize, SimError> {
        self.store.write().set_app_roles(tenant, client_id, roles)
    }

    /// Adds a fault rule, resolving its user to an id when the user exists.
    pub fn add_fault(&self, spec: faults::FaultSpec) -> u64 {
        let user_id = spec.user.as_deref().and_then(|u| {
            let store = self.store.read();
            store.user_id(u).map(str::to_string)
        });
        self.faults.lock().add(spec, user_id)
    }

    /// Evicts the state tokens of one user (id or UPN) or of everyone.
    pub fn evict_tokens(&self, user: Option<&str>) -> Result<usize, SimError> {
        let id = match user {
            Some(u) => Some(self.store.read().user(u)?.id.clone()),
            None => None,
        };
        Ok(self.tokens.lock().evict_user(id.as_deref()))
    }

    /// The truth for a query (see [`delta::truth`]).
    pub fn truth(
        &self,
        q: &delta::Query,
        pres: &present::Presentation,
    ) -> Result<std::collections::BTreeMap<String, String>, SimError> {
        delta::truth(&self.store.read(), q, pres)
    }
}

/// A running simulator bound to a socket; stops when dropped.
pub struct SimServer {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Binds `addr` (use `127.0.0.1:0` in tests) and serves in the background.
    pub async fn start(addr: &str, settings: SimSettings) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let state = SimState::new(settings);
        let shutdown = CancellationToken::new();
        let addr = listener.local_addr()?;
        let app = http::router(state.clone());
        let stop = shutdown.clone();
        let dispatcher = notify::spawn(state.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            let _ = dispatcher.await;
        });
        Ok(Self {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the simulator on `listener` until `shutdown` completes (the `graph-sim` command).
pub async fn serve(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let dispatcher = notify::spawn(state.clone(), stop.clone());
    let served = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    stop.cancel();
    let _ = dispatcher.await;
    served
}
