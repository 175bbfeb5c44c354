//! Delta rounds: server-side state tokens and page assembly.
//!
//! A round covers the items whose change stamp lies in `(since, upto]`; `upto` is the
//! store's stamp when the round started, so changes made during a round are left for the
//! next one (whose `since` is this round's `upto`). Tokens are random strings naming a
//! server-side [`TokenState`]; links carry nothing else, as Graph's are opaque to clients.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::NaiveDateTime;
use rand::Rng;

use super::model::{Collection, Item, Seq, Slot, Store};
use super::present::Presentation;
use super::SimError;

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

/// Position inside a round: the item `(seq, id)` and how many of its records were sent.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub seq: Seq,
    pub id: Arc<str>,
    pub done: usize,
}

#[derive(Debug, Clone)]
pub struct TokenState {
    pub query: Arc<Query>,
    /// The request path the links are built on (`/v1.0/users/…/delta`).
    pub path: Arc<str>,
    /// The initial request, for the `Location` header of a 410.
    pub initial_url: Arc<str>,
    pub since: Seq,
    pub upto: Seq,
    pub initial: bool,
    /// Set for skip tokens (mid-round); `None` for delta tokens.
    pub cursor: Option<Cursor>,
    /// An item sent earlier this round that may be sent again (replay simulation).
    pub replay: Option<Arc<str>>,
}

enum Token {
    Live(TokenState),
    /// Evicted by a fault or the control API: answers 410 with this `Location`.
    Evicted(Arc<str>),
}

/// All tokens handed out, oldest first, bounded like Outlook's sync-state cache.
#[derive(Default)]
pub struct TokenTable {
    tokens: HashMap<String, Token>,
    order: VecDeque<String>,
}

/// Result of looking up a token.
pub enum Lookup {
    Found(TokenState),
    /// Known to have been evicted: answer 410 with the initial request as `Location`.
    Gone(Arc<str>),
    /// Never issued or dropped from the cache: 410 without `Location`.
    Unknown,
}

impl TokenTable {
    pub fn issue(&mut self, state: TokenState, capacity: usize) -> String {
        let token = new_token();
        while self.order.len() >= capacity.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
        self.order.push_back(token.clone());
        self.tokens.insert(token.clone(), Token::Live(state));
        token
    }

    pub fn lookup(&self, token: &str) -> Lookup {
        match self.tokens.get(token) {
            Some(Token::Live(s)) => Lookup::Found(s.clone()),
            Some(Token::Evicted(loc)) => Lookup::Gone(loc.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Evicts one token (a `410` fault on it).
    pub fn evict(&mut self, token: &str) {
        if let Some(t) = self.tokens.get_mut(token) {
            if let Token::Live(s) = t {
                *t = Token::Evicted(s.initial_url.clone());
            }
        }
    }

    /// Evicts every token of a user (by id), or all tokens; returns how many.
    pub fn evict_user(&mut self, user: Option<&str>) -> usize {
        let mut n = 0;
        for t in self.tokens.values_mut() {
            if let Token::Live(s) = t {
                if user.is_none_or(|u| u == s.query.user) {
                    *t = Token::Evicted(s.initial_url.clone());
                    n += 1;
                }
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn new_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..48)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// One record of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Upsert(Arc<str>),
    Removed(Arc<str>),
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
pub struct PageParams {
    pub size: usize,
    /// Index entries examined at most before an (empty) page is returned anyway.
    pub scan_limit: usize,
    pub replay_probability: f64,
    pub empty_page_probability: f64,
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
    match slot {
        Slot::Live(item) => {
            for inst in item.instances() {
                if inst.overlaps(window) {
                    out.push(Record::Upsert(inst.json.clone()));
                } else if !initial {
                    // Graph reports changes outside a calendar view's window as deletions.
                    out.push(Record::Removed(inst.id.clone()));
                }
            }
            if !initial {
                out.extend(gone.iter().cloned().map(Record::Removed));
            }
        }
        Slot::Deleted(ids) if !initial => out.extend(ids.iter().cloned().map(Record::Removed)),
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
                    records.extend(scratch.drain(..).filter(|r| matches!(r, Record::Upsert(_))));
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
            if records.len() >= p.size {
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
            if replay.is_none() && matches!(r, Record::Upsert(_)) {
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
    let mut add = |insts: &[super::model::Instance]| {
        for i in insts {
            if i.overlaps(window) {
                out.insert(i.id.to_string(), pres.apply(&i.json).into_owned());
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
                coll.live().for_each(|e| add(e.instances()));
            }
        }
        Resource::CalendarList => user.calendars.live().for_each(|e| add(e.instances())),
        Resource::TaskLists => user.lists.live().for_each(|e| add(e.instances())),
        Resource::Tasks { list } => {
            let coll = user
                .tasks
                .get(list.as_str())
                .ok_or_else(|| SimError::NotFound(format!("task list {list}")))?;
            coll.live().for_each(|e| add(e.instances()));
        }
    }
    Ok(out)
}
