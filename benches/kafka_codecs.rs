//! What the Kafka side costs the connector: TLS (SASL_SSL with SCRAM-SHA-512, and mTLS)
//! against plaintext, and each compression codec against none, measured against each other
//! in the same run on the same broker.
//!
//! ```text
//! cargo bench --bench kafka_codecs               # both (~4.5 minutes: tls 2.7, codecs 1.7)
//! cargo bench --bench kafka_codecs -- tls        # or: codecs (or: all)
//! ```
//!
//! Every figure is the connector's initial sync of the same 100,000 simulator events (1–3 KB
//! bodies, ~4.1 KB of JSON each) over 50 calendar-view partitions: a fresh worker, in this
//! process, on topics of its own, default settings but for the Kafka options compared. The
//! simulator runs on a runtime of its own (threads named `sim`, whose CPU is not counted as
//! the connector's). The broker is one started for the run (not `GRAPH_CDC_TEST_KAFKA`: the
//! bench needs its secured listeners and its log directory): a real Apache Kafka with a
//! plaintext, a SASL_SSL (SCRAM-SHA-512) and an mTLS listener. Each configuration syncs once
//! as a warm-up (the broker's JIT) before the rounds; each round runs every configuration
//! once, starting one later than the round before.
//!
//! - `tls`: plaintext, SASL_SSL/SCRAM-SHA-512 and mTLS, with the connector's default producer
//!   settings (`compression.type` zstd, `linger.ms` 5), 5 rounds; then the same with
//!   `compression.type` none (every byte of every record through TLS), 3 rounds.
//! - `codecs`: `compression.type` none, lz4, zstd and gzip over plaintext, 3 rounds: bytes of
//!   the events topic's log segments on the broker's disk, CPU per record, records/s.
//!
//! Every configuration is compared with the first of its group (plaintext; none). Rate =
//! records committed per second from the first commit to the last (best of the rounds, and the
//! median of each round's ratio); CPU is counted over the same window (the connector's: this
//! process's CPU from `getrusage` less the simulator threads'; the simulator's and the
//! broker's JVM's: their threads' `schedstat`, in nanoseconds) per record, median of the rounds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_cdc_testkit::broker::{BrokerInfo, KafkaBroker};

mod common;
use common::*;

const USERS: usize = 50;
const EVENTS_PER_USER: usize = 2000;
const TLS_ROUNDS: usize = 5;
const TLS_NONE_ROUNDS: usize = 3;
const CODEC_ROUNDS: usize = 3;
const CODECS: [&str; 4] = ["none", "lz4", "zstd", "gzip"];

// ---------------------------------------------------------------------------------------
// Simulator and worker (as in benches/connector.rs).

/// The connector's defaults (as `benches/connector.rs`'s throughput bench), on topics of
/// their own, tracking each user's primary calendar.
fn worker_spec(sim: &Sim, bootstrap: &str, users: &[String]) -> WorkerSpec {
    let partitions = users
        .iter()
        .map(|u| PartitionId::CalendarView {
            user: u.clone(),
            calendar: "primary".into(),
            window: window(),
        })
        .collect();
    harness::worker_spec(&sim.server.url(), bootstrap, partitions)
}

// ---------------------------------------------------------------------------------------
// CPU and disk.

/// CPU seconds of this whole process (every thread, living or ended), from `getrusage`.
fn process_cpu() -> f64 {
    // SAFETY: `rusage` is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of the threads of `pid` (`self` or a number) whose name passes `keep`, from
/// `schedstat` (nanoseconds, unlike `stat`'s 10 ms ticks).
fn threads_cpu(pid: &str, keep: impl Fn(&str) -> bool) -> f64 {
    let mut ns = 0u64;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    for t in dir.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !keep(name.trim()) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// CPU seconds the whole machine has been busy (every core, every process), from
/// `/proc/stat`: with the connector's and the broker's, it tells how much other processes took.
fn machine_busy() -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user).
    let busy: f64 = ticks.iter().take(8).sum::<f64>()
        - ticks.get(3).unwrap_or(&0.0)
        - ticks.get(4).unwrap_or(&0.0);
    busy / tick
}

/// (connector, simulator, broker) CPU seconds so far.
fn cpu_now(broker: &Broker) -> (f64, f64, f64) {
    let sim = threads_cpu("self", |n| n.starts_with("sim"));
    let broker = broker
        .jvm
        .map(|pid| threads_cpu(&pid.to_string(), |_| true))
        .unwrap_or(f64::NAN);
    (process_cpu() - sim, sim, broker)
}

