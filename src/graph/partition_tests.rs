//! Routes per kind, and which links a partition owns.

use super::*;

const H: &str = "https://graph.microsoft.com";
const WINDOW: &str = "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z";

fn view(user: &str, calendar: &str) -> PartitionId {
    PartitionId::CalendarView {
        user: user.into(),
        calendar: calendar.into(),
        window: WINDOW.into(),
    }
}

fn tasks(user: &str, list: &str) -> PartitionId {
    PartitionId::Tasks {
        user: user.into(),
        list: list.into(),
    }
}

fn owns(host: &str, id: &PartitionId, link: &str) -> Result<(), LinkMismatch> {
    Route::new(host, id).unwrap().owns_link(link)
}

#[test]
fn routes_per_kind() {
    assert_eq!(
        initial_url(H, &view("a@b.com", "primary")).unwrap(),
        "https://graph.microsoft.com/v1.0/users/a@b.com/calendarView/delta?startDateTime=2026-01-01T00%3A00%3A00Z&endDateTime=2026-02-01T00%3A00%3A00Z"
    );
    assert!(initial_url(H, &view("a@b.com", "AAMk/x="))
        .unwrap()
        .starts_with(
        "https://graph.microsoft.com/beta/users/a@b.com/calendars/AAMk%2Fx=/calendarView/delta?"
    ));
    assert_eq!(
        initial_url("http://127.0.0.1:8080/", &tasks("a@b.com", "L1")).unwrap(),
        "http://127.0.0.1:8080/v1.0/users/a@b.com/todo/lists/L1/tasks/delta"
    );
    assert_eq!(
        initial_url(
            H,
            &PartitionId::CalendarList {
                user: "a@b.com".into()
            }
        )
        .unwrap(),
        "https://graph.microsoft.com/beta/users/a@b.com/calendars/delta"
    );
    assert_eq!(
        initial_url(
            "https://proxy.example/graph",
            &PartitionId::TaskLists {
                user: "a@b.com".into()
            }
        )
        .unwrap(),
        "https://proxy.example/graph/v1.0/users/a@b.com/todo/lists/delta"
    );
    assert!(same_origin(
        H,
        "https://graph.microsoft.com/v1.0/x?$skiptoken=1"
    ));
    assert!(!same_origin(H, "https://evil.example/v1.0/x"));
    assert!(!same_origin(H, "http://graph.microsoft.com/v1.0/x"));
}

#[test]
fn a_partition_owns_its_initial_request_and_graphs_links_however_spelt() {
    let p = view("alice@contoso.com", "primary");
    // Its own initial request, as built, always.
    let own = initial_url(H, &p).unwrap();
    assert_eq!(owns(H, &p, &own), Ok(()));
    for link in [
        // Opaque state tokens, whatever they hold.
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta?$skiptoken=R0usmci39OQxqJrxK4%2B%2F%3D%3D",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta?$deltatoken=a=b==",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta?%24deltatoken=x",
        // Graph's own spelling of the path (beta event-delta: `calendarview`), of the UPN
        // (case-insensitive) and of its `@` (percent-encoded); the default port.
        "https://graph.microsoft.com/V1.0/users/alice@contoso.com/calendarview/delta?$skipToken=x",
        "https://GRAPH.microsoft.com:443/v1.0/Users/Alice%40Contoso.COM/CALENDARVIEW/delta?$deltatoken=x",
        // OData's key syntax for the user, quoted or percent-encoded.
        "https://graph.microsoft.com/v1.0/users('alice@contoso.com')/calendarView/delta?$deltatoken=x",
        "https://graph.microsoft.com/v1.0/users(%27alice%40contoso.com%27)/calendarView/delta?$deltatoken=x",
        // A 410's Location: the initial request with an empty $deltatoken, times as Graph
        // writes them.
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta?startDateTime=2026-01-01T00:00:00.0000000Z&endDateTime=2026-02-01T01:00:00%2B01:00&$deltatoken=",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta?startdatetime=2026-01-01T00:00:00&enddatetime=2026-02-01T00:00:00",
    ] {
        assert_eq!(owns(H, &p, link), Ok(()), "{link}");
    }
    // Ids: `%3D` is `=`, `%2F` is `/`, compared exactly otherwise.
    let t = tasks("alice@contoso.com", "AAMkADTask==");
    for link in [
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/AAMkADTask==/tasks/delta?$deltatoken=x",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/AAMkADTask%3D%3D/tasks/delta?$deltatoken=x",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/AAMkADTask%3d=/Tasks/Delta?$skiptoken=x",
    ] {
        assert_eq!(owns(H, &t, link), Ok(()), "{link}");
    }
    let c = view("alice@contoso.com", "AAMk/x=");
    let link = "https://graph.microsoft.com/beta/users/alice@contoso.com/calendars/AAMk%2Fx%3D/calendarView/delta?$deltatoken=x";
    assert_eq!(owns(H, &c, link), Ok(()));
    // A host with a path prefix (a proxy) and a simulator on loopback.
    let l = PartitionId::TaskLists {
        user: "a@b.com".into(),
    };
    let proxy = "https://proxy.example/graph";
    assert_eq!(
        owns(
            proxy,
            &l,
            "https://proxy.example/graph/v1.0/users/a@b.com/todo/lists/delta?$deltatoken=x"
        ),
        Ok(())
    );
    assert_eq!(
        owns(
            "http://127.0.0.1:8080/",
            &l,
            "http://127.0.0.1:8080/v1.0/users/A@B.COM/todo/lists/delta?$skiptoken=1"
        ),
        Ok(())
    );
}

