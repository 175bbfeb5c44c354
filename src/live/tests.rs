//! The state structure on its own: bucket math, what a page writes, the seen set of a round
//! from scratch and what its end removes, journals and folds, and the state rebuilt from
//! its records (as after a crash) matching the one in memory.

use std::sync::Arc;

use bytes::Bytes;

use super::plan::keys_in;
use super::*;
use crate::source::{FullRound, Op, PartitionId, SourceRecord, StateWrite};

const CONN: &str = "conn";

fn part() -> Arc<PartitionId> {
    Arc::new(PartitionId::CalendarList {
        user: "a@contoso.com".into(),
    })
}

fn up(id: &str, content: &str) -> SourceRecord {
    let p = part();
    SourceRecord {
        key: p.record_key(id),
        partition: p,
        id: id.into(),
        value: Some(Bytes::from(format!(
            "{{\"id\":\"{id}\",\"v\":\"{content}\"}}"
        ))),
        op: Op::Upsert,
        round: 1,
        removed_reason: None,
        resync: false,
    }
}

fn del(id: &str) -> SourceRecord {
    SourceRecord::tombstone(part(), id.into(), 1, "deleted", false)
}

fn kh(id: &str) -> u64 {
    key_hash(&part().record_key(id))
}

/// A compacted topic in memory: the sink's part (slots filled with where each record
/// landed) and the worker's (apply once "committed").
#[derive(Default)]
struct Kafka {
    state: Vec<(Bytes, Option<Vec<u8>>)>,
    data_offset: i64,
    data: Vec<(Loc, Bytes)>,
}

impl Kafka {
    fn commit(&mut self, items: &mut LiveItems, d: Decided) -> Vec<Loc> {
        let locs: Vec<Loc> = d
            .records
            .iter()
            .map(|r| {
                self.data_offset += 1;
                let l = Loc::new(0, self.data_offset).unwrap();
                self.data.push((l, r.key.clone()));
                l
            })
            .collect();
        self.write(d.writes, &locs);
        items.apply(&d.plan, &locs);
        locs
    }

    /// The state records as the sink leaves them once it has written them again with where
    /// the records landed (a record that did not land keeps the item's previous location).
    fn write(&mut self, writes: Vec<StateWrite>, locs: &[Loc]) {
        for w in writes {
            if let Some(v) = &w.value {
                for s in &w.slots {
                    assert_eq!(&v[s.at..s.at + 8], &Loc::UNKNOWN.0.to_le_bytes());
                }
            }
            let value = w.filled(locs);
            self.state.push((w.key, value));
        }
    }

    fn load(&self) -> LiveItems {
        let mut l = Loader::new(CONN);
        for (k, v) in &self.state {
            l.add(k, v.as_deref()).unwrap();
        }
        l.finish().remove(&*part()).unwrap_or_default()
    }

