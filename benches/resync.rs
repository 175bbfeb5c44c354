//! Issue 12's comparison: a full resync of every partition (every sync state lost), with
//! today's reconciliation state against the whole-topic key scan of the code before it,
//! both measured in the same run.
//!
//! ```text
//! cargo bench --bench resync                                        # 1,000 × 1,000 (~7 min)
//! RESYNC_PARTITIONS=20 RESYNC_ITEMS=100 cargo bench --bench resync  # a quick try
//! ```
//!
//! One process: the simulator (on a runtime of its own, threads `sim`), an in-process worker
//! and, unless `GRAPH_CDC_TEST_KAFKA` names one, a real Kafka broker started for the run.
//!
//! 1. `P` users with `I` single events each, all in one window; the worker syncs the `P`
//!    calendar views from scratch: every item written once, which is also what the old
//!    resync re-emitted.
//! 2. A few changes, then every state token is evicted: each partition's next poll gets a
//!    `410` and restarts from the initial request. Measured until every partition has ended
//!    that round and is back on a deltaLink: wall time, records and state written, CPU, peak
//!    resident memory.
//! 3. Baseline, worker stopped: the old reconciliation's scan (the data topic read whole,
//!    `read_committed`, keeping the keys with one partition's prefix), timed `S` times; the
//!    old code ran one per partition.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use graph_cdc::live::{key_hash, LiveItems};
use graph_cdc::metrics::metrics;
use graph_cdc::sink::readback::read_to_end;
use graph_cdc::sink::SinkOptions;
use graph_cdc::source::{Op, PartitionId, PartitionKind, SourceOffset};
use graph_cdc::worker::WorkerStatus;
use graph_cdc_testkit::broker::KafkaBroker;
use graph_sim::generate::random_event;
use rdkafka::message::Message;

mod common;
use common::*;

// ---------------------------------------------------------------------------------------
// Heap bytes live on the calling thread, and their peak: what a scan keeps is allocated on
// the thread that polls its consumer (librdkafka's own buffers are not Rust allocations;
// resident memory covers them).

struct PerThread;

thread_local! {
    // Const-initialised, no destructor: usable from inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        account(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        account(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        account(n as isize - l.size() as isize);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: PerThread = PerThread;

/// Starts counting this thread's heap from zero.
fn heap_reset() {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
}

/// (bytes live now, peak) on this thread since [`heap_reset`].
fn heap() -> (isize, isize) {
    (LIVE.with(Cell::get), PEAK.with(Cell::get))
}

// ---------------------------------------------------------------------------------------
// Process measures.

/// A `kB` field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Resets the peak resident size (`VmHWM`) to the current one, so that a phase's peak can
/// be read at its end.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM (Linux 4.0+)");
}

/// CPU seconds (user + system) of the whole process, exited threads included (each scan's
/// consumer threads end with it).
fn cpu_process() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// CPU seconds of the simulator's threads (they live as long as the run).
fn cpu_sim() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut sim = 0.0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("sim") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        sim += f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    }
    sim / tick
}

/// CPU seconds of the connector's side: the process less the simulator.
fn cpu_connector() -> f64 {
    cpu_process() - cpu_sim()
}

// ---------------------------------------------------------------------------------------
// The connector's counters, for its calendar views.

fn written(op: Op) -> u64 {
    let view = PartitionKind::CalendarView.as_str();
    metrics()
        .records_written
        .with_label_values(&[view, op.as_str()])
        .get()
}

fn bytes_written() -> u64 {
    let view = PartitionKind::CalendarView.as_str();
    metrics().bytes_written.with_label_values(&[view]).get()
}

fn skipped_unchanged() -> u64 {
    let view = PartitionKind::CalendarView.as_str();
    metrics()
        .records_skipped
        .with_label_values(&[view, "unchanged"])
        .get()
}

// ---------------------------------------------------------------------------------------
// Kafka read back, as a `read_committed` consumer sees it (`graph_cdc::sink::readback`).

/// What a topic holds.
#[derive(Default, Debug, Clone, Copy)]
struct Size {
    records: u64,
    tombstones: u64,
    /// Of keys and values.
    bytes: u64,
    /// Keys live at the end.
    live: usize,
}

