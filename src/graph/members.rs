//! A group's members and their partitions: a group source's partitions live as long as the
//! user is a (transitive) member of its group.
//!
//! Membership is read as a listing, every round from scratch (`transitiveMembers`, see
//! `Route`): Graph's `groups/delta` reports direct members only ("group: delta": changes to
//! `members` only, nested groups' members are not expanded; Microsoft Q&A 848352: delta
//! cannot express transitive membership). A round from scratch reports no removals itself:
//! at its last page the reconciliation state (`live/`) tombstones the members no longer
//! listed, and writes nothing for members unchanged.
//!
//! A batch of a `GroupMembers` partition carries what its commit does to the members'
//! partitions, so the worker only carries it out, as for To Do lists (`lists.rs`):
//!
//! - a member the batch upserts whose partitions the partition does not know gets their
//!   first offsets in the same transaction (`starts`: a crash right after cannot forget
//!   them); every upserted member's partitions run once committed (`runs`);
//! - a member tombstoned (no longer listed) has its partitions' offsets reset in the same
//!   transaction and they stop (`resets`; the worker adds the task partitions of the
//!   member's To Do lists). The worker adds their records' tombstones
//!   (`on_member_removed = "tombstone"`) or leaves them (`"keep"`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::lists::TaskPartitions;
use crate::source::{Op, PartitionId, SourceRecord};

/// The partitions a group's sources give each member, and those known to exist (running or
/// with an offset): seeded by the caller, then moved by the committed batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// With an empty user (see `config::GroupSource`).
    templates: Vec<PartitionId>,
    known: HashSet<PartitionId>,
    /// Partitions of users listed in `users` (by object id, as [`calendar_of`]): theirs,
    /// not the group's, so a listed user's leaving the group stops nothing.
    listed: HashSet<PartitionId>,
    /// Seeded at least once: until then nothing is started (a first offset could overwrite
    /// a known partition's).
    seeded: bool,
}

impl Members {
    pub fn new(templates: Vec<PartitionId>) -> Self {
        Self {
            templates,
            ..Self::default()
        }
    }

    /// Leaves `listed` (partitions of users the config lists) to their sources.
    pub fn with_listed(mut self, listed: &[PartitionId]) -> Self {
        self.listed = listed.iter().map(calendar_of).collect();
        self
    }

    /// Whether `p` is a partition of some member (its kind, calendar and window match a
    /// template; any user), not a listed user's.
    pub fn owns(&self, p: &PartitionId) -> bool {
        self.templates.contains(&p.with_user("")) && !self.listed.contains(&calendar_of(p))
    }

    /// Adds the members' partitions among `partitions`.
    pub fn extend<'p>(&mut self, partitions: impl IntoIterator<Item = &'p PartitionId>) {
        self.seeded = true;
        for p in partitions {
            if self.owns(p) {
                self.known.insert(p.clone());
            }
        }
    }

    /// `user`'s partitions.
    pub fn of(&self, user: &str) -> impl Iterator<Item = PartitionId> + '_ {
        let user = user.to_string();
        self.templates
            .iter()
            .map(move |t| t.with_user(&user))
            .filter(|p| !self.listed.contains(&calendar_of(p)))
    }

    /// After a committed batch: upserted members' partitions are known, removed ones' not.
    pub fn advance(&mut self, ids: &[(Op, String)]) {
        for (op, id) in ids {
            let ps: Vec<PartitionId> = self.of(id).collect();
            for p in ps {
                match op {
                    Op::Upsert => self.known.insert(p),
                    Op::Delete => self.known.remove(&p),
                };
            }
        }
    }

    /// What `records` (a batch's final records, member ids) do to the members' partitions;
    /// a member's last record in the batch decides.
    pub fn decide(&self, records: &[SourceRecord]) -> TaskPartitions {
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
        let mut out = TaskPartitions::default();
        for (user, op) in order {
            for p in self.of(user) {
                let new = self.seeded && !self.known.contains(&p);
                out.add(Arc::new(p), op, new);
            }
        }
        out
    }
}

