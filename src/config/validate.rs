//! `Settings::validate`: values a type cannot express, every problem reported with its key.

use chrono::{DateTime, Utc};

use super::*;

impl Settings {
    /// Checks values a type cannot express, section by section; every problem is reported
    /// with its key, all of them at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        need(&mut errs, &self.name, "name");
        graph(&mut errs, &self.graph);
        kafka(&mut errs, &self.kafka);
        worker(&mut errs, &self.worker);
        errors(&mut errs, &self.errors, &self.kafka);
        sources(&mut errs, &self.sources, self.graph.cloud);
        if errs.is_empty() {
            Ok(())
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

/// `[graph]`.
fn graph(errs: &mut Vec<String>, g: &GraphSettings) {
    need(errs, &g.tenant_id, "graph.tenant_id");
    need(errs, &g.client_id, "graph.client_id");
    need(errs, &g.timezone, "graph.timezone");
    for (key, url) in [
        ("graph.base_url", &g.base_url),
        ("graph.authority_url", &g.authority_url),
    ] {
        if let Some(u) = url {
            match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                _ => errs.push(format!("{key}: '{u}' is not an http(s) URL")),
            }
        }
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
    positive(
        errs,
        &[
            ("graph.poll_interval", g.poll_interval),
            ("graph.request_timeout", g.request_timeout),
            ("graph.base_backoff", g.base_backoff),
            ("graph.max_backoff", g.max_backoff),
        ],
    );
    if g.base_backoff.0 > g.max_backoff.0 {
        errs.push("graph.base_backoff: must not be longer than graph.max_backoff".into());
    }
}

/// `[kafka]` (its option tables refuse the properties exactly-once owns).
fn kafka(errs: &mut Vec<String>, k: &KafkaSettings) {
    need(errs, &k.bootstrap_servers, "kafka.bootstrap_servers");
    need(errs, &k.offsets_topic, "kafka.offsets_topic");
    positive(
        errs,
        &[("kafka.transaction_timeout", k.transaction_timeout)],
    );
    if k.topic_partitions < 1 {
        errs.push("kafka.topic_partitions: must be at least 1".into());
    }
    if k.replication_factor < 1 {
        errs.push("kafka.replication_factor: must be at least 1".into());
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
        ],
    );
    if w.max_batch_records == 0 {
        errs.push("worker.max_batch_records: must be at least 1".into());
    }
}

/// `[errors]`: a dead letter topic when refused records are tolerated, and not one of ours.
fn errors(errs: &mut Vec<String>, e: &ErrorSettings, k: &KafkaSettings) {
    match (&e.tolerance, &e.dead_letter_topic) {
        (Tolerance::All, None) => errs.push(
            "errors.dead_letter_topic: required with errors.tolerance = \"all\" (refused records go there)".into(),
        ),
        (_, Some(t)) if t.trim().is_empty() => {
            errs.push("errors.dead_letter_topic: must not be empty".into())
        }
        (_, Some(t)) => {
            let n = &k.topics;
            let taken = [&n.events, &n.calendars, &n.task_lists, &n.tasks, &k.offsets_topic];
            if taken.contains(&t) {
                errs.push(format!(
                    "errors.dead_letter_topic: '{t}' is already a data or offsets topic"
                ));
            }
        }
        _ => {}
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
    for (i, s) in sources.iter().enumerate() {
        let users = match s {
            Source::CalendarView { users, .. }
            | Source::CalendarList { users }
            | Source::Todo { users } => users,
        };
        if users.is_empty() {
            errs.push(format!("sources[{i}].users: must list at least one user"));
        }
        for u in users {
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
                ..
            } => {
                if calendar.trim().is_empty() || calendar.contains('/') {
                    errs.push(format!(
                        "sources[{i}].calendar: '{calendar}' is not a calendar id"
                    ));
                }
                match (utc(start), utc(end)) {
                    (Err(e), _) => errs.push(format!("sources[{i}].start: {e}")),
                    (_, Err(e)) => errs.push(format!("sources[{i}].end: {e}")),
                    (Ok(a), Ok(b)) if b <= a => {
                        errs.push(format!("sources[{i}].end: must be after start"))
                    }
                    (Ok(a), Ok(b)) => {
                        for u in users {
                            let cal = calendar.to_ascii_lowercase();
                            for (u2, c2, a2, b2, j) in &views {
                                if u2.eq_ignore_ascii_case(u) && *c2 == cal && a < *b2 && *a2 < b {
                                    errs.push(format!(
                                        "sources[{i}]: the window of {u}'s calendar '{calendar}' overlaps the one in sources[{j}]"
                                    ));
                                }
                            }
                            views.push((u.clone(), cal, a, b, i));
                        }
                    }
                }
            }
            Source::Todo { .. } if cloud == Cloud::China => {
                errs.push(format!(
                    "sources[{i}].kind: To Do delta is not offered in the china cloud"
                ));
            }
            _ => {}
        }
        if let Ok(parts) = source_partitions(s) {
            for p in parts {
                if !seen.insert(p.clone()) {
                    errs.push(format!("sources[{i}]: partition {p} is listed twice"));
                }
            }
        }
    }
}

/// A calendar view's (user, calendar, start, end, source index), for the overlap check.
type ViewWindow = (String, String, DateTime<Utc>, DateTime<Utc>, usize);