fn read_topic(opts: &SinkOptions, topic: &str) -> Size {
    let (mut size, mut live) = (Size::default(), HashSet::new());
    let group = format!("{}-bench-read", opts.connector);
    let timeout = Duration::from_secs(600);
    read_to_end(&opts.consumer_config(), &group, topic, timeout, |m| {
        let key = m.key().unwrap_or_default();
        size.records += 1;
        size.bytes += (key.len() + m.payload().map_or(0, <[u8]>::len)) as u64;
        if m.payload().is_some() {
            live.insert(key_hash(key));
        } else {
            size.tombstones += 1;
            live.remove(&key_hash(key));
        }
    })
    .expect("reading a topic");
    size.live = live.len();
    size
}

/// The scan of the code before issue 12 (`sink::scan::live_keys` at `aa2bb1c`), as it was:
/// the whole topic read to its end, keeping the live keys that start with `prefix`.
fn old_live_keys(opts: &SinkOptions, topic: &str, prefix: &[u8]) -> HashSet<Vec<u8>> {
    let mut live = HashSet::new();
    let group = format!("{}-resync-scan", opts.connector);
    let timeout = Duration::from_secs(600);
    read_to_end(&opts.consumer_config(), &group, topic, timeout, |m| {
        let Some(key) = m.key().filter(|k| k.starts_with(prefix)) else {
            return;
        };
        if m.payload().is_some() {
            live.insert(key.to_vec());
        } else {
            live.remove(key);
        }
    })
    .expect("scanning the data topic");
    live
}

// ---------------------------------------------------------------------------------------
// Setup and progress.

fn view(user: &str) -> PartitionId {
    PartitionId::CalendarView {
        user: user.into(),
        calendar: "primary".into(),
        window: window(),
    }
}

/// The calendar views the worker tracks, as it names them (a configured user may be
/// replaced by its object id), with their committed offsets.
fn views(status: &WorkerStatus) -> Vec<(PartitionId, SourceOffset)> {
    let offsets = status.offsets.lock();
    let views = offsets
        .iter()
        .filter(|(p, _)| p.kind() == PartitionKind::CalendarView);
    views.map(|(p, o)| ((**p).clone(), o.clone())).collect()
}

/// Partitions whose committed offset is a deltaLink (not mid-round, not resyncing) of a
/// round begun from scratch at `since` (Unix seconds) or later (any, if `None`).
fn on_delta_links(status: &WorkerStatus, since: Option<i64>) -> usize {
    let views = views(status);
    let done = views.iter().map(|(_, o)| o);
    let done = done.filter(|o| !o.resync && o.link.is_some() && o.link == o.delta_link);
    done.filter(|o| since.is_none_or(|s| o.full_at.is_some_and(|f| f >= s)))
        .count()
}

