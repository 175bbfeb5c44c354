//! Delta rounds: page assembly and the truth.
//!
//! A round covers the items whose change stamp lies in `(since, upto]`; `upto` is the
//! store's stamp when the round started, so changes made during a round are left for the
//! next one (whose `since` is this round's `upto`). The server-side state behind links is in
//! `tokens.rs`.

use std::sync::Arc;

use chrono::NaiveDateTime;
use rand::Rng;

use super::model::{Collection, IdAlias, Item, Slot, Store};
use super::present::Presentation;
use super::SimError;

pub use super::tokens::{Cursor, Lookup, TokenState, TokenTable};

/// What a delta request tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// Events of one calendar (`None` = the primary one) over `[start, end)` (UTC).
    CalendarView {
        calendar: Option<String>,
        start: NaiveDateTime,
        end: NaiveDateTime,
    },
    /// The user's calendars.
    CalendarList,
    /// The user's To Do lists.
    TaskLists,
    /// The tasks of one To Do list.
    Tasks { list: String },
}

impl Resource {
    /// The OData entity type, for `@odata.context` and removed items.
    pub fn entity(&self) -> &'static str {
        match self {
            Resource::CalendarView { .. } => "event",
            Resource::CalendarList => "calendar",
            Resource::TaskLists => "todoTaskList",
            Resource::Tasks { .. } => "todoTask",
        }
    }

    /// A short label for statistics and faults.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::CalendarView { .. } => "calendar_view",
            Resource::CalendarList => "calendar_list",
            Resource::TaskLists => "task_lists",
            Resource::Tasks { .. } => "tasks",
        }
    }

    fn window(&self) -> Option<(NaiveDateTime, NaiveDateTime)> {
        match self {
            Resource::CalendarView { start, end, .. } => Some((*start, *end)),
            _ => None,
        }
    }
}

/// A delta query: whose mailbox, what, and the options fixed at its initial request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The user's id (not UPN), so renames of the key do not matter.
    pub user: String,
    pub resource: Resource,
    /// `$select` (To Do only).
    pub select: Option<Vec<String>>,
}

/// One record of a page, with the item's regular id when it has one (`model::IdAlias`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Upsert(Arc<str>, Option<Arc<IdAlias>>),
    Removed(Arc<str>, Option<Arc<IdAlias>>),
}

/// What a page request produced.
pub struct Page {
    pub records: Vec<Record>,
    /// `Some` when the round goes on.
    pub next: Option<Cursor>,
    /// An item of this page that a later page may repeat.
    pub replay: Option<Arc<str>>,
}

/// How a page is cut.
#[derive(Debug, Clone)]
pub struct PageParams {
    pub size: usize,
    /// Index entries examined at most before an (empty) page is returned anyway.
    pub scan_limit: usize,
    pub replay_probability: f64,
    pub empty_page_probability: f64,
    /// Never split an item's records (a series and its instances) over two pages, even when
    /// the page grows past `size` ("Series won't be split on multiple delta pages",
    /// microsoftgraph/microsoft-graph-docs PR 4501; pages larger than `odata.maxpagesize`
    /// when a recurring master expands, msgraph-sdk-dotnet issues 3070 and 1568).
    pub whole_items: bool,
}

impl Default for PageParams {
    fn default() -> Self {
        Self {
            size: 10,
            scan_limit: 5000,
            replay_probability: 0.0,
            empty_page_probability: 0.0,
            whole_items: false,
        }
    }
}

/// Builds one page of the round described by `state`.
pub fn page(store: &Store, state: &TokenState, p: &PageParams) -> Result<Page, SimError> {
    let q = &state.query;
    let user = store.user(&q.user)?;
    let window = q.resource.window();
    match &q.resource {
        Resource::CalendarView { calendar, .. } => {
            let cal = match calendar {
                None => user.primary_calendar.clone(),
                Some(c) => store.calendar_id(&q.user, c)?,
            };
            let coll = user
                .events
                .get(&cal)
                .ok_or_else(|| SimError::NotFound(format!("calendar {cal}")))?;
            Ok(page_of(coll, state, window, p))
        }
        Resource::CalendarList => Ok(page_of(&user.calendars, state, None, p)),
        Resource::TaskLists => Ok(page_of(&user.lists, state, None, p)),
        Resource::Tasks { list } => {
            let coll = user
                .tasks
                .get(list.as_str())
                .ok_or_else(|| SimError::NotFound(format!("task list {list}")))?;
            Ok(page_of(coll, state, None, p))
        }
    }
}

/// The records an item contributes to a round, in a stable order.
fn item_records<T: Item>(
    slot: &Slot<T>,
    gone: &std::collections::BTreeSet<Arc<str>>,
    initial: bool,
    window: Option<(NaiveDateTime, NaiveDateTime)>,
    out: &mut Vec<Record>,
) {
    let alias = slot.alias();
    let removed = |id: &Arc<str>| Record::Removed(id.clone(), alias.cloned());
    match slot {
        Slot::Live(item) => {
            for inst in item.instances() {
                if inst.overlaps(window) {
                    out.push(Record::Upsert(inst.json.clone(), alias.cloned()));
                } else if !initial {
                    // Graph reports changes outside a calendar view's window as deletions.
                    out.push(removed(&inst.id));
                }
            }
            if !initial {
                out.extend(gone.iter().map(removed));
            }
        }
        Slot::Deleted(t) if !initial => out.extend(t.ids.iter().map(removed)),
        Slot::Deleted(_) => {}
    }
}

