//! Source offsets in Kafka Connect's format, kept in a compacted topic.
//!
//! - key: `["<connector name>", {partition identity}]`
//! - value: `{"link": …, "delta_link": …, "round": n, "resync": bool}`, or null to reset.
//!
//! `codec.rs` is the format; `store.rs` reads the topic back at start.

pub mod codec;
pub mod store;

pub use codec::{decode, encode_key, encode_value, OffsetRecord};
pub use store::{load_offsets, OffsetStoreError};
