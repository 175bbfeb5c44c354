//! To Do lists and their task partitions: a list's task partition lives as long as the list.
//!
//! A batch of a `TaskLists` partition carries what its commit does to task partitions, so
//! the worker only carries it out:
//!
//! - a list the batch upserts and the partition does not know yet gets its task partition's
//!   first offset in the same transaction (`starts`: a crash right after cannot forget it);
//! - every list the batch upserts has its task partition running once committed (`runs`: a
//!   running one is left alone; a stopped or failed one starts again);
//! - a list the batch deletes, `@removed` or tombstoned after a full resync, has its task
//!   partition's offset reset in the same transaction and the partition stops (`resets`);
//!   the worker adds a tombstone for each of its live tasks to that transaction (Graph no
//!   longer answers for them, so only the task partition's reconciliation state knows them).
//!
//! A list's last record in the batch decides, as it is the one left in Kafka.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::source::{Op, PartitionId, PartitionKind, SourceRecord};

/// The lists whose task partitions a `TaskLists` partition knows (running or with an
/// offset): seeded by the caller, then moved by the committed batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownLists(HashSet<String>);

impl KnownLists {
    /// Adds the lists of `user`'s task partitions among `partitions`.
    pub fn extend<'p>(
        &mut self,
        user: &str,
        partitions: impl IntoIterator<Item = &'p PartitionId>,
    ) {
        for p in partitions {
            if let PartitionId::Tasks { user: u, list } = p {
                if u == user {
                    self.0.insert(list.clone());
                }
            }
        }
    }

    /// After a committed batch: upserted lists are known, deleted ones forgotten.
    pub fn advance(&mut self, ids: &[(Op, String)]) {
        for (op, id) in ids {
            match op {
                Op::Upsert => self.0.insert(id.clone()),
                Op::Delete => self.0.remove(id),
            };
        }
    }

    pub fn contains(&self, list: &str) -> bool {
        self.0.contains(list)
    }
}

/// What a batch of a `TaskLists` partition does to task partitions (see the module docs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TaskPartitions {
    pub starts: Vec<Arc<PartitionId>>,
    pub runs: Vec<Arc<PartitionId>>,
    pub resets: Vec<Arc<PartitionId>>,
}

impl TaskPartitions {
    /// What `op` on the item behind `p` does to it: an upsert runs it (and starts it when
    /// `new`: its first offset joins the batch), a delete resets it.
    pub fn add(&mut self, p: Arc<PartitionId>, op: Op, new: bool) {
        match op {
            Op::Upsert => {
                if new {
                    self.starts.push(p.clone());
                }
                self.runs.push(p);
            }
            Op::Delete => self.resets.push(p),
        }
    }
}

