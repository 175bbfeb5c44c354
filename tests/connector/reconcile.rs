//! Reconciliation (`live/`): a round from scratch (after a `410`) writes only what changed
//! while the worker was away and tombstones what is gone; a resync of an unchanged calendar
//! writes nothing; a SIGKILL in the middle of such a round loses no delete and repeats no
//! record; a removed To Do list takes its tasks' tombstones into its own transaction; and a
//! partition with offsets but no state (an upgraded worker) builds it once from its topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graph_cdc::live::{encode_key, StateKey};
use graph_cdc::source::{key_id, PartitionId};
use graph_cdc::worker::WorkerSpec;
use graph_sim::generate::GenerateSpec;
use graph_sim::model::EventPatch;
use graph_sim::SimServer;
use serde_json::Value;

use crate::common::*;

/// A simulator with one user whose primary calendar has exactly `events` single events in
/// [`WINDOW`] (no series, none outside it), and `tasks` tasks in one extra To Do list.
async fn sim_with(events: usize, tasks: usize, seed: u64) -> (SimServer, String) {
    let sim = graph_cdc_testkit::harness::start_sim().await;
    let gen = GenerateSpec {
        users: 1,
        tenant: Some(TENANT.into()),
        start: chrono::NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
            .unwrap(),
        days: 31,
        events_per_user: events,
        recurring_per_user: 0,
        outside_fraction: 0.0,
        extra_calendars: 0,
        events_per_extra_calendar: 0,
        extra_lists: usize::from(tasks > 0),
        tasks_per_list: tasks,
        seed: Some(seed),
        ..Default::default()
    };
    let users = graph_sim::generate::generate(&mut sim.state.store.write(), &gen).unwrap();
    let upn = users[0].id.clone();
    (sim, upn)
}

fn view(user: &str) -> PartitionId {
    PartitionId::CalendarView {
        user: user.into(),
        calendar: "primary".into(),
        window: WINDOW.into(),
    }
}

/// Every committed record of the topic of `p`'s kind.
fn records(spec: &WorkerSpec, p: &PartitionId) -> Vec<Committed> {
    let topic = spec.sink.topics.for_kind(p.kind()).to_string();
    tokio::task::block_in_place(|| read_all(&spec.sink.bootstrap_servers, &topic))
}

/// Waits until `p`'s compacted view equals the simulator's truth.
fn converge(sim: &SimServer, spec: &WorkerSpec, p: &PartitionId) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = view_of(&compacted(&records(spec, p)), p);
        let want = truth(sim, p);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{p} not converged: {} in Kafka, {} true",
            got.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Item ids of `p` in the simulator, sorted.
fn ids(sim: &SimServer, p: &PartitionId) -> Vec<String> {
    truth(sim, p).keys().filter_map(|k| key_id(k)).collect()
}

fn gone_count(sim: &SimServer) -> u64 {
    let st = sim.state.stats.lock();
    st.requests.values().filter_map(|m| m.get(&410)).sum()
}

/// Waits for a `410`, then for `pages` more calendar-view pages: the round restarted from
/// scratch has been fetched whole and committed (a partition polls again only after its
/// round's last commit).
fn wait_for_resync(sim: &SimServer, gone: u64, pages: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gone_count(sim) == gone {
        assert!(Instant::now() < deadline, "no 410");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = || sim.state.stats.lock().count("calendar_view", 200);
    let start = ok();
    while ok() < start + pages {
        assert!(Instant::now() < deadline, "the resync did not complete");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes `del` and changes `change` events of the user's calendar (by position in the
/// sorted ids); returns the ids deleted and changed.
fn delete_and_change(
    sim: &SimServer,
    user: &str,
    del: &[usize],
    change: &[usize],
) -> (Vec<String>, Vec<String>) {
    let all = ids(sim, &view(user));
    let mut store = sim.state.store.write();
    let deleted: Vec<String> = del.iter().map(|i| all[*i].clone()).collect();
    for id in &deleted {
        store.delete_event(user, id).unwrap();
    }
    let changed: Vec<String> = change.iter().map(|i| all[*i].clone()).collect();
    for id in &changed {
        let patch = EventPatch {
            subject: Some(format!("changed {id}")),
            ..Default::default()
        };
        store.update_event(user, id, patch).unwrap();
    }
    (deleted, changed)
}

/// The 410 case: 5,000 events, 3 deleted and 2 changed while the worker was stopped, its
/// sync state gone when it comes back: the round restarted from scratch writes exactly 3
/// tombstones and 2 upserts, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_after_410_writes_only_what_changed_while_away() {
    let (sim, user) = sim_with(5000, 0, 41).await;
    let p = view(&user);
    let mut spec = spec(&sim, &bootstrap(), vec![p.clone()]);
    spec.client.page_size = 250;
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| converge(&sim, &spec, &p));
    w.stop().await.unwrap();
    let before = records(&spec, &p);
    assert_eq!(before.len(), 5000, "the initial sync wrote each event once");

    let (deleted, changed) = delete_and_change(&sim, &user, &[10, 2000, 4999], &[7, 3333]);
    sim.state.evict_tokens(None).unwrap();
    let gone = gone_count(&sim);
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| {
        converge(&sim, &spec, &p);
        // A few more polls: nothing else may follow.
        std::thread::sleep(Duration::from_secs(2));
    });
    w.stop().await.unwrap();
    assert!(gone_count(&sim) > gone, "the deltaLink was answered 410");
    let written = new_records(&before, &records(&spec, &p));
    let mut want: Vec<Written> = deleted
        .iter()
        .map(|id| (id.clone(), "delete".into(), "resync".into(), true))
        .chain(
            changed
                .iter()
                .map(|id| (id.clone(), "upsert".into(), String::new(), true)),
        )
        .collect();
    want.sort();
    assert_eq!(written, want, "exactly 3 tombstones and 2 upserts");
}

