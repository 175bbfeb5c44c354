//! The Graph client's tunables and the request headers they imply, shared by the plain
//! client (`client.rs`) and JSON batching (`batch.rs`), so neither imports the other.

use std::time::Duration;

use crate::source::PartitionKind;

/// Tunables of the client (built from the `[graph]` settings).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `Prefer: odata.maxpagesize`.
    pub page_size: usize,
    /// `Prefer: outlook.timezone` for calendar views (`None`: UTC, Graph's default).
    pub timezone: Option<String>,
    pub max_concurrency_per_mailbox: usize,
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    pub max_retries: u32,
    /// First backoff step when Graph gives no `Retry-After`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// deltaLink polls go through `POST /$batch` (see `batch.rs`).
    pub batch_polls: bool,
    /// `Prefer: IdType="ImmutableId"` on Outlook requests (calendar views and calendar
    /// lists): event ids then survive moves between calendars.
    pub immutable_ids: bool,
    /// The largest answer body read (Graph's and the token endpoint's); a larger one is
    /// retried as an error (see `http.rs`).
    pub max_response_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            page_size: 100,
            timezone: None,
            max_concurrency_per_mailbox: 4,
            max_concurrency: 64,
            request_timeout: Duration::from_secs(30),
            max_retries: 10,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            batch_polls: false,
            immutable_ids: true,
            max_response_bytes: 64 << 20,
        }
    }
}

/// The `Prefer` headers of a delta request, one value each (the plain client sends them as
/// separate headers, a batch item joins them with ", "; Graph reads both the same way).
pub(crate) fn prefer(opts: &ClientOptions, kind: PartitionKind) -> Vec<String> {
    // A directory listing pages by `$top` (in its URL, see `Route`), not by Prefer.
    if kind == PartitionKind::GroupMembers {
        return Vec::new();
    }
    let mut out = vec![format!("odata.maxpagesize={}", opts.page_size)];
    if kind == PartitionKind::CalendarView {
        if let Some(tz) = &opts.timezone {
            out.push(format!("outlook.timezone=\"{tz}\""));
        }
    }
    // "This header only applies to the request it is included with. If you want to always
    // use immutable IDs, you must include this header with every API request"
    // (learn.microsoft.com/graph/outlook-immutable-id). Events support it; calendars are
    // containers whose ids never change, which Graph accepts it for and ignores. To Do items
    // are not among the Outlook items that support it (message, attachment, event,
    // eventMessage, contact, outlookTask), so To Do requests go without.
    let outlook = matches!(
        kind,
        PartitionKind::CalendarView | PartitionKind::CalendarList
    );
    if opts.immutable_ids && outlook {
        out.push("IdType=\"ImmutableId\"".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_ids_are_asked_for_on_outlook_requests_only() {
        let opts = ClientOptions {
            page_size: 50,
            timezone: Some("W. Europe Standard Time".into()),
            ..ClientOptions::default()
        };
        assert_eq!(
            prefer(&opts, PartitionKind::CalendarView),
            [
                "odata.maxpagesize=50",
                "outlook.timezone=\"W. Europe Standard Time\"",
                "IdType=\"ImmutableId\""
            ]
        );
        assert_eq!(
            prefer(&opts, PartitionKind::CalendarList),
            ["odata.maxpagesize=50", "IdType=\"ImmutableId\""]
        );
        for kind in [PartitionKind::TaskLists, PartitionKind::Tasks] {
            assert_eq!(prefer(&opts, kind), ["odata.maxpagesize=50"]);
        }
        assert!(
            prefer(&opts, PartitionKind::GroupMembers).is_empty(),
            "paged by $top"
        );
        let off = ClientOptions {
            immutable_ids: false,
            ..opts
        };
        assert!(!prefer(&off, PartitionKind::CalendarView)
            .iter()
            .any(|p| p.starts_with("IdType")));
    }
}
