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
//! A listing's records are the members (the members topic): what a member's joining or
//! leaving does to its partitions is the worker's (`worker::groups`). [`Members`] says which
//! partitions those are.

use std::collections::HashSet;

use crate::source::PartitionId;

/// The partitions a group's sources give each member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// With an empty user (see `config::GroupSource`).
    templates: Vec<PartitionId>,
    /// Partitions of users listed in `users` (by object id, as [`calendar_of`]): theirs,
    /// not the group's, so a listed user's leaving the group stops nothing.
    listed: HashSet<PartitionId>,
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
    /// template; any user), not a listed user's. A task partition is its To Do lists'.
    pub fn owns(&self, p: &PartitionId) -> bool {
        let p = match p {
            PartitionId::Tasks { user, .. } => &PartitionId::TaskLists { user: user.clone() },
            p => p,
        };
        self.templates.contains(&p.with_user("")) && !self.listed.contains(&calendar_of(p))
    }

    /// `user`'s partitions (without task partitions: their To Do lists' commits start them).
    pub fn of(&self, user: &str) -> impl Iterator<Item = PartitionId> + '_ {
        let user = user.to_string();
        self.templates
            .iter()
            .map(move |t| t.with_user(&user))
            .filter(|p| !self.listed.contains(&calendar_of(p)))
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

    #[test]
    fn a_members_partitions_are_the_templates_with_its_id() {
        let m = Members::new(templates());
        assert_eq!(m.of("u").count(), 2);
        assert!(m.owns(&PartitionId::TaskLists { user: "u".into() }));
        assert!(
            m.owns(&PartitionId::Tasks {
                user: "u".into(),
                list: "L".into()
            }),
            "a task partition goes with its To Do lists"
        );
        assert!(!m.owns(&PartitionId::CalendarView {
            user: "u".into(),
            calendar: "other".into(),
            window: "-1d/+1d".into(),
        }));
        assert!(!m.owns(&PartitionId::CalendarList { user: "u".into() }));
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
        let m = Members::new(templates()).with_listed(&[listed.clone(), view.clone()]);
        assert!(!m.owns(&listed));
        assert!(!m.owns(&PartitionId::Tasks {
            user: "both".into(),
            list: "L".into()
        }));
        let theirs = m.of("both").next().expect("the calendar view");
        assert!(m.owns(&theirs));
        assert_eq!(m.of("both").count(), 1, "the listed one is not the group's");
        assert_eq!(
            m.of("view").collect::<Vec<_>>(),
            vec![PartitionId::TaskLists {
                user: "view".into()
            }],
            "a listed view of the calendar, another window: the group's is left out"
        );
    }
}