    /// State bytes written since `since` messages.
    fn bytes_since(&self, since: usize) -> usize {
        self.state[since..]
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// Decides a page and commits it.
fn step(
    k: &mut Kafka,
    items: &mut LiveItems,
    records: Vec<SourceRecord>,
    full: Option<FullRound>,
) -> Vec<Loc> {
    let d = decide(items, records, full);
    k.commit(items, d)
}

fn decide(items: &LiveItems, records: Vec<SourceRecord>, full: Option<FullRound>) -> Decided {
    items.decide(CONN, &part(), records, full)
}

const DELTA: Option<FullRound> = None;
fn full(first: bool, last: bool) -> Option<FullRound> {
    Some(FullRound { first, last })
}

/// Entries without the seen flag, for comparing a reloaded state with the one in memory.
fn plain(items: &LiveItems) -> Vec<(u64, u64, Loc)> {
    items
        .entries()
        .iter()
        .map(|e| (e.key, e.content(), e.loc))
        .collect()
}

#[test]
fn buckets_are_the_top_bits_of_the_key_hash_so_doubling_splits_each_in_two() {
    assert_eq!(bucket_of(u64::MAX, 0), 0);
    assert_eq!(bucket_of(0x8000_0000_0000_0000, 1), 1);
    assert_eq!(bucket_of(0x7fff_ffff_ffff_ffff, 1), 0);
    assert_eq!(bucket_of(0xabcd_0000_0000_0000, 8), 0xab);
    for key in [0u64, 1, 0x1234_5678_9abc_def0, u64::MAX] {
        for bits in 0..MAX_BITS {
            let b = bucket_of(key, bits);
            assert!(b < 1 << bits);
            assert_eq!(bucket_of(key, bits + 1) / 2, b, "a split keeps the prefix");
        }
    }
}

#[test]
fn bucket_count_follows_the_item_count_without_flapping() {
    assert_eq!(next_bits(0, 0), 0);
    assert_eq!(next_bits(0, 256), 0, "one bucket holds up to 256");
    assert_eq!(next_bits(0, 257), 2, "then sized for ~128 each: 4 buckets");
    assert_eq!(next_bits(2, 1024), 2);
    assert_eq!(next_bits(2, 1025), 4);
    assert_eq!(
        next_bits(4, 512),
        4,
        "16 buckets of 32: still within bounds"
    );
    assert_eq!(next_bits(4, 511), 2, "below 32 each: merged");
    assert_eq!(next_bits(1, 10), 0);
    assert_eq!(next_bits(0, 100_000), 10, "~98 per bucket");
    // Wherever it lands, the average is within the bounds.
    for n in [1usize, 300, 5_000, 77_777, 1_000_000] {
        let b = next_bits(0, n);
        let per = n as f64 / (1u64 << b) as f64;
        assert!(per <= 256.0 && (b == 0 || per >= 32.0), "{n}: {per}");
    }
}

#[test]
fn an_upsert_is_written_only_when_its_content_changed_and_a_tombstone_only_when_live() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let d = decide(&s, vec![up("a", "1"), up("b", "1")], DELTA);
    assert_eq!(d.records.len(), 2);
    k.commit(&mut s, d);
    let d = decide(
        &s,
        vec![
            up("a", "1"),
            up("b", "2"),
            del("never-seen"),
            up("c", "1"),
            up("c", "1"),
        ],
        DELTA,
    );
    let ids: Vec<&str> = d.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["b", "c"],
        "a unchanged, c once, no tombstone for an unknown key"
    );
    assert_eq!((d.unchanged, d.not_live), (2, 1));
    k.commit(&mut s, d);
    let d = decide(&s, vec![del("a"), del("a"), up("a", "1")], DELTA);
    let ops: Vec<Op> = d.records.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        [Op::Delete, Op::Upsert],
        "the second tombstone is not live"
    );
    k.commit(&mut s, d);
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.get(kh("a")).unwrap().content(),
        content_hash(&up("a", "1").value.unwrap())
    );
}

#[test]
fn a_round_from_scratch_removes_what_it_did_not_see_at_its_end_only() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..10).map(|i| up(&format!("i{i}"), "1")).collect();
    step(&mut k, &mut s, all, full(true, true));
    assert_eq!(s.len(), 10);
    // A 410 later: i3 and i7 were deleted, i5 changed.
    let page1: Vec<SourceRecord> = (0..5).map(|i| up(&format!("i{i}"), "1")).collect();
    let page1: Vec<SourceRecord> = page1.into_iter().filter(|r| r.id != "i3").collect();
    let d = decide(&s, page1.clone(), full(true, false));
    assert!(d.records.is_empty(), "unchanged items write nothing");
    assert!(
        !d.writes.is_empty(),
        "but the attempt and what it saw are recorded"
    );
    k.commit(&mut s, d);
    let page2 = vec![up("i5", "2"), up("i6", "1"), up("i8", "1"), up("i9", "1")];
    let upserted: Vec<u64> = page2.iter().map(|r| key_hash(&r.key)).collect();
    let mut gone: Vec<u64> = s.unseen(&upserted, false).iter().map(|e| e.key).collect();
    gone.sort_unstable();
    let mut want = vec![kh("i3"), kh("i7")];
    want.sort_unstable();
    assert_eq!(gone, want);
    // The worker reads their keys back; the reader adds the tombstones.
    let mut records = page2;
    records.extend([del("i3"), del("i7")]);
    let d = decide(&s, records, full(false, true));
    let written: Vec<(Op, &str)> = d.records.iter().map(|r| (r.op, r.id.as_str())).collect();
    assert_eq!(
        written,
        [(Op::Upsert, "i5"), (Op::Delete, "i3"), (Op::Delete, "i7")]
    );
    k.commit(&mut s, d);
    assert_eq!(s.len(), 8);
    assert!(!s.tracking(), "the round is over");
    assert_eq!(s.journals(), 0, "its end folded the journals");
    assert_eq!(plain(&k.load()), plain(&s));
}

