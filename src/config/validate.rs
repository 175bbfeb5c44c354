//! `Settings::validate`: values a type cannot express, every problem reported with its key.
//!
//! Floors, and why (each can be lifted only where it says so):
//! - `graph.poll_interval` ≥ [`MIN_POLL_INTERVAL`] (5 s) against Microsoft's Graph. Outlook
//!   throttles each app per mailbox at 10,000 requests per 10 minutes (and 4 at a time), and
//!   a mailbox has several partitions polling (its calendar view, calendar list, To Do lists
//!   and one partition per task list): at 5 s, one partition makes 120 polls per 10 minutes,
//!   so even 40 partitions of one mailbox stay under half its budget, leaving room for the
//!   pages of a round and for retries; below that, a fleet earns 429s instead of fresher
//!   data. It does not apply when `graph.base_url` points at a host that is not Microsoft's
//!   (the simulator, whose tests poll every 300 ms).
//! - `graph.request_timeout` ≥ 1 s: a page of up to 1,000 items is seldom answered faster,
//!   and a timeout retries the whole request.
//! - `kafka.transaction_timeout` ≥ 1 s: librdkafka's minimum `transaction.timeout.ms`.

use std::time::Duration;

use chrono::Utc;

use crate::window::WindowSpec;

use super::sources::source_partitions;
use super::*;

/// The shortest `graph.poll_interval` against Microsoft's Graph (see the module's comment).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `graph.request_timeout`.
pub const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

