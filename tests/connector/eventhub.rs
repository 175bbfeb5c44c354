//! Change notifications delivered through Azure Event Hubs, end to end (issue 16): a worker
//! with `delivery = "eventhub"` subscribes with an `EventHub:` URL; the simulator puts the
//! notifications (and a validation message per new subscription) into its Event Hubs outbox,
//! which `graph_cdc_testkit::eventhub::Relay` forwards to a topic of the real broker standing
//! in for the hub; the worker reads it in a consumer group (plaintext, through
//! `notifications.eventhub.options`), with polls ten minutes apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use graph_cdc::source::PartitionId;
use graph_cdc::worker::WorkerSpec;
use graph_cdc_testkit::eventhub::Relay;
use graph_cdc_testkit::harness::{run_id, InProcessWorker};
use graph_sim::faults::{FaultKind, FaultSpec};
use graph_sim::SimServer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::common::*;
use crate::notifications::{changes, differs, wait_subscriptions};

const WINDOW: &str = "2026-05-01T00:00:00Z/2026-06-01T00:00:00Z";
const CLIENT_STATE: &str = "client-state-of-the-eventhub-test";
const HUB: &str =
    "EventHub:https://graph-cdc-test.servicebus.windows.net/eventhubname/graph?tenantId=contoso.com";
/// Partitions of the topic standing in for the hub.
const HUB_PARTITIONS: i32 = 3;

/// The tests compare process-wide counters: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The simulator, the stand-in hub and a worker's spec reading it.
struct Bed {
    sim: SimServer,
    users: Vec<String>,
    parts: Vec<PartitionId>,
    spec: WorkerSpec,
    topic: String,
    group: String,
    _relay: Relay,
}

async fn bed(seed: u64) -> Bed {
    let (sim, users) = sim_with_users(2, 5, 4, seed).await;
    let parts: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| {
            matches!(
                p,
                PartitionId::CalendarView { .. } | PartitionId::Tasks { .. }
            )
        })
        .collect();
    assert!(parts.len() >= 4, "{parts:?}");
    let bootstrap = bootstrap();
    let run = run_id();
    let topic = format!("hub-{run}");
    let group = format!("hub-{run}.notifications");
    create_topic(&bootstrap, &topic).await;
    let relay = Relay::start(sim.state.clone(), &bootstrap, {
        let t = topic.clone();
        move |hub| {
            assert_eq!(hub, "graph");
            t.clone()
        }
    })
    .expect("relay");
    let mut spec = spec(&sim, &bootstrap, parts.clone());
    // Polls ten minutes apart: within the test only a notification starts a round.
    spec.poll_interval = Duration::from_secs(600);
    // The notification settings as a configuration gives them (delivery = "eventhub").
    let settings = graph_cdc::config::Settings::from_toml_str(
        &format!(
            "[graph]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\n\
             [notifications]\nenabled = true\ndelivery = \"eventhub\"\n\
             client_state = \"{CLIENT_STATE}\"\n\
             [notifications.eventhub]\nnotification_url = \"{HUB}\"\n\
             bootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n\
             consumer_group = \"{group}\"\n\
             [notifications.eventhub.options]\n\"security.protocol\" = \"plaintext\"\n\
             \"fetch.wait.max.ms\" = \"20\"\n"
        ),
        false,
    )
    .expect("eventhub settings");
    let resolved = WorkerSpec::from_settings(&settings).expect("resolved");
    let mut n = resolved.notifications.expect("notifications on");
    n.poll_interval = Duration::from_secs(600);
    spec.notifications = Some(n);
    spec.notification_hub = resolved.notification_hub;
    let hub = spec.notification_hub.as_ref().expect("the hub");
    assert_eq!(hub.group, group);
    assert!(hub.connection_string.is_none());
    Bed {
        sim,
        users,
        parts,
        spec,
        topic,
        group,
        _relay: relay,
    }
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let t = NewTopic::new(topic, HUB_PARTITIONS, TopicReplication::Fixed(1));
    let r = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .expect("create the hub's topic");
    for r in r {
        r.expect("hub topic created");
    }
}

/// Per partition of the hub: (the group's committed offset, the high watermark).
fn progress(bootstrap: &str, topic: &str, group: &str) -> BTreeMap<i32, (i64, i64)> {
    tokio::task::block_in_place(|| {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..HUB_PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..HUB_PARTITIONS)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                (p, (done, high))
            })
            .collect()
    })
}

