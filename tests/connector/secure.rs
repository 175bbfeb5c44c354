//! The connector against the test broker's secured listeners, as production clusters run
//! them: SASL_SSL with SCRAM-SHA-512 and mutual TLS, hostname verification left on. The
//! crash-resume test runs over each; wrong credentials and certificates must give a clear
//! reason (naming the broker) in `/readyz`, keep the worker up, and write nothing; a topic the
//! principal may not write fails only the partitions that write to it.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_cdc::source::{PartitionId, PartitionKind};
use graph_cdc::worker::{self, PartitionState, WorkerStatus};
use graph_cdc_testkit::broker::{shared_broker, BrokerInfo};
use graph_sim::{SimServer, SimSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::common::*;
use crate::crash::crash_resume;

fn broker() -> BrokerInfo {
    shared_broker().expect("the test broker")
}

/// Nobody should have to switch hostname verification off to use this.
fn assert_verifies_hostnames(options: &[(String, String)]) {
    assert!(options
        .iter()
        .all(|(k, _)| k != "ssl.endpoint.identification.algorithm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_resume_over_sasl_ssl_scram() {
    let b = broker();
    let user = b.scram_users[0].0.clone();
    let options = b.sasl_scram_options(&user);
    assert_verifies_hostnames(&options);
    crash_resume(Some((b.sasl_ssl.clone(), options)), 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_resume_over_mutual_tls() {
    let b = broker();
    let options = b.mtls_options();
    assert_verifies_hostnames(&options);
    crash_resume(Some((b.ssl.clone(), options)), 6).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A worker process that cannot get into Kafka: it must stay up, say why on `/readyz`
/// (naming the broker and the cause) and write nothing.
async fn refused(
    bootstrap: &str,
    options: Vec<(String, String)>,
    env: &[(&str, &str)],
    cause: &[&str],
) {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .unwrap();
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
    let spec = spec(&sim, &bootstrap_plain(), Vec::<PartitionId>::new());
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "graph-cdc-refused-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("worker.toml");
    let toml = config_secured(
        &spec,
        &["nobody@contoso.com".to_string()],
        bootstrap,
        &options,
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&cfg, toml).unwrap();
    let log = dir.join("worker.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graph-cdc"));
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let child = &mut child.0;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(status, 503, "{body}");
            if cause
                .iter()
                .all(|c| body.to_lowercase().contains(&c.to_lowercase()))
            {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz says {body}, expected {cause:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The broker is named (its address), and the cause is in the log too.
    assert!(body.contains(bootstrap), "{body}");
    // The start-up attempt gives up after its own timeout, then logs the same cause.
    let logged = loop {
        let logged = std::fs::read_to_string(&log).unwrap();
        if logged.contains("cannot reach Kafka") {
            break logged;
        }
        assert!(Instant::now() < deadline, "not logged: {logged}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        cause
            .iter()
            .all(|c| logged.to_lowercase().contains(&c.to_lowercase())),
        "{logged}"
    );
    for (_, v) in env {
        assert!(
            !logged.contains(v) && !body.contains(v),
            "a secret was shown"
        );
    }
    // Still up, and nothing written: not even the topics exist.
    assert!(child.try_wait().unwrap().is_none(), "the worker exited");
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap_plain())
        .create()
        .unwrap();
    let md =
        tokio::task::block_in_place(|| c.fetch_metadata(None, Duration::from_secs(10))).unwrap();
    let mine: Vec<&str> = spec
        .sink
        .topics
        .all()
        .into_iter()
        .chain([
            spec.sink.offsets_topic.as_str(),
            spec.sink.state_topic.as_str(),
        ])
        .collect();
    for t in md.topics() {
        assert!(!mine.contains(&t.name()), "topic {} was created", t.name());
    }
    signal(child, libc::SIGTERM);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn bootstrap_plain() -> String {
    broker().plaintext
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_reported_and_nothing_is_written() {
    let b = broker();
    let user = b.scram_users[0].0.clone();
    let options: Vec<(String, String)> = b
        .sasl_scram_options(&user)
        .into_iter()
        .filter(|(k, _)| k != "sasl.password")
        .collect();
    // The password comes from the environment, as the README says to pass it.
    refused(
        &b.sasl_ssl,
        options,
        &[(
            "GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD",
            "not-the-Password-42",
        )],
        &["authentication", "invalid credentials"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_is_reported_and_nothing_is_written() {
    let b = broker();
    let user = b.scram_users[0].0.clone();
    let options: Vec<(String, String)> = b
        .sasl_scram_options(&user)
        .into_iter()
        .map(|(k, v)| {
            if k == "ssl.ca.location" {
                (k, b.untrusted_ca_pem.display().to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    refused(
        &b.sasl_ssl,
        options,
        &[],
        &["ssl handshake failed", "certificate verify failed"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_is_reported_and_nothing_is_written() {
    let b = broker();
    let options: Vec<(String, String)> = b
        .mtls_options()
        .into_iter()
        .filter(|(k, _)| k == "security.protocol" || k == "ssl.ca.location")
        .collect();
    refused(&b.ssl, options, &[], &["ssl"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_principal_may_not_write_fails_only_its_partitions() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let b = broker();
    let (sim, users) = sim_with_users(2, 15, 4, 9).await;
    let mut spec = spec(&sim, &b.plaintext, configured_partitions(&users));
    // The topics exist (created over plaintext), but the worker's principal may not write
    // the calendars topic.
    let user = b.scram_users[1].0.clone();
    graph_cdc::sink::topics::ensure_topics(&spec.sink, 3, 1)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        b.deny_write(&format!("User:{user}"), &spec.sink.topics.calendars)
    })
    .unwrap();
    spec.sink.bootstrap_servers = b.sasl_ssl.clone();
    spec.sink.kafka.all = b.sasl_scram_options(&user).into_iter().collect();
    if let Ok(d) = std::env::var("KAFKA_DEBUG") {
        spec.sink.kafka.all.insert("debug".into(), d);
    }
    spec.sink.linger = Duration::from_millis(200);
    let status = Arc::new(WorkerStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(worker::run_with_status(
        spec.clone(),
        status.clone(),
        rx,
        stop.clone().cancelled_owned(),
    ));
    // The calendar lists fail, saying why; everything else converges (read over plaintext).
    let mut read = spec.clone();
    read.sink.bootstrap_servers = b.plaintext.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    tokio::task::block_in_place(|| loop {
        let lists_failed: Vec<String> = status
            .partitions
            .lock()
            .iter()
            .filter(|(p, _)| p.kind() == PartitionKind::CalendarList)
            .filter_map(|(_, s)| match s {
                PartitionState::Failed(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let d = difference_except(&sim, &read, WINDOW, &|k| {
            users.iter().any(|u| {
                k.starts_with(
                    PartitionId::CalendarList { user: u.clone() }
                        .key_prefix()
                        .as_ref(),
                )
            })
        });
        if lists_failed.len() == users.len() && d.is_none() {
            for r in &lists_failed {
                assert!(r.contains("topic_authorization_failed"), "{r}");
            }
            return;
        }
        if task.is_finished() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "failed: {lists_failed:?}; difference: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    });
    if task.is_finished() {
        panic!("the worker stopped: {:?}", task.await);
    }
    for (p, s) in status.partitions.lock().iter() {
        if p.kind() != PartitionKind::CalendarList {
            assert_eq!(*s, PartitionState::Running, "{p}");
        }
    }
    assert!(
        tokio::task::block_in_place(|| read_all(&b.plaintext, &spec.sink.topics.calendars))
            .is_empty(),
        "nothing reached the denied topic"
    );
    stop.cancel();
    let r = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// `graph-cdc validate --connect`: the same cause before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_connect_reports_the_cause() {
    let b = broker();
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .unwrap();
    let spec = spec(&sim, &b.plaintext, Vec::<PartitionId>::new());
    let dir = std::env::temp_dir().join(format!(
        "graph-cdc-validate-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("worker.toml");
    let user = b.scram_users[0].0.clone();
    let run = |password: &str| {
        let options: Vec<(String, String)> = b
            .sasl_scram_options(&user)
            .into_iter()
            .filter(|(k, _)| k != "sasl.password")
            .collect();
        let toml = config_secured(&spec, &["a@contoso.com".to_string()], &b.sasl_ssl, &options);
        std::fs::write(&cfg, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_graph-cdc"))
            .args(["validate", "--connect", "--config"])
            .arg(&cfg)
            .env("GRAPH_CDC__GRAPH__CLIENT_SECRET", SECRET)
            .env("GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD", password)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = tokio::task::block_in_place(|| run("wrong-Password-7"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("invalid credentials") && err.contains(&b.sasl_ssl),
        "{err}"
    );
    assert!(!err.contains("wrong-Password-7"), "{err}");
    let good = b.scram_password(&user).unwrap().to_string();
    let (ok, err) = tokio::task::block_in_place(|| run(&good));
    assert!(ok, "{err}");
    assert!(err.contains("Kafka OK"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
