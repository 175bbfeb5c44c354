//! What the connector benches share: the simulator on its own runtime, a worker in this
//! process, and the connector's counters. (`mod common;` in each bench; not a bench itself.)

#![allow(dead_code)]

use chrono::NaiveDateTime;
use graph_cdc::worker::WorkerSpec;
use graph_sim::generate::{random_event, GenerateSpec};
use graph_sim::{SimServer, SimSettings};

// Not every bench uses every one.
#[allow(unused_imports)]
pub use graph_cdc_testkit::harness::{
    self, records_written, run_id, transactions, wait_until, InProcessWorker, CLIENT, SECRET,
    TENANT,
};

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
    harness::register_app(&server);
    Sim { server, _rt: rt }
}

/// A worker running in this process until stopped.
pub struct Running(InProcessWorker);

impl Running {
    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        if let Err(e) = self.0.stop_blocking(rt) {
            eprintln!("worker ended: {e}");
        }
    }
}

pub fn start_worker(rt: &tokio::runtime::Runtime, spec: WorkerSpec) -> Running {
    Running(InProcessWorker::start(rt.handle(), spec))
}

/// `users` users (`{prefix}NNN@contoso.com`, users from generator seed `seed`), each with
/// `events` single events inside the window (none outside: every event is an item of the
/// partition) and `tasks` tasks in one list.
pub fn populate(
    sim: &Sim,
    prefix: &str,
    users: usize,
    events: usize,
    tasks: usize,
    seed: u64,
) -> Vec<String> {
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
        extra_lists: 0,
        tasks_per_list: tasks,
        seed: Some(seed),
        ..Default::default()
    };
    let infos = graph_sim::generate::generate(&mut store, &spec).expect("generate");
    let mut rng = rand::rng();
    for u in &infos {
        for _ in 0..events {
            let ev = random_event(&mut rng, window_start(), WINDOW_DAYS, 0.0, false);
            store.create_event(&u.id, "primary", ev).expect("event");
        }
    }
    infos.into_iter().map(|u| u.user_principal_name).collect()
}

/// Every live event of `users`' primary calendars, as (user id, event id).
pub fn primary_event_ids(sim: &Sim, users: &[String]) -> Vec<(String, String)> {
    let store = sim.server.state.store.read();
    users
        .iter()
        .flat_map(|u| {
            let uid = store.user_id(u).expect("user").to_string();
            let u = &store.users[&uid];
            u.events[&u.primary_calendar]
                .live()
                .map(|e| (uid.clone(), e.data.id.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}
