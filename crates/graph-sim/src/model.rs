//! The simulator's mailbox data: tenants, users, calendars, events, To Do lists and tasks.
//!
//! Every mutation takes the next value of one store-wide sequence number and stamps the
//! changed item with it; each collection keeps an index of its items ordered by that stamp.
//! A delta round is then "the items whose stamp lies in (since, upto]", which is what
//! `delta.rs` pages through. Deleted items stay as tombstones so later rounds can report them.
//! Item JSON is rendered once per mutation, so serving a page is copying bytes.
//!
//! ```text
//!   model.rs    items, collections, change index      render.rs  item JSON as Graph sends it
//!   store.rs    users, calendars, To Do lists, tasks  events.rs  events, occurrences, moves
//!   directory.rs  renames, mailbox switches, groups and their members, app roles
//!   changes.rs  the change journal change notifications are made of
//! ```
//!
//! Events have two ids, as Outlook items do: an immutable id, which is the key everywhere
//! here and which requests with `Prefer: IdType="ImmutableId"` see, and a regular (REST) id,
//! which changes when the event moves to another calendar and which every other request
//! sees ("Get immutable identifiers for Outlook resources",
//! learn.microsoft.com/graph/outlook-immutable-id). JSON is rendered with the immutable id;
//! [`IdAlias`] swaps it for the regular one on the way out.

pub mod changes;
mod directory;
mod events;
mod render;
mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use directory::{Group, GroupInfo, GroupSpec, MemberInfo, MemberKind, Membership, UserPatch};
pub use events::EventIds;
pub use render::graph_time;
pub use store::{Store, UserInfo, UserSpec};

/// The store-wide change stamp.
pub type Seq = u64;

/// One item of a collection, as the delta engine sees it.
pub trait Item {
    /// The records this item contributes to a delta page (for events: the series master
    /// and its instances), in a stable order.
    fn instances(&self) -> &[Instance];

    /// The regular id standing for the immutable one in this item's JSON and instance ids
    /// (Outlook events only; calendars and To Do items have one kind of id).
    fn alias(&self) -> Option<&Arc<IdAlias>> {
        None
    }
}

/// An Outlook item's two ids. The immutable id is a substring of every instance id and of
/// the rendered JSON (`id`, `seriesMasterId`, `webLink`), so presenting the regular id is a
/// plain replacement of one random 50-character string by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdAlias {
    pub immutable: Arc<str>,
    pub regular: Arc<str>,
}

impl IdAlias {
    /// `text` as a request without `Prefer: IdType="ImmutableId"` sees it: one SIMD-assisted
    /// pass over it, copying only when the id occurs.
    pub fn to_regular<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let finder = memchr::memmem::Finder::new(self.immutable.as_bytes());
        let mut hits = finder.find_iter(text.as_bytes()).peekable();
        if hits.peek().is_none() {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for at in hits {
            // Ids are ASCII: `at` and the match's end are character boundaries.
            out.push_str(&text[last..at]);
            out.push_str(&self.regular);
            last = at + self.immutable.len();
        }
        out.push_str(&text[last..]);
        std::borrow::Cow::Owned(out)
    }
}

/// One JSON object Graph would return for an item, with the time span calendar views filter on.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: Arc<str>,
    /// `[start, end)` in UTC; `None` for items that are not events.
    pub span: Option<(NaiveDateTime, NaiveDateTime)>,
    pub json: Arc<str>,
}

impl Instance {
    /// Whether the instance overlaps the window `[ws, we)` (items without a span always do).
    pub fn overlaps(&self, window: Option<(NaiveDateTime, NaiveDateTime)>) -> bool {
        match (self.span, window) {
            (Some((s, e)), Some((ws, we))) => s < we && (e > ws || (s == e && s >= ws)),
            _ => true,
        }
    }
}

/// What a deleted item leaves behind: the instance ids later rounds report as removed, and
/// the regular id they had (a moved event is removed from its old calendar under its old one).
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub ids: Vec<Arc<str>>,
    pub alias: Option<Arc<IdAlias>>,
}

/// A live item or what a deleted one leaves behind.
#[derive(Debug)]
pub enum Slot<T> {
    Live(T),
    Deleted(Tombstone),
}

