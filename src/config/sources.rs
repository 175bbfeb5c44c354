//! `[[sources]]`: what to track, for whom. A source names its users (`users`) or a group
//! whose transitive user members are its users (`group`), never both.

use serde::{Deserialize, Serialize};

use super::types::Dur;
use super::Settings;
use crate::source::PartitionId;

/// `[[sources]]`: one entry per kind and set of users.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// One calendar of each user over a window `[start, end)`, fixed or rolling.
    CalendarView {
        /// User principal names or ids (or `group`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users: Option<Vec<String>>,
        /// A group's object id: its transitive user members are the users (or `users`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// What a group member's records become once the member left (default
        /// `tombstone`; a group source only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_member_removed: Option<OnMemberRemoved>,
        /// `primary` (v1.0 route) or a calendar id (beta route).
        #[serde(default = "primary")]
        calendar: String,
        /// Window start: RFC 3339 with offset (fixed), or a signed duration from now
        /// (`-30d`; units `s`, `m`, `h`, `d`) that rolls with `window_roll`.
        start: String,
        /// Window end (exclusive), as `start` (`+365d`).
        end: String,
        /// How often a window with a relative bound moves: it is computed from now aligned
        /// down to a multiple of this since the Unix epoch (UTC). At least `1s`.
        #[serde(default = "one_day")]
        window_roll: Dur,
    },
    /// Each user's calendars.
    CalendarList {
        /// User principal names or ids (or `group`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users: Option<Vec<String>>,
        /// A group's object id: its transitive user members are the users (or `users`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// What a group member's records become once the member left (default
        /// `tombstone`; a group source only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_member_removed: Option<OnMemberRemoved>,
    },
    /// Each user's To Do lists, and the tasks of every list.
    Todo {
        /// User principal names or ids (or `group`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        users: Option<Vec<String>>,
        /// A group's object id: its transitive user members are the users (or `users`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// What a group member's records become once the member left (default
        /// `tombstone`; a group source only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_member_removed: Option<OnMemberRemoved>,
    },
}

/// `on_member_removed`: what happens to the records of a group source's member who left
/// the group. Their partitions stop and their offsets are reset either way. One group's
/// sources share one choice (a member leaves all of them at once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMemberRemoved {
    /// Each live record gets a tombstone (`removed-reason: member-removed`) in the
    /// transaction that resets the member's offsets, and the partitions' reconciliation
    /// state goes with them: the topics hold current members only.
    #[default]
    Tombstone,
    /// The records stay as they are (an archive of former members); the reconciliation
    /// state stays too, so a member who comes back rewrites only what changed.
    Keep,
}

/// The partitions a group source gives each member: `templates` carry an empty user, to be
/// replaced by a member's object id ([`PartitionId::with_user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSource {
    pub group: String,
    /// Of every source naming the group, in source order, each once.
    pub templates: Vec<PartitionId>,
    /// Departed members' records are tombstoned (`on_member_removed`).
    pub tombstone: bool,
}

impl OnMemberRemoved {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnMemberRemoved::Tombstone => "tombstone",
            OnMemberRemoved::Keep => "keep",
        }
    }
}

fn primary() -> String {
    "primary".into()
}

/// `window_roll`'s default (a source is an array entry: no place in `DEFAULTS`).
fn one_day() -> Dur {
    Dur(std::time::Duration::from_secs(86_400))
}

impl Source {
    /// `users` as written (`None`: not given).
    pub fn users(&self) -> Option<&[String]> {
        match self {
            Source::CalendarView { users, .. }
            | Source::CalendarList { users, .. }
            | Source::Todo { users, .. } => users.as_deref(),
        }
    }

    /// `group` as written.
    pub fn group(&self) -> Option<&str> {
        match self {
            Source::CalendarView { group, .. }
            | Source::CalendarList { group, .. }
            | Source::Todo { group, .. } => group.as_deref(),
        }
    }

    /// `on_member_removed` as written.
    pub fn on_member_removed(&self) -> Option<OnMemberRemoved> {
        match self {
            Source::CalendarView {
                on_member_removed, ..
            }
            | Source::CalendarList {
                on_member_removed, ..
            }
            | Source::Todo {
                on_member_removed, ..
            } => *on_member_removed,
        }
    }
}

impl Settings {
    /// The partitions of sources that list their users (the task partitions of To Do lists
    /// and group sources' partitions are found at run time).
    pub fn partitions(&self) -> Vec<PartitionId> {
        self.sources
            .iter()
            .filter(|s| s.group().is_none())
            .filter_map(|s| source_partitions(s).ok())
            .flatten()
            .collect()
    }

    /// Each group named by a source, with the partitions its sources give a member.
    pub fn groups(&self) -> Vec<GroupSource> {
        let mut out: Vec<GroupSource> = Vec::new();
        for s in &self.sources {
            let (Some(group), Ok(templates)) = (s.group(), source_partitions(s)) else {
                continue;
            };
            let i = match out.iter().position(|g| g.group == group) {
                Some(i) => i,
                None => {
                    out.push(GroupSource {
                        group: group.to_string(),
                        templates: Vec::new(),
                        // Validation refuses two choices for one group.
                        tombstone: s.on_member_removed().unwrap_or_default()
                            == OnMemberRemoved::Tombstone,
                    });
                    out.len() - 1
                }
            };
            for t in templates {
                if !out[i].templates.contains(&t) {
                    out[i].templates.push(t);
                }
            }
        }
        out
    }

    /// How often each rolling calendar view's window moves (its source's `window_roll`); a
    /// group source's under its template (empty user).
    pub fn window_rolls(&self) -> std::collections::HashMap<PartitionId, std::time::Duration> {
        self.sources
            .iter()
            .filter_map(|s| match s {
                Source::CalendarView { window_roll, .. } => {
                    Some((source_partitions(s).ok()?, window_roll.0))
                }
                _ => None,
            })
            .flat_map(|(ps, roll)| ps.into_iter().map(move |p| (p, roll)))
            .collect()
    }
}

/// A source's partitions: of its users, or for a group source its templates (empty user).
pub(super) fn source_partitions(s: &Source) -> Result<Vec<PartitionId>, String> {
    let template = [String::new()];
    let users: &[String] = match s.group() {
        Some(_) => &template,
        None => s.users().unwrap_or_default(),
    };
    Ok(match s {
        Source::CalendarView {
            calendar,
            start,
            end,
            ..
        } => {
            let w = crate::window::WindowSpec::new(start, end)
                .map_err(|(_, e)| e)?
                .to_string();
            users
                .iter()
                .map(|u| PartitionId::CalendarView {
                    user: u.clone(),
                    calendar: calendar.clone(),
                    window: w.clone(),
                })
                .collect()
        }
        Source::CalendarList { .. } => users
            .iter()
            .map(|u| PartitionId::CalendarList { user: u.clone() })
            .collect(),
        Source::Todo { .. } => users
            .iter()
            .map(|u| PartitionId::TaskLists { user: u.clone() })
            .collect(),
    })
}