/// Waits until `n` partitions are [`on_delta_links`]; calls `tick` at each look.
fn wait_delta_links(
    what: &str,
    status: &WorkerStatus,
    n: usize,
    since: Option<i64>,
    mut tick: impl FnMut(),
) {
    let t0 = Instant::now();
    let mut shown = Instant::now();
    loop {
        tick();
        let done = on_delta_links(status, since);
        if done >= n {
            return;
        }
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            secs < 1800.0,
            "{what}: {done} of {n} partitions after 30 min"
        );
        if shown.elapsed() > Duration::from_secs(15) {
            println!("    {what}: {done} of {n} partitions, {secs:.0} s");
            shown = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(default)
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------

/// The rounds from scratch after every partition's `410`.
struct Resync {
    secs: f64,
    cpu: f64,
    /// Records the connector counted, by op.
    upserts: u64,
    deletes: u64,
    /// Written to the state topic.
    state_mib: f64,
    /// The resident peak's rise over the size before, MiB.
    peak_up: f64,
}

/// `change()`, then every state token evicted; measured until every partition is back on
/// a deltaLink (and printed).
fn resync(
    sim: &Sim,
    w: &InProcessWorker,
    n: usize,
    opts: &SinkOptions,
    change: impl FnOnce(),
) -> Resync {
    // Rounds from scratch are told apart by `full_at` (whole seconds): the eviction must
    // come a second after the initial sync's rounds began.
    let views = views(&w.status);
    let last = views
        .iter()
        .filter_map(|(_, o)| o.full_at)
        .max()
        .unwrap_or(0);
    while chrono::Utc::now().timestamp() <= last {
        std::thread::sleep(Duration::from_millis(50));
    }
    let evicted_at = chrono::Utc::now().timestamp();
    let state0 = read_topic(opts, &opts.state_topic);
    let kind = PartitionKind::CalendarView.as_str();
    // Upserts, tombstones, upserts left out as unchanged, rounds restarted after a 410.
    let counts = || {
        let restarted = metrics().resyncs.with_label_values(&[kind]).get();
        let ops = [written(Op::Upsert), written(Op::Delete)];
        [ops[0], ops[1], skipped_unchanged(), restarted]
    };
    let c0 = counts();
    let gone = || sim.server.state.stats.lock().answered(410);
    let gone0 = gone();
    let rss = status_mib("VmRSS:");
    reset_peak();
    let (cpu0, sim0) = (cpu_connector(), cpu_sim());
    let t = Instant::now();
    change();
    sim.server.state.evict_tokens(None).expect("eviction");
    let mut all_gone = f64::NAN;
    wait_delta_links("resync", &w.status, n, Some(evicted_at), || {
        if all_gone.is_nan() && gone() - gone0 >= n as u64 {
            all_gone = t.elapsed().as_secs_f64();
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let (cpu, sim_cpu) = (cpu_connector() - cpu0, cpu_sim() - sim0);
    let peak_up = status_mib("VmHWM:") - rss;
    let c = counts();
    let [upserts, deletes, unchanged, restarted] = [0, 1, 2, 3].map(|i| c[i] - c0[i]);
    let gone = gone() - gone0;
    // Records are committed before the offsets that show them done: all are in.
    let state1 = read_topic(opts, &opts.state_topic);
    let state_records = state1.records - state0.records;
    let state_bytes = (state1.bytes - state0.bytes) as f64;
    let state_mib = mib(state_bytes);
    println!(
        "  resync: {gone} answers 410, {restarted} rounds restarted; all partitions answered \
         after {all_gone:.1} s, all back on deltaLinks after {secs:.1} s\n    \
         counted {upserts} upserts and {deletes} tombstones, {unchanged} upserts left out as \
         unchanged; state topic: {state_records} records, {state_mib:.1} MiB\n    \
         connector CPU {cpu:.1} s, simulator CPU {sim_cpu:.1} s; resident {rss:.0} MiB before, \
         peak +{peak_up:.0} MiB"
    );
    Resync {
        secs,
        cpu,
        upserts,
        deletes,
        state_mib,
        peak_up,
    }
}

/// In the simulator, under one lock: `n` events updated, `n` deleted, `n` created, each in
/// a partition of its own. Returns (upserts, tombstones) the resync should write.
fn make_changes(sim: &Sim, users: &[String], n: usize) -> (u64, u64) {
    let mut store = sim.server.state.store.write();
    let (mut upserts, mut deletes) = (0, 0);
    for (i, u) in users.iter().enumerate().take(3 * n) {
        let uid = store.user_id(u).expect("user").to_string();
        let first = {
            let usr = &store.users[&uid];
            let mut live = usr.events[&usr.primary_calendar].live();
            live.next().expect("an event").data.id.clone()
        };
        match i / n {
            0 => {
                let subject = Some(format!("changed before the resync {i}"));
                let patch = graph_sim::model::EventPatch {
                    subject,
                    ..Default::default()
                };
                store.update_event(&uid, &first, patch).expect("update");
                upserts += 1;
            }
            1 => {
                store.delete_event(&uid, &first).expect("delete");
                deletes += 1;
            }
            _ => {
                let ev = random_event(&mut rand::rng(), window_start(), WINDOW_DAYS, 0.0, false);
                store.create_event(&uid, "primary", ev).expect("create");
                upserts += 1;
            }
        }
    }
    (upserts, deletes)
}

/// The old scan for partition `p`, worker stopped (nothing else runs): seconds, CPU
/// seconds, keys found, heap bytes of the key set kept and their peak while scanning, and
/// the rise of the resident peak (MiB).
fn scan(opts: &SinkOptions, p: &PartitionId) -> [f64; 6] {
    let prefix = p.key_prefix();
    let rss = status_mib("VmRSS:");
    reset_peak();
    let cpu0 = cpu_process();
    heap_reset();
    let t = Instant::now();
    let keys = old_live_keys(opts, &opts.topics.events, &prefix);
    let secs = t.elapsed().as_secs_f64();
    let (kept, peak) = heap();
    let cpu = cpu_process() - cpu0;
    let rise = status_mib("VmHWM:") - rss;
    [secs, cpu, keys.len() as f64, kept as f64, peak as f64, rise]
}

fn main() {
    let parts_n = env_usize("RESYNC_PARTITIONS", 1000);
    let items = env_usize("RESYNC_ITEMS", 1000);
    let scans = env_usize("RESYNC_SCANS", 5).max(1);
    assert!(parts_n >= 3, "a partition for each kind of change");
    // Updates, deletes and creates made just before the 410s (so many of each).
    let changes = 10.min(parts_n / 3);
    let poll = Duration::from_secs(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("worker")
        .enable_all()
        .build()
        .expect("runtime");
    let mut own = None;
    let bootstrap = match std::env::var(graph_cdc_testkit::broker::TEST_KAFKA_ENV) {
        Ok(b) if !b.trim().is_empty() => b,
        _ => {
            let b = KafkaBroker::start().expect("a Kafka broker");
            let s = b.bootstrap();
            own = Some(b);
            s
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let total = parts_n * items;
    println!(
        "resync: {parts_n} calendar views x {items} events, {cores} cores, broker {bootstrap}, \
         poll interval {} s",
        poll.as_secs()
    );

    let sim = start_sim();
    let t = Instant::now();
    let users = populate(&sim, "rs", parts_n, items, 0, 12);
    let (seed_s, seed_rss) = (t.elapsed().as_secs_f64(), status_mib("VmRSS:"));
    println!("  seeded in {seed_s:.1} s; process resident {seed_rss:.0} MiB");
    let configured = users.iter().map(|u| view(u)).collect();
    let mut spec = harness::worker_spec(&sim.server.url(), &bootstrap, configured);
    spec.poll_interval = poll;
    let opts = spec.sink.clone();

    // 1. The initial sync: every item written once, as the old resync wrote them again.
    // Timed from its first commit, as section 1 of BENCHMARKS.md does: the worker's start
    // (transactions, offsets, state) is no part of a resync.
    let (up0, by0) = (written(Op::Upsert), bytes_written());
    let t = Instant::now();
    let w = InProcessWorker::start(rt.handle(), spec);
    let mut first = None;
    wait_delta_links("initial sync", &w.status, parts_n, None, || {
        if first.is_none() && written(Op::Upsert) > up0 {
            first = Some((Instant::now(), cpu_connector()));
        }
    });
    let (t1, cpu1) = first.expect("a first commit");
    let (sync_s, sync_cpu) = (t1.elapsed().as_secs_f64(), cpu_connector() - cpu1);
    let (started, sync_records) = ((t1 - t).as_secs_f64(), written(Op::Upsert) - up0);
    let sync_mib = mib((bytes_written() - by0) as f64);
    let rate = sync_records as f64 / sync_s;
    println!(
        "  initial sync: first commit {started:.1} s after the worker started, then {sync_records} \
         records, {sync_mib:.0} MiB of keys and values, in {sync_s:.1} s ({rate:.0} records/s), \
         connector CPU {sync_cpu:.1} s"
    );
    assert_eq!(sync_records, total as u64, "every item written once");
    // The partitions as the worker names them: their keys' prefixes.
    let parts: Vec<PartitionId> = views(&w.status).into_iter().map(|(p, _)| p).collect();
    assert_eq!(parts.len(), parts_n, "the partitions tracked");

    // 2. Every partition's 410, and the rounds from scratch that follow.
    let mut expected = (0, 0);
    let r = resync(&sim, &w, parts_n, &opts, || {
        expected = make_changes(&sim, &users, changes);
    });
    let Resync {
        secs,
        cpu,
        upserts,
        deletes,
        state_mib,
        peak_up,
    } = r;
    if let Err(e) = w.stop_blocking(&rt) {
        eprintln!("worker ended: {e}");
    }
    // The topic was new: what is beyond the initial sync's records came with the resync.
    let data = read_topic(&opts, &opts.topics.events);
    let new_records = data.records - sync_records;
    let (live, tombstones, (want_up, want_del)) = (data.live, data.tombstones, expected);
    println!(
        "  data topic: {new_records} records from the resync, {tombstones} of them tombstones \
         (changes made: {want_up} to upsert, {want_del} to delete); {live} keys live (expected {total})"
    );
    assert_eq!((upserts, deletes), expected, "only the changes");
    assert_eq!(new_records, upserts + deletes, "counted = written");
    // As many created as deleted.
    assert_eq!(live, total, "the data topic holds what the simulator does");

    // 3. The baseline, worker stopped: the old scan.
    println!("  baseline: the pre-issue-12 scan of the whole data topic for one partition's keys");
    let mut sum = [0.0; 6];
    for k in 0..scans {
        let m = scan(&opts, &parts[k * parts_n / scans]);
        let [s, c, keys, kept, peak] = [m[0], m[1], m[2], m[3] / 1024.0, m[4] / 1024.0];
        println!(
            "    scan {}: {s:.2} s, CPU {c:.2} s, {keys} keys kept in {kept:.0} KiB of heap \
             (peak {peak:.0} KiB), resident peak +{:.0} MiB",
            k + 1,
            m[5]
        );
        assert!((keys - items as f64).abs() <= 1.0, "the partition's keys");
        sum.iter_mut()
            .zip(m)
            .for_each(|(a, b)| *a += b / scans as f64);
    }
    let [scan_s, scan_cpu, _, kept, heap_peak, scan_rise] = sum;
    let (kept_kib, heap_peak_kib) = (kept / 1024.0, heap_peak / 1024.0);

    // Today's state for one partition, built from what its topic holds: the same entries
    // a sync leaves in memory.
    let per_item = {
        let prefix = parts[parts_n / 2].key_prefix();
        let timeout = Duration::from_secs(600);
        let live =
            graph_cdc::sink::scan::live_records(&opts, &opts.topics.events, &prefix, timeout)
                .expect("the partition's live records");
        let state = LiveItems::seeded(live.iter().map(|(k, (h, l))| (key_hash(k), *h, *l)));
        state.heap_bytes() as f64 / state.len().max(1) as f64
    };
    let state_all_mib = mib(per_item * total as f64);

    let (scans_s, scans_cpu) = (scan_s * parts_n as f64, scan_cpu * parts_n as f64);
    // Every item the round returned, and a tombstone for each it no longer returned.
    let old_records = total as u64 + expected.1;
    let wall = secs / (sync_s + scans_s);
    let wall_scans = secs / scans_s;
    let cpu_ratio = cpu / (sync_cpu + scans_cpu);
    let records = new_records as f64 / old_records as f64;
    // Per item of a partition: the state kept for good against the old scan's key set.
    let old_per_key = kept / items as f64;
    let memory = per_item / old_per_key;
    println!(
        "RESULT resync of {parts_n} partitions x {items} events ({cores} cores)\n\
         RESULT   state (now): {secs:.1} s, connector CPU {cpu:.1} s, {new_records} records for \
         {} changes, state topic {state_mib:.1} MiB, resident peak +{peak_up:.0} MiB; \
         state kept {per_item:.1} B/item, {state_all_mib:.1} MiB in all\n\
         RESULT   old scan: {scan_s:.2} s, CPU {scan_cpu:.2} s per scan (mean of {scans}), \
         key set {kept_kib:.0} KiB = {old_per_key:.0} B/key (heap peak {heap_peak_kib:.0} KiB), resident peak \
         +{scan_rise:.0} MiB; x {parts_n} = {scans_s:.0} s, CPU {scans_cpu:.0} s\n\
         RESULT   old re-emission = this run's initial sync: {old_records} records, {sync_s:.1} s, \
         CPU {sync_cpu:.1} s, {sync_mib:.0} MiB\n\
         RESULT   ratio state/old: wall {wall:.5} (against the scans alone {wall_scans:.5}), \
         CPU {cpu_ratio:.5}, records {records:.6}, bytes kept per item {memory:.3}",
        3 * changes
    );
    drop(sim);
    drop(own);
}
