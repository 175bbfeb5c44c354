//! Offsets' links must address their partition's own resource: a `PATCH …/offsets` with
//! another mailbox's link is answered 400 with the reason, and a foreign link found in the
//! offsets topic at start makes that partition start over, reading only its own mailbox.

use std::time::{Duration, Instant};

use graph_cdc::source::{PartitionId, SourceOffset};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::*;
use crate::ops::{call, start, OP_TOKEN};

/// The object ids of the simulator's users (two, from `ops::sim`, sorted by name), and the
/// second one's again.
fn two_users(sim: &graph_sim::SimServer) -> (String, String, String) {
    let store = sim.state.store.read();
    let mut users: Vec<_> = store.users.values().collect();
    users.sort_by(|a, b| a.upn.cmp(&b.upn));
    (
        users[0].id.clone(),
        users[1].id.clone(),
        users[1].id.clone(),
    )
}

fn refused_from(kind: &str, from: &str) -> u64 {
    graph_cdc::metrics::metrics()
        .offset_links_refused
        .with_label_values(&[kind, from])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_an_offset_with_another_mailboxs_link_is_refused_with_the_reason() {
    let sim = crate::ops::sim().await;
    let (alice, bob, _) = two_users(&sim);
    let own = PartitionId::TaskLists {
        user: alice.clone(),
    };
    let spec = spec(&sim, &bootstrap(), vec![own.clone()]);
    let ops = start(&spec).await;
    let (u, name) = (ops.url.clone(), spec.sink.connector.clone());
    let c = |path: &str| format!("{u}/connectors/{name}{path}");
    // Its first round committed: its offset holds a deltaLink of its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        let o = ops.status.offsets.lock().get(&own).cloned();
        if let Some(o) = o.filter(|o| o.round > 1) {
            break o;
        }
        assert!(Instant::now() < deadline, "no committed round");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        call(Method::PUT, &c("/stop"), Some(OP_TOKEN), None).await.0,
        202
    );
    let partition: Value = serde_json::from_str(&own.to_json()).unwrap();
    let patch = |offset: Value| json!({"offsets": [{"partition": partition, "offset": offset}]});
    let host = spec.graph_host.trim_end_matches('/');
    // Bob's lists under alice's keys: refused, naming why (never the link's token).
    let bobs = format!("{host}/v1.0/users/{bob}/todo/lists/delta?$deltatoken=SECRET-TOKEN");
    let body = patch(json!({"link": bobs, "delta_link": bobs, "round": 3}));
    let before = refused_from("task_lists", "rest");
    let (code, v) = call(Method::PATCH, &c("/offsets"), Some(OP_TOKEN), Some(body)).await;
    assert_eq!((code, v["error_code"].as_u64()), (400, Some(400)), "{v}");
    let why = v["message"].as_str().unwrap();
    assert!(
        why.starts_with("offsets[0].offset.link: not a link of partition")
            && why.contains(&format!("it is for user {bob}, not {alice}")),
        "{why}"
    );
    assert!(!why.contains("SECRET-TOKEN"), "{why}");
    assert_eq!(refused_from("task_lists", "rest"), before + 1);
    // Another route of alice's (her calendars), another host: refused too.
    for (link, reason) in [
        (
            format!("{host}/beta/users/{alice}/calendars/delta?$deltatoken=x"),
            "not this partition's route",
        ),
        (
            format!("https://graph.example/v1.0/users/{alice}/todo/lists/delta?$deltatoken=x"),
            "not the configured Graph host",
        ),
    ] {
        let body = patch(json!({"delta_link": link, "round": 3}));
        let (code, v) = call(Method::PATCH, &c("/offsets"), Some(OP_TOKEN), Some(body)).await;
        let why = v["message"].as_str().unwrap_or_default();
        assert!(
            code == 400 && why.starts_with("offsets[0].offset.delta_link:") && why.contains(reason),
            "{code} {why}"
        );
    }
    // Her own link, however Graph spells it (UPN case, `@` encoded): taken.
    let own_link = committed.link.clone().unwrap();
    let respelt = own_link.replace(&alice, &alice.to_uppercase().replace('@', "%40"));
    assert_ne!(respelt, *own_link);
    let body = patch(json!({"link": respelt, "delta_link": own_link, "round": committed.round}));
    let (code, v) = call(Method::PATCH, &c("/offsets"), Some(OP_TOKEN), Some(body)).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        ops.status.offsets.lock()[&own].link.as_deref(),
        Some(respelt.as_str())
    );
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

