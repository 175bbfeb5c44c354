//! The HTTP surface of a running worker: health, readiness, metrics and the read-only REST
//! API, with no secret in any answer.

use std::sync::Arc;
use std::time::Duration;

use graph_cdc::config::Settings;
use graph_cdc::server::{self, ServerState};
use graph_cdc::sim::generate::GenerateSpec;
use graph_cdc::sim::{SimServer, SimSettings};
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{self, WorkerSpec, WorkerStatus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const WINDOW: &str = "2026-03-01T00:00:00Z/2026-03-31T00:00:00Z";
const GRAPH_SECRET: &str = "graph-secret-c4f2e9";
const KAFKA_PASSWORD: &str = "kafka-password-77aa1";

async fn sim() -> SimServer {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .unwrap();
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
    let spec = GenerateSpec {
        users: 2,
        tenant: Some(TENANT.into()),
        start: chrono::NaiveDateTime::parse_from_str("2026-03-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
            .unwrap(),
        days: 30,
        seed: Some(31),
        ..Default::default()
    };
    graph_cdc::sim::generate::generate(&mut sim.state.store.write(), &spec).unwrap();
    sim
}

struct Ops {
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

/// Starts a worker and its HTTP server; the shown config carries secrets that must not leak.
async fn start(spec: &WorkerSpec) -> Ops {
    let settings = Settings::from_toml_str(
        &format!(
            "name = \"{}\"\n[graph]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"{GRAPH_SECRET}\"\n[kafka.options]\n\"sasl.password\" = \"{KAFKA_PASSWORD}\"\n[[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\n",
            spec.sink.connector
        ),
        false,
    )
    .unwrap();
    let status = Arc::new(WorkerStatus::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        name: spec.sink.connector.clone(),
        worker_id: "w0".into(),
        config: settings.redacted_json(),
        status: status.clone(),
        kafka: spec.sink.client_config(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    let (s, sp) = (stop.clone(), spec.clone());
    let task =
        tokio::spawn(async move { worker::run_with_status(sp, status, s.cancelled_owned()).await });
    Ops { url, stop, task }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_ready(url: &str) {
    for _ in 0..100 {
        if get(&format!("{url}/readyz")).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never ready: {}", get(&format!("{url}/readyz")).await.1);
}

fn no_secrets(body: &str) {
    for s in [GRAPH_SECRET, KAFKA_PASSWORD, SECRET] {
        assert!(!body.contains(s), "secret in: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_rest_api_of_a_running_worker() {
    let sim = sim().await;
    let partitions: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect();
    let spec = spec(&sim, &bootstrap(), partitions);
    let ops = start(&spec).await;
    let u = &ops.url;
    assert_eq!(get(&format!("{u}/healthz")).await.0, 200);
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    wait_ready(u).await;
    let name = &spec.sink.connector;
    let mut bodies = Vec::new();
    let (code, body) = get(&format!("{u}/metrics")).await;
    assert_eq!(code, 200);
    let written: f64 = body
        .lines()
        .filter(|l| l.starts_with("graph_cdc_records_written_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(written > 0.0, "records written: {body}");
    assert!(body.contains("graph_cdc_graph_requests_total{"));
    assert!(body.contains("graph_cdc_graph_request_duration_seconds_bucket"));
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors")).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&body).unwrap()),
        (200, serde_json::json!([name]))
    );
    let (code, body) = get(&format!("{u}/connectors/{name}")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["graph"]["client_secret"], "***");
    assert_eq!(v["config"]["kafka"]["options"]["sasl.password"], "***");
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors/{name}/status")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        all_partitions(&sim, WINDOW).len(),
        "task partitions included"
    );
    assert!(tasks.iter().all(|t| t["state"] == "RUNNING"), "{body}");
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors/{name}/offsets")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let offsets = v["offsets"].as_array().unwrap();
    assert!(!offsets.is_empty());
    assert!(offsets
        .iter()
        .all(|o| o["partition"]["kind"].is_string() && o["offset"]["round"].as_u64() >= Some(1)));
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors/nope/status")).await;
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error_code"],
        404
    );
    for b in &bodies {
        no_secrets(b);
    }
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_broker_stops() {
    let mut broker = tokio::task::spawn_blocking(graph_cdc::testkit::broker::KafkaBroker::start)
        .await
        .unwrap()
        .expect("a broker of its own");
    let sim = sim().await;
    let partitions = vec![PartitionId::TaskLists {
        user: "user001@contoso.com".into(),
    }];
    let spec = spec(&sim, &broker.bootstrap(), partitions);
    let ops = start(&spec).await;
    wait_ready(&ops.url).await;
    tokio::task::block_in_place(|| broker.stop());
    let (code, body) = get(&format!("{}/readyz", ops.url)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Kafka unreachable"), "{body}");
    assert_eq!(
        get(&format!("{}/healthz", ops.url)).await.0,
        200,
        "alive all the same"
    );
    ops.task.abort();
}
