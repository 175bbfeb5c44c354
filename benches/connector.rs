//! The connector's benchmarks, each printed against a baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench connector                 # all of them (~8 minutes)
//! cargo bench --bench connector -- throughput   # or: cost, idle, requests, latency
//! ```
//!
//! They run against the project's Graph simulator (in this process, on its own runtime whose
//! threads are named `sim`, so its CPU is not counted as the connector's) and a real Apache
//! Kafka broker on loopback: `GRAPH_CDC_TEST_KAFKA` if set, else one started for the run.
//!
//! - `throughput`: an initial sync of 100,000 events (1–3 KB) over 100 calendar-view
//!   partitions, against the ceiling: a bare rdkafka transactional producer writing the same
//!   records in transactions of the same mean size, with no Graph side.
//! - `cost`: CPU time and allocations per record on the hot path (page body → Kafka records),
//!   against a parse-and-re-serialise implementation of the same step.
//! - `idle`: 10,000 partitions (2,500 users × 4) polling idle deltaLinks every 60 s, in a
//!   `graph-cdc run` process: resident memory and CPU share of a core, against a worker with
//!   4 partitions measured over the same window. `GRAPH_CDC_IDLE_PARTITIONS=100000` sets the
//!   count, `GRAPH_CDC_IDLE_BATCH_ONLY=1` runs only the `batch_polls` worker (and the
//!   baseline), `GRAPH_CDC_IDLE_MEASURE_SECS` the measured window (default 120).
//! - `requests`: Graph requests per committed record in incremental rounds, for
//!   `page_size` 10 and 100.
//! - `latency`: from a change in the simulator to its record being readable by a
//!   `read_committed` consumer, p50/p99 at a 1 s poll interval, against the floor of a bare
//!   transactional produce → consume on the same broker.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_cdc::graph::PartitionReader;
use graph_cdc::metrics::metrics;
use graph_cdc::source::{PartitionId, PartitionKind};
use graph_cdc::worker::WorkerSpec;
use graph_cdc_testkit::broker::KafkaBroker;
use graph_sim::generate::MutateSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::*;

// ---------------------------------------------------------------------------------------
// Allocation counting (the `cost` bench reads it on one thread while the others are idle).

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Shared setup.

fn view_partitions(users: &[String]) -> Vec<PartitionId> {
    users
        .iter()
        .map(|u| PartitionId::CalendarView {
            user: u.clone(),
            calendar: "primary".into(),
            window: window(),
        })
        .collect()
}

fn all_kinds(users: &[String]) -> Vec<PartitionId> {
    let mut out = view_partitions(users);
    for u in users {
        out.push(PartitionId::CalendarList { user: u.clone() });
        out.push(PartitionId::TaskLists { user: u.clone() });
    }
    out
}

/// The connector's defaults on topics of their own.
fn worker_spec(sim: &Sim, bootstrap: &str, partitions: Vec<PartitionId>) -> WorkerSpec {
    harness::worker_spec(&sim.server.url(), bootstrap, partitions)
}

/// CPU seconds (user + system) of this process's threads, by whether they are the
/// simulator's.
fn thread_cpu() -> (f64, f64) {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut sim, mut rest) = (0.0, 0.0);
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
            if name.starts_with("sim") {
                sim += ticks / tick;
            } else {
                rest += ticks / tick;
            }
        }
    }
    (sim, rest)
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", run_id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer")
}

fn assign(c: &BaseConsumer, topic: &str, from: Offset) -> usize {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let parts = md.topics()[0].partitions().len();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, from).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    parts
}

