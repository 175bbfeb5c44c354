//! A partition's rounds: which link to fetch next, pages into source records, and the
//! resync rules after a `410 Gone`.
//!
//! The reader's `offset` is where it stands in memory. It moves forward only through
//! [`PartitionReader::advance`], which the worker calls once the batch is committed (or,
//! for a batch without records, once it is safely queued): a failed transaction therefore
//! re-fetches the same pages. A resync, or a round abandoned as a paging loop (`guard.rs`),
//! moves it *back* (to the last complete round or the initial request), which is always safe.
//!
//! The batches it yields are complete: records, offset, where the page stands in a round
//! from scratch, and for To Do lists what happens to their task partitions (`lists.rs`), so
//! the worker only reconciles, commits and carries them out.

use std::sync::Arc;

use chrono::Utc;

use super::client::GraphClient;
use super::delta::DeltaPage;
use super::error::GraphError;
use super::guard::{Abandon, Loop, RoundGuard};
use super::lists::{task_partitions, KnownLists};
use super::partition::{same_origin, Route};
use super::rounds::{Restart, Rounds};
use crate::metrics;
use crate::source::{
    FullRound, Op, PartitionId, PartitionKind, SourceBatch, SourceOffset, SourceRecord,
};
use crate::window::{Window, WindowSpec};

#[derive(Clone)]
pub struct PartitionReader {
    pub id: Arc<PartitionId>,
    graph_host: String,
    /// The partition's route (a rolling view's: over the window in force).
    route: Route,
    initial_url: String,
    offset: SourceOffset,
    /// The next page starts an attempt at a round from scratch (from the initial request).
    fresh: bool,
    /// A `TaskLists` partition's known lists, once seeded (see [`Self::know_lists`]).
    lists: Option<KnownLists>,
    /// When rounds start from scratch on their own (see `rounds.rs`).
    rounds: Rounds,
    /// A rolling calendar view's window as written, and the window in force.
    rolling: Option<(WindowSpec, Window)>,
    /// The paging guard of the current round (see `guard.rs`).
    guard: RoundGuard,
    /// The user's principal name, for the records' header (see [`Self::with_principal`]).
    principal: Option<Arc<str>>,
}

/// A 410 on a link that was just reset to the initial request would loop forever.
const MAX_RESYNCS_PER_FETCH: u32 = 3;

impl PartitionReader {
    /// A reader resuming from `committed` (or starting round 1 from the initial request).
    pub fn new(
        id: Arc<PartitionId>,
        graph_host: &str,
        committed: Option<SourceOffset>,
        rounds: Rounds,
    ) -> Result<Self, GraphError> {
        let now = Utc::now();
        let route = Route::new(graph_host, &id)?;
        let spec = match &*id {
            PartitionId::CalendarView { window, .. } => {
                Some(WindowSpec::parse(window).map_err(GraphError::Url)?)
            }
            _ => None,
        };
        let in_force = rounds.window(spec.as_ref(), now);
        let route = match in_force {
            Some(w) => route.in_window(w),
            None => route,
        };
        let first = committed.is_none();
        let mut offset = committed.unwrap_or(SourceOffset::INITIAL);
        // Offsets of versions before the periodic reconcile: scheduled from now, so an
        // upgrade does not reconcile every partition at once.
        offset.full_at.get_or_insert(now.timestamp());
        let window = in_force.map(|w| w.to_string());
        if offset.resync && offset.delta_link.is_none() {
            // A round from scratch was under way in an earlier run: it starts over (refetching
            // costs requests, not records, since unchanged items are not written again; and
            // a partition upgraded from a version without reconciliation state knew what the
            // round had seen only in memory).
            offset.link = None;
        }
        let mut reader = Self {
            id,
            graph_host: graph_host.to_string(),
            initial_url: route.initial_url(),
            route,
            fresh: offset.link.is_none(),
            offset,
            lists: None,
            guard: RoundGuard::new(rounds.max_pages_per_round),
            principal: None,
            rounds,
            rolling: spec.zip(in_force),
        };
        if !first && window.is_some() && reader.offset.window != window {
            // The window rolled while the partition was not read (or was never recorded):
            // its position belongs to the old window.
            let from = reader.offset.window.clone().unwrap_or_default();
            metrics::window_rolled(&reader.id, &from, window.as_deref().unwrap_or_default());
            reader.restart_as(Restart::Window);
        }
        reader.offset.window = window;
        Ok(reader)
    }

