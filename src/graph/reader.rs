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
    FullRound, Op, PartitionId, PartitionKind, SharedStr, SourceBatch, SourceOffset, SourceRecord,
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
        let window = in_force.map(|w| SharedStr::from(w.to_string()));
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
            let from = reader.offset.window.as_deref().unwrap_or_default();
            metrics::window_rolled(&reader.id, from, window.as_deref().unwrap_or_default());
            reader.restart_as(Restart::Window);
        }
        reader.offset.window = window;
        Ok(reader)
    }

    /// The user's principal name, carried by every batch beside the object id of the keys.
    pub fn with_principal(mut self, principal: Option<Arc<str>>) -> Self {
        // Also in the offset: a worker started with the old name after a rename finds the
        // user's id by it.
        self.offset.principal = principal.clone().map(Into::into);
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

    /// Parks the reader between rounds: where it stands, and what of it a reader made anew
    /// from that position does not know (a To Do lists partition's known lists). A reader
    /// at a round boundary is otherwise its identity and its offset: see [`Self::unpark`].
    pub fn park(self) -> (SourceOffset, Option<Box<KnownLists>>) {
        (self.offset, self.lists.map(Box::new))
    }

    /// A parked reader's known lists back (see [`Self::park`]).
    pub fn unpark(mut self, lists: Option<Box<KnownLists>>) -> Self {
        if let Some(l) = lists {
            self.lists = Some(*l);
        }
        self
    }

    /// Whether the reader still needs its known lists seeded (a `TaskLists` reader without).
    pub fn needs_lists(&self) -> bool {
        self.id.kind() == PartitionKind::TaskLists && self.lists.is_none()
    }

    /// Where the reader stands.
    pub fn offset(&self) -> &SourceOffset {
        &self.offset
    }

    /// What [`Self::advance`] needs of a batch's records: their ids for a To Do lists
    /// partition (its known lists), nothing for other kinds (no copy of every id).
    pub fn advance_ids(&self, records: &[SourceRecord]) -> Vec<(Op, String)> {
        if self.lists.is_some() {
            records.iter().map(|r| (r.op, r.id.clone())).collect()
        } else {
            Vec::new()
        }
    }

    /// Moves to the position after a batch (once it is committed or safely queued).
    pub fn advance(&mut self, batch_offset: SourceOffset, batch_ids: &[(Op, String)]) {
        if let Some(lists) = &mut self.lists {
            lists.advance(batch_ids);
        }
        self.guard.advanced(batch_offset.round > self.offset.round);
        // Only a listing ends a round without a deltaLink: its next round is one from
        // scratch again (from the initial request).
        self.fresh = batch_offset.link.is_none();
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
            reason: (why != Restart::Resync).then(|| why.reason().into()),
            principal: self.offset.principal.take(),
            subscription: self.offset.subscription.take(),
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
                self.offset.window = Some(new.to_string().into());
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
            let fetched = if self.id.kind() == PartitionKind::GroupMembers {
                // A listing, not a delta (see `members.rs`).
                client
                    .get_listing_page(self.id.user(), self.id.kind(), &link)
                    .await
            } else if polling {
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
            location
                .filter(|l| self.route.owns_link(l).is_ok())
                .map(Into::into)
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
            subscription: self.offset.subscription.take(),
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
                link: Some(next.into()),
                ..self.offset.clone()
            },
            (None, delta) => {
                // One string for both (see `Link`).
                let delta = delta.map(crate::source::Link::from);
                SourceOffset {
                    link: delta.clone(),
                    delta_link: delta,
                    round: round + 1,
                    resync: false,
                    reason: None,
                    ..self.offset.clone()
                }
            }
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
        let reason = match self.id.kind() {
            PartitionKind::GroupMembers => "member-removed",
            _ => Restart::from_reason(self.offset.reason.as_deref()).reason(),
        };
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
        let d = match self.id.kind() {
            PartitionKind::TaskLists => {
                task_partitions(&self.id, &batch.records, self.lists.as_ref())
            }
            _ => return,
        };
        (batch.starts, batch.runs, batch.resets) = (d.starts, d.runs, d.resets);
    }
}

#[cfg(test)]
#[path = "reader_paging_tests.rs"]
mod paging_tests;

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