/// `p` without its window: a listed user's view of a calendar leaves a group's view of it
/// out whatever the windows (two windows of one calendar would delete each other's events).
fn calendar_of(p: &PartitionId) -> PartitionId {
    match p {
        PartitionId::CalendarView { user, calendar, .. } => PartitionId::CalendarView {
            user: user.clone(),
            calendar: calendar.clone(),
            window: String::new(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "g1";

    fn templates() -> Vec<PartitionId> {
        vec![
            PartitionId::CalendarView {
                user: String::new(),
                calendar: "primary".into(),
                window: "-1d/+1d".into(),
            },
            PartitionId::TaskLists {
                user: String::new(),
            },
        ]
    }

    fn rec(op: Op, id: &str) -> SourceRecord {
        let p = Arc::new(PartitionId::GroupMembers { group: G.into() });
        match op {
            Op::Upsert => SourceRecord {
                key: p.record_key(id),
                partition: p,
                id: id.into(),
                value: Some(bytes::Bytes::from_static(b"{}")),
                op,
                round: 2,
                removed_reason: None,
                resync: false,
            },
            Op::Delete => SourceRecord::tombstone(p, id.into(), 2, "member-removed", true),
        }
    }

    fn of(m: &Members, user: &str) -> Vec<Arc<PartitionId>> {
        m.of(user).map(Arc::new).collect()
    }

    #[test]
    fn a_joined_member_starts_its_partitions_and_a_known_one_only_runs() {
        let mut m = Members::new(templates());
        let known: Vec<PartitionId> = m.of("old").collect();
        let other = PartitionId::CalendarList { user: "old".into() };
        m.extend(known.iter().chain([&other]));
        assert!(
            !m.known.contains(&other),
            "not a partition of this group's sources"
        );
        let d = m.decide(&[rec(Op::Upsert, "new"), rec(Op::Upsert, "old")]);
        assert_eq!(d.starts, of(&m, "new"));
        assert_eq!(d.runs, [of(&m, "new"), of(&m, "old")].concat());
        assert!(d.resets.is_empty());
    }

    #[test]
    fn a_member_who_left_resets_its_partitions_and_commits_move_the_knowledge() {
        let mut m = Members::new(templates());
        m.extend(std::iter::empty());
        let d = m.decide(&[
            rec(Op::Delete, "gone"),
            rec(Op::Upsert, "x"),
            rec(Op::Delete, "x"),
        ]);
        assert_eq!(d.resets, [of(&m, "gone"), of(&m, "x")].concat());
        assert!(d.starts.is_empty() && d.runs.is_empty());
        m.advance(&[(Op::Upsert, "a".into())]);
        assert!(m.decide(&[rec(Op::Upsert, "a")]).starts.is_empty());
        m.advance(&[(Op::Delete, "a".into())]);
        assert_eq!(
            m.decide(&[rec(Op::Upsert, "a")]).starts,
            of(&m, "a"),
            "back again"
        );
    }

    #[test]
    fn a_listed_users_partitions_are_left_to_its_source() {
        let listed = PartitionId::TaskLists {
            user: "both".into(),
        };
        let view = PartitionId::CalendarView {
            user: "view".into(),
            calendar: "primary".into(),
            window: "-9d/+9d".into(),
        };
        let mut m = Members::new(templates()).with_listed(&[listed.clone(), view.clone()]);
        m.extend(std::iter::empty());
        assert!(!m.owns(&listed));
        let theirs = m.of("both").next().expect("the calendar view");
        assert!(m.owns(&theirs));
        let joined = m.decide(&[rec(Op::Upsert, "both")]);
        assert_eq!(joined.starts, vec![Arc::new(theirs.clone())]);
        let left = m.decide(&[rec(Op::Delete, "both")]);
        assert_eq!(
            left.resets,
            vec![Arc::new(theirs)],
            "the listed one runs on"
        );
        assert_eq!(
            m.of("view").collect::<Vec<_>>(),
            vec![PartitionId::TaskLists {
                user: "view".into()
            }],
            "a listed view of the calendar, another window: the group's is left out"
        );
    }

    #[test]
    fn unseeded_knowledge_starts_nothing() {
        let m = Members::new(templates());
        let d = m.decide(&[rec(Op::Upsert, "u")]);
        assert!(d.starts.is_empty());
        assert_eq!(d.runs, of(&m, "u"));
        assert!(m.owns(&PartitionId::TaskLists { user: "u".into() }));
        assert!(!m.owns(&PartitionId::CalendarView {
            user: "u".into(),
            calendar: "other".into(),
            window: "-1d/+1d".into(),
        }));
    }
}
