//! Shared helpers: a worker spec pointing at a simulator and a broker, and the compacted
//! view of the topics as a `read_committed` consumer sees it.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graph_cdc::source::{key_id, PartitionId};
use graph_cdc::worker::WorkerSpec;
use graph_sim::SimServer;
use serde_json::Value;

pub use graph_cdc_testkit::harness::{
    compacted, read_committed as read_all, Committed, CLIENT, SECRET, TENANT,
};

/// Every committed record of the spec's topics (from inside the test runtime too).
pub fn all_records(spec: &WorkerSpec) -> Vec<Committed> {
    tokio::task::block_in_place(|| {
        spec.sink
            .topics
            .all()
            .iter()
            .flat_map(|t| read_all(&spec.sink.bootstrap_servers, t))
            .collect()
    })
}

pub fn bootstrap() -> String {
    graph_cdc_testkit::broker::shared_bootstrap().expect("a real Kafka broker")
}

/// A worker on topics of its own, tuned to converge fast: small pages, quick polls and
/// retries, small transactions.
pub fn spec(sim: &SimServer, bootstrap: &str, partitions: Vec<PartitionId>) -> WorkerSpec {
    let mut spec = graph_cdc_testkit::harness::worker_spec(&sim.url(), bootstrap, partitions);
    spec.client.page_size = 7;
    spec.client.base_backoff = Duration::from_millis(20);
    spec.client.max_backoff = Duration::from_millis(500);
    spec.client.max_retries = 30;
    spec.poll_interval = Duration::from_millis(300);
    spec.poll_jitter = 0.2;
    spec.sink.transaction_timeout = Duration::from_secs(30);
    spec.sink.max_batch_records = 500;
    spec.sink.linger = Duration::from_millis(20);
    spec.sink.heartbeat_interval = Duration::from_secs(1);
    spec.create_topics = Some((3, 1));
    spec.offsets_load_timeout = Duration::from_secs(30);
    spec
}

/// The simulator's truth for one partition, as `record key → parsed JSON`.
pub fn truth(sim: &SimServer, p: &PartitionId) -> BTreeMap<Vec<u8>, Value> {
    // Immutable ids, as the worker asks for them by default (`graph.immutable_ids`).
    truth_as(sim, p, None)
}

/// [`truth`] with ids of `id_type` (`immutable` or `regular`; `None`: immutable).
pub fn truth_as(
    sim: &SimServer,
    p: &PartitionId,
    id_type: Option<&str>,
) -> BTreeMap<Vec<u8>, Value> {
    use graph_sim::control::{truth_query, TruthParams};
    let (kind, calendar, start, end, list) = match p {
        PartitionId::CalendarView {
            calendar, window, ..
        } => {
            let (s, e) = window.split_once('/').expect("window");
            (
                "calendar_view",
                Some(calendar.clone()),
                Some(s.to_string()),
                Some(e.to_string()),
                None,
            )
        }
        PartitionId::CalendarList { .. } => ("calendar_list", None, None, None, None),
        PartitionId::TaskLists { .. } => ("task_lists", None, None, None, None),
        PartitionId::Tasks { list, .. } => ("tasks", None, None, None, Some(list.clone())),
        PartitionId::GroupMembers { .. } => panic!("no truth query for group members"),
    };
    let params = TruthParams {
        user: p.user().to_string(),
        kind: kind.into(),
        calendar,
        start,
        end,
        list,
        timezone: None,
        id_type: id_type.map(str::to_string),
    };
    let (q, pres) = truth_query(&sim.state, &params).expect("truth query");
    sim.state
        .truth(&q, &pres)
        .expect("truth")
        .into_iter()
        .map(|(id, json)| {
            (
                p.record_key(&id).to_vec(),
                serde_json::from_str(&json).expect("json"),
            )
        })
        .collect()
}

/// The part of a compacted view that belongs to partition `p` (its keys, parsed).
pub fn view_of(view: &HashMap<Vec<u8>, Vec<u8>>, p: &PartitionId) -> BTreeMap<Vec<u8>, Value> {
    let prefix = p.record_key("");
    let prefix = &prefix[..prefix.len() - 3]; // without `"id":""}` → up to `,"id":`
    view.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), serde_json::from_slice(v).expect("value json")))
        .collect()
}

/// Every partition the simulator's users have now (task partitions of live lists included).
pub fn all_partitions(sim: &SimServer, window: &str) -> Vec<PartitionId> {
    let store = sim.state.store.read();
    let mut out = Vec::new();
    let mut users: Vec<_> = store.users.values().collect();
    users.sort_by(|a, b| a.id.cmp(&b.id));
    for u in users {
        let info = store.user_info(&u.id).expect("user");
        out.push(PartitionId::CalendarView {
            user: u.id.clone(),
            calendar: "primary".into(),
            window: window.into(),
        });
        out.push(PartitionId::CalendarList { user: u.id.clone() });
        out.push(PartitionId::TaskLists { user: u.id.clone() });
        for l in info.task_lists {
            out.push(PartitionId::Tasks {
                user: u.id.clone(),
                list: l,
            });
        }
    }
    out
}

