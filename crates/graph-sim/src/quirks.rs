//! Per-mailbox quirks of calendarView delta: behaviours reported on some mailboxes and not on
//! others, switched on per user through `/_sim/users/{u}/quirks`.
//!
//! - **Whole series on one page.** "Series won't be split on multiple delta pages"
//!   (microsoftgraph/microsoft-graph-docs PR 4501, found by experiment); with
//!   `odata.maxpagesize=100` "First page length: 104" when a daily series expands
//!   (microsoftgraph/msgraph-sdk-dotnet issue 3070; also issue 1568, "the odata.maxpagesize is
//!   not respected for all pages"). A page then holds every record of each item it starts.
//! - **nextLinks that never end.** "a later page returns @odata.nextLink; following that
//!   @odata.nextLink returns the same page payload again; each repeated response contains a
//!   different @odata.nextLink; no @odata.deltaLink is ever returned" (msgraph-sdk-dotnet
//!   issue 3082, "for a recurrence-heavy mailbox"; issue 3070 reports the same loop). After
//!   page `after_pages`, the nextLink leads back to page `back_to`, forever: either the very
//!   link that fetched that page before (`fresh_links: false`, a loop a client sees by its
//!   links) or a new link to the same position (`fresh_links: true`, as issue 3082 reports
//!   it: only the repeated payloads show the loop). With `loops: n` the loop closes n times
//!   in all, then the quirk switches itself off: neither issue says whether such a loop ever
//!   ends, but a test that shows a client recovering once Graph pages properly again cannot
//!   switch the quirk off itself at the right moment without racing the client.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::tokens::{CycleLinks, TokenState, TokenTable};
use super::SimError;

/// How Graph serves one mailbox's calendar views (everything off: as documented).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailboxQuirks {
    /// Pages keep an event's records (a series master and all its instances) together,
    /// even past `odata.maxpagesize`.
    pub whole_series_pages: bool,
    /// Rounds started while this is set loop instead of ending.
    pub next_link_cycle: Option<NextLinkCycle>,
}

/// A round that never ends (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextLinkCycle {
    /// Pages served before the loop closes: page `after_pages` links back (at least 2).
    pub after_pages: u32,
    /// The page the loop goes back to (2 ..= `after_pages`; default 2, the first page a
    /// nextLink fetched).
    #[serde(default = "two")]
    pub back_to: u32,
    /// Each loop hands out new links to the same positions instead of the old links.
    #[serde(default)]
    pub fresh_links: bool,
    /// How many more times the loop closes (page `after_pages` links back) before the quirk
    /// switches itself off; unset: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loops: Option<u32>,
}

fn two() -> u32 {
    2
}

impl MailboxQuirks {
    pub fn validate(&self) -> Result<(), SimError> {
        if let Some(c) = &self.next_link_cycle {
            if c.after_pages < 2 || !(2..=c.after_pages).contains(&c.back_to) {
                return Err(SimError::BadRequest(
                    "next_link_cycle needs after_pages >= 2 and 2 <= back_to <= after_pages".into(),
                ));
            }
            if c.loops == Some(0) {
                return Err(SimError::BadRequest(
                    "next_link_cycle.loops must be at least 1 (or left out: forever)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The quirks of every mailbox that has some, by user id.
pub type Quirks = HashMap<String, MailboxQuirks>;

/// The nextLink token of a looping round's page, given `next`, the state of the page after
/// it, and whether it closes the loop (links back). Pages up to `after_pages` link onwards (on
/// later passes with the links they had, unless links are fresh); page `after_pages` links
/// back to page `back_to`. A link the token cache dropped meanwhile cannot be handed out
/// again: the round then goes on as if it did not loop.
pub fn cycle_link(
    tokens: &mut TokenTable,
    links: &CycleLinks,
    cycle: &NextLinkCycle,
    next: TokenState,
    capacity: usize,
) -> (String, bool) {
    let target = next.page;
    let mut links = links.lock();
    if target > cycle.after_pages {
        if let Some(back) = links.get(&cycle.back_to).cloned() {
            if !cycle.fresh_links && tokens.restamp(&back) {
                return (back, true);
            }
            if let Some(state) = tokens.state(&back).filter(|_| cycle.fresh_links) {
                return (tokens.issue(state, capacity), true);
            }
        }
    } else if !cycle.fresh_links {
        if let Some(again) = links.get(&target).cloned() {
            if tokens.restamp(&again) {
                return (again, false);
            }
        }
    }
    let token = tokens.issue(next, capacity);
    links.entry(target).or_insert_with(|| token.clone());
    (token, false)
}

/// A loop of `user`'s mailbox closed: one fewer left, if they are counted; the quirk is
/// switched off after the last.
pub fn loop_closed(quirks: &mut Quirks, user: &str) {
    let Some(q) = quirks.get_mut(user) else {
        return;
    };
    let Some(cycle) = &mut q.next_link_cycle else {
        return;
    };
    match cycle.loops {
        Some(n) if n > 1 => cycle.loops = Some(n - 1),
        Some(_) => q.next_link_cycle = None,
        None => {}
    }
}
