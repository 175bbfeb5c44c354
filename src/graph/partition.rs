//! What each partition kind requests to start a round (NOTES.md, endpoint table).

use url::Url;

use super::error::GraphError;
use crate::source::PartitionId;

/// The initial delta request of a partition on `graph_host` (e.g. `https://graph.microsoft.com`).
///
/// Primary-calendar views use v1.0; views of another calendar and calendar lists exist only
/// in beta.
pub fn initial_url(graph_host: &str, id: &PartitionId) -> Result<String, GraphError> {
    let mut url = Url::parse(graph_host).map_err(|source| GraphError::Host {
        host: graph_host.to_string(),
        source,
    })?;
    let segments: Vec<&str> = match id {
        PartitionId::CalendarView { user, calendar, .. }
            if calendar.eq_ignore_ascii_case("primary") =>
        {
            vec!["v1.0", "users", user, "calendarView", "delta"]
        }
        PartitionId::CalendarView { user, calendar, .. } => {
            vec![
                "beta",
                "users",
                user,
                "calendars",
                calendar,
                "calendarView",
                "delta",
            ]
        }
        PartitionId::CalendarList { user } => vec!["beta", "users", user, "calendars", "delta"],
        PartitionId::TaskLists { user } => vec!["v1.0", "users", user, "todo", "lists", "delta"],
        PartitionId::Tasks { user, list } => {
            vec![
                "v1.0", "users", user, "todo", "lists", list, "tasks", "delta",
            ]
        }
    };
    url.path_segments_mut()
        .map_err(|_| GraphError::Url(format!("{graph_host} cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    if let PartitionId::CalendarView { window, .. } = id {
        let (start, end) = window
            .split_once('/')
            .ok_or_else(|| GraphError::Url(format!("bad window '{window}'")))?;
        url.query_pairs_mut()
            .append_pair("startDateTime", start)
            .append_pair("endDateTime", end);
    }
    Ok(url.to_string())
}

/// Whether `link` points at the same origin as `graph_host`: a bearer token is only ever sent
/// there, whatever a response's links or `Location` say.
pub fn same_origin(graph_host: &str, link: &str) -> bool {
    match (Url::parse(graph_host), Url::parse(link)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_per_kind() {
        let h = "https://graph.microsoft.com";
        let cv = PartitionId::CalendarView {
            user: "a@b.com".into(),
            calendar: "primary".into(),
            window: "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z".into(),
        };
        assert_eq!(
            initial_url(h, &cv).unwrap(),
            "https://graph.microsoft.com/v1.0/users/a@b.com/calendarView/delta?startDateTime=2026-01-01T00%3A00%3A00Z&endDateTime=2026-02-01T00%3A00%3A00Z"
        );
        let other = PartitionId::CalendarView {
            user: "a@b.com".into(),
            calendar: "AAMk/x=".into(),
            window: "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z".into(),
        };
        assert!(initial_url(h, &other)
            .unwrap()
            .starts_with("https://graph.microsoft.com/beta/users/a@b.com/calendars/AAMk%2Fx=/calendarView/delta?"));
        let t = PartitionId::Tasks {
            user: "a@b.com".into(),
            list: "L1".into(),
        };
        assert_eq!(
            initial_url("http://127.0.0.1:8080/", &t).unwrap(),
            "http://127.0.0.1:8080/v1.0/users/a@b.com/todo/lists/L1/tasks/delta"
        );
        assert!(same_origin(
            h,
            "https://graph.microsoft.com/v1.0/x?$skiptoken=1"
        ));
        assert!(!same_origin(h, "https://evil.example/v1.0/x"));
        assert!(!same_origin(h, "http://graph.microsoft.com/v1.0/x"));
    }
}
