//! Several workers of one connector (issue 14, item 7): the initial sync of 20,000 partitions
//! with 1, 2 and 3 workers, and the failover after a SIGKILL.
//!
//! ```text
//! cargo bench --bench fleet        # ~5 minutes
//! ```
//!
//! 5,000 listed users × (calendar view, calendar list, To Do lists, the tasks of their one
//! list) = 20,000 partitions, each user with 2 events in the window and 2 tasks. Every run is
//! a connector of its own (name, data, offsets, state, control and shards topics), `[worker]
//! shards = 12` (so 1, 2 and 3 workers split it evenly), `kafka.session_timeout = "6s"`,
//! `worker.heartbeat_interval = "1s"` (how long an idle partition's new offset may wait to be
//! written; the connector's default is 30 s: see BENCHMARKS.md), the 60 s poll interval;
//! workers are `graph-cdc run` processes with distinct `kafka.worker_id`s (`w1`, `w2`, `w3`).
//! Before the first run the broker's transaction and group coordinators are warmed up, so
//! the one-worker run does not pay for creating their topics.
//!
//! - **Initial sync**, for N = 1, 2, 3 (fresh topics each): N processes launched at once; the
//!   time from launch until every partition's first offset past round 1 (`round` ≥ 2) is
//!   readable in the offsets topic (a `read_committed` consumer in this process follows it),
//!   checked against the workers' `/metrics` (`graph_cdc_partitions{state="running"}` summed
//!   over the workers reaches 20,000) and their `GET /connectors/{name}/offsets` (the union
//!   past round 1 covers the 20,000). Throughput = partitions (and records) per second; its
//!   ratio to one worker. CPU: the workers', the simulator's threads, the broker's JVM (when
//!   started here), and the whole machine's busy cores (`/proc/stat`).
//! - **Failover**, on the 3-worker connector after its sync, 10 times (w1, w2, w3, w1, …),
//!   each once every worker owns shards and every partition runs: the partitions the victim
//!   runs (its `GET /connectors/{name}/status`), SIGKILL, then the time until every one of
//!   them has a new record in the offsets topic readable with `read_committed` (past the
//!   topic's high watermarks read right after the kill: written by its new owner); the time
//!   until the survivors log their new assignment (detection and rebalance) and own all 12
//!   shards (`graph_cdc_shards_owned`: producers initialised, offsets and state read). Then
//!   the victim is relaunched under its `worker_id` and timed until it owns shards and runs
//!   partitions again with every partition of the fleet running; 3 s later the next kill.
//! - **Restart in place**, 3 times: SIGKILL and an immediate relaunch under the same
//!   `worker_id` (a supervisor restarting the process within the session timeout): the time
//!   until it runs its partitions again, until every one of them committed again, and the
//!   other workers' shard moves meanwhile (static membership: none expected).
//!
//! Knobs (to try the bench out; the figures in BENCHMARKS.md use the defaults):
//! `GRAPH_CDC_FLEET_USERS` (5000), `GRAPH_CDC_FLEET_KILLS` (10), `GRAPH_CDC_FLEET_RESTARTS`
//! (3), `GRAPH_CDC_FLEET_HEARTBEAT` (`1s`), `GRAPH_CDC_FLEET_KEEP_LOGS=1` (keep the workers'
//! logs, `warn` plus shard moves, under the temporary directory; they are kept anyway when one
//! has an `ERROR` line, whose tail is printed), `GRAPH_CDC_FLEET_WORKERS` (`1,2,3`: the fleet
//! sizes synced; the last one is the one killed), `GRAPH_CDC_FLEET_STEADY_SECS` (0: after
//! the last sync and a 70 s warm-up, each worker's resident memory and CPU over this many
//! seconds). Issue 15's fleet of 400,000 partitions over 4 workers:
//! `GRAPH_CDC_FLEET_USERS=100000 GRAPH_CDC_FLEET_WORKERS=4 GRAPH_CDC_FLEET_STEADY_SECS=120
//! GRAPH_CDC_FLEET_KILLS=2 GRAPH_CDC_FLEET_RESTARTS=0 GRAPH_CDC_FLEET_HEARTBEAT=30s
//! GRAPH_CDC_FLEET_BATCH_POLLS=1 cargo bench --bench fleet`; `GRAPH_CDC_FLEET_BATCH_POLLS=1`
//! turns the workers' `graph.batch_polls` on (default off).
//!
//! The simulator runs in this process on threads named `sim`; the broker is a real Apache Kafka
//! on loopback (`GRAPH_CDC_TEST_KAFKA`, or one started here): all of it, the workers included,
//! on the same cores.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_cdc::source::PartitionId;
use graph_cdc_testkit::broker::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::*;

const SHARDS: usize = 12;

/// `GRAPH_CDC_FLEET_USERS` (default 5,000: 20,000 partitions), `GRAPH_CDC_FLEET_KILLS`
/// (default 10): smaller runs to try the bench out.
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

fn users() -> usize {
    static USERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *USERS.get_or_init(|| env_usize("GRAPH_CDC_FLEET_USERS", 5000).max(1))
}

/// Calendar view, calendar list, To Do lists and the one list's tasks, per user.
fn partitions() -> usize {
    users() * 4
}

fn kill_count() -> usize {
    env_usize("GRAPH_CDC_FLEET_KILLS", 10)
}

/// `GRAPH_CDC_FLEET_HEARTBEAT` (default `1s`): the workers' `worker.heartbeat_interval`, how
/// long an idle partition's new offset may wait to be written (the connector's default is 30s).
fn heartbeat() -> String {
    std::env::var("GRAPH_CDC_FLEET_HEARTBEAT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "1s".into())
}

/// `GRAPH_CDC_FLEET_BATCH_POLLS` (default 0): the workers' `graph.batch_polls` (idle polls
/// sent 20 to a JSON batch, as issue 15 measures).
fn batch_polls() -> bool {
    env_usize("GRAPH_CDC_FLEET_BATCH_POLLS", 0) != 0
}

/// `GRAPH_CDC_FLEET_RESTARTS` (default 3): SIGKILLs relaunched at once, after the others.
fn restart_count() -> usize {
    env_usize("GRAPH_CDC_FLEET_RESTARTS", 3)
}

/// `GRAPH_CDC_FLEET_WORKERS` (default `1,2,3`): the fleet sizes synced, in order; the last
/// one is measured at rest and killed (issue 15: `4` alone, with 100,000 users).
fn fleet_sizes() -> Vec<usize> {
    let v = std::env::var("GRAPH_CDC_FLEET_WORKERS").unwrap_or_default();
    let sizes: Vec<usize> = v
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("GRAPH_CDC_FLEET_WORKERS: worker counts")
        })
        .collect();
    if sizes.is_empty() {
        vec![1, 2, 3]
    } else {
        sizes
    }
}