type Rec = (Vec<u8>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// Every committed record of `topic`.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Rec> {
    let c = consumer(bootstrap);
    let parts = assign(&c, topic, Offset::Beginning);
    let mut eof = std::collections::HashSet::new();
    let mut out = Vec::new();
    while eof.len() < parts {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// A bare transactional producer configured as the connector's is.
fn bare_producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    let mut cfg = ClientConfig::new();
    // The connector's own producer defaults (compression, linger, partitioner).
    for (k, v) in graph_cdc::config::PRODUCER_DEFAULTS {
        cfg.set(*k, *v);
    }
    let p: ThreadedProducer<DefaultProducerContext> = cfg
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("bare-{}", run_id()))
        .set("enable.idempotence", "true")
        .set("transaction.timeout.ms", "60000")
        .create()
        .expect("producer");
    p.init_transactions(Timeout::After(Duration::from_secs(30)))
        .expect("init transactions");
    p
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, mut r: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match p.send(r) {
            Ok(()) => return,
            Err((rdkafka::error::KafkaError::MessageProduction(_), back)) => {
                r = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
}

fn create_topic(rt: &tokio::runtime::Runtime, bootstrap: &str, name: &str) {
    let mut spec = harness::settings("http://unused", bootstrap, &run_id()).sink_options();
    spec.topics.events = name.into();
    rt.block_on(graph_cdc::sink::topics::ensure_topics(&spec, 6, 1))
        .expect("topic");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// ---------------------------------------------------------------------------------------
// 1. Throughput (and the end-to-end CPU per record of item 2).

const TP_USERS: usize = 100;
const TP_EVENTS_PER_USER: usize = 1000;

struct ConnectorRun {
    rate: f64,
    records: u64,
    txns: u64,
    cpu_us_per_record: f64,
    sim_cpu_us_per_record: f64,
    topic: String,
}

fn connector_run(
    rt: &tokio::runtime::Runtime,
    sim: &Sim,
    bootstrap: &str,
    users: &[String],
) -> ConnectorRun {
    let spec = worker_spec(sim, bootstrap, view_partitions(users));
    let topic = spec.sink.topics.events.clone();
    let want = (users.len() * TP_EVENTS_PER_USER) as u64;
    let (r0, t0n) = (records_written(), transactions());
    let w = start_worker(rt, spec);
    wait_until("the first commit", Duration::from_secs(120), || {
        records_written() > r0
    });
    let (start_records, start_txns) = (records_written() - r0, transactions() - t0n);
    let (sim0, cpu0) = thread_cpu();
    let t0 = Instant::now();
    wait_until("the initial sync", Duration::from_secs(600), || {
        records_written() - r0 >= want
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let (sim1, cpu1) = thread_cpu();
    let records = records_written() - r0 - start_records;
    let txns = transactions() - t0n - start_txns;
    w.stop(rt);
    ConnectorRun {
        rate: records as f64 / elapsed,
        records,
        txns,
        cpu_us_per_record: (cpu1 - cpu0) * 1e6 / records as f64,
        sim_cpu_us_per_record: (sim1 - sim0) * 1e6 / records as f64,
        topic,
    }
}

/// The ceiling: the same records in transactions of `per_txn` records, no Graph side.
fn ceiling_run(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    recs: &[Rec],
    per_txn: usize,
) -> (f64, f64) {
    let topic = format!("ceiling-{}", run_id());
    create_topic(rt, bootstrap, &topic);
    let p = bare_producer(bootstrap);
    let chunks: Vec<&[Rec]> = recs.chunks(per_txn.max(1)).collect();
    let write = |chunk: &[Rec]| {
        p.begin_transaction().expect("begin");
        for (k, v, hs) in chunk {
            let mut h = OwnedHeaders::new_with_capacity(hs.len());
            for (hk, hv) in hs {
                h = h.insert(Header {
                    key: hk,
                    value: Some(hv),
                });
            }
            let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).key(&k[..]).headers(h);
            if let Some(v) = v {
                r = r.payload(&v[..]);
            }
            send(&p, r);
        }
        p.commit_transaction(Timeout::After(Duration::from_secs(60)))
            .expect("commit");
    };
    // The first transaction is left out, as the connector's first commit is.
    write(chunks[0]);
    let (_, cpu0) = thread_cpu();
    let t0 = Instant::now();
    let mut n = 0;
    for c in &chunks[1..] {
        write(c);
        n += c.len();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (_, cpu1) = thread_cpu();
    (n as f64 / elapsed, (cpu1 - cpu0) * 1e6 / n as f64)
}

fn bench_throughput(rt: &tokio::runtime::Runtime, bootstrap: &str) {
    let sim = start_sim();
    let t = Instant::now();
    let users = populate(&sim, "tp", TP_USERS, TP_EVENTS_PER_USER, 0, 7);
    println!(
        "throughput: {} events over {} partitions generated in {:.1} s",
        TP_USERS * TP_EVENTS_PER_USER,
        TP_USERS,
        t.elapsed().as_secs_f64()
    );
    let mut connector = Vec::new();
    let mut ceiling = Vec::new();
    let mut recs = Vec::new();
    let mut per_txn = 1;
    for i in 0..2 {
        let c = connector_run(rt, &sim, bootstrap, &users);
        println!(
            "  connector run {}: {:>8.0} records/s ({} records, {} transactions, {:.0} records/txn), \
             connector CPU {:.1} µs/record, simulator CPU {:.1} µs/record",
            i + 1,
            c.rate,
            c.records,
            c.txns,
            c.records as f64 / c.txns.max(1) as f64,
            c.cpu_us_per_record,
            c.sim_cpu_us_per_record
        );
        if i == 0 {
            recs = read_topic(bootstrap, &c.topic);
            per_txn = (c.records as f64 / c.txns.max(1) as f64).round() as usize;
        }
        connector.push(c);
        let (rate, cpu) = ceiling_run(rt, bootstrap, &recs, per_txn);
        println!(
            "  ceiling run {}:   {:>8.0} records/s ({} records, {} records/txn), producer CPU {:.1} µs/record",
            i + 1,
            rate,
            recs.len(),
            per_txn,
            cpu
        );
        ceiling.push((rate, cpu));
    }
    let best_c = connector.iter().map(|c| c.rate).fold(0.0, f64::max);
    let best_b = ceiling.iter().map(|c| c.0).fold(0.0, f64::max);
    let cpu_c = connector
        .iter()
        .map(|c| c.cpu_us_per_record)
        .fold(f64::MAX, f64::min);
    let cpu_b = ceiling.iter().map(|c| c.1).fold(f64::MAX, f64::min);
    println!(
        "RESULT throughput: connector {best_c:.0} records/s, ceiling {best_b:.0} records/s, ratio {:.2} (target >= 0.80); \
         CPU per record connector {cpu_c:.1} µs vs bare producer {cpu_b:.1} µs, ratio {:.2}",
        best_c / best_b,
        cpu_c / cpu_b
    );
}

// ---------------------------------------------------------------------------------------
// 2. Per-record cost of the hot path, page body → Kafka records.

fn page_bodies(sim: &Sim, user: &str) -> Vec<bytes::Bytes> {
    use graph_sim::delta::{self, PageParams, Query, Resource, TokenState};
    let store = sim.server.state.store.read();
    let uid = store.user_id(user).expect("user").to_string();
    let mut st = TokenState::initial(
        Arc::new(Query {
            user: uid,
            resource: Resource::CalendarView {
                calendar: None,
                start: window_start(),
                end: window_start() + chrono::Duration::days(WINDOW_DAYS),
            },
            select: None,
        }),
        "/v1.0/users/x/calendarView/delta".into(),
        "".into(),
        store.seq,
    );
    let params = PageParams {
        size: 100,
        scan_limit: 5000,
        replay_probability: 0.0,
        empty_page_probability: 0.0,
        ..Default::default()
    };
    let pres = graph_sim::present::Presentation::default();
    let mut out = Vec::new();
    loop {
        let p = delta::page(&store, &st, &params).expect("page");
        let body = graph_sim::http::render_page(
            &sim.server.url(),
            "v1.0",
            "event",
            "@odata.nextLink",
            &format!(
                "{}/v1.0/users/x/calendarView/delta?$skiptoken=abc",
                sim.server.url()
            ),
            &p.records,
            &pres,
        );
        out.push(bytes::Bytes::from(body));
        match p.next {
            Some(c) => st.cursor = Some(c),
            None => break,
        }
    }
    out
}

/// The connector's path: zero-copy parse, source records, headers, Kafka records.
fn hot_path(reader: &PartitionReader, body: &bytes::Bytes, topic: &str) -> usize {
    let page = graph_cdc::graph::delta::parse_page(body.clone()).expect("page");
    let batch = reader.batch(page);
    let pjson = batch.partition.to_json();
    for r in &batch.records {
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic)
                .key(&r.key[..])
                .headers(graph_cdc::sink::records::headers(
                    r,
                    &pjson,
                    batch.principal.as_deref(),
                ));
        if let Some(v) = &r.value {
            rec = rec.payload(&v[..]);
        }
        std::hint::black_box(&rec);
    }
    batch.records.len()
}

/// The obvious alternative: parse the page into a `Value` tree and re-serialise each item.
fn naive_path(p: &PartitionId, body: &bytes::Bytes, topic: &str) -> usize {
    let page: serde_json::Value = serde_json::from_slice(body).expect("json");
    let items = page["value"].as_array().expect("value");
    let pjson = p.to_json();
    for item in items {
        let id = item["id"].as_str().expect("id");
        let removed = item.get("@removed").is_some();
        let key = p.record_key(id);
        let value = (!removed).then(|| serde_json::to_vec(item).expect("ser"));
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "graph-cdc.op",
                value: Some(if removed { "delete" } else { "upsert" }),
            })
            .insert(Header {
                key: "graph-cdc.partition",
                value: Some(&pjson),
            })
            .insert(Header {
                key: "graph-cdc.round",
                value: Some("1"),
            });
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(&key[..]).headers(headers);
        if let Some(v) = &value {
            rec = rec.payload(&v[..]);
        }
        std::hint::black_box(&rec);
    }
    std::hint::black_box(&page);
    items.len()
}

fn measure(reps: usize, mut f: impl FnMut() -> usize) -> (f64, f64, f64) {
    let _ = f(); // warm-up
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let c0 = cpu_self_thread();
    let t0 = Instant::now();
    let mut n = 0;
    for _ in 0..reps {
        n += f();
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_self_thread() - c0;
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    (
        wall * 1e6 / n as f64,
        cpu * 1e6 / n as f64,
        allocs as f64 / n as f64,
    )
}

/// CPU seconds of the calling thread (precise, from `CLOCK_THREAD_CPUTIME_ID`).
fn cpu_self_thread() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn bench_cost() {
    let sim = start_sim();
    let users = populate(&sim, "cost", 1, 2000, 0, 7);
    let bodies = page_bodies(&sim, &users[0]);
    let p = view_partitions(&users).remove(0);
    let reader = PartitionReader::new(
        Arc::new(p.clone()),
        &sim.server.url(),
        None,
        Default::default(),
    )
    .expect("reader");
    let bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let reps = 20;
    let mut i = 0;
    let ours = measure(reps * bodies.len(), || {
        i += 1;
        hot_path(&reader, &bodies[i % bodies.len()], "events")
    });
    // Where the hot path's cost goes: parsing alone, then parsing and source records.
    let mut k = 0;
    let parse_only = measure(reps * bodies.len(), || {
        k += 1;
        let page =
            graph_cdc::graph::delta::parse_page(bodies[k % bodies.len()].clone()).expect("page");
        let n = page.items.len();
        std::hint::black_box(page);
        n
    });
    let mut k = 0;
    let to_records = measure(reps * bodies.len(), || {
        k += 1;
        let page =
            graph_cdc::graph::delta::parse_page(bodies[k % bodies.len()].clone()).expect("page");
        let batch = reader.batch(page);
        let n = batch.records.len();
        std::hint::black_box(batch);
        n
    });
    let mut j = 0;
    let naive = measure(reps * bodies.len(), || {
        j += 1;
        naive_path(&p, &bodies[j % bodies.len()], "events")
    });
    println!(
        "cost: {} pages of 100 events, {:.0} bytes per event on average",
        bodies.len(),
        bytes as f64 / (bodies.len() * 100) as f64
    );
    println!(
        "  connector (zero-copy):         {:>6.2} µs CPU/record, {:>5.2} allocations/record",
        ours.1, ours.2
    );
    println!(
        "    of which parse_page:         {:>6.2} µs CPU/record, {:>5.2} allocations/record",
        parse_only.1, parse_only.2
    );
    println!(
        "    of which + source records:   {:>6.2} µs CPU/record, {:>5.2} allocations/record",
        to_records.1, to_records.2
    );
    println!(
        "  baseline (parse + re-encode):  {:>6.2} µs CPU/record, {:>5.2} allocations/record",
        naive.1, naive.2
    );
    println!(
        "RESULT cost: hot path {:.2} µs CPU and {:.2} allocations per record; parse-and-re-serialise \
         {:.2} µs and {:.2} allocations; ratio CPU {:.2}, allocations {:.2}",
        ours.1,
        ours.2,
        naive.1,
        naive.2,
        ours.1 / naive.1,
        ours.2 / naive.2
    );
}

// ---------------------------------------------------------------------------------------
// 3. Many idle partitions, in a worker process of their own.

fn worker_config(
    sim: &Sim,
    bootstrap: &str,
    users: &[String],
    listen: &str,
    batch: bool,
    run: &str,
) -> String {
    format!(
        r#"
name = "idle-{run}"
[graph]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
base_url = "{host}"
authority_url = "{host}"
poll_interval = "60s"
batch_polls = {batch}
[kafka]
bootstrap_servers = "{bootstrap}"
offsets_topic = "offsets-{run}"
state_topic = "state-{run}"
worker_id = "w"
topic_partitions = 6
[kafka.topics]
events = "events-{run}"
calendars = "calendars-{run}"
task_lists = "lists-{run}"
tasks = "tasks-{run}"
members = "members-{run}"
[server]
listen = "{listen}"
[log]
filter = "warn"
[[sources]]
kind = "calendar_view"
users = {users:?}
start = "{start}"
end = "{end}"
[[sources]]
kind = "calendar_list"
users = {users:?}
[[sources]]
kind = "todo"
users = {users:?}
"#,
        host = sim.server.url(),
        start = window().split('/').next().unwrap_or_default(),
        end = window().split('/').nth(1).unwrap_or_default(),
    )
}

struct Proc {
    child: std::process::Child,
    listen: String,
    /// The connector's name (`idle-{run}`).
    name: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn launch_worker(sim: &Sim, bootstrap: &str, users: &[String], batch: bool) -> Proc {
    let dir = std::env::temp_dir().join(format!("graph-cdc-bench-{}", run_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("worker.toml");
    let run = run_id();
    std::fs::write(
        &cfg,
        worker_config(sim, bootstrap, users, &listen, batch, &run),
    )
    .expect("config");
    Proc {
        child: spawn_worker(&dir),
        listen,
        name: format!("idle-{run}"),
        _dir: tempdir::Dir(dir),
    }
}

/// `graph-cdc run` on `dir`'s `worker.toml`, its log appended to `dir`'s `worker.log`.
fn spawn_worker(dir: &std::path::Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("worker.log"))
        .expect("log");
    std::process::Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
        .args(["run", "--config"])
        .arg(dir.join("worker.toml"))
        .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("graph-cdc run")
}

impl Proc {
    /// Stops the worker gracefully (SIGTERM, as Kubernetes does) and starts it again on the
    /// same configuration: its offsets and state are the topics'. Returns how long it took
    /// to exit.
    fn restart(&mut self) -> Duration {
        let t = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let stopped = t.elapsed();
        self.child = spawn_worker(&self._dir.0);
        stopped
    }

    /// (CPU seconds so far, resident MiB)
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let cpu = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        (cpu / tick, rss_kb / 1024.0)
    }

    /// Partitions whose committed offset is past their first round (`round` ≥ 2), from the
    /// worker's `GET /connectors/{name}/offsets`.
    fn first_rounds_done(&self) -> usize {
        let Ok(out) = std::process::Command::new("curl")
            .args([
                "-sf",
                &format!("http://{}/connectors/{}/offsets", self.listen, self.name),
            ])
            .output()
        else {
            return 0;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return 0;
        };
        v["offsets"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|o| o["offset"]["round"].as_u64().unwrap_or(0) >= 2)
                .count()
        })
    }

    /// Sum of a metric's series, from the worker's `/metrics`.
    /// `/readyz` answers 200: the offsets and state are read, Kafka and Graph answer.
    fn ready(&self) -> bool {
        std::process::Command::new("curl")
            .args(["-sf", &format!("http://{}/readyz", self.listen)])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn metric(&self, name: &str) -> f64 {
        let Ok(text) = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.listen)])
            .output()
        else {
            return 0.0;
        };
        String::from_utf8_lossy(&text.stdout)
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// CPU seconds of each thread name of process `pid`.
fn threads_cpu(pid: u32) -> HashMap<String, f64> {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
            *out.entry(stat[open + 1..close].to_string()).or_default() += ticks / tick;
        }
    }
    out
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GRAPH_CDC_IDLE_PARTITIONS`: how many partitions the `idle` workers track (default 10,000;
/// rounded down to a multiple of 4, the partitions of a user).
const IDLE_PARTITIONS_ENV: &str = "GRAPH_CDC_IDLE_PARTITIONS";
/// `GRAPH_CDC_IDLE_BATCH_ONLY=1`: leave out the worker polling one by one (only the
/// `batch_polls` worker and the 4-partition baseline run).
const IDLE_BATCH_ONLY_ENV: &str = "GRAPH_CDC_IDLE_BATCH_ONLY";
/// `GRAPH_CDC_IDLE_MEASURE_SECS`: the measured window after the warm-up (default 120 s).
const IDLE_MEASURE_ENV: &str = "GRAPH_CDC_IDLE_MEASURE_SECS";

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

/// `n` with thousands separators: 100000 → "100,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bench_idle(bootstrap: &str) {
    let users = (env_usize(IDLE_PARTITIONS_ENV, 10_000) / 4).max(1);
    let parts = users * 4;
    let batch_only = matches!(
        std::env::var(IDLE_BATCH_ONLY_ENV).as_deref().map(str::trim),
        Ok("1" | "true" | "yes")
    );
    let measure = Duration::from_secs(env_usize(IDLE_MEASURE_ENV, 120) as u64);
    let n = thousands(parts);
    let sim = start_sim();
    let t = Instant::now();
    let plain_users = if batch_only {
        Vec::new()
    } else {
        populate(&sim, "idle", users, 2, 2, 7)
    };
    let batch_users = populate(&sim, "idlb", users, 2, 2, 7);
    let small_users = populate(&sim, "solo", 1, 2, 2, 7);
    println!(
        "idle: {n} partitions ({} users × 4){}, simulator populated in {:.1} s",
        thousands(users),
        if batch_only {
            ", batch_polls worker only"
        } else {
            ""
        },
        t.elapsed().as_secs_f64()
    );
    // Measured side by side over the same window: `parts` partitions polling one by one
    // (unless left out), as many polling in JSON batches (`graph.batch_polls`), and 4
    // partitions.
    let mut workers = Vec::new();
    if !batch_only {
        workers.push((
            format!("{n} partitions"),
            launch_worker(&sim, bootstrap, &plain_users, false),
            parts,
        ));
    }
    workers.push((
        format!("{n}, batch_polls"),
        launch_worker(&sim, bootstrap, &batch_users, true),
        parts,
    ));
    workers.push((
        "4 partitions".to_string(),
        launch_worker(&sim, bootstrap, &small_users, false),
        4,
    ));
    let t0 = Instant::now();
    // 900 s at 10,000 partitions and below, 9 s per 100 partitions above.
    let sync_limit = Duration::from_secs((parts as u64 * 9 / 100).max(900));
    // Every partition's first round: as many rounds completed as partitions (cheap, asked
    // every 0.5 s), then every committed offset past round 1 (the offsets listed, every 5 s).
    // The counter alone is no proof: partitions complete more than one round each in their
    // initial sync (and the first done poll again when the sync outlasts the interval).
    let mut rounds_reached = vec![false; workers.len()];
    wait_until("the initial rounds", sync_limit, || {
        std::thread::sleep(Duration::from_millis(500));
        let mut all = true;
        for (i, (_, w, n)) in workers.iter().enumerate() {
            if !rounds_reached[i] {
                rounds_reached[i] = w.metric("graph_cdc_rounds_completed_total") >= *n as f64;
            }
            all &= rounds_reached[i];
        }
        if !all {
            return false;
        }
        std::thread::sleep(Duration::from_millis(4500));
        workers.iter().all(|(_, w, n)| w.first_rounds_done() >= *n)
    });
    let synced = t0.elapsed().as_secs_f64();
    // Memory after every partition's first complete round (issue 15 asks for it then and
    // after minutes of polls: `GRAPH_CDC_IDLE_MEASURE_SECS=600`).
    let rss_sync: Vec<f64> = workers.iter().map(|(_, w, _)| w.usage().1).collect();
    // Warm-up: the first idle polls (60 s interval, 10% jitter) have all happened.
    std::thread::sleep(Duration::from_secs(70));
    let http = |w: &Proc| {
        w.metric("graph_cdc_graph_requests_total{") + w.metric("graph_cdc_graph_batches_total{")
    };
    let before: Vec<(f64, f64, HashMap<String, f64>)> = workers
        .iter()
        .map(|(_, w, _)| (w.usage().0, http(w), threads_cpu(w.child.id())))
        .collect();
    let mut rss_max = vec![0.0f64; workers.len()];
    let m0 = Instant::now();
    while m0.elapsed() < measure {
        std::thread::sleep(Duration::from_secs(1));
        for (i, (_, w, _)) in workers.iter().enumerate() {
            rss_max[i] = rss_max[i].max(w.usage().1);
        }
    }
    let secs = m0.elapsed().as_secs_f64();
    println!(
        "idle: {n} partitions synced in {synced:.0} s; measured {secs:.0} s after a 70 s warm-up, poll interval 60 s"
    );
    let mut cpu = vec![0.0f64; workers.len()];
    let mut reqs = vec![0.0f64; workers.len()];
    for (i, (name, w, _)) in workers.iter().enumerate() {
        cpu[i] = (w.usage().0 - before[i].0) / secs * 100.0;
        reqs[i] = http(w) - before[i].1;
        println!(
            "  {name:<20} {:>6.1} MiB resident (max), {:>5.2}% of a core, {:>6.0} HTTP requests ({:.1}/s)",
            rss_max[i],
            cpu[i],
            reqs[i],
            reqs[i] / secs
        );
        let mut by_thread: Vec<(String, f64)> = threads_cpu(w.child.id())
            .into_iter()
            .map(|(n, c)| {
                let d = c - before[i].2.get(&n).copied().unwrap_or(0.0);
                (n, d / secs * 100.0)
            })
            .filter(|(_, c)| *c > 0.05)
            .collect();
        by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("      CPU by thread (% of a core): {by_thread:.2?}");
    }
    // The targets of the counts they were set for: section 3's at 10,000 partitions polling
    // one by one, issue 15's at 100,000 with batch_polls (250 MB = 238.4 MiB).
    let (mem_target, cpu_target) = match parts {
        10_000 => (" (target < 150)", " (target < 5%)"),
        _ => ("", ""),
    };
    let (bmem_target, bcpu_target) = match parts {
        100_000 => (" (target <= 238.4)", " (target <= 10%)"),
        _ => ("", ""),
    };
    // The baseline is last, the batch_polls worker before it.
    let (b, s) = (workers.len() - 2, workers.len() - 1);
    let after_first_round = rss_sync[b];
    let per_extra = |i: usize| (rss_max[i] - rss_max[s]) * 1024.0 / (parts as f64 - 4.0).max(1.0);
    if batch_only {
        println!(
            "RESULT idle: {n} partitions with batch_polls {:.1} MiB{bmem_target} ({after_first_round:.1} MiB after the first rounds) and {:.2}% of a core{bcpu_target}; \
             against 4 partitions: memory ratio {:.2}, {:.1} KiB per extra partition",
            rss_max[b],
            cpu[b],
            rss_max[b] / rss_max[s],
            per_extra(b)
        );
        cold_start(&sim, &mut workers[b].1, &batch_users, parts);
    } else {
        println!(
            "RESULT idle: {n} partitions {:.1} MiB{mem_target} and {:.2}% of a core{cpu_target}; \
             with batch_polls {:.1} MiB{bmem_target} and {:.2}%{bcpu_target} ({:.0}x fewer HTTP requests, CPU ratio {:.2}); \
             against 4 partitions: memory ratio {:.2}, {:.1} KiB per extra partition ({:.1} with batch_polls)",
            rss_max[0],
            cpu[0],
            rss_max[b],
            cpu[b],
            reqs[0] / reqs[b].max(1.0),
            cpu[b] / cpu[0],
            rss_max[0] / rss_max[s],
            per_extra(0),
            per_extra(b)
        );
    }
}

// ---------------------------------------------------------------------------------------
/// `GRAPH_CDC_IDLE_RESTART_SECS`: how long the cold start after the idle measurement is
/// watched (default 300; 0 leaves the restart out).
const IDLE_RESTART_ENV: &str = "GRAPH_CDC_IDLE_RESTART_SECS";

/// Issue 15, items 2 and 3: the `batch_polls` worker stopped and started again with every
/// partition's offset committed: how long until its offsets and state are read (`/readyz`
/// ready), until every user's four partitions have each polled once (the simulator's
/// requests by user: ≥ 4 each since the restart), and Graph requests per second over the
/// watched window (no thundering herd: the first polls spread over one poll interval).
fn cold_start(sim: &Sim, w: &mut Proc, users: &[String], parts: usize) {
    let watch = Duration::from_secs(env_usize(IDLE_RESTART_ENV, 300) as u64);
    if watch.is_zero() {
        return;
    }
    let by_user = |sim: &Sim| sim.server.state.stats.lock().by_user.clone();
    let total = |sim: &Sim| sim.server.state.stats.lock().total();
    let stopped = w.restart();
    let t0 = Instant::now();
    let before = by_user(sim);
    let mut last_total = total(sim);
    let (mut ready, mut all_polled) = (None::<f64>, None::<f64>);
    let (mut per_sec, mut in_flight_max) = (Vec::new(), 0.0f64);
    let mut next = t0 + Duration::from_secs(1);
    while t0.elapsed() < watch {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_secs(1);
        let now = total(sim);
        per_sec.push((now - last_total) as f64);
        last_total = now;
        in_flight_max = in_flight_max.max(w.metric("graph_cdc_graph_requests_in_flight"));
        if ready.is_none() && w.ready() {
            ready = Some(t0.elapsed().as_secs_f64());
        }
        if all_polled.is_none() {
            // Requests are counted by the user of their path (an object id); the other
            // worker's one user counts too, so this is every user but at most one.
            let counts = by_user(sim);
            let polled = counts
                .iter()
                .filter(|(u, n)| **n >= before.get(*u).copied().unwrap_or(0) + 4)
                .count();
            if polled >= users.len() {
                all_polled = Some(t0.elapsed().as_secs_f64());
            }
        }
    }
    let buckets: Vec<String> = per_sec
        .chunks(10)
        .map(|c| format!("{:.0}", c.iter().sum::<f64>() / c.len() as f64))
        .collect();
    let peak = per_sec.iter().copied().fold(0.0, f64::max);
    let first_min = &per_sec[..per_sec.len().min(60)];
    let mean = first_min.iter().sum::<f64>() / first_min.len().max(1) as f64;
    println!(
        "cold start ({} partitions): stopped in {:.1} s; Graph requests/s, mean of each 10 s: [{}]",
        thousands(parts),
        stopped.as_secs_f64(),
        buckets.join(", ")
    );
    let fmt = |t: Option<f64>| t.map_or("not within the window".into(), |t| format!("{t:.1} s"));
    println!(
        "RESULT cold start: {} partitions: offsets and state read (ready) after {}, every partition polled after {}; \
         Graph requests/s peak {peak:.0} (mean over the first minute {mean:.0}, peak/mean {:.2}), requests in flight at most {in_flight_max:.0} (sampled each second)",
        thousands(parts),
        fmt(ready),
        fmt(all_polled),
        peak / mean.max(1.0)
    );
}

// 4. Graph requests per change.

fn requests_run(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    page_size: usize,
) -> (u64, u64, u64) {
    let sim = start_sim();
    let users = populate(&sim, "req", 20, 50, 20, 7);
    let mut spec = worker_spec(&sim, bootstrap, all_kinds(&users));
    spec.client.page_size = page_size;
    spec.poll_interval = Duration::from_secs(2);
    let parts = spec.partitions.len() as u64;
    let w = start_worker(rt, spec);
    // The initial sync: every partition has completed a round.
    let rounds = || {
        let m = metrics();
        PartitionKind::ALL
            .iter()
            .map(|k| m.rounds_completed.with_label_values(&[k.as_str()]).get())
            .sum::<u64>()
    };
    let r0 = rounds();
    wait_until("the initial sync", Duration::from_secs(120), || {
        rounds() - r0 >= parts + 20
    });
    std::thread::sleep(Duration::from_secs(3));
    let req0 = sim.server.state.stats.lock().total();
    let rec0 = records_written();
    let mut changes = 0;
    for i in 0..100 {
        let m = MutateSpec {
            count: 10,
            start: window_start(),
            days: WINDOW_DAYS,
            structural: false,
            seed: Some(i),
            ..Default::default()
        };
        let s = graph_sim::generate::mutate(&mut sim.server.state.store.write(), &m);
        changes += s.ops.values().sum::<u64>();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let requests = sim.server.state.stats.lock().total() - req0;
    let records = records_written() - rec0;
    w.stop(rt);
    (requests, records, changes)
}

fn bench_requests(rt: &tokio::runtime::Runtime, bootstrap: &str) {
    println!("requests: 20 users x (calendar view, calendar list, task lists, tasks), poll 2 s, 1,000 changes over 20 s");
    let mut per = Vec::new();
    for size in [10, 100] {
        let (req, rec, changes) = requests_run(rt, bootstrap, size);
        let r = req as f64 / rec.max(1) as f64;
        println!(
            "  page_size {size:>3}: {req} requests for {rec} committed records ({changes} changes): {r:.2} requests/record"
        );
        per.push(r);
    }
    println!(
        "RESULT requests: {:.2} requests/record at page_size 10, {:.2} at 100, ratio {:.2}",
        per[0],
        per[1],
        per[0] / per[1]
    );
}

// ---------------------------------------------------------------------------------------
// 5. Change latency.

fn bench_latency(rt: &tokio::runtime::Runtime, bootstrap: &str) {
    let poll = Duration::from_secs(1);
    // The floor: a bare transactional produce → read_committed consume on the same broker.
    let floor = {
        let topic = format!("floor-{}", run_id());
        create_topic(rt, bootstrap, &topic);
        let c = consumer(bootstrap);
        assign(&c, &topic, Offset::End);
        let p = bare_producer(bootstrap);
        let mut lat = Vec::new();
        for i in 0..100 {
            let t = Instant::now();
            p.begin_transaction().expect("begin");
            let key = format!("k{i}");
            send(
                &p,
                BaseRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(b"x".as_slice()),
            );
            p.commit_transaction(Timeout::After(Duration::from_secs(30)))
                .expect("commit");
            let t_wait = Instant::now();
            loop {
                assert!(
                    t_wait.elapsed() < Duration::from_secs(30),
                    "floor record not read back"
                );
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    if m.key() == Some(key.as_bytes()) {
                        break;
                    }
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        lat
    };

    let sim = start_sim();
    let users = populate(&sim, "lat", 10, 20, 0, 7);
    let mut spec = worker_spec(&sim, bootstrap, view_partitions(&users));
    spec.poll_interval = poll;
    let topic = spec.sink.topics.events.clone();
    let r0 = records_written();
    let w = start_worker(rt, spec);
    wait_until("the initial sync", Duration::from_secs(120), || {
        records_written() - r0 >= 200
    });
    let ids = primary_event_ids(&sim, &users);
    let c = consumer(bootstrap);
    assign(&c, &topic, Offset::End);
    let sent: Arc<parking_lot::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mutator = {
        let sent = sent.clone();
        let done = done.clone();
        let state = sim.server.state.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) && n < 300 {
                let (u, id) = &ids[(n as usize * 7) % ids.len()];
                let patch = graph_sim::model::EventPatch {
                    subject: Some(format!("latency-probe-{n}-end")),
                    ..Default::default()
                };
                sent.lock().insert(n, Instant::now());
                state
                    .store
                    .write()
                    .update_event(u, id, patch)
                    .expect("update");
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while lat.len() < 300 && t0.elapsed() < Duration::from_secs(90) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            let Some(v) = m.payload() else { continue };
            let text = String::from_utf8_lossy(v);
            if let Some(i) = text.find("latency-probe-") {
                let rest = &text[i + "latency-probe-".len()..];
                if let Some(n) = rest.split('-').next().and_then(|n| n.parse::<u64>().ok()) {
                    if let Some(at) = sent.lock().remove(&n) {
                        lat.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = mutator.join();
    w.stop(rt);
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let (f50, f99) = (percentile(&floor, 0.5), percentile(&floor, 0.99));
    println!(
        "latency: {} changes, poll interval {} ms (a change waits half of it on average)",
        lat.len(),
        poll.as_millis()
    );
    println!("  connector: p50 {p50:>7.1} ms, p99 {p99:>7.1} ms");
    println!(
        "  floor (bare transactional produce → consume): p50 {f50:>7.1} ms, p99 {f99:>7.1} ms"
    );
    println!(
        "RESULT latency: p50 {p50:.0} ms, p99 {p99:.0} ms at a {} ms poll interval; p50 over (poll/2 + floor p50) {:.2}",
        poll.as_millis(),
        p50 / (poll.as_secs_f64() * 500.0 + f50)
    );
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
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
    println!(
        "graph-cdc benchmarks: {} cores, broker {bootstrap}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if want("cost") {
        bench_cost();
    }
    if want("throughput") {
        bench_throughput(&rt, &bootstrap);
    }
    if want("requests") {
        bench_requests(&rt, &bootstrap);
    }
    if want("latency") {
        bench_latency(&rt, &bootstrap);
    }
    if want("idle") {
        bench_idle(&bootstrap);
    }
    drop(own);
}
