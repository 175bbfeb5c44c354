//! Scale-out (issue 14): workers of one connector share its shards through Kafka's group
//! protocol. A second worker takes some shards over (cooperative: the first keeps the rest),
//! each partition runs on exactly one worker, both commit, and when the second leaves its
//! shards come back to the first; the topics equal the truth and nothing is committed twice.
//! A group source's members spread over the workers too, and a member's leaving is carried
//! out by whichever worker owns its shard.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use graph_cdc::config::GroupSource;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{PartitionState, WorkerSpec};
use graph_sim::generate::MutateSpec;
use graph_sim::SimServer;

use crate::common::*;

/// The partitions `w` runs.
fn running(w: &Running) -> BTreeSet<PartitionId> {
    w.status
        .partitions
        .lock()
        .iter()
        .filter(|(_, s)| **s == PartitionState::Running)
        .map(|(p, _)| (**p).clone())
        .collect()
}

fn mutate(sim: &SimServer, seed: u64) {
    let start =
        chrono::NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
    let m = MutateSpec {
        count: 6,
        start,
        days: 30,
        seed: Some(seed),
        ..Default::default()
    };
    graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
}

fn converge(sim: &SimServer, spec: &WorkerSpec, workers: &[&Running]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        let Some(d) = difference(sim, spec, WINDOW) else {
            return;
        };
        for w in workers {
            if let Some(end) = w.ended.lock().clone() {
                panic!("a worker stopped by itself ({end}): {d}");
            }
        }
        assert!(Instant::now() < deadline, "not converged: {d}");
        std::thread::sleep(Duration::from_millis(500));
    });
}

/// Waits until `workers` run `want` between them, each partition on one worker, each
/// worker some; returns what each runs.
async fn shared_out(
    workers: &[&Running],
    want: &BTreeSet<PartitionId>,
) -> Vec<BTreeSet<PartitionId>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sets: Vec<BTreeSet<PartitionId>> = workers.iter().map(|w| running(w)).collect();
        let union: BTreeSet<PartitionId> = sets.iter().flatten().cloned().collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        if union == *want && total == want.len() && sets.iter().all(|s| !s.is_empty()) {
            return sets;
        }
        assert!(
            Instant::now() < deadline,
            "not shared out: {:?} of {} ({total} running in all)",
            sets.iter().map(BTreeSet::len).collect::<Vec<_>>(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_takes_shards_over_and_hands_them_back() {
    // 12 users over 6 shards: each of two workers gets some (a user is a shard's unit).
    let (sim, ids) = sim_with_users(12, 6, 2, 51).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&ids));
    spec.sharding.shards = 6;
    spec.sharding.worker_id = "a".into();
    let all: BTreeSet<PartitionId> = all_partitions(&sim, WINDOW).into_iter().collect();
    let first = start_worker(&spec);
    converge(&sim, &spec, &[&first]);
    shared_out(&[&first], &all).await;

    // A second worker: some shards move to it, the first keeps the others.
    let mut second_spec = spec.clone();
    second_spec.sharding.worker_id = "b".into();
    let second = start_worker(&second_spec);
    shared_out(&[&first, &second], &all).await;
    let moves = |n: &str| {
        graph_cdc::metrics::metrics()
            .shard_moves
            .with_label_values(&[n])
            .get()
    };
    assert!(moves("revoked") >= 1, "the first gave shards up");
    for i in 0..4 {
        mutate(&sim, 900 + i);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    converge(&sim, &spec, &[&first, &second]);
    // The second leaves: its shards come back to the first.
    let t0 = Instant::now();
    second.stop().await.expect("a graceful stop");
    shared_out(&[&first], &all).await;
    let handover = t0.elapsed();
    assert!(handover < Duration::from_secs(30), "{handover:?}");
    eprintln!("handover after a graceful leave: {handover:?}");
    mutate(&sim, 990);
    converge(&sim, &spec, &[&first]);
    first.stop().await.expect("stop");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// More workers than shards: the one left without a shard is in the group, idle and ready
/// (its offsets are "loaded": it has none to read), while the other runs everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_beyond_the_shard_count_is_idle_and_ready() {
    let (sim, ids) = sim_with_users(2, 4, 1, 52).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&ids));
    spec.sharding.shards = 1;
    spec.sharding.worker_id = "a".into();
    let all: BTreeSet<PartitionId> = all_partitions(&sim, WINDOW).into_iter().collect();
    let first = start_worker(&spec);
    converge(&sim, &spec, &[&first]);
    let mut idle_spec = spec.clone();
    idle_spec.sharding.worker_id = "b".into();
    let idle = start_worker(&idle_spec);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !idle
        .status
        .offsets_loaded
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            idle.status.unready_reasons()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(running(&idle).is_empty(), "no shard, no partition");
    assert_eq!(running(&first), all, "the shard stays with the first");
    idle.stop().await.expect("stop");
    first.stop().await.expect("stop");
}

