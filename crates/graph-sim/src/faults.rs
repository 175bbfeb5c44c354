//! Fault injection and Outlook's per-mailbox limits.
//!
//! Faults are rules matched in order against each Graph request (user, endpoint, link kind);
//! a rule fires always, with a probability, or for its next N matches. Mailbox limits are
//! always on: at most `mailbox_concurrency` requests in flight per mailbox (the next one gets
//! `429`) and a request budget per sliding window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The state token is evicted: `410 Gone`, `SyncStateNotFound`, `Location` (token requests only).
    Gone,
    /// `429 Too Many Requests` with `Retry-After` (`retry_after`, fractional allowed).
    Throttle,
    /// `503 Service Unavailable` (with `Retry-After` when `retry_after` is set).
    Unavailable,
    /// `504 Gateway Timeout`.
    GatewayTimeout,
    /// `200` with a body that is not JSON.
    Malformed,
    /// `200` whose body stops half-way (the connection is cut).
    Truncated,
    /// The answer is delayed by `delay_ms`.
    Slow,
    /// The access token is treated as expired: `401 InvalidAuthenticationToken`.
    Unauthorized,
    /// `307 Temporary Redirect` to `location`. Graph never redirects delta requests; a
    /// proxy or a misconfigured host does, and a client that follows a 307 from the token
    /// endpoint posts its client secret again, to wherever `Location` points (RFC 9110
    /// §15.4.8: the method and body are kept). Also on the token endpoint.
    Redirect,
    /// `200` with a body of `body_bytes` bytes (default 256 MiB) whose length is not
    /// announced: the answer (page or token) followed by whitespace, valid JSON a client
    /// without a cap would try to hold whole. Also on the token endpoint.
    Oversized,
}

/// Which requests of a round a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// The initial request of a round (no token).
    Initial,
    /// A `$skiptoken` link.
    Next,
    /// A `$deltatoken` link.
    Delta,
}

/// The `endpoint` of token requests: rules apply to them only when they name it.
pub const TOKEN_ENDPOINT: &str = "token";

/// A fault rule, as posted to `/_sim/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// Only this user's requests (id or UPN); every user when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Only this endpoint: `calendar_view`, `calendar_list`, `task_lists`, `tasks`; the
    /// directory's `user`, `group`, `group_members`, `transitive_members`, `groups_delta`
    /// (matched as initial requests, without a user: `gone` never fires on them); or `token`
    /// (the token endpoint, which only rules naming it apply to).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Only this kind of request.
    #[serde(default)]
    pub on: Option<LinkKind>,
    /// Fire with this probability (0..=1) per matching request.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Fire for the next N matching requests only.
    #[serde(default)]
    pub count: Option<u64>,
    /// `Retry-After` seconds for throttle/unavailable (may be fractional).
    #[serde(default)]
    pub retry_after: Option<f64>,
    /// Delay for `slow`, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Where `redirect` points (default `https://redirect.invalid/`).
    #[serde(default)]
    pub location: Option<String>,
    /// Size of an `oversized` body, in bytes.
    #[serde(default)]
    pub body_bytes: Option<u64>,
}

impl FaultSpec {
    /// A rule of `kind` for every Graph request, always, with the kind's defaults.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            user: None,
            endpoint: None,
            on: None,
            probability: None,
            count: None,
            retry_after: None,
            delay_ms: None,
            location: None,
            body_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRule {
    pub id: u64,
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// User id the `user` field resolved to (matching accepts either).
    #[serde(skip)]
    pub user_id: Option<String>,
    /// How often it fired.
    pub fired: u64,
}

/// The request a fault is matched against.
pub struct RequestInfo<'a> {
    pub user_id: &'a str,
    pub upn: &'a str,
    pub endpoint: &'a str,
    pub link: LinkKind,
}

#[derive(Default)]
pub struct Faults {
    next_id: u64,
    rules: Vec<FaultRule>,
}

