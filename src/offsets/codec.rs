//! Encoding and decoding offset records.

use serde_json::Value;

use crate::source::{BadIdentity, PartitionId, SourceOffset};

/// `["<name>",{identity}]`, with the identity's fixed field order so the bytes of a key never
/// change (compaction keys on bytes).
pub fn encode_key(connector: &str, partition: &PartitionId) -> String {
    format!("[{},{}]", Value::from(connector), partition.to_json())
}

pub fn encode_value(offset: &SourceOffset) -> Vec<u8> {
    // A plain struct of strings and numbers cannot fail to serialise.
    serde_json::to_vec(offset).unwrap_or_default()
}

/// One decoded record of the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRecord {
    pub connector: String,
    pub partition: PartitionId,
    /// `None`: the partition was reset.
    pub offset: Option<SourceOffset>,
}

/// Why a record of the offsets topic is not one of ours.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("key is not JSON: {0}")]
    KeyNotJson(#[source] serde_json::Error),
    #[error("key is not [name, partition]")]
    KeyShape,
    #[error("connector name is not a string")]
    ConnectorName,
    #[error("{0}")]
    Partition(#[from] BadIdentity),
    #[error("value: {0}")]
    Value(#[source] serde_json::Error),
}

/// Decodes a record; `Err` says why it is not one of ours (it is then skipped, not fatal).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetRecord, DecodeError> {
    let (connector, partition) = decode_key(key)?;
    let offset = decode_value(value)?;
    Ok(OffsetRecord {
        connector,
        partition,
        offset,
    })
}

/// A key's connector name and partition identity: enough to skip a record before its value is
/// parsed (a worker taking some shards reads the others' records too).
pub fn decode_key(key: &[u8]) -> Result<(String, PartitionId), DecodeError> {
    let k: Value = serde_json::from_slice(key).map_err(DecodeError::KeyNotJson)?;
    let [name, identity] = k.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(DecodeError::KeyShape);
    };
    let connector = name.as_str().ok_or(DecodeError::ConnectorName)?.to_string();
    Ok((connector, PartitionId::from_json(identity)?))
}

/// A value: `None` (a tombstone) says the partition was reset.
pub fn decode_value(value: Option<&[u8]>) -> Result<Option<SourceOffset>, DecodeError> {
    value
        .map(|v| {
            serde_json::from_slice::<SourceOffset>(v)
                .map(SourceOffset::shared)
                .map_err(DecodeError::Value)
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let p = PartitionId::TaskLists {
            user: "a@b.com".into(),
        };
        let o = SourceOffset {
            link: Some("http://h/x?$deltatoken=1".into()),
            delta_link: Some("http://h/x?$deltatoken=1".into()),
            round: 3,
            resync: false,
            ..SourceOffset::INITIAL
        };
        let key = encode_key("conn", &p);
        assert_eq!(key, r#"["conn",{"kind":"task_lists","user":"a@b.com"}]"#);
        let r = decode(key.as_bytes(), Some(&encode_value(&o))).unwrap();
        assert_eq!(
            r,
            OffsetRecord {
                connector: "conn".into(),
                partition: p.clone(),
                offset: Some(o)
            }
        );
        assert_eq!(decode(key.as_bytes(), None).unwrap().offset, None);
        for (bad, why) in [
            (&b"nope"[..], "key is not JSON"),
            (b"[]", "key is not [name, partition]"),
            (b"[1,{}]", "connector name"),
            (
                br#"["c",{"kind":"x","user":"u"}]"#,
                "not a partition identity",
            ),
        ] {
            let e = decode(bad, None).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert!(matches!(
            decode(key.as_bytes(), Some(b"{")),
            Err(DecodeError::Value(_))
        ));
    }
}