#[test]
fn unseen_entries_without_a_record_are_dropped_at_the_round_end_anyway() {
    let mut k = Kafka::default();
    let mut s = LiveItems::seeded([(kh("x"), 1, Loc::NONE), (kh("y"), 2, Loc::NONE)]);
    let d = decide(&s, vec![up("y", "new")], full(true, true));
    assert_eq!(d.records.len(), 1);
    k.commit(&mut s, d);
    assert_eq!(s.len(), 1, "x is gone from the state");
    assert!(s.get(kh("y")).is_some());
}

#[test]
fn a_round_whose_start_is_unknown_removes_nothing() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    step(&mut k, &mut s, vec![up("a", "1"), up("b", "1")], DELTA);
    // Resumed mid-way through a round from scratch with no attempt on record.
    assert!(s.unseen(&[], false).is_empty());
    step(&mut k, &mut s, vec![up("a", "1")], full(false, true));
    assert_eq!(s.len(), 2);
}

#[test]
fn a_crash_mid_round_loses_nothing_the_round_has_seen() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..600).map(|i| up(&format!("i{i}"), "1")).collect();
    for (n, chunk) in all.chunks(100).enumerate() {
        let last = n == 5;
        step(&mut k, &mut s, chunk.to_vec(), full(n == 0, last));
    }
    assert_eq!(s.bits(), 3, "600 items: 8 buckets of 75");
    // A new round from scratch: two pages, then the process dies.
    for (n, chunk) in all[..300].chunks(150).enumerate() {
        let d = decide(&s, chunk.to_vec(), full(n == 0, false));
        assert!(d.records.is_empty());
        k.commit(&mut s, d);
    }
    let mut back = k.load();
    assert_eq!(back, s, "the same entries, attempt and seen flags");
    // It resumes: the rest of the round, minus i599 (deleted meanwhile).
    let rest: Vec<SourceRecord> = all[300..599].to_vec();
    let upserted: Vec<u64> = rest.iter().map(|r| key_hash(&r.key)).collect();
    let gone: Vec<u64> = back
        .unseen(&upserted, false)
        .iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        gone,
        vec![kh("i599")],
        "only the deleted item: nothing seen was forgotten"
    );
    let mut records = rest;
    records.push(del("i599"));
    let d = decide(&back, records, full(false, true));
    assert_eq!(d.records.len(), 1);
    k.commit(&mut back, d);
    assert_eq!(back.len(), 599);
}

#[test]
fn a_restarted_attempt_forgets_what_the_abandoned_one_saw() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..4).map(|i| up(&format!("i{i}"), "1")).collect();
    step(&mut k, &mut s, all.clone(), full(true, true));
    step(&mut k, &mut s, all.clone(), full(true, false));
    // A 410 mid-round: a new attempt, in which i0 is gone.
    step(&mut k, &mut s, all[1..2].to_vec(), full(true, false));
    let back = k.load();
    assert_eq!(back, s);
    let mut gone: Vec<u64> = back
        .unseen(&[kh("i2"), kh("i3")], false)
        .iter()
        .map(|e| e.key)
        .collect();
    gone.sort_unstable();
    assert_eq!(gone, vec![kh("i0")]);
}

#[test]
fn delta_commits_append_journals_and_fold_only_the_buckets_they_touched() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..5000).map(|i| up(&format!("i{i}"), "1")).collect();
    for (n, chunk) in all.chunks(100).enumerate() {
        step(&mut k, &mut s, chunk.to_vec(), full(n == 0, n == 49));
    }
    assert_eq!(s.bits(), 6, "5,000 items: 64 buckets of ~78");
    assert_eq!(s.journals(), 0);
    // One change per commit: a journal each, a few dozen bytes.
    let before = k.state.len();
    let d = decide(&s, vec![up("i1", "2")], DELTA);
    assert_eq!(d.writes.len(), 1, "one journal record");
    assert!(d.writes[0].value.as_ref().unwrap().len() < 64);
    k.commit(&mut s, d);
    assert_eq!(s.journals(), 1);
    // Until there are 256 journals (or they hold a quarter of the items, 1,250 changes):
    // then a fold rewrites the buckets they touched and removes the journals, in the same
    // transaction.
    let mut folds = 0;
    for i in 0..1100 {
        let id = format!("i{}", i % 40);
        let d = decide(&s, vec![up(&id, &format!("v{i}"))], DELTA);
        if d.plan.folds() {
            folds += 1;
            let buckets = d
                .writes
                .iter()
                .filter(|w| String::from_utf8_lossy(&w.key).contains("\"b\""))
                .count();
            let touched: std::collections::HashSet<usize> = (0..40)
                .map(|i| bucket_of(kh(&format!("i{i}")), 6))
                .collect();
            assert_eq!(
                buckets,
                touched.len(),
                "only the buckets the changes touched"
            );
        }
        k.commit(&mut s, d);
    }
    assert_eq!(folds, 4, "every 256 commits of one change");
    assert_eq!(plain(&k.load()), plain(&s));
    // About a hundred bytes a change, all told (the records are ~30 bytes here; events are ~5 KB).
    let per_change = k.bytes_since(before) / 1101;
    println!("{per_change} state bytes per change");
    assert!(per_change < 400, "{per_change} state bytes per change");
}

