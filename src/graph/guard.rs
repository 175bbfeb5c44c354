//! The paging guard: a round that loops instead of ending is abandoned, not followed forever.
//!
//! Graph's calendarView delta has been seen to hand out nextLinks without end on some
//! mailboxes (NOTES.md "Recurring series"; msgraph-sdk-dotnet issues 3070 and 3082), either
//! by repeating a link or by handing out *new* links to pages it already served ("following
//! that @odata.nextLink returns the same page payload again; each repeated response contains
//! a different @odata.nextLink"). Each page costs a request of the mailbox's budget, so the
//! reader's [`RoundGuard`] trips when a round
//!
//! - is about to follow a link that fetched a page of this round already (by hash),
//! - fetched a page, with a nextLink and items, whose content (ids and bytes, hashed) equals a
//!   page of this round already (a loop under fresh links), or
//! - would take more than `graph.max_pages_per_round` pages.
//!
//! Pages larger than `odata.maxpagesize` are accepted as they are (Graph keeps a recurring
//! series on one page): the guard counts pages, not items.
//!
//! A page's marks count only once the reader has moved *past* it ([`RoundGuard::advanced`]):
//! a page whose transaction aborted is fetched again from the same link, legitimately, and
//! the worker prefetches the next page on a copy of the reader that replaces it only if the
//! commit succeeds. Until then a fetched page's marks wait in [`RoundGuard::fetched`].
//!
//! A tripped round is abandoned ([`RoundGuard::abandon`]): restarted from its deltaLink if it
//! has one (a delta round), then from scratch; a third trip in a row fails the partition with
//! the reason instead of looping. A round that completes resets that count. Abandoning only
//! moves the reader back, which is always safe.
//!
//! A round from scratch could in principle return two pages with the very same items and
//! bytes (a replayed item alone on a page twice): the guard would abandon it once, and the
//! restarted round, whose replays fall elsewhere, goes on.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::delta::DeltaPage;

/// Why a round was abandoned (the metric's `why` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// The round was about to follow a link it had followed already.
    LinkRepeated,
    /// A page repeated a page of the round, under a new nextLink.
    PageRepeated,
    /// More pages than `graph.max_pages_per_round`.
    TooManyPages,
}

impl Loop {
    pub fn as_str(self) -> &'static str {
        match self {
            Loop::LinkRepeated => "link_repeated",
            Loop::PageRepeated => "page_repeated",
            Loop::TooManyPages => "too_many_pages",
        }
    }

    fn describe(self, max_pages: u32) -> String {
        match self {
            Loop::LinkRepeated => "the round repeated a nextLink it had already followed".into(),
            Loop::PageRepeated => {
                "the round returned a page it had already returned, under a new nextLink".into()
            }
            Loop::TooManyPages => {
                format!("the round took more than graph.max_pages_per_round = {max_pages} pages")
            }
        }
    }
}

/// What an abandoned round does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandon {
    /// Starts over from the round's deltaLink (still a delta round).
    FromDeltaLink,
    /// Starts over from the initial request (a round from scratch).
    FromScratch,
    /// Gives up: the partition fails with this reason (no link or token in it).
    Fail(String),
}

impl Abandon {
    /// Where the reader goes (the log's `then` field).
    pub fn as_str(&self) -> &'static str {
        match self {
            Abandon::FromDeltaLink => "delta_link",
            Abandon::FromScratch => "initial",
            Abandon::Fail(_) => "failed",
        }
    }
}

/// How far abandonments in a row have gone since a round last completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Escalation {
    #[default]
    None,
    /// The round went back to its deltaLink.
    FromDeltaLink,
    /// The round went back to the initial request (`after_delta`: after its deltaLink).
    FromScratch { after_delta: bool },
}

/// A fetched page's marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    /// The link that fetched it.
    link: u64,
    /// Its content, for a page with items and a nextLink (a page ending its round or an
    /// empty one cannot show a loop).
    content: Option<u64>,
}

/// The current round's marks and the abandonments in a row (see the module docs). Memory:
/// two hashes per page of the round, cleared when it ends or restarts.
#[derive(Debug, Clone)]
pub struct RoundGuard {
    max_pages: u32,
    /// Links that fetched the pages the reader moved past in this round.
    links: HashSet<u64>,
    /// Contents of those pages.
    pages: HashSet<u64>,
    /// How many pages the reader moved past in this round.
    count: u32,
    /// The last fetched page's marks, until the reader moves past it.
    pending: Option<Marks>,
    escalation: Escalation,
}