impl<T: Item> Slot<T> {
    pub fn alias(&self) -> Option<&Arc<IdAlias>> {
        match self {
            Slot::Live(t) => t.alias(),
            Slot::Deleted(t) => t.alias.as_ref(),
        }
    }
}

#[derive(Debug)]
pub struct Entry<T> {
    pub seq: Seq,
    pub slot: Slot<T>,
    /// Instance ids the item had in earlier versions but no longer has (a cancelled
    /// occurrence, a shortened series): reported as removed by incremental rounds.
    pub gone: BTreeSet<Arc<str>>,
}

/// A collection with its change index.
#[derive(Debug)]
pub struct Collection<T> {
    pub entries: HashMap<Arc<str>, Entry<T>>,
    pub index: BTreeSet<(Seq, Arc<str>)>,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            index: BTreeSet::new(),
        }
    }
}

impl<T: Item> Collection<T> {
    pub fn get(&self, id: &str) -> Option<&T> {
        match self.entries.get(id).map(|e| &e.slot) {
            Some(Slot::Live(t)) => Some(t),
            _ => None,
        }
    }

    pub fn live(&self) -> impl Iterator<Item = &T> {
        self.entries.values().filter_map(|e| match &e.slot {
            Slot::Live(t) => Some(t),
            Slot::Deleted(_) => None,
        })
    }

    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    /// Stores a new version of the item at `seq`, remembering instance ids it dropped.
    pub fn put(&mut self, id: Arc<str>, seq: Seq, item: T) {
        let mut gone = BTreeSet::new();
        if let Some(old) = self.entries.remove(&id) {
            self.index.remove(&(old.seq, id.clone()));
            gone = old.gone;
            let old_ids: Vec<Arc<str>> = match &old.slot {
                Slot::Live(t) => t.instances().iter().map(|i| i.id.clone()).collect(),
                Slot::Deleted(t) => t.ids.clone(),
            };
            let new_ids: BTreeSet<&str> = item.instances().iter().map(|i| &*i.id).collect();
            gone.extend(old_ids.into_iter().filter(|i| !new_ids.contains(&**i)));
            for i in item.instances() {
                gone.remove(&i.id);
            }
        }
        self.index.insert((seq, id.clone()));
        self.entries.insert(
            id,
            Entry {
                seq,
                slot: Slot::Live(item),
                gone,
            },
        );
    }

    /// Replaces a live item without a new stamp and without remembering what it dropped:
    /// no delta round will ever report the difference, only a full round (or the truth)
    /// shows it. This is how Graph treats a deleted occurrence (see `Store::delete_occurrence`).
    /// Returns false when there was no live item.
    pub fn replace_unreported(&mut self, id: &str, item: T) -> bool {
        match self.entries.get_mut(id) {
            Some(e) if matches!(e.slot, Slot::Live(_)) => {
                e.slot = Slot::Live(item);
                true
            }
            _ => false,
        }
    }

    /// Replaces the item by a tombstone at `seq`; returns false when there was no live item.
    pub fn delete(&mut self, id: &str, seq: Seq) -> bool {
        let Some((key, old)) = self.entries.remove_entry(id) else {
            return false;
        };
        let Slot::Live(item) = old.slot else {
            self.entries.insert(key, old);
            return false;
        };
        self.index.remove(&(old.seq, key.clone()));
        let mut ids: Vec<Arc<str>> = item.instances().iter().map(|i| i.id.clone()).collect();
        ids.extend(old.gone);
        let alias = item.alias().cloned();
        self.index.insert((seq, key.clone()));
        self.entries.insert(
            key,
            Entry {
                seq,
                slot: Slot::Deleted(Tombstone { ids, alias }),
                gone: BTreeSet::new(),
            },
        );
        true
    }
}

/// An app registration able to get tokens for its tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    /// Shared secret for `client_secret` grants.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// PEM public key (SPKI or PKCS#1) that verifies `client_assertion` JWTs.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// Expected `x5t#S256` header (base64url SHA-256 of the certificate), when known.
    #[serde(default)]
    pub x5t_s256: Option<String>,
}

