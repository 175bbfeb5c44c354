//! Shutdown: partition tasks are waited for, in-flight commits included, at most
//! `worker.shutdown_timeout`; then the ones still there are aborted and the committer stops.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use graph_cdc::source::{PartitionId, SourceOffset};
use graph_cdc::worker::{PartitionState, WorkerSpec};

use crate::common::*;

/// Starts a worker and returns once it fetched its first page: the partitions' first commits
/// are then waiting out the committer's `linger`.
async fn started_with_commits_in_flight(spec: &WorkerSpec) -> Running {
    let w = start_worker(spec);
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.status.health.graph.last_success().is_none() {
        assert!(Instant::now() < deadline, "no page fetched");
        assert!(w.ended.lock().is_none(), "the worker ended: {:?}", w.ended);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for the other partitions' first pages to reach the committer too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w
}

/// The last committed offset of each of the connector's partitions in the offsets topic.
fn committed_offsets(spec: &WorkerSpec) -> BTreeMap<PartitionId, SourceOffset> {
    let records = read_all(&spec.sink.bootstrap_servers, &spec.sink.offsets_topic);
    let mut out = BTreeMap::new();
    for r in records {
        let Ok(rec) = graph_cdc::offsets::decode(&r.key, r.value.as_deref()) else {
            continue;
        };
        if rec.connector != spec.sink.connector {
            continue;
        }
        match rec.offset {
            Some(o) => out.insert(rec.partition, o),
            None => out.remove(&rec.partition),
        };
    }
    out
}

/// A stop while commits are in flight waits for them: every partition ends by itself with
/// its commit acknowledged, and what the worker holds as committed is in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_shutdown_waits_for_in_flight_commits() {
    let (sim, users) = sim_with_users(2, 20, 5, 41).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    // Each transaction gathers pages for 3 s: a commit is in flight when the stop comes.
    spec.sink.linger = Duration::from_secs(3);
    spec.sink.max_batch_records = 100_000;
    spec.shutdown_timeout = Duration::from_secs(10);
    let w = started_with_commits_in_flight(&spec).await;
    let status = w.status.clone();
    let t0 = Instant::now();
    w.stop().await.expect("a clean stop");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "the stop waited for the commits in flight: {took:?}"
    );
    assert!(
        took < spec.shutdown_timeout,
        "and not for the timeout: {took:?}"
    );
    let states = status.partitions.lock().clone();
    assert!(
        states.values().all(|s| *s == PartitionState::Stopped),
        "every partition ended by itself: {states:?}"
    );
    // Offsets that moved moved with a commit the worker saw acknowledged: Kafka has them.
    let known: BTreeMap<PartitionId, SourceOffset> = status
        .offsets
        .lock()
        .iter()
        .filter(|(_, o)| o.link.is_some() || o.delta_link.is_some())
        .map(|(p, o)| ((**p).clone(), o.clone()))
        .collect();
    assert!(!known.is_empty(), "pages were committed");
    let committed = tokio::task::block_in_place(|| committed_offsets(&spec));
    for (p, o) in &known {
        assert_eq!(committed.get(p), Some(o), "{p}");
    }
    let records = all_records(&spec);
    assert!(!records.is_empty(), "their records are in the topics");
}

/// Partitions stuck in a commit that will not be acknowledged for a minute hold a stop up for
/// `shutdown_timeout` only; they are then aborted and the committer stops. Nothing is lost or
/// written twice: a new worker goes on from what was committed and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_stuck_partitions_after_shutdown_timeout() {
    let (sim, users) = sim_with_users(2, 20, 5, 43).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&users));
    // The committer gathers pages for a minute: a partition's commit waits that long.
    spec.sink.linger = Duration::from_secs(60);
    spec.sink.max_batch_records = 100_000;
    spec.shutdown_timeout = Duration::from_secs(2);
    let w = started_with_commits_in_flight(&spec).await;
    let status = w.status.clone();
    let t0 = Instant::now();
    w.stop().await.expect("a clean stop");
    let took = t0.elapsed();
    assert!(
        took >= spec.shutdown_timeout,
        "the stop waited for the partitions first: {took:?}"
    );
    assert!(
        took < spec.shutdown_timeout + Duration::from_secs(8),
        "then gave up on them: {took:?}"
    );
    assert!(
        status
            .partitions
            .lock()
            .values()
            .any(|s| *s == PartitionState::Running),
        "a partition was aborted in its commit (it never reported an end)"
    );
    let timeouts: f64 = graph_cdc::metrics::render()
        .lines()
        .filter(|l| l.starts_with("graph_cdc_shutdown_timeouts_total{during=\"shutdown\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(timeouts >= 1.0, "the timeout was reported");

    spec.sink.linger = Duration::from_millis(20);
    let w = start_worker(&spec);
    converge_except(&sim, &spec, &w, &|_| false);
    w.stop().await.expect("a clean stop");
    let records = all_records(&spec);
    assert_eq!(duplicates(&records), Vec::<String>::new());
}
