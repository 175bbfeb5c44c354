//! Group sources under churn and crashes (issue 13): the worker runs as its own process and
//! is SIGKILLed at random moments while members join and leave the group (directly and
//! through the nested group) and their data changes. Once it converges, a `read_committed`
//! consumer's compacted view equals the truth for the current members, departed members have
//! nothing live (`on_member_removed = "tombstone"`, the default), and no record was committed
//! twice between two tombstones of its key. The same with two workers (issue 14): a
//! member's tombstone and its partitions' departure are then often two workers' doing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_sim::generate::MutateSpec;
use graph_sim::SimServer;
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::common::*;
use crate::groups::{difference, live_of, nested_groups, INNER, OUTER};

/// `config`'s worker (300 ms polls, pages of 5) with group sources instead of users,
/// listing the group every second (the least allowed).
fn group_config(spec: &WorkerSpec) -> String {
    let base = config(spec, &[]);
    let base = &base[..base.find("[[sources]]").expect("sources")];
    let base = base.replace(
        "poll_interval = \"300ms\"",
        "poll_interval = \"300ms\"\nmembership_interval = \"1s\"",
    );
    format!(
        r#"{base}
[[sources]]
kind = "calendar_view"
group = "{OUTER}"
start = "2026-05-01T00:00:00Z"
end = "2026-06-01T00:00:00Z"
[[sources]]
kind = "calendar_list"
group = "{OUTER}"
[[sources]]
kind = "todo"
group = "{OUTER}"
"#
    )
}

/// The group's current (transitive) user members, sorted.
fn members(sim: &SimServer) -> Vec<String> {
    sim.state
        .store
        .read()
        .transitive_users(OUTER)
        .expect("group")
}

/// Records committed twice with the same content (key and etag) with no tombstone of the
/// key between them (a member who left, tombstoned, and came back is written again).
fn duplicates_between_tombstones(records: &[Committed]) -> Vec<String> {
    let mut seen: HashMap<&[u8], HashSet<String>> = HashMap::new();
    let mut dups = Vec::new();
    for r in records {
        let Some(v) = &r.value else {
            seen.remove(&r.key[..]);
            continue;
        };
        if r.headers.contains_key("graph-cdc.resync") {
            continue;
        }
        let etag = serde_json::from_slice::<serde_json::Value>(v)
            .ok()
            .and_then(|j| j.get("@odata.etag")?.as_str().map(str::to_string))
            .unwrap_or_default();
        if !seen.entry(&r.key).or_default().insert(etag.clone()) {
            dups.push(format!("{} {etag}", String::from_utf8_lossy(&r.key)));
        }
    }
    dups
}