fn page_of<T: Item>(
    coll: &Collection<T>,
    state: &TokenState,
    window: Option<(NaiveDateTime, NaiveDateTime)>,
    p: &PageParams,
) -> Page {
    use std::ops::Bound;
    let mut rng = rand::rng();
    let mut records = Vec::with_capacity(p.size.min(1024));
    let mut scratch = Vec::new();
    if p.empty_page_probability > 0.0 && rng.random_bool(p.empty_page_probability.min(1.0)) {
        return Page {
            records,
            next: Some(state.cursor.clone().unwrap_or(Cursor {
                seq: state.since,
                id: "".into(),
                done: usize::MAX,
            })),
            replay: state.replay.clone(),
        };
    }
    // A replay: an item of an earlier page, in its current state, sent again.
    if let Some(id) = &state.replay {
        if p.replay_probability > 0.0 && rng.random_bool(p.replay_probability.min(1.0)) {
            if let Some(e) = coll.entries.get(id) {
                if matches!(e.slot, Slot::Live(_)) {
                    item_records(&e.slot, &e.gone, state.initial, window, &mut scratch);
                    records.extend(
                        scratch
                            .drain(..)
                            .filter(|r| matches!(r, Record::Upsert(..))),
                    );
                }
            }
        }
    }
    let (start, skip) = match &state.cursor {
        Some(c) => ((c.seq, c.id.clone()), c.done),
        None => ((state.since, Arc::<str>::from("")), usize::MAX),
    };
    let mut replay = None;
    // `done == usize::MAX` means "everything of that item was sent": start after it.
    let lower = if skip == usize::MAX {
        Bound::Excluded(start.clone())
    } else {
        Bound::Included(start.clone())
    };
    let upper = Bound::Excluded((state.upto + 1, Arc::<str>::from("")));
    let mut scanned = 0usize;
    for key in coll.index.range((lower, upper)) {
        let (seq, id) = key;
        if *seq <= state.since {
            continue;
        }
        scanned += 1;
        let Some(e) = coll.entries.get(id) else {
            continue;
        };
        scratch.clear();
        item_records(&e.slot, &e.gone, state.initial, window, &mut scratch);
        let already = if key == &start && skip != usize::MAX {
            skip
        } else {
            0
        };
        for (sent, r) in (already..).zip(scratch.drain(..).skip(already)) {
            // A full page ends here, unless items stay whole and this one has begun.
            if records.len() >= p.size && !(p.whole_items && sent > already) {
                return Page {
                    records,
                    next: Some(Cursor {
                        seq: *seq,
                        id: id.clone(),
                        done: sent,
                    }),
                    replay,
                };
            }
            if replay.is_none() && matches!(r, Record::Upsert(..)) {
                replay = Some(id.clone());
            }
            records.push(r);
        }
        if records.len() >= p.size || scanned >= p.scan_limit {
            return Page {
                records,
                next: Some(Cursor {
                    seq: *seq,
                    id: id.clone(),
                    done: usize::MAX,
                }),
                replay,
            };
        }
    }
    Page {
        records,
        next: None,
        replay,
    }
}

/// The current state of what `query` tracks: every item a correct replica holds, by id,
/// as Graph would present it.
pub fn truth(
    store: &Store,
    q: &Query,
    pres: &Presentation,
) -> Result<std::collections::BTreeMap<String, String>, SimError> {
    let user = store.user(&q.user)?;
    let window = q.resource.window();
    let mut out = std::collections::BTreeMap::new();
    let mut add = |item: &dyn Item| {
        let alias = item.alias().map(|a| &**a);
        for i in item.instances() {
            if i.overlaps(window) {
                out.insert(
                    pres.id(&i.id, alias).into_owned(),
                    pres.apply(&i.json, alias).into_owned(),
                );
            }
        }
    };
    match &q.resource {
        Resource::CalendarView { calendar, .. } => {
            let cal = match calendar {
                None => user.primary_calendar.clone(),
                Some(c) => store.calendar_id(&q.user, c)?,
            };
            if let Some(coll) = user.events.get(&cal) {
                coll.live().for_each(|e| add(e));
            }
        }
        Resource::CalendarList => user.calendars.live().for_each(|e| add(e)),
        Resource::TaskLists => user.lists.live().for_each(|e| add(e)),
        Resource::Tasks { list } => {
            let coll = user
                .tasks
                .get(list.as_str())
                .ok_or_else(|| SimError::NotFound(format!("task list {list}")))?;
            coll.live().for_each(|e| add(e));
        }
    }
    Ok(out)
}
