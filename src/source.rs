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
    /// The transitive user members of a group (a group source's users).
    GroupMembers,
}

impl PartitionKind {
    /// The name used in identities, metrics and config (`calendar_view`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionKind::CalendarView => "calendar_view",
            PartitionKind::CalendarList => "calendar_list",
            PartitionKind::TaskLists => "task_lists",
            PartitionKind::Tasks => "tasks",
            PartitionKind::GroupMembers => "group_members",
        }
    }

    pub const ALL: [PartitionKind; 5] = [
        PartitionKind::CalendarView,
        PartitionKind::CalendarList,
        PartitionKind::TaskLists,
        PartitionKind::Tasks,
        PartitionKind::GroupMembers,
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
    /// A group's transitive user members: `{"kind":"group_members","group":"<object id>"}`;
    /// its record keys are `{"group":…,"id":<user object id>}`.
    GroupMembers {
        group: String,
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
    /// `user`'s task partitions among `map`'s keys, found by range (identities order by
    /// kind, then user): no scan of every partition, as a start of 25,000 users would be.
    pub fn tasks_of<'m, V>(
        map: &'m std::collections::BTreeMap<Arc<PartitionId>, V>,
        user: &'m str,
    ) -> impl Iterator<Item = &'m PartitionId> + 'm {
        let from = PartitionId::Tasks {
            user: user.to_string(),
            list: String::new(),
        };
        map.range::<PartitionId, _>(from..)
            .map(|(p, _)| &**p)
            .take_while(move |p| matches!(p, PartitionId::Tasks { user: u, .. } if u == user))
    }

    pub fn kind(&self) -> PartitionKind {
        match self {
            PartitionId::CalendarView { .. } => PartitionKind::CalendarView,
            PartitionId::CalendarList { .. } => PartitionKind::CalendarList,
            PartitionId::TaskLists { .. } => PartitionKind::TaskLists,
            PartitionId::Tasks { .. } => PartitionKind::Tasks,
            PartitionId::GroupMembers { .. } => PartitionKind::GroupMembers,
        }
    }

    /// The user; for a group's membership partition, the group (what its requests are
    /// counted and limited under: it reads no mailbox).
    pub fn user(&self) -> &str {
        match self {
            PartitionId::CalendarView { user, .. }
            | PartitionId::CalendarList { user }
            | PartitionId::TaskLists { user }
            | PartitionId::Tasks { user, .. } => user,
            PartitionId::GroupMembers { group } => group,
        }
    }

    /// The same partition of another user (a configured name replaced by its object id, a
    /// group source's template given a member); a membership partition has no user and
    /// stays as it is.
    pub fn with_user(&self, id: &str) -> PartitionId {
        let mut p = self.clone();
        match &mut p {
            PartitionId::CalendarView { user, .. }
            | PartitionId::CalendarList { user }
            | PartitionId::TaskLists { user }
            | PartitionId::Tasks { user, .. } => *user = id.to_string(),
            PartitionId::GroupMembers { .. } => {}
        }
        p
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
        let owner = match self {
            PartitionId::GroupMembers { group } => ("group", group.as_str()),
            _ => ("user", self.user()),
        };
        [("kind", self.kind().as_str()), owner]
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
        let kind = get("kind")?;
        if kind == "group_members" {
            return Ok(PartitionId::GroupMembers {
                group: get("group")?,
            });
        }
        let user = get("user")?;
        match kind.as_str() {
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

impl SourceRecord {
    /// A tombstone for `id` of `partition`, keyed exactly as its upserts are.
    pub fn tombstone(
        partition: Arc<PartitionId>,
        id: String,
        round: u64,
        reason: &str,
        resync: bool,
    ) -> Self {
        SourceRecord {
            key: partition.record_key(&id),
            partition,
            id,
            value: None,
            op: Op::Delete,
            round,
            removed_reason: Some(reason.to_string()),
            resync,
        }
    }
}

/// An immutable string shared by its copies, serialised as the string: an offset's links
/// (its `link` and `delta_link`, equal between rounds, and the offset's copies: the
/// reader's, the status's, the committer's hold one string, not one each; Graph's links are
/// 0.5–1 KB and a worker keeps 100,000 partitions') and its principal name (one string for a
/// user's partitions): issue 15.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedStr(Arc<str>);

/// A Graph link (a nextLink or deltaLink) in an offset.
pub type Link = SharedStr;

impl From<Arc<str>> for SharedStr {
    fn from(s: Arc<str>) -> Self {
        SharedStr(s)
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(s.into())
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(s.into())
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl serde::Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SharedStr::from)
    }
}

/// Where a partition resumes: stored in the offsets topic with the records it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceOffset {
    /// The link to request next: the page's nextLink, or the round's deltaLink.
    /// `None`: start from the initial request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    /// The deltaLink of the last completed round (where a 410 on a nextLink falls back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_link: Option<Link>,
    /// The round `link` belongs to (1 = the initial full sync).
    pub round: u64,
    /// The round in progress is a resync after a `410`.
    #[serde(default)]
    pub resync: bool,
    /// A rolling calendar view's window in force, `"<start>/<end>"` (RFC 3339, UTC): the one
    /// `link` reads. Absent for partitions whose identity fixes their window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<SharedStr>,
    /// When (Unix seconds) the partition last began a round from scratch: the periodic
    /// reconcile is scheduled from it. Absent in offsets of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at: Option<i64>,
    /// Why the round from scratch in progress began when not a resync (`window`,
    /// `reconcile`): its tombstones say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SharedStr>,
    /// The user's principal name when the partition last read: a configured name that the
    /// directory no longer knows (the user was renamed) is found again by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<SharedStr>,
    /// The partition's change-notification subscription (`[notifications]`), written with
    /// its offset so that a restarted worker, or another taking its shard, reuses it instead
    /// of leaking it. Boxed: absent for most partitions, 8 bytes then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Box<SubscriptionRef>>,
}

/// A change-notification subscription as an offset records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionRef {
    /// Graph's subscription id.
    pub id: String,
    /// When it expires (Unix seconds).
    pub expires: i64,
}

