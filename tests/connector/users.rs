//! Keys by object id (issue 13, item 2): a configuration lists principal names; partitions and
//! record keys carry the users' object ids, the name travels in a header, a renamed user
//! keeps every key (even with the old name still configured), and an unknown name fails only
//! its own partitions, with the reason.

use std::time::{Duration, Instant};

use graph_cdc::source::PartitionId;
use graph_cdc::worker::{self, PartitionState};
use graph_sim::SimServer;

use crate::common::*;

/// The principal name of the user with object id `id`.
fn upn_of(sim: &SimServer, id: &str) -> String {
    sim.state
        .store
        .read()
        .user_info(id)
        .expect("user")
        .user_principal_name
}

fn views(users: &[String]) -> Vec<PartitionId> {
    users
        .iter()
        .map(|u| PartitionId::CalendarView {
            user: u.clone(),
            calendar: "primary".into(),
            window: WINDOW.into(),
        })
        .collect()
}

/// Waits until the partition's compacted view equals the truth (the partition named by id).
fn converge(sim: &SimServer, spec: &graph_cdc::worker::WorkerSpec, p: &PartitionId) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events);
        let got = view_of(&compacted(&records), p);
        if !got.is_empty() && got == truth(sim, p) {
            return;
        }
        assert!(Instant::now() < deadline, "{p} did not converge");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_object_ids_and_survive_a_rename() {
    let (sim, ids) = sim_with_users(2, 30, 0, 31).await;
    let names: Vec<String> = ids.iter().map(|id| upn_of(&sim, id)).collect();
    // Configured by name, plus a name the directory does not know.
    let mut configured = views(&names);
    configured.extend(views(&["ghost@contoso.com".to_string()]));
    let mut spec = spec(&sim, &bootstrap(), configured.clone());
    spec.poll_interval = Duration::from_millis(200);
    let w = start_worker(&spec);
    let by_id = views(&ids);
    tokio::task::block_in_place(|| {
        for p in &by_id {
            converge(&sim, &spec, p);
        }
    });
    // The unknown name failed alone, saying why.
    let ghost = &configured[2];
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let st = w.status.partitions.lock().get(ghost).cloned();
        if let Some(PartitionState::Failed(why)) = st {
            break why;
        }
        assert!(Instant::now() < deadline, "ghost not failed: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        why.contains("ghost@contoso.com") && why.contains("object id"),
        "{why}"
    );
    // The others run under their ids, none under a name.
    {
        let states = w.status.partitions.lock();
        for p in &by_id {
            assert_eq!(states.get(p), Some(&PartitionState::Running), "{p}");
        }
        assert!(!states.contains_key(&configured[0]));
    }
    w.stop().await.unwrap();
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
    });
    for r in &records {
        let key = String::from_utf8_lossy(&r.key);
        let i = ids
            .iter()
            .position(|id| key.contains(&format!("\"user\":\"{id}\"")))
            .unwrap_or_else(|| panic!("a key without an object id: {key}"));
        assert_eq!(
            r.headers.get("graph-cdc.user-principal-name"),
            Some(&names[i]),
            "{key}"
        );
    }

    // user 0 is renamed; the configuration still names the old principal.
    let new_name = "renamed@contoso.com".to_string();
    sim.state
        .store
        .write()
        .patch_user(
            &ids[0],
            graph_sim::model::UserPatch {
                user_principal_name: Some(new_name.clone()),
                ..Default::default()
            },
        )
        .expect("rename");
    let before = records.len();
    // A single event (a series' change would rewrite its occurrences too).
    let event = truth(&sim, &by_id[0])
        .iter()
        .find(|(_, v)| v["type"] == "singleInstance")
        .map(|(k, _)| graph_cdc::source::key_id(k).unwrap())
        .expect("a single event");
    sim.state
        .store
        .write()
        .update_event(
            &ids[0],
            &event,
            graph_sim::model::EventPatch {
                subject: Some("after the rename".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| converge(&sim, &spec, &by_id[0]));
    assert_eq!(
        w.status.partitions.lock().get(&by_id[0]),
        Some(&PartitionState::Running)
    );
    w.stop().await.unwrap();
    let after = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
    });
    let new: Vec<_> = new_records(&records, &after);
    assert_eq!(after.len(), before + 1, "only the changed event: {new:?}");
    let changed = after
        .iter()
        .find(|r| {
            r.value
                .as_ref()
                .is_some_and(|v| String::from_utf8_lossy(v).contains("after the rename"))
        })
        .expect("the change");
    assert!(String::from_utf8_lossy(&changed.key).contains(&ids[0]));
    assert_eq!(
        changed.headers.get("graph-cdc.user-principal-name"),
        Some(&new_name),
        "the header follows the rename"
    );
    let _ = worker::task_id(ghost);
}