/// A resync of a calendar nothing changed in writes no record at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_of_an_unchanged_calendar_writes_no_record() {
    let (sim, user) = sim_with(400, 0, 42).await;
    let p = view(&user);
    let mut spec = spec(&sim, &bootstrap(), vec![p.clone()]);
    spec.client.page_size = 50;
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| converge(&sim, &spec, &p));
    let before = records(&spec, &p).len();
    let gone = gone_count(&sim);
    sim.state.evict_tokens(None).unwrap();
    // 8 pages of 50, then a poll of the new deltaLink.
    tokio::task::block_in_place(|| wait_for_resync(&sim, gone, 9));
    w.stop().await.unwrap();
    assert_eq!(records(&spec, &p).len(), before, "no record written");
}

/// A worker with offsets but no reconciliation state (upgraded from a version without it)
/// builds the state from its topic at the first round from scratch, once: that round writes
/// only the changes, and the next one nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_partition_builds_its_state_once_from_its_topic() {
    let (sim, user) = sim_with(300, 0, 43).await;
    let p = view(&user);
    let mut spec = spec(&sim, &bootstrap(), vec![p.clone()]);
    spec.client.page_size = 50;
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| converge(&sim, &spec, &p));
    w.stop().await.unwrap();
    let before = records(&spec, &p);
    // The state topic of the earlier run is not there: as after an upgrade.
    spec.sink.state_topic = format!("{}-fresh", spec.sink.state_topic);
    let (deleted, changed) = delete_and_change(&sim, &user, &[5], &[6]);
    sim.state.evict_tokens(None).unwrap();
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| {
        converge(&sim, &spec, &p);
        std::thread::sleep(Duration::from_secs(1));
    });
    let after = records(&spec, &p);
    let mut want: Vec<Written> = vec![
        (changed[0].clone(), "upsert".into(), String::new(), true),
        (deleted[0].clone(), "delete".into(), "resync".into(), true),
    ];
    want.sort();
    assert_eq!(new_records(&before, &after), want);
    // Built and persisted: another resync writes nothing.
    let n = after.len();
    let gone = gone_count(&sim);
    sim.state.evict_tokens(None).unwrap();
    tokio::task::block_in_place(|| wait_for_resync(&sim, gone, 7));
    w.stop().await.unwrap();
    assert_eq!(records(&spec, &p).len(), n);
}

