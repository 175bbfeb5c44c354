//! Where an idle partition's bytes go (issue 15): a heap profile of an in-process worker
//! whose partitions have all completed their first round and polled their deltaLink once.
//!
//! ```text
//! cargo bench --bench heap                                     # 10,000 partitions (~3 min)
//! GRAPH_CDC_HEAP_PARTITIONS=400 cargo bench --bench heap       # a quick try
//! GRAPH_CDC_HEAP_PROFILE=0 cargo bench --bench heap            # unprofiled: malloc and RSS
//! cargo bench --bench heap -- report target/dhat-heap.json     # the report of a saved profile
//! ```
//!
//! One process: the simulator (on a runtime of its own), a worker in this process and,
//! unless `GRAPH_CDC_TEST_KAFKA` names one, a real Kafka broker started for the run. Every
//! Rust allocation goes through [dhat](https://docs.rs/dhat): the profiler starts once the
//! simulator is populated (its data is not counted), just before the worker; when every
//! partition has completed its first round (its committed offset is past round 1) and then
//! another (its first idle poll, 60 s ± 10% later), the bytes live are
//! taken (`dhat::HeapStats`) and the profile written (`GRAPH_CDC_HEAP_OUT`, default
//! `target/dhat-heap.json`, readable in dhat's viewer `dh_view.html`).
//!
//! The report groups the bytes live at the end ("at t-end": `eb`/`ebk` of each allocation
//! site in the profile) by who holds them:
//!
//! - the simulator (a `graph_sim::` frame, or the frames of its HTTP server: axum, hyper's
//!   server side) and the bench itself: left out;
//! - the connector: the rest, by its innermost `graph_cdc::` frame (function, file:line)
//!   with the innermost library frame under it ("via": `hashbrown`, `tokio`...); a clone of
//!   a connector type (`PartitionId`, `SourceOffset`...) by the next `graph_cdc::` frame out,
//!   the one keeping the copy; with no `graph_cdc::` frame in the backtrace, by the
//!   innermost library frame alone.
//!
//! librdkafka's, OpenSSL's and libcurl's own buffers are C allocations (`malloc`), not seen
//! by dhat: glibc's `mallinfo2` totals are printed beside (the whole process).
//!
//! `GRAPH_CDC_HEAP_PARTITIONS` (default 10,000; users = partitions / 4, each with a calendar
//! view, a calendar list, its To Do lists and one task list), `GRAPH_CDC_HEAP_BATCH_POLLS`
//! (default 1: `graph.batch_polls`, as issue 15 measures), `GRAPH_CDC_HEAP_FRAMES` (frames
//! kept per backtrace, default 48), `GRAPH_CDC_HEAP_TOP` (sites listed, default 25),
//! `GRAPH_CDC_HEAP_PROFILE=0` (no profile: the same run with glibc's and the kernel's totals
//! only, which dhat's own tables inflate).
//!
//! Both modes end with `malloc_trim(0)`: the resident memory it gives back is free space
//! glibc held in its arenas (fragmentation and the sync's transients).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graph_cdc::metrics::metrics;
use graph_cdc::source::{PartitionId, PartitionKind};
use graph_cdc_testkit::broker::KafkaBroker;

mod common;
use common::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a whole number")),
        _ => default,
    }
}

fn all_kinds(users: &[String]) -> Vec<PartitionId> {
    let mut out = Vec::new();
    for u in users {
        out.push(PartitionId::CalendarView {
            user: u.clone(),
            calendar: "primary".into(),
            window: window(),
        });
        out.push(PartitionId::CalendarList { user: u.clone() });
        out.push(PartitionId::TaskLists { user: u.clone() });
    }
    out
}

fn rounds() -> u64 {
    let m = metrics();
    PartitionKind::ALL
        .iter()
        .map(|k| m.rounds_completed.with_label_values(&[k.as_str()]).get())
        .sum()
}

/// A `/proc/self/status` field in MiB.
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

