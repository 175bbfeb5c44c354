//! Proof that the test bed's broker is a real Apache Kafka: transactions commit and abort,
//! `read_committed` hides aborted records, and a second producer fences the first; and that
//! its secured listeners (SASL_SSL with SCRAM, mTLS) and ACLs behave as production clusters'
//! do, including the errors clients see when credentials, CA or certificate are wrong.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_cdc_testkit::broker::{shared_bootstrap, shared_broker, BrokerInfo, KafkaBroker};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext,
    ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `bootstrap.servers` plus `options` (a listener's security settings, or none).
fn config(bootstrap: &str, options: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

fn producer(bootstrap: &str, txn_id: &str) -> ThreadedProducer<DefaultProducerContext> {
    secured_producer(bootstrap, &[], txn_id)
}

fn secured_producer(
    bootstrap: &str,
    options: &[(String, String)],
    txn_id: &str,
) -> ThreadedProducer<DefaultProducerContext> {
    let p: ThreadedProducer<DefaultProducerContext> = config(bootstrap, options)
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
    secured_values(bootstrap, &[], topic, isolation)
}

fn secured_values(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
    isolation: &str,
) -> Vec<String> {
    let c: BaseConsumer = config(bootstrap, options)
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
    let info = broker.info();
    broker.restart().unwrap();
    assert_eq!(broker.bootstrap(), b);
    assert_eq!(values(&b, &topic, "read_committed"), vec!["kept"]);
    // Same ports, certificates and SCRAM users: the secured listeners still take them.
    assert_eq!(broker.info(), info);
    let (alice, _) = &info.scram_users[0];
    produce_one(
        &info.sasl_ssl,
        &info.sasl_scram_options(alice),
        &topic,
        "scram",
    )
    .unwrap();
    assert_eq!(
        secured_values(&info.ssl, &info.mtls_options(), &topic, "read_committed"),
        vec!["kept", "scram"]
    );
}

/// Records what librdkafka reports through its callbacks: client errors (`error()`, e.g. a
/// failed authentication or TLS handshake) and delivery results.
#[derive(Clone, Default)]
struct Recorder {
    errors: Arc<Mutex<Vec<String>>>,
    deliveries: Arc<Mutex<Vec<Result<(), String>>>>,
}

impl ClientContext for Recorder {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .lock()
            .unwrap()
            .push(format!("{error} / {reason}"));
    }
}

impl ConsumerContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.deliveries
            .lock()
            .unwrap()
            .push(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// Connects with `options` where that must fail; returns the errors librdkafka reported once
/// one of them contains one of `expected` (or all of them after 30 s, for the assertion).
fn connection_errors(bootstrap: &str, options: &[(String, String)], expected: &[&str]) -> String {
    let recorder = Recorder::default();
    let p: BaseProducer<Recorder> = config(bootstrap, options)
        .create_with_context(recorder.clone())
        .expect("the client is created; connecting is what fails");
    // librdkafka connects to the bootstrap broker right away and reports each failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    let errors = loop {
        p.poll(Duration::from_millis(100));
        let errors = recorder.errors.lock().unwrap().join("\n");
        if expected.iter().any(|e| errors.contains(e)) || Instant::now() > deadline {
            break errors;
        }
    };
    eprintln!("librdkafka reported:\n{errors}");
    let metadata = p.client().fetch_metadata(None, Duration::from_secs(1));
    assert!(metadata.is_err(), "metadata must not be served");
    errors
}

/// Produces one record (no transaction) with `options`; the delivery result.
fn produce_one(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
    value: &str,
) -> Result<(), String> {
    let recorder = Recorder::default();
    let p: BaseProducer<Recorder> = config(bootstrap, options)
        .set("message.timeout.ms", "20000")
        .create_with_context(recorder.clone())
        .expect("producer");
    p.send(BaseRecord::<str, str>::to(topic).key(value).payload(value))
        .map_err(|(e, _)| e.to_string())?;
    let _ = p.flush(Duration::from_secs(30));
    let result = recorder.deliveries.lock().unwrap().pop();
    result.expect("a delivery report")
}

fn with(mut options: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    options.retain(|(k, _)| k != key);
    options.push((key.into(), value.into()));
    options
}

fn info() -> BrokerInfo {
    shared_broker().expect("a real Kafka broker")
}

#[test]
fn a_transaction_over_sasl_scram_is_read_back_over_mtls() {
    let info = info();
    let (alice, _) = &info.scram_users[0];
    let scram = info.sasl_scram_options(alice);
    let mtls = info.mtls_options();
    // Hostname verification stays at librdkafka's default (on): the broker's SAN must match.
    for options in [&scram, &mtls] {
        assert!(!options
            .iter()
            .any(|(k, _)| k == "ssl.endpoint.identification.algorithm"));
    }
    let topic = unique("secured");
    let p = secured_producer(&info.sasl_ssl, &scram, &unique("tid"));
    p.begin_transaction().unwrap();
    send(&p, &topic, "s1");
    send(&p, &topic, "s2");
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    send(&p, &topic, "aborted");
    p.flush(Duration::from_secs(10)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(
        secured_values(&info.ssl, &mtls, &topic, "read_committed"),
        vec!["s1", "s2"]
    );
    // Every SCRAM user can log in, and the plaintext listener sees the same records.
    let (bob, _) = &info.scram_users[1];
    produce_one(&info.sasl_ssl, &info.sasl_scram_options(bob), &topic, "bob").unwrap();
    assert_eq!(
        values(&info.plaintext, &topic, "read_committed"),
        vec!["s1", "s2", "bob"]
    );
}

#[test]
fn a_wrong_scram_password_is_an_authentication_error() {
    let info = info();
    let (alice, _) = &info.scram_users[0];
    let options = with(info.sasl_scram_options(alice), "sasl.password", "wrong");
    let errors = connection_errors(&info.sasl_ssl, &options, &["Authentication failed"]);
    assert!(errors.contains("Local: Authentication failure"), "{errors}");
    assert!(errors.contains("Authentication failed"), "{errors}");
    assert!(errors.contains("invalid credentials"), "{errors}");
}

#[test]
fn an_untrusted_ca_fails_certificate_verification() {
    let info = info();
    let (alice, _) = &info.scram_users[0];
    let untrusted = info.untrusted_ca_pem.display().to_string();
    let options = with(
        info.sasl_scram_options(alice),
        "ssl.ca.location",
        &untrusted,
    );
    let errors = connection_errors(&info.sasl_ssl, &options, &["certificate verify failed"]);
    assert!(errors.contains("certificate verify failed"), "{errors}");
    let options = with(info.mtls_options(), "ssl.ca.location", &untrusted);
    let errors = connection_errors(&info.ssl, &options, &["certificate verify failed"]);
    assert!(errors.contains("certificate verify failed"), "{errors}");
}

#[test]
fn the_mtls_listener_rejects_a_client_without_certificate() {
    let info = info();
    let options: Vec<(String, String)> = info
        .mtls_options()
        .into_iter()
        .filter(|(k, _)| k != "ssl.certificate.location" && k != "ssl.key.location")
        .collect();
    // JDK 17 answers a missing client certificate with TLS alert 42 (bad_certificate); TLS 1.3
    // names alert 116 (certificate_required) for it, which other JDKs may send.
    let expected = ["alert bad certificate", "alert certificate required"];
    let errors = connection_errors(&info.ssl, &options, &expected);
    assert!(expected.iter().any(|e| errors.contains(e)), "{errors}");
}

#[test]
fn deny_write_stops_one_principal_and_no_other() {
    let info = info();
    let (alice, _) = &info.scram_users[0];
    let (bob, _) = &info.scram_users[1];
    let (alice_opts, bob_opts) = (info.sasl_scram_options(alice), info.sasl_scram_options(bob));
    let topic = unique("acl");
    produce_one(&info.sasl_ssl, &bob_opts, &topic, "before").unwrap();
    info.deny_write(&format!("User:{bob}"), &topic).unwrap();
    info.deny_write(&info.client_principal, &topic).unwrap();
    let err = produce_one(&info.sasl_ssl, &bob_opts, &topic, "denied").unwrap_err();
    eprintln!("bob's produce: {err}");
    assert!(err.contains("Topic authorization failed"), "{err}");
    let err = produce_one(&info.ssl, &info.mtls_options(), &topic, "denied").unwrap_err();
    assert!(err.contains("Topic authorization failed"), "{err}");
    // Others still write there, and bob elsewhere.
    produce_one(&info.sasl_ssl, &alice_opts, &topic, "alice").unwrap();
    produce_one(&info.plaintext, &[], &topic, "anonymous").unwrap();
    produce_one(&info.sasl_ssl, &bob_opts, &unique("acl-other"), "bob").unwrap();
    assert_eq!(
        values(&info.plaintext, &topic, "read_committed"),
        vec!["before", "alice", "anonymous"]
    );
}

#[test]
fn broker_info_survives_json() {
    let info = info();
    let path = std::env::temp_dir().join(format!("{}.json", unique("broker-info")));
    info.save(&path).unwrap();
    let back = BrokerInfo::load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(back.unwrap(), info);
    assert!(info.ca_pem.exists() && info.client_key_pem.exists());
    assert_eq!(info.scram_users.len(), 2);
}

/// The product's `read_to_end` (how a worker reads the offsets and state topics when it takes
/// shards over) on the real broker: it waits for a transaction open at its start, so records
/// committed after that transaction began (above the last stable offset) are read too, and
/// a partition whose tail is an aborted transaction (nothing to deliver below the high
/// watermark) still ends.
#[test]
fn read_to_end_waits_past_open_transactions_and_ends_after_aborted_ones() {
    use graph_cdc::sink::readback::read_to_end;
    let b = shared_bootstrap().unwrap();
    let reader = config(&b, &[]);
    let read = |topic: &str| {
        let mut out = Vec::new();
        read_to_end(&reader, &unique("g"), topic, Duration::from_secs(30), |m| {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        })
        .expect("read to the end");
        out
    };

    // An aborted tail: committed x1, then an aborted y1 (and its marker) last.
    let aborted = unique("aborted-tail");
    let p = producer(&b, &unique("tid"));
    p.begin_transaction().unwrap();
    send(&p, &aborted, "x1");
    p.commit_transaction(Duration::from_secs(30)).unwrap();
    p.begin_transaction().unwrap();
    send(&p, &aborted, "y1");
    p.flush(Duration::from_secs(10)).unwrap();
    p.abort_transaction(Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    assert_eq!(read(&aborted), vec!["x1"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // An open transaction (a1) holds the LSO before b1, committed after it began.
    let open = unique("open-txn");
    let a = producer(&b, &unique("tid"));
    a.begin_transaction().unwrap();
    send(&a, &open, "a1");
    a.flush(Duration::from_secs(10)).unwrap();
    let c = producer(&b, &unique("tid"));
    c.begin_transaction().unwrap();
    send(&c, &open, "b1");
    c.commit_transaction(Duration::from_secs(30)).unwrap();
    let committer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        a.commit_transaction(Duration::from_secs(30)).unwrap();
    });
    let t0 = Instant::now();
    let got = read(&open);
    committer.join().unwrap();
    assert_eq!(got, vec!["a1", "b1"]);
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "it waited for a1's transaction"
    );
}
