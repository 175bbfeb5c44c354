//! The resync rules, as NOTES.md and Graph's delta docs give them: a `410` on a nextLink
//! falls back to the last complete round's deltaLink; on a deltaLink (or mid-way through
//! a first round, which has none) the round restarts from the initial request, preferably
//! the one `Location` names, and becomes a round from scratch, reconciled at its end.

use super::*;

const HOST: &str = "https://graph.microsoft.com";

fn reader(committed: Option<SourceOffset>) -> PartitionReader {
    let id = Arc::new(PartitionId::CalendarList {
        user: "a@contoso.com".into(),
    });
    PartitionReader::new(id, HOST, committed, Default::default()).unwrap()
}

fn at(link: Option<&str>, delta: Option<&str>, round: u64) -> SourceOffset {
    SourceOffset {
        link: link.map(Into::into),
        delta_link: delta.map(Into::into),
        round,
        resync: false,
        ..SourceOffset::INITIAL
    }
}

const NEXT: &str =
    "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$skiptoken=2";
const DELTA: &str =
    "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$deltatoken=1";
const LOCATION: &str =
    "https://graph.microsoft.com/beta/users/a@contoso.com/calendars/delta?$deltatoken=fresh";

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
fn only_a_lists_partition_copies_the_ids_it_advances_by() {
    let r = reader(None);
    let t = SourceRecord::tombstone(r.id.clone(), "x".into(), 1, "deleted", false);
    assert!(
        r.advance_ids(&[t]).is_empty(),
        "a calendar list knows no lists"
    );
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

fn rolling_view() -> Arc<PartitionId> {
    Arc::new(PartitionId::CalendarView {
        user: "a@contoso.com".into(),
        calendar: "primary".into(),
        window: "-1d/+1d".into(),
    })
}

#[test]
fn a_window_that_rolled_while_away_is_read_from_scratch() {
    let view = "https://graph.microsoft.com/v1.0/users/a@contoso.com/calendarView/delta";
    let committed = SourceOffset {
        window: Some("2020-01-01T00:00:00Z/2020-01-03T00:00:00Z".into()),
        ..at(
            Some(&format!("{view}?$deltatoken=1")),
            Some(&format!("{view}?$deltatoken=1")),
            4,
        )
    };
    let r = PartitionReader::new(rolling_view(), HOST, Some(committed), Rounds::default()).unwrap();
    let o = r.offset();
    assert_eq!((o.link.as_deref(), o.round, o.resync), (None, 4, true));
    assert_eq!(o.reason.as_deref(), Some("window"));
    let now = Utc::now();
    let w = WindowSpec::parse("-1d/+1d")
        .unwrap()
        .at(now, Rounds::default().window_roll);
    assert_eq!(
        o.window,
        Some(w.to_string().into()),
        "the window in force is recorded"
    );
    assert!(r.fresh);
    // The initial request reads the window in force.
    let start = w.to_string().split_once('/').unwrap().0.to_string();
    assert!(
        r.link().contains(&start.replace(':', "%3A")),
        "{}",
        r.link()
    );
    // Its tombstones say why.
    let mut b = r.batch(page(true));
    r.complete_full_round(&mut b, vec!["gone".into()]);
    assert_eq!(b.records[0].removed_reason.as_deref(), Some("window"));
    assert_eq!(b.offset.reason, None, "the round is over");
    assert_eq!(
        b.offset.window, o.window,
        "the window travels with the offset"
    );
}

#[test]
fn a_due_reconcile_restarts_the_round_at_its_boundary_only() {
    let rounds = Rounds {
        reconcile_interval: Some(std::time::Duration::from_secs(1)),
        ..Rounds::default()
    };
    let long_ago = Utc::now().timestamp() - 10;
    let mid = SourceOffset {
        full_at: Some(long_ago),
        ..at(Some(NEXT), Some(DELTA), 3)
    };
    let mut r = PartitionReader::new(reader(None).id, HOST, Some(mid), rounds).unwrap();
    r.restart_if_due();
    assert_eq!(r.offset().link.as_deref(), Some(NEXT), "not mid-round");
    let boundary = SourceOffset {
        full_at: Some(long_ago),
        ..at(Some(DELTA), Some(DELTA), 3)
    };
    let mut r = PartitionReader::new(r.id.clone(), HOST, Some(boundary), rounds).unwrap();
    r.restart_if_due();
    let o = r.offset().clone();
    assert_eq!((o.link, o.resync), (None, true));
    assert_eq!(o.reason.as_deref(), Some("reconcile"));
    assert!(
        o.full_at.unwrap() > long_ago,
        "the schedule restarts from now"
    );
    // Without an interval nothing is due.
    let boundary = SourceOffset {
        full_at: Some(long_ago),
        ..at(Some(DELTA), Some(DELTA), 3)
    };
    let mut r =
        PartitionReader::new(r.id.clone(), HOST, Some(boundary), Rounds::default()).unwrap();
    r.restart_if_due();
    assert_eq!(r.offset().link.as_deref(), Some(DELTA));
}

/// A listing's batches carry the members alone: what their joining and leaving does to
/// their partitions is the worker's (`worker::groups`), from the members topic.
#[test]
fn a_group_listing_is_a_round_from_scratch_every_time() {
    let group = Arc::new(PartitionId::GroupMembers { group: "g1".into() });
    let mut r = PartitionReader::new(group, HOST, None, Rounds::default()).unwrap();
    assert_eq!(
        r.link(),
        "https://graph.microsoft.com/v1.0/groups/g1/transitiveMembers/microsoft.graph.user?%24select=id%2CuserPrincipalName%2Cmail&%24top=999"
    );
    let listing = |ids: &[&str]| DeltaPage {
        items: ids
            .iter()
            .map(|id| crate::graph::delta::DeltaItem {
                id: id.to_string(),
                removed: None,
                raw: bytes::Bytes::from(format!(r#"{{"id":"{id}"}}"#)),
            })
            .collect(),
        next_link: None,
        delta_link: None,
    };
    let b = r.batch(listing(&["old", "new"]));
    let full = b.full_round.expect("a round from scratch");
    assert!(
        full.first && full.last,
        "one page: the listing's first and last"
    );
    assert_eq!((b.offset.link.as_deref(), b.offset.round), (None, 2));
    assert!(b.starts.is_empty() && b.runs.is_empty() && b.resets.is_empty());
    let ids = r.advance_ids(&b.records);
    r.advance(b.offset.clone(), &ids);
    // The next listing starts from scratch again; a member no longer listed is tombstoned.
    let mut b = r.batch(listing(&["new"]));
    assert_eq!(b.full_round.map(|f| f.first), Some(true));
    r.complete_full_round(&mut b, vec!["old".into()]);
    let gone = b.records.last().unwrap();
    assert_eq!((gone.op, gone.id.as_str()), (Op::Delete, "old"));
    assert_eq!(gone.removed_reason.as_deref(), Some("member-removed"));
    assert!(b.resets.is_empty());
}