/// glibc's view of the whole process's `malloc` heap (Rust and C allocations):
/// (bytes in use, bytes free inside the arenas).
fn malloc_totals() -> (f64, f64) {
    // SAFETY: a plain query of the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) as f64, m.fordblks as f64)
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1024.0 / 1024.0)
}

fn print_sizes() {
    use std::mem::size_of;
    println!("sizes (std::mem::size_of, bytes; heap parts not included):");
    let sizes: &[(&str, usize)] = &[
        ("source::PartitionId", size_of::<PartitionId>()),
        (
            "source::SourceOffset",
            size_of::<graph_cdc::source::SourceOffset>(),
        ),
        (
            "graph::PartitionReader",
            size_of::<graph_cdc::graph::PartitionReader>(),
        ),
        ("graph::Route", size_of::<graph_cdc::graph::Route>()),
        ("graph::Rounds", size_of::<graph_cdc::graph::Rounds>()),
        (
            "graph::guard::RoundGuard",
            size_of::<graph_cdc::graph::guard::RoundGuard>(),
        ),
        ("live::LiveItems", size_of::<graph_cdc::live::LiveItems>()),
        ("live::Entry", size_of::<graph_cdc::live::Entry>()),
        (
            "worker::PartitionState",
            size_of::<graph_cdc::worker::PartitionState>(),
        ),
        (
            "window::WindowSpec",
            size_of::<graph_cdc::window::WindowSpec>(),
        ),
        ("window::Window", size_of::<graph_cdc::window::Window>()),
        ("url::Url", size_of::<url::Url>()),
        (
            "tokio_util CancellationToken",
            size_of::<tokio_util::sync::CancellationToken>(),
        ),
        ("std::time::Instant", size_of::<Instant>()),
    ];
    for (name, n) in sizes {
        println!("  {name:<30} {n:>5}");
    }
}

// ---------------------------------------------------------------------------------------
// The profile's report.

/// One frame of the profile: `0x…: name (file:line:col)`.
struct Frame<'a> {
    name: &'a str,
    place: &'a str,
}

fn frame(s: &str) -> Frame<'_> {
    let rest = s.split_once(": ").map_or(s, |(_, r)| r);
    match rest.rfind(" (") {
        Some(i) => Frame {
            name: &rest[..i],
            place: rest[i + 2..].trim_end_matches(')'),
        },
        None => Frame {
            name: rest,
            place: "",
        },
    }
}

/// The crate a symbol belongs to: `<graph_cdc::x::Y as core::..>::f` → `graph_cdc`.
fn crate_of(name: &str) -> &str {
    let n = name.trim_start_matches('<').trim_start_matches('&');
    let n = n.strip_prefix("mut ").unwrap_or(n).trim_start_matches('<');
    n.split("::").next().unwrap_or("")
}

/// `file:line` without the column, a registry path shortened to the crate's.
fn short_place(place: &str) -> String {
    let p = place.rsplit_once(':').map_or(place, |(p, _)| p);
    match p.find("/registry/src/") {
        Some(i) => {
            let after = &p[i + "/registry/src/".len()..];
            after.split_once('/').map_or(after, |(_, r)| r).to_string()
        }
        None => match p.find("/rustc/") {
            Some(i) => {
                let after = &p[i + "/rustc/".len()..];
                after.split_once('/').map_or(after, |(_, r)| r).to_string()
            }
            None => p.to_string(),
        },
    }
}

/// Symbol names shortened for a table: closures folded, `graph_cdc::` dropped.
fn short_name(name: &str) -> String {
    name.replace("::{{closure}}", "::{closure}")
        .replace("graph_cdc::", "")
}

const STD_CRATES: &[&str] = &["alloc", "core", "std", "T", "&T", "F", "dhat", "backtrace"];

fn is_sim(f: &Frame<'_>) -> bool {
    let c = crate_of(f.name);
    c == "graph_sim"
        || c == "axum"
        || f.name.contains("hyper::server")
        || f.name.contains("hyper_util::server")
        || f.name.contains("hyper::proto::h1::role::Server")
        || f.name.contains("h2::server")
}

#[derive(Default)]
struct Site {
    bytes: u64,
    blocks: u64,
    via: HashMap<String, u64>,
}