#[test]
fn links_of_anything_else_are_refused_with_the_reason() {
    let p = view("alice@contoso.com", "primary");
    let base = "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta";
    let err = |link: &str| owns(H, &p, link).unwrap_err();
    // Another mailbox, however spelt.
    let e = err("https://graph.microsoft.com/v1.0/users/bob@contoso.com/calendarView/delta?$deltatoken=SECRET");
    assert_eq!(
        e,
        LinkMismatch::User {
            expected: "alice@contoso.com".into(),
            found: "bob@contoso.com".into()
        }
    );
    let text = e.to_string();
    assert!(text.contains("bob@contoso.com") && text.contains("alice@contoso.com"));
    assert!(!text.contains("SECRET"), "never the state token: {text}");
    assert!(matches!(
        err("https://graph.microsoft.com/v1.0/users/bob%40contoso.com/calendarView/delta"),
        LinkMismatch::User { .. }
    ));
    assert!(matches!(
        err("https://graph.microsoft.com/v1.0/users('bob@contoso.com')/calendarView/delta"),
        LinkMismatch::User { .. }
    ));
    // An encoded slash does not split a segment: `alice@contoso.com/..` is not alice.
    assert!(matches!(
        err("https://graph.microsoft.com/v1.0/users/alice@contoso.com%2F..%2Fbob/calendarView/delta"),
        LinkMismatch::User { .. }
    ));
    // Another host, scheme or port; credentials in the URL.
    for link in [
        "https://evil.example/v1.0/users/alice@contoso.com/calendarView/delta",
        "http://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta",
        "https://graph.microsoft.com:8443/v1.0/users/alice@contoso.com/calendarView/delta",
    ] {
        assert!(matches!(err(link), LinkMismatch::Host { .. }), "{link}");
    }
    assert_eq!(
        err("https://u:p@graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta"),
        LinkMismatch::Credentials
    );
    assert_eq!(err("/v1.0/users/alice@contoso.com"), LinkMismatch::NotAUrl);
    assert_eq!(err("mailto:alice@contoso.com"), LinkMismatch::NotAUrl);
    // Another version, route or kind.
    assert_eq!(
        err("https://graph.microsoft.com/beta/users/alice@contoso.com/calendarView/delta"),
        LinkMismatch::Version {
            expected: "v1.0".into(),
            found: "beta".into()
        }
    );
    for link in [
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/delta",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta/",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/messages/delta",
        "https://graph.microsoft.com/v1.0/me/calendarView/delta",
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendars/X/calendarView/delta",
        "https://graph.microsoft.com/",
    ] {
        let e = err(link);
        assert!(matches!(e, LinkMismatch::Route { .. }), "{link}: {e:?}");
        assert!(e.to_string().contains("/calendarView/delta"), "{e}");
    }
    // Another window, or a parameter Graph's links do not carry.
    let e = err(&format!(
        "{base}?startDateTime=2025-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z"
    ));
    assert!(
        matches!(
            e,
            LinkMismatch::Window {
                param: "startDateTime",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        err(&format!("{base}?$deltatoken=x&$filter=subject eq 'x'")),
        LinkMismatch::Query("$filter".into())
    );
    // Not this calendar, not this list (ids are exact: case matters).
    let c = view("alice@contoso.com", "AAMkCal=");
    let e = owns(
        H,
        &c,
        "https://graph.microsoft.com/beta/users/alice@contoso.com/calendars/AAMkOther=/calendarView/delta",
    )
    .unwrap_err();
    assert_eq!(
        e,
        LinkMismatch::Resource {
            what: "calendar",
            expected: "AAMkCal=".into(),
            found: "AAMkOther=".into()
        }
    );
    let t = tasks("alice@contoso.com", "AAMkADTask==");
    let e = owns(
        H,
        &t,
        "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/aamkadtask==/tasks/delta",
    )
    .unwrap_err();
    assert!(
        matches!(e, LinkMismatch::Resource { what: "list", .. }),
        "{e:?}"
    );
    // A task-lists partition does not own a list's tasks, nor a calendar list a view.
    let l = PartitionId::TaskLists {
        user: "alice@contoso.com".into(),
    };
    assert!(matches!(
        owns(
            H,
            &l,
            "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/L/tasks/delta"
        ),
        Err(LinkMismatch::Route { .. })
    ));
    // The prefix of a host with a path must be there.
    assert!(matches!(
        owns(
            "https://proxy.example/graph",
            &l,
            "https://proxy.example/v1.0/users/alice@contoso.com/todo/lists/delta"
        ),
        Err(LinkMismatch::Route { .. })
    ));
}

#[test]
fn a_group_listing_owns_its_next_links_only() {
    let g = PartitionId::GroupMembers {
        group: "0AB1-c2".into(),
    };
    let r = Route::new("https://graph.microsoft.com", &g).unwrap();
    let next = "https://graph.microsoft.com/v1.0/groups/0ab1-C2/transitiveMembers/microsoft.graph.user?$select=id,userPrincipalName,mail&$top=999&$skiptoken=RFNwdAIAAQ";
    assert_eq!(r.owns_link(next), Ok(()));
    assert!(matches!(
        r.owns_link(&next.replace("0ab1-C2", "other")),
        Err(LinkMismatch::Resource { what: "group", .. })
    ));
    assert!(matches!(
        r.owns_link(&next.replace("transitiveMembers", "members")),
        Err(LinkMismatch::Route { .. })
    ));
    assert!(matches!(
        r.owns_link(&format!("{next}&$filter=x")),
        Err(LinkMismatch::Query(_))
    ));
}
