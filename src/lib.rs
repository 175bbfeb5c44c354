#![recursion_limit = "256"]
//! graph-cdc: Microsoft Graph delta queries into Kafka, exactly once.
//!
//! Data flows one way: a Graph delta page becomes source records, the records and the
//! partition's new offset go into one Kafka transaction, and only an acknowledged commit
//! moves the partition on. The Graph side and the Kafka side never import each other: they
//! meet in the shared types of `source` and in the worker that wires them.
//!
//! ```text
//!                     main.rs (CLI) ─────────────┐
//!                        │                       ▼
//!                     server/ (REST) ────▶ worker/ ──────────────┐ runtime: spec, status,
//!                        │                 │   │                 │ commands, supervisor,
//!                        ▼                 │   ▼                 │ partition loop
//!                     config/ ─────────────┼─▶ graph/            ▼
//!                     (settings, builds    │   (auth, client,   sink/
//!                      both sides' options)│    paging, To Do   (producer, committer,
//!                                          │    list rules)      records, offsets store)
//!                                          │       │               │        │
//!                                          ▼       ▼               ▼        ▼
//!                                      source.rs (PartitionId, SourceRecord,  offsets/
//!                                      SourceBatch, SourceOffset)             (pure codec)
//!                                      metrics/ (named events)    redact.rs (secrets)
//!                                      live/ (each partition's live items: what a page
//!                                      writes and its state records; pure, used by the
//!                                      worker and the sink)
//!                                      window.rs (a calendar view's window spec)
//! ```
//!
//! Arrows point from a module to what it uses; nothing points back up. `demo` (feature
//! `demo`, on by default) runs the pipeline on the `graph-sim` simulator and librdkafka's
//! mock cluster; `--no-default-features` builds the connector alone.
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod graph;
pub mod live;
pub mod metrics;
pub mod offsets;
pub mod redact;
pub mod server;
pub mod sink;
pub mod source;
pub mod window;
pub mod worker;
