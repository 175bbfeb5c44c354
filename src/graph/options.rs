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
        }
    }
}

/// The `Prefer` headers of a delta request.
pub(crate) fn prefer(opts: &ClientOptions, kind: PartitionKind) -> Vec<String> {
    let mut out = vec![format!("odata.maxpagesize={}", opts.page_size)];
    if kind == PartitionKind::CalendarView {
        if let Some(tz) = &opts.timezone {
            out.push(format!("outlook.timezone=\"{tz}\""));
        }
    }
    out
}
