//! Event operations: create, change, delete, occurrences, and moves between calendars.
//!
//! Events are found by either of their ids (immutable or regular), as Graph finds an item by
//! whichever id the request's `Prefer: IdType` gave out; they are keyed by the immutable one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use super::changes::ChangeType;
use super::{new_id, Event, EventData, EventPatch, EventSpec, OccurrencePatch, Store};
use crate::{text, SimError};

/// Id prefixes as Outlook's look: regular REST ids start `AAMkAG`, immutable ones `AAkALg`.
const REGULAR_PREFIX: &str = "AAMkAGEvt";
const IMMUTABLE_PREFIX: &str = "AAkALgEvt";

/// An event's two ids, as the control API reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventIds {
    /// What requests with `Prefer: IdType="ImmutableId"` see; never changes in the mailbox.
    pub id: String,
    /// What every other request sees; changes when the event moves to another calendar.
    pub regular_id: String,
    /// The calendar it is in.
    pub calendar: String,
}

impl Store {
    /// Creates an event or a series; returns its immutable id.
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
            id: new_id(IMMUTABLE_PREFIX),
            regular_id: new_id(REGULAR_PREFIX),
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
        let on = self.journal.on;
        let u = self.user_mut(user)?;
        // Only with subscriptions: no allocation per mutation otherwise.
        let uid = on.then(|| u.id.clone());
        let noted = on.then(|| data.clone());
        let ev = Event::new(data, u);
        let coll = u
            .events
            .get_mut(cal)
            .ok_or_else(|| SimError::NotFound(format!("calendar {cal}")))?;
        let change = if coll.get(&ev.data.id).is_some() {
            ChangeType::Updated
        } else {
            ChangeType::Created
        };
        coll.put(ev.data.id.as_str().into(), seq, ev);
        if let (Some(uid), Some(d)) = (uid, noted) {
            self.journal_event(&uid, cal, &d, change);
        }
        Ok(())
    }

    /// Finds a live event by its immutable or regular id in any of the user's calendars.
    fn find_event(&self, user: &str, id: &str) -> Result<(Arc<str>, &Event), SimError> {
        let u = self.user(user)?;
        for (cal, coll) in &u.events {
            if let Some(e) = coll.get(id) {
                return Ok((cal.clone(), e));
            }
        }
        // A regular id: a linear scan, as only the control API looks events up this way.
        u.events
            .iter()
            .find_map(|(cal, coll)| {
                coll.live()
                    .find(|e| e.data.regular_id == id)
                    .map(|e| (cal.clone(), e))
            })
            .ok_or_else(|| SimError::NotFound(format!("event {id}")))
    }

    /// Both ids of an event (found by either) and its calendar.
    pub fn event_ids(&self, user: &str, id: &str) -> Result<EventIds, SimError> {
        let (cal, e) = self.find_event(user, id)?;
        Ok(EventIds {
            id: e.data.id.clone(),
            regular_id: e.data.regular_id.clone(),
            calendar: cal.to_string(),
        })
    }

    pub fn update_event(&mut self, user: &str, id: &str, p: EventPatch) -> Result<(), SimError> {
        let (cal, e) = self.find_event(user, id)?;
        let mut d = e.data.clone();
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
        let (cal, e) = self.find_event(user, id)?;
        let mut d = e.data.clone();
        let count = d.recurrence.as_ref().map(|r| r.count).unwrap_or(0);
        if index >= count || d.cancelled.contains(&index) {
            return Err(SimError::NotFound(format!("occurrence {index} of {id}")));
        }
        d.exceptions.insert(index, p);
        d.version += 1;
        self.put_event(user, &cal, d)
    }

    /// Cancels occurrence `index` of a series as a change of the series: the next delta
    /// round reports the occurrence as removed. Real Graph does not (see
    /// [`Store::delete_occurrence_unreported`]); this generous variant is what the random
    /// mutations use, so that a correct connector converges without a full resync.
    pub fn delete_occurrence(&mut self, user: &str, id: &str, index: u32) -> Result<(), SimError> {
        let (cal, _, mut d) = self.without_occurrence(user, id, index)?;
        d.version += 1;
        self.put_event(user, &cal, d)
    }

    /// The series' calendar, the series, and its data with occurrence `index` cancelled.
    fn without_occurrence(
        &self,
        user: &str,
        id: &str,
        index: u32,
    ) -> Result<(Arc<str>, &Event, EventData), SimError> {
        let (cal, e) = self.find_event(user, id)?;
        let mut d = e.data.clone();
        let count = d.recurrence.as_ref().map(|r| r.count).unwrap_or(0);
        if index >= count || !d.cancelled.insert(index) {
            return Err(SimError::NotFound(format!("occurrence {index} of {id}")));
        }
        d.exceptions.remove(&index);
        Ok((cal, e, d))
    }

    /// Deletes occurrence `index` of a series the way Graph's calendarView delta treats it:
    /// no delta round ever reports it. "No indication is given for a deleted occurrence"
    /// (microsoftgraph/microsoft-graph-docs PR 4501, found by experiment; also docs issues
    /// 2963 and 4200). The series keeps its change stamp and every other instance its JSON;
    /// only a fresh full round (no deltaLink) and the truth no longer contain the occurrence.
    pub fn delete_occurrence_unreported(
        &mut self,
        user: &str,
        id: &str,
        index: u32,
    ) -> Result<(), SimError> {
        let (cal, e, d) = self.without_occurrence(user, id, index)?;
        let occurrence = d.occurrence_id(index);
        let key = d.id.clone();
        let noted = self.journal.on.then(|| d.clone());
        let replaced = e.without_instance(d, &occurrence);
        let u = self.user_mut(user)?;
        let uid = u.id.clone();
        let done = u
            .events
            .get_mut(&cal)
            .is_some_and(|c| c.replace_unreported(&key, replaced));
        if !done {
            return Err(SimError::NotFound(format!("event {id}")));
        }
        // Delta never reports it, but the series did change: its subscribers hear of it.
        if let Some(d) = noted {
            self.journal_event(&uid, &cal, &d, ChangeType::Updated);
        }
        Ok(())
    }

    pub fn delete_event(&mut self, user: &str, id: &str) -> Result<(), SimError> {
        let (cal, e) = self.find_event(user, id)?;
        let key = e.data.id.clone();
        let noted = self.journal.on.then(|| e.data.clone());
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let uid = u.id.clone();
        if let Some(coll) = u.events.get_mut(&cal) {
            coll.delete(&key, seq);
        }
        if let Some(d) = noted {
            self.journal_event(&uid, &cal, &d, ChangeType::Deleted);
        }
        Ok(())
    }

    /// Moves an event to another calendar of the same mailbox. Its immutable id stays; its
    /// regular id is new ("By default, this value changes when the item is moved from one
    /// container (such as a folder or calendar) to another", learn.microsoft.com event
    /// resource, `id`; learn.microsoft.com/graph/outlook-immutable-id). The old calendar's
    /// views report it removed (under the id each request knows it by), the new one's report
    /// it as new.
    pub fn move_event(
        &mut self,
        user: &str,
        id: &str,
        calendar: &str,
    ) -> Result<EventIds, SimError> {
        let to = self.calendar_id(user, calendar)?;
        let (from, e) = self.find_event(user, id)?;
        if from == to {
            return Err(SimError::BadRequest(format!(
                "event {id} is already in calendar {calendar}"
            )));
        }
        let mut d = e.data.clone();
        let key = d.id.clone();
        // The old calendar loses it under its old regular id; the new one gains it (put_event).
        let noted = self.journal.on.then(|| d.clone());
        d.regular_id = new_id(REGULAR_PREFIX);
        d.version += 1;
        let ids = EventIds {
            id: d.id.clone(),
            regular_id: d.regular_id.clone(),
            calendar: to.to_string(),
        };
        let seq = self.next_seq();
        let u = self.user_mut(user)?;
        let uid = u.id.clone();
        if let Some(coll) = u.events.get_mut(&from) {
            coll.delete(&key, seq);
        }
        if let Some(old) = noted {
            self.journal_event(&uid, &from, &old, ChangeType::Deleted);
        }
        self.put_event(user, &to, d)?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Item, UserSpec};

    fn store() -> (Store, String) {
        let mut s = Store::default();
        let u = s
            .create_user(UserSpec {
                tenant: None,
                user_principal_name: "a@contoso.com".into(),
                id: None,
                display_name: None,
            })
            .unwrap()
            .id;
        (s, u)
    }

    fn spec() -> EventSpec {
        EventSpec {
            subject: Some("x".into()),
            start: "2026-01-01T10:00:00".parse().unwrap(),
            end: "2026-01-01T11:00:00".parse().unwrap(),
            is_all_day: false,
            body: None,
            location: None,
            attendees: vec![],
            recurrence: None,
        }
    }

    #[test]
    fn a_move_keeps_the_immutable_id_and_changes_the_regular_one() {
        let (mut s, u) = store();
        let id = s.create_event(&u, "primary", spec()).unwrap();
        let before = s.event_ids(&u, &id).unwrap();
        assert!(before.id.starts_with("AAkALg") && before.regular_id.starts_with("AAMkAG"));
        assert_eq!(s.event_ids(&u, &before.regular_id).unwrap(), before);
        let cal = s.create_calendar(&u, Default::default()).unwrap();
        let after = s.move_event(&u, &before.regular_id, &cal).unwrap();
        assert_eq!(after.id, before.id);
        assert_ne!(after.regular_id, before.regular_id);
        assert_eq!(after.calendar, cal);
        assert!(
            s.event_ids(&u, &before.regular_id).is_err(),
            "the old id is gone"
        );
        let moved = s.users[&u].events[cal.as_str()].get(&id).unwrap();
        assert_eq!(moved.alias().unwrap().regular.as_ref(), after.regular_id);
        assert!(s.move_event(&u, &id, &cal).is_err(), "already there");
    }
}
