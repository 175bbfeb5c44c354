//! Application permissions: which an app registration holds, which each endpoint needs, and
//! what Graph answers when the token lacks them.
//!
//! An app-only access token carries the application permissions consented for the app in its
//! `roles` claim, and Graph authorizes each request from the token alone; so, as with Entra,
//! a grant or a revocation reaches only tokens issued after it (`POST /_sim/revoke-tokens`
//! makes clients fetch new ones). Every app holds [`DEFAULT_ROLES`] unless told otherwise.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::http::graph_error;

/// What graph-cdc needs: calendars, To Do, user lookups and group membership.
pub const DEFAULT_ROLES: &[&str] = &[
    "Calendars.Read",
    "Tasks.Read.All",
    "User.Read.All",
    "GroupMember.Read.All",
];

/// A kind of access an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Calendars,
    Tasks,
    Users,
    GroupMembers,
}

impl Need {
    /// The application permissions any one of which grants it, least privileged first.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            // event-delta and calendar-delta, Permissions (Application): Calendars.Read;
            // Calendars.ReadWrite. (Calendars.ReadBasic is listed too, but it withholds
            // bodies and attendees, which this simulator always sends: not modelled.)
            Need::Calendars => &["Calendars.Read", "Calendars.ReadWrite"],
            // "Tasks.Read.All: Read operation on todoTask, todoTaskList, …" ("New capabilities
            // available in Microsoft Graph To Do APIs", devblogs.microsoft.com, 2023-02-24),
            // although todotask-delta names Tasks.ReadWrite.All as least privileged.
            Need::Tasks => &["Tasks.Read.All", "Tasks.ReadWrite.All"],
            // user-get, Permissions (Application); User.ReadBasic.All is an application
            // permission too now (office365itpros.com, "Graph User.ReadBasic.All Application
            // Permission Available").
            Need::Users => &[
                "User.ReadBasic.All",
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            // group-list-members, group-list-transitivemembers and group-delta, Permissions
            // (Application): GroupMember.Read.All least privileged. User.Read.All alone is
            // refused (microsoft-graph-docs-contrib issue 6748).
            Need::GroupMembers => &[
                "GroupMember.Read.All",
                "GroupMember.ReadWrite.All",
                "Group.Read.All",
                "Group.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
        }
    }

    pub fn granted(self, roles: &BTreeSet<String>) -> bool {
        self.roles()
            .iter()
            .any(|need| roles.iter().any(|r| r.eq_ignore_ascii_case(need)))
    }

    /// What a mailbox endpoint (by its statistics label) needs.
    pub fn for_endpoint(endpoint: &str) -> Need {
        match endpoint {
            "task_lists" | "tasks" => Need::Tasks,
            _ => Need::Calendars,
        }
    }

    /// Graph's answer to a token without the permission.
    pub fn denied(self, todo: TodoDenied) -> Response {
        match (self, todo) {
            // "403 Forbidden … ErrorAccessDenied … Access is denied. Check credentials and try
            // again." (OfficeDev/outlook-dev-docs issue 676, GET /me/events; also
            // microsoftgraph/python-sample-send-mail issue 4, /me/calendars).
            (Need::Calendars, _) => graph_error(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            // No documented To Do body: Graph's generic 403 (concepts/errors.md: code
            // `accessDenied`, "Access is denied to the requested resource. The user might not
            // have enough permission."), the message To Do answered in
            // microsoftgraph/msgraph-sdk-java issue 2334.
            (Need::Tasks, TodoDenied::Forbidden) => graph_error(
                StatusCode::FORBIDDEN,
                "accessDenied",
                "Access is denied to the requested resource. The user might not have enough permission.",
            ),
            // "GET /users/{id}/todo/lists returns 401 UnknownError" for an app token without
            // Tasks.* (wisecom-oy/atlas issue 148; NOTES.md: a repeated 401 with a fresh token
            // is a permission problem).
            (Need::Tasks, TodoDenied::Unauthorized) => {
                graph_error(StatusCode::UNAUTHORIZED, "UnknownError", "")
            }
            // "code": "Authorization_RequestDenied", "message": "Insufficient privileges to
            // complete the operation." (microsoft-graph-docs-contrib issue 6748, listing group
            // members with User.Read.All only; msgraph-sdk-powershell issue 2169).
            (Need::Users | Need::GroupMembers, _) => graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        }
    }
}

/// How To Do answers a token without `Tasks.Read.All` (`SimSettings::todo_denied`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TodoDenied {
    /// `403 accessDenied`, as Graph documents a missing permission.
    #[default]
    Forbidden,
    /// `401 UnknownError`, as reported for app-only To Do calls without consent.
    Unauthorized,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_role_grants_and_others_do_not() {
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(Need::GroupMembers.granted(&roles(&["Directory.Read.All"])));
        assert!(!Need::GroupMembers.granted(&roles(&["User.Read.All"])));
        assert!(Need::Users.granted(&roles(&["user.read.all"])));
        assert!(!Need::Calendars.granted(&roles(&["Tasks.Read.All"])));
        let all = roles(DEFAULT_ROLES);
        for n in [
            Need::Calendars,
            Need::Tasks,
            Need::Users,
            Need::GroupMembers,
        ] {
            assert!(n.granted(&all), "{n:?}");
        }
    }
}
