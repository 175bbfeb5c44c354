use std::time::Duration;

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_sim::faults::{FaultKind, FaultSpec, LinkKind};
use graph_sim::generate::{GenerateSpec, MutateSpec};
use graph_sim::{SimServer, SimSettings};

use crate::common::*;

const WINDOW: &str = "2026-03-01T00:00:00Z/2026-03-31T00:00:00Z";

fn start_t() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("2026-03-01T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap()
}

async fn sim_with_users(settings: SimSettings, users: usize, seed: u64) -> SimServer {
    let sim = SimServer::start("127.0.0.1:0", settings).await.unwrap();
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
    let spec = GenerateSpec {
        users,
        tenant: Some(TENANT.into()),
        start: start_t(),
        days: 30,
        events_per_user: 25,
        tasks_per_list: 8,
        seed: Some(seed),
        ..Default::default()
    };
    graph_sim::generate::generate(&mut sim.state.store.write(), &spec).unwrap();
    sim
}

/// The configured partitions: every kind for every user.
fn configured(sim: &SimServer) -> Vec<PartitionId> {
    all_partitions(sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect()
}

fn mutate(sim: &SimServer, count: usize, seed: u64) {
    let spec = MutateSpec {
        count,
        start: start_t(),
        days: 30,
        seed: Some(seed),
        ..Default::default()
    };
    graph_sim::generate::mutate(&mut sim.state.store.write(), &spec);
}

/// Waits for the topics to equal the truth; fails at once if the worker stopped by itself.
fn converge(sim: &SimServer, spec: &WorkerSpec, w: &Running) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        let Some(d) = difference(sim, spec, WINDOW) else {
            return;
        };
        if let Some(end) = w.ended.lock().clone() {
            panic!("the worker stopped by itself ({end}) before converging: {d}");
        }
        assert!(std::time::Instant::now() < deadline, "not converged: {d}");
        std::thread::sleep(Duration::from_millis(500));
    });
}

/// A full initial sync and incremental rounds of all three kinds, several users and pages:
/// the compacted topics equal the simulator's truth, and nothing was committed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_of_all_kinds_converge_to_the_truth_without_duplicates() {
    let sim = sim_with_users(SimSettings::default(), 3, 11).await;
    let spec = spec(&sim, &bootstrap(), configured(&sim));
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    for round in 0..3 {
        mutate(&sim, 40, 100 + round);
        converge(&sim, &spec, &w);
    }
    w.stop().await.expect("clean stop");
    // The per-mailbox cap held: never more than 4 requests in flight, never throttled for it.
    let st = sim.state.stats.lock().clone();
    assert!(st.peak_in_flight() <= 4, "{:?}", st.max_in_flight);
    assert_eq!(st.answered(429), 0, "{:?}", st.requests);
    let records = all_records(&spec);
    assert!(records.len() > 150, "{} records", records.len());
    assert_eq!(duplicates(&records), Vec::<String>::new());
    // Headers say what happened.
    let del = records
        .iter()
        .find(|r| r.value.is_none())
        .expect("some tombstone");
    assert_eq!(del.headers["graph-cdc.op"], "delete");
    assert_eq!(del.headers["graph-cdc.removed-reason"], "deleted");
    let up = records.iter().find(|r| r.value.is_some()).unwrap();
    assert_eq!(up.headers["graph-cdc.op"], "upsert");
    assert!(up.headers["graph-cdc.partition"].starts_with("{\"kind\":"));
    assert!(up.headers["graph-cdc.round"].parse::<u64>().unwrap() >= 1);
}

/// Stopping and starting again resumes from the committed offsets: no duplicates, no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_committed_offsets() {
    let sim = sim_with_users(SimSettings::default(), 2, 12).await;
    let spec = spec(&sim, &bootstrap(), configured(&sim));
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    w.stop().await.unwrap();
    let initial = sim.state.stats.lock().records;
    mutate(&sim, 15, 7);
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    w.stop().await.unwrap();
    let after = sim.state.stats.lock().records - initial;
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
    // Resumed from deltaLinks: only the changes were fetched, not a second full sync.
    assert!(
        after * 3 < initial,
        "{after} records fetched after restart, {initial} in the initial sync"
    );
}

/// `graph.batch_polls`: deltaLink polls travel in JSON batches; items throttled or failed
/// inside a batch fall back to requests of their own; the view converges with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_polls_converge_and_fall_back_per_item() {
    let sim = sim_with_users(SimSettings::default(), 3, 31).await;
    let f = |kind, probability| FaultSpec {
        on: Some(LinkKind::Delta),
        probability: Some(probability),
        retry_after: Some(0.05),
        ..FaultSpec::new(kind)
    };
    sim.state.add_fault(f(FaultKind::Throttle, 0.1));
    sim.state.add_fault(f(FaultKind::Gone, 0.02));
    sim.state.add_fault(f(FaultKind::Malformed, 0.02));
    let mut spec = spec(&sim, &bootstrap(), configured(&sim));
    spec.client.batch_polls = true;
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    for round in 0..3 {
        mutate(&sim, 30, 300 + round);
        converge(&sim, &spec, &w);
    }
    w.stop().await.unwrap();
    let (batches, delta_polls) = {
        let st = sim.state.stats.lock();
        (st.count("batch", 200), st.total())
    };
    let m = graph_cdc::metrics::metrics();
    let answered: u64 = graph_cdc::source::PartitionKind::ALL
        .iter()
        .map(|k| {
            m.graph_batched_polls
                .with_label_values(&[k.as_str(), "page"])
                .get()
        })
        .sum();
    let fallback: u64 = graph_cdc::source::PartitionKind::ALL
        .iter()
        .map(|k| {
            m.graph_batched_polls
                .with_label_values(&[k.as_str(), "fallback"])
                .get()
        })
        .sum();
    assert!(batches > 0, "polls were batched");
    assert!(
        answered > batches,
        "batches carried several polls each: {answered} polls in {batches} batches ({delta_polls} requests in all)"
    );
    assert!(fallback > 0, "throttled items were retried on their own");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// 429 storms, 5xx, malformed and truncated bodies, 410 on nextLinks and deltaLinks and an
