//! Change notifications against polling (issue 16, item 6), in one run:
//!
//! ```text
//! cargo bench --bench notifications                      # 10,000 calendar views, ~12 min
//! GRAPH_CDC_NOTIFY_USERS=500 cargo bench --bench notifications   # a quick try
//! ```
//!
//! `GRAPH_CDC_NOTIFY_USERS` users (default 10,000), each one calendar view (a partition Graph
//! notifies of) with 2 events, and three workers in turn, each on topics of its own, all with
//! `graph.batch_polls`:
//!
//! - **notifications**: `[notifications]` on (webhook: the worker's own server, which the
//!   simulator validates and posts to), `graph.poll_interval_with_notifications` 15 min;
//! - **polling 60 s** and **polling 5 s**: no notifications.
//!
//! For each: the initial sync (and, with notifications, every subscription made), a warm-up
//! past the first wave of polls (1.15 poll intervals and 5 s, at most 74 s), then **idle** for
//! `GRAPH_CDC_NOTIFY_IDLE_SECS` (30) or one poll interval if longer (at most 60 s): the
//! worker's CPU (its threads in this process: not the simulator's `sim` threads) and Graph's
//! requests (the simulator counts every one, batch items included) per idle partition-hour;
//! then **changes**: `GRAPH_CDC_NOTIFY_CHANGES` (30) event updates one second apart, each timed
//! from the update to its record readable with `read_committed` (p50, p99), and Graph
//! requests per change (requests over the change phase less the idle rate, over the changes).
//! The simulator posts a notification 200 ms after a change (`notification_delay_ms`); a
//! notified partition's safety-net poll every 15 minutes seldom falls in the idle window (4
//! requests per partition-hour by configuration).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_cdc::config::Secret;
use graph_cdc::server::{self, ServerState};
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{self, NotificationSpec, WorkerSpec, WorkerStatus};
use graph_cdc_testkit::broker::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

/// CPU seconds of this process's threads that are not the simulator's.
fn worker_cpu() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if stat[open + 1..close].starts_with("sim") {
                continue;
            }
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            total +=
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tick;
        }
    }
    total
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Mode {
    name: &'static str,
    poll: Duration,
    notifications: bool,
}

struct Outcome {
    name: &'static str,
    cpu_pct: f64,
    requests_per_partition_hour: f64,
    requests_per_change: f64,
    p50: f64,
    p99: f64,
    seen: usize,
}

/// A worker and its server in this process.
struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

fn start(rt: &tokio::runtime::Runtime, mut spec: WorkerSpec, notify: bool) -> Worker {
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        if notify {
            spec.notifications = Some(NotificationSpec {
                url: format!("{url}/notifications"),
                lifecycle_url: format!("{url}/notifications/lifecycle"),
                client_state: Secret::new("the-benchmark-client-state"),
                renew_before: Duration::from_secs(24 * 3600),
                max_lifetime: None,
                poll_interval: Duration::from_secs(900),
                sweep_after: None,
            });
        }
        let status = Arc::new(WorkerStatus::default());
        let (commands, rx) = tokio::sync::mpsc::channel(8);
        let settings = graph_cdc::config::Settings::defaults();
        let state = Arc::new(ServerState {
            commands,
            auth_token: None,
            name: spec.sink.connector.clone(),
            worker_id: "w".into(),
            config: settings.redacted_json(),
            status: status.clone(),
            peers: server::peers::client(&[]).expect("peers client"),
        });
        let stop = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            state,
            stop.clone().cancelled_owned(),
        ));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            worker::run_with_status(spec, status, rx, s.cancelled_owned()).await
        });
        Worker { stop, task }
    })
}

fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", run_id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in 0..md.topics()[0].partitions().len() as i32 {
        tpl.add_partition_offset(topic, p, Offset::End)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    c
}

fn requests(sim: &Sim) -> u64 {
    sim.server.state.stats.lock().total()
}

