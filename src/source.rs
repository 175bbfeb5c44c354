//! The few types the Graph side and the Kafka side share, like Kafka Connect's
//! `SourceRecord`: a partition's identity, the records a page yields, and the offset that
//! travels with them. Neither side imports the other; both import this.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

/// What a source partition tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionKind {
    /// Events of one calendar over a fixed window.
    CalendarView,
    /// A user's calendars.
    CalendarList,
    /// A user's To Do task lists.
    TaskLists,
    /// The tasks of one To Do list.
    Tasks,
}

impl PartitionKind {
    /// The name used in identities, metrics and config (`calendar_view`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionKind::CalendarView => "calendar_view",
            PartitionKind::CalendarList => "calendar_list",
            PartitionKind::TaskLists => "task_lists",
            PartitionKind::Tasks => "tasks",
        }
    }

    pub const ALL: [PartitionKind; 4] = [
        PartitionKind::CalendarView,
        PartitionKind::CalendarList,
        PartitionKind::TaskLists,
        PartitionKind::Tasks,
    ];
}

impl fmt::Display for PartitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source partition's identity: stable across restarts, serialised as a small JSON map
/// with a fixed field order (so it can be compared as bytes, e.g. in offset keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionId {
    /// `window` is `"<start>/<end>"`, both RFC 3339 in UTC (`2026-01-01T00:00:00Z`).
    CalendarView {
        user: String,
        calendar: String,
        window: String,
    },
    CalendarList {
        user: String,
    },
    TaskLists {
        user: String,
    },
    Tasks {
        user: String,
        list: String,
    },
}

/// Why a JSON value is not a partition identity.
#[derive(Debug, thiserror::Error)]
#[error("not a partition identity: {0}")]
pub struct BadIdentity(pub String);

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it (keys written
/// before must stay byte-identical), without allocating: this runs once per record.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl PartitionId {
    pub fn kind(&self) -> PartitionKind {
        match self {
            PartitionId::CalendarView { .. } => PartitionKind::CalendarView,
            PartitionId::CalendarList { .. } => PartitionKind::CalendarList,
            PartitionId::TaskLists { .. } => PartitionKind::TaskLists,
            PartitionId::Tasks { .. } => PartitionKind::Tasks,
        }
    }

    pub fn user(&self) -> &str {
        match self {
            PartitionId::CalendarView { user, .. }
            | PartitionId::CalendarList { user }
            | PartitionId::TaskLists { user }
            | PartitionId::Tasks { user, .. } => user,
        }
    }

    /// `(field, value)` pairs in their fixed order, `kind` first (no allocation: this runs
    /// once per record).
    fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let (third, fourth) = match self {
            PartitionId::CalendarView {
                calendar, window, ..
            } => (
                Some(("calendar", calendar.as_str())),
                Some(("window", window.as_str())),
            ),
            PartitionId::Tasks { list, .. } => (Some(("list", list.as_str())), None),
            _ => (None, None),
        };
        [("kind", self.kind().as_str()), ("user", self.user())]
            .into_iter()
            .chain(third)
            .chain(fourth)
    }

    /// `{"kind":"calendar_view","user":"…","calendar":"primary","window":"…/…"}`.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_str(&mut out, k);
            out.push(':');
            push_str(&mut out, v);
        }
        out.push('}');
        out
    }

    /// Parses an identity map (any field order).
    pub fn from_json(v: &Value) -> Result<Self, BadIdentity> {
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| BadIdentity(format!("missing string field '{k}' in {v}")))
        };
        let user = get("user")?;
        match get("kind")?.as_str() {
            "calendar_view" => Ok(PartitionId::CalendarView {
                user,
                calendar: get("calendar")?,
                window: get("window")?,
            }),
            "calendar_list" => Ok(PartitionId::CalendarList { user }),
            "task_lists" => Ok(PartitionId::TaskLists { user }),
            "tasks" => Ok(PartitionId::Tasks {
                user,
                list: get("list")?,
            }),
            k => Err(BadIdentity(format!("unknown kind '{k}'"))),
        }
    }

    /// The Kafka key of an item: the identity without `kind` and `window`, plus `"id"`;
    /// byte-identical for an item's upserts and tombstones.
    pub fn record_key(&self, item_id: &str) -> Bytes {
        let mut out = String::with_capacity(
            16 + item_id.len()
                + self
                    .fields()
                    .map(|(k, v)| k.len() + v.len() + 6)
                    .sum::<usize>(),
        );
        out.push('{');
        for (k, v) in self.fields() {
            if k == "kind" || k == "window" {
                continue;
            }
            push_str(&mut out, k);
            out.push(':');
            push_str(&mut out, v);
            out.push(',');
        }
        out.push_str("\"id\":");
        push_str(&mut out, item_id);
        out.push('}');
        Bytes::from(out)
    }
}

