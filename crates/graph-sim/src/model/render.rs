//! Item JSON as Graph sends it, rendered once per mutation.

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde_json::{json, Value};

use super::{
    Calendar, CalendarData, Event, EventData, IdAlias, Instance, RecurrenceKind, Task, TaskData,
    TaskList, TaskListData, User,
};
use crate::text;

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

fn change_key(id: &str, version: u64) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{id}/{version}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..16])
}

fn etag(ck: &str) -> String {
    format!("W/\"{ck}\"")
}

/// The `@odata.etag` an item (event or task) has at `version`, as change notifications carry it.
pub(crate) fn item_etag(id: &str, version: u64) -> String {
    etag(&change_key(id, version))
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

    /// The (immutable) id of occurrence `k`: the series' id and the occurrence's start.
    pub(super) fn occurrence_id(&self, k: u32) -> String {
        let (s, _) = self.occurrence_span(k);
        format!("{}_{}", self.id, s.format("%Y%m%dT%H%M%S"))
    }
}

impl Event {
    pub fn new(data: EventData, user: &User) -> Self {
        let inst = render_event(&data, user);
        let alias = Arc::new(IdAlias {
            immutable: data.id.as_str().into(),
            regular: data.regular_id.as_str().into(),
        });
        Self { data, inst, alias }
    }

    /// The same event without one instance and with `data` as its state, every other
    /// instance's JSON untouched (not even `lastModifiedDateTime`).
    pub(super) fn without_instance(&self, data: EventData, id: &str) -> Self {
        let inst = self.inst.iter().filter(|i| &*i.id != id).cloned().collect();
        Self {
            data,
            inst,
            alias: self.alias.clone(),
        }
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

/// The one record of an item that is not an event.
fn undated(id: &str, json: String) -> Instance {
    Instance {
        id: id.into(),
        span: None,
        json: json.into(),
    }
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
        let inst = [undated(&data.id, json)];
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
        let inst = [undated(&data.id, json)];
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
        let inst = [undated(&data.id, json)];
        Self { data, inst }
    }
}
