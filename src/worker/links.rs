//! Offsets' links checked against their partition's route before anything follows them.
//!
//! A link is a request the partition makes with the app's token, and what it returns is
//! written under the partition's keys: a link of another mailbox (or calendar, list, host,
//! route) in the offsets topic or a `PATCH …/offsets` would copy that resource into this
//! partition's records. The Graph side says which links a partition owns
//! ([`Route::owns_link`]); the worker refuses the others: a `PATCH` with a 400 naming why,
//! and an offset read from the topic at start by starting that partition over (counted in
//! `graph_cdc_offset_links_refused_total`).

use std::collections::HashMap;

use crate::graph::Route;
use crate::metrics;
use crate::sink::committer::OffsetWrites;
use crate::source::{PartitionId, SourceOffset};
use crate::window::Window;

use super::control::CommandError;

/// The first of `offset`'s links (`link`, then `delta_link`) that `id` does not own, as
/// `(field, why)`.
fn foreign_link(route: &Route, offset: &SourceOffset) -> Result<(), (&'static str, String)> {
    // A rolling view's links read the window its offset records.
    let owned;
    let route = match &offset.window {
        Some(w) => {
            let w = Window::parse(w).map_err(|why| ("window", why))?;
            owned = route.clone().in_window(w);
            &owned
        }
        None => route,
    };
    for (field, link) in [("link", &offset.link), ("delta_link", &offset.delta_link)] {
        if let Some(l) = link {
            route.owns_link(l).map_err(|why| (field, why.to_string()))?;
        }
    }
    Ok(())
}

/// `PATCH …/offsets`: every offset written must address its own partition's resource.
pub(super) fn check_writes(graph_host: &str, writes: &OffsetWrites) -> Result<(), CommandError> {
    for (i, (p, offset)) in writes.iter().enumerate() {
        let Some(offset) = offset else { continue };
        let route = Route::new(graph_host, p)
            .map_err(|e| CommandError::BadRequest(format!("offsets[{i}].partition: {e}")))?;
        if let Err((field, why)) = foreign_link(&route, offset) {
            metrics::offset_link_refused(p, "rest", field, &why);
            return Err(CommandError::BadRequest(format!(
                "offsets[{i}].offset.{field}: not a link of partition {p}: {why}"
            )));
        }
    }
    Ok(())
}

/// At start: a partition whose committed offset has a link it does not own starts over
/// from scratch, as if it had no offset (a task partition keeps a fresh offset, so that it
/// is still started with its To Do lists). Each is counted and logged.
pub(super) fn refuse_foreign(graph_host: &str, offsets: &mut HashMap<PartitionId, SourceOffset>) {
    offsets.retain(|p, offset| {
        // A partition without a route fails when it starts, saying why.
        let Ok(route) = Route::new(graph_host, p) else {
            return true;
        };
        let Err((field, why)) = foreign_link(&route, offset) else {
            return true;
        };
        metrics::offset_link_refused(p, "offsets_topic", field, &why);
        if !matches!(p, PartitionId::Tasks { .. }) {
            return false;
        }
        *offset = SourceOffset::INITIAL;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "https://graph.microsoft.com";

    fn at(link: &str) -> SourceOffset {
        SourceOffset {
            link: Some(link.into()),
            delta_link: Some(link.into()),
            round: 4,
            resync: false,
            ..SourceOffset::INITIAL
        }
    }

    #[test]
    fn foreign_offsets_are_refused_with_the_reason_and_start_over() {
        let alice = PartitionId::TaskLists {
            user: "alice@contoso.com".into(),
        };
        let list = PartitionId::Tasks {
            user: "alice@contoso.com".into(),
            list: "L1".into(),
        };
        let own = "https://graph.microsoft.com/v1.0/users/alice@contoso.com/todo/lists/delta?$deltatoken=a";
        let bobs =
            "https://graph.microsoft.com/v1.0/users/bob@contoso.com/todo/lists/delta?$deltatoken=b";
        let bobs_list = "https://graph.microsoft.com/v1.0/users/bob@contoso.com/todo/lists/L1/tasks/delta?$deltatoken=c";
        // REST: the first foreign link is named with its field, never its token.
        let ok: OffsetWrites = vec![(alice.clone(), Some(at(own))), (list.clone(), None)];
        assert!(check_writes(HOST, &ok).is_ok());
        let mut bad = at(own);
        bad.delta_link = Some(bobs.into());
        let writes: OffsetWrites = vec![(list.clone(), None), (alice.clone(), Some(bad))];
        let Err(CommandError::BadRequest(why)) = check_writes(HOST, &writes) else {
            panic!("refused");
        };
        assert!(
            why.starts_with("offsets[1].offset.delta_link: not a link of partition"),
            "{why}"
        );
        assert!(
            why.contains("bob@contoso.com") && !why.contains("$deltatoken"),
            "{why}"
        );
        // At start: the foreign ones start over, the others stay.
        let carol = PartitionId::CalendarList {
            user: "carol@contoso.com".into(),
        };
        let carols = "https://graph.microsoft.com/beta/users/carol@contoso.com/calendars/delta?$deltatoken=d";
        let mut loaded = HashMap::from([
            (alice.clone(), at(bobs)),
            (list.clone(), at(bobs_list)),
            (carol.clone(), at(carols)),
        ]);
        let before = metrics::metrics()
            .offset_links_refused
            .with_label_values(&["task_lists", "offsets_topic"])
            .get();
        refuse_foreign(HOST, &mut loaded);
        assert!(!loaded.contains_key(&alice), "as if it had no offset");
        let fresh = &loaded[&list];
        assert_eq!(
            (fresh.link.as_ref(), fresh.delta_link.as_ref()),
            (None, None)
        );
        assert_eq!(loaded[&carol], at(carols), "its own link stays");
        let after = metrics::metrics()
            .offset_links_refused
            .with_label_values(&["task_lists", "offsets_topic"])
            .get();
        assert_eq!(after, before + 1);
    }

    #[test]
    fn a_rolling_views_links_must_read_the_window_its_offset_records() {
        let view = PartitionId::CalendarView {
            user: "alice@contoso.com".into(),
            calendar: "primary".into(),
            window: "-30d/+365d".into(),
        };
        let base = "https://graph.microsoft.com/v1.0/users/alice@contoso.com/calendarView/delta";
        let link =
            format!("{base}?startDateTime=2026-11-04T00:00:00Z&endDateTime=2027-12-04T00:00:00Z");
        let with = |w: &str| SourceOffset {
            window: Some(w.into()),
            ..at(&link)
        };
        let ok: OffsetWrites = vec![(
            view.clone(),
            Some(with("2026-11-04T00:00:00Z/2027-12-04T00:00:00Z")),
        )];
        assert!(check_writes(HOST, &ok).is_ok());
        let other: OffsetWrites = vec![(
            view.clone(),
            Some(with("2026-11-05T00:00:00Z/2027-12-05T00:00:00Z")),
        )];
        let Err(CommandError::BadRequest(why)) = check_writes(HOST, &other) else {
            panic!("refused");
        };
        assert!(why.contains("startDateTime"), "{why}");
        let junk: OffsetWrites = vec![(view, Some(with("soon")))];
        let Err(CommandError::BadRequest(why)) = check_writes(HOST, &junk) else {
            panic!("refused");
        };
        assert!(why.contains("offset.window"), "{why}");
    }
}