/// `GRAPH_CDC_FLEET_STEADY_SECS` (default 0: left out): after the last fleet's sync and a
/// 70 s warm-up (every partition's first idle poll), each worker's resident memory and CPU
/// over this window.
fn steady_secs() -> u64 {
    env_usize("GRAPH_CDC_FLEET_STEADY_SECS", 0) as u64
}

/// 900 s, or 9 s per 1,000 partitions above 100,000.
fn sync_timeout() -> Duration {
    Duration::from_secs((partitions() as u64 * 9 / 1000).max(900))
}
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);
/// What the worker processes log (stderr, a file each): warnings, and the shard moves.
const LOG_FILTER: &str =
    "warn,graph_cdc::sink::membership=info,graph_cdc::metrics::worker=info,graph_cdc::worker=info";

// ---------------------------------------------------------------------------------------
// The connector's workers.

#[allow(clippy::too_many_arguments)]
fn worker_config(
    sim: &Sim,
    bootstrap: &str,
    users: &[String],
    name: &str,
    run: &str,
    id: &str,
    listen: &str,
) -> String {
    format!(
        r#"
name = "{name}"
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
shards_topic = "shards-{run}"
control_topic = "control-{run}"
worker_id = "{id}"
session_timeout = "6s"
create_topics = true
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
filter = "{LOG_FILTER}"
[worker]
shards = {SHARDS}
heartbeat_interval = "{heartbeat}"
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
        heartbeat = heartbeat(),
        batch = batch_polls(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// `GET http://{listen}{path}` (empty when it fails).
fn get(listen: &str, path: &str) -> Vec<u8> {
    std::process::Command::new("curl")
        .args(["-sf", "--max-time", "30", &format!("http://{listen}{path}")])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

/// A scrape of a worker's `/metrics`.
struct Scrape(String);

impl Scrape {
    /// Sum of the series of `name` (with its `{` for a labelled metric, a space after it for
    /// an unlabelled one) whose labels contain every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0
    }

    fn partitions(&self, state: &str) -> f64 {
        self.sum("graph_cdc_partitions{", &[&format!("state=\"{state}\"")])
    }

    fn shards(&self) -> f64 {
        self.sum("graph_cdc_shards_owned ", &[])
    }

    fn states(&self) -> String {
        [
            "running",
            "initial_sync",
            "unassigned",
            "failed",
            "stopped",
            "paused",
        ]
        .iter()
        .map(|s| format!("{s} {}", self.partitions(s)))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// One `graph-cdc run` process.
struct Proc {
    id: String,
    child: std::process::Child,
    listen: String,
    log: PathBuf,
}

impl Proc {
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

    fn scrape(&self) -> Scrape {
        Scrape(String::from_utf8_lossy(&get(&self.listen, "/metrics")).into_owned())
    }

    /// The partitions this worker lists, with their states and traces
    /// (`GET /connectors/{name}/status?local=true`: its own, not its peers' gathered).
    fn status(&self, name: &str) -> Vec<(PartitionId, String, String)> {
        let body = get(
            &self.listen,
            &format!("/connectors/{name}/status?local=true"),
        );
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        v["tasks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        let p = PartitionId::from_json(&t["partition"]).ok()?;
                        Some((
                            p,
                            t["state"].as_str().unwrap_or_default().to_string(),
                            t["trace"].as_str().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partitions whose offset this worker knows past round 1
    /// (`GET /connectors/{name}/offsets?local=true`).
    fn past_first_round(&self, name: &str) -> Vec<PartitionId> {
        let body = get(
            &self.listen,
            &format!("/connectors/{name}/offsets?local=true"),
        );
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        v["offsets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|o| o["offset"]["round"].as_u64().unwrap_or(0) >= 2)
                    .filter_map(|o| PartitionId::from_json(&o["partition"]).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and the process reaped.
    fn kill(&mut self) {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The offsets topic as a `read_committed` consumer sees it.

/// Partitions to see committed again after a kill: their records past `from` (the topic's
/// high watermarks right after the kill, by Kafka partition).
struct Watch {
    from: HashMap<i32, i64>,
    targets: HashSet<PartitionId>,
    /// When each target's first record past `from` was read, its round, and the offsets
    /// topic's partition it is on.
    first: HashMap<PartitionId, (Instant, u64, i32)>,
}

#[derive(Default)]
struct Seen {
    /// The offsets topic's partitions, once it exists.
    parts: Vec<i32>,
    /// When each partition's first offset past round 1 became readable.
    synced: HashMap<PartitionId, Instant>,
    /// Each partition's last offset read: its round, and when.
    last: HashMap<PartitionId, (u64, Instant)>,
    records: u64,
    watch: Option<Watch>,
    errors: Vec<String>,
}

/// A thread following the offsets topic with `read_committed` from its beginning.
struct Watcher {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(bootstrap: &str, topic: &str, name: &str) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, t, n, s, st) = (
            bootstrap.to_string(),
            topic.to_string(),
            name.to_string(),
            seen.clone(),
            stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("offsets-watch".into())
            .spawn(move || follow(&b, &t, &n, &s, &st))
            .expect("watcher thread");
        Watcher {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn follow(bootstrap: &str, topic: &str, name: &str, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fleet-watch-{}", run_id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("offsets consumer");
    // The workers create the topic: wait for it (a listing of every topic creates none).
    let parts: Vec<i32> = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(5)) {
            if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                if !t.partitions().is_empty() {
                    break t.partitions().iter().map(|p| p.id()).collect();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    seen.lock().unwrap_or_else(|e| e.into_inner()).parts = parts;
    while !stop.load(Ordering::SeqCst) {
        let m = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                if s.errors.len() < 20 {
                    s.errors.push(e.to_string());
                }
                continue;
            }
            None => continue,
        };
        let now = Instant::now();
        let Ok(r) = graph_cdc::offsets::decode(m.key().unwrap_or_default(), m.payload()) else {
            continue;
        };
        if r.connector != name {
            continue;
        }
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.records += 1;
        let round = r.offset.as_ref().map_or(0, |o| o.round);
        if round >= 2 {
            s.synced.entry(r.partition.clone()).or_insert(now);
        }
        s.last.insert(r.partition.clone(), (round, now));
        if let Some(w) = s.watch.as_mut() {
            let past = w
                .from
                .get(&m.partition())
                .is_some_and(|from| m.offset() >= *from);
            if past && w.targets.contains(&r.partition) {
                w.first
                    .entry(r.partition)
                    .or_insert((now, round, m.partition()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A connector run by N workers.

struct Fleet {
    name: String,
    procs: Vec<Option<Proc>>,
    /// Launches so far of each worker (its log files are `{id}-{k}.log`).
    launches: Vec<usize>,
    configs: Vec<PathBuf>,
    dir: PathBuf,
    watcher: Watcher,
    /// A `read_uncommitted` client for the offsets topic's high watermarks.
    hw: BaseConsumer,
    /// A `read_committed` client for the last stable offsets (diagnostics).
    lso: BaseConsumer,
    offsets_topic: String,
}

impl Fleet {
    fn new(sim: &Sim, bootstrap: &str, users: &[String], n: usize) -> Fleet {
        let run = format!("{n}w-{}", run_id());
        let name = format!("fleet-{run}");
        let dir = std::env::temp_dir().join(format!("graph-cdc-fleet-{run}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let configs = (1..=n)
            .map(|i| {
                let id = format!("w{i}");
                let listen = format!("127.0.0.1:{}", free_port());
                let path = dir.join(format!("{id}.toml"));
                let toml = worker_config(sim, bootstrap, users, &name, &run, &id, &listen);
                std::fs::write(&path, toml).expect("config");
                path
            })
            .collect();
        let offsets_topic = format!("offsets-{run}");
        Fleet {
            watcher: Watcher::start(bootstrap, &offsets_topic, &name),
            hw: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("fleet-hw-{run}"))
                .create()
                .expect("watermarks client"),
            lso: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("fleet-lso-{run}"))
                .set("isolation.level", "read_committed")
                .create()
                .expect("watermarks client"),
            offsets_topic,
            name,
            procs: (0..n).map(|_| None).collect(),
            launches: vec![0; n],
            configs,
            dir,
        }
    }

    fn launch(&mut self, i: usize) {
        let id = format!("w{}", i + 1);
        self.launches[i] += 1;
        let log = self.dir.join(format!("{id}-{}.log", self.launches[i]));
        let cfg = &self.configs[i];
        let text = std::fs::read_to_string(cfg).expect("config");
        let listen = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("listen")
            .to_string();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("graph-cdc run");
        self.procs[i] = Some(Proc {
            id,
            child,
            listen,
            log,
        });
    }

    fn running(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().flatten()
    }

    /// Panics, after printing each worker's state and log tail, if a worker exited.
    fn check_alive(&mut self) {
        let mut dead = None;
        for p in self.procs.iter_mut().flatten() {
            if let Some(s) = p.exited() {
                dead = Some(format!("worker {} exited: {s}", p.id));
            }
        }
        if let Some(why) = dead {
            self.fail(&why);
        }
    }

    fn fail(&self, what: &str) -> ! {
        for p in self.running() {
            eprintln!(
                "--- {} (partitions: {}; shards {}), last log lines:\n{}",
                p.id,
                p.scrape().states(),
                p.scrape().shards(),
                tail(&p.log, 30)
            );
        }
        eprintln!("logs kept in {}", self.dir.display());
        panic!("{what}");
    }

    /// The offsets topic's high watermarks now, by Kafka partition.
    /// Per partition of the offsets topic with an open transaction: its high watermark less
    /// its last stable offset.
    fn open_transactions(&self) -> Vec<(i32, i64)> {
        let parts = self.watcher.lock().parts.clone();
        let t = Duration::from_secs(10);
        parts
            .into_iter()
            .filter_map(|p| {
                let (_, high) = self.hw.fetch_watermarks(&self.offsets_topic, p, t).ok()?;
                let (_, stable) = self.lso.fetch_watermarks(&self.offsets_topic, p, t).ok()?;
                (high > stable).then_some((p, high - stable))
            })
            .collect()
    }

    fn watermarks(&self) -> HashMap<i32, i64> {
        let parts = self.watcher.lock().parts.clone();
        parts
            .into_iter()
            .map(|p| {
                let (_, high) = self
                    .hw
                    .fetch_watermarks(&self.offsets_topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (p, high)
            })
            .collect()
    }

    /// Every log file of this fleet: its worker launch, lines, `ERROR` lines and `WARN`
    /// lines; prints the tail of those with errors. Whether any had errors.
    fn report_logs(&self) -> bool {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|e| e == "log"));
        files.sort();
        let mut any = false;
        let mut summary = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines = text.lines().count();
            let errors = text.lines().filter(|l| l.contains("ERROR")).count();
            let warns = text.lines().filter(|l| l.contains("WARN")).count();
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            summary.push(format!(
                "{name}: {lines} lines, {errors} ERROR, {warns} WARN"
            ));
            // The first few distinct warnings (their text after the level), shortened.
            let mut distinct: Vec<String> = Vec::new();
            for l in text.lines().filter(|l| l.contains("WARN")) {
                let l = strip_ansi(l);
                let msg: String = l
                    .split_once("WARN")
                    .map_or(l.as_str(), |(_, m)| m)
                    .trim()
                    .chars()
                    .take(240)
                    .collect();
                let head: String = msg.chars().take(60).collect();
                if distinct.len() < 3 && !distinct.iter().any(|d| d.starts_with(&head)) {
                    distinct.push(msg);
                }
            }
            for d in &distinct {
                println!("      {name} WARN: {d}");
            }
            if errors > 0 {
                any = true;
                println!("  --- {name}: {errors} ERROR lines; the last ones:");
                for l in text
                    .lines()
                    .filter(|l| l.contains("ERROR"))
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                    .take(8)
                    .rev()
                {
                    println!("      {}", strip_ansi(l));
                }
                println!("  --- {name}: tail:\n{}", tail(f, 15));
            }
        }
        println!("  logs of {}: {}", self.name, summary.join("; "));
        any
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.procs.clear();
        let keep = std::env::var("GRAPH_CDC_FLEET_KEEP_LOGS").is_ok_and(|v| v == "1");
        if !std::thread::panicking() && !self.report_logs() && !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            println!("  logs kept in {}", self.dir.display());
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a log file gained since `from` bytes.
fn log_since(path: &Path, from: u64) -> String {
    let mut out = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(std::io::SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_string(&mut out);
        }
    }
    strip_ansi(&out)
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// CPU seconds of the simulator's threads (named `sim`) in this process.
fn sim_cpu() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
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
            out +=
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tick;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Initial sync.

struct Sync {
    workers: usize,
    /// Launch → the last partition's first offset past round 1 readable (`read_committed`).
    secs: f64,
    /// Launch → the first partition's first offset past round 1 readable (start-up: processes,
    /// topics, the group's first assignment).
    first_secs: f64,
    /// Launch → `graph_cdc_partitions{state="running"}` summed over the workers = 20,000
    /// (sampled every 0.5 s).
    metric_secs: f64,
    records: f64,
    /// CPU seconds of the workers, summed, and of the simulator, to the end of the sync.
    cpu: f64,
    sim_cpu: f64,
    /// Largest resident memory of any one worker.
    rss_max: f64,
    /// Cores busy on the whole machine, on average over the sync (`/proc/stat`).
    machine: f64,
    /// CPU seconds of the broker's JVM (when this bench started it).
    broker_cpu: Option<f64>,
    /// Shards each worker owned at the end.
    shards: Vec<f64>,
    /// Partitions each worker ran at the end.
    partitions: Vec<f64>,
}

impl Sync {
    fn rate(&self) -> f64 {
        partitions() as f64 / self.secs.max(0.001)
    }

    /// Partitions per second from the first partition synced to the last (start-up left out).
    fn window_rate(&self) -> f64 {
        partitions() as f64 / (self.secs - self.first_secs).max(0.001)
    }
}

/// CPU seconds (user + system) of process `pid` so far.
fn pid_cpu(pid: u32) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / tick
}

/// (busy, total) time of the whole machine so far, in ticks of every core (`/proc/stat`).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Creates the broker's internal topics (transaction and group coordinators' state) before
/// the first run, which would otherwise pay for them: a transactional producer initialised,
/// a group's offsets asked for.
fn warm_up(bootstrap: &str) {
    use rdkafka::producer::{BaseProducer, Producer};
    let t = Instant::now();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("fleet-warmup-{}", run_id()))
        .create()
        .expect("warm-up producer");
    if let Err(e) = p.init_transactions(Duration::from_secs(60)) {
        println!("fleet: warm-up: initialising a transactional producer: {e}");
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("fleet-warmup-{}", run_id()))
        .create()
        .expect("warm-up consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("fleet-warmup", 0);
    // Refused while the group coordinator's topic is being created and loaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
        if Instant::now() > deadline {
            println!("fleet: warm-up: a group's offsets: {e}");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "fleet: broker warmed up (transaction and group coordinators) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn initial_sync(
    sim: &Sim,
    bootstrap: &str,
    broker: Option<u32>,
    users: &[String],
    n: usize,
) -> (Sync, Fleet) {
    let mut fleet = Fleet::new(sim, bootstrap, users, n);
    let sim0 = sim_cpu();
    let machine0 = machine_cpu();
    let broker0 = broker.map(pid_cpu);
    let mut machine_end = machine0;
    let mut broker_end = broker0;
    let t0 = Instant::now();
    for i in 0..n {
        fleet.launch(i);
    }
    let mut metric_at = None;
    let mut rss_max = 0.0f64;
    let mut last_print = Instant::now();
    let mut cpu = 0.0;
    let mut sim_end = 0.0;
    // Every partition's first offset past round 1 in the topic, and the metric (sampled every
    // 0.5 s); then the offsets the workers know (asked every 5 s).
    let mut last_offsets = Instant::now() - Duration::from_secs(10);
    let (first_secs, secs) = loop {
        std::thread::sleep(Duration::from_millis(500));
        if t0.elapsed() > sync_timeout() {
            fleet.fail("timed out waiting for the initial sync");
        }
        fleet.check_alive();
        let mut running = 0.0;
        let mut cpu_now = 0.0;
        for p in fleet.running() {
            let (c, rss) = p.usage();
            cpu_now += c;
            rss_max = rss_max.max(rss);
            running += p.scrape().partitions("running");
        }
        if metric_at.is_none() && running >= partitions() as f64 {
            metric_at = Some(t0.elapsed().as_secs_f64());
        }
        let (synced, first, last) = {
            let s = fleet.watcher.lock();
            (
                s.synced.len(),
                s.synced.values().min().copied(),
                s.synced.values().max().copied(),
            )
        };
        if synced >= partitions() && cpu == 0.0 {
            cpu = cpu_now;
            sim_end = sim_cpu();
            machine_end = machine_cpu();
            broker_end = broker.map(pid_cpu);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "  {:>4.0} s: {} running (metric), {synced} past round 1 in the offsets topic",
                t0.elapsed().as_secs_f64(),
                running
            );
        }
        if metric_at.is_none() || synced < partitions() {
            continue;
        }
        if last_offsets.elapsed() < Duration::from_secs(5) {
            continue;
        }
        last_offsets = Instant::now();
        let known: HashSet<PartitionId> = fleet
            .running()
            .flat_map(|p| p.past_first_round(&fleet.name))
            .collect();
        if known.len() >= partitions() {
            let since = |t: Option<Instant>| t.map_or(0.0, |t| t.duration_since(t0).as_secs_f64());
            break (since(first), since(last));
        }
    };
    let scrapes: Vec<Scrape> = fleet.running().map(Proc::scrape).collect();
    let sync = Sync {
        workers: n,
        first_secs,
        secs,
        metric_secs: metric_at.unwrap_or_default(),
        records: scrapes
            .iter()
            .map(|s| s.sum("graph_cdc_records_written_total", &[]))
            .sum(),
        cpu,
        sim_cpu: sim_end - sim0,
        rss_max,
        machine: (machine_end.0 - machine0.0) / (machine_end.1 - machine0.1).max(1.0) * cores(),
        broker_cpu: broker_end.zip(broker0).map(|(e, s)| e - s),
        shards: scrapes.iter().map(Scrape::shards).collect(),
        partitions: scrapes.iter().map(|s| s.partitions("running")).collect(),
    };
    println!(
        "fleet: {n} worker(s): {} partitions synced in {:.1} s (first at {:.1} s; metric: {:.1} s), {:.0} partitions/s, \
         {:.0} records ({:.0}/s); workers' CPU {:.1} s, simulator {:.1} s, broker {}, machine {:.2} cores busy; largest worker {:.1} MiB; \
         shards {:?}, partitions running {:?}",
        partitions(),
        sync.secs,
        sync.first_secs,
        sync.metric_secs,
        sync.rate(),
        sync.records,
        sync.records / sync.secs.max(0.001),
        sync.cpu,
        sync.sim_cpu,
        sync.broker_cpu
            .map_or("not measured".to_string(), |c| format!("{c:.1} s")),
        sync.machine,
        sync.rss_max,
        sync.shards,
        sync.partitions
    );
    (sync, fleet)
}

// ---------------------------------------------------------------------------------------
// Failover.

/// What a SIGKILL of a worker led to.
struct Kill {
    victim: String,
    orphaned: usize,
    /// Kill → the last survivor's new assignment received (its log: detection + rebalance).
    assigned: f64,
    /// Kill → the survivors own every shard (`graph_cdc_shards_owned`: producers initialised,
    /// offsets and state read).
    taken: f64,
    /// Kill → every orphaned partition committed again.
    committed: f64,
    /// Orphaned partitions the survivors' status lists `RUNNING` (on exactly one) afterwards.
    running_after: usize,
    /// The survivors' `elapsed_ms` of taking the shards over (producers, offsets, state).
    takeover_ms: Vec<u64>,
    back: Back,
}

/// A relaunched worker getting back to work.
#[derive(Default)]
struct Back {
    /// Relaunch → its `/metrics` answers (the process is up).
    up: f64,
    /// Relaunch → its assignment received (its log).
    assigned: f64,
    /// Relaunch → its shards owned again (producers initialised, offsets and state read).
    shards: f64,
    /// Relaunch → it runs its partitions again (and every partition of the fleet runs).
    running: f64,
    partitions: f64,
}

fn elapsed_ms(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let at = l.find("elapsed_ms=")? + "elapsed_ms=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

type Utc = chrono::DateTime<chrono::Utc>;

/// Seconds from `from` to the last log line of `log` saying the group assigned shards.
fn assigned_after(log: &str, from: Utc) -> Option<f64> {
    log.lines()
        .filter(|l| l.contains("graph_cdc::sink::membership") && l.contains("shards assigned"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
        .map(|t| {
            (t.with_timezone(&chrono::Utc) - from)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6
        })
        .reduce(f64::max)
}

/// Waits until every worker owns shards, all of them are owned and every partition runs.
fn settle(fleet: &mut Fleet, what: &str) {
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if t0.elapsed() > FAILOVER_TIMEOUT {
            fleet.fail(&format!("{what}: the fleet did not settle"));
        }
        fleet.check_alive();
        let scrapes: Vec<Scrape> = fleet.running().map(Proc::scrape).collect();
        let owned: f64 = scrapes.iter().map(Scrape::shards).sum();
        let running: f64 = scrapes.iter().map(|s| s.partitions("running")).sum();
        if scrapes.iter().all(|s| s.shards() > 0.0)
            && owned >= SHARDS as f64
            && running >= partitions() as f64
        {
            return;
        }
    }
}

/// Relaunches worker `v` and waits until it owns shards and runs partitions again, with every
/// partition of the fleet running.
fn relaunch(fleet: &mut Fleet, v: usize, what: &str) -> Back {
    let t_rel = Instant::now();
    let wall = chrono::Utc::now();
    fleet.launch(v);
    let mut back = Back::default();
    let (mut up, mut shards) = (None, None);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if t_rel.elapsed() > FAILOVER_TIMEOUT {
            fleet.fail(&format!(
                "{what}: w{} not running its share after {} s",
                v + 1,
                FAILOVER_TIMEOUT.as_secs()
            ));
        }
        fleet.check_alive();
        let scrapes: Vec<Scrape> = fleet.running().map(Proc::scrape).collect();
        let owned: f64 = scrapes.iter().map(Scrape::shards).sum();
        if up.is_none() && !scrapes[v].0.is_empty() {
            up = Some(t_rel.elapsed().as_secs_f64());
        }
        if shards.is_none() && scrapes[v].shards() > 0.0 && owned >= SHARDS as f64 {
            shards = Some(t_rel.elapsed().as_secs_f64());
        }
        let running: f64 = scrapes.iter().map(|s| s.partitions("running")).sum();
        let mine = scrapes[v].partitions("running");
        if shards.is_some() && mine > 0.0 && running >= partitions() as f64 {
            back.running = t_rel.elapsed().as_secs_f64();
            back.partitions = mine;
            break;
        }
    }
    back.up = up.unwrap_or_default();
    back.shards = shards.unwrap_or_default();
    let log = &fleet.procs[v].as_ref().expect("relaunched").log;
    back.assigned = assigned_after(&log_since(log, 0), wall).unwrap_or_default();
    back
}

/// SIGKILLs worker `v` (relaunched at once when `restart`), and waits until every partition
/// it ran has committed again (on another worker, or on itself restarted).
fn kill(fleet: &mut Fleet, v: usize, restart: bool, what: &str) -> Kill {
    let n = fleet.procs.len();
    let victim = fleet.procs[v].as_ref().expect("victim").id.clone();
    // The partitions it runs: its status's `RUNNING` tasks (others it lists are told apart).
    let listed = fleet.procs[v].as_ref().expect("victim").status(&fleet.name);
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, st, _) in &listed {
        *states.entry(st.clone()).or_default() += 1;
    }
    let others: Vec<(PartitionId, String, String)> = listed
        .iter()
        .filter(|(_, st, _)| st != "RUNNING")
        .cloned()
        .collect();
    let targets: HashSet<PartitionId> = listed
        .into_iter()
        .filter(|(_, st, _)| st == "RUNNING")
        .map(|(p, _, _)| p)
        .collect();
    let running_total: f64 = fleet
        .running()
        .map(|p| p.scrape().partitions("running"))
        .sum();
    let shards: Vec<f64> = fleet.running().map(|p| p.scrape().shards()).collect();
    if states.len() > 1 || running_total != partitions() as f64 {
        // Those it lists but does not run: does another worker run them, and why not it?
        let elsewhere: HashSet<PartitionId> = fleet
            .procs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != v)
            .filter_map(|(_, p)| p.as_ref())
            .flat_map(|p| p.status(&fleet.name))
            .filter(|(_, st, _)| st == "RUNNING")
            .map(|(p, _, _)| p)
            .collect();
        let run_elsewhere = others
            .iter()
            .filter(|(p, _, _)| elsewhere.contains(p))
            .count();
        let mut traces: Vec<&str> = others.iter().map(|(_, _, t)| t.as_str()).collect();
        traces.sort_unstable();
        traces.dedup();
        traces.truncate(3);
        println!(
            "  {what}: {victim}'s status lists {states:?}; of those not RUNNING, {run_elsewhere} run on \
             another worker; their traces: {traces:?}; the workers' running partitions add up to \
             {running_total} (of {}); shards owned {shards:?}",
            partitions()
        );
    }
    let survivors: Vec<usize> = (0..n).filter(|i| *i != v).collect();
    let log_from: Vec<(usize, u64)> = survivors
        .iter()
        .map(|i| {
            (
                *i,
                log_len(&fleet.procs[*i].as_ref().expect("survivor").log),
            )
        })
        .collect();
    let t_kill = Instant::now();
    let wall = chrono::Utc::now();
    fleet.procs[v].as_mut().expect("victim").kill();
    let from = fleet.watermarks();
    let before: HashMap<PartitionId, (u64, Instant)> = {
        let mut s = fleet.watcher.lock();
        s.watch = Some(Watch {
            from,
            targets: targets.clone(),
            first: HashMap::new(),
        });
        targets
            .iter()
            .filter_map(|p| Some((p.clone(), *s.last.get(p)?)))
            .collect()
    };
    let back = if restart {
        relaunch(fleet, v, what)
    } else {
        Back::default()
    };
    let mut taken = None;
    let mut diagnosed = false;
    let committed = loop {
        if t_kill.elapsed() > FAILOVER_TIMEOUT {
            let seen = fleet
                .watcher
                .lock()
                .watch
                .as_ref()
                .map_or(0, |w| w.first.len());
            fleet.fail(&format!(
                "{what}: {seen} of {} orphaned partitions committed again after {} s",
                targets.len(),
                FAILOVER_TIMEOUT.as_secs()
            ));
        }
        for i in &survivors {
            if let Some(s) = fleet.procs[*i].as_mut().and_then(Proc::exited) {
                fleet.fail(&format!("{what}: survivor w{} exited: {s}", i + 1));
            }
        }
        if taken.is_none() && !restart {
            let owned: f64 = survivors
                .iter()
                .filter_map(|i| fleet.procs[*i].as_ref())
                .map(|p| p.scrape().shards())
                .sum();
            if owned >= SHARDS as f64 {
                taken = Some(t_kill.elapsed().as_secs_f64());
            }
        }
        // Late: what is missing, and whether open transactions hold the offsets topic back.
        if !diagnosed && t_kill.elapsed() > Duration::from_secs(25) {
            diagnosed = true;
            let missing = {
                let s = fleet.watcher.lock();
                let w = s.watch.as_ref().expect("watch");
                targets.len() - w.first.len()
            };
            if missing > 0 {
                println!(
                    "  {what}: 25 s after the kill, {missing} orphaned partitions not committed again yet; \
                     offsets topic partitions with records past their last stable offset: {:?}",
                    fleet.open_transactions()
                );
            }
        }
        {
            let s = fleet.watcher.lock();
            let w = s.watch.as_ref().expect("watch");
            if w.first.len() >= targets.len() && (taken.is_some() || restart) {
                let secs = |t: &Instant| t.duration_since(t_kill).as_secs_f64();
                // Partitions committed again well after the others: which, and their rounds.
                let mut times: Vec<f64> = w.first.values().map(|(t, _, _)| secs(t)).collect();
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let mut late: Vec<(f64, String)> = w
                    .first
                    .iter()
                    .filter(|(_, (t, _, _))| secs(t) > median + 10.0)
                    .map(|(p, (t, round, _))| {
                        let (was, at) = before
                            .get(p)
                            .map_or((0, 0.0), |(r, at)| (*r, t_kill.duration_since(*at).as_secs_f64()));
                        (
                            secs(t),
                            format!(
                                "{} round {was} (committed {at:.1} s before the kill) → {round} at {:.1} s",
                                p.kind().as_str(),
                                secs(t)
                            ),
                        )
                    })
                    .collect();
                if !late.is_empty() {
                    late.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let mut kinds: HashMap<String, usize> = HashMap::new();
                    let mut kparts: HashMap<i32, usize> = HashMap::new();
                    for (p, (_, _, k)) in w
                        .first
                        .iter()
                        .filter(|(_, (t, _, _))| secs(t) > median + 10.0)
                    {
                        *kinds.entry(p.kind().as_str().to_string()).or_default() += 1;
                        *kparts.entry(*k).or_default() += 1;
                    }
                    println!(
                        "  {what}: {} of {} orphaned partitions committed again over 10 s after the median ({median:.2} s): \
                         by kind {kinds:?}, by partition of the offsets topic {kparts:?}; first and last: {:?}",
                        late.len(),
                        targets.len(),
                        late.iter()
                            .take(3)
                            .chain(late.iter().rev().take(2))
                            .map(|(_, d)| d.as_str())
                            .collect::<Vec<_>>()
                    );
                }
                break times.last().copied().unwrap_or_default();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    fleet.watcher.lock().watch = None;
    // Every orphaned partition runs on exactly one worker.
    let mut on: HashMap<PartitionId, usize> = HashMap::new();
    for p in fleet.running() {
        for (id, state, _) in p.status(&fleet.name) {
            if targets.contains(&id) && state == "RUNNING" {
                *on.entry(id).or_default() += 1;
            }
        }
    }
    let survivors_log: Vec<String> = log_from
        .iter()
        .map(|(i, from)| log_since(&fleet.procs[*i].as_ref().expect("survivor").log, *from))
        .collect();
    Kill {
        victim,
        orphaned: targets.len(),
        assigned: survivors_log
            .iter()
            .filter_map(|l| assigned_after(l, wall))
            .reduce(f64::max)
            .unwrap_or_default(),
        taken: taken.unwrap_or_default(),
        committed,
        running_after: on.values().filter(|c| **c == 1).count(),
        takeover_ms: survivors_log
            .iter()
            .flat_map(|l| elapsed_ms(l, "shards assigned: their partitions start"))
            .collect(),
        back,
    }
}

/// Shard moves so far of every worker but `v` (`graph_cdc_shard_moves_total`, every change).
fn shard_moves(fleet: &Fleet, v: usize) -> f64 {
    fleet
        .procs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != v)
        .filter_map(|(_, p)| p.as_ref())
        .map(|p| p.scrape().sum("graph_cdc_shard_moves_total{", &[]))
        .sum()
}

/// `kill_count()` SIGKILLs, each victim relaunched once the others took its partitions over;
/// then `restart_count()` SIGKILLs relaunched at once (a supervisor restarting the process).
fn failover(fleet: &mut Fleet) -> (Vec<Kill>, Vec<(Kill, f64)>) {
    let n = fleet.procs.len();
    let mut kills = Vec::new();
    for k in 0..kill_count() {
        let v = k % n;
        settle(fleet, &format!("before kill {}", k + 1));
        let mut kill = kill(fleet, v, false, &format!("kill {}", k + 1));
        kill.back = relaunch(fleet, v, &format!("relaunch {}", k + 1));
        println!(
            "  kill {:>2}: {} ({} partitions): survivors assigned its shards after {:.2} s, own them after {:.2} s \
             (taking them: {:?} ms); every orphaned partition committed again after {:.2} s ({} running on one worker); \
             relaunched: up after {:.2} s, assigned after {:.2} s, its shards after {:.2} s, running its {:.0} partitions after {:.2} s",
            k + 1,
            kill.victim,
            kill.orphaned,
            kill.assigned,
            kill.taken,
            kill.takeover_ms,
            kill.committed,
            kill.running_after,
            kill.back.up,
            kill.back.assigned,
            kill.back.shards,
            kill.back.partitions,
            kill.back.running
        );
        kills.push(kill);
        std::thread::sleep(Duration::from_secs(3));
    }
    let mut restarts = Vec::new();
    for k in 0..restart_count() {
        let v = k % n;
        settle(fleet, &format!("before restart {}", k + 1));
        // The others' moves (the restarted worker's counter starts again with its process).
        let moves = shard_moves(fleet, v);
        let kill = kill(fleet, v, true, &format!("restart {}", k + 1));
        let moved = shard_moves(fleet, v) - moves;
        println!(
            "  restart {}: {} ({} partitions) SIGKILLed and relaunched at once: up after {:.2} s, assigned after {:.2} s, \
             its shards after {:.2} s, running its {:.0} partitions after {:.2} s; every one of them committed again \
             after {:.2} s ({} running on one worker); the others' shard moves meanwhile: {:.0}",
            k + 1,
            kill.victim,
            kill.orphaned,
            kill.back.up,
            kill.back.assigned,
            kill.back.shards,
            kill.back.partitions,
            kill.back.running,
            kill.committed,
            kill.running_after,
            moved
        );
        restarts.push((kill, moved));
        std::thread::sleep(Duration::from_secs(3));
    }
    (kills, restarts)
}

/// Each worker at rest (see [`steady_secs`]): resident memory (max over the window) and CPU.
fn steady(fleet: &Fleet) {
    let secs = steady_secs();
    if secs == 0 {
        return;
    }
    std::thread::sleep(Duration::from_secs(70));
    let procs: Vec<&Proc> = fleet.running().collect();
    let cpu0: Vec<f64> = procs.iter().map(|p| p.usage().0).collect();
    let sim0 = sim_cpu();
    let mut rss = vec![0.0f64; procs.len()];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, p) in procs.iter().enumerate() {
            rss[i] = rss[i].max(p.usage().1);
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = procs
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| (p.usage().0 - c0) / el * 100.0)
        .collect();
    let parts: Vec<String> = procs
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {:.1} MiB {:.2}%", p.id, rss[i], cpu[i]))
        .collect();
    println!(
        "RESULT fleet at rest: {} partitions over {} workers, {el:.0} s after a 70 s warm-up: {}; \
         largest {:.1} MiB, mean CPU {:.2}% of a core per worker; simulator {:.2}% of a core",
        partitions(),
        procs.len(),
        parts.join(", "),
        max(&rss),
        cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        (sim_cpu() - sim0) / el * 100.0
    );
}

/// Median (the mean of the middle two of an even count).
fn p50(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() {
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
        "graph-cdc fleet benchmark: {} cores, broker {bootstrap}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    // The broker's JVM, when this bench started it (its CPU is reported).
    let broker = own.as_ref().and_then(|b: &KafkaBroker| {
        let pid = b.data_dir().parent()?.join("java.pid");
        std::fs::read_to_string(pid)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    warm_up(&bootstrap);
    let sim = start_sim();
    let t = Instant::now();
    let users = populate(&sim, "flt", users(), 2, 2, 14);
    println!(
        "fleet: {} users × 4 = {} partitions, simulator populated in {:.1} s; {SHARDS} shards, \
         worker.heartbeat_interval {}, graph.batch_polls {}",
        users.len(),
        partitions(),
        t.elapsed().as_secs_f64(),
        heartbeat(),
        batch_polls()
    );

    let mut syncs = Vec::new();
    let mut last = None;
    let sizes = fleet_sizes();
    for (i, n) in sizes.iter().enumerate() {
        let (s, fleet) = initial_sync(&sim, &bootstrap, broker, &users, *n);
        syncs.push(s);
        // Each connector's workers stop before the next one's start.
        if i + 1 == sizes.len() {
            last = Some(fleet);
        }
    }
    let base = syncs[0].rate();
    println!(
        "fleet: initial sync of {} partitions (launch → every first round committed):",
        partitions()
    );
    for s in &syncs {
        println!(
            "  {} worker(s): {:>6.1} s (first partition at {:.1} s, metric at {:.1} s), {:>5.0} partitions/s, \
             {:>5.0} records/s, ratio to 1 worker {:.2}; from the first partition synced: {:.0} partitions/s \
             (ratio {:.2}); CPU s: workers {:.1}, simulator {:.1}, broker {}; machine {:.2} of {:.0} cores busy; \
             largest worker {:.1} MiB",
            s.workers,
            s.secs,
            s.first_secs,
            s.metric_secs,
            s.rate(),
            s.records / s.secs.max(0.001),
            s.rate() / base,
            s.window_rate(),
            s.window_rate() / syncs[0].window_rate(),
            s.cpu,
            s.sim_cpu,
            s.broker_cpu
                .map_or("not measured".to_string(), |c| format!("{c:.1}")),
            s.machine,
            cores(),
            s.rss_max
        );
    }

    let mut fleet = last.expect("a fleet");
    let n = fleet.procs.len();
    steady(&fleet);
    println!(
        "fleet: failover, {} SIGKILLs of one of {n} workers (session timeout 6 s), then {} relaunched at once:",
        kill_count(),
        restart_count()
    );
    let (kills, restarts) = failover(&mut fleet);
    let col = |f: &dyn Fn(&Kill) -> f64| kills.iter().map(f).collect::<Vec<f64>>();
    let committed = col(&|k| k.committed);
    let assigned = col(&|k| k.assigned);
    let taken = col(&|k| k.taken);
    let back_up = col(&|k| k.back.up);
    let back_assigned = col(&|k| k.back.assigned);
    let back_shards = col(&|k| k.back.shards);
    let back = col(&|k| k.back.running);
    let takeover: Vec<f64> = kills
        .iter()
        .flat_map(|k| k.takeover_ms.iter().map(|m| *m as f64 / 1000.0))
        .collect();
    let orphaned = kills.iter().map(|k| k.orphaned as f64).sum::<f64>() / kills.len().max(1) as f64;
    println!(
        "fleet: failover over {} kills (~{orphaned:.0} orphaned partitions each; p50 = median):",
        kills.len()
    );
    println!(
        "  kill → every orphaned partition committed again: p50 {:.2} s, max {:.2} s (min {:.2} s)",
        p50(&committed),
        max(&committed),
        min(&committed)
    );
    println!(
        "  kill → the survivors' new assignment (detection + rebalance): p50 {:.2} s, max {:.2} s; \
         → they own every shard: p50 {:.2} s, max {:.2} s; a survivor taking its shards \
         (producers, offsets and state read): p50 {:.2} s, max {:.2} s",
        p50(&assigned),
        max(&assigned),
        p50(&taken),
        max(&taken),
        p50(&takeover),
        max(&takeover)
    );
    println!(
        "  relaunch → up (its /metrics answers): p50 {:.2} s; → assigned: p50 {:.2} s; → its shards: p50 {:.2} s, \
         max {:.2} s; → running its partitions: p50 {:.2} s, max {:.2} s",
        p50(&back_up),
        p50(&back_assigned),
        p50(&back_shards),
        max(&back_shards),
        p50(&back),
        max(&back)
    );
    let r_committed: Vec<f64> = restarts.iter().map(|(k, _)| k.committed).collect();
    let r_running: Vec<f64> = restarts.iter().map(|(k, _)| k.back.running).collect();
    let r_moves: f64 = restarts.iter().map(|(_, m)| m).sum();
    if !restarts.is_empty() {
        println!(
            "  restarted at once under its worker_id ({} times): running its partitions again p50 {:.2} s, max {:.2} s \
             after the relaunch; kill → every one committed again p50 {:.2} s, max {:.2} s; the others' shard moves: {r_moves:.0}",
            restarts.len(),
            p50(&r_running),
            max(&r_running),
            p50(&r_committed),
            max(&r_committed)
        );
    }
    let lost: usize = kills
        .iter()
        .chain(restarts.iter().map(|(k, _)| k))
        .map(|k| k.orphaned - k.running_after)
        .sum();
    if lost > 0 {
        println!("  WARNING: {lost} orphaned partitions were not RUNNING on exactly one worker afterwards");
    }
    let errors = fleet.watcher.lock().errors.clone();
    if !errors.is_empty() {
        println!("  offsets consumer errors: {errors:?}");
    }
    let syncs_text: Vec<String> = syncs
        .iter()
        .map(|s| {
            format!(
                "{} worker(s) {:.1} s ({:.0} partitions/s, {:.0} records/s, ratio {:.2})",
                s.workers,
                s.secs,
                s.rate(),
                s.records / s.secs.max(0.001),
                s.rate() / base
            )
        })
        .collect();
    println!(
        "RESULT fleet: initial sync of {} partitions: {}; \
         failover after SIGKILL of one of {n} (session 6 s, {} kills, ~{orphaned:.0} orphaned partitions each): committed again p50 {:.2} s, \
         max {:.2} s (assigned p50 {:.2} s, shards taken over p50 {:.2} s); relaunch under the same worker_id: running again \
         p50 {:.2} s, max {:.2} s; restarted at once: running again p50 {:.2} s, committed again p50 {:.2} s after the kill, \
         {r_moves:.0} shard moves",
        partitions(),
        syncs_text.join(", "),
        kills.len(),
        p50(&committed),
        max(&committed),
        p50(&assigned),
        p50(&taken),
        p50(&back),
        max(&back),
        p50(&r_running),
        p50(&r_committed)
    );
    drop(fleet);
    drop(own);
}