/// Bytes of the log segments (`*.log`) of `topic`'s partition directories; index files are
/// preallocated and left out.
fn topic_bytes(data: &Path, topic: &str) -> u64 {
    let prefix = format!("{topic}-");
    let mut bytes = 0;
    let mut dirs = 0;
    for d in std::fs::read_dir(data)
        .expect("broker data directory")
        .flatten()
    {
        let name = d.file_name().to_string_lossy().into_owned();
        let is_partition = name
            .strip_prefix(&prefix)
            .is_some_and(|p| p.parse::<u32>().is_ok());
        if !is_partition {
            continue;
        }
        dirs += 1;
        for f in std::fs::read_dir(d.path())
            .expect("partition directory")
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "log") {
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    assert!(
        dirs > 0,
        "no partition directory of {topic} in {}",
        data.display()
    );
    bytes
}

// ---------------------------------------------------------------------------------------
// One initial sync.

struct Broker {
    kafka: KafkaBroker,
    info: BrokerInfo,
    /// The JVM's pid (the broker writes it next to its data directory).
    jvm: Option<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Plaintext,
    SaslSsl,
    Mtls,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Listener::Plaintext => "plaintext",
            Listener::SaslSsl => "SASL_SSL/SCRAM-SHA-512",
            Listener::Mtls => "mTLS",
        }
    }

    /// Bootstrap address and the `[kafka.options]` every client gets.
    fn client(self, info: &BrokerInfo) -> (String, BTreeMap<String, String>) {
        match self {
            Listener::Plaintext => (info.plaintext.clone(), BTreeMap::new()),
            Listener::SaslSsl => {
                let user = &info.scram_users[0].0;
                let opts = info.sasl_scram_options(user).into_iter().collect();
                (info.sasl_ssl.clone(), opts)
            }
            Listener::Mtls => (info.ssl.clone(), info.mtls_options().into_iter().collect()),
        }
    }
}

struct Run {
    rate: f64,
    records: u64,
    txns: u64,
    cpu_us: f64,
    sim_cpu_us: f64,
    broker_cpu_us: f64,
    /// Other processes' CPU during the window, in cores (the machine has 2).
    others: f64,
    disk: u64,
}