#[test]
fn a_new_bucket_count_rewrites_every_bucket_and_removes_the_unused_ones() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..1000).map(|i| up(&format!("i{i}"), "1")).collect();
    step(&mut k, &mut s, all.clone(), full(true, true));
    assert_eq!(s.bits(), 3);
    for b in 0..8 {
        assert!(!keys_in(&s, b).is_empty());
    }
    // Most items deleted in a round from scratch: down to one bucket.
    let d = decide(&s, all[..10].to_vec(), full(true, true));
    let mut tombstoned: Vec<String> = d
        .writes
        .iter()
        .filter(|w| w.value.is_none())
        .map(|w| String::from_utf8_lossy(&w.key).into_owned())
        .collect();
    tombstoned.sort();
    assert_eq!(tombstoned.len(), 7, "buckets 1 to 7: {tombstoned:?}");
    assert!(d
        .writes
        .iter()
        .any(|w| String::from_utf8_lossy(&w.key).ends_with("\"meta\"]")));
    k.commit(&mut s, d);
    assert_eq!((s.bits(), s.len()), (0, 10));
    assert_eq!(k.load(), s);
}

#[test]
fn locations_come_from_where_the_records_landed_or_stay_when_they_did_not() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let locs = step(&mut k, &mut s, vec![up("a", "1")], DELTA);
    assert_eq!(s.get(kh("a")).unwrap().loc, locs[0]);
    assert_eq!(
        k.load().get(kh("a")).unwrap().loc,
        locs[0],
        "the slot was filled"
    );
    // The next version is dead-lettered (never reaches the topic): the old record stays live.
    let d = decide(&s, vec![up("a", "2")], DELTA);
    k.write(d.writes.clone(), &[Loc::NONE]);
    s.apply(&d.plan, &[Loc::NONE]);
    assert_eq!(s.get(kh("a")).unwrap().loc, locs[0]);
    assert_eq!(k.load().get(kh("a")).unwrap().loc, locs[0]);
    assert_eq!(
        s.get(kh("a")).unwrap().content(),
        content_hash(&up("a", "2").value.unwrap()),
        "its content counts as written: it is not sent again"
    );
}

#[test]
fn a_crash_before_the_locations_are_written_leaves_them_unknown_not_wrong() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let first = step(&mut k, &mut s, vec![up("a", "1")], DELTA);
    // Changed again; its transaction commits, the process dies before the sink wrote the
    // state records again with where the record landed: they say "unknown".
    let d = decide(&s, vec![up("a", "2"), up("b", "1")], DELTA);
    k.state
        .extend(d.writes.into_iter().map(|w| (w.key, w.value)));
    let back = k.load();
    assert_eq!(
        back.get(kh("a")).unwrap().loc,
        Loc::UNKNOWN,
        "not {:?}",
        first[0]
    );
    assert_eq!(back.get(kh("b")).unwrap().loc, Loc::UNKNOWN);
    assert_eq!(
        back.get(kh("a")).unwrap().content(),
        content_hash(&up("a", "2").value.unwrap()),
        "the content is known: nothing is written again"
    );
    // A round from scratch that no longer returns them still tombstones them (the worker
    // finds their keys by reading the topic, as an upgraded partition's state is built).
    let gone = back.unseen(&[], true);
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|e| e.loc == Loc::UNKNOWN));
}

#[test]
fn a_new_partition_writes_its_meta_with_its_first_commit_even_when_empty() {
    let s = LiveItems::new();
    let d = decide(&s, Vec::new(), full(true, true));
    assert!(d.records.is_empty());
    assert_eq!(d.writes.len(), 1);
    assert!(String::from_utf8_lossy(&d.writes[0].key).ends_with("\"meta\"]"));
    let mut s2 = s.clone();
    s2.apply(&d.plan, &[]);
    assert!(
        decide(&s2, Vec::new(), DELTA).writes.is_empty(),
        "then nothing to write"
    );
}

