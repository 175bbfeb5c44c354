//! Client-side transaction faults, injected with librdkafka's mock cluster (it cannot prove
//! exactly-once, the real broker tests do that; it can make a broker fail on cue).
//! The committer must abort or stop as librdkafka classifies the error, and acknowledge a
//! batch only once its transaction committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use graph_cdc::sink::{Committer, SinkError, SinkOptions};
use graph_cdc::source::{Op, PartitionId, SourceBatch, SourceOffset, SourceRecord};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// The default sink options (default topic names), on the mock cluster, with short waits.
fn options(bootstrap: &str) -> SinkOptions {
    let id = format!("mock-{}", uuid::Uuid::new_v4().simple());
    let mut o = SinkOptions::new(bootstrap, "mock", id);
    o.kafka
        .all
        .insert("message.timeout.ms".into(), "5000".into());
    o.offsets_topic = "offsets".into();
    o.transaction_timeout = Duration::from_secs(10);
    o.max_batch_records = 100;
    o.linger = Duration::from_millis(5);
    o.heartbeat_interval = Duration::from_secs(60);
    o
}

fn batch(n: u64) -> SourceBatch {
    let p = Arc::new(PartitionId::TaskLists {
        user: "a@contoso.com".into(),
    });
    let records = (0..3)
        .map(|i| SourceRecord {
            partition: p.clone(),
            key: p.record_key(&format!("item-{n}-{i}")),
            id: format!("item-{n}-{i}"),
            value: Some(Bytes::from(format!("{{\"id\":\"item-{n}-{i}\"}}"))),
            op: Op::Upsert,
            round: 1,
            removed_reason: None,
            resync: false,
        })
        .collect();
    SourceBatch {
        partition: p,
        records,
        offset: SourceOffset {
            link: Some(format!("http://graph/next/{n}").into()),
            delta_link: None,
            round: 1,
            resync: false,
            ..SourceOffset::INITIAL
        },
        resets: vec![],
        starts: vec![],
        runs: vec![],
        full_round: None,
        state: vec![],
        principal: None,
    }
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    let o = options(&mock.bootstrap_servers());
    for t in o.topics.all() {
        mock.create_topic(t, 1, 1).unwrap();
    }
    mock.create_topic(&o.offsets_topic, 1, 1).unwrap();
    mock
}

async fn start(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) -> (
    graph_cdc::sink::SinkHandle,
    std::thread::JoinHandle<Result<(), SinkError>>,
) {
    let opts = options(&mock.bootstrap_servers());
    tokio::task::spawn_blocking(move || Committer::start(opts, Default::default()))
        .await
        .unwrap()
        .expect("committer")
}

#[tokio::test]
async fn a_record_the_broker_refuses_fails_its_batch_and_the_producer_goes_on() {
    let mock = cluster();
    let (sink, _thread) = start(&mock).await;
    sink.commit(batch(0)).await.expect("a clean commit");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 4],
    );
    // A refusal for good (not a retriable error): the batch fails with the reason, instead
    // of its transaction being aborted and redone forever.
    let err = sink
        .commit(batch(1))
        .await
        .expect_err("the refused record fails its batch");
    assert!(
        matches!(&err, SinkError::Rejected(r) if r.contains("invalid_record") && r.contains("item-1-")),
        "{err}"
    );
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    // The committer recovers (a fresh producer) and commits the next batch.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.commit(batch(2)).await {
            Ok(()) => break,
            Err(SinkError::Aborted(e)) if attempts < 5 => eprintln!("retry {attempts}: {e}"),
            Err(e) => panic!("the next batch never committed: {e}"),
        }
    }
}

#[tokio::test]
async fn a_topic_authorization_failure_fails_the_batch_not_the_committer() {
    let mock = cluster();
    let (sink, _thread) = start(&mock).await;
    mock.request_errors(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let err = sink.commit(batch(1)).await.expect_err("refused");
    assert!(
        matches!(&err, SinkError::Rejected(r) if r.contains("topic_authorization_failed")),
        "{err}"
    );
    sink.commit(batch(2)).await.expect("the next batch commits");
}

#[tokio::test]
async fn a_fenced_producer_stops_the_committer_saying_fenced() {
    let mock = cluster();
    let (sink, thread) = start(&mock).await;
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    // Fenced, not fatal: the worker gives the shard up, not itself.
    let err = sink.commit(batch(1)).await.expect_err("fenced");
    assert!(matches!(err, SinkError::Fenced(_)), "{err}");
    let ended = tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Err(SinkError::Fenced(_))), "{ended:?}");
    assert!(
        sink.commit(batch(2)).await.is_err(),
        "nothing is committed after a fatal error"
    );
}

#[tokio::test]
async fn retriable_end_txn_errors_are_retried_and_a_broker_outage_is_waited_out() {
    let mock = cluster();
    let (sink, _thread) = start(&mock).await;
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        ],
    );
    sink.commit(batch(1)).await.expect("retried to success");
    mock.broker_down(1).unwrap();
    let t0 = Instant::now();
    let pending = tokio::spawn({
        let sink = sink.clone();
        async move { sink.commit(batch(2)).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished(), "no commit while the broker is down");
    mock.broker_up(1).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("finishes")
        .unwrap();
    // Either the outage outlasted a timeout (aborted, to be redone) or it committed late:
    // never acknowledged while nothing could be written.
    assert!(t0.elapsed() >= Duration::from_secs(2));
    match r {
        Ok(()) => {}
        Err(SinkError::Aborted(_)) => sink.commit(batch(2)).await.expect("redo commits"),
        Err(e) => panic!("unexpected {e}"),
    }
}
