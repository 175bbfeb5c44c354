//! The Graph side: everything that talks to Microsoft Graph.
//!
//! - `error.rs`: [`GraphError`] and the errors behind it.
//! - `auth.rs`: OAuth2 client credentials (secret or certificate), cached tokens.
//! - `client.rs`: the HTTP client: throttling, retries, per-mailbox and global concurrency.
//! - `options.rs`: the client's tunables and `Prefer` headers (shared with batching).
//! - `http.rs`: the transport rules every request shares: no redirects, capped bodies.
//! - `batch.rs`: deltaLink polls sent in JSON batches (`graph.batch_polls`).
//! - `delta.rs`: parsing a delta page without re-serialising its items.
//! - `partition.rs`: each partition kind's route: its first request, and which links
//!   (from the offsets topic or an operator) address its own resource.
//! - `reader.rs`: a partition's rounds (pages → source records, resync after `410`).
//! - `guard.rs`: the paging guard: a round that repeats a nextLink or a page, or takes more
//!   than `graph.max_pages_per_round` pages, is abandoned; a partition that keeps looping fails.
//! - `lists.rs`: which task partitions a batch of To Do lists starts, runs and resets.
//! - `users.rs`: a configured user (principal name or id) resolved to its object id.
//! - `subscriptions.rs`: change notifications: which partitions Graph notifies of, the
//!   subscription requests, the notifications it posts.
//!
//! Imports run one way (`a → b`: `a` uses `b`), so there is no circle: `reader` → `client`,
//! `guard`, `lists`, `partition`; `guard` → `delta`; `client` → `batch` → `auth`, `delta`,
//! `options`, `http`; `auth` → `http` → `options`; everything that fails → `error`, which uses
//! nothing of Graph's.
//!
//! It knows nothing of Kafka and imports neither the worker nor the sink: it yields
//! complete [`crate::source::SourceBatch`]es.

pub mod auth;
pub mod batch;
pub mod client;
pub mod delta;
pub mod error;
pub mod guard;
pub mod http;
pub mod lists;
pub mod members;
pub mod options;
pub mod partition;
pub mod reader;
pub mod rounds;
pub mod subscriptions;
pub mod users;

pub use auth::{AccessToken, Credential, TokenProvider};
pub use client::GraphClient;
pub use error::{AuthError, GraphError, MalformedPage, Transient};
pub use lists::KnownLists;
pub use options::ClientOptions;
pub use partition::{LinkMismatch, Route};
pub use reader::PartitionReader;
pub use rounds::{Restart, Rounds};
