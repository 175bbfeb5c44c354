//! A group of 5,000 users on one worker (issue 13, item 5), against a group of 1 user
//! measured in the same run.
//!
//! ```text
//! cargo bench --bench groups        # ~5 minutes, most of it the steady-state window
//! ```
//!
//! Two `graph-cdc run` processes, each with three sources naming a group instead of users
//! (calendar view, calendar list, To Do), `graph.batch_polls = true`, a 60 s poll interval:
//!
//! - a group of 5,000 users (4,000 direct members and a nested group of 1,000: the worker
//!   lists `transitiveMembers`), each with 2 events in the window and 4 To Do lists of 2
//!   tasks: 7 partitions per user (calendar view, calendar list, To Do lists, 4 task lists),
//!   35,000 partitions and the group's membership partition;
//! - the baseline: a group of 1 user with the same data, 7 partitions and the membership one.
//!
//! Measured: the time from launch to every partition having completed its first round
//! (`graph_cdc_partitions{state="running"}`: its offset is past round 1), with the peak
//! resident memory and the CPU of that initial sync (sampled every 0.5 s); then, after a 70 s
//! warm-up, a 120 s steady-state window: the largest `VmRSS` (sampled every second), the CPU
//! share of one core (`/proc/<pid>/stat`, user + system) and by thread, HTTP requests per
//! minute (`graph_cdc_graph_requests_total` + `graph_cdc_graph_batches_total`) and Graph
//! requests per minute (requests sent alone + polls answered inside a batch). The simulator
//! runs in this process on threads named `sim`; the broker is a real Apache Kafka on loopback
//! (`GRAPH_CDC_TEST_KAFKA`, or one started here).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graph_cdc_testkit::broker::KafkaBroker;
use graph_sim::generate::{random_event, GenerateSpec};
use graph_sim::model::GroupSpec;

mod common;
use common::*;

/// Users of the big group, of which `NESTED` are reached through a nested group.
const USERS: usize = 5000;
const NESTED: usize = 1000;
const SYNC_TIMEOUT: Duration = Duration::from_secs(1200);
const WARM_UP: Duration = Duration::from_secs(70);
const MEASURE: Duration = Duration::from_secs(120);

/// A group whose sources the worker follows, and the partitions that makes.
struct Group {
    id: String,
    /// Members' partitions plus the membership partition.
    partitions: usize,
}

/// `users` users (`{prefix}NNN@contoso.com`), each with 2 events inside the window and 4 To Do
/// lists of 2 tasks, members of group `id`: directly, or the last `nested` of them through a
/// group `inner` that is a member of it.
fn populate_group(
    sim: &Sim,
    prefix: &str,
    users: usize,
    id: &str,
    inner: &str,
    nested: usize,
    seed: u64,
) -> Group {
    let mut store = sim.server.state.store.write();
    let spec = GenerateSpec {
        users,
        prefix: prefix.into(),
        tenant: Some(TENANT.into()),
        start: window_start(),
        days: WINDOW_DAYS,
        events_per_user: 0,
        recurring_per_user: 0,
        extra_calendars: 0,
        extra_lists: 3,
        tasks_per_list: 2,
        seed: Some(seed),
        ..Default::default()
    };
    let infos = graph_sim::generate::generate(&mut store, &spec).expect("generate");
    let mut rng = rand::rng();
    for u in &infos {
        for _ in 0..2 {
            let ev = random_event(&mut rng, window_start(), WINDOW_DAYS, 0.0, false);
            store.create_event(&u.id, "primary", ev).expect("event");
        }
    }
    // Calendar view, calendar list, To Do lists, and one partition per list.
    let partitions = infos.iter().map(|u| 3 + u.task_lists.len()).sum::<usize>() + 1;
    let ids: Vec<String> = infos.iter().map(|u| u.id.clone()).collect();
    let (direct, through) = ids.split_at(ids.len() - nested.min(ids.len()));
    let mut members = direct.to_vec();
    if !through.is_empty() {
        store
            .create_group(GroupSpec {
                tenant: Some(TENANT.into()),
                id: Some(inner.into()),
                display_name: Some(format!("{prefix} nested")),
                members: through.to_vec(),
            })
            .expect("nested group");
        members.push(inner.into());
    }
    let info = store
        .create_group(GroupSpec {
            tenant: Some(TENANT.into()),
            id: Some(id.into()),
            display_name: Some(format!("{prefix} bench")),
            members,
        })
        .expect("group");
    assert_eq!(info.transitive_users.len(), users, "transitive members");
    Group {
        id: id.into(),
        partitions,
    }
}

