//! Records that do not fit: one event far larger than the producer's or the topic's size
//! limit, among normal ones. The worker must not abort the same transaction forever: with
//! `errors.tolerance = none` only that event's partition fails (reason in its status), with
//! `all` the record goes to the dead-letter topic in the same transaction as its offset.
//! Either way every other partition, including those sharing the refused transaction,
//! converges to the simulator's truth.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{PartitionState, WorkerSpec};
use graph_sim::model::EventSpec;
use graph_sim::SimServer;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::common::*;

fn t(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
}

/// A simulator with three users, and one event of `body_bytes` of random text (which
/// compresses little) in the first user's calendar. Returns the users and the event's id.
async fn sim_with_big_event(body_bytes: usize) -> (SimServer, Vec<String>, String) {
    let (sim, users) = sim_with_users(3, 20, 5, 77).await;
    let mut rng = rand::rng();
    let body: String = (0..body_bytes)
        .map(|_| rng.random_range(b'!'..=b'~') as char)
        .filter(|c| !"<>&\"\\".contains(*c))
        .collect();
    let id = sim
        .state
        .store
        .write()
        .create_event(
            &users[0],
            "primary",
            EventSpec {
                subject: Some("All-hands with the whole deck pasted in".into()),
                start: t("2026-05-10T09:00:00"),
                end: t("2026-05-10T10:00:00"),
                is_all_day: false,
                body: Some(format!("<html><body><pre>{body}</pre></body></html>")),
                location: None,
                attendees: vec![],
                recurrence: None,
            },
        )
        .unwrap();
    (sim, users, id)
}

fn big_view(users: &[String]) -> PartitionId {
    PartitionId::CalendarView {
        user: users[0].clone(),
        calendar: "primary".into(),
        window: WINDOW.into(),
    }
}

fn spec_for(sim: &SimServer, users: &[String]) -> WorkerSpec {
    let mut spec = spec(sim, &bootstrap(), configured_partitions(users));
    // Pages of several partitions share transactions: the refused one must not drag the
    // others down with it.
    spec.sink.linger = Duration::from_millis(200);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_producer_limit_fails_only_its_partition() {
    let (sim, users, big) = sim_with_big_event(300_000).await;
    let mut spec = spec_for(&sim, &users);
    spec.sink
        .kafka
        .producer
        .insert("message.max.bytes".into(), "200000".into());
    let w = start_worker(&spec);
    let view = big_view(&users);
    let big_key = view.record_key(&big).to_vec();
    // Everything but the failed partition (whose later items wait for it to be fixed).
    let prefix = view.key_prefix();
    converge_except(&sim, &spec, &w, &|k| k.starts_with(&prefix));
    // The big event's partition is FAILED, saying which item, how large and which limit.
    let reason = w.failed(&view, Duration::from_secs(30)).await;
    assert!(reason.contains(&big), "names the item: {reason}");
    assert!(reason.contains("record_too_large"), "{reason}");
    assert!(reason.contains("200000"), "names the limit: {reason}");
    // Its offset did not move past the refused page: the event is not in Kafka, and the
    // committed offset of its partition is still in the initial round.
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.events)
    });
    assert!(records.iter().all(|r| r.key != big_key));
    let offset = w.status.offsets.lock().get(&view).cloned();
    assert!(offset.as_ref().is_none_or(|o| o.round == 1), "{offset:?}");
    // Every other partition is healthy.
    for (p, st) in w.status.partitions.lock().iter() {
        if **p != view {
            assert_eq!(*st, PartitionState::Running, "{p}");
        }
    }
    let text = graph_cdc::metrics::render();
    assert!(
        text.contains(
            "graph_cdc_records_refused_total{class=\"record_too_large\",kind=\"calendar_view\"}"
        ),
        "refusal counted"
    );
    let r = w.stop().await;
    assert!(r.is_ok(), "worker ended with {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_topic_refuses_is_dead_lettered_with_its_offset() {
    // The producer would take it (limit 2 MB) but the topic's limit is 100 kB: the broker
    // refuses it at delivery, after it was sent in a shared transaction.
    let (sim, users, big) = sim_with_big_event(300_000).await;
    let mut spec = spec_for(&sim, &users);
    spec.sink
        .kafka
        .producer
        .insert("message.max.bytes".into(), "2000000".into());
    let dlq = format!("{}-dlq", spec.sink.topics.events);
    spec.sink.errors.dead_letter_topic = Some(dlq.clone());
    let admin: AdminClient<DefaultClientContext> = spec.sink.admin_config().create().unwrap();
    let topic = NewTopic::new(&spec.sink.topics.events, 3, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", "100000");
    let created = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let w = start_worker(&spec);
    let view = big_view(&users);
    let big_key = view.record_key(&big).to_vec();
    converge_except(&sim, &spec, &w, &|k| k == big_key);
    // Exactly one dead letter, for that event, saying why and where it was going.
    let letters = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = read_all(&spec.sink.bootstrap_servers, &dlq);
            if !l.is_empty() || Instant::now() > deadline {
                break l;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    assert_eq!(letters.len(), 1, "one dead letter");
    let l = &letters[0];
    assert_eq!(l.key, big_key);
    assert_eq!(l.headers["graph-cdc.errors.class"], "record_too_large");
    assert_eq!(l.headers["graph-cdc.errors.topic"], spec.sink.topics.events);
    assert_eq!(l.headers["graph-cdc.errors.item"], big);
    assert_eq!(l.headers["graph-cdc.errors.partition"], view.to_json());
    assert!(!l.headers["graph-cdc.errors.message"].is_empty());
    // Its partition went on: running, and past its initial round.
    assert_eq!(w.state(&view), Some(PartitionState::Running));
    let deadline = Instant::now() + Duration::from_secs(30);
    while w
        .status
        .offsets
        .lock()
        .get(&view)
        .is_none_or(|o| o.round < 2)
    {
        assert!(
            Instant::now() < deadline,
            "{view} did not complete its round"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = graph_cdc::metrics::render();
    assert!(text.contains("graph_cdc_records_dead_lettered_total{class=\"record_too_large\",kind=\"calendar_view\"}"), "dead letter counted");
    let r = w.stop().await;
    assert!(r.is_ok(), "worker ended with {r:?}");
}