#[derive(Debug, Default)]
pub struct Tenant {
    pub clients: HashMap<String, Client>,
}

/// A mailbox.
#[derive(Debug)]
pub struct User {
    pub id: String,
    pub upn: String,
    /// The primary SMTP address (`mail`): the UPN unless set otherwise.
    pub mail: Option<String>,
    /// Whether the user has an Exchange Online mailbox; without one its calendars and To Do
    /// answer `404 MailboxNotEnabledForRESTAPI`.
    pub mailbox: bool,
    pub tenant: String,
    pub display_name: String,
    pub primary_calendar: Arc<str>,
    pub calendars: Collection<Calendar>,
    pub events: HashMap<Arc<str>, Collection<Event>>,
    pub lists: Collection<TaskList>,
    pub tasks: HashMap<Arc<str>, Collection<Task>>,
}

#[derive(Debug)]
pub struct Calendar {
    pub data: CalendarData,
    inst: [Instance; 1],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalendarData {
    pub id: String,
    pub name: String,
    pub color: String,
    pub is_default: bool,
    pub version: u64,
}

impl Item for Calendar {
    fn instances(&self) -> &[Instance] {
        &self.inst
    }
}

#[derive(Debug)]
pub struct TaskList {
    pub data: TaskListData,
    inst: [Instance; 1],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskListData {
    pub id: String,
    pub display_name: String,
    pub wellknown: bool,
    pub version: u64,
}

impl Item for TaskList {
    fn instances(&self) -> &[Instance] {
        &self.inst
    }
}

#[derive(Debug)]
pub struct Task {
    pub data: TaskData,
    inst: [Instance; 1],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskData {
    pub id: String,
    pub title: String,
    pub status: String,
    pub importance: String,
    pub body: String,
    pub created: DateTime<Utc>,
    pub due: Option<NaiveDateTime>,
    pub version: u64,
}

impl Item for Task {
    fn instances(&self) -> &[Instance] {
        &self.inst
    }
}

/// A single event or a recurring series (master plus expanded occurrences and exceptions).
#[derive(Debug)]
pub struct Event {
    pub data: EventData,
    inst: Vec<Instance>,
    alias: Arc<IdAlias>,
}

impl Item for Event {
    fn instances(&self) -> &[Instance] {
        &self.inst
    }

    fn alias(&self) -> Option<&Arc<IdAlias>> {
        Some(&self.alias)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RecurrenceKind {
    Daily,
    Weekly,
}

/// A recurrence: `count` occurrences, one every `interval` days or weeks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    pub kind: RecurrenceKind,
    #[serde(default = "one")]
    pub interval: u32,
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// A modified occurrence of a series.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OccurrencePatch {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub start: Option<NaiveDateTime>,
    #[serde(default)]
    pub end: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventData {
    /// The immutable id (`AAkALg…`): the key of the event in every collection.
    pub id: String,
    /// The regular id (`AAMkAG…`): new whenever the event moves to another calendar.
    pub regular_id: String,
    pub subject: String,
    pub body: String,
    pub location: String,
    pub attendees: Vec<String>,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub is_all_day: bool,
    pub recurrence: Option<Recurrence>,
    pub exceptions: BTreeMap<u32, OccurrencePatch>,
    pub cancelled: BTreeSet<u32>,
    pub created: DateTime<Utc>,
    pub version: u64,
}

/// What the control API accepts to create an event.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSpec {
    #[serde(default)]
    pub subject: Option<String>,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    #[serde(default)]
    pub is_all_day: bool,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub attendees: Vec<String>,
    #[serde(default)]
    pub recurrence: Option<Recurrence>,
}

/// What the control API accepts to change an event (absent fields stay).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventPatch {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub start: Option<NaiveDateTime>,
    #[serde(default)]
    pub end: Option<NaiveDateTime>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

/// Create or change a task (absent fields get defaults on create and stay on update).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub importance: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub due: Option<NaiveDateTime>,
}

/// Create or change a calendar or a task list: just a name.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NameSpec {
    #[serde(default)]
    pub name: Option<String>,
}

/// An opaque Graph-looking id: a prefix and 32 random bytes in base64url.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    )
}
