//! Source offsets in Kafka Connect's format, kept in a compacted topic.
//!
//! - key: `["<connector name>", {partition identity}]`
//! - value: `{"link": …, "delta_link": …, "round": n, "resync": bool}`, or null to reset.
//!
//! A pure codec, shared by the sink (which writes offsets and reads them back at start,
//! `sink/offsets_store.rs`) and the operator API; it imports neither side.

pub mod codec;

pub use codec::{
    decode, decode_key, decode_value, encode_key, encode_value, DecodeError, OffsetRecord,
};