impl SourceOffset {
    /// Start from the initial request, round 1: a partition never read.
    pub const INITIAL: SourceOffset = SourceOffset {
        link: None,
        delta_link: None,
        round: 1,
        resync: false,
        window: None,
        full_at: None,
        reason: None,
        principal: None,
        subscription: None,
    };

    /// The same offset with `link` sharing `delta_link`'s string when they are equal (as
    /// between rounds): what an offset read back from the topic is made into.
    pub fn shared(mut self) -> Self {
        if self.link.is_some() && self.link == self.delta_link {
            self.link = self.delta_link.clone();
        }
        self
    }
}

/// A page's records and the partition offset after them: the unit the sink commits, as
/// the Graph side completes it, with the reconciliation state the worker adds (`state`).
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
    /// Set when the page belongs to a round from scratch (started from the initial request:
    /// a first sync, or a round restarted after a `410` or a resync signal). Such a round
    /// reports no deletions: at its last page, every key the partition has live and the
    /// round did not return is tombstoned (see `live/`).
    pub full_round: Option<FullRound>,
    /// Messages for the state topic, written in the same transaction (see `live/`).
    pub state: Vec<StateWrite>,
    /// The user's principal name, when known: keys carry the object id, which survives a
    /// rename; this travels beside it (header `graph-cdc.user-principal-name`).
    pub principal: Option<Arc<str>>,
}

impl SourceBatch {
    /// The round of the batch's records, and of the tombstones the worker adds to it: its
    /// first record's, else the round its offset closes (only a round's last page, whose
    /// offset names the next round, is completed without records of its own).
    pub fn records_round(&self) -> u64 {
        self.records
            .first()
            .map_or(self.offset.round.saturating_sub(1).max(1), |r| r.round)
    }
}

/// Where a page stands in a round from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullRound {
    /// The first page of an attempt at the round (fetched from the initial request).
    pub first: bool,
    /// The round's last page (it carried the deltaLink).
    pub last: bool,
}

/// A message for the state topic. Its value may say where some of the batch's own records
/// landed, which is known only once they are written: `slots` are the byte offsets in
/// `value` of such locations (little-endian [`Loc`]s). The value is written as it is, slots
/// holding [`Loc::UNKNOWN`], in the batch's transaction; once that transaction committed, the
/// sink writes it again with the slots filled in, first thing in its next transaction (a
/// crash in between leaves those locations unknown, see `live/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    pub key: Bytes,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub slots: Vec<Slot>,
}

impl StateWrite {
    /// The value with each slot set to where its record landed (`landed`, by record index):
    /// the slot's location to keep for a record that did not land ([`Loc::NONE`]),
    /// [`Loc::UNKNOWN`] for one not in `landed`.
    pub fn filled(&self, landed: &[Loc]) -> Option<Vec<u8>> {
        let mut v = self.value.clone()?;
        for s in &self.slots {
            let loc = match landed.get(s.record).copied().unwrap_or(Loc::UNKNOWN) {
                Loc::NONE => s.keep,
                l => l,
            };
            if let Some(at) = v.get_mut(s.at..s.at + 8) {
                at.copy_from_slice(&loc.0.to_le_bytes());
            }
        }
        Some(v)
    }
}

/// See [`StateWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Byte offset in the value.
    pub at: usize,
    /// Index of the record in `SourceBatch::records`.
    pub record: usize,
    /// The location to write when that record does not reach its topic (dead-lettered): the
    /// item's previous record, still live.
    pub keep: Loc,
}

/// Where a record landed in its topic: Kafka partition (high 16 bits) and offset (low 48).
/// Partitions from [`Loc::MAX_PARTITION`] up are not locations (reserved markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc(pub u64);

impl Loc {
    /// Nowhere: not written to its topic.
    pub const NONE: Loc = Loc(u64::MAX);
    /// Written, but where is not known (yet).
    pub const UNKNOWN: Loc = Loc(0xfffc << 48);
    /// Partitions this high stand for no location (Kafka topics have far fewer).
    pub const MAX_PARTITION: u64 = 0xfff0;

    /// `None` when either part does not fit (a partition of 65,520 or more, an offset of
    /// 2^48 or more).
    pub fn new(partition: i32, offset: i64) -> Option<Loc> {
        let p = u64::try_from(partition)
            .ok()
            .filter(|p| *p < Self::MAX_PARTITION)?;
        let o = u64::try_from(offset).ok().filter(|o| *o < 1 << 48)?;
        Some(Loc((p << 48) | o))
    }

    /// `(partition, offset)`, unless this is no location.
    pub fn get(self) -> Option<(i32, i64)> {
        let p = self.0 >> 48;
        (p < Self::MAX_PARTITION).then_some((p as i32, (self.0 & ((1 << 48) - 1)) as i64))
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