/// One membership change: a random user other than `ids[0]` (always a member) leaves the
/// group it is directly in, or joins OUTER or INNER. Returns what was done.
fn churn(sim: &SimServer, ids: &[String], direct: &mut HashMap<String, &'static str>) -> String {
    let mut rng = rand::rng();
    let user = ids[1..].choose(&mut rng).expect("users").clone();
    let mut store = sim.state.store.write();
    match direct.remove(&user) {
        Some(group) => {
            store.remove_member(group, &user).expect("remove");
            format!("{user} left {group}")
        }
        None => {
            let group = if rng.random_bool(0.5) { OUTER } else { INNER };
            store.add_member(group, &user).expect("add");
            direct.insert(user.clone(), group);
            format!("{user} joined {group}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_under_sigkills_and_the_view_equals_the_truth() {
    churn_under_kills(1, 61).await;
}

/// Two workers over 4 shards: a member's tombstone is committed in its group's shard and its
/// departure in its own, often by the other worker; one of the two is SIGKILLed at random
/// moments (and restarted under its id), the other runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_across_two_workers_under_sigkills() {
    churn_under_kills(2, 67).await;
}

/// `workers` processes (ids `w0`, `w1`…) follow a nested group of 6 users while members
/// join and leave and events change; each round one of them is SIGKILLed at a random moment
/// and started again. Then the checks of the module docs.
async fn churn_under_kills(workers: usize, seed: u64) {
    const KILLS: u64 = 8;
    let (sim, ids) = sim_with_users(6, 15, 4, seed).await;
    nested_groups(&sim, &ids);
    let mut direct: HashMap<String, &'static str> =
        HashMap::from([(ids[1].clone(), OUTER), (ids[2].clone(), INNER)]);
    let start = NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
    let mut spec = spec(&sim, &bootstrap(), Vec::<PartitionId>::new());
    spec.sink.transactional_id = format!("{}-w", spec.sink.connector);
    spec.sharding.shards = 4;
    let dir = std::env::temp_dir().join(format!(
        "graph-cdc-group-crash-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfgs: Vec<std::path::PathBuf> = (0..workers)
        .map(|w| {
            let cfg = dir.join(format!("w{w}.toml"));
            let text =
                group_config(&spec).replace("worker_id = \"w\"", &format!("worker_id = \"w{w}\""));
            std::fs::write(&cfg, text).unwrap();
            cfg
        })
        .collect();
    // Killed with the test should it panic: no worker outlives it.
    let launch_all = |name: &str| -> (Vec<KillOnDrop>, Vec<std::path::PathBuf>) {
        cfgs.iter()
            .enumerate()
            .map(|(w, cfg)| {
                let log = dir.join(format!("{name}-w{w}.log"));
                (KillOnDrop(launch_logged(cfg, "info", &log)), log)
            })
            .unzip()
    };

    // The first members' data is in Kafka before the churn begins.
    let (mut children, logs) = launch_all("first");
    let first = members(&sim);
    converged(&mut children, &sim, &spec, &first, &[], &logs, &[]);
    for c in &mut children {
        signal(&c.0, libc::SIGKILL);
        let _ = c.0.wait();
    }

    let mut rng = rand::rng();
    let mut changes = Vec::new();
    let mut ever: HashSet<String> = first.into_iter().collect();
    let mut children: Vec<KillOnDrop> = cfgs.iter().map(|c| KillOnDrop(launch(c))).collect();
    for i in 0..KILLS {
        // Changes land while the workers run: some before a kill, some right after a start.
        let ms = rng.random_range(400..3000);
        tokio::time::sleep(Duration::from_millis(ms / 2)).await;
        changes.push(churn(&sim, &ids, &mut direct));
        ever.extend(members(&sim));
        tokio::time::sleep(Duration::from_millis(ms / 2)).await;
        let w = rng.random_range(0..workers);
        signal(&children[w].0, libc::SIGKILL);
        let _ = children[w].0.wait();
        changes.push(churn(&sim, &ids, &mut direct));
        ever.extend(members(&sim));
        let m = MutateSpec {
            count: 10,
            start,
            days: 31,
            seed: Some(700 + i),
            ..Default::default()
        };
        graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
        children[w] = KillOnDrop(launch(&cfgs[w]));
    }
    for c in &mut children {
        signal(&c.0, libc::SIGKILL);
        let _ = c.0.wait();
    }

    // One departure the workers find out about at their start, so that at least one member
    // with records in Kafka has left.
    if let Some(group) = direct.remove(&ids[1]) {
        sim.state
            .store
            .write()
            .remove_member(group, &ids[1])
            .expect("remove");
        changes.push(format!("{} left {group}", ids[1]));
    }

    // A last run to convergence, then a graceful stop.
    let (mut children, logs) = launch_all("last");
    let now = members(&sim);
    let gone: Vec<String> = ids.iter().filter(|u| !now.contains(u)).cloned().collect();
    converged(&mut children, &sim, &spec, &now, &gone, &logs, &changes);
    for c in &mut children {
        let status = stop_gracefully(&mut c.0, Duration::from_secs(10), "a worker").await;
        assert!(status.success(), "graceful stop exits 0: {status}");
    }

    let records = all_records(&spec);
    let mut tombstoned = 0;
    for u in ever.iter().filter(|u| !now.contains(u)) {
        let needle = format!("\"user\":\"{u}\"");
        let theirs: Vec<&Committed> = records
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.key).contains(&needle))
            .collect();
        // A member who joined and left while the workers were down has nothing to tombstone.
        if theirs.is_empty() {
            continue;
        }
        assert!(
            theirs.iter().any(|r| r.value.is_none()
                && r.headers
                    .get("graph-cdc.removed-reason")
                    .map(String::as_str)
                    == Some("member-removed")),
            "{u}: no member-removed tombstone"
        );
        tombstoned += 1;
    }
    assert!(tombstoned >= 1, "{ever:?} {now:?} {changes:?}");
    eprintln!(
        "{workers} worker(s), {KILLS} kills, changes {changes:?}; {tombstoned} departed members tombstoned, {} members now, {} records",
        now.len(),
        records.len()
    );
    assert_eq!(
        duplicates_between_tombstones(&records),
        Vec::<String>::new()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the view equals the truth for `now`'s members and none of `gone` has a live
/// record; panics with the changes and the logs' tails after 120 s, or at once if a worker
/// exited.
fn converged(
    children: &mut [KillOnDrop],
    sim: &SimServer,
    spec: &WorkerSpec,
    now: &[String],
    gone: &[String],
    logs: &[std::path::PathBuf],
    changes: &[String],
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    tokio::task::block_in_place(|| loop {
        let live: Vec<(&String, usize)> = gone
            .iter()
            .map(|u| (u, live_of(spec, u)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let exited: Vec<_> = children
            .iter_mut()
            .filter_map(|c| c.0.try_wait().ok().flatten())
            .collect();
        match (difference(sim, spec, now), live.is_empty()) {
            (None, true) => return,
            (d, _) if Instant::now() > deadline || !exited.is_empty() => {
                let tails: Vec<Vec<String>> = logs
                    .iter()
                    .map(|log| {
                        let text = std::fs::read_to_string(log).unwrap_or_default();
                        text.lines().rev().take(30).map(str::to_string).collect()
                    })
                    .collect();
                panic!("not converged (workers exited: {exited:?}) after {changes:?}: {d:?}, departed with live records {live:?}\n{tails:#?}")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    });
}