fn sync_run(
    rt: &tokio::runtime::Runtime,
    sim: &Sim,
    users: &[String],
    broker: &Broker,
    listener: Listener,
    compression: Option<&str>,
) -> Run {
    let (bootstrap, all) = listener.client(&broker.info);
    let mut spec = worker_spec(sim, &bootstrap, users);
    spec.sink.kafka.all = all;
    if let Some(c) = compression {
        spec.sink
            .kafka
            .producer
            .insert("compression.type".into(), c.into());
    }
    let topic = spec.sink.topics.events.clone();
    let want = (users.len() * EVENTS_PER_USER) as u64;
    let (r0, n0) = (records_written(), transactions());
    let w = start_worker(rt, spec);
    wait_until("the first commit", Duration::from_secs(120), || {
        records_written() > r0
    });
    let (first_records, first_txns) = (records_written() - r0, transactions() - n0);
    let (c0, s0, b0) = cpu_now(broker);
    let m0 = machine_busy();
    let t0 = Instant::now();
    wait_until("the initial sync", Duration::from_secs(300), || {
        records_written() - r0 >= want
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let (c1, s1, b1) = cpu_now(broker);
    let ours = (c1 - c0) + (s1 - s0) + (b1 - b0);
    let others = ((machine_busy() - m0 - ours) / elapsed).max(0.0);
    let records = records_written() - r0 - first_records;
    let txns = transactions() - n0 - first_txns;
    w.stop(rt);
    let per = |d: f64| d * 1e6 / records as f64;
    Run {
        rate: records as f64 / elapsed,
        records,
        txns,
        cpu_us: per(c1 - c0),
        sim_cpu_us: per(s1 - s0),
        broker_cpu_us: per(b1 - b0),
        others,
        disk: topic_bytes(&broker.kafka.data_dir(), &topic),
    }
}

fn print_run(label: &str, r: &Run) {
    println!(
        "  {label:<44} {:>7.0} records/s, CPU µs/record: connector {:>5.1}, broker {:>5.1}, \
         simulator {:>4.1}; {:>6.1} MB on disk ({:>4.0} B/record); {} records, {} transactions; \
         other processes {:.2} cores",
        r.rate,
        r.cpu_us,
        r.broker_cpu_us,
        r.sim_cpu_us,
        r.disk as f64 / 1e6,
        r.disk as f64 / (USERS * EVENTS_PER_USER) as f64,
        r.records,
        r.txns,
        r.others
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// What a comparison runs: the broker, the simulator with its users, and the runtime.
struct Env {
    rt: tokio::runtime::Runtime,
    sim: Sim,
    users: Vec<String>,
    broker: Broker,
}

/// One configuration of the connector's Kafka clients.
#[derive(Clone, Copy)]
struct Setup {
    listener: Listener,
    /// `compression.type`, or the connector's default (zstd).
    compression: Option<&'static str>,
}

impl Setup {
    fn name(self) -> String {
        format!(
            "{}, {}",
            self.listener.name(),
            self.compression.unwrap_or("zstd (default)")
        )
    }
}

/// Each setup once as a warm-up (not counted), then `rounds` rounds of all of them, each round
/// starting one setup later so that drift falls on each alike. Prints every run and a `RESULT`
/// line per setup against the first; returns each setup's runs, in round order.
fn compare(env: &Env, mode: &str, setups: &[Setup], rounds: usize) -> Vec<Vec<Run>> {
    let t = Instant::now();
    let run = |s: Setup| {
        let b = &env.broker;
        sync_run(&env.rt, &env.sim, &env.users, b, s.listener, s.compression)
    };
    for s in setups {
        print_run(&format!("warm-up, {} (not counted):", s.name()), &run(*s));
    }
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let r = run(setups[i]);
            print_run(&format!("round {}, {}:", round + 1, setups[i].name()), &r);
            runs[i].push(r);
        }
    }
    println!(
        "  ({} runs in {:.0} s)",
        setups.len() * (rounds + 1),
        t.elapsed().as_secs_f64()
    );
    let med = |rs: &[Run], f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
    let best = |rs: &[Run]| rs.iter().map(|r| r.rate).fold(0.0, f64::max);
    let base = &runs[0];
    for (s, rs) in setups.iter().zip(&runs) {
        // Each round's rate over the same round's rate of the first setup.
        let paired = median(rs.iter().zip(base).map(|(r, b)| r.rate / b.rate).collect());
        println!(
            "RESULT {mode} {}: {:.0} records/s best of {rounds} (ratio {:.2}; median of the rounds' \
             ratios {:.2}); CPU µs/record (medians) connector {:.1} (ratio {:.2}), broker {:.1} \
             (ratio {:.2}); {:.1} MB on disk, {:.0} B/record (ratio {:.3}); other processes {:.2} cores",
            s.name(),
            best(rs),
            best(rs) / best(base),
            paired,
            med(rs, |r| r.cpu_us),
            med(rs, |r| r.cpu_us) / med(base, |r| r.cpu_us),
            med(rs, |r| r.broker_cpu_us),
            med(rs, |r| r.broker_cpu_us) / med(base, |r| r.broker_cpu_us),
            med(rs, |r| r.disk as f64) / 1e6,
            med(rs, |r| r.disk as f64) / (USERS * EVENTS_PER_USER) as f64,
            med(rs, |r| r.disk as f64) / med(base, |r| r.disk as f64),
            med(rs, |r| r.others),
        );
    }
    runs
}

// ---------------------------------------------------------------------------------------
// TLS tax, and compression codecs.

fn bench_tls(env: &Env) {
    let listeners = [Listener::Plaintext, Listener::SaslSsl, Listener::Mtls];
    println!(
        "tls: plaintext, SASL_SSL/SCRAM-SHA-512 and mTLS with the default producer settings \
         (compression.type zstd, linger.ms 5), {TLS_ROUNDS} rounds"
    );
    let zstd = listeners.map(|listener| Setup {
        listener,
        compression: None,
    });
    compare(env, "tls", &zstd, TLS_ROUNDS);
    println!(
        "tls, uncompressed: the same with compression.type none (every byte through TLS), \
         {TLS_NONE_ROUNDS} rounds"
    );
    let none = listeners.map(|listener| Setup {
        listener,
        compression: Some("none"),
    });
    compare(env, "tls-none", &none, TLS_NONE_ROUNDS);
}

fn bench_codecs(env: &Env) {
    println!(
        "codecs: compression.type {} over plaintext, {CODEC_ROUNDS} rounds",
        CODECS.join(", ")
    );
    let setups = CODECS.map(|c| Setup {
        listener: Listener::Plaintext,
        compression: Some(c),
    });
    compare(env, "codecs", &setups, CODEC_ROUNDS);
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name || a == "all");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("worker")
        .enable_all()
        .build()
        .expect("runtime");
    let kafka = KafkaBroker::start().expect("a Kafka broker");
    let jvm = kafka
        .data_dir()
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("java.pid")).ok())
        .and_then(|p| p.trim().parse().ok());
    let broker = Broker {
        info: kafka.info(),
        kafka,
        jvm,
    };
    let sim = start_sim();
    let t = Instant::now();
    let users = populate(&sim, "kc", USERS, EVENTS_PER_USER, 0, 7);
    println!(
        "graph-cdc Kafka benchmarks: {} cores; broker {} (plaintext), {} (SASL_SSL), {} (mTLS), \
         JVM pid {:?}; {} events over {} partitions generated in {:.1} s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        broker.info.plaintext,
        broker.info.sasl_ssl,
        broker.info.ssl,
        broker.jvm,
        USERS * EVENTS_PER_USER,
        USERS,
        t.elapsed().as_secs_f64()
    );
    let env = Env {
        rt,
        sim,
        users,
        broker,
    };
    if want("tls") {
        bench_tls(&env);
    }
    if want("codecs") {
        bench_codecs(&env);
    }
}
