//! The simulator's mailbox data: tenants, users, calendars, events, To Do lists and tasks.
//!
//! Every mutation takes the next value of one store-wide sequence number and stamps the
//! changed item with it; each collection keeps an index of its items ordered by that stamp.
//! A delta round is then "the items whose stamp lies in (since, upto]", which is what
//! `delta.rs` pages through. Deleted items stay as tombstones so later rounds can report them.
//! Item JSON is rendered once per mutation, so serving a page is copying bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::text;
use super::SimError;

/// The store-wide change stamp.
pub type Seq = u64;

/// One item of a collection, as the delta engine sees it.
pub trait Item {
    /// The records this item contributes to a delta page (for events: the series master
    /// and its instances), in a stable order.
    fn instances(&self) -> &[Instance];
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

/// A live item or the ids a deleted one leaves behind.
#[derive(Debug)]
pub enum Slot<T> {
    Live(T),
    Deleted(Vec<Arc<str>>),
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
                Slot::Deleted(ids) => ids.clone(),
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
        self.index.insert((seq, key.clone()));
        self.entries.insert(
            key,
            Entry {
                seq,
                slot: Slot::Deleted(ids),
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
}

impl Item for Event {
    fn instances(&self) -> &[Instance] {
        &self.inst
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
    pub id: String,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Graph's date-time format: seven fractional digits, no offset.
pub fn graph_time(t: NaiveDateTime) -> String {
    use chrono::Timelike as _;
    // chrono has no 7-digit fraction specifier.
    format!(
        "{}.{:07}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.nanosecond() % 1_000_000_000 / 100
    )
}

fn iso(t: DateTime<Utc>) -> String {
    format!("{}Z", graph_time(t.naive_utc()))
}

/// An opaque Graph-looking id: a prefix and 32 random bytes in base64url.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    )
}

fn change_key(id: &str, version: u64) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{id}/{version}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..16])
}

fn etag(ck: &str) -> String {
    format!("W/\"{ck}\"")
}

impl EventData {
    /// Start and end of occurrence `k` of the series (or of the event itself).
    fn occurrence_span(&self, k: u32) -> (NaiveDateTime, NaiveDateTime) {
        let step = match &self.recurrence {
            Some(r) if r.kind == RecurrenceKind::Weekly => Duration::weeks(r.interval as i64),
            Some(r) => Duration::days(r.interval as i64),
            None => Duration::zero(),
        };
        let shift = step * k as i32;
        (self.start + shift, self.end + shift)
    }