impl Faults {
    pub fn add(&mut self, spec: FaultSpec, user_id: Option<String>) -> u64 {
        self.next_id += 1;
        self.rules.push(FaultRule {
            id: self.next_id,
            spec,
            user_id,
            fired: 0,
        });
        self.next_id
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        before != self.rules.len()
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn list(&self) -> Vec<FaultRule> {
        self.rules.clone()
    }

    /// The first rule that fires for this request, if any (counting it down).
    pub fn check(&mut self, req: &RequestInfo) -> Option<FaultSpec> {
        let mut rng = rand::rng();
        let mut fired = None;
        for r in &mut self.rules {
            let s = &r.spec;
            let user_ok = s.user.as_deref().is_none_or(|u| {
                u.eq_ignore_ascii_case(req.upn)
                    || u == req.user_id
                    || r.user_id.as_deref() == Some(req.user_id)
            });
            let endpoint_ok = match s.endpoint.as_deref() {
                Some(e) => e == req.endpoint,
                None => req.endpoint != TOKEN_ENDPOINT,
            };
            let link_ok = s.on.is_none_or(|l| l == req.link);
            // A 410 needs a token to evict.
            let applicable = !(s.kind == FaultKind::Gone && req.link == LinkKind::Initial);
            if !(user_ok && endpoint_ok && link_ok && applicable) || s.count == Some(0) {
                continue;
            }
            if let Some(p) = s.probability {
                if !rng.random_bool(p.clamp(0.0, 1.0)) {
                    continue;
                }
            }
            if let Some(c) = r.spec.count.as_mut() {
                *c -= 1;
            }
            r.fired += 1;
            fired = Some(r.spec.clone());
            break;
        }
        // Spent count-limited rules go away so listings stay short.
        self.rules.retain(|r| r.spec.count != Some(0));
        fired
    }
}

/// Per-mailbox in-flight counter and request log.
#[derive(Default)]
pub struct Mailbox {
    in_flight: AtomicUsize,
    recent: Mutex<VecDeque<Instant>>,
}

/// Held while a request is in flight; releases its mailbox slot on drop.
pub struct Slot(Arc<Mailbox>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a mailbox refused a request.
pub enum Refusal {
    Concurrency,
    /// Budget spent; retry after this long.
    Budget(Duration),
}

#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Arc<Mailbox>>>,
}

impl Mailboxes {
    /// Takes an in-flight slot for `user` or says why not; returns the in-flight count too.
    pub fn enter(
        &self,
        user: &str,
        concurrency: usize,
        budget: usize,
        window: Duration,
    ) -> Result<(Slot, usize), Refusal> {
        let mb = self
            .boxes
            .lock()
            .entry(user.to_string())
            .or_default()
            .clone();
        let now = Instant::now();
        {
            let mut recent = mb.recent.lock();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                recent.pop_front();
            }
            if recent.len() >= budget {
                let wait = recent
                    .front()
                    .map(|t| window.saturating_sub(now.duration_since(*t)))
                    .unwrap_or(window);
                return Err(Refusal::Budget(wait));
            }
            recent.push_back(now);
        }
        let n = mb.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = Slot(mb);
        if n > concurrency {
            return Err(Refusal::Concurrency);
        }
        Ok((slot, n))
    }

    pub fn reset(&self) {
        self.boxes.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(link: LinkKind) -> RequestInfo<'static> {
        RequestInfo {
            user_id: "u1",
            upn: "alice@contoso.com",
            endpoint: "calendar_view",
            link,
        }
    }

    #[test]
    fn count_limited_rules_fire_n_times_and_gone_skips_initial_requests() {
        let mut f = Faults::default();
        f.add(
            FaultSpec {
                count: Some(2),
                ..FaultSpec::new(FaultKind::Gone)
            },
            None,
        );
        assert!(f.check(&req(LinkKind::Initial)).is_none());
        assert!(f.check(&req(LinkKind::Next)).is_some());
        assert!(f.check(&req(LinkKind::Delta)).is_some());
        assert!(f.check(&req(LinkKind::Delta)).is_none());
        assert!(f.list().is_empty());
    }

    #[test]
    fn user_and_endpoint_filters_and_probability() {
        let mut f = Faults::default();
        f.add(
            FaultSpec {
                user: Some("ALICE@contoso.com".into()),
                endpoint: Some("tasks".into()),
                ..FaultSpec::new(FaultKind::Throttle)
            },
            None,
        );
        assert!(f.check(&req(LinkKind::Initial)).is_none());
        let mut r = req(LinkKind::Initial);
        r.endpoint = "tasks";
        assert!(f.check(&r).is_some());
        f.clear();
        f.add(
            FaultSpec {
                probability: Some(0.5),
                ..FaultSpec::new(FaultKind::Unavailable)
            },
            None,
        );
        let hits = (0..2000)
            .filter(|_| f.check(&req(LinkKind::Next)).is_some())
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
    }

    #[test]
    fn token_requests_match_only_rules_naming_the_token_endpoint() {
        let mut f = Faults::default();
        f.add(FaultSpec::new(FaultKind::Throttle), None);
        let token = RequestInfo {
            user_id: "",
            upn: "",
            endpoint: TOKEN_ENDPOINT,
            link: LinkKind::Initial,
        };
        assert!(f.check(&token).is_none(), "a rule for every Graph request");
        assert!(f.check(&req(LinkKind::Next)).is_some());
        f.add(
            FaultSpec {
                endpoint: Some(TOKEN_ENDPOINT.into()),
                location: Some("http://127.0.0.1:9/".into()),
                ..FaultSpec::new(FaultKind::Redirect)
            },
            None,
        );
        let fired = f.check(&token).expect("the token rule");
        assert_eq!(fired.kind, FaultKind::Redirect);
        assert_eq!(fired.location.as_deref(), Some("http://127.0.0.1:9/"));
    }

    #[test]
    fn mailbox_refuses_the_fifth_concurrent_request_and_enforces_the_budget() {
        let m = Mailboxes::default();
        let w = Duration::from_secs(600);
        let held: Vec<_> = (0..4)
            .map(|_| m.enter("u", 4, 100, w).ok().unwrap())
            .collect();
        assert!(matches!(m.enter("u", 4, 100, w), Err(Refusal::Concurrency)));
        assert!(m.enter("other", 4, 100, w).is_ok());
        drop(held);
        assert!(m.enter("u", 4, 100, w).is_ok());
        let m = Mailboxes::default();
        for _ in 0..3 {
            drop(m.enter("u", 4, 3, w).ok().unwrap());
        }
        assert!(matches!(m.enter("u", 4, 3, w), Err(Refusal::Budget(_))));
    }
}
