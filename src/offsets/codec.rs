//! Encoding and decoding offset records.

use serde_json::Value;

use crate::source::{PartitionId, SourceOffset};

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

/// Decodes a record; `Err` says why it is not one of ours (it is then skipped, not fatal).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetRecord, String> {
    let k: Value = serde_json::from_slice(key).map_err(|e| format!("key is not JSON: {e}"))?;
    let arr = k
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or("key is not [name, partition]")?;
    let connector = arr[0]
        .as_str()
        .ok_or("connector name is not a string")?
        .to_string();
    let partition = PartitionId::from_json(&arr[1]).map_err(|e| e.to_string())?;
    let offset = match value {
        None => None,
        Some(v) => Some(serde_json::from_slice(v).map_err(|e| format!("value: {e}"))?),
    };
    Ok(OffsetRecord {
        connector,
        partition,
        offset,
    })
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
        for bad in [
            &b"nope"[..],
            b"[]",
            b"[1,{}]",
            br#"["c",{"kind":"x","user":"u"}]"#,
        ] {
            assert!(decode(bad, None).is_err());
        }
        assert!(decode(key.as_bytes(), Some(b"{")).is_err());
    }
}
