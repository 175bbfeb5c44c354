//! The change journal: what change notifications are made of.
//!
//! Every create, update and delete of an event or a task appends one [`Change`], but only
//! while at least one subscription exists (`Journal::on`, kept by `subscriptions.rs`): a
//! simulator without subscriptions (the benchmarks' 100,000 partitions) pays one branch per
//! mutation. The notification dispatcher (`notify.rs`) drains it.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{render, EventData, Store, TaskData};

/// What happened to an item, as a subscription's `changeType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

impl ChangeType {
    /// The name in `changeType` lists and notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Created => "created",
            ChangeType::Updated => "updated",
            ChangeType::Deleted => "deleted",
        }
    }
}

/// The item a change is about, with what a notification names it by.
#[derive(Debug, Clone)]
pub enum ChangedItem {
    Event {
        calendar: Arc<str>,
        /// Immutable id (notifications of subscriptions created with `Prefer:
        /// IdType="ImmutableId"`).
        id: String,
        /// Regular id (every other subscription's notifications).
        regular_id: String,
        etag: String,
    },
    Task {
        list: Arc<str>,
        id: String,
        etag: String,
    },
}

/// One change of one item.
#[derive(Debug, Clone)]
pub struct Change {
    pub at: Instant,
    pub user_id: String,
    pub item: ChangedItem,
    pub change: ChangeType,
}

/// Changes not yet turned into notifications.
#[derive(Debug, Default)]
pub struct Journal {
    /// Whether changes are recorded (some subscription exists).
    pub on: bool,
    pub pending: Vec<Change>,
}

impl Journal {
    /// Takes the changes made at or before `until`, oldest first.
    pub fn drain_until(&mut self, until: Instant) -> Vec<Change> {
        let n = self.pending.partition_point(|c| c.at <= until);
        self.pending.drain(..n).collect()
    }
}

impl Store {
    /// Records a change of an event (no-op without subscriptions).
    pub(super) fn journal_event(
        &mut self,
        user_id: &str,
        calendar: &Arc<str>,
        d: &EventData,
        change: ChangeType,
    ) {
        if !self.journal.on {
            return;
        }
        self.journal.pending.push(Change {
            at: Instant::now(),
            user_id: user_id.to_string(),
            item: ChangedItem::Event {
                calendar: calendar.clone(),
                id: d.id.clone(),
                regular_id: d.regular_id.clone(),
                etag: render::item_etag(&d.id, d.version),
            },
            change,
        });
    }

    /// Records a change of a task (no-op without subscriptions).
    pub(super) fn journal_task(
        &mut self,
        user_id: &str,
        list: &str,
        d: &TaskData,
        change: ChangeType,
    ) {
        if !self.journal.on {
            return;
        }
        self.journal.pending.push(Change {
            at: Instant::now(),
            user_id: user_id.to_string(),
            item: ChangedItem::Task {
                list: list.into(),
                id: d.id.clone(),
                etag: render::item_etag(&d.id, d.version),
            },
            change,
        });
    }
}
