//! The store: every mailbox, and the operations the control API and the generators apply.
//! Event operations live in `events.rs`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::changes::ChangeType;
use super::{
    new_id, Calendar, CalendarData, Client, Collection, Group, NameSpec, Seq, Task, TaskData,
    TaskList, TaskListData, TaskSpec, Tenant, User,
};
use crate::{text, SimError};

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
    /// Security groups by id, deleted ones kept for `/groups/delta` (`directory.rs`).
    pub groups: HashMap<String, Group>,
    /// Application permissions set per `tenant/client_id` (absent: the defaults).
    pub roles: HashMap<String, BTreeSet<String>>,
    /// Changes of events and tasks awaiting change notifications (`changes.rs`).
    pub journal: super::changes::Journal,
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
    pub mail: Option<String>,
    /// `false`: no Exchange Online mailbox (see `PATCH /_sim/users/{u}`).
    pub mailbox: bool,
    pub tenant: String,
    pub primary_calendar: String,
    /// Calendar ids, the primary one first.
    pub calendars: Vec<String>,
    /// Task list ids, the default list first.
    pub task_lists: Vec<String>,
}

impl Store {
    pub(super) fn next_seq(&mut self) -> Seq {
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

    /// Finds a user by id (a GUID in any case, as Graph reads object ids) or,
    /// case-insensitively, by UPN.
    pub fn user_id(&self, key: &str) -> Option<&str> {
        if let Some(u) = self
            .users
            .get(key)
            .or_else(|| self.users.get(&key.to_ascii_lowercase()))
        {
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

    pub(super) fn user_mut(&mut self, key: &str) -> Result<&mut User, SimError> {
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
            mail: Some(spec.user_principal_name.clone()),
            mailbox: true,
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
            mail: u.mail.clone(),
            mailbox: u.mailbox,
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
        let uid = u.id.clone();
        let gone = u.events.remove(id);
        // Its events go with it: one `deleted` notification each.
        if let Some(coll) = gone.filter(|_| self.journal.on) {
            let cal: Arc<str> = id.into();
            for e in coll.live() {
                self.journal_event(&uid, &cal, &e.data, ChangeType::Deleted);
            }
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
        let uid = u.id.clone();
        let gone = u.tasks.remove(id);
        // Its tasks go with it: one `deleted` notification each.
        if let Some(coll) = gone.filter(|_| self.journal.on) {
            for t in coll.live() {
                self.journal_task(&uid, id, &t.data, ChangeType::Deleted);
            }
        }
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
        let on = self.journal.on;
        let u = self.user_mut(user)?;
        // Only with subscriptions: no allocation per mutation otherwise.
        let uid = on.then(|| u.id.clone());
        let coll = u
            .tasks
            .get_mut(list)
            .ok_or_else(|| SimError::NotFound(format!("task list {list}")))?;
        let change = if coll.get(&data.id).is_some() {
            ChangeType::Updated
        } else {
            ChangeType::Created
        };
        let noted = on.then(|| data.clone());
        coll.put(data.id.as_str().into(), seq, Task::new(data));
        if let (Some(uid), Some(d)) = (uid, noted) {
            self.journal_task(&uid, list, &d, change);
        }
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
        let on = self.journal.on;
        let u = self.user_mut(user)?;
        let uid = u.id.clone();
        let noted = u
            .tasks
            .get(list)
            .and_then(|c| c.get(id))
            .filter(|_| on)
            .map(|t| t.data.clone());
        let ok = u.tasks.get_mut(list).is_some_and(|c| c.delete(id, seq));
        if !ok {
            return Err(SimError::NotFound(format!("task {id}")));
        }
        if let Some(d) = noted {
            self.journal_task(&uid, list, &d, ChangeType::Deleted);
        }
        Ok(())
    }
}