/// SIGKILL in the middle of rounds restarted from scratch (the worker as its own process),
/// several times, with deletes and changes in between: the compacted view ends equal to the
/// truth (no delete lost) and no upsert of the same content, nor a second tombstone, was
/// ever committed (no duplicate, resyncs included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_restarted_round_loses_no_delete_and_repeats_nothing() {
    let (sim, user) = sim_with(400, 0, 44).await;
    let p = view(&user);
    let mut spec = spec(&sim, &bootstrap(), Vec::new());
    spec.sink.transactional_id = format!("{}-w", spec.sink.connector);
    let dir = std::env::temp_dir().join(format!("graph-cdc-rec-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("worker.toml");
    std::fs::write(&cfg, config(&spec, std::slice::from_ref(&user))).unwrap();
    let run_to_convergence = |spec: &WorkerSpec| {
        let mut child = launch(&cfg);
        tokio::task::block_in_place(|| {
            wait_converged(&sim, spec, WINDOW, Duration::from_secs(120))
        });
        signal(&child, libc::SIGTERM);
        assert!(child.wait().unwrap().success());
    };
    run_to_convergence(&spec);
    let mut killed_mid_round = 0;
    for i in 0..4usize {
        delete_and_change(&sim, &user, &[3 + i * 7, 200 + i], &[100 + i, 300 + i]);
        sim.state.evict_tokens(None).unwrap();
        let gone = gone_count(&sim);
        let mut child = launch(&cfg);
        let deadline = Instant::now() + Duration::from_secs(60);
        while gone_count(&sim) == gone {
            assert!(Instant::now() < deadline, "no 410");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 400 events at 5 a page: the restarted round takes a few seconds.
        tokio::time::sleep(Duration::from_millis(300 + 400 * i as u64)).await;
        if child.try_wait().unwrap().is_none() {
            killed_mid_round += 1;
        }
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
    }
    assert!(killed_mid_round >= 3);
    // The last run, logged, to convergence.
    let mut child = launch_logged(&cfg, "info", &dir.join("worker.log"));
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(120)));
    let status = stop_gracefully(&mut child, Duration::from_secs(20), "the worker").await;
    assert!(status.success(), "graceful stop exits 0: {status}");
    let all = records(&spec, &p);
    let mut upserts: HashMap<(Vec<u8>, String), usize> = HashMap::new();
    let mut last_was_tombstone: HashMap<Vec<u8>, bool> = HashMap::new();
    for r in &all {
        match &r.value {
            Some(v) => {
                let etag = serde_json::from_slice::<Value>(v).unwrap()["@odata.etag"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                *upserts.entry((r.key.clone(), etag)).or_default() += 1;
                last_was_tombstone.insert(r.key.clone(), false);
            }
            None => {
                let again = last_was_tombstone.insert(r.key.clone(), true) == Some(true);
                assert!(
                    !again,
                    "a second tombstone for {}",
                    String::from_utf8_lossy(&r.key)
                );
            }
        }
    }
    let twice: Vec<String> = upserts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((k, etag), n)| format!("{} {etag} x{n}", String::from_utf8_lossy(k)))
        .collect();
    assert!(
        twice.is_empty(),
        "{} upserts committed more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    // 400 events, 8 changed once each, 8 deleted: nothing more was ever written.
    let tombstones = all.iter().filter(|r| r.value.is_none()).count();
    assert_eq!((all.len(), tombstones), (400 + 8 + 8, 8));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A To Do list removed: each of its tasks is tombstoned (`list-removed`) in the same
/// transaction as the list's tombstone, so a `read_committed` consumer that sees the list
/// gone sees its tasks gone; the task partition's state goes with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_list_tombstones_its_tasks_in_the_same_transaction() {
    let (sim, user) = sim_with(0, 6, 45).await;
    let lists = PartitionId::TaskLists { user: user.clone() };
    let spec = spec(&sim, &bootstrap(), vec![lists.clone()]);
    let list = {
        let store = sim.state.store.read();
        let info = store.user_info(&user).unwrap();
        info.task_lists
            .into_iter()
            .find(|l| {
                !store
                    .user(&user)
                    .unwrap()
                    .lists
                    .get(l)
                    .unwrap()
                    .data
                    .wellknown
            })
            .unwrap()
    };
    let tasks = PartitionId::Tasks {
        user: user.clone(),
        list: list.clone(),
    };
    let task_keys: Vec<Vec<u8>> = truth(&sim, &tasks).into_keys().collect();
    assert_eq!(task_keys.len(), 6);
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| {
        converge(&sim, &spec, &lists);
        converge(&sim, &spec, &tasks);
    });
    // The task partition's own requests are slow from now on: its tasks could only be
    // tombstoned late if they were left to it.
    let slow: graph_sim::faults::FaultSpec = serde_json::from_value(serde_json::json!({
        "kind": "slow", "endpoint": "tasks", "delay_ms": 3000
    }))
    .unwrap();
    sim.state.add_fault(slow);
    sim.state.store.write().delete_list(&user, &list).unwrap();
    let list_key = lists.record_key(&list).to_vec();
    let last = |records: &[Committed], key: &[u8]| -> Option<(bool, String)> {
        records.iter().rfind(|r| r.key == key).map(|r| {
            (
                r.value.is_none(),
                r.headers
                    .get("graph-cdc.removed-reason")
                    .cloned()
                    .unwrap_or_default(),
            )
        })
    };
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while last(&records(&spec, &lists), &list_key).is_none_or(|(tomb, _)| !tomb) {
            assert!(Instant::now() < deadline, "the list was never tombstoned");
        }
        // Commit markers reach each partition a moment apart: read for at most 1 s.
        let seen = Instant::now();
        loop {
            let t = records(&spec, &tasks);
            let states: Vec<Option<(bool, String)>> =
                task_keys.iter().map(|k| last(&t, k)).collect();
            if states
                .iter()
                .all(|s| s == &Some((true, "list-removed".to_string())))
            {
                break;
            }
            assert!(
                seen.elapsed() < Duration::from_secs(1),
                "the list is tombstoned but not its tasks: {states:?}"
            );
        }
    });
    w.stop().await.unwrap();
    // The task partition's state is gone with it.
    let state = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.state_topic)
    });
    let meta = encode_key(&spec.sink.connector, &tasks, StateKey::Meta);
    let last_meta = state
        .iter()
        .rfind(|r| r.key == meta[..])
        .expect("its meta record");
    assert!(last_meta.value.is_none(), "its state was removed");
}