fn worker_config(sim: &Sim, bootstrap: &str, group: &str, listen: &str) -> String {
    let run = run_id();
    format!(
        r#"
name = "groups-{run}"
[graph]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
base_url = "{host}"
authority_url = "{host}"
poll_interval = "60s"
batch_polls = true
membership_interval = "1h"
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
group = "{group}"
start = "{start}"
end = "{end}"
[[sources]]
kind = "calendar_list"
group = "{group}"
[[sources]]
kind = "todo"
group = "{group}"
"#,
        host = sim.server.url(),
        start = window().split('/').next().unwrap_or_default(),
        end = window().split('/').nth(1).unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------
// The worker process (as in `benches/connector.rs`, section 3).

struct Proc {
    name: &'static str,
    child: std::process::Child,
    listen: String,
    log: std::path::PathBuf,
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

fn launch_worker(sim: &Sim, bootstrap: &str, name: &'static str, group: &str) -> Proc {
    let dir = std::env::temp_dir().join(format!("graph-cdc-bench-{}", run_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("worker.toml");
    std::fs::write(&cfg, worker_config(sim, bootstrap, group, &listen)).expect("config");
    let log = dir.join("worker.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("graph-cdc run");
    Proc {
        name,
        child,
        listen,
        log,
        _dir: tempdir::Dir(dir),
    }
}

/// A scrape of a worker's `/metrics`.
struct Scrape(String);

impl Scrape {
    /// Sum of the series of `name` (with its `{` for a labelled metric) whose labels contain
    /// every one of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            // An empty f64 sum is -0.
            .sum::<f64>()
            + 0.0
    }

    fn partitions(&self, state: &str) -> f64 {
        self.sum("graph_cdc_partitions{", &[&format!("state=\"{state}\"")])
    }

    /// HTTP requests to Graph: requests of their own and JSON batches.
    fn http(&self) -> f64 {
        self.sum("graph_cdc_graph_requests_total{", &[])
            + self.sum("graph_cdc_graph_batches_total{", &[])
    }

    /// Graph requests: those sent alone and the polls a batch answered with a page (the
    /// others were sent again alone, and are counted there).
    fn graph(&self) -> f64 {
        self.sum("graph_cdc_graph_requests_total{", &[])
            + self.sum(
                "graph_cdc_graph_batched_polls_total{",
                &["answered=\"page\""],
            )
    }

    fn states(&self) -> String {
        ["running", "initial_sync", "unassigned", "failed", "stopped"]
            .iter()
            .map(|s| format!("{s} {}", self.partitions(s)))
            .collect::<Vec<_>>()
            .join(", ")
    }
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
        let text = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.listen)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Scrape(text)
    }

    /// The worker's log (warnings and errors): its line count and last `n` lines.
    fn log_tail(&self, n: usize) -> (usize, String) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        (lines.len(), tail)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds of each thread name of process `pid` (`self` for this one).
fn threads_cpu(pid: &str) -> HashMap<String, f64> {
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

/// Threads' CPU between two readings, as a share of one core over `secs`, largest first.
fn by_thread(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    secs: f64,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(n, c)| {
            let d = c - before.get(n).copied().unwrap_or(0.0);
            (n.clone(), d / secs * 100.0)
        })
        .filter(|(_, c)| *c > 0.05)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Prints what went wrong with each worker, then panics.
fn fail(workers: &mut [(Proc, Group)], what: &str) -> ! {
    for (w, _) in workers.iter_mut() {
        let exited = w.exited();
        let (n, tail) = w.log_tail(40);
        eprintln!(
            "--- {} (exited: {exited:?}; partitions: {}), {n} log lines, the last ones:\n{tail}",
            w.name,
            w.scrape().states()
        );
    }
    panic!("{what}");
}

/// The initial sync of one worker.
#[derive(Default, Clone, Copy)]
struct Sync {
    secs: Option<f64>,
    rounds: f64,
    rss_max: f64,
    cpu: f64,
    http: f64,
    graph: f64,
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
        "graph-cdc groups benchmark: {} cores, broker {bootstrap}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let sim = start_sim();
    let t = Instant::now();
    let big = populate_group(
        &sim,
        "grp",
        USERS,
        "6f1c2d3e-0000-4000-8000-000000005000",
        "6f1c2d3e-0000-4000-8000-000000001000",
        NESTED,
        7,
    );
    let small = populate_group(
        &sim,
        "grb",
        1,
        "6f1c2d3e-0000-4000-8000-000000000001",
        "",
        0,
        8,
    );
    println!(
        "groups: {USERS} users ({NESTED} through a nested group) in {:.1} s: {} partitions; baseline {} partitions",
        t.elapsed().as_secs_f64(),
        big.partitions,
        small.partitions
    );

    let mut workers = [
        (
            launch_worker(&sim, &bootstrap, "5,000-user group", &big.id),
            big,
        ),
        (
            launch_worker(&sim, &bootstrap, "1-user group", &small.id),
            small,
        ),
    ];
    let t0 = Instant::now();
    let sim0 = threads_cpu("self");
    let mut sync = [Sync::default(); 2];
    let mut last_print = Instant::now();
    while sync.iter().any(|s| s.secs.is_none()) {
        if t0.elapsed() > SYNC_TIMEOUT {
            fail(&mut workers, "timed out waiting for the initial sync");
        }
        std::thread::sleep(Duration::from_millis(500));
        if workers.iter_mut().any(|(w, _)| w.exited().is_some()) {
            fail(&mut workers, "a worker exited");
        }
        for (i, (w, g)) in workers.iter().enumerate() {
            if sync[i].secs.is_some() {
                continue;
            }
            let (cpu, rss) = w.usage();
            sync[i].rss_max = sync[i].rss_max.max(rss);
            let s = w.scrape();
            if s.partitions("running") >= g.partitions as f64 {
                sync[i] = Sync {
                    secs: Some(t0.elapsed().as_secs_f64()),
                    rounds: s.sum("graph_cdc_rounds_completed_total{", &[]),
                    rss_max: sync[i].rss_max,
                    cpu,
                    http: s.http(),
                    graph: s.graph(),
                };
            }
        }
        if last_print.elapsed() >= Duration::from_secs(15) {
            last_print = Instant::now();
            let (w, _) = &workers[0];
            let s = w.scrape();
            println!(
                "  {:>4.0} s: {} — {}; {:.0} rounds completed, {:.0} HTTP requests, {:.1} MiB",
                t0.elapsed().as_secs_f64(),
                w.name,
                s.states(),
                s.sum("graph_cdc_rounds_completed_total{", &[]),
                s.http(),
                w.usage().1
            );
        }
    }
    let sim_sync = by_thread(&sim0, &threads_cpu("self"), t0.elapsed().as_secs_f64())
        .into_iter()
        .filter(|(n, _)| n.starts_with("sim"))
        .map(|(_, c)| c)
        .sum::<f64>();
    println!("groups: initial sync (from launch to every partition past its first round):");
    for (i, (w, g)) in workers.iter().enumerate() {
        let s = sync[i];
        let secs = s.secs.unwrap_or_default();
        println!(
            "  {:<18} {:>6} partitions in {secs:>6.1} s: peak {:>6.1} MiB, {:>6.1} CPU s ({:.0}% of a core), \
             {:.0} HTTP requests, {:.0} Graph requests ({:.0}/s), {:.0} rounds completed",
            w.name,
            g.partitions,
            s.rss_max,
            s.cpu,
            s.cpu / secs.max(0.001) * 100.0,
            s.http,
            s.graph,
            s.graph / secs.max(0.001),
            s.rounds
        );
    }
    println!("  the simulator (this process, threads `sim`): {sim_sync:.0}% of a core until the last sync");

    // Warm-up: every partition has polled at least once at the 60 s interval (10% jitter).
    std::thread::sleep(WARM_UP);
    let before: Vec<(f64, Scrape, HashMap<String, f64>)> = workers
        .iter()
        .map(|(w, _)| {
            (
                w.usage().0,
                w.scrape(),
                threads_cpu(&w.child.id().to_string()),
            )
        })
        .collect();
    let sim_before = threads_cpu("self");
    let mut rss_max = [0.0f64; 2];
    let m0 = Instant::now();
    while m0.elapsed() < MEASURE {
        std::thread::sleep(Duration::from_secs(1));
        if workers.iter_mut().any(|(w, _)| w.exited().is_some()) {
            fail(&mut workers, "a worker exited");
        }
        for (i, (w, _)) in workers.iter().enumerate() {
            rss_max[i] = rss_max[i].max(w.usage().1);
        }
    }
    let secs = m0.elapsed().as_secs_f64();
    let mins = secs / 60.0;
    println!(
        "groups: steady state, measured {secs:.0} s after a {} s warm-up, poll interval 60 s, batch_polls on",
        WARM_UP.as_secs()
    );
    let mut cpu = [0.0f64; 2];
    let mut http = [0.0f64; 2];
    let mut graph = [0.0f64; 2];
    for (i, (w, g)) in workers.iter().enumerate() {
        let after = w.scrape();
        cpu[i] = (w.usage().0 - before[i].0) / secs * 100.0;
        http[i] = (after.http() - before[i].1.http()) / mins;
        graph[i] = (after.graph() - before[i].1.graph()) / mins;
        println!(
            "  {:<18} {:>6} partitions: {:>6.1} MiB resident (max), {:>5.2}% of a core, \
             {:>6.0} HTTP requests/min, {:>6.0} Graph requests/min ({:.1} per batch)",
            w.name,
            g.partitions,
            rss_max[i],
            cpu[i],
            http[i],
            graph[i],
            (after.sum("graph_cdc_graph_batched_polls_total{", &[])
                - before[i].1.sum("graph_cdc_graph_batched_polls_total{", &[]))
                / (after.sum("graph_cdc_graph_batches_total{", &[])
                    - before[i].1.sum("graph_cdc_graph_batches_total{", &[]))
                .max(1.0)
        );
        let threads = by_thread(&before[i].2, &threads_cpu(&w.child.id().to_string()), secs);
        println!("      CPU by thread (% of a core): {threads:.2?}");
        println!("      partitions: {}", after.states());
    }
    let sim_cpu = by_thread(&sim_before, &threads_cpu("self"), secs)
        .into_iter()
        .filter(|(n, _)| n.starts_with("sim"))
        .map(|(_, c)| c)
        .sum::<f64>();
    println!("  the simulator (this process, threads `sim`): {sim_cpu:.2}% of a core");
    for (w, _) in &workers {
        let (n, tail) = w.log_tail(10);
        if n > 0 {
            println!(
                "  {} log: {n} lines (warn and above), the last ones:\n{tail}",
                w.name
            );
        }
    }
    let extra = (workers[0].1.partitions - workers[1].1.partitions) as f64;
    println!(
        "RESULT groups: {} partitions of a {USERS}-user group synced in {:.0} s (peak {:.1} MiB, {:.0}% of a core); \
         steady state with batch_polls {:.1} MiB and {:.2}% of a core, {:.0} HTTP requests/min ({:.0} Graph requests/min); \
         against {} partitions: memory ratio {:.2}, {:.1} KiB per extra partition ({:.1} KiB per extra member), CPU ratio {:.1}",
        workers[0].1.partitions,
        sync[0].secs.unwrap_or_default(),
        sync[0].rss_max,
        sync[0].cpu / sync[0].secs.unwrap_or_default().max(0.001) * 100.0,
        rss_max[0],
        cpu[0],
        http[0],
        graph[0],
        workers[1].1.partitions,
        rss_max[0] / rss_max[1],
        (rss_max[0] - rss_max[1]) * 1024.0 / extra,
        (rss_max[0] - rss_max[1]) * 1024.0 / (USERS - 1) as f64,
        cpu[0] / cpu[1].max(0.001)
    );
    drop(workers);
    drop(own);
}