/// A member Graph cannot serve (no Exchange Online mailbox): its partitions are
/// `UNASSIGNED` with Graph's reason, asked again rarely, not counted as failures; the other
/// user goes on; once the mailbox exists they run and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_a_mailbox_is_unassigned_not_failed() {
    let (sim, ids) = sim_with_users(2, 20, 3, 32).await;
    let no_mailbox = |on: bool| graph_sim::model::UserPatch {
        mailbox: Some(on),
        ..Default::default()
    };
    sim.state
        .store
        .write()
        .patch_user(&ids[1], no_mailbox(false))
        .unwrap();
    let parts = configured_partitions(&ids);
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    spec.poll_interval = Duration::from_millis(200);
    let w = start_worker(&spec);
    tokio::task::block_in_place(|| converge(&sim, &spec, &parts[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = w.status.partitions.lock().clone();
        let unassigned = parts[3..]
            .iter()
            .filter(|p| {
                matches!(states.get(*p), Some(PartitionState::Unassigned(why))
                    if why.contains("MailboxNotEnabledForRESTAPI"))
            })
            .count();
        if unassigned == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not unassigned: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asked again rarely: a few requests, not one per poll.
    let asked = || sim.state.stats.lock().count("calendar_view", 404);
    let (n0, t0) = (asked(), Instant::now());
    while t0.elapsed() < Duration::from_secs(3) {
        let states = w.status.partitions.lock().clone();
        for p in &parts[3..] {
            assert!(
                matches!(states.get(p), Some(PartitionState::Unassigned(_))),
                "{p}: {:?}, never failed",
                states.get(p)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n1 = asked();
    assert!(
        n1 - n0 <= 2,
        "{} requests in {:?} (polls every 200 ms)",
        n1 - n0,
        t0.elapsed()
    );
    // The mailbox is enabled: they run and catch up.
    sim.state
        .store
        .write()
        .patch_user(&ids[1], no_mailbox(true))
        .unwrap();
    tokio::task::block_in_place(|| converge(&sim, &spec, &parts[3]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while parts[3..]
        .iter()
        .any(|p| w.status.partitions.lock().get(p) != Some(&PartitionState::Running))
    {
        assert!(Instant::now() < deadline, "not running again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await.unwrap();
}

/// A configured name whose account is deleted and given to a new account: the old id's
/// partitions stop (Graph answers `404 ErrorInvalidUser`; not `FAILED`), the name is looked
/// up again and its partitions move to the new id, written with the name in the header; the
/// other user goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_users_name_given_to_a_new_account_moves_its_partitions() {
    let (sim, ids) = sim_with_users(2, 12, 2, 33).await;
    let names: Vec<String> = ids.iter().map(|id| upn_of(&sim, id)).collect();
    let mut spec = spec(&sim, &bootstrap(), configured_partitions(&names));
    spec.poll_interval = Duration::from_millis(200);
    let w = start_worker(&spec);
    let old = configured_partitions(&ids[..1]);
    tokio::task::block_in_place(|| converge(&sim, &spec, &old[0]));

    let new_id = {
        let mut store = sim.state.store.write();
        store.delete_user(&ids[0]).expect("delete");
        let info = store
            .create_user(graph_sim::model::UserSpec {
                tenant: Some(TENANT.into()),
                user_principal_name: names[0].clone(),
                id: None,
                display_name: None,
            })
            .expect("a new account, same name");
        let start =
            chrono::NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
                .unwrap();
        let mut rng = rand::rng();
        for _ in 0..4 {
            let ev = graph_sim::generate::random_event(&mut rng, start, 30, 0.0, false);
            store.create_event(&info.id, "primary", ev).expect("event");
        }
        info.id
    };
    assert_ne!(new_id, ids[0]);
    let moved = configured_partitions(std::slice::from_ref(&new_id));
    tokio::task::block_in_place(|| converge(&sim, &spec, &moved[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = w.status.partitions.lock().clone();
        let stopped = old
            .iter()
            .all(|p| states.get(p) == Some(&PartitionState::Stopped));
        let running = moved
            .iter()
            .chain(&configured_partitions(&ids[1..]))
            .all(|p| states.get(p) == Some(&PartitionState::Running));
        if stopped && running {
            break;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
    });
    let needle = format!("\"user\":\"{new_id}\"");
    let theirs: Vec<_> = records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.key).contains(&needle))
        .collect();
    assert_eq!(theirs.len(), 4);
    assert!(theirs
        .iter()
        .all(|r| r.headers.get("graph-cdc.user-principal-name") == Some(&names[0])));
    w.stop().await.unwrap();
}
