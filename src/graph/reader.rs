//! A partition's rounds: which link to fetch next, pages into source records, and the
//! resync rules after a `410 Gone`.
//!
//! The reader's `offset` is where it stands in memory. It moves forward only through
//! [`PartitionReader::advance`], which the worker calls once the batch is committed (or,
//! for a batch without records, once it is safely queued): a failed transaction therefore
//! re-fetches the same pages. A resync moves it *back* (to the last complete round or the
//! initial request), which is always safe.
//!
//! The batches it yields are complete: records, offset, where the page stands in a round
//! from scratch, and for To Do lists what happens to their task partitions (`lists.rs`), so
//! the worker only reconciles, commits and carries them out.

use std::sync::Arc;

use super::client::GraphClient;
use super::delta::DeltaPage;
use super::error::GraphError;
use super::lists::{task_partitions, KnownLists};
use super::partition::{initial_url, same_origin};
use crate::metrics;
use crate::source::{
    FullRound, Op, PartitionId, PartitionKind, SourceBatch, SourceOffset, SourceRecord,
};

#[derive(Clone)]
pub struct PartitionReader {
    pub id: Arc<PartitionId>,
    graph_host: String,
    initial_url: String,
    offset: SourceOffset,
    /// The next page starts an attempt at a round from scratch (from the initial request).
    fresh: bool,
    /// A `TaskLists` partition's known lists, once seeded (see [`Self::know_lists`]).
    lists: Option<KnownLists>,
}

/// A 410 on a link that was just reset to the initial request would loop forever.
const MAX_RESYNCS_PER_FETCH: u32 = 3;

impl PartitionReader {
    /// A reader resuming from `committed` (or starting round 1 from the initial request).
    pub fn new(
        id: Arc<PartitionId>,
        graph_host: &str,
        committed: Option<SourceOffset>,
    ) -> Result<Self, GraphError> {
        let initial_url = initial_url(graph_host, &id)?;
        let mut offset = committed.unwrap_or(SourceOffset {
            link: None,
            delta_link: None,
            round: 1,
            resync: false,
        });
        if offset.resync && offset.delta_link.is_none() {
            // A full resync was under way in an earlier run: it starts over (refetching
            // costs requests, not records, since unchanged items are not written again; and
            // a partition upgraded from a version without reconciliation state knew what the
            // round had seen only in memory).
            offset.link = None;
        }
        Ok(Self {
            id,
            graph_host: graph_host.to_string(),
            initial_url,
            fresh: offset.link.is_none(),
            offset,
            lists: None,
        })
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

    /// Moves to the position after a batch (once it is committed or safely queued).
    pub fn advance(&mut self, batch_offset: SourceOffset, batch_ids: &[(Op, String)]) {
        if let Some(lists) = &mut self.lists {
            lists.advance(batch_ids);
        }
        self.fresh = false;
        self.offset = batch_offset;
    }

    /// At a round boundary: the next fetch polls a deltaLink (or starts from scratch).
    pub fn at_round_start(&self) -> bool {
        self.offset.link == self.offset.delta_link
    }

    /// Restarts the current round from scratch (a resync signal).
    pub fn restart(&mut self) {
        self.offset = SourceOffset {
            link: None,
            delta_link: None,
            round: self.offset.round,
            resync: true,
        };
        self.fresh = true;
    }

    fn link(&self) -> &str {
        self.offset.link.as_deref().unwrap_or(&self.initial_url)
    }

    /// Fetches the next page and turns it into a batch (not yet applied: see `advance`).
    pub async fn next_batch(&mut self, client: &GraphClient) -> Result<SourceBatch, GraphError> {
        let mut resyncs = 0;
        loop {
            let link = self.link().to_string();
            if !same_origin(&self.graph_host, &link) {
                return Err(GraphError::Url(format!(
                    "link leaves the Graph host {}: not followed",
                    self.graph_host
                )));
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
                Ok(page) => return Ok(self.batch(page)),
                Err(GraphError::Gone { code, location }) if resyncs < MAX_RESYNCS_PER_FETCH => {
                    resyncs += 1;
                    self.resync(&code, location);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a 410: a nextLink falls back to the last complete round's deltaLink; a deltaLink
    /// (or a round without one) to the initial request, as `Location` gives it when it can.
    fn resync(&mut self, code: &str, location: Option<String>) {
        let mid_round = !self.at_round_start();
        let from_delta = mid_round && self.offset.delta_link.is_some();
        let link = if from_delta {
            self.offset.delta_link.clone()
        } else {
            location.filter(|l| same_origin(&self.graph_host, l))
        };
        metrics::resync(
            &self.id,
            code,
            if from_delta { "delta_link" } else { "initial" },
        );
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
                round,
                resync,
            },
            (None, delta) => SourceOffset {
                link: delta.clone(),
                delta_link: delta,
                round: round + 1,
                resync: false,
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
        let round = batch
            .records
            .first()
            .map_or(batch.offset.round.saturating_sub(1), |r| r.round);
        let from = batch.records.len();
        batch.records.extend(
            gone.into_iter()
                .map(|id| SourceRecord::tombstone(self.id.clone(), id, round, "resync", true)),
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
mod tests {
    //! The resync rules, as NOTES.md and Graph's delta docs give them: a `410` on a nextLink
    //! falls back to the last complete round's deltaLink; on a deltaLink (or mid-way through
    //! a first round, which has none) the round restarts from the initial request, preferably
    //! the one `Location` names, and becomes a full resync that must remember what it sees.

    use super::*;

    const HOST: &str = "https://graph.microsoft.com";

    fn reader(committed: Option<SourceOffset>) -> PartitionReader {
        let id = Arc::new(PartitionId::CalendarList {
            user: "a@contoso.com".into(),
        });
        PartitionReader::new(id, HOST, committed).unwrap()
    }

    fn at(link: Option<&str>, delta: Option<&str>, round: u64) -> SourceOffset {
        SourceOffset {
            link: link.map(str::to_string),
            delta_link: delta.map(str::to_string),
            round,
            resync: false,
        }
    }

    const NEXT: &str = "https://graph.microsoft.com/v1.0/users/a/calendars/delta?$skiptoken=2";
    const DELTA: &str = "https://graph.microsoft.com/v1.0/users/a/calendars/delta?$deltatoken=1";
    const LOCATION: &str =
        "https://graph.microsoft.com/v1.0/users/a/calendars/delta?$deltatoken=fresh";

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
}
