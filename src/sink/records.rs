//! A source record as a Kafka record: topic by partition kind, key and value bytes as they
//! are, and headers that say what happened.

use rdkafka::message::{Header, OwnedHeaders};

use crate::source::{Op, SourceRecord};

pub const HEADER_OP: &str = "graph-cdc.op";
pub const HEADER_PARTITION: &str = "graph-cdc.partition";
pub const HEADER_ROUND: &str = "graph-cdc.round";
pub const HEADER_REMOVED_REASON: &str = "graph-cdc.removed-reason";
pub const HEADER_RESYNC: &str = "graph-cdc.resync";
pub const HEADER_PRINCIPAL: &str = "graph-cdc.user-principal-name";
pub const HEADER_ERROR_CLASS: &str = "graph-cdc.errors.class";
pub const HEADER_ERROR_MESSAGE: &str = "graph-cdc.errors.message";
pub const HEADER_ERROR_TOPIC: &str = "graph-cdc.errors.topic";
pub const HEADER_ERROR_PARTITION: &str = "graph-cdc.errors.partition";
pub const HEADER_ERROR_ITEM: &str = "graph-cdc.errors.item";
pub const HEADER_ERROR_SIZE: &str = "graph-cdc.errors.size";

/// The headers of a record; `partition_json` is the identity, computed once per batch, and
/// `principal` the user's principal name when known.
pub fn headers(r: &SourceRecord, partition_json: &str, principal: Option<&str>) -> OwnedHeaders {
    let round = r.round.to_string();
    let mut h = OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: HEADER_OP,
            value: Some(r.op.as_str()),
        })
        .insert(Header {
            key: HEADER_PARTITION,
            value: Some(partition_json),
        })
        .insert(Header {
            key: HEADER_ROUND,
            value: Some(&round),
        });
    if r.op == Op::Delete {
        let reason = r.removed_reason.as_deref().unwrap_or("deleted");
        h = h.insert(Header {
            key: HEADER_REMOVED_REASON,
            value: Some(reason),
        });
    }
    if r.resync {
        h = h.insert(Header {
            key: HEADER_RESYNC,
            value: Some("true"),
        });
    }
    if let Some(upn) = principal {
        h = h.insert(Header {
            key: HEADER_PRINCIPAL,
            value: Some(upn),
        });
    }
    h
}

/// The headers of a dead letter: the record's own, plus why it was refused and where it
/// was going.
pub fn dead_letter_headers(
    r: &SourceRecord,
    partition_json: &str,
    topic: &str,
    class: &str,
    message: &str,
) -> OwnedHeaders {
    let size = super::refusals::data_size(r).to_string();
    let mut h = headers(r, partition_json, None);
    for (key, value) in [
        (HEADER_ERROR_CLASS, class),
        (HEADER_ERROR_MESSAGE, message),
        (HEADER_ERROR_TOPIC, topic),
        (HEADER_ERROR_PARTITION, partition_json),
        (HEADER_ERROR_ITEM, r.id.as_str()),
        (HEADER_ERROR_SIZE, size.as_str()),
    ] {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    h
}