impl Settings {
    /// Checks values a type cannot express, section by section; every problem is reported
    /// with its key, all of them at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validated().map(drop)
    }

    /// [`validate`](Self::validate), answering what the `[server]` files hold (read here).
    pub(super) fn validated(&self) -> Result<ServerFiles, ConfigError> {
        let mut errs = Vec::new();
        need(&mut errs, &self.name, "name");
        graph(&mut errs, &self.graph);
        kafka(&mut errs, &self.kafka);
        worker(&mut errs, &self.worker);
        let files = server::check(&mut errs, &self.server);
        notifications::check(&mut errs, &self.notifications);
        errors(&mut errs, &self.errors, &self.kafka);
        topics(&mut errs, &self.kafka, &self.errors);
        sources(&mut errs, &self.sources, self.graph.cloud);
        if errs.is_empty() {
            Ok(files)
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

fn need(errs: &mut Vec<String>, v: &str, key: &str) {
    if v.trim().is_empty() {
        errs.push(format!("{key}: must not be empty"));
    }
}

fn positive(errs: &mut Vec<String>, durations: &[(&str, Dur)]) {
    for (key, d) in durations {
        if d.0.is_zero() {
            errs.push(format!("{key}: must be longer than 0"));
        }
    }
}

/// `d` as written back (`300ms`, `5s`).
fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `[graph]`.
fn graph(errs: &mut Vec<String>, g: &GraphSettings) {
    need(errs, &g.tenant_id, "graph.tenant_id");
    need(errs, &g.client_id, "graph.client_id");
    if let Err(e) = super::timezones::check(&g.timezone) {
        errs.push(format!("graph.timezone: {e}"));
    }
    for (key, url) in [
        ("graph.base_url", &g.base_url),
        ("graph.authority_url", &g.authority_url),
    ] {
        if let Some(u) = url {
            match url::Url::parse(u) {
                Ok(p) if p.scheme() == "https" => {}
                Ok(p) if p.scheme() == "http" && (is_loopback(&p) || g.allow_insecure_http) => {}
                Ok(p) if p.scheme() == "http" => errs.push(format!(
                    "{key}: '{u}' is plain http to a host that is not loopback: the client secret and access tokens would cross the network in clear text; use https (graph.allow_insecure_http = true allows it, for a simulator only)"
                )),
                _ => errs.push(format!("{key}: '{u}' is not an http(s) URL")),
            }
        }
    }
    if g.max_pages_per_round == 0 {
        errs.push("graph.max_pages_per_round: must be at least 1".into());
    }
    if g.max_response_bytes == 0 {
        errs.push("graph.max_response_bytes: must be at least 1".into());
    }
    if let Err(e) = g.credentials() {
        errs.push(e);
    }
    if !(1..=1000).contains(&g.page_size) {
        errs.push("graph.page_size: must be between 1 and 1000".into());
    }
    if !(0.0..1.0).contains(&g.poll_jitter) {
        errs.push("graph.poll_jitter: must be at least 0 and below 1".into());
    }
    if g.max_concurrency_per_mailbox == 0 {
        errs.push("graph.max_concurrency_per_mailbox: must be at least 1".into());
    }
    if g.max_concurrency == 0 {
        errs.push("graph.max_concurrency: must be at least 1".into());
    }
    if g.membership_interval.0 < Duration::from_secs(1) {
        errs.push("graph.membership_interval: must be at least 1s".into());
    }
    positive(
        errs,
        &[
            ("graph.poll_interval", g.poll_interval),
            ("graph.request_timeout", g.request_timeout),
            ("graph.base_backoff", g.base_backoff),
            ("graph.max_backoff", g.max_backoff),
        ],
    );
    if g.is_microsoft_graph() && g.poll_interval.0 < MIN_POLL_INTERVAL {
        errs.push(format!(
            "graph.poll_interval: {} is below the floor of {} for Microsoft Graph, which throttles each app at 10,000 requests per mailbox per 10 minutes across all of a mailbox's partitions (the floor applies unless graph.base_url points at another host, such as a simulator)",
            show(g.poll_interval.0),
            show(MIN_POLL_INTERVAL)
        ));
    }
    if !g.request_timeout.0.is_zero() && g.request_timeout.0 < MIN_REQUEST_TIMEOUT {
        errs.push(format!(
            "graph.request_timeout: {} is below the floor of {}: pages of up to 1,000 items are seldom answered that fast, and every timeout retries the request",
            show(g.request_timeout.0),
            show(MIN_REQUEST_TIMEOUT)
        ));
    }
    if g.base_backoff.0 > g.max_backoff.0 {
        errs.push("graph.base_backoff: must not be longer than graph.max_backoff".into());
    }
}

/// A loopback host: `localhost`, 127.0.0.0/8 or `::1` (where plain http stays on the machine).
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// `[kafka]` (its option tables refuse the properties exactly-once owns).
fn kafka(errs: &mut Vec<String>, k: &KafkaSettings) {
    need(errs, &k.bootstrap_servers, "kafka.bootstrap_servers");
    if k.transaction_timeout.0 < Duration::from_secs(1) {
        errs.push(format!(
            "kafka.transaction_timeout: {} is below librdkafka's minimum transaction.timeout.ms of 1s",
            show(k.transaction_timeout.0)
        ));
    }
    if k.topic_partitions < 1 {
        errs.push("kafka.topic_partitions: must be at least 1".into());
    }
    if k.replication_factor < 1 {
        errs.push("kafka.replication_factor: must be at least 1".into());
    }
    let session = k.session_timeout.0;
    if session < Duration::from_secs(6) || session > Duration::from_secs(300) {
        errs.push(format!(
            "kafka.session_timeout: {} is outside 6s–300s (the broker's default group.min.session.timeout.ms and group.max.session.timeout.ms)",
            show(session)
        ));
    }
    k.check_owned(errs);
}

/// `[worker]`.
fn worker(errs: &mut Vec<String>, w: &WorkerSettings) {
    positive(
        errs,
        &[
            ("worker.heartbeat_interval", w.heartbeat_interval),
            ("worker.shutdown_timeout", w.shutdown_timeout),
            ("worker.offsets_load_timeout", w.offsets_load_timeout),
            ("worker.health_interval", w.health_interval),
        ],
    );
    if w.max_batch_records == 0 {
        errs.push("worker.max_batch_records: must be at least 1".into());
    }
    if !(1..=256).contains(&w.shards) {
        errs.push(format!("worker.shards: {} is outside 1–256", w.shards));
    }
}

/// `[errors]`: a dead letter topic when refused records are tolerated, and not one of ours.
fn errors(errs: &mut Vec<String>, e: &ErrorSettings, k: &KafkaSettings) {
    match (&e.tolerance, &e.dead_letter_topic) {
        (Tolerance::All, None) => errs.push(
            "errors.dead_letter_topic: required with errors.tolerance = \"all\" (refused records go there)".into(),
        ),
        (_, Some(t)) => {
            let n = &k.topics;
            let taken = [
                &n.events,
                &n.calendars,
                &n.task_lists,
                &n.tasks,
                &n.members,
                &k.offsets_topic,
                &k.state_topic,
                &k.shards_topic,
                &k.control_topic,
            ];
            if taken.contains(&t) {
                errs.push(format!(
                    "errors.dead_letter_topic: '{t}' is already a data, offsets or state topic"
                ));
            }
        }
        _ => {}
    }
}

/// Kafka's rule for a topic name, in its words: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn topic_name(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t == "." || t == ".." {
        return Err(format!("'{t}' is not a topic name Kafka accepts"));
    }
    if t.len() > 249 {
        return Err(format!(
            "'{}…' is {} characters long: Kafka allows 249",
            &t[..t.char_indices().nth(20).map_or(t.len(), |(i, _)| i)],
            t.chars().count()
        ));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "'{t}' contains {c:?}: Kafka allows only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Every topic: a name Kafka accepts, no two colliding, the offsets and state topics their
/// own, and the calendars and task lists apart.
///
/// Data topics may otherwise be shared (`events` and `tasks` in one topic, say): their keys
/// differ in shape (`{user, calendar, id}`, `{user, list, id}`, `{user, id}`), so neither
/// compaction nor a full resync's read-back of a partition's keys mixes them up. Calendars and
/// task lists are the exception: both are keyed `{user, id}`, so a full resync of a user's
/// calendar list would tombstone that user's task lists.
fn topics(errs: &mut Vec<String>, k: &KafkaSettings, e: &ErrorSettings) {
    let t = &k.topics;
    let mut all: Vec<(&str, &str)> = vec![
        ("kafka.offsets_topic", &k.offsets_topic),
        ("kafka.state_topic", &k.state_topic),
        ("kafka.shards_topic", &k.shards_topic),
        ("kafka.control_topic", &k.control_topic),
        ("kafka.topics.events", &t.events),
        ("kafka.topics.calendars", &t.calendars),
        ("kafka.topics.task_lists", &t.task_lists),
        ("kafka.topics.tasks", &t.tasks),
        ("kafka.topics.members", &t.members),
    ];
    if let Some(d) = &e.dead_letter_topic {
        all.push(("errors.dead_letter_topic", d));
    }
    let mut valid = Vec::new();
    for (key, name) in all {
        match topic_name(name) {
            Ok(()) => valid.push((key, name)),
            Err(why) => errs.push(format!("{key}: {why}")),
        }
    }
    for (i, (key, name)) in valid.iter().enumerate() {
        for (key2, name2) in &valid[..i] {
            if name == name2 {
                let why = match (*key2, *key) {
                    // Refused in `errors`, in its own words.
                    (_, "errors.dead_letter_topic") => continue,
                    ("kafka.offsets_topic", _) => {
                        "the offsets topic holds offsets only (compacted, read whole at start)"
                    }
                    ("kafka.state_topic", _) => {
                        "the state topic holds each partition's reconciliation state only (compacted, read whole at start)"
                    }
                    ("kafka.shards_topic", _) | (_, "kafka.shards_topic") => {
                        "the shards topic is the workers' group's own (one partition per shard, no records)"
                    }
                    ("kafka.control_topic", _) | (_, "kafka.control_topic") => {
                        "the control topic holds connectors' target states only"
                    }
                    ("kafka.topics.calendars", "kafka.topics.task_lists") => {
                        "calendars and task lists are both keyed {user, id}, so a full resync of one would delete the other's records"
                    }
                    // Data topics may share a topic; the dead letter topic is refused in `errors`.
                    _ => continue,
                };
                errs.push(format!("{key}: '{name}' is also {key2}: {why}"));
            } else if name.replace('.', "_") == name2.replace('.', "_") {
                errs.push(format!(
                    "{key}: '{name}' collides with {key2} '{name2}': Kafka refuses topics whose names differ only in '.' and '_'"
                ));
            }
        }
    }
}

/// `[[sources]]`: users, calendars and windows, no overlapping windows of one calendar, no
/// partition listed twice.
fn sources(errs: &mut Vec<String>, sources: &[Source], cloud: Cloud) {
    if sources.is_empty() {
        errs.push("sources: nothing to track: add at least one [[sources]] entry".into());
    }
    let mut views: Vec<ViewWindow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // Each group's `on_member_removed`, as its first source says.
    let mut policies: Vec<(&str, usize, OnMemberRemoved)> = Vec::new();
    // What each group source tracks (kind, calendar), and through which group.
    let mut tracked: Vec<(String, &str, usize)> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let group_key;
        let users: &[String] = match (s.users(), s.group()) {
            (Some(users), None) => {
                if users.is_empty() {
                    errs.push(format!("sources[{i}].users: must list at least one user"));
                }
                users
            }
            (None, Some(g)) => {
                if g.trim().is_empty() || g.contains(char::is_whitespace) || g.contains('/') {
                    errs.push(format!(
                        "sources[{i}].group: '{g}' is not a group object id"
                    ));
                }
                let policy = s.on_member_removed().unwrap_or_default();
                match policies.iter().find(|(group, _, _)| *group == g) {
                    Some((_, j, other)) if *other != policy => errs.push(format!(
                        "sources[{i}].on_member_removed: \"{}\" differs from sources[{j}] of the same group (\"{}\"): a member leaves all of a group's sources at once, give them one choice",
                        policy.as_str(),
                        other.as_str()
                    )),
                    Some(_) => {}
                    None => policies.push((g, i, policy)),
                }
                // Two sources of one group collide as two of one user would.
                group_key = [format!("group:{g}")];
                &group_key
            }
            (Some(_), Some(_)) => {
                errs.push(format!(
                    "sources[{i}].users / sources[{i}].group: give one of them, not both"
                ));
                &[]
            }
            (None, None) => {
                errs.push(format!("sources[{i}].users / sources[{i}].group: give the users to track, or a group whose members they are"));
                &[]
            }
        };
        if s.group().is_none() && s.on_member_removed().is_some() {
            errs.push(format!(
                "sources[{i}].on_member_removed: only for a source with a group"
            ));
        }
        for u in users.iter().filter(|_| s.group().is_none()) {
            if u.trim().is_empty() || u.contains(char::is_whitespace) || u.contains('/') {
                errs.push(format!(
                    "sources[{i}].users: '{u}' is not a user principal name or id"
                ));
            }
        }
        match s {
            Source::CalendarView {
                calendar,
                start,
                end,
                window_roll,
                ..
            } => {
                if calendar.trim().is_empty() || calendar.contains('/') {
                    errs.push(format!(
                        "sources[{i}].calendar: '{calendar}' is not a calendar id"
                    ));
                }
                if window_roll.0 < Duration::from_secs(1) {
                    errs.push(format!("sources[{i}].window_roll: must be at least 1s"));
                }
                match WindowSpec::new(start, end) {
                    Err((bound, e)) => errs.push(format!("sources[{i}].{bound}: {e}")),
                    Ok(spec) => {
                        if let Err(e) = spec.check(Utc::now(), window_roll.0) {
                            errs.push(format!("sources[{i}].end: {e}"));
                        }
                    }
                }
                // One window per calendar: record keys leave the window out, and Graph
                // reports what leaves a window as `@removed`, so two windows of one calendar
                // would tombstone each other's events, adjacent or not.
                let cal = calendar.to_ascii_lowercase();
                for u in users {
                    for (u2, c2, j) in &views {
                        if u2.eq_ignore_ascii_case(u) && *c2 == cal {
                            errs.push(format!(
                                "sources[{i}]: {u}'s calendar '{calendar}' is already tracked by sources[{j}]: a calendar may have one window, since its events' keys do not name the window and Graph reports an event leaving a window as removed, so two windows would delete each other's events (widen one window instead)"
                            ));
                        }
                    }
                    views.push((u.clone(), cal.clone(), i));
                }
            }
            Source::Todo { .. } if cloud == Cloud::China => {
                errs.push(format!(
                    "sources[{i}].kind: To Do delta is not offered in the china cloud"
                ));
            }
            _ => {}
        }
        // A user in two groups tracking one kind would have one set of partitions, stopped
        // by the first group it left: one group per kind (and calendar).
        if let Some(g) = s.group() {
            let what = match s {
                Source::CalendarView { calendar, .. } => {
                    format!("calendar '{}'", calendar.to_ascii_lowercase())
                }
                Source::CalendarList { .. } => "calendar lists".into(),
                Source::Todo { .. } => "To Do".into(),
            };
            match tracked.iter().find(|(w, _, _)| *w == what) {
                Some((_, g2, j)) if *g2 != g => errs.push(format!(
                    "sources[{i}].group: sources[{j}] tracks {what} through group '{g2}' already: a user in both groups would share one set of partitions, stopped by the first group it left; nest the groups in one group and name that one"
                )),
                Some(_) => {}
                None => tracked.push((what, g, i)),
            }
        }
        let parts = match s.group() {
            Some(_) => source_partitions(s).map(|ps| {
                ps.iter()
                    .map(|p| p.with_user(users.first().map_or("", String::as_str)))
                    .collect()
            }),
            None => source_partitions(s),
        };
        if let Ok(parts) = parts {
            for p in parts {
                if !seen.insert(p.clone()) {
                    errs.push(format!("sources[{i}]: partition {p} is listed twice"));
                }
            }
        }
    }
}

/// A calendar view's (user, calendar, source index), for the one-window-per-calendar check.
type ViewWindow = (String, String, usize);