/// Connector-wide commands reach every worker through the control topic, whichever worker an
/// operator asked, and outlive a restart: stop on one stops both (nothing more is written),
/// a worker restarted meanwhile comes up stopped, resume on the other starts everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_resume_reach_every_worker_and_outlive_a_restart() {
    use graph_cdc::worker::{Command, ConnectorState};
    let (sim, ids) = sim_with_users(12, 4, 1, 53).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&ids));
    spec.sharding.shards = 4;
    spec.sharding.worker_id = "a".into();
    let mut b_spec = spec.clone();
    b_spec.sharding.worker_id = "b".into();
    let all: BTreeSet<PartitionId> = all_partitions(&sim, WINDOW).into_iter().collect();
    let a = start_worker(&spec);
    let b = start_worker(&b_spec);
    shared_out(&[&a, &b], &all).await;
    converge(&sim, &spec, &[&a, &b]);
    let state = |w: &Running| *w.status.connector.lock();

    a.command(Command::Stop).await.expect("stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&b) != ConnectorState::Stopped {
        assert!(Instant::now() < deadline, "b: {:?}", state(&b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(&a), ConnectorState::Stopped);
    let written = all_records(&spec).len();
    mutate(&sim, 700);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        all_records(&spec).len(),
        written,
        "stopped: nothing written"
    );

    // b restarts while the connector is stopped: it comes up stopped.
    b.stop().await.expect("stop b");
    let b = start_worker(&b_spec);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b
        .status
        .offsets_loaded
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state(&b), ConnectorState::Stopped);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        running(&b).is_empty(),
        "a stopped connector's worker runs nothing"
    );
    assert_eq!(all_records(&spec).len(), written, "still nothing written");

    // Resume through b: both run again and catch up.
    b.command(Command::Resume).await.expect("resume");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&a) != ConnectorState::Running {
        assert!(Instant::now() < deadline, "a: {:?}", state(&a));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converge(&sim, &spec, &[&a, &b]);
    shared_out(&[&a, &b], &all).await;
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// `p`'s offsets in the offsets topic, oldest first (`None`: a reset).
fn offsets_of(spec: &WorkerSpec, p: &PartitionId) -> Vec<Option<graph_cdc::source::SourceOffset>> {
    let key = graph_cdc::offsets::encode_key(&spec.sink.connector, p);
    tokio::task::block_in_place(|| read_all(&spec.sink.bootstrap_servers, &spec.sink.offsets_topic))
        .into_iter()
        .filter(|r| r.key == key.as_bytes())
        .map(|r| {
            r.value
                .map(|v| serde_json::from_slice(&v).expect("an offset"))
        })
        .collect()
}

/// Waits until `p`'s offsets satisfy `ok`, at most 30 s.
async fn until_offsets(
    spec: &WorkerSpec,
    p: &PartitionId,
    what: &str,
    ok: impl Fn(&[Option<graph_cdc::source::SourceOffset>]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = offsets_of(spec, p);
        if ok(&seen) {
            return;
        }
        assert!(Instant::now() < deadline, "{p}: {what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Partition-level commands asked of a worker that does not own the partition reach the one
/// that does, through the control topic: a resync (its next round is from scratch) and,
/// while stopped, an offset reset (its owner reads it before resuming, and starts over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_and_offset_changes_reach_the_partitions_owner() {
    use graph_cdc::worker::{Command, ConnectorState, Resync};
    let (sim, ids) = sim_with_users(12, 4, 1, 57).await;
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&ids));
    spec.sharding.shards = 4;
    spec.sharding.worker_id = "a".into();
    let mut b_spec = spec.clone();
    b_spec.sharding.worker_id = "b".into();
    let all: BTreeSet<PartitionId> = all_partitions(&sim, WINDOW).into_iter().collect();
    let a = start_worker(&spec);
    let b = start_worker(&b_spec);
    let sets = shared_out(&[&a, &b], &all).await;
    converge(&sim, &spec, &[&a, &b]);
    let p = sets[1]
        .iter()
        .find(|p| matches!(p, PartitionId::CalendarView { .. }))
        .expect("b runs a calendar view")
        .clone();
    let state = |w: &Running| *w.status.connector.lock();

    // A resync of b's partition, asked of a.
    // A round from scratch stamps its offsets with its start (`full_at`, in seconds).
    let full_at = |o: &[Option<graph_cdc::source::SourceOffset>]| {
        o.iter()
            .flatten()
            .filter_map(|o| o.full_at)
            .max()
            .unwrap_or(0)
    };
    let before = full_at(&offsets_of(&spec, &p));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let said = a
        .command(Command::Resync(Resync {
            partition: Some(p.clone()),
        }))
        .await
        .expect("resync");
    assert!(said.contains("another worker"), "{said}");
    until_offsets(&spec, &p, "a round from scratch", |o| full_at(o) > before).await;

    // Stopped, a resets b's partition; resumed, b starts it over from its initial request.
    let rounds = |o: &[Option<graph_cdc::source::SourceOffset>]| {
        o.iter().flatten().map(|o| o.round).max().unwrap_or(0)
    };
    until_offsets(&spec, &p, "a few rounds", |o| rounds(o) >= 5).await;
    a.command(Command::Stop).await.expect("stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&b) != ConnectorState::Stopped {
        assert!(Instant::now() < deadline, "b: {:?}", state(&b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let round = rounds(&offsets_of(&spec, &p));
    let writes = vec![(p.clone(), None)];
    a.command(Command::AlterOffsets(graph_cdc::worker::AlterOffsets(
        writes,
    )))
    .await
    .expect("reset");
    until_offsets(&spec, &p, "the reset", |o| o.last() == Some(&None)).await;
    let n = offsets_of(&spec, &p).len();
    b.command(Command::Resume).await.expect("resume");
    until_offsets(&spec, &p, "started over", |o| {
        o.len() > n
            && o.last()
                .is_some_and(|o| o.as_ref().is_some_and(|o| o.round < round))
    })
    .await;
    converge(&sim, &spec, &[&a, &b]);
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// A group of 10 members over 6 shards and two workers: each worker runs some members'
/// partitions (by user, not with their group's membership partition); members who leave
/// have their records tombstoned and their partitions stopped by the worker that owns them,
/// wherever the membership partition runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_members_spread_over_the_workers() {
    use crate::groups::{members_partition, nested_groups, partitions_of, templates, OUTER};
    let (sim, ids) = sim_with_users(10, 5, 2, 57).await;
    nested_groups(&sim, &ids);
    for u in &ids[3..] {
        sim.state.store.write().add_member(OUTER, u).expect("add");
    }
    let mut spec = spec(&sim, &bootstrap(), Vec::new());
    spec.groups = vec![GroupSource {
        group: OUTER.into(),
        templates: templates(),
        tombstone: true,
    }];
    spec.membership_interval = Duration::from_millis(500);
    spec.sharding.shards = 6;
    spec.sharding.worker_id = "a".into();
    let mut b_spec = spec.clone();
    b_spec.sharding.worker_id = "b".into();
    let a = start_worker(&spec);
    let b = start_worker(&b_spec);
    let mut members: Vec<String> = ids.clone();
    crate::groups::converge(&sim, &spec, &members);
    let want = |members: &[String]| -> BTreeSet<PartitionId> {
        members
            .iter()
            .flat_map(|u| partitions_of(&sim, u))
            .chain([members_partition()])
            .collect()
    };
    let sets = shared_out(&[&a, &b], &want(&members)).await;
    let users_of = |s: &BTreeSet<PartitionId>| -> BTreeSet<String> {
        s.iter()
            .filter(|p| !matches!(p, PartitionId::GroupMembers { .. }))
            .map(|p| p.user().to_string())
            .collect()
    };
    let (on_a, on_b) = (users_of(&sets[0]), users_of(&sets[1]));
    assert!(
        !on_a.is_empty() && !on_b.is_empty() && on_a.is_disjoint(&on_b),
        "members on a: {on_a:?}, on b: {on_b:?}"
    );
    // One member of each worker leaves.
    let leaving = [
        on_a.iter().next().expect("a member on a").clone(),
        on_b.iter().next().expect("a member on b").clone(),
    ];
    let had: Vec<usize> = leaving
        .iter()
        .map(|u| crate::groups::live_of(&spec, u))
        .collect();
    assert!(had.iter().all(|n| *n > 0), "{had:?}");
    for u in &leaving {
        let group = if *u == ids[2] {
            crate::groups::INNER
        } else {
            OUTER
        };
        sim.state
            .store
            .write()
            .remove_member(group, u)
            .expect("remove");
    }
    members.retain(|u| !leaving.contains(u));
    crate::groups::converge(&sim, &spec, &members);
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaving.iter().any(|u| crate::groups::live_of(&spec, u) > 0) {
        assert!(
            Instant::now() < deadline,
            "departed members' records still live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared_out(&[&a, &b], &want(&members)).await;
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}