#[test]
fn a_seeded_state_is_written_whole_by_its_first_commit() {
    let mut k = Kafka::default();
    let items: Vec<(u64, u64, Loc)> = (0..700)
        .map(|i| (kh(&format!("i{i}")), 7, Loc::new(1, i).unwrap()))
        .collect();
    let mut s = LiveItems::seeded(items);
    let d = decide(&s, vec![up("i1", "x")], full(true, false));
    let buckets = d
        .writes
        .iter()
        .filter(|w| String::from_utf8_lossy(&w.key).contains("\"b\""))
        .count();
    assert_eq!(buckets, 1 << s.bits());
    k.commit(&mut s, d);
    let back = k.load();
    assert_eq!(
        back, s,
        "buckets, meta and the journal of what the round saw"
    );
    assert!(back.tracking());
}

#[test]
fn removing_a_partitions_state_tombstones_every_record_of_it() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..300).map(|i| up(&format!("i{i}"), "1")).collect();
    step(&mut k, &mut s, all, full(true, true));
    step(&mut k, &mut s, vec![up("i0", "2")], DELTA);
    k.write(s.removal(CONN, &part()), &[]);
    let mut l = Loader::new(CONN);
    for (key, v) in &k.state {
        l.add(key, v.as_deref()).unwrap();
    }
    assert!(l.finish().is_empty());
}

#[test]
fn state_keys_round_trip_and_other_connectors_are_skipped() {
    let p = part();
    for which in [StateKey::Meta, StateKey::Bucket(7), StateKey::Journal(0)] {
        let key = encode_key(CONN, &p, which);
        assert_eq!(
            decode_key(&key).unwrap(),
            (CONN.to_string(), (*p).clone(), which)
        );
    }
    assert_eq!(
        &encode_key(CONN, &p, StateKey::Bucket(3))[..],
        br#"["conn",{"kind":"calendar_list","user":"a@contoso.com"},"b",3]"#
    );
    assert!(decode_key(b"[\"conn\",{}]").is_err());
    let mut l = Loader::new("other");
    let d = decide(&LiveItems::new(), vec![up("a", "1")], DELTA);
    for w in d.writes {
        l.add(&w.key, w.value.as_deref()).unwrap();
    }
    assert!(l.finish().is_empty());
    let mut l = Loader::new(CONN);
    assert!(l
        .add(
            &encode_key(CONN, &p, StateKey::Bucket(0)),
            Some(b"B\x01short")
        )
        .is_err());
    assert!(l
        .add(&encode_key(CONN, &p, StateKey::Journal(0)), Some(b"J\x01"))
        .is_err());
    assert!(l
        .add(&encode_key(CONN, &p, StateKey::Meta), Some(b"M\x02\x00"))
        .is_err());
}

/// 100,000 items: 24 bytes each in memory, by `size_of` and the vector's capacity (the
/// integration test `tests/state_memory.rs` counts real allocations).
#[test]
fn memory_per_item_is_24_bytes() {
    assert_eq!(std::mem::size_of::<Entry>(), 24);
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    let all: Vec<SourceRecord> = (0..100_000)
        .map(|i| up(&format!("item-{i}"), "1"))
        .collect();
    for (n, chunk) in all.chunks(1000).enumerate() {
        step(&mut k, &mut s, chunk.to_vec(), full(n == 0, n == 99));
    }
    assert_eq!(s.len(), 100_000);
    let per_item = s.heap_bytes() as f64 / s.len() as f64;
    assert!(per_item <= 24.1, "{per_item} bytes per item");
    let back = k.load();
    assert!(back.heap_bytes() as f64 / back.len() as f64 <= 24.1);
}

#[test]
fn a_loader_keeping_some_partitions_never_decodes_the_others_values() {
    let mut k = Kafka::default();
    let mut s = LiveItems::new();
    step(
        &mut k,
        &mut s,
        vec![up("a", "1"), up("b", "1")],
        full(true, true),
    );
    let other = PartitionId::CalendarList {
        user: "b@contoso.com".into(),
    };
    let mine = (*part()).clone();
    let mut l = Loader::new(CONN).keeping(move |p| *p == mine);
    for (key, v) in &k.state {
        l.add(key, v.as_deref()).unwrap();
    }
    // Another partition's garbage is skipped by its key, not refused by its value.
    l.add(
        &encode_key(CONN, &other, StateKey::Bucket(0)),
        Some(b"B\x01short"),
    )
    .unwrap();
    l.add(&encode_key(CONN, &other, StateKey::Meta), Some(b"?"))
        .unwrap();
    let loaded = l.finish();
    assert_eq!(loaded.len(), 1, "{:?}", loaded.keys());
    assert_eq!(loaded[&*part()], s);
}