/// The task partitions of the lists in `records` (the final records of a batch of
/// `lists_partition`), given the lists known before the batch. Unknown (`None`: never
/// seeded) starts nothing: writing a first offset over a known list's would restart it.
pub fn task_partitions(
    lists_partition: &PartitionId,
    records: &[SourceRecord],
    known: Option<&KnownLists>,
) -> TaskPartitions {
    let mut out = TaskPartitions::default();
    if lists_partition.kind() != PartitionKind::TaskLists {
        return out;
    }
    // Each list once, in the order of first appearance, with its last op.
    let mut order: Vec<(&str, Op)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for r in records {
        match at.get(r.id.as_str()) {
            Some(&i) => order[i].1 = r.op,
            None => {
                at.insert(&r.id, order.len());
                order.push((&r.id, r.op));
            }
        }
    }
    for (list, op) in order {
        let p = Arc::new(PartitionId::Tasks {
            user: lists_partition.user().to_string(),
            list: list.to_string(),
        });
        out.add(p, op, known.is_some_and(|k| !k.contains(list)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "a@contoso.com";

    fn lists() -> PartitionId {
        PartitionId::TaskLists { user: USER.into() }
    }

    fn tasks(list: &str) -> Arc<PartitionId> {
        Arc::new(PartitionId::Tasks {
            user: USER.into(),
            list: list.into(),
        })
    }

    fn rec(op: Op, id: &str) -> SourceRecord {
        let p = Arc::new(lists());
        SourceRecord {
            key: p.record_key(id),
            partition: p,
            id: id.into(),
            value: (op == Op::Upsert).then(|| bytes::Bytes::from_static(b"{}")),
            op,
            round: 2,
            removed_reason: (op == Op::Delete).then(|| "deleted".into()),
            resync: false,
        }
    }

    fn known(lists: &[&str]) -> KnownLists {
        let ps: Vec<PartitionId> = lists.iter().map(|l| (*tasks(l)).clone()).collect();
        let mut k = KnownLists::default();
        k.extend(USER, &ps);
        k
    }

    #[test]
    fn a_new_list_starts_its_task_partition_and_a_known_one_only_runs() {
        let d = task_partitions(
            &lists(),
            &[rec(Op::Upsert, "new"), rec(Op::Upsert, "old")],
            Some(&known(&["old"])),
        );
        assert_eq!(d.starts, vec![tasks("new")]);
        assert_eq!(d.runs, vec![tasks("new"), tasks("old")]);
        assert!(d.resets.is_empty());
    }

    #[test]
    fn a_deleted_list_resets_its_task_partition_known_or_not() {
        let d = task_partitions(
            &lists(),
            &[rec(Op::Delete, "old"), rec(Op::Delete, "never-seen")],
            Some(&known(&["old"])),
        );
        assert_eq!(d.resets, vec![tasks("old"), tasks("never-seen")]);
        assert!(d.starts.is_empty() && d.runs.is_empty());
    }

    #[test]
    fn a_lists_last_record_in_the_batch_decides() {
        let d = task_partitions(
            &lists(),
            &[
                rec(Op::Upsert, "gone"),
                rec(Op::Delete, "back"),
                rec(Op::Upsert, "gone"),
                rec(Op::Delete, "gone"),
                rec(Op::Upsert, "back"),
            ],
            Some(&known(&[])),
        );
        assert_eq!(d.resets, vec![tasks("gone")]);
        assert_eq!(d.runs, vec![tasks("back")]);
        assert_eq!(d.starts, vec![tasks("back")]);
    }

    #[test]
    fn unseeded_knowledge_starts_nothing_and_other_kinds_decide_nothing() {
        let d = task_partitions(&lists(), &[rec(Op::Upsert, "x")], None);
        assert!(d.starts.is_empty(), "a first offset could overwrite one");
        assert_eq!(d.runs, vec![tasks("x")]);
        let view = PartitionId::CalendarList { user: USER.into() };
        assert_eq!(
            task_partitions(&view, &[rec(Op::Delete, "x")], Some(&known(&[]))),
            TaskPartitions::default()
        );
    }

    #[test]
    fn knowledge_takes_only_this_users_task_partitions_and_follows_commits() {
        let mut k = KnownLists::default();
        let others = [
            PartitionId::Tasks {
                user: "b@contoso.com".into(),
                list: "theirs".into(),
            },
            lists(),
            (*tasks("mine")).clone(),
        ];
        k.extend(USER, &others);
        assert_eq!(k, known(&["mine"]));
        k.advance(&[(Op::Upsert, "new".into()), (Op::Delete, "mine".into())]);
        assert_eq!(k, known(&["new"]));
    }

    // Through the reader: the batches it yields say what happens to task partitions.

    use crate::graph::delta::{DeltaItem, DeltaPage};
    use crate::graph::PartitionReader;
    use crate::source::{SourceBatch, SourceOffset};

    const HOST: &str = "https://graph.microsoft.com";

    const LISTS_DELTA: &str =
        "https://graph.microsoft.com/v1.0/users/a/todo/lists/delta?$deltatoken=1";
    const LISTS_NEXT: &str =
        "https://graph.microsoft.com/v1.0/users/a/todo/lists/delta?$skiptoken=2";

    fn lists_reader(committed: Option<SourceOffset>, known: &[&str]) -> PartitionReader {
        let id = Arc::new(PartitionId::TaskLists { user: USER.into() });
        let mut r = PartitionReader::new(id, HOST, committed, Default::default()).unwrap();
        let mut partitions: Vec<PartitionId> = known.iter().map(|l| (*tasks(l)).clone()).collect();
        partitions.push(PartitionId::Tasks {
            user: "b@contoso.com".into(),
            list: "someone-elses".into(),
        });
        r.know_lists(&partitions);
        r
    }

    /// `("-x")` is an `@removed` item `x`.
    fn page(items: &[&str], last: bool) -> DeltaPage {
        DeltaPage {
            items: items
                .iter()
                .map(|i| {
                    let id = i.trim_start_matches('-');
                    DeltaItem {
                        id: id.into(),
                        removed: i.starts_with('-').then(|| "deleted".into()),
                        raw: bytes::Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
                    }
                })
                .collect(),
            next_link: (!last).then(|| LISTS_NEXT.into()),
            delta_link: last.then(|| LISTS_DELTA.into()),
        }
    }

    fn at(link: &str, round: u64) -> SourceOffset {
        SourceOffset {
            link: Some(link.into()),
            delta_link: Some(link.into()),
            round,
            resync: false,
            ..SourceOffset::INITIAL
        }
    }

    /// What the worker hands `advance`: every record's id, for a lists partition.
    fn ids(r: &PartitionReader, b: &SourceBatch) -> Vec<(Op, String)> {
        let ids = r.advance_ids(&b.records);
        assert_eq!(ids.len(), b.records.len());
        ids
    }

    #[test]
    fn a_batch_says_which_task_partitions_start_run_and_reset() {
        let mut r = lists_reader(Some(at(LISTS_DELTA, 2)), &["old"]);
        let b = r.batch(page(&["new", "old", "-gone"], false));
        assert_eq!(
            b.starts,
            vec![tasks("new")],
            "only the list it did not know"
        );
        assert_eq!(b.runs, vec![tasks("new"), tasks("old")]);
        assert_eq!(b.resets, vec![tasks("gone")]);
        // Once committed, the new list is known and a deleted one forgotten.
        let ids = ids(&r, &b);
        r.advance(b.offset.clone(), &ids);
        let b = r.batch(page(&["new", "gone"], true));
        assert_eq!(
            b.starts,
            vec![tasks("gone")],
            "a list back after its deletion"
        );
        assert_eq!(b.runs, vec![tasks("new"), tasks("gone")]);
        assert!(b.resets.is_empty());
    }

    #[test]
    fn an_uncommitted_batch_teaches_the_reader_nothing() {
        let r = lists_reader(None, &[]);
        let first = r.batch(page(&["new"], false));
        assert_eq!(first.starts, vec![tasks("new")]);
        // The commit failed: the page is fetched again and still starts the list.
        assert_eq!(r.batch(page(&["new"], false)).starts, vec![tasks("new")]);
    }

    #[test]
    fn a_full_resync_tombstones_what_it_no_longer_returns_and_resets_their_tasks() {
        let mut r = lists_reader(Some(at(LISTS_DELTA, 3)), &["a", "c"]);
        // A full round (after a 410 or a resync signal) reports no deletions.
        r.restart();
        let b = r.batch(page(&["a"], false));
        let full = b.full_round.expect("a round from scratch");
        assert!(full.first && !full.last);
        let ids = ids(&r, &b);
        r.advance(b.offset.clone(), &ids);
        let mut b = r.batch(page(&["b"], true));
        let full = b.full_round.expect("a round from scratch");
        assert!(!full.first && full.last, "its last page");
        // The worker found c and d live and not returned (see `live/`).
        r.complete_full_round(&mut b, vec!["c".into(), "d".into()]);
        let gone: Vec<&SourceRecord> = b.records.iter().filter(|x| x.op == Op::Delete).collect();
        assert_eq!(gone.len(), 2);
        for (t, id) in gone.iter().zip(["c", "d"]) {
            assert_eq!(t.id, id);
            assert_eq!(t.key, r.id.record_key(id));
            assert!(t.value.is_none() && t.resync);
            assert_eq!(t.removed_reason.as_deref(), Some("resync"));
            assert_eq!(t.round, 3);
        }
        assert_eq!(b.runs, vec![tasks("b")]);
        assert_eq!(b.starts, vec![tasks("b")]);
        assert_eq!(b.resets, vec![tasks("c"), tasks("d")]);
    }
}