/// Writes `offset` for `partition` into the offsets topic, as a tampered topic would hold it.
fn plant(spec: &graph_cdc::worker::WorkerSpec, partition: &PartitionId, offset: &SourceOffset) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &spec.sink.bootstrap_servers)
        .create()
        .expect("producer");
    let key = graph_cdc::offsets::encode_key(&spec.sink.connector, partition);
    let value = graph_cdc::offsets::encode_value(offset);
    producer
        .send(
            BaseRecord::to(&spec.sink.offsets_topic)
                .key(&key)
                .payload(&value),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_link_in_the_offsets_topic_starts_the_partition_over() {
    let sim = crate::ops::sim().await;
    let (alice, bob, bob_id) = two_users(&sim);
    let own = PartitionId::TaskLists {
        user: alice.clone(),
    };
    let spec = spec(&sim, &bootstrap(), vec![own.clone()]);
    graph_cdc::sink::topics::ensure_topics(&spec.sink, 3, 1)
        .await
        .expect("topics");
    // Bob's initial request as alice's offset: followed, it would copy Bob's lists (and
    // from them his tasks) into alice's records.
    let bobs = format!(
        "{}/v1.0/users/{bob}/todo/lists/delta",
        spec.graph_host.trim_end_matches('/')
    );
    let planted = SourceOffset {
        link: Some(bobs.clone().into()),
        delta_link: Some(bobs.into()),
        round: 5,
        resync: false,
        ..SourceOffset::INITIAL
    };
    tokio::task::block_in_place(|| plant(&spec, &own, &planted));
    let before = refused_from("task_lists", "offsets_topic");
    let w = start_worker(&spec);
    // Alice's lists converge to her truth, from a round of their own.
    let deadline = Instant::now() + Duration::from_secs(90);
    tokio::task::block_in_place(|| loop {
        let records = read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.task_lists);
        let got = view_of(&compacted(&records), &own);
        if !got.is_empty() && got == truth(&sim, &own) {
            break;
        }
        assert!(w.ended.lock().is_none(), "the worker stopped");
        assert!(Instant::now() < deadline, "alice's lists never converged");
        std::thread::sleep(Duration::from_millis(300));
    });
    w.stop().await.expect("clean stop");
    assert_eq!(refused_from("task_lists", "offsets_topic"), before + 1);
    // Bob's mailbox was never read.
    let st = sim.state.stats.lock().clone();
    assert_eq!(
        st.by_user.get(&bob_id).copied().unwrap_or(0),
        0,
        "{:?}",
        st.by_user
    );
    // Every record is alice's, and started over from round 1.
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.topics.task_lists)
    });
    assert!(!records.is_empty());
    for r in &records {
        let key = String::from_utf8_lossy(&r.key);
        assert!(key.contains(&format!("\"user\":\"{alice}\"")), "{key}");
    }
    assert_eq!(records[0].headers["graph-cdc.round"], "1");
}

/// The offsets topic is created with segments of 100 MiB (compaction only cleans closed
/// segments: with Kafka's default 1 GB a worker taking shards reads up to ~2 GB), and a
/// worker taking some shards keeps only their partitions' offsets: the others' values are
/// never parsed (a garbage one among them is left alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_topic_has_small_segments_and_a_reader_skips_other_shards_values() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let sim = crate::ops::sim().await;
    let (alice, bob, _) = two_users(&sim);
    let mine = PartitionId::TaskLists {
        user: alice.clone(),
    };
    let theirs = PartitionId::CalendarList { user: bob.clone() };
    let spec = spec(&sim, &bootstrap(), vec![mine.clone()]);
    graph_cdc::sink::topics::ensure_topics(&spec.sink, 3, 1)
        .await
        .expect("topics");
    let admin: AdminClient<_> = spec.sink.admin_config().create().expect("admin");
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&spec.sink.offsets_topic)],
            &AdminOptions::new(),
        )
        .await
        .expect("describe");
    let config = described[0].as_ref().expect("the offsets topic's config");
    let value = |k: &str| config.get(k).and_then(|e| e.value.clone());
    assert_eq!(
        value("segment.bytes").as_deref(),
        Some(graph_cdc::sink::topics::OFFSETS_SEGMENT_BYTES)
    );
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));

    let offset = |round| SourceOffset {
        link: Some(
            format!(
                "{}/v1.0/users/{alice}/todo/lists/delta?r={round}",
                sim.url()
            )
            .into(),
        ),
        round,
        ..SourceOffset::INITIAL
    };
    tokio::task::block_in_place(|| {
        plant(&spec, &mine, &offset(2));
        plant(&spec, &mine, &offset(3));
        plant(&spec, &theirs, &offset(7));
        plant_raw(&spec, &theirs, b"not an offset");
    });
    let (cfg, topic, name) = (
        spec.sink.consumer_config(),
        spec.sink.offsets_topic.clone(),
        spec.sink.connector.clone(),
    );
    let keep = mine.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        graph_cdc::sink::offsets_store::load_offsets(
            &cfg,
            &topic,
            &name,
            move |p| *p == keep,
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .expect("offsets read");
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[&mine].round, 3, "the last of its records wins");
}

/// Writes `value` (not an offset's JSON) under `partition`'s key.
fn plant_raw(spec: &graph_cdc::worker::WorkerSpec, partition: &PartitionId, value: &[u8]) {
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &spec.sink.bootstrap_servers)
        .create()
        .expect("producer");
    let key = graph_cdc::offsets::encode_key(&spec.sink.connector, partition);
    producer
        .send(
            BaseRecord::to(&spec.sink.offsets_topic)
                .key(&key)
                .payload(value),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("written");
}