    fn occurrence_id(&self, k: u32) -> String {
        let (s, _) = self.occurrence_span(k);
        format!("{}_{}", self.id, s.format("%Y%m%dT%H%M%S"))
    }
}

impl Event {
    pub fn new(data: EventData, user: &User) -> Self {
        let inst = render_event(&data, user);
        Self { data, inst }
    }
}

fn render_event(d: &EventData, user: &User) -> Vec<Instance> {
    let organizer = json!({"emailAddress": {"name": user.display_name, "address": user.upn}});
    let attendees: Vec<Value> = d
        .attendees
        .iter()
        .map(|a| {
            json!({"type": "required", "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
                   "emailAddress": {"name": a.split('@').next().unwrap_or(a), "address": a}})
        })
        .collect();
    let modified = Utc::now();
    let full = |id: &str,
                kind: &str,
                subject: &str,
                start: NaiveDateTime,
                end: NaiveDateTime,
                ck: &str,
                recurrence: Value| {
        let preview: String = text::strip_html(&d.body).chars().take(255).collect();
        json!({
            "@odata.type": "#microsoft.graph.event",
            "@odata.etag": etag(ck),
            "id": id,
            "createdDateTime": iso(d.created),
            "lastModifiedDateTime": iso(modified),
            "changeKey": ck,
            "categories": [],
            "transactionId": null,
            "originalStartTimeZone": "UTC",
            "originalEndTimeZone": "UTC",
            "iCalUId": format!("040000008200E00074C5B7101A82E008{}", &ck[..8]),
            "uid": format!("040000008200E00074C5B7101A82E008{}", &ck[..8]),
            "reminderMinutesBeforeStart": 15,
            "isReminderOn": true,
            "hasAttachments": false,
            "subject": subject,
            "bodyPreview": preview,
            "importance": "normal",
            "sensitivity": "normal",
            "isAllDay": d.is_all_day,
            "isCancelled": false,
            "isOrganizer": true,
            "responseRequested": true,
            "seriesMasterId": if kind == "exception" { Value::from(d.id.as_str()) } else { Value::Null },
            "showAs": "busy",
            "type": kind,
            "webLink": format!("https://outlook.office365.com/owa/?itemid={}&exvsurl=1&path=/calendar/item", id),
            "onlineMeetingUrl": null,
            "isOnlineMeeting": false,
            "onlineMeetingProvider": "unknown",
            "allowNewTimeProposals": true,
            "isDraft": false,
            "hideAttendees": false,
            "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
            "body": {"contentType": "html", "content": d.body},
            "start": {"dateTime": graph_time(start), "timeZone": "UTC"},
            "end": {"dateTime": graph_time(end), "timeZone": "UTC"},
            "location": {"displayName": d.location, "locationType": "default", "uniqueIdType": "unknown",
                         "address": {}, "coordinates": {}},
            "locations": if d.location.is_empty() { json!([]) } else {
                json!([{"displayName": d.location, "locationType": "default", "uniqueIdType": "unknown"}]) },
            "recurrence": recurrence,
            "attendees": attendees,
            "organizer": organizer,
            "onlineMeeting": null,
        })
        .to_string()
    };
    let ck = change_key(&d.id, d.version);
    let Some(rec) = &d.recurrence else {
        return vec![Instance {
            id: d.id.as_str().into(),
            span: Some((d.start, d.end)),
            json: full(
                &d.id,
                "singleInstance",
                &d.subject,
                d.start,
                d.end,
                &ck,
                Value::Null,
            )
            .into(),
        }];
    };
    let (last_start, _) = d.occurrence_span(rec.count.saturating_sub(1));
    let (_, last_end) = d.occurrence_span(rec.count.saturating_sub(1));
    let pattern = json!({
        "pattern": {"type": match rec.kind { RecurrenceKind::Daily => "daily", RecurrenceKind::Weekly => "weekly" },
                    "interval": rec.interval, "month": 0, "dayOfMonth": 0, "firstDayOfWeek": "sunday", "index": "first",
                    "daysOfWeek": match rec.kind { RecurrenceKind::Daily => json!([]),
                        RecurrenceKind::Weekly => json!([d.start.format("%A").to_string().to_lowercase()]) }},
        "range": {"type": "numbered", "startDate": d.start.format("%Y-%m-%d").to_string(),
                  "endDate": "0001-01-01", "recurrenceTimeZone": "UTC", "numberOfOccurrences": rec.count}
    });
    let mut out = Vec::with_capacity(rec.count as usize + 1);
    // The master spans the whole series, so it is in any window one of its occurrences is.
    out.push(Instance {
        id: d.id.as_str().into(),
        span: Some((d.start, last_end.max(last_start))),
        json: full(
            &d.id,
            "seriesMaster",
            &d.subject,
            d.start,
            d.end,
            &ck,
            pattern,
        )
        .into(),
    });
    for k in 0..rec.count {
        if d.cancelled.contains(&k) {
            continue;
        }
        let id = d.occurrence_id(k);
        let (s, e) = d.occurrence_span(k);
        let json = match d.exceptions.get(&k) {
            Some(p) => {
                let (s2, e2) = (p.start.unwrap_or(s), p.end.unwrap_or(e));
                let subject = p.subject.as_deref().unwrap_or(&d.subject);
                let ck = change_key(&id, d.version);
                let j = full(&id, "exception", subject, s2, e2, &ck, Value::Null);
                out.push(Instance {
                    id: id.into(),
                    span: Some((s2, e2)),
                    json: j.into(),
                });
                continue;
            }
            // Occurrences carry few properties (NOTES.md).
            None => json!({
                "@odata.type": "#microsoft.graph.event",
                "@odata.etag": etag(&change_key(&id, d.version)),
                "id": id,
                "seriesMasterId": d.id,
                "type": "occurrence",
                "start": {"dateTime": graph_time(s), "timeZone": "UTC"},
                "end": {"dateTime": graph_time(e), "timeZone": "UTC"},
            })
            .to_string(),
        };
        out.push(Instance {
            id: id.into(),
            span: Some((s, e)),
            json: json.into(),
        });
    }
    out
}

impl Calendar {
    pub fn new(data: CalendarData, user: &User) -> Self {
        let ck = change_key(&data.id, data.version);
        let json = json!({
            "@odata.type": "#microsoft.graph.calendar",
            "@odata.etag": etag(&ck),
            "id": data.id,
            "name": data.name,
            "color": data.color,
            "hexColor": "",
            "isDefaultCalendar": data.is_default,
            "changeKey": ck,
            "canShare": true,
            "canViewPrivateItems": true,
            "isShared": false,
            "isSharedWithMe": false,
            "canEdit": true,
            "allowedOnlineMeetingProviders": ["teamsForBusiness"],
            "defaultOnlineMeetingProvider": "teamsForBusiness",
            "isTallyingResponses": true,
            "isRemovable": !data.is_default,
            "owner": {"name": user.display_name, "address": user.upn},
        })
        .to_string();
        let inst = [Instance {
            id: data.id.as_str().into(),
            span: None,
            json: json.into(),
        }];
        Self { data, inst }
    }
}

impl TaskList {
    pub fn new(data: TaskListData) -> Self {
        let ck = change_key(&data.id, data.version);
        let json = json!({
            "@odata.type": "#microsoft.graph.todoTaskList",
            "@odata.etag": etag(&ck),
            "id": data.id,
            "displayName": data.display_name,
            "isOwner": true,
            "isShared": false,
            "wellknownListName": if data.wellknown { "defaultList" } else { "none" },
        })
        .to_string();
        let inst = [Instance {
            id: data.id.as_str().into(),
            span: None,
            json: json.into(),
        }];
        Self { data, inst }
    }
}

impl Task {
    pub fn new(data: TaskData) -> Self {
        let ck = change_key(&data.id, data.version);
        let now = Utc::now();
        let json = json!({
            "@odata.type": "#microsoft.graph.todoTask",
            "@odata.etag": etag(&ck),
            "id": data.id,
            "importance": data.importance,
            "isReminderOn": false,
            "status": data.status,
            "title": data.title,
            "createdDateTime": iso(data.created),
            "lastModifiedDateTime": iso(now),
            "hasAttachments": false,
            "categories": [],
            "body": {"content": data.body, "contentType": "text"},
            "completedDateTime": if data.status == "completed" {
                json!({"dateTime": graph_time(now.naive_utc()), "timeZone": "UTC"}) } else { Value::Null },
            "dueDateTime": data.due.map(|d| json!({"dateTime": graph_time(d), "timeZone": "UTC"})),
        })
        .to_string();
        let inst = [Instance {
            id: data.id.as_str().into(),
            span: None,
            json: json.into(),
        }];
        Self { data, inst }
    }
}

/// Ids with the default one (flag `false`) first, the rest in id order.
fn sorted(it: impl Iterator<Item = (bool, String)>) -> Vec<String> {
    let mut v: Vec<(bool, String)> = it.collect();
    v.sort();
    v.into_iter().map(|(_, id)| id).collect()
}

/// All mailboxes and the sequence counter.
#[derive(Debug, Default)]
pub struct Store {
    pub seq: Seq,
    pub tenants: HashMap<String, Tenant>,
    pub users: HashMap<String, User>,
    /// Lower-cased UPN → user id.
    pub upns: HashMap<String, String>,
}

/// A user as the control API creates and lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserSpec {
    /// Defaults to `default`.
    #[serde(default)]
    pub tenant: Option<String>,
    pub user_principal_name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: String,
    pub user_principal_name: String,
    pub tenant: String,
    pub primary_calendar: String,
    /// Calendar ids, the primary one first.
    pub calendars: Vec<String>,
    /// Task list ids, the default list first.
    pub task_lists: Vec<String>,
}