fn hash_of(f: impl FnOnce(&mut DefaultHasher)) -> u64 {
    // SipHash with fixed keys: the same in every copy of the reader, which is all it needs.
    let mut h = DefaultHasher::new();
    f(&mut h);
    h.finish()
}

fn link_hash(link: &str) -> u64 {
    hash_of(|h| link.hash(h))
}

impl RoundGuard {
    /// A guard allowing `max_pages` pages a round (at least 1).
    pub fn new(max_pages: u32) -> Self {
        Self {
            max_pages: max_pages.max(1),
            links: HashSet::new(),
            pages: HashSet::new(),
            count: 0,
            pending: None,
            escalation: Escalation::None,
        }
    }

    /// Pages the reader moved past in this round.
    pub fn pages(&self) -> u32 {
        self.count
    }

    /// Before following `link`: whether the round may go on.
    pub fn before(&self, link: &str) -> Result<(), Loop> {
        if self.count >= self.max_pages {
            return Err(Loop::TooManyPages);
        }
        if self.links.contains(&link_hash(link)) {
            return Err(Loop::LinkRepeated);
        }
        Ok(())
    }

    /// `page` was fetched from `link`: whether it repeats a page of the round. If not, its
    /// marks are kept until the reader moves past it (fetching it again replaces them).
    pub fn fetched(&mut self, link: &str, page: &DeltaPage) -> Result<(), Loop> {
        let content = (page.next_link.is_some() && !page.items.is_empty()).then(|| {
            hash_of(|h| {
                page.items.len().hash(h);
                for item in &page.items {
                    item.id.hash(h);
                    item.raw.hash(h);
                }
            })
        });
        if content.is_some_and(|c| self.pages.contains(&c)) {
            self.pending = None;
            return Err(Loop::PageRepeated);
        }
        self.pending = Some(Marks {
            link: link_hash(link),
            content,
        });
        Ok(())
    }

    /// The reader moved past the page fetched last; `round_ended`: it was its round's last,
    /// which also ends a series of abandonments.
    pub fn advanced(&mut self, round_ended: bool) {
        if round_ended {
            self.restarted();
            self.escalation = Escalation::None;
            return;
        }
        if let Some(m) = self.pending.take() {
            self.count += 1;
            self.links.insert(m.link);
            self.pages.extend(m.content);
        }
    }

    /// The round starts over (a `410`, a resync signal, a roll, an abandonment): what it
    /// fetched so far will legitimately be fetched again.
    pub fn restarted(&mut self) {
        self.links.clear();
        self.pages.clear();
        self.count = 0;
        self.pending = None;
    }

