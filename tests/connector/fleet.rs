//! Several workers as processes (issue 14): three `graph-cdc run` processes of one connector
//! share its 6 shards while workers are SIGKILLed at random moments and restarted (a
//! Kubernetes pod would be), a fourth joins and one leaves gracefully, and one is SIGSTOPped
//! past the session timeout and resumed (a zombie: the shards it held went to the others,
//! whose producers fenced it, so it must not commit again; it must rejoin in place, without
//! a restart). The `read_committed` compacted view must end equal to the truth, with no
//! record committed twice.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_sim::generate::MutateSpec;
use rand::Rng;

use crate::common::*;

/// Writes the configuration of worker `id` (a shared connector, 6 shards, a 6 s session).
fn worker_config(base: &str, dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    let toml = base.replace(
        "worker_id = \"w\"",
        &format!("worker_id = \"{id}\"\nsession_timeout = \"6s\""),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

fn exited(child: &mut Child) -> Option<std::process::ExitStatus> {
    child.try_wait().ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_shards_under_kills_joins_leaves_and_a_pause() {
    let (sim, users) = sim_with_users(6, 30, 8, 71).await;
    let start = NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
    let mut spec = spec(&sim, &bootstrap(), Vec::<PartitionId>::new());
    spec.sharding.shards = 6;
    let dir =
        std::env::temp_dir().join(format!("graph-cdc-fleet-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = config(&spec, &users);
    let cfgs: Vec<_> = ["w1", "w2", "w3", "w4"]
        .iter()
        .map(|id| worker_config(&base, &dir, id))
        .collect();
    // The future zombie's log says what it learnt when it came back.
    let zombie_log = dir.join("w1.log");
    let mut workers: Vec<Option<Child>> = vec![
        Some(launch_logged(&cfgs[0], "info", &zombie_log)),
        Some(launch(&cfgs[1])),
        Some(launch(&cfgs[2])),
        None,
    ];
    let mut rng = rand::rng();
    let mut mutations = 0;
    let mut mutate = |sim: &graph_sim::SimServer| {
        mutations += 1;
        let m = MutateSpec {
            count: 15,
            start,
            days: 31,
            seed: Some(800 + mutations),
            ..Default::default()
        };
        graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
    };

    // SIGKILLs at random moments (the initial sync, rebalances, incremental rounds), each
    // worker restarted after a while, as its supervisor would.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..3500))).await;
        let i = rng.random_range(0..3);
        if let Some(c) = workers[i].take() {
            signal(&c, libc::SIGKILL);
            let mut c = c;
            let _ = c.wait();
        }
        mutate(&sim);
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        workers[i] = Some(match i {
            0 => launch_logged(&cfgs[0], "info", &zombie_log),
            _ => launch(&cfgs[i]),
        });
    }

    // A fourth worker joins; the third leaves gracefully (SIGTERM: exit 0).
    workers[3] = Some(launch(&cfgs[3]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    mutate(&sim);
    let mut third = workers[2].take().expect("w3");
    let status = stop_gracefully(&mut third, Duration::from_secs(20), "w3").await;
    assert!(status.success(), "a graceful leave exits 0: {status}");
    mutate(&sim);

    // A zombie: w1 paused past the 6 s session timeout while changes keep coming, then
    // resumed. Its shards went to the others meanwhile; it must not commit for them again.
    let zombie = workers[0].take().expect("w1");
    signal(&zombie, libc::SIGSTOP);
    for _ in 0..4 {
        mutate(&sim);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    signal(&zombie, libc::SIGCONT);
    let mut zombie = zombie;
    // It learns it lost its shards (a lost revocation, or a commit refused as fenced), stays
    // up, and rejoins: the group assigns it shards again.
    let t0 = Instant::now();
    loop {
        assert!(
            exited(&mut zombie).is_none(),
            "the zombie must rejoin, not exit"
        );
        let log = std::fs::read_to_string(&zombie_log).unwrap_or_default();
        let back = log
            .find("lost=true")
            .or_else(|| log.find("shard fenced by another worker"))
            .map(|at| &log[at..]);
        if back.is_some_and(|after| after.contains("shards assigned")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the zombie did not rejoin:\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    workers[0] = Some(zombie);
    mutate(&sim);

    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(150)));
    // Any worker answers the whole connector's status: each partition once, RUNNING, on one
    // worker, and every worker says the same.
    let want: BTreeSet<PartitionId> = all_partitions(&sim, WINDOW).into_iter().collect();
    owned_once_everywhere(&spec, &want).await;
    for c in workers.iter_mut().flatten() {
        signal(c, libc::SIGTERM);
    }
    for c in workers.iter_mut().flatten() {
        let _ = c.wait();
    }
    let records = all_records(&spec);
    assert!(records.len() > 300, "{} records", records.len());
    assert_eq!(duplicates(&records), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The REST APIs the workers advertised in the control topic, by worker id.
fn advertised(spec: &graph_cdc::worker::WorkerSpec) -> BTreeMap<String, String> {
    let prefix = format!("{}/worker/", spec.sink.connector);
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sharding.control_topic)
    });
    let mut out = BTreeMap::new();
    for r in records {
        let key = String::from_utf8_lossy(&r.key).to_string();
        let Some(id) = key.strip_prefix(&prefix) else {
            continue;
        };
        match r.value {
            Some(v) => {
                let v: serde_json::Value = serde_json::from_slice(&v).expect("an advert");
                out.insert(id.to_string(), v["url"].as_str().expect("url").to_string());
            }
            None => {
                out.remove(id);
            }
        }
    }
    out
}

/// Asks every advertised worker for the connector's status until each answers with `want`,
/// every partition once and RUNNING, and all agree on which worker runs which (at most
/// 60 s: a rebalance may still be settling).
async fn owned_once_everywhere(spec: &graph_cdc::worker::WorkerSpec, want: &BTreeSet<PartitionId>) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let workers = advertised(spec);
        let mut views = Vec::new();
        let mut problems = Vec::new();
        for (id, url) in &workers {
            let path = format!("{url}/connectors/{}/status", spec.sink.connector);
            let v: serde_json::Value = match http.get(&path).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(e) => {
                    problems.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let mut owner: BTreeMap<PartitionId, String> = BTreeMap::new();
            for t in v["tasks"].as_array().into_iter().flatten() {
                let p = PartitionId::from_json(&t["partition"]).expect("a partition");
                if t["state"] != "RUNNING" {
                    problems.push(format!("{id} says {p} is {}", t["state"]));
                }
                let w = t["worker_id"].as_str().unwrap_or_default().to_string();
                if let Some(other) = owner.insert(p.clone(), w.clone()) {
                    problems.push(format!("{id} says {p} runs on {other} and {w}"));
                }
            }
            let got: BTreeSet<PartitionId> = owner.keys().cloned().collect();
            if got != *want {
                problems.push(format!(
                    "{id} lists {} of {} partitions",
                    got.len(),
                    want.len()
                ));
            }
            views.push(owner);
        }
        if workers.len() < 2 {
            problems.push(format!("advertised: {workers:?}"));
        }
        if problems.is_empty() && views.windows(2).all(|w| w[0] == w[1]) {
            let used: BTreeSet<&String> = views[0].values().collect();
            assert!(used.len() >= 2, "the partitions are shared out: {used:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status across workers: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