fn run_mode(
    rt: &tokio::runtime::Runtime,
    sim: &Sim,
    bootstrap: &str,
    users: &[String],
    ids: &[(String, String)],
    mode: &Mode,
) -> Outcome {
    let parts: Vec<PartitionId> = users
        .iter()
        .map(|u| PartitionId::CalendarView {
            user: u.clone(),
            calendar: "primary".into(),
            window: window(),
        })
        .collect();
    let n = parts.len();
    let mut spec = harness::worker_spec(&sim.server.url(), bootstrap, parts);
    spec.poll_interval = mode.poll;
    spec.client.batch_polls = true;
    let topic = spec.sink.topics.events.clone();
    let r0 = records_written();
    let w = start(rt, spec, mode.notifications);
    let events = ids.len() as u64;
    wait_until("the initial sync", Duration::from_secs(600), || {
        records_written() - r0 >= events
    });
    if mode.notifications {
        wait_until("every subscription", Duration::from_secs(600), || {
            sim.server.state.subscriptions.lock().len() >= n
        });
    }
    // Past the first wave of polls after the sync (each at its interval ± 10% jitter):
    // the polls are spread evenly from then on.
    std::thread::sleep(
        mode.poll.min(Duration::from_secs(60)).mul_f64(1.15) + Duration::from_secs(5),
    );
    // At least one poll interval (the rate of polls spread over it), at most a minute.
    let idle = Duration::from_secs(env_u64("GRAPH_CDC_NOTIFY_IDLE_SECS", 30))
        .max(mode.poll.min(Duration::from_secs(60)));
    let (c0, q0, t0) = (worker_cpu(), requests(sim), Instant::now());
    std::thread::sleep(idle);
    let (c1, q1, t1) = (worker_cpu(), requests(sim), Instant::now());
    let secs = (t1 - t0).as_secs_f64();
    let cpu_pct = (c1 - c0) / secs * 100.0;
    let idle_rate = (q1 - q0) as f64 / secs;
    let requests_per_partition_hour = idle_rate * 3600.0 / n as f64;

    // Changes, one a second, each timed to its record.
    let changes = env_u64("GRAPH_CDC_NOTIFY_CHANGES", 30) as usize;
    let c = consumer(bootstrap, &topic);
    let sent: Arc<parking_lot::Mutex<HashMap<usize, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let q2 = requests(sim);
    let t2 = Instant::now();
    let mutator = {
        let (sent, done, state) = (sent.clone(), done.clone(), sim.server.state.clone());
        let ids: Vec<(String, String)> = ids.to_vec();
        let tag = mode.name.replace(' ', "");
        std::thread::spawn(move || {
            for k in 0..changes {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let (u, id) = &ids[(k * 7919) % ids.len()];
                let patch = graph_sim::model::EventPatch {
                    subject: Some(format!("notify-probe-{tag}-{k}-end")),
                    ..Default::default()
                };
                sent.lock().insert(k, Instant::now());
                state
                    .store
                    .write()
                    .update_event(u, id, patch)
                    .expect("update");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let marker = format!("notify-probe-{}-", mode.name.replace(' ', ""));
    let mut lat = Vec::new();
    let deadline =
        Duration::from_secs(changes as u64) + mode.poll.min(Duration::from_secs(900)) * 2;
    while lat.len() < changes && t2.elapsed() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let Some(v) = m.payload() else { continue };
            let text = String::from_utf8_lossy(v);
            if let Some(i) = text.find(&marker) {
                let rest = &text[i + marker.len()..];
                if let Some(k) = rest.split('-').next().and_then(|k| k.parse::<usize>().ok()) {
                    if let Some(at) = sent.lock().remove(&k) {
                        lat.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = mutator.join();
    let (q3, t3) = (requests(sim), Instant::now());
    let during = (q3 - q2) as f64 - idle_rate * (t3 - t2).as_secs_f64();
    let requests_per_change = during.max(0.0) / lat.len().max(1) as f64;
    w.stop.cancel();
    if let Ok(Err(e)) = rt.block_on(w.task) {
        eprintln!("worker ended: {e}");
    }
    lat.sort_by(f64::total_cmp);
    Outcome {
        name: mode.name,
        cpu_pct,
        requests_per_partition_hour,
        requests_per_change,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        seen: lat.len(),
    }
}

fn main() {
    let own = match std::env::var(graph_cdc_testkit::broker::TEST_KAFKA_ENV) {
        Ok(b) if !b.trim().is_empty() => (None, b),
        _ => {
            let b = KafkaBroker::start().expect("a Kafka broker");
            let s = b.bootstrap();
            (Some(b), s)
        }
    };
    let bootstrap = own.1.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("worker")
        .enable_all()
        .build()
        .expect("runtime");
    let sim = start_sim();
    let n = env_u64("GRAPH_CDC_NOTIFY_USERS", 10_000) as usize;
    let users = populate(&sim, "ntf", n, 2, 0, 31);
    let ids = primary_event_ids(&sim, &users);
    println!(
        "notifications: {n} calendar views ({} events), batch_polls, broker {bootstrap}",
        ids.len()
    );
    let modes = [
        Mode {
            name: "notifications",
            poll: Duration::from_secs(60),
            notifications: true,
        },
        Mode {
            name: "polling 60s",
            poll: Duration::from_secs(60),
            notifications: false,
        },
        Mode {
            name: "polling 5s",
            poll: Duration::from_secs(5),
            notifications: false,
        },
    ];
    let mut out = Vec::new();
    for m in &modes {
        let o = run_mode(&rt, &sim, &bootstrap, &users, &ids, m);
        println!(
            "  {:<14} idle: {:>6.2}% of a core, {:>7.2} Graph requests per partition-hour; changes: p50 {:>8.0} ms, p99 {:>8.0} ms ({} of them), {:.2} requests per change",
            o.name, o.cpu_pct, o.requests_per_partition_hour, o.p50, o.p99, o.seen, o.requests_per_change
        );
        out.push(o);
    }
    let base = &out[1];
    println!(
        "RESULT notifications: {n} idle partitions: notifications {:.2}% of a core and {:.2} requests per partition-hour, polling 60 s {:.2}% and {:.2} (CPU ratio {:.2}); change latency p50/p99 notifications {:.0}/{:.0} ms, polling 60 s {:.0}/{:.0} ms, polling 5 s {:.0}/{:.0} ms",
        out[0].cpu_pct,
        out[0].requests_per_partition_hour,
        base.cpu_pct,
        base.requests_per_partition_hour,
        out[0].cpu_pct / base.cpu_pct,
        out[0].p50,
        out[0].p99,
        base.p50,
        base.p99,
        out[2].p50,
        out[2].p99
    );
    drop(own);
}