/// The `id` field of a record key built by [`PartitionId::record_key`].
pub fn key_id(key: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(key)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

impl PartitionId {
    /// The bytes every record key of this partition starts with (up to `"id":`).
    pub fn key_prefix(&self) -> Bytes {
        let k = self.record_key("");
        // Drop the empty id's `""}`.
        k.slice(..k.len() - 3)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Upsert or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// One change, ready for Kafka: key and value bytes plus what the headers need.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub partition: Arc<PartitionId>,
    /// The item's id (also inside `key`).
    pub id: String,
    pub key: Bytes,
    /// The item's JSON exactly as Graph sent it; `None` for a tombstone.
    pub value: Option<Bytes>,
    pub op: Op,
    pub round: u64,
    /// `@removed.reason` of a delete.
    pub removed_reason: Option<String>,
    /// The record belongs to a round restarted after a `410`.
    pub resync: bool,
}

/// Where a partition resumes: stored in the offsets topic with the records it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceOffset {
    /// The link to request next: the page's nextLink, or the round's deltaLink.
    /// `None`: start from the initial request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The deltaLink of the last completed round (where a 410 on a nextLink falls back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_link: Option<String>,
    /// The round `link` belongs to (1 = the initial full sync).
    pub round: u64,
    /// The round in progress is a resync after a `410`.
    #[serde(default)]
    pub resync: bool,
}

/// A page's records and the partition offset after them: the unit the sink commits, as
/// the Graph side completes it (the worker adds nothing of its own: see `full_resync_seen`).
#[derive(Debug, Clone)]
pub struct SourceBatch {
    pub partition: Arc<PartitionId>,
    pub records: Vec<SourceRecord>,
    pub offset: SourceOffset,
    /// Partitions whose offsets this batch resets (the task partitions of removed lists),
    /// written in the same transaction; they stop once it is committed.
    pub resets: Vec<Arc<PartitionId>>,
    /// Partitions this batch discovers (the task partitions of new lists): an offset "start
    /// from the initial request" is written for them in the same transaction, so a crash
    /// right after it cannot forget them.
    pub starts: Vec<Arc<PartitionId>>,
    /// Partitions that run once this batch is committed (the task partitions of every list
    /// it upserts, `starts` among them); one already running is left alone.
    pub runs: Vec<Arc<PartitionId>>,
    /// Set on the last page of a full resync (a round restarted from the initial request):
    /// the ids that round returned. A full round reports no deletions, so every other key
    /// the partition has in Kafka is tombstoned in the same transaction: the worker reads
    /// those keys back, the reader completes the batch (`complete_full_resync`).
    pub full_resync_seen: Option<std::collections::HashSet<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_exactly_as_serde_json_escapes() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| format!("a{}z", b as char)).collect();
        samples.extend(
            [
                "",
                "plain",
                "é ü 日本 \u{2028} 🙂",
                "\"\\/\u{7f}",
                "AAMkAD==",
            ]
            .map(String::from),
        );
        for s in samples {
            let mut ours = String::new();
            push_str(&mut ours, &s);
            assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn identity_json_is_stable_and_round_trips() {
        let p = PartitionId::CalendarView {
            user: "alice@contoso.com".into(),
            calendar: "primary".into(),
            window: "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z".into(),
        };
        assert_eq!(
            p.to_json(),
            r#"{"kind":"calendar_view","user":"alice@contoso.com","calendar":"primary","window":"2026-01-01T00:00:00Z/2026-02-01T00:00:00Z"}"#
        );
        let v: Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(PartitionId::from_json(&v).unwrap(), p);
        assert_eq!(
            &p.record_key("AAMk\"1")[..],
            br#"{"user":"alice@contoso.com","calendar":"primary","id":"AAMk\"1"}"#
        );
        let t = PartitionId::Tasks {
            user: "bob@contoso.com".into(),
            list: "L1".into(),
        };
        assert_eq!(
            &t.record_key("T")[..],
            br#"{"user":"bob@contoso.com","list":"L1","id":"T"}"#
        );
        assert!(PartitionId::from_json(&serde_json::json!({"kind": "mail", "user": "x"})).is_err());
    }
}