fn covered(p: &BTreeMap<i32, (i64, i64)>) -> bool {
    p.values().all(|(c, h)| c == h)
}

/// Waits until the group's committed offsets reach the hub's end; returns the end.
async fn wait_covered(b: &Bed, within: Duration) -> BTreeMap<i32, (i64, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let p = progress(&bootstrap(), &b.topic, &b.group);
        if covered(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "offsets not committed: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn wait_converged(b: &Bed, within: Duration) -> Duration {
    let started = Instant::now();
    tokio::task::block_in_place(|| loop {
        let Some(d) = differs(&b.sim, &b.spec, &b.parts) else {
            return started.elapsed();
        };
        assert!(
            started.elapsed() < within,
            "not converged after {within:?}: {d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    })
}

fn mutate(b: &Bed, count: usize, seed: u64) {
    let m = changes(&b.users, count, seed);
    graph_sim::generate::mutate(&mut b.sim.state.store.write(), &m);
}

fn hub_messages(outcome: &str) -> u64 {
    graph_cdc::metrics::metrics()
        .eventhub_messages
        .with_label_values(&[outcome])
        .get()
}

fn notified() -> u64 {
    let m = graph_cdc::metrics::metrics();
    let mut n = 0;
    for k in ["calendar_view", "tasks"] {
        for e in ["woken", "running", "already_due"] {
            n += m.notified_rounds.with_label_values(&[k, e]).get();
        }
    }
    n
}

fn start(spec: &WorkerSpec) -> InProcessWorker {
    InProcessWorker::start(&tokio::runtime::Handle::current(), spec.clone())
}

async fn stop(w: InProcessWorker) {
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
}

/// Changes converge by the hub's notifications; Graph's validation messages and a forged
/// notification are dropped; the group's offsets are committed only after the rounds the
/// messages triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_kafka_through_the_event_hub_and_offsets_follow_the_rounds() {
    let _one = SERIAL.lock().await;
    let b = bed(181).await;
    let validations = hub_messages("validation");
    let w = start(&b.spec);
    wait_converged(&b, Duration::from_secs(60));
    wait_subscriptions(&b.sim, b.parts.len()).await;
    for s in b.sim.state.subscriptions.lock().all() {
        assert_eq!(s.notification_url, HUB);
        assert_eq!(s.lifecycle_url.as_deref(), Some(HUB));
        assert_eq!(s.client_state.as_deref(), Some(CLIENT_STATE));
    }
    // One validation message per new subscription, read and ignored.
    let first = wait_covered(&b, Duration::from_secs(15)).await;
    assert!(
        hub_messages("validation") >= validations + b.parts.len() as u64,
        "{} validation messages",
        hub_messages("validation") - validations
    );
    assert!(first.values().map(|(_, h)| h).sum::<i64>() >= b.parts.len() as i64);

    // Changes to events and tasks: converged by notifications, polls being 10 minutes off.
    let before = notified();
    mutate(&b, 25, 182);
    let took = wait_converged(&b, Duration::from_secs(30));
    println!("25 changes converged through the event hub in {took:?}");
    assert!(
        notified() > before,
        "no round was triggered by a notification"
    );
    let after = wait_covered(&b, Duration::from_secs(15)).await;
    assert!(
        after.values().map(|(_, h)| h).sum::<i64>() > first.values().map(|(_, h)| h).sum::<i64>()
    );

    // A notification with another client state is dropped, and its offset committed.
    let sub_id = b.sim.state.subscriptions.lock().all()[0].id.clone();
    let forged = graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["change", "wrong_client_state"]);
    let forged_before = forged.get();
    let body = serde_json::json!({"value": [{
        "subscriptionId": sub_id, "clientState": "guessed", "changeType": "updated",
        "resource": "Users/x/Events/y"}]})
    .to_string();
    tokio::task::block_in_place(|| {
        let p: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        p.send(BaseRecord::to(&b.topic).key(&sub_id).payload(&body))
            .map_err(|(e, _)| e)
            .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while forged.get() == forged_before {
        assert!(
            Instant::now() < deadline,
            "the forged notification was not read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_covered(&b, Duration::from_secs(10)).await;

    // A lifecycle event through the hub: `subscriptionRemoved` recreates the subscription.
    let lifecycle = graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["lifecycle", "accepted"]);
    let lifecycle_before = lifecycle.get();
    let first = b.sim.state.subscriptions.lock().all()[0].id.clone();
    let code = reqwest::Client::new()
        .post(format!(
            "{}/_sim/subscriptions/{first}/lifecycle",
            b.sim.url()
        ))
        .json(&serde_json::json!({"event": "subscriptionRemoved"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids: Vec<String> = b
            .sim
            .state
            .subscriptions
            .lock()
            .all()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        if ids.len() == b.parts.len() && !ids.contains(&first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed subscription was not recreated: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lifecycle.get() > lifecycle_before);
    wait_covered(&b, Duration::from_secs(15)).await;

    // Graph slowed down: a notification's offset waits for its round's commit.
    b.sim.state.faults.lock().add(
        FaultSpec {
            delay_ms: Some(3000),
            ..FaultSpec::new(FaultKind::Slow)
        },
        None,
    );
    let ends = progress(&bootstrap(), &b.topic, &b.group);
    mutate(&b, 3, 183);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = progress(&bootstrap(), &b.topic, &b.group);
        if p.iter().any(|(k, (_, h))| *h > ends[k].1) {
            break;
        }
        assert!(Instant::now() < deadline, "no notification reached the hub");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watch = Instant::now();
    // The three changes' notifications, sent together.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = progress(&bootstrap(), &b.topic, &b.group);
    // The rounds take 3 s at least: their messages stay uncommitted meanwhile.
    while watch.elapsed() < Duration::from_millis(2200) {
        let p = progress(&bootstrap(), &b.topic, &b.group);
        for (k, (_, h)) in &grown {
            if *h > ends[k].1 {
                assert!(p[k].0 < *h, "committed before its round: {p:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once committed, the changes they told of are in Kafka.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = progress(&bootstrap(), &b.topic, &b.group);
        if grown.iter().all(|(k, (_, h))| p[k].0 >= *h) {
            break;
        }
        assert!(Instant::now() < deadline, "never committed: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = tokio::task::block_in_place(|| differs(&b.sim, &b.spec, &b.parts));
    assert_eq!(pending, None, "offsets committed before the rounds");
    b.sim.state.faults.lock().clear();

    let status = w.status.clone();
    stop(w).await;
    assert!(!status.notifications.is_open());
    assert_eq!(duplicates(&all_records(&b.spec)), Vec::<String>::new());
}

/// A worker stopped and started again reads the hub from the group's committed offsets:
/// only what arrived meanwhile, and the changes it tells of converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_resumes_the_hub_from_the_committed_offsets() {
    let _one = SERIAL.lock().await;
    let b = bed(191).await;
    let w = start(&b.spec);
    wait_converged(&b, Duration::from_secs(60));
    wait_subscriptions(&b.sim, b.parts.len()).await;
    let before_stop = wait_covered(&b, Duration::from_secs(15)).await;
    // The subscriptions are written with the offsets (at the next heartbeat at the latest).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(w).await;

    // Changes while no worker runs: their notifications wait in the hub.
    mutate(&b, 15, 192);
    let deadline = Instant::now() + Duration::from_secs(15);
    let waiting = loop {
        let p = progress(&bootstrap(), &b.topic, &b.group);
        let sum = |m: &BTreeMap<i32, (i64, i64)>| m.values().map(|(_, h)| h).sum::<i64>();
        if sum(&p) > sum(&before_stop) && b.sim.state.eventhub.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = progress(&bootstrap(), &b.topic, &b.group);
            if again == p {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no notification reached the hub: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nothing read while stopped.
    for (k, (c, _)) in &waiting {
        assert_eq!(*c, before_stop[k].0, "{waiting:?}");
    }
    let unread: i64 = waiting.values().map(|(c, h)| h - c).sum();
    let read = || {
        ["notices", "validation", "malformed"]
            .map(hub_messages)
            .iter()
            .sum::<u64>()
    };
    let read_before = read();

    let w = start(&b.spec);
    let took = wait_converged(&b, Duration::from_secs(30));
    println!("changes made while stopped converged {took:?} after the restart");
    wait_covered(&b, Duration::from_secs(15)).await;
    // Exactly the messages that arrived meanwhile were read: none of the committed ones.
    assert_eq!(read() - read_before, unread as u64);
    assert_eq!(
        b.sim.state.subscriptions.lock().len(),
        b.parts.len(),
        "subscriptions reused"
    );
    stop(w).await;
    assert_eq!(duplicates(&all_records(&b.spec)), Vec::<String>::new());
}
