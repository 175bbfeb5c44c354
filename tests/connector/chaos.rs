//! The chaos suite: the worker runs as its own process (`graph-cdc run`) against the
//! simulator and a broker of its own (so the broker can be killed and frozen), while the
//! simulator applies creates, updates and deletes of every kind without pause, and the suite:
//!
//! - SIGKILLs the worker at random moments and starts it again (a supervisor, like
//!   Kubernetes, also restarts it whenever it exits on its own);
//! - restarts the broker mid-transaction (frozen first, so the worker's open transaction is
//!   stuck in it, then SIGKILLed and started again on the same data);
//! - makes the broker unreachable for 30 s (SIGSTOP: open connections that answer nothing);
//! - injects 429 storms, 503/504, malformed and truncated bodies, expired tokens and 410s;
//! - starts a second worker on the same configuration: one is fenced, nothing is doubled.
//!
//! At the end a `read_committed` consumer's compacted view must equal the simulator's truth
//! for every partition, and no (key, etag) pair may be committed twice outside a marked
//! resync. The short mode runs in the normal test command (~2 minutes); the long mode is
//! opt-in:
//!
//! ```text
//! GRAPH_CDC_CHAOS_MINUTES=20 cargo test --release --test connector chaos_long -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_cdc_testkit::broker::KafkaBroker;
use graph_sim::faults::{FaultKind, FaultSpec, LinkKind};
use graph_sim::generate::{GenerateSpec, MutateSpec};
use graph_sim::{SimServer, SimSettings, SimState};
use rand::Rng;

use crate::common::*;

/// How long the broker stays unreachable.
const UNREACHABLE: Duration = Duration::from_secs(30);

/// What the suite did, printed at the end.
#[derive(Default, Debug)]
struct Totals {
    worker_kills: u64,
    worker_launches: u64,
    /// Exits the suite did not cause (the supervisor restarted the worker).
    worker_exits: Vec<String>,
    broker_restarts: u64,
    broker_unreachable_s: u64,
    fenced: u64,
    faults: BTreeMap<String, u64>,
    mutations: u64,
    records_checked: usize,
    partitions_checked: usize,
}

/// Worker processes on one config file, each logging to its own file.
struct Workers {
    cfg: PathBuf,
    dir: PathBuf,
    running: Vec<(Child, PathBuf)>,
}