    /// The round tripped for `why`: what to do, given whether it has a deltaLink to start
    /// over from. The round's marks are cleared for the restart.
    pub fn abandon(&mut self, why: Loop, has_delta_link: bool) -> Abandon {
        self.restarted();
        self.escalation = match self.escalation {
            Escalation::None if has_delta_link => Escalation::FromDeltaLink,
            Escalation::None => Escalation::FromScratch { after_delta: false },
            Escalation::FromDeltaLink => Escalation::FromScratch { after_delta: true },
            Escalation::FromScratch { after_delta } => {
                let tried = if after_delta {
                    "from its deltaLink, then from scratch"
                } else {
                    "from scratch"
                };
                return Abandon::Fail(format!(
                    "{}, again after restarting the round {tried}; the partition stops \
                     instead of looping (restart it once the mailbox pages properly)",
                    why.describe(self.max_pages)
                ));
            }
        };
        match self.escalation {
            Escalation::FromDeltaLink => Abandon::FromDeltaLink,
            _ => Abandon::FromScratch,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::graph::delta::DeltaItem;

    const L1: &str = "https://graph.microsoft.com/v1.0/users/u/calendarView/delta?$deltatoken=1";
    const L2: &str = "https://graph.microsoft.com/v1.0/users/u/calendarView/delta?$skiptoken=2";
    const L3: &str = "https://graph.microsoft.com/v1.0/users/u/calendarView/delta?$skiptoken=3";
    const L2_AGAIN: &str =
        "https://graph.microsoft.com/v1.0/users/u/calendarView/delta?$skiptoken=2b";

    /// A page of items `ids` (each `{"id":…,"n":version}`), ending its round or not.
    fn page(ids: &[&str], version: u32, last: bool) -> DeltaPage {
        DeltaPage {
            items: ids
                .iter()
                .map(|id| DeltaItem {
                    id: id.to_string(),
                    removed: None,
                    raw: Bytes::from(format!(r#"{{"id":"{id}","n":{version}}}"#)),
                })
                .collect(),
            next_link: (!last).then(|| "next".into()),
            delta_link: last.then(|| "delta".into()),
        }
    }

    /// Fetches `p` from `link` after the checks the reader makes.
    fn fetch(g: &mut RoundGuard, link: &str, p: &DeltaPage) -> Result<(), Loop> {
        g.before(link)?;
        g.fetched(link, p)
    }

    #[test]
    fn a_page_fetched_again_after_an_aborted_commit_is_no_loop() {
        let mut g = RoundGuard::new(100);
        let p1 = page(&["a", "b"], 1, false);
        fetch(&mut g, L1, &p1).unwrap();
        // The transaction aborted: the same page from the same link, twice more.
        fetch(&mut g, L1, &p1).unwrap();
        fetch(&mut g, L1, &p1).unwrap();
        g.advanced(false);
        assert_eq!(g.pages(), 1, "counted once");
        let p2 = page(&["c"], 1, false);
        fetch(&mut g, L2, &p2).unwrap();
        fetch(&mut g, L2, &p2).unwrap();
        g.advanced(false);
        // Moved past: following either link again is a loop.
        assert_eq!(g.before(L1), Err(Loop::LinkRepeated));
        assert_eq!(g.before(L2), Err(Loop::LinkRepeated));
        assert_eq!(g.before(L3), Ok(()));
    }

    #[test]
    fn a_prefetch_on_a_dropped_copy_leaves_no_mark() {
        let mut g = RoundGuard::new(100);
        let (p1, p2) = (page(&["a"], 1, false), page(&["b"], 1, false));
        fetch(&mut g, L1, &p1).unwrap();
        // The worker commits page 1 and fetches page 2 on a copy moved past page 1.
        let mut ahead = g.clone();
        ahead.advanced(false);
        fetch(&mut ahead, L2, &p2).unwrap();
        // The commit failed: the copy is dropped and page 1 refetched, then page 2.
        drop(ahead);
        fetch(&mut g, L1, &p1).unwrap();
        g.advanced(false);
        fetch(&mut g, L2, &p2).unwrap();
        // This time the commit succeeds: the copy replaces the reader.
        let mut ahead = g.clone();
        ahead.advanced(false);
        fetch(&mut ahead, L3, &page(&["c"], 1, false)).unwrap();
        g = ahead;
        assert_eq!(g.pages(), 2);
        assert_eq!(g.before(L2), Err(Loop::LinkRepeated));
    }

    #[test]
    fn a_repeated_page_under_a_new_link_is_a_loop() {
        let mut g = RoundGuard::new(100);
        fetch(&mut g, L1, &page(&["a"], 1, false)).unwrap();
        g.advanced(false);
        fetch(&mut g, L2, &page(&["b", "c"], 1, false)).unwrap();
        g.advanced(false);
        fetch(&mut g, L3, &page(&["d"], 1, false)).unwrap();
        g.advanced(false);
        assert_eq!(g.before(L2_AGAIN), Ok(()), "a link never seen");
        assert_eq!(
            g.fetched(L2_AGAIN, &page(&["b", "c"], 1, false)),
            Err(Loop::PageRepeated)
        );
        // The same items with other content (changed meanwhile, a replay of a later state)
        // or in another order are another page.
        assert_eq!(g.fetched(L2_AGAIN, &page(&["b", "c"], 2, false)), Ok(()));
        assert_eq!(g.fetched(L2_AGAIN, &page(&["c", "b"], 1, false)), Ok(()));
    }

    #[test]
    fn empty_pages_and_a_rounds_last_page_cannot_repeat() {
        let mut g = RoundGuard::new(100);
        for link in [L1, L2, L3] {
            fetch(&mut g, link, &page(&[], 1, false)).unwrap();
            g.advanced(false);
        }
        fetch(&mut g, L2_AGAIN, &page(&["a"], 1, false)).unwrap();
        g.advanced(false);
        // A replayed item alone ends the round: not a loop, a loop never ends.
        assert_eq!(g.fetched("last", &page(&["a"], 1, true)), Ok(()));
    }

    #[test]
    fn a_round_may_take_max_pages_and_no_more() {
        let mut g = RoundGuard::new(2);
        fetch(&mut g, L1, &page(&["a"], 1, false)).unwrap();
        g.advanced(false);
        fetch(&mut g, L2, &page(&["b"], 1, false)).unwrap();
        // Refetched, still the second page.
        fetch(&mut g, L2, &page(&["b"], 1, false)).unwrap();
        g.advanced(false);
        assert_eq!(g.before(L3), Err(Loop::TooManyPages));
        // A page past maxpagesize is one page like any other.
        let mut g = RoundGuard::new(2);
        let ids: Vec<String> = (0..500).map(|i| format!("occurrence-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        fetch(&mut g, L1, &page(&refs, 1, false)).unwrap();
        g.advanced(false);
        assert_eq!(g.before(L2), Ok(()));
    }

    #[test]
    fn a_round_end_or_restart_forgets_its_marks() {
        let mut g = RoundGuard::new(2);
        let p = page(&["a"], 1, false);
        fetch(&mut g, L1, &p).unwrap();
        g.advanced(false);
        fetch(&mut g, L2, &page(&["b"], 1, true)).unwrap();
        g.advanced(true);
        assert_eq!(g.pages(), 0);
        fetch(&mut g, L1, &p).unwrap();
        g.advanced(false);
        g.restarted();
        assert_eq!(
            fetch(&mut g, L1, &p),
            Ok(()),
            "a restarted round reads it again"
        );
        // A restart drops the marks of a page fetched but not moved past, too.
        g.restarted();
        g.advanced(false);
        assert_eq!(g.pages(), 0);
    }

    #[test]
    fn abandonments_go_to_the_delta_link_then_from_scratch_then_fail() {
        let mut g = RoundGuard::new(7);
        fetch(&mut g, L1, &page(&["a"], 1, false)).unwrap();
        g.advanced(false);
        assert_eq!(g.abandon(Loop::LinkRepeated, true), Abandon::FromDeltaLink);
        assert_eq!(g.pages(), 0, "the round's marks are gone");
        assert_eq!(g.before(L1), Ok(()));
        assert_eq!(g.abandon(Loop::PageRepeated, true), Abandon::FromScratch);
        let Abandon::Fail(why) = g.abandon(Loop::TooManyPages, false) else {
            panic!("a third loop in a row fails");
        };
        assert_eq!(
            why,
            "the round took more than graph.max_pages_per_round = 7 pages, again after \
             restarting the round from its deltaLink, then from scratch; the partition stops \
             instead of looping (restart it once the mailbox pages properly)"
        );
        // A round from scratch (no deltaLink) goes straight to the initial request.
        let mut g = RoundGuard::new(7);
        assert_eq!(g.abandon(Loop::LinkRepeated, false), Abandon::FromScratch);
        let Abandon::Fail(why) = g.abandon(Loop::LinkRepeated, false) else {
            panic!("a second loop after a restart from scratch fails");
        };
        assert!(
            why.starts_with("the round repeated a nextLink") && !why.contains("deltaLink,"),
            "{why}"
        );
    }

    #[test]
    fn a_completed_round_ends_the_abandonments_in_a_row() {
        let mut g = RoundGuard::new(7);
        assert_eq!(g.abandon(Loop::LinkRepeated, true), Abandon::FromDeltaLink);
        assert_eq!(g.abandon(Loop::LinkRepeated, true), Abandon::FromScratch);
        // A restart that is not an abandonment (a 410) keeps the count.
        g.restarted();
        fetch(&mut g, L1, &page(&["a"], 1, true)).unwrap();
        g.advanced(true);
        assert_eq!(g.abandon(Loop::LinkRepeated, true), Abandon::FromDeltaLink);
        let mut g = RoundGuard::new(7);
        g.abandon(Loop::LinkRepeated, true);
        g.restarted();
        assert_eq!(g.abandon(Loop::LinkRepeated, true), Abandon::FromScratch);
    }
}
