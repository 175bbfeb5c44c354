//! What the connector benches share: the simulator on its own runtime, a worker in this
//! process, and the connector's counters. (`mod common;` in each bench; not a bench itself.)

#![allow(dead_code)]

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use graph_cdc::metrics::metrics;
use graph_cdc::source::{Op, PartitionKind};
use graph_cdc::worker::WorkerSpec;
use graph_sim::{SimServer, SimSettings};

pub const TENANT: &str = "contoso";

pub const CLIENT: &str = "graph-cdc-bench";

pub const SECRET: &str = "graph-cdc-bench-secret";

pub const WINDOW_DAYS: i64 = 60;

pub fn window_start() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").expect("time")
}

pub fn window() -> String {
    let s = window_start();
    let e = s + chrono::Duration::days(WINDOW_DAYS);
    format!(
        "{}Z/{}Z",
        s.format("%Y-%m-%dT%H:%M:%S"),
        e.format("%Y-%m-%dT%H:%M:%S")
    )
}

/// The simulator on a runtime of its own (threads named `sim`).
pub struct Sim {
    pub server: SimServer,
    _rt: tokio::runtime::Runtime,
}

pub fn start_sim() -> Sim {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sim")
        .enable_all()
        .build()
        .expect("sim runtime");
    let server = rt
        .block_on(SimServer::start("127.0.0.1:0", SimSettings::default()))
        .expect("simulator");
    server.state.add_secret_client(TENANT, CLIENT, SECRET);
    Sim { server, _rt: rt }
}

pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// A worker running in this process until dropped.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn stop(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = rt.block_on(&mut self.handle);
    }
}

pub fn start_worker(rt: &tokio::runtime::Runtime, spec: WorkerSpec) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.spawn(async move {
        if let Err(e) = graph_cdc::worker::run(spec, async {
            let _ = rx.await;
        })
        .await
        {
            eprintln!("worker ended: {e}");
        }
    });
    Running {
        stop: Some(tx),
        handle,
    }
}

pub fn records_written() -> u64 {
    let m = metrics();
    let mut n = 0;
    for k in PartitionKind::ALL {
        for op in [Op::Upsert, Op::Delete] {
            n += m
                .records_written
                .with_label_values(&[k.as_str(), op.as_str()])
                .get();
        }
    }
    n
}

pub fn transactions() -> u64 {
    metrics()
        .transactions
        .with_label_values(&["committed"])
        .get()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