impl Store {
    fn next_seq(&mut self) -> Seq {
        self.seq += 1;
        self.seq
    }

    pub fn add_client(&mut self, tenant: &str, client: Client) {
        self.tenants
            .entry(tenant.to_string())
            .or_default()
            .clients
            .insert(client.client_id.clone(), client);
    }

    /// Finds a user by id or (case-insensitively) by UPN.
    pub fn user_id(&self, key: &str) -> Option<&str> {
        if let Some(u) = self.users.get(key) {
            return Some(&u.id);
        }
        self.upns.get(&key.to_lowercase()).map(String::as_str)
    }

    pub fn user(&self, key: &str) -> Result<&User, SimError> {
        let id = self
            .user_id(key)
            .ok_or_else(|| SimError::NotFound(format!("user {key}")))?;
        self.users
            .get(id)
            .ok_or_else(|| SimError::NotFound(format!("user {key}")))
    }

    fn user_mut(&mut self, key: &str) -> Result<&mut User, SimError> {
        let id = self
            .user_id(key)
            .ok_or_else(|| SimError::NotFound(format!("user {key}")))?
            .to_string();
        self.users
            .get_mut(&id)
            .ok_or_else(|| SimError::NotFound(format!("user {key}")))
    }

    /// Creates a user with a primary calendar ("Calendar") and a default task list ("Tasks").
    pub fn create_user(&mut self, spec: UserSpec) -> Result<UserInfo, SimError> {
        let tenant = spec.tenant.unwrap_or_else(|| "default".into());
        if self.user_id(&spec.user_principal_name).is_some() {
            return Err(SimError::Conflict(format!(
                "user {} exists",
                spec.user_principal_name
            )));
        }
        let id = spec.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let display_name = spec.display_name.unwrap_or_else(|| {
            let local = spec.user_principal_name.split('@').next().unwrap_or("user");
            let mut c = local.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        });
        let cal_id: Arc<str> = new_id("AAMkAGCal").into();
        let user = User {
            id: id.clone(),
            upn: spec.user_principal_name.clone(),
            tenant: tenant.clone(),
            display_name,
            primary_calendar: cal_id.clone(),
            calendars: Collection::default(),
            events: HashMap::new(),
            lists: Collection::default(),
            tasks: HashMap::new(),
        };
        self.tenants.entry(tenant).or_default();
        self.upns
            .insert(spec.user_principal_name.to_lowercase(), id.clone());
        self.users.insert(id.clone(), user);
        self.put_calendar(&id, cal_id.to_string(), "Calendar".into(), true, 0)?;
        let list_id = new_id("AQMkADTaskList");
        self.put_list(&id, list_id, "Tasks".into(), true, 0)?;
        self.user_info(&id)
    }

