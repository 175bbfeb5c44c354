//! Memory per tracked item of the reconciliation state (`live/`), counted by a global
//! allocator that adds up what is allocated and freed: a 100,000-item partition synced in
//! pages of 1,000, then the same state rebuilt from its state-topic records as at a start.
//! The number is printed (`--nocapture`) and recorded in BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use graph_cdc::live::{LiveItems, Loader};
use graph_cdc::source::{FullRound, Loc, Op, PartitionId, SourceRecord, StateWrite};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::SeqCst);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ITEMS: usize = 100_000;
const PAGE: usize = 1_000;

/// A page of upserts with Graph-sized ids (~150 bytes) and small values.
fn page(p: &Arc<PartitionId>, n: usize) -> Vec<SourceRecord> {
    (n * PAGE..(n + 1) * PAGE)
        .map(|i| {
            let id = format!("AAMkAGI2TG93AAA{i:0>135}");
            SourceRecord {
                key: p.record_key(&id),
                partition: p.clone(),
                value: Some(Bytes::from(format!("{{\"id\":\"{id}\",\"n\":{i}}}"))),
                id,
                op: Op::Upsert,
                round: 1,
                removed_reason: None,
                resync: false,
            }
        })
        .collect()
}

/// Syncs every page into `s`; `keep` receives the state records, slots filled.
fn sync(s: &mut LiveItems, p: &Arc<PartitionId>, mut keep: impl FnMut(StateWrite)) {
    let pages = ITEMS / PAGE;
    let mut offset = 0;
    for n in 0..pages {
        let full = FullRound {
            first: n == 0,
            last: n == pages - 1,
        };
        let d = s.decide("conn", p, page(p, n), Some(full));
        let locs: Vec<Loc> = d
            .records
            .iter()
            .map(|_| {
                offset += 1;
                Loc::new(0, offset).unwrap()
            })
            .collect();
        s.apply(&d.plan, &locs);
        for w in d.writes {
            keep(StateWrite {
                value: w.filled(&locs),
                ..w
            });
        }
    }
}

#[test]
fn a_100000_item_partition_holds_at_most_32_bytes_per_item() {
    let p = Arc::new(PartitionId::CalendarList {
        user: "a@contoso.com".into(),
    });
    // Synced: what a worker holds after an initial sync.
    let before = HELD.load(Ordering::SeqCst);
    let mut s = LiveItems::new();
    sync(&mut s, &p, drop);
    let synced = HELD.load(Ordering::SeqCst) - before;
    assert_eq!(s.len(), ITEMS);
    // Loaded: what a worker holds after reading the state topic at start.
    let mut records = Vec::new();
    sync(&mut LiveItems::new(), &p, |w| {
        records.push((w.key, w.value))
    });
    let before = HELD.load(Ordering::SeqCst);
    let mut loader = Loader::new("conn");
    for (k, v) in &records {
        loader.add(k, v.as_deref()).unwrap();
    }
    let loaded = loader.finish();
    let held = HELD.load(Ordering::SeqCst) - before;
    let items = &loaded[&*p];
    assert_eq!(items.len(), ITEMS);
    // The map, its one key and value are counted too.
    let per = |b: isize| b as f64 / ITEMS as f64;
    println!(
        "reconciliation state of {ITEMS} items: {:.2} bytes per item after a sync, {:.2} after loading ({} state records, {} bytes)",
        per(synced),
        per(held),
        records.len(),
        records
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
    );
    assert!(per(synced) <= 32.0, "{} bytes per item", per(synced));
    assert!(per(held) <= 32.0, "{} bytes per item", per(held));
}
