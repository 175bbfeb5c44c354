//! Tests of `source.rs`.
use super::*;

#[test]
fn keys_are_escaped_exactly_as_serde_json_escapes() {
    let mut samples: Vec<String> = (0u8..0x80).map(|b| format!("a{}z", b as char)).collect();
    samples.extend(
        [
            "",
            "plain",
            "é ü 日本 \u{2028} 🙂",
            "\"\\/\u{7f}",
            "AAMkAD==",
        ]
        .map(String::from),
    );
    for s in samples {
        let mut ours = String::new();
        push_str(&mut ours, &s);
        assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
    }
}

#[test]
fn identity_json_is_stable_and_round_trips() {
    let p = PartitionId::CalendarView {
        user: "alice@contoso.com".into(),
        calendar: "primary".into(),
        window: "2026-01-01T00:00:00Z/2026-02-01T00:00:00Z".into(),
    };
    assert_eq!(
        p.to_json(),
        r#"{"kind":"calendar_view","user":"alice@contoso.com","calendar":"primary","window":"2026-01-01T00:00:00Z/2026-02-01T00:00:00Z"}"#
    );
    let v: Value = serde_json::from_str(&p.to_json()).unwrap();
    assert_eq!(PartitionId::from_json(&v).unwrap(), p);
    assert_eq!(
        &p.record_key("AAMk\"1")[..],
        br#"{"user":"alice@contoso.com","calendar":"primary","id":"AAMk\"1"}"#
    );
    let t = PartitionId::Tasks {
        user: "bob@contoso.com".into(),
        list: "L1".into(),
    };
    assert_eq!(
        &t.record_key("T")[..],
        br#"{"user":"bob@contoso.com","list":"L1","id":"T"}"#
    );
    assert!(PartitionId::from_json(&serde_json::json!({"kind": "mail", "user": "x"})).is_err());
    let g = PartitionId::GroupMembers { group: "G1".into() };
    assert_eq!(g.to_json(), r#"{"kind":"group_members","group":"G1"}"#);
    let v: Value = serde_json::from_str(&g.to_json()).unwrap();
    assert_eq!(PartitionId::from_json(&v).unwrap(), g);
    assert_eq!(&g.record_key("U1")[..], br#"{"group":"G1","id":"U1"}"#);
    assert_eq!(g.with_user("U2"), g, "a membership partition has no user");
}

#[test]
fn locations_pack_partition_and_offset_and_refuse_what_does_not_fit() {
    let l = Loc::new(5, 123_456_789).unwrap();
    assert_eq!(l.get(), Some((5, 123_456_789)));
    assert_eq!(Loc::new(0, 0).unwrap().get(), Some((0, 0)));
    assert_eq!(Loc::NONE.get(), None);
    assert!(Loc::new(-1, 0).is_none() && Loc::new(0, -1).is_none());
    assert!(Loc::new(0xfff0, 0).is_none() && Loc::new(0, 1 << 48).is_none());
    assert_eq!(
        Loc::new(0xffef, (1 << 48) - 1).unwrap().get(),
        Some((0xffef, (1 << 48) - 1))
    );
}

#[test]
fn a_tombstone_is_keyed_as_the_items_upserts() {
    let p = Arc::new(PartitionId::Tasks {
        user: "bob@contoso.com".into(),
        list: "L\"1".into(),
    });
    let t = SourceRecord::tombstone(p.clone(), "T".into(), 4, "list-removed", false);
    assert_eq!(t.key, p.record_key("T"));
    assert_eq!((t.op, t.value, t.round), (Op::Delete, None, 4));
    assert_eq!(t.removed_reason.as_deref(), Some("list-removed"));
}