    /// The user's principal name, carried by every batch beside the object id of the keys.
    pub fn with_principal(mut self, principal: Option<Arc<str>>) -> Self {
        // Also in the offset: a worker started with the old name after a rename finds the
        // user's id by it.
        self.offset.principal = principal.as_deref().map(str::to_string);
        self.principal = principal;
        self
    }

    /// Seeds a `TaskLists` reader with task partitions the caller knows (running or with a
    /// committed offset); may be called more than once, it adds up. Until then, the reader
    /// writes no first offsets for new lists (it could not tell them from known ones).
    pub fn know_lists<'p>(&mut self, partitions: impl IntoIterator<Item = &'p PartitionId>) {
        if self.id.kind() == PartitionKind::TaskLists {
            self.lists
                .get_or_insert_with(KnownLists::default)
                .extend(self.id.user(), partitions);
        }
    }

    /// Where the reader stands.
    pub fn offset(&self) -> &SourceOffset {
        &self.offset
    }

    /// What [`Self::advance`] needs of a batch's records: their ids for a To Do lists
    /// partition (its known lists), nothing for other kinds (no copy of every id).
    pub fn advance_ids(&self, records: &[SourceRecord]) -> Vec<(Op, String)> {
        match self.lists {
            Some(_) => records.iter().map(|r| (r.op, r.id.clone())).collect(),
            None => Vec::new(),
        }
    }

    /// Moves to the position after a batch (once it is committed or safely queued).
    pub fn advance(&mut self, batch_offset: SourceOffset, batch_ids: &[(Op, String)]) {
        if let Some(lists) = &mut self.lists {
            lists.advance(batch_ids);
        }
        self.guard.advanced(batch_offset.round > self.offset.round);
        self.fresh = false;
        self.offset = batch_offset;
    }

    /// At a round boundary: the next fetch polls a deltaLink (or starts from scratch).
    pub fn at_round_start(&self) -> bool {
        self.offset.link == self.offset.delta_link
    }

    /// Restarts the current round from scratch (a resync signal).
    pub fn restart(&mut self) {
        self.restart_as(Restart::Resync);
    }

    /// Restarts the current round from scratch, for `why`; the round's tombstones say why.
    fn restart_as(&mut self, why: Restart) {
        self.offset = SourceOffset {
            link: None,
            delta_link: None,
            round: self.offset.round,
            resync: true,
            window: self.offset.window.take(),
            full_at: Some(Utc::now().timestamp()),
            reason: (why != Restart::Resync).then(|| why.reason().to_string()),
            principal: self.offset.principal.take(),
        };
        self.fresh = true;
        self.guard.restarted();
    }

    /// At a round boundary, before polling: a round from scratch instead if the rolling
    /// window moved or the periodic reconcile is due.
    fn restart_if_due(&mut self) {
        if self.offset.link.is_none() || !self.at_round_start() {
            return;
        }
        let now = Utc::now();
        if let Some((spec, old)) = self.rolling {
            let new = spec.at(now, self.rounds.window_roll);
            if new != old {
                metrics::window_rolled(&self.id, &old.to_string(), &new.to_string());
                self.route = self.route.clone().in_window(new);
                self.initial_url = self.route.initial_url();
                self.rolling = Some((spec, new));
                self.offset.window = Some(new.to_string());
                self.restart_as(Restart::Window);
                return;
            }
        }
        let last = self.offset.full_at.unwrap_or(now.timestamp());
        if self.rounds.reconcile_due(&self.id, last, now.timestamp()) {
            metrics::reconcile_due(&self.id, now.timestamp() - last);
            self.restart_as(Restart::Reconcile);
        }
    }

    fn link(&self) -> &str {
        self.offset.link.as_deref().unwrap_or(&self.initial_url)
    }

    /// Fetches the next page and turns it into a batch (not yet applied: see `advance`).
    pub async fn next_batch(&mut self, client: &GraphClient) -> Result<SourceBatch, GraphError> {
        self.restart_if_due();
        let mut resyncs = 0;
        loop {
            let link = self.link().to_string();
            if !same_origin(&self.graph_host, &link) {
                return Err(GraphError::Url(format!(
                    "link leaves the Graph host {}: not followed",
                    self.graph_host
                )));
            }
            if let Err(why) = self.guard.before(&link) {
                self.abandon(why)?;
                continue;
            }
            let polling = self.offset.link.is_some() && self.at_round_start();
            let fetched = if polling {
                client
                    .poll_delta(self.id.user(), self.id.kind(), &link)
                    .await
            } else {
                client.get_page(self.id.user(), self.id.kind(), &link).await
            };
            match fetched {
                Ok(page) => match self.guard.fetched(&link, &page) {
                    Ok(()) => return Ok(self.batch(page)),
                    Err(why) => self.abandon(why)?,
                },
                Err(GraphError::Gone { code, location }) if resyncs < MAX_RESYNCS_PER_FETCH => {
                    resyncs += 1;
                    self.resync(&code, location);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A paging loop (`guard.rs`): the round starts over from its deltaLink, like after a
    /// `410` on a nextLink, or else from scratch, as a resync; a partition that keeps looping
    /// fails. Only the reader moves back: nothing committed is touched.
    fn abandon(&mut self, why: Loop) -> Result<(), GraphError> {
        let pages = self.guard.pages();
        let then = self.guard.abandon(why, self.offset.delta_link.is_some());
        metrics::round_abandoned(&self.id, why.as_str(), then.as_str(), pages);
        match then {
            Abandon::FromDeltaLink => {
                self.offset.link = self.offset.delta_link.clone();
                self.offset.resync = true;
                self.fresh = false;
            }
            Abandon::FromScratch => self.restart_as(Restart::Resync),
            Abandon::Fail(reason) => return Err(GraphError::PagingLoop(reason)),
        }
        Ok(())
    }

    /// After a 410: a nextLink falls back to the last complete round's deltaLink; a deltaLink
    /// (or a round without one) to the initial request, as `Location` gives it when it can.
    fn resync(&mut self, code: &str, location: Option<String>) {
        let mid_round = !self.at_round_start();
        let from_delta = mid_round && self.offset.delta_link.is_some();
        let link = if from_delta {
            self.offset.delta_link.clone()
        } else {
            // Only a link of the partition's own resource (and window in force).
            location.filter(|l| self.route.owns_link(l).is_ok())
        };
        metrics::resync(
            &self.id,
            code,
            if from_delta { "delta_link" } else { "initial" },
        );
        self.guard.restarted();
        // A round from the initial request reports no deletions: it is reconciled (see
        // `SourceBatch::full_round`).
        self.fresh = !from_delta;
        self.offset = SourceOffset {
            // Falling back to the deltaLink keeps it as the round's start; the initial
            // request is a round of its own with no deltaLink behind it.
            delta_link: if from_delta { link.clone() } else { None },
            link,
            round: self.offset.round,
            resync: true,
            window: self.offset.window.take(),
            full_at: if from_delta {
                self.offset.full_at
            } else {
                Some(chrono::Utc::now().timestamp())
            },
            reason: None,
            principal: self.offset.principal.take(),
        };
    }

    /// Turns a fetched page into a batch of records and the offset that follows it.
    pub fn batch(&self, page: DeltaPage) -> SourceBatch {
        let round = self.offset.round;
        let resync = self.offset.resync;
        let records: Vec<SourceRecord> = page
            .items
            .into_iter()
            .map(|item| {
                let op = if item.removed.is_some() {
                    Op::Delete
                } else {
                    Op::Upsert
                };
                SourceRecord {
                    partition: self.id.clone(),
                    key: self.id.record_key(&item.id),
                    id: item.id,
                    value: (op == Op::Upsert).then_some(item.raw),
                    op,
                    round,
                    removed_reason: item.removed,
                    resync,
                }
            })
            .collect();
        let offset = match (page.next_link, page.delta_link) {
            (Some(next), _) => SourceOffset {
                link: Some(next),
                delta_link: self.offset.delta_link.clone(),
                ..self.offset.clone()
            },
            (None, delta) => SourceOffset {
                link: delta.clone(),
                delta_link: delta,
                round: round + 1,
                resync: false,
                reason: None,
                ..self.offset.clone()
            },
        };
        // No deltaLink behind the round: it started from the initial request.
        let full_round = self.offset.delta_link.is_none().then_some(FullRound {
            first: self.fresh,
            last: offset.round > round,
        });
        let mut batch = SourceBatch {
            partition: self.id.clone(),
            records,
            offset,
            resets: Vec::new(),
            starts: Vec::new(),
            runs: Vec::new(),
            full_round,
            state: Vec::new(),
            principal: self.principal.clone(),
        };
        self.decide_task_partitions(&mut batch);
        batch
    }

    /// Completes the last page of a round from scratch with tombstones for the items the
    /// partition still had live and the round no longer returned (`gone`, found by the
    /// worker); their task partitions are reset, as for any removed list.
    pub fn complete_full_round(&self, batch: &mut SourceBatch, gone: Vec<String>) {
        if gone.is_empty() {
            return;
        }
        let round = batch.records_round();
        let from = batch.records.len();
        let reason = Restart::from_reason(self.offset.reason.as_deref()).reason();
        batch.records.extend(
            gone.into_iter()
                .map(|id| SourceRecord::tombstone(self.id.clone(), id, round, reason, true)),
        );
        if self.id.kind() == PartitionKind::TaskLists {
            let d = task_partitions(&self.id, &batch.records[from..], self.lists.as_ref());
            batch.resets.extend(d.resets);
        }
    }

    /// Fills `starts`, `runs` and `resets` from the batch's records (To Do lists only).
    fn decide_task_partitions(&self, batch: &mut SourceBatch) {
        if self.id.kind() != PartitionKind::TaskLists {
            return;
        }
        let d = task_partitions(&self.id, &batch.records, self.lists.as_ref());
        (batch.starts, batch.runs, batch.resets) = (d.starts, d.runs, d.resets);
    }
}

#[cfg(test)]
#[path = "reader_paging_tests.rs"]
mod paging_tests;

#[cfg(test)]
mod tests {
    //! The resync rules, as NOTES.md and Graph's delta docs give them: a `410` on a nextLink
    //! falls back to the last complete round's deltaLink; on a deltaLink (or mid-way through
    //! a first round, which has none) the round restarts from the initial request, preferably
    //! the one `Location` names, and becomes a round from scratch, reconciled at its end.

    use super::*;

    const HOST: &str = "https://graph.microsoft.com";

    fn reader(committed: Option<SourceOffset>) -> PartitionReader {
        let id = Arc::new(PartitionId::CalendarList {
            user: "a@contoso.com".into(),
        });
        PartitionReader::new(id, HOST, committed, Default::default()).unwrap()
    }

    fn at(link: Option<&str>, delta: Option<&str>, round: u64) -> SourceOffset {
        SourceOffset {
            link: link.map(str::to_string),
            delta_link: delta.map(str::to_string),
            round,
            resync: false,
            ..SourceOffset::INITIAL
        }
    }

    const NEXT: &str =
        "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$skiptoken=2";
    const DELTA: &str =
        "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$deltatoken=1";
    const LOCATION: &str =
        "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$deltatoken=fresh";

    #[test]
    fn gone_on_a_next_link_falls_back_to_the_rounds_delta_link() {
        let mut r = reader(Some(at(Some(NEXT), Some(DELTA), 4)));
        assert!(!r.at_round_start());
        r.resync("resyncRequired", Some(LOCATION.into()));
        let o = r.offset();
        assert_eq!(o.link.as_deref(), Some(DELTA), "back to the round's start");
        assert_eq!(o.delta_link.as_deref(), Some(DELTA));
        assert_eq!(o.round, 4);
        assert!(o.resync);
        assert!(
            !r.fresh,
            "not a round from scratch: deletions still come as @removed"
        );
        assert!(r.at_round_start());
    }

    #[test]
    fn gone_on_a_delta_link_restarts_from_location_as_a_full_resync() {
        let mut r = reader(Some(at(Some(DELTA), Some(DELTA), 7)));
        assert!(r.at_round_start());
        r.resync("syncStateNotFound", Some(LOCATION.into()));
        let o = r.offset();
        assert_eq!(o.link.as_deref(), Some(LOCATION));
        assert_eq!(
            o.delta_link, None,
            "the initial request has no deltaLink behind it"
        );
        assert_eq!(o.round, 7);
        assert!(o.resync);
        assert!(r.fresh, "a round from scratch: reconciled at its end");
    }

    #[test]
    fn a_location_on_another_host_is_not_followed() {
        let mut r = reader(Some(at(Some(DELTA), Some(DELTA), 2)));
        r.resync(
            "syncStateNotFound",
            Some("https://evil.example/steal".into()),
        );
        assert_eq!(r.offset().link, None, "the initial request instead");
        assert_eq!(r.link(), r.initial_url);
    }

    #[test]
    fn gone_in_a_first_round_restarts_it_from_scratch() {
        let mut r = reader(Some(at(Some(NEXT), None, 1)));
        r.resync("resyncRequired", None);
        let o = r.offset();
        assert_eq!(
            (o.link.as_deref(), o.delta_link.as_deref(), o.round),
            (None, None, 1)
        );
        assert!(o.resync && r.fresh);
    }

    #[test]
    fn a_full_resync_interrupted_by_a_restart_starts_over() {
        let mut o = at(Some(NEXT), None, 3);
        o.resync = true;
        let r = reader(Some(o));
        assert_eq!(r.offset().link, None, "it starts over");
        assert!(r.fresh);
        // A resync from a deltaLink keeps its place: it reports deletions itself.
        let mut o = at(Some(NEXT), Some(DELTA), 3);
        o.resync = true;
        let r = reader(Some(o));
        assert_eq!(r.offset().link.as_deref(), Some(NEXT));
        assert!(!r.fresh);
        // A first sync resumes where it was: the reconciliation state knows what it saw.
        let r = reader(Some(at(Some(NEXT), None, 1)));
        assert_eq!(r.offset().link.as_deref(), Some(NEXT));
        assert!(!r.fresh);
    }

    fn page(last: bool) -> DeltaPage {
        DeltaPage {
            items: Vec::new(),
            next_link: (!last).then(|| NEXT.into()),
            delta_link: last.then(|| DELTA.into()),
        }
    }

    #[test]
    fn only_a_lists_partition_copies_the_ids_it_advances_by() {
        let r = reader(None);
        let t = SourceRecord::tombstone(r.id.clone(), "x".into(), 1, "deleted", false);
        assert!(
            r.advance_ids(&[t]).is_empty(),
            "a calendar list knows no lists"
        );
    }

    #[test]
    fn pages_of_a_round_from_scratch_say_where_they_stand() {
        let mut r = reader(Some(at(Some(DELTA), Some(DELTA), 5)));
        assert_eq!(r.batch(page(true)).full_round, None, "a delta round");
        r.resync("syncStateNotFound", None);
        let b = r.batch(page(false));
        assert_eq!(
            b.full_round,
            Some(FullRound {
                first: true,
                last: false
            })
        );
        // Not committed: the same page is still the first.
        assert_eq!(r.batch(page(false)).full_round, b.full_round);
        r.advance(b.offset, &[]);
        let b = r.batch(page(true));
        assert_eq!(
            b.full_round,
            Some(FullRound {
                first: false,
                last: true
            })
        );
        r.advance(b.offset, &[]);
        assert_eq!(r.offset().round, 6);
        assert_eq!(r.batch(page(true)).full_round, None, "deltas again");
        // A new partition's first sync is a round from scratch too.
        let r = reader(None);
        assert_eq!(
            r.batch(page(true)).full_round,
            Some(FullRound {
                first: true,
                last: true
            })
        );
    }

    #[test]
    fn a_resync_signal_restarts_the_round_in_place() {
        let mut r = reader(Some(at(Some(NEXT), Some(DELTA), 9)));
        r.restart();
        let o = r.offset();
        assert_eq!((o.link.as_deref(), o.round, o.resync), (None, 9, true));
        assert!(r.fresh);
    }

    fn rolling_view() -> Arc<PartitionId> {
        Arc::new(PartitionId::CalendarView {
            user: "a@contoso.com".into(),
            calendar: "primary".into(),
            window: "-1d/+1d".into(),
        })
    }

    #[test]
    fn a_window_that_rolled_while_away_is_read_from_scratch() {
        let view = "https://graph.microsoft.com/v1.0/users/a@contoso.com/calendarView/delta";
        let committed = SourceOffset {
            window: Some("2020-01-01T00:00:00Z/2020-01-03T00:00:00Z".into()),
            ..at(
                Some(&format!("{view}?$deltatoken=1")),
                Some(&format!("{view}?$deltatoken=1")),
                4,
            )
        };
        let r =
            PartitionReader::new(rolling_view(), HOST, Some(committed), Rounds::default()).unwrap();
        let o = r.offset();
        assert_eq!((o.link.as_deref(), o.round, o.resync), (None, 4, true));
        assert_eq!(o.reason.as_deref(), Some("window"));
        let now = Utc::now();
        let w = WindowSpec::parse("-1d/+1d")
            .unwrap()
            .at(now, Rounds::default().window_roll);
        assert_eq!(
            o.window,
            Some(w.to_string()),
            "the window in force is recorded"
        );
        assert!(r.fresh);
        // The initial request reads the window in force.
        let start = w.to_string().split_once('/').unwrap().0.to_string();
        assert!(
            r.link().contains(&start.replace(':', "%3A")),
            "{}",
            r.link()
        );
        // Its tombstones say why.
        let mut b = r.batch(page(true));
        r.complete_full_round(&mut b, vec!["gone".into()]);
        assert_eq!(b.records[0].removed_reason.as_deref(), Some("window"));
        assert_eq!(b.offset.reason, None, "the round is over");
        assert_eq!(
            b.offset.window, o.window,
            "the window travels with the offset"
        );
    }

    #[test]
    fn a_due_reconcile_restarts_the_round_at_its_boundary_only() {
        let rounds = Rounds {
            reconcile_interval: Some(std::time::Duration::from_secs(1)),
            ..Rounds::default()
        };
        let long_ago = Utc::now().timestamp() - 10;
        let mid = SourceOffset {
            full_at: Some(long_ago),
            ..at(Some(NEXT), Some(DELTA), 3)
        };
        let mut r = PartitionReader::new(reader(None).id, HOST, Some(mid), rounds).unwrap();
        r.restart_if_due();
        assert_eq!(r.offset().link.as_deref(), Some(NEXT), "not mid-round");
        let boundary = SourceOffset {
            full_at: Some(long_ago),
            ..at(Some(DELTA), Some(DELTA), 3)
        };
        let mut r = PartitionReader::new(r.id.clone(), HOST, Some(boundary), rounds).unwrap();
        r.restart_if_due();
        let o = r.offset().clone();
        assert_eq!((o.link, o.resync), (None, true));
        assert_eq!(o.reason.as_deref(), Some("reconcile"));
        assert!(
            o.full_at.unwrap() > long_ago,
            "the schedule restarts from now"
        );
        // Without an interval nothing is due.
        let boundary = SourceOffset {
            full_at: Some(long_ago),
            ..at(Some(DELTA), Some(DELTA), 3)
        };
        let mut r =
            PartitionReader::new(r.id.clone(), HOST, Some(boundary), Rounds::default()).unwrap();
        r.restart_if_due();
        assert_eq!(r.offset().link.as_deref(), Some(DELTA));
    }
}
