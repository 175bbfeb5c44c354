//! `/readyz` reads what the worker last recorded (its background Kafka check, the partitions'
//! Graph answers) and builds nothing: it turns 503 with a reason when Graph fails past its
//! window or Kafka stops answering, back to 200 when they recover, and a flood of probes
//! creates no Kafka client.

use std::time::{Duration, Instant};

use graph_cdc::graph::Credential;
use graph_cdc::sink::health::probe_clients_built;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_sim::faults::{FaultKind, FaultSpec};
use graph_sim::SimServer;
use serde_json::Value;

use crate::common::*;
use crate::ops::{get_open, sim, start, wait_ready};

fn lists() -> Vec<PartitionId> {
    // By principal name, as a configuration lists it: the worker looks it up first.
    vec![PartitionId::TaskLists {
        user: "user001@contoso.com".into(),
    }]
}

/// A spec whose Graph fetches give up fast and whose readiness windows are short.
fn quick(sim: &SimServer, bootstrap: &str) -> WorkerSpec {
    let mut spec = spec(sim, bootstrap, lists());
    spec.client.max_retries = 1;
    spec.health_interval = Duration::from_millis(300);
    spec.readiness.kafka = Duration::from_secs(2);
    spec.readiness.graph = Duration::from_secs(2);
    spec
}

/// `/readyz`: its status and reasons.
async fn readyz(url: &str) -> (u16, Vec<String>) {
    let (code, body) = get_open(&format!("{url}/readyz")).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let reasons = v["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(v["ready"], code == 200, "{body}");
    (code, reasons)
}

/// Polls `/readyz` until `until` holds for its answer; panics with the last one after `within`.
async fn wait_readyz(url: &str, within: Duration, until: impl Fn(u16, &[String]) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let (code, reasons) = readyz(url).await;
        if until(code, &reasons) {
            return;
        }
        assert!(Instant::now() < deadline, "still {code}: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_graph_fails_past_its_window_and_recovers() {
    let sim = sim().await;
    let spec = quick(&sim, &bootstrap());
    let ops = start(&spec).await;
    wait_ready(&ops.url).await;
    // Every Graph request answers 503 (the token endpoint still works).
    sim.state.add_fault(FaultSpec {
        kind: FaultKind::Unavailable,
        user: None,
        endpoint: None,
        on: None,
        probability: Some(1.0),
        count: None,
        retry_after: None,
        delay_ms: None,
        location: None,
        body_bytes: None,
    });
    wait_readyz(&ops.url, Duration::from_secs(30), |code, reasons| {
        code == 503
            && reasons.iter().any(|r| {
                r.starts_with("Graph not answering: last successful response")
                    && r.contains("failing for")
                    && r.contains("503")
            })
    })
    .await;
    let (_, reasons) = readyz(&ops.url).await;
    assert_eq!(
        reasons.len(),
        1,
        "Kafka and the offsets are fine: {reasons:?}"
    );
    let (_, metrics) = get_open(&format!("{}/metrics", ops.url)).await;
    assert!(
        metrics.contains(graph_cdc::metrics::HEALTH_GRAPH_OK),
        "{metrics}"
    );
    sim.state.faults.lock().clear();
    // The partition retries after its backoff (5 s, growing with each failure).
    wait_readyz(&ops.url, Duration::from_secs(60), |code, _| code == 200).await;
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_no_token_was_obtained_while_the_secret_is_refused() {
    let sim = sim().await;
    let mut spec = quick(&sim, &bootstrap());
    spec.credential = Credential::Secret("not-the-secret".into());
    let ops = start(&spec).await;
    wait_readyz(&ops.url, Duration::from_secs(30), |code, reasons| {
        code == 503
            && reasons.iter().any(|r| {
                r.contains("no successful response (so no token) yet")
                    && r.contains("authentication failed")
            })
    })
    .await;
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_builds_no_kafka_client_and_follows_a_frozen_broker() {
    // A broker of its own: the count of clients is per cluster, and it is frozen below.
    let broker = tokio::task::spawn_blocking(graph_cdc_testkit::broker::KafkaBroker::start)
        .await
        .unwrap()
        .expect("a broker of its own");
    let bootstrap = broker.bootstrap();
    let sim = sim().await;
    let spec = quick(&sim, &bootstrap);
    let ops = start(&spec).await;
    wait_ready(&ops.url).await;
    // The start-up probe's client, and the background check's, built at its first check.
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe_clients_built(&bootstrap) < 2 {
        assert!(
            Instant::now() < deadline,
            "the background check built no client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let built = probe_clients_built(&bootstrap);
    let http = reqwest::Client::new();
    for i in 0..200 {
        let r = http
            .get(format!("{}/readyz", ops.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "call {i}: {}", r.text().await.unwrap());
    }
    // Several background checks ran meanwhile, on the one client they keep.
    tokio::time::sleep(spec.health_interval * 4).await;
    assert_eq!(
        probe_clients_built(&bootstrap),
        built,
        "neither /readyz nor the background check builds a client per call"
    );

    // A broker that answers nothing: /readyz still answers at once, and turns 503 once the
    // last successful check is older than the window.
    assert!(broker.freeze());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = Instant::now();
        let (code, reasons) = readyz(&ops.url).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/readyz took {:?}",
            t.elapsed()
        );
        if code == 503 {
            assert!(
                reasons
                    .iter()
                    .any(|r| r.starts_with("Kafka unreachable: last reached")),
                "{reasons:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready with a frozen broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get_open(&format!("{}/healthz", ops.url)).await.0,
        200,
        "alive all the same"
    );
    assert!(broker.thaw());
    wait_readyz(&ops.url, Duration::from_secs(60), |code, _| code == 200).await;
    assert_eq!(
        probe_clients_built(&bootstrap),
        built,
        "the same client again"
    );
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}