    pub fn user_info(&self, key: &str) -> Result<UserInfo, SimError> {
        let u = self.user(key)?;
        Ok(UserInfo {
            id: u.id.clone(),
            user_principal_name: u.upn.clone(),
            tenant: u.tenant.clone(),
            primary_calendar: u.primary_calendar.to_string(),
            calendars: sorted(
                u.calendars
                    .live()
                    .map(|c| (!c.data.is_default, c.data.id.clone())),
            ),
            task_lists: sorted(
                u.lists
                    .live()
                    .map(|l| (!l.data.wellknown, l.data.id.clone())),
            ),
        })
    }

    fn put_calendar(
        &mut self,
        user: &str,
        id: String,
        name: String,
        is_default: bool,
        version: u64,
    ) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let colors = [
            "auto",
            "lightBlue",
            "lightGreen",
            "lightOrange",
            "lightGray",
        ];
        let data = CalendarData {
            color: colors[(version as usize + id.len()) % colors.len()].into(),
            id: id.clone(),
            name,
            is_default,
            version,
        };
        let cal = Calendar::new(data, u);
        let key: Arc<str> = id.into();
        u.events.entry(key.clone()).or_default();
        u.calendars.put(key, seq, cal);
        Ok(())
    }

    fn put_list(
        &mut self,
        user: &str,
        id: String,
        name: String,
        wellknown: bool,
        version: u64,
    ) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let key: Arc<str> = id.clone().into();
        u.tasks.entry(key.clone()).or_default();
        u.lists.put(
            key,
            seq,
            TaskList::new(TaskListData {
                id,
                display_name: name,
                wellknown,
                version,
            }),
        );
        Ok(())
    }

    /// Resolves `primary` (any case) or a calendar id to the live calendar's id.
    pub fn calendar_id(&self, user: &str, calendar: &str) -> Result<Arc<str>, SimError> {
        let u = self.user(user)?;
        if calendar.eq_ignore_ascii_case("primary") {
            return Ok(u.primary_calendar.clone());
        }
        u.calendars
            .get(calendar)
            .map(|c| c.data.id.as_str().into())
            .ok_or_else(|| SimError::NotFound(format!("calendar {calendar}")))
    }

    pub fn create_calendar(&mut self, user: &str, spec: NameSpec) -> Result<String, SimError> {
        let id = new_id("AAMkAGCal");
        let name = spec
            .name
            .unwrap_or_else(|| text::title(&mut rand::rng(), 2));
        self.put_calendar(user, id.clone(), name, false, 0)?;
        Ok(id)
    }

    pub fn update_calendar(
        &mut self,
        user: &str,
        id: &str,
        spec: NameSpec,
    ) -> Result<(), SimError> {
        let u = self.user(user)?;
        let c = u
            .calendars
            .get(id)
            .ok_or_else(|| SimError::NotFound(format!("calendar {id}")))?;
        let d = c.data.clone();
        self.put_calendar(
            user,
            d.id,
            spec.name.unwrap_or(d.name + " (renamed)"),
            d.is_default,
            d.version + 1,
        )
    }

    /// Deletes a secondary calendar and its events.
    pub fn delete_calendar(&mut self, user: &str, id: &str) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        if &*u.primary_calendar == id {
            return Err(SimError::BadRequest(
                "the default calendar cannot be deleted".into(),
            ));
        }
        if !u.calendars.delete(id, seq) {
            return Err(SimError::NotFound(format!("calendar {id}")));
        }
        u.events.remove(id);
        Ok(())
    }

    pub fn create_event(
        &mut self,
        user: &str,
        calendar: &str,
        spec: EventSpec,
    ) -> Result<String, SimError> {
        if spec.end < spec.start {
            return Err(SimError::BadRequest("end is before start".into()));
        }
        if let Some(r) = &spec.recurrence {
            if r.count == 0 || r.count > 500 || r.interval == 0 {
                return Err(SimError::BadRequest(
                    "recurrence needs 1..=500 occurrences and an interval >= 1".into(),
                ));
            }
        }
        let cal = self.calendar_id(user, calendar)?;
        let mut rng = rand::rng();
        let data = EventData {
            id: new_id("AAMkAGEvt"),
            subject: spec.subject.unwrap_or_else(|| text::title(&mut rng, 4)),
            body: spec.body.unwrap_or_else(|| text::html_body(&mut rng)),
            location: spec.location.unwrap_or_default(),
            attendees: spec.attendees,
            start: spec.start,
            end: spec.end,
            is_all_day: spec.is_all_day,
            recurrence: spec.recurrence,
            exceptions: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            created: Utc::now(),
            version: 0,
        };
        let id = data.id.clone();
        self.put_event(user, &cal, data)?;
        Ok(id)
    }

    fn put_event(&mut self, user: &str, cal: &Arc<str>, data: EventData) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let ev = Event::new(data, u);
        let coll = u
            .events
            .get_mut(cal)
            .ok_or_else(|| SimError::NotFound(format!("calendar {cal}")))?;
        coll.put(ev.data.id.as_str().into(), seq, ev);
        Ok(())
    }

    /// Finds an event by id in any of the user's calendars.
    fn find_event(&self, user: &str, id: &str) -> Result<(Arc<str>, EventData), SimError> {
        let u = self.user(user)?;
        for (cal, coll) in &u.events {
            if let Some(e) = coll.get(id) {
                return Ok((cal.clone(), e.data.clone()));
            }
        }
        Err(SimError::NotFound(format!("event {id}")))
    }

    pub fn update_event(&mut self, user: &str, id: &str, p: EventPatch) -> Result<(), SimError> {
        let (cal, mut d) = self.find_event(user, id)?;
        if let Some(s) = p.subject {
            d.subject = s;
        }
        if let Some(b) = p.body {
            d.body = b;
        }
        if let Some(l) = p.location {
            d.location = l;
        }
        match (p.start, p.end) {
            (Some(s), Some(e)) => {
                d.start = s;
                d.end = e;
            }
            // Moving only the start keeps the duration.
            (Some(s), None) => {
                let len = d.end - d.start;
                d.start = s;
                d.end = s + len;
            }
            (None, Some(e)) => d.end = e,
            (None, None) => {}
        }
        if d.end < d.start {
            return Err(SimError::BadRequest("end is before start".into()));
        }
        d.version += 1;
        self.put_event(user, &cal, d)
    }

    /// Turns occurrence `index` of a series into an exception.
    pub fn update_occurrence(
        &mut self,
        user: &str,
        id: &str,
        index: u32,
        p: OccurrencePatch,
    ) -> Result<(), SimError> {
        let (cal, mut d) = self.find_event(user, id)?;
        let count = d.recurrence.as_ref().map(|r| r.count).unwrap_or(0);
        if index >= count || d.cancelled.contains(&index) {
            return Err(SimError::NotFound(format!("occurrence {index} of {id}")));
        }
        d.exceptions.insert(index, p);
        d.version += 1;
        self.put_event(user, &cal, d)
    }

    /// Cancels occurrence `index` of a series.
    pub fn delete_occurrence(&mut self, user: &str, id: &str, index: u32) -> Result<(), SimError> {
        let (cal, mut d) = self.find_event(user, id)?;
        let count = d.recurrence.as_ref().map(|r| r.count).unwrap_or(0);
        if index >= count || !d.cancelled.insert(index) {
            return Err(SimError::NotFound(format!("occurrence {index} of {id}")));
        }
        d.exceptions.remove(&index);
        d.version += 1;
        self.put_event(user, &cal, d)
    }

    pub fn delete_event(&mut self, user: &str, id: &str) -> Result<(), SimError> {
        let (cal, _) = self.find_event(user, id)?;
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        if let Some(coll) = u.events.get_mut(&cal) {
            coll.delete(id, seq);
        }
        Ok(())
    }

    pub fn create_list(&mut self, user: &str, spec: NameSpec) -> Result<String, SimError> {
        let id = new_id("AQMkADTaskList");
        let name = spec
            .name
            .unwrap_or_else(|| text::title(&mut rand::rng(), 2));
        self.put_list(user, id.clone(), name, false, 0)?;
        Ok(id)
    }

    pub fn update_list(&mut self, user: &str, id: &str, spec: NameSpec) -> Result<(), SimError> {
        let u = self.user(user)?;
        let l = u
            .lists
            .get(id)
            .ok_or_else(|| SimError::NotFound(format!("task list {id}")))?;
        let d = l.data.clone();
        self.put_list(
            user,
            d.id,
            spec.name.unwrap_or(d.display_name + " (renamed)"),
            d.wellknown,
            d.version + 1,
        )
    }

    pub fn delete_list(&mut self, user: &str, id: &str) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        if u.lists.get(id).is_some_and(|l| l.data.wellknown) {
            return Err(SimError::BadRequest(
                "the default task list cannot be deleted".into(),
            ));
        }
        if !u.lists.delete(id, seq) {
            return Err(SimError::NotFound(format!("task list {id}")));
        }
        u.tasks.remove(id);
        Ok(())
    }

    pub fn create_task(&mut self, user: &str, list: &str, s: TaskSpec) -> Result<String, SimError> {
        let mut rng = rand::rng();
        let data = TaskData {
            id: new_id("AAkALgTask"),
            title: s.title.unwrap_or_else(|| text::title(&mut rng, 3)),
            status: s.status.unwrap_or_else(|| "notStarted".into()),
            importance: s.importance.unwrap_or_else(|| "normal".into()),
            body: s.body.unwrap_or_else(|| text::sentences(&mut rng, 3)),
            created: Utc::now(),
            due: s.due,
            version: 0,
        };
        let id = data.id.clone();
        self.put_task(user, list, data)?;
        Ok(id)
    }

    fn put_task(&mut self, user: &str, list: &str, data: TaskData) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let coll = u
            .tasks
            .get_mut(list)
            .ok_or_else(|| SimError::NotFound(format!("task list {list}")))?;
        coll.put(data.id.as_str().into(), seq, Task::new(data));
        Ok(())
    }

    pub fn update_task(
        &mut self,
        user: &str,
        list: &str,
        id: &str,
        s: TaskSpec,
    ) -> Result<(), SimError> {
        let u = self.user(user)?;
        let mut d = u
            .tasks
            .get(list)
            .and_then(|c| c.get(id))
            .ok_or_else(|| SimError::NotFound(format!("task {id}")))?
            .data
            .clone();
        if let Some(t) = s.title {
            d.title = t;
        }
        if let Some(t) = s.status {
            d.status = t;
        }
        if let Some(t) = s.importance {
            d.importance = t;
        }
        if let Some(t) = s.body {
            d.body = t;
        }
        if s.due.is_some() {
            d.due = s.due;
        }
        d.version += 1;
        self.put_task(user, list, d)
    }

    pub fn delete_task(&mut self, user: &str, list: &str, id: &str) -> Result<(), SimError> {
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let ok = u.tasks.get_mut(list).is_some_and(|c| c.delete(id, seq));
        if ok {
            Ok(())
        } else {
            Err(SimError::NotFound(format!("task {id}")))
        }
    }
}