/// expired token: the view still converges to the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_faults_do_not_lose_changes() {
    let sim = sim_with_users(
        SimSettings {
            replay_probability: 0.1,
            empty_page_probability: 0.05,
            ..Default::default()
        },
        2,
        13,
    )
    .await;
    let f = |kind, probability: f64| FaultSpec {
        probability: Some(probability),
        retry_after: Some(0.05),
        delay_ms: Some(50),
        ..FaultSpec::new(kind)
    };
    sim.state.add_fault(f(FaultKind::Throttle, 0.15));
    sim.state.add_fault(f(FaultKind::Unavailable, 0.05));
    sim.state.add_fault(f(FaultKind::GatewayTimeout, 0.05));
    sim.state.add_fault(f(FaultKind::Malformed, 0.05));
    sim.state.add_fault(f(FaultKind::Truncated, 0.05));
    sim.state.add_fault(FaultSpec {
        on: Some(LinkKind::Next),
        ..f(FaultKind::Gone, 0.05)
    });
    sim.state.add_fault(FaultSpec {
        on: Some(LinkKind::Delta),
        ..f(FaultKind::Gone, 0.05)
    });
    sim.state.add_fault(FaultSpec {
        probability: None,
        count: Some(2),
        ..f(FaultKind::Unauthorized, 0.0)
    });
    let spec = spec(&sim, &bootstrap(), configured(&sim));
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    for round in 0..2 {
        mutate(&sim, 40, 200 + round);
        converge(&sim, &spec, &w);
    }
    w.stop().await.unwrap();
    let st = sim.state.stats.lock().clone();
    let count = |status| {
        st.requests
            .values()
            .map(|m| m.get(&status).copied().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(
        count(429) > 0 && count(410) > 0 && count(503) > 0 && count(401) > 0,
        "faults fired: {:?}",
        st.requests
    );
    // Rounds were restarted; they wrote only what had changed (often nothing: the
    // `reconcile` tests check the header on what they do write) and nothing twice.
    let resyncs: u64 = graph_cdc::source::PartitionKind::ALL
        .iter()
        .map(|k| {
            graph_cdc::metrics::metrics()
                .resyncs
                .with_label_values(&[k.as_str()])
                .get()
        })
        .sum();
    assert!(resyncs > 0, "rounds were restarted after 410s");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// A To Do list created later is tracked without a restart; a removed list is tombstoned
/// and its task partition's offset is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_lists_come_and_go() {
    let sim = sim_with_users(SimSettings::default(), 1, 14).await;
    let spec = spec(&sim, &bootstrap(), configured(&sim));
    let user = sim
        .state
        .store
        .read()
        .users
        .values()
        .next()
        .unwrap()
        .id
        .clone();
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    let list = sim
        .state
        .store
        .write()
        .create_list(&user, Default::default())
        .unwrap();
    for _ in 0..5 {
        sim.state
            .store
            .write()
            .create_task(&user, &list, Default::default())
            .unwrap();
    }
    converge(&sim, &spec, &w);
    sim.state.store.write().delete_list(&user, &list).unwrap();
    converge(&sim, &spec, &w);
    // Give the reset a moment to commit (it travels with the list's tombstone).
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.stop().await.unwrap();
    // Keyed by the user's object id.
    let tasks = PartitionId::Tasks {
        user: user.clone(),
        list: list.clone(),
    };
    let offsets = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.offsets_topic)
    });
    let key = graph_cdc::offsets::encode_key(&spec.sink.connector, &tasks);
    let last = offsets
        .iter()
        .rfind(|r| r.key == key.as_bytes())
        .expect("offsets of the list's tasks");
    assert!(
        last.value.is_none(),
        "the task partition's offset was reset"
    );
    let lists = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.task_lists)
    });
    let tomb = lists
        .iter()
        .rfind(|r| String::from_utf8_lossy(&r.key).contains(&list))
        .unwrap();
    assert!(tomb.value.is_none(), "the list is tombstoned");
}

/// Certificate credentials: the worker signs a JWT client assertion the simulator verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_work_end_to_end() {
    let sim = sim_with_users(SimSettings::default(), 1, 16).await;
    let cert = graph_cdc_testkit::fixtures::CLIENT_CERT_PEM;
    let thumb = {
        use base64::Engine as _;
        use sha2::Digest as _;
        let b64: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
    };
    sim.state.store.write().add_client(
        TENANT,
        graph_sim::model::Client {
            client_id: "cert-app".into(),
            client_secret: None,
            public_key_pem: Some(graph_cdc_testkit::fixtures::CLIENT_PUBLIC_KEY_PEM.into()),
            x5t_s256: Some(thumb),
        },
    );
    let mut spec = spec(&sim, &bootstrap(), configured(&sim));
    spec.client_id = "cert-app".into();
    spec.credential = graph_cdc::graph::Credential::Certificate {
        cert_pem: cert.into(),
        key_pem: graph_cdc_testkit::fixtures::CLIENT_KEY_PEM.into(),
    };
    let w = start_worker(&spec);
    converge(&sim, &spec, &w);
    w.stop().await.unwrap();
    assert!(sim.state.stats.lock().tokens_issued >= 1);
}