/// Waits until every partition's compacted view equals the truth; panics with the first
/// difference after `timeout`.
pub fn wait_converged(sim: &SimServer, spec: &WorkerSpec, window: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let diff = difference(sim, spec, window);
        match diff {
            None => return,
            Some(d) if Instant::now() > deadline => panic!("not converged: {d}"),
            Some(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The first difference between the topics and the truth, if any.
pub fn difference(sim: &SimServer, spec: &WorkerSpec, window: &str) -> Option<String> {
    difference_except(sim, spec, window, &|_| false)
}

/// [`difference`], leaving out the keys `skip` says (items known not to be in Kafka).
pub fn difference_except(
    sim: &SimServer,
    spec: &WorkerSpec,
    window: &str,
    skip: &dyn Fn(&[u8]) -> bool,
) -> Option<String> {
    let b = &spec.sink.bootstrap_servers;
    let mut views = HashMap::new();
    let mut raw = HashMap::new();
    for t in spec.sink.topics.all() {
        let records = read_all(b, t);
        views.insert(t.to_string(), compacted(&records));
        raw.insert(t.to_string(), records);
    }
    for p in all_partitions(sim, window) {
        let topic = spec.sink.topics.for_kind(p.kind());
        let mut got = view_of(&views[topic], &p);
        let mut want = truth(sim, &p);
        got.retain(|k, _| !skip(k));
        want.retain(|k, _| !skip(k));
        if got != want {
            let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
            let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
            let stale = want
                .iter()
                .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
                .count();
            // The history of the first odd key, to tell what went wrong.
            let odd = want
                .keys()
                .find(|k| got.get(*k) != want.get(*k))
                .or_else(|| got.keys().find(|k| !want.contains_key(*k)));
            let history: Vec<String> = odd
                .map(|k| {
                    raw[topic]
                        .iter()
                        .filter(|r| &r.key == k)
                        .map(|r| {
                            let h = |n: &str| r.headers.get(n).cloned().unwrap_or_default();
                            format!(
                                "{}@{}{}",
                                h("graph-cdc.op"),
                                h("graph-cdc.round"),
                                if r.headers.contains_key("graph-cdc.resync") {
                                    "R"
                                } else {
                                    ""
                                }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Some(format!(
                "{p}: {missing} missing, {extra} extra, {stale} stale of {}; first odd key {} history {history:?}",
                want.len(),
                odd.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
            ));
        }
    }
    None
}

/// Upserts committed twice with the same etag outside a resync: must be none.
pub fn duplicates(records: &[Committed]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut dups = Vec::new();
    for r in records {
        let Some(v) = &r.value else { continue };
        if r.headers.contains_key("graph-cdc.resync") {
            continue;
        }
        let etag = serde_json::from_slice::<Value>(v)
            .ok()
            .and_then(|j| {
                j.get("@odata.etag")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        if !seen.insert((r.key.clone(), etag.clone())) {
            dups.push(format!("{} {}", String::from_utf8_lossy(&r.key), etag));
        }
    }
    dups
}

pub const WINDOW: &str = "2026-05-01T00:00:00Z/2026-06-01T00:00:00Z";

/// The partitions a config lists for these users: each one's primary calendar over
/// [`WINDOW`], calendar list and To Do lists (task partitions are found at run time).
pub fn configured_partitions(users: &[String]) -> Vec<PartitionId> {
    users
        .iter()
        .flat_map(|u| {
            [
                PartitionId::CalendarView {
                    user: u.clone(),
                    calendar: "primary".into(),
                    window: WINDOW.into(),
                },
                PartitionId::CalendarList { user: u.clone() },
                PartitionId::TaskLists { user: u.clone() },
            ]
        })
        .collect()
}

/// A simulator with the test app registered and `users` users over May 2026 ([`WINDOW`]),
/// `events` events each and `tasks` tasks per list; returns it and the users' object ids (what partitions carry; configs may list either).
pub async fn sim_with_users(
    users: usize,
    events: usize,
    tasks: usize,
    seed: u64,
) -> (SimServer, Vec<String>) {
    let sim = graph_cdc_testkit::harness::start_sim().await;
    let gen = graph_sim::generate::GenerateSpec {
        users,
        tenant: Some(TENANT.into()),
        start: chrono::NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
            .expect("time"),
        days: 31,
        events_per_user: events,
        tasks_per_list: tasks,
        seed: Some(seed),
        ..Default::default()
    };
    let names = graph_sim::generate::generate(&mut sim.state.store.write(), &gen)
        .expect("generate")
        .into_iter()
        .map(|u| u.id)
        .collect();
    (sim, names)
}

/// [`config`] with librdkafka options (security) and another bootstrap address.
pub fn config_secured(
    spec: &WorkerSpec,
    users: &[String],
    bootstrap: &str,
    options: &[(String, String)],
) -> String {
    let mut toml = config(spec, users).replace(
        &format!("bootstrap_servers = \"{}\"", spec.sink.bootstrap_servers),
        &format!("bootstrap_servers = \"{bootstrap}\""),
    );
    toml.push_str("\n[kafka.options]\n");
    for (k, v) in options {
        toml.push_str(&format!("{k:?} = {v:?}\n"));
    }
    toml
}

/// The TOML configuration of a worker process for `spec`'s topics and these users.
pub fn config(spec: &WorkerSpec, users: &[String]) -> String {
    let t = &spec.sink.topics;
    format!(
        r#"
name = "{name}"
[graph]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
base_url = "{host}"
authority_url = "{host}"
page_size = 5
poll_interval = "300ms"
max_backoff = "500ms"
[kafka]
bootstrap_servers = "{bootstrap}"
offsets_topic = "{offsets}"
state_topic = "{state}"
shards_topic = "{shards_topic}"
control_topic = "{control_topic}"
worker_id = "w"
topic_partitions = 3
[kafka.topics]
events = "{events}"
calendars = "{calendars}"
task_lists = "{lists}"
tasks = "{tasks}"
members = "{members}"
[server]
listen = "127.0.0.1:0"
[worker]
shards = {shards}
heartbeat_interval = "1s"
linger = "20ms"
[[sources]]
kind = "calendar_view"
users = {users:?}
start = "2026-05-01T00:00:00Z"
end = "2026-06-01T00:00:00Z"
[[sources]]
kind = "calendar_list"
users = {users:?}
[[sources]]
kind = "todo"
users = {users:?}
"#,
        name = spec.sink.connector,
        host = spec.graph_host,
        bootstrap = spec.sink.bootstrap_servers,
        offsets = spec.sink.offsets_topic,
        state = spec.sink.state_topic,
        shards_topic = spec.sharding.topic,
        control_topic = spec.sharding.control_topic,
        shards = spec.sharding.shards,
        events = t.events,
        calendars = t.calendars,
        lists = t.task_lists,
        tasks = t.tasks,
        members = t.members,
    )
}

/// A worker process that dies with the test, even one that panicked.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `graph-cdc run` on a config file, quiet.
pub fn launch(config: &std::path::Path) -> Child {
    run(config, "warn", Stdio::null())
}

/// [`launch`], its logs at `level` (`RUST_LOG`) written to `log`.
pub fn launch_logged(config: &std::path::Path, level: &str, log: &std::path::Path) -> Child {
    run(
        config,
        level,
        std::fs::File::create(log).expect("worker log").into(),
    )
}

fn run(config: &std::path::Path, level: &str, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
        .args(["run", "--config"])
        .arg(config)
        .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start graph-cdc run")
}

/// Sends `sig` to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Sends SIGTERM and waits for the child to exit, at most `within` (panics past it, naming
/// `what`); returns how it exited.
pub async fn stop_gracefully(
    child: &mut Child,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    signal(child, libc::SIGTERM);
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("the child's status") {
            return s;
        }
        assert!(
            t0.elapsed() < within,
            "SIGTERM: {what} not stopped within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker running in this test process.
pub type Running = graph_cdc_testkit::harness::InProcessWorker;

pub fn start_worker(spec: &WorkerSpec) -> Running {
    Running::start(&tokio::runtime::Handle::current(), spec.clone())
}

/// Waits until the topics equal the truth except for the keys `skip` names; fails if the
/// worker ended.
pub fn converge_except(
    sim: &SimServer,
    spec: &WorkerSpec,
    w: &Running,
    skip: &dyn Fn(&[u8]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        let Some(d) = difference_except(sim, spec, WINDOW, skip) else {
            return;
        };
        if let Some(end) = w.ended.lock().clone() {
            panic!("the worker stopped by itself ({end}): {d}");
        }
        assert!(Instant::now() < deadline, "not converged: {d}");
        std::thread::sleep(Duration::from_millis(500));
    });
}

/// A record as `(item id, op, removed-reason, resync)`.
pub type Written = (String, String, String, bool);

/// The records of `after` that `before` did not have (a topic is read partition after
/// partition, so the new records are not simply the last ones).
pub fn new_records(before: &[Committed], after: &[Committed]) -> Vec<Written> {
    let sig = |r: &Committed| {
        (
            r.key.clone(),
            r.value.clone(),
            r.headers.clone().into_iter().collect::<Vec<_>>(),
        )
    };
    let mut had: HashMap<_, usize> = HashMap::new();
    for r in before {
        let mut s = sig(r);
        s.2.sort();
        *had.entry(s).or_default() += 1;
    }
    let mut out = Vec::new();
    for r in after {
        let mut s = sig(r);
        s.2.sort();
        match had.get_mut(&s) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                let h = |n: &str| r.headers.get(n).cloned().unwrap_or_default();
                out.push((
                    key_id(&r.key).unwrap_or_default(),
                    h("graph-cdc.op"),
                    h("graph-cdc.removed-reason"),
                    r.headers.contains_key("graph-cdc.resync"),
                ));
            }
        }
    }
    out.sort();
    out
}