impl Workers {
    fn launch(&mut self, totals: &mut Totals) {
        totals.worker_launches += 1;
        let log = self
            .dir
            .join(format!("worker-{}.log", totals.worker_launches));
        let child = Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
            .args(["run", "--config"])
            .arg(&self.cfg)
            .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("worker log"))
            .spawn()
            .expect("start graph-cdc run");
        self.running.push((child, log));
    }

    /// Removes the workers that exited: (status, last lines of their log).
    fn reap(&mut self) -> Vec<(ExitStatus, String)> {
        let mut out = Vec::new();
        self.running.retain_mut(|(c, log)| match c.try_wait() {
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                out.push((status, tail.join(" | ")));
                false
            }
            _ => true,
        });
        out
    }

    /// The supervisor: a worker that ended on its own is noted and started again.
    fn keep_one(&mut self, totals: &mut Totals) {
        for (status, tail) in self.reap() {
            totals.worker_exits.push(format!("{status}: {tail}"));
        }
        if self.running.is_empty() {
            self.launch(totals);
        }
    }

    fn kill_all(&mut self, totals: &mut Totals) {
        for (c, _) in &mut self.running {
            signal(c, libc::SIGKILL);
            let _ = c.wait();
            totals.worker_kills += 1;
        }
        self.running.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (c, _) in &mut self.running {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Continuous creates, updates and deletes of every kind (lists and calendars come and go).
fn start_mutator(state: Arc<SimState>, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let start = window_start();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let m = MutateSpec {
                count: 3,
                start,
                days: 31,
                structural: i % 10 == 0,
                seed: Some(10_000 + i),
                ..Default::default()
            };
            let s = graph_sim::generate::mutate(&mut state.store.write(), &m);
            done.fetch_add(s.ops.values().sum::<u64>(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

fn window_start() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").expect("start")
}

fn fault(kind: FaultKind, probability: f64) -> FaultSpec {
    FaultSpec {
        kind,
        user: None,
        endpoint: None,
        on: None,
        probability: Some(probability),
        count: None,
        retry_after: Some(0.2),
        delay_ms: Some(300),
        location: None,
        body_bytes: None,
    }
}

/// One bout of Graph trouble: a 429 storm with 5xx, malformed and truncated bodies, 410s on
/// both kinds of links, evicted state tokens and expired access tokens, for `for_how_long`.
async fn graph_storm(sim: &SimServer, for_how_long: Duration, totals: &mut Totals) {
    let s = &sim.state;
    s.add_fault(fault(FaultKind::Throttle, 0.5));
    s.add_fault(fault(FaultKind::Unavailable, 0.05));
    s.add_fault(fault(FaultKind::GatewayTimeout, 0.05));
    s.add_fault(fault(FaultKind::Malformed, 0.05));
    s.add_fault(fault(FaultKind::Truncated, 0.05));
    s.add_fault(fault(FaultKind::Slow, 0.05));
    for on in [LinkKind::Next, LinkKind::Delta] {
        s.add_fault(FaultSpec {
            on: Some(on),
            ..fault(FaultKind::Gone, 0.05)
        });
    }
    // A rule with a count disappears once spent: it is counted from the 401s answered.
    let before_401 = unauthorized(s);
    s.add_fault(FaultSpec {
        probability: None,
        count: Some(3),
        ..fault(FaultKind::Unauthorized, 0.0)
    });
    tokio::time::sleep(for_how_long / 2).await;
    let evicted = s.evict_tokens(None).unwrap_or(0);
    *totals
        .faults
        .entry("evicted_state_tokens".into())
        .or_default() += evicted as u64;
    tokio::time::sleep(for_how_long / 2).await;
    let mut faults = s.faults.lock();
    for rule in faults.list() {
        *totals
            .faults
            .entry(format!("{:?}", rule.spec.kind).to_lowercase())
            .or_default() += rule.fired;
    }
    faults.clear();
    drop(faults);
    *totals
        .faults
        .entry("expired_access_token".into())
        .or_default() += unauthorized(s) - before_401;
}

fn unauthorized(s: &SimState) -> u64 {
    let stats = s.stats.lock();
    stats.requests.keys().map(|e| stats.count(e, 401)).sum()
}

/// Freezes the broker long enough for the worker to be inside a transaction, then kills and
/// restarts it on the same data.
fn restart_broker_mid_transaction(broker: &mut KafkaBroker, totals: &mut Totals) {
    broker.freeze();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart().expect("broker restart");
    totals.broker_restarts += 1;
}

fn broker_unreachable(broker: &KafkaBroker, totals: &mut Totals) {
    broker.freeze();
    std::thread::sleep(UNREACHABLE);
    broker.thaw();
    totals.broker_unreachable_s += UNREACHABLE.as_secs();
}

/// Two workers on one configuration: the newer fences the older, which exits; nothing is
/// committed twice (checked at the end).
async fn two_workers(workers: &mut Workers, totals: &mut Totals) {
    workers.keep_one(totals);
    workers.launch(totals);
    let t0 = Instant::now();
    loop {
        let ended = workers.reap();
        if let Some((status, tail)) = ended.first() {
            assert_eq!(ended.len(), 1, "only one of two workers ends");
            assert!(!status.success(), "the fenced worker fails: {status}");
            assert!(
                tail.to_lowercase().contains("fenc"),
                "the worker that ended was fenced: {tail}"
            );
            totals.fenced += 1;
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "neither of two workers on one transactional id was fenced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(workers.running.len(), 1, "the other worker keeps running");
}

async fn pause(workers: &mut Workers, totals: &mut Totals, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        workers.keep_one(totals);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the suite: `long` = None is the short mode (one of each action, in order), else
/// random actions for that long.
async fn chaos(long: Option<Duration>) {
    let mut broker = tokio::task::block_in_place(KafkaBroker::start).expect("a broker");
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .expect("simulator");
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
    let gen = GenerateSpec {
        users: 4,
        tenant: Some(TENANT.into()),
        start: window_start(),
        days: 31,
        events_per_user: 80,
        tasks_per_list: 20,
        seed: Some(77),
        ..Default::default()
    };
    let users: Vec<String> = graph_sim::generate::generate(&mut sim.state.store.write(), &gen)
        .expect("generate")
        .into_iter()
        .map(|u| u.id)
        .collect();
    let spec = spec(&sim, &broker.bootstrap(), Vec::<PartitionId>::new());
    let dir =
        std::env::temp_dir().join(format!("graph-cdc-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("worker.toml");
    std::fs::write(&cfg, config(&spec, &users)).expect("config");

    let mut totals = Totals::default();
    let mut workers = Workers {
        cfg,
        dir: dir.clone(),
        running: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mutations = Arc::new(AtomicU64::new(0));
    start_mutator(sim.state.clone(), stop.clone(), mutations.clone());
    let mut rng = rand::rng();
    let started = Instant::now();

    match long {
        None => {
            // Kills during the initial sync and the first incremental rounds.
            for _ in 0..3 {
                workers.keep_one(&mut totals);
                let ms = rng.random_range(500..3000);
                pause(&mut workers, &mut totals, Duration::from_millis(ms)).await;
                workers.kill_all(&mut totals);
            }
            workers.keep_one(&mut totals);
            graph_storm(&sim, Duration::from_secs(12), &mut totals).await;
            pause(&mut workers, &mut totals, Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| {
                restart_broker_mid_transaction(&mut broker, &mut totals)
            });
            pause(&mut workers, &mut totals, Duration::from_secs(3)).await;
            tokio::task::block_in_place(|| broker_unreachable(&broker, &mut totals));
            pause(&mut workers, &mut totals, Duration::from_secs(3)).await;
            two_workers(&mut workers, &mut totals).await;
        }
        Some(d) => {
            // Every kind of trouble once first (a short run could otherwise draw no storm at
            // all), then at random.
            let mut round = 0u32;
            while started.elapsed() < d {
                workers.keep_one(&mut totals);
                let pick = match round {
                    0 => 0,
                    1 => 4,
                    2 => 6,
                    3 => 7,
                    4 => 8,
                    _ => rng.random_range(0..10),
                };
                round += 1;
                match pick {
                    0..=3 => workers.kill_all(&mut totals),
                    4..=5 => graph_storm(&sim, Duration::from_secs(20), &mut totals).await,
                    6 => tokio::task::block_in_place(|| {
                        restart_broker_mid_transaction(&mut broker, &mut totals)
                    }),
                    7 => tokio::task::block_in_place(|| broker_unreachable(&broker, &mut totals)),
                    _ => two_workers(&mut workers, &mut totals).await,
                }
                let ms = rng.random_range(1000..15_000);
                pause(&mut workers, &mut totals, Duration::from_millis(ms)).await;
            }
        }
    }

    // Quiet: no more changes or faults; the worker catches up and must equal the truth.
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.keep_one(&mut totals);
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(120)));
    let records: Vec<Committed> = all_records(&spec);
    totals.mutations = mutations.load(Ordering::Relaxed);
    totals.records_checked = records.len();
    totals.partitions_checked = all_partitions(&sim, WINDOW).len();
    let dups = duplicates(&records);
    // Rounds restarted from scratch repeat nothing either (reconciliation state): no upsert
    // of the same content twice, resync or not.
    let resyncs = records
        .iter()
        .filter(|r| r.headers.contains_key("graph-cdc.resync"))
        .count();
    let repeats = {
        let mut seen = std::collections::HashSet::new();
        records
            .iter()
            .filter(|r| {
                r.value
                    .as_ref()
                    .is_some_and(|v| !seen.insert((r.key.clone(), v.clone())))
            })
            .count()
    };
    let faults: u64 = totals.faults.values().sum();
    println!(
        "chaos ({mode}, {secs} s): worker kills {kills}, worker launches {launches}, \
         unplanned worker exits {exits}, broker restarts {restarts}, broker unreachable {unreach} s, \
         fenced workers {fenced}, Graph faults injected {faults} {by_kind:?}, mutations {muts}, \
         partitions checked {parts}, records checked {recs} (of a resync {resyncs}), mismatches 0, \
         duplicates {dups}, repeated upserts {repeats}",
        mode = if long.is_some() { "long" } else { "short" },
        secs = started.elapsed().as_secs(),
        kills = totals.worker_kills,
        launches = totals.worker_launches,
        exits = totals.worker_exits.len(),
        restarts = totals.broker_restarts,
        unreach = totals.broker_unreachable_s,
        fenced = totals.fenced,
        by_kind = totals.faults,
        muts = totals.mutations,
        parts = totals.partitions_checked,
        recs = totals.records_checked,
        dups = dups.len(),
    );
    for e in &totals.worker_exits {
        println!("  unplanned exit: {e}");
    }
    assert_eq!(dups, Vec::<String>::new(), "committed twice");
    assert_eq!(repeats, 0, "an upsert of the same content committed twice");
    assert!(totals.mutations > 100, "changes kept coming");
    assert!(faults > 0, "Graph faults fired");
    assert!(totals.broker_restarts + totals.broker_unreachable_s > 0 || long.is_some());
    workers.kill_all(&mut totals);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short() {
    chaos(None).await;
}

/// The long mode: `GRAPH_CDC_CHAOS_MINUTES` (default 20) of random chaos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored and GRAPH_CDC_CHAOS_MINUTES"]
async fn chaos_long() {
    let minutes: u64 = std::env::var("GRAPH_CDC_CHAOS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(20);
    chaos(Some(Duration::from_secs(minutes * 60))).await;
}