fn add(map: &mut HashMap<String, Site>, key: String, via: String, b: u64, bk: u64) {
    let s = map.entry(key).or_default();
    s.bytes += b;
    s.blocks += bk;
    *s.via.entry(via).or_default() += b;
}

fn top_via(s: &Site) -> String {
    let mut v: Vec<(&String, &u64)> = s.via.iter().collect();
    v.sort_by_key(|s| std::cmp::Reverse(*s.1));
    let mut out: Vec<String> = v.iter().take(2).map(|(k, _)| (*k).clone()).collect();
    if v.len() > 2 {
        out.push("…".into());
    }
    out.join(", ")
}

fn report(path: &str, parts: usize, top: usize) {
    let t = Instant::now();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("a dhat profile");
    let ftbl: Vec<&str> = json["ftbl"]
        .as_array()
        .expect("ftbl")
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let pps = json["pps"].as_array().expect("pps");
    let parts_f = parts.max(1) as f64;
    let (mut sim, mut bench, mut conn) = ((0u64, 0u64), (0u64, 0u64), (0u64, 0u64));
    // By innermost graph_cdc frame (function + line), by function, by library (no graph_cdc
    // frame).
    let mut by_site: HashMap<String, Site> = HashMap::new();
    let mut by_fn: HashMap<String, Site> = HashMap::new();
    let mut by_lib: HashMap<String, Site> = HashMap::new();
    let mut truncated = 0u64;
    for pp in pps {
        let eb = pp["eb"].as_u64().unwrap_or(0);
        let ebk = pp["ebk"].as_u64().unwrap_or(0);
        if eb == 0 {
            continue;
        }
        let fs: Vec<Frame<'_>> = pp["fs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| ftbl.get(i.as_u64()? as usize))
                    .map(|s| frame(s))
                    .collect()
            })
            .unwrap_or_default();
        if fs.iter().any(is_sim) {
            sim.0 += eb;
            sim.1 += ebk;
            continue;
        }
        let first = fs.iter().position(|f| crate_of(f.name) == "graph_cdc");
        // A clone of one of the connector's types is named by who clones it (which map or
        // struct keeps the copy): the next connector frame out.
        let cloned = first.filter(|&i| fs[i].name.ends_with("as core::clone::Clone>::clone"));
        let mine = match cloned {
            Some(i) => fs[i + 1..]
                .iter()
                .position(|f| crate_of(f.name) == "graph_cdc" && !f.name.ends_with("::clone"))
                .map(|j| i + 1 + j)
                .or(first),
            None => first,
        };
        // The innermost library frame (not std/core/alloc), above the connector's if any.
        let lib = fs
            .iter()
            .take(first.unwrap_or(fs.len()))
            .find(|f| !STD_CRATES.contains(&crate_of(f.name)));
        let via = match cloned {
            Some(i) => format!(
                "clone of {}",
                short_name(fs[i].name)
                    .trim_start_matches('<')
                    .split(" as ")
                    .next()
                    .unwrap_or("")
            ),
            None => lib.map_or_else(|| "-".to_string(), |f| short_name(f.name)),
        };
        match mine {
            Some(i) => {
                conn.0 += eb;
                conn.1 += ebk;
                let f = &fs[i];
                add(
                    &mut by_site,
                    format!("{} ({})", short_name(f.name), short_place(f.place)),
                    via.clone(),
                    eb,
                    ebk,
                );
                add(&mut by_fn, short_name(f.name), via, eb, ebk);
            }
            None => {
                let in_bench = fs.iter().any(|f| {
                    let c = crate_of(f.name);
                    c == "heap" || c == "graph_cdc_testkit"
                });
                let in_lib = lib.is_some();
                if in_bench && !in_lib {
                    bench.0 += eb;
                    bench.1 += ebk;
                    continue;
                }
                conn.0 += eb;
                conn.1 += ebk;
                let key = match lib {
                    Some(f) => format!("{} ({})", short_name(f.name), short_place(f.place)),
                    None => {
                        truncated += eb;
                        "(no library frame)".to_string()
                    }
                };
                let krate = lib.map_or("?", |f| crate_of(f.name)).to_string();
                add(&mut by_lib, format!("[{krate}] {key}"), krate, eb, ebk);
            }
        }
    }
    println!(
        "profile {path}: {} allocation sites, {} frames, read in {:.1} s",
        pps.len(),
        ftbl.len(),
        t.elapsed().as_secs_f64()
    );
    println!("bytes live at the end (t-end), by holder:");
    println!(
        "  connector      {:>10} in {:>8} blocks: {} per partition, {:.1} blocks per partition",
        mib(conn.0 as f64),
        conn.1,
        kib(conn.0 as f64 / parts_f),
        conn.1 as f64 / parts_f
    );
    println!(
        "  simulator      {:>10} in {:>8} blocks (left out)",
        mib(sim.0 as f64),
        sim.1
    );
    println!(
        "  bench          {:>10} in {:>8} blocks (left out)",
        mib(bench.0 as f64),
        bench.1
    );
    let in_graph_cdc: u64 = by_site.values().map(|s| s.bytes).sum();
    println!(
        "  of the connector's: {} under a graph_cdc frame, {} in libraries' own tasks (no graph_cdc frame){}",
        mib(in_graph_cdc as f64),
        mib((conn.0 - in_graph_cdc) as f64),
        if truncated > 0 {
            format!(", {} with no frame to name", mib(truncated as f64))
        } else {
            String::new()
        }
    );
    let table = |title: &str, map: &HashMap<String, Site>, n: usize| {
        let mut v: Vec<(&String, &Site)> = map.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.1.bytes));
        println!("{title}");
        println!(
            "  {:>9} {:>8} {:>7} {:>7}  site  [via]",
            "bytes", "blocks", "B/part", "bk/part"
        );
        let mut shown = 0u64;
        for (k, s) in v.iter().take(n) {
            shown += s.bytes;
            println!(
                "  {:>9} {:>8} {:>7.0} {:>7.2}  {k}  [{}]",
                s.bytes,
                s.blocks,
                s.bytes as f64 / parts_f,
                s.blocks as f64 / parts_f,
                top_via(s)
            );
        }
        let all: u64 = v.iter().map(|(_, s)| s.bytes).sum();
        println!(
            "  listed {} of {} ({:.0}%) in {} sites",
            mib(shown as f64),
            mib(all as f64),
            shown as f64 * 100.0 / all.max(1) as f64,
            v.len()
        );
    };
    table(
        &format!("top {top} connector sites (innermost graph_cdc frame, file:line):"),
        &by_site,
        top,
    );
    table(
        &format!("top {top} connector functions (innermost graph_cdc frame):"),
        &by_fn,
        top,
    );
    table(
        "top 15 library sites with no graph_cdc frame (their own tasks and threads):",
        &by_lib,
        15,
    );
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let parts_wanted = env_usize("GRAPH_CDC_HEAP_PARTITIONS", 10_000);
    let users_n = (parts_wanted / 4).max(1);
    let parts = users_n * 4;
    let top = env_usize("GRAPH_CDC_HEAP_TOP", 25);
    let out = std::env::var("GRAPH_CDC_HEAP_OUT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "target/dhat-heap.json".into());
    if args.first().map(String::as_str) == Some("report") {
        let path = args.get(1).cloned().unwrap_or(out);
        report(&path, parts, top);
        return;
    }
    let batch = env_usize("GRAPH_CDC_HEAP_BATCH_POLLS", 1) != 0;
    let frames = env_usize("GRAPH_CDC_HEAP_FRAMES", 48);
    // `GRAPH_CDC_HEAP_PROFILE=0`: no profile, only the allocator's and the kernel's totals
    // (dhat's tables inflate both when it profiles).
    let profile = env_usize("GRAPH_CDC_HEAP_PROFILE", 1) != 0;
    print_sizes();
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
    let sim = start_sim();
    let t = Instant::now();
    let users = populate(&sim, "heap", users_n, 2, 2, 7);
    println!(
        "heap: {parts} partitions ({users_n} users x 4), batch_polls {batch}, broker {bootstrap}; \
         simulator populated in {:.1} s, process resident {:.0} MiB",
        t.elapsed().as_secs_f64(),
        status_mib("VmRSS:")
    );
    let mut spec = harness::worker_spec(&sim.server.url(), &bootstrap, all_kinds(&users));
    spec.poll_interval = Duration::from_secs(60);
    spec.client.batch_polls = batch;
    let (malloc0, _) = malloc_totals();
    let rss0 = status_mib("VmRSS:");
    let (_, free0) = malloc_totals();
    let profiler = profile.then(|| {
        dhat::Profiler::builder()
            .file_name(&out)
            .trim_backtraces(Some(frames))
            .build()
    });
    let r0 = rounds();
    let t0 = Instant::now();
    let w = InProcessWorker::start(rt.handle(), spec);
    // A partition has completed its first round when its committed offset is at round 2
    // (on its first deltaLink).
    let first_rounds = || {
        w.status
            .offsets
            .lock()
            .values()
            .filter(|o| o.round >= 2)
            .count()
    };
    wait_until(
        "every partition's first round",
        Duration::from_secs((parts as u64 / 5).max(600)),
        || {
            std::thread::sleep(Duration::from_millis(500));
            first_rounds() >= parts
        },
    );
    let synced = t0.elapsed().as_secs_f64();
    // Then every partition's first idle poll (60 s ± 10%): a round completed since.
    let t1 = Instant::now();
    let polled_since = || {
        w.status
            .fresh_at
            .lock()
            .values()
            .filter(|t| **t > t1)
            .count()
    };
    while polled_since() < parts && t1.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let polled = polled_since();
    std::thread::sleep(Duration::from_secs(5));
    let stats = profile.then(dhat::HeapStats::get);
    let (malloc1, free1) = malloc_totals();
    let rss1 = status_mib("VmRSS:");
    println!(
        "every partition's first round done in {synced:.0} s ({} rounds completed); then {polled} \
         partitions polled their deltaLink in {:.0} s",
        rounds() - r0,
        t1.elapsed().as_secs_f64()
    );
    if let Some(stats) = &stats {
        println!(
            "dhat, every Rust allocation since the worker started (simulator's included): {} live in {} blocks \
             ({} per partition); peak {}; {} allocated in {} blocks over the run",
            mib(stats.curr_bytes as f64),
            stats.curr_blocks,
            kib(stats.curr_bytes as f64 / parts as f64),
            mib(stats.max_bytes as f64),
            mib(stats.total_bytes as f64),
            stats.total_blocks
        );
    }
    println!(
        "malloc (glibc mallinfo2, whole process, C included{}): +{} in use since the worker started \
         ({} per partition), free in the arenas {} -> {} (+{} per partition); resident +{:.0} MiB \
         ({} per partition)",
        if profile { "; dhat's own tables included" } else { "" },
        mib(malloc1 - malloc0),
        kib((malloc1 - malloc0) / parts as f64),
        mib(free0),
        mib(free1),
        kib((free1 - free0) / parts as f64),
        rss1 - rss0,
        kib((rss1 - rss0) * 1024.0 * 1024.0 / parts as f64)
    );
    // What of the resident memory is free space the allocator holds: malloc_trim gives
    // the free pages inside the arenas back.
    // SAFETY: a plain call into the allocator.
    unsafe { libc::malloc_trim(0) };
    let rss2 = status_mib("VmRSS:");
    println!(
        "malloc_trim(0): resident {rss1:.0} -> {rss2:.0} MiB ({} per partition held free by malloc)",
        kib((rss1 - rss2) * 1024.0 * 1024.0 / parts as f64)
    );
    if let Some(profiler) = profiler {
        let t2 = Instant::now();
        drop(profiler);
        println!(
            "profile written to {out} in {:.0} s",
            t2.elapsed().as_secs_f64()
        );
    }
    if let Err(e) = w.stop_blocking(&rt) {
        eprintln!("worker ended: {e}");
    }
    drop(own);
    if profile {
        report(&out, parts, top);
    }
}
