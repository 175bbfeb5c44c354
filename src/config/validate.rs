//! `Settings::validate`: values a type cannot express, every problem reported with its key.

use chrono::{DateTime, Utc};

use super::*;

impl Settings {
    /// Checks values a type cannot express; every problem is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let mut need = |v: &str, key: &str| {
            if v.trim().is_empty() {
                errs.push(format!("{key}: must not be empty"));
            }
        };
        need(&self.name, "name");
        need(&self.graph.tenant_id, "graph.tenant_id");
        need(&self.graph.client_id, "graph.client_id");
        need(&self.kafka.bootstrap_servers, "kafka.bootstrap_servers");
        need(&self.kafka.offsets_topic, "kafka.offsets_topic");
        need(&self.graph.timezone, "graph.timezone");
        let g = &self.graph;
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
        for (key, d) in [
            ("graph.poll_interval", g.poll_interval),
            ("graph.request_timeout", g.request_timeout),
            ("graph.base_backoff", g.base_backoff),
            ("graph.max_backoff", g.max_backoff),
            ("kafka.transaction_timeout", self.kafka.transaction_timeout),
            ("worker.heartbeat_interval", self.worker.heartbeat_interval),
            ("worker.shutdown_timeout", self.worker.shutdown_timeout),
            (
                "worker.offsets_load_timeout",
                self.worker.offsets_load_timeout,
            ),
        ] {
            if d.0.is_zero() {
                errs.push(format!("{key}: must be longer than 0"));
            }
        }
        if g.base_backoff.0 > g.max_backoff.0 {
            errs.push("graph.base_backoff: must not be longer than graph.max_backoff".into());
        }
        if self.worker.max_batch_records == 0 {
            errs.push("worker.max_batch_records: must be at least 1".into());
        }
        if self.kafka.topic_partitions < 1 {
            errs.push("kafka.topic_partitions: must be at least 1".into());
        }
        if self.kafka.replication_factor < 1 {
            errs.push("kafka.replication_factor: must be at least 1".into());
        }
        self.kafka.check_owned(&mut errs);
        match (&self.errors.tolerance, &self.errors.dead_letter_topic) {
            (Tolerance::All, None) => errs.push(
                "errors.dead_letter_topic: required with errors.tolerance = \"all\" (refused records go there)".into(),
            ),
            (_, Some(t)) if t.trim().is_empty() => {
                errs.push("errors.dead_letter_topic: must not be empty".into())
            }
            (_, Some(t)) => {
                let k = &self.kafka.topics;
                let taken = [&k.events, &k.calendars, &k.task_lists, &k.tasks, &self.kafka.offsets_topic];
                if taken.contains(&t) {
                    errs.push(format!(
                        "errors.dead_letter_topic: '{t}' is already a data or offsets topic"
                    ));
                }
            }
            _ => {}
        }
        if self.sources.is_empty() {
            errs.push("sources: nothing to track: add at least one [[sources]] entry".into());
        }
        // Calendar views of one user and calendar must not overlap.
        let mut views: Vec<ViewWindow> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
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
                                    if u2.eq_ignore_ascii_case(u)
                                        && *c2 == cal
                                        && a < *b2
                                        && *a2 < b
                                    {
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
                Source::Todo { .. } if g.cloud == Cloud::China => {
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
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// A calendar view's (user, calendar, start, end, source index), for the overlap check.
type ViewWindow = (String, String, DateTime<Utc>, DateTime<Utc>, usize);
