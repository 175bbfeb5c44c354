//! Proof that the test bed's broker is a real Apache Kafka: transactions commit and abort,
//! `read_committed` hides aborted records, and a second producer fences the first.

use std::time::Duration;

use graph_cdc::testkit::broker::{shared_bootstrap, KafkaBroker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn producer(bootstrap: &str, txn_id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", txn_id)
        .create()
        .expect("producer");
    p.init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    p
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, value: &str) {
    p.send(BaseRecord::<str, str>::to(topic).key(value).payload(value))
        .expect("send");
}

/// Values in `topic` (partition 0) as seen with `isolation`, read to the end.
fn values(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("g"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    panic!("no EOF on {topic}");
}

#[test]
fn read_committed_sees_exactly_the_committed_transaction() {
    let b = shared_bootstrap().unwrap();
    let topic = unique("txn");
    let p = producer(&b, &unique("tid"));
    p.begin_transaction().unwrap();
    send(&p, &topic, "a1");
    send(&p, &topic, "a2");
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    send(&p, &topic, "b1");
    p.flush(Duration::from_secs(10)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    send(&p, &topic, "c1");
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(values(&b, &topic, "read_committed"), vec!["a1", "a2", "c1"]);
    // The aborted record was really written: read_uncommitted sees it.
    assert_eq!(
        values(&b, &topic, "read_uncommitted"),
        vec!["a1", "a2", "b1", "c1"]
    );
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let b = shared_bootstrap().unwrap();
    let topic = unique("fence");
    let tid = unique("tid");
    let zombie = producer(&b, &tid);
    zombie.begin_transaction().unwrap();
    send(&zombie, &topic, "zombie");
    zombie.flush(Duration::from_secs(10)).unwrap();
    // The new incarnation aborts the zombie's open transaction and takes over.
    let fresh = producer(&b, &tid);
    fresh.begin_transaction().unwrap();
    send(&fresh, &topic, "fresh");
    fresh.commit_transaction(Duration::from_secs(30)).unwrap();
    let err = zombie
        .commit_transaction(Duration::from_secs(30))
        .expect_err("the zombie is fenced");
    match &err {
        KafkaError::Transaction(e) => assert!(e.is_fatal(), "fenced is fatal: {e}"),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(values(&b, &topic, "read_committed"), vec!["fresh"]);
}

#[test]
fn a_restarted_broker_keeps_its_data() {
    let mut broker = KafkaBroker::start().unwrap();
    let b = broker.bootstrap();
    let topic = unique("restart");
    let p = producer(&b, &unique("tid"));
    p.begin_transaction().unwrap();
    send(&p, &topic, "kept");
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    drop(p);
    broker.restart().unwrap();
    assert_eq!(broker.bootstrap(), b);
    assert_eq!(values(&b, &topic, "read_committed"), vec!["kept"]);
}
