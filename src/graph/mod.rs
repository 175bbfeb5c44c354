//! The Graph side: everything that talks to Microsoft Graph.
//!
//! - `auth.rs`: OAuth2 client credentials (secret or certificate), cached tokens.
//! - `client.rs`: the HTTP client: throttling, retries, per-mailbox and global concurrency.
//! - `options.rs`: the client's tunables and `Prefer` headers (shared with batching).
//! - `batch.rs`: deltaLink polls sent in JSON batches (`graph.batch_polls`).
//! - `delta.rs`: parsing a delta page without re-serialising its items.
//! - `partition.rs`: what each partition kind requests first.
//! - `reader.rs`: a partition's rounds (pages → source records, resync after `410`).
//!
//! It knows nothing of Kafka: it yields [`crate::source::SourceBatch`]es.

pub mod auth;
pub mod batch;
pub mod client;
pub mod delta;
pub mod options;
pub mod partition;
pub mod reader;

pub use auth::{Credential, TokenProvider};
pub use client::GraphClient;
pub use options::ClientOptions;
pub use reader::PartitionReader;

/// What can go wrong talking to Graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The state token is gone (`410`): the round must restart.
    #[error("sync state gone ({code}); resync required")]
    Gone {
        code: String,
        /// The initial request Graph suggests restarting from.
        location: Option<String>,
    },
    /// A `4xx` other than 401/410/429: this partition's request is wrong (bad user, no access…).
    #[error("Graph answered {status} {code}: {message}")]
    Client {
        status: u16,
        code: String,
        message: String,
    },
    /// Still throttled, failing or malformed after every retry.
    #[error("giving up after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: String },
    /// The token endpoint refused us (bad credentials, unknown tenant…).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A link or URL that cannot be used.
    #[error("bad URL: {0}")]
    Url(String),
}

impl GraphError {
    /// Errors that mark the partition failed (rather than being retried later).
    pub fn is_partition_fault(&self) -> bool {
        matches!(self, GraphError::Client { .. } | GraphError::Url(_))
    }
}
