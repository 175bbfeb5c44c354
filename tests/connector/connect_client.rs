//! The REST API as Kafka Connect clients see it: a Connect client library from PyPI
//! (kafka-connect-py, `connect_client.py`) running its read and stop/offsets/resume flow
//! against a worker; HTTPS with a test certificate; and the answers a client gets for what
//! it gets wrong (Connect's JSON errors and status codes, the token).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use graph_cdc::server::{self, ServerState, TlsConfig};
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{Command, CommandError, Request, Restart, WorkerStatus};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::ops::{self, OP_TOKEN, WINDOW};

/// The client library, pinned (also in `scripts/test.sh`, which installs it into the same
/// virtual environment).
const CLIENT_PACKAGE: &str = "kafka-connect-py==1.0.0";

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The project's virtual environment (`.cache/venv`, made by `scripts/test.sh`) with the
/// client library in it; made or completed here when it is not, so the test never passes
/// without running the client.
fn python_with_client() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv),
            "python3 -m venv .cache/venv",
        );
    }
    let has_client = std::process::Command::new(&python)
        .args(["-c", "import kafka_connect"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_client {
        run(
            std::process::Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                CLIENT_PACKAGE,
            ]),
            "pip install kafka-connect-py",
        );
    }
    python
}

/// kafka-connect-py lists, reads, stops, changes and resets the offsets of, and resumes a
/// running worker; the topics converge again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_client_library_runs_its_flows_against_the_worker() {
    let python = tokio::task::spawn_blocking(python_with_client)
        .await
        .unwrap();
    let sim = ops::sim().await;
    let partitions: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect();
    let spec = spec(&sim, &bootstrap(), partitions);
    let ops = ops::start(&spec).await;
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/connector/connect_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([&ops.url, &spec.sink.connector, OP_TOKEN])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client flow finishes within 5 minutes")
    .expect("python runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for step in [
        "ok unauthenticated calls refused",
        "ok list connectors",
        "ok get connector",
        "ok get connector config",
        "ok get connector status",
        "ok list tasks and task status",
        "ok list connector plugins",
        "ok errors are Connect's JSON",
        "ok restart task, pause, resume",
        "ok offsets refused while RUNNING",
        "ok stop and get offsets",
        "ok alter offsets",
        "ok reset offsets",
        "ok resume",
        "connect client flow: OK",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
    ops::no_secrets(&stdout);
    ops::no_secrets(&stderr);
    // Offsets reset and resumed: every partition started over, and the topics converge.
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

/// A server with no worker behind it: commands are answered by a stand-in (offsets changes
/// refused as while running, task 7 known, everything else done).
async fn serve_alone(tls: Option<TlsConfig>) -> (String, CancellationToken) {
    let (commands, mut rx) = tokio::sync::mpsc::channel::<Request>(8);
    tokio::spawn(async move {
        while let Some(Request { command, reply }) = rx.recv().await {
            let answer = match command {
                Command::AlterOffsets(_) | Command::ResetOffsets => Err(CommandError::BadRequest(
                    "Connectors must be in the STOPPED state".into(),
                )),
                Command::Restart(Restart::Task(7)) => Ok("restarted 1 partitions".into()),
                Command::Restart(Restart::Task(n)) => {
                    Err(CommandError::NotFound(format!("no task {n}")))
                }
                _ => Ok("done".into()),
            };
            let _ = reply.send(answer);
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        commands,
        auth_token: Some(OP_TOKEN.into()),
        name: "c".into(),
        worker_id: "w0".into(),
        config: json!({"name": "c", "graph": {"client_secret": "***"}}),
        status: Arc::new(WorkerStatus::default()),
        peers: server::peers::client(&[]).unwrap(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(server::serve_with(
        listener,
        state,
        tls,
        stop.clone().cancelled_owned(),
    ));
    (url, stop)
}

/// Sends a request; answers the status, the body as JSON (`Null` when empty) and the
/// `WWW-Authenticate` header.
async fn send(r: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
    };
    (code, body, challenge)
}

/// HTTPS with a certificate of the test CA: answered over https (the token still needed),
/// while plain HTTP to the same port gets no answer.
#[tokio::test]
async fn the_rest_listener_serves_https_and_refuses_plain_http() {
    let dir = std::env::temp_dir().join(format!("graph-cdc-rest-tls-{}", uuid::Uuid::new_v4()));
    let certs = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || graph_cdc_testkit::certs::generate(&dir)
    })
    .await
    .unwrap()
    .expect("openssl makes the test certificates");
    // The key store holds the key, then the certificate chain: good for both settings.
    let tls = TlsConfig::from_pem_files(&certs.broker_keystore, &certs.broker_keystore).unwrap();
    let (url, stop) = serve_alone(Some(tls)).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let (code, body, _) = send(client.get(format!("{url}/healthz"))).await;
    assert_eq!((code, body), (200, json!({"status": "ok"})));
    let (code, body, challenge) = send(client.get(format!("{url}/connectors"))).await;
    assert_eq!((code, body["error_code"].as_u64()), (401, Some(401)));
    assert!(challenge.unwrap().starts_with("Bearer"));
    let (code, body, _) = send(
        client
            .get(format!("{url}/connectors"))
            .bearer_auth(OP_TOKEN),
    )
    .await;
    assert_eq!((code, body), (200, json!(["c"])));
    // Plain HTTP to the TLS port: the handshake fails and the connection is closed.
    let plain = url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(
        r.is_err(),
        "plain HTTP answered: {:?}",
        r.map(|r| r.status())
    );
    // A client that does not trust the test CA refuses the server.
    assert!(reqwest::get(format!("{url}/healthz")).await.is_err());
    stop.cancel();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every failure is Connect's `{"error_code", "message"}`, axum's own answers included, with
/// Connect's status codes; the token is taken as Bearer (any case) or as a Basic password.
#[tokio::test]
async fn every_failure_is_a_connect_json_error() {
    use reqwest::Method;
    let (url, stop) = serve_alone(None).await;
    let client = reqwest::Client::new();
    let call = |m: Method, path: &str| {
        client
            .request(m, format!("{url}{path}"))
            .bearer_auth(OP_TOKEN)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        // The fallback, and a method a route does not take.
        (call(Method::GET, "/nope"), 404),
        (call(Method::DELETE, "/connectors/c"), 405),
        (call(Method::PUT, "/connectors/c/config"), 405),
        (call(Method::GET, "/connectors/other/status"), 404),
        // Path and query values that do not parse.
        (call(Method::GET, "/connectors/c/tasks/x/status"), 400),
        (call(Method::POST, "/connectors/c/tasks/x/restart"), 400),
        (call(Method::POST, "/connectors/c/restart?onlyFailed=maybe"), 400),
        (call(Method::GET, "/connectors/c/tasks/8/status"), 404),
        (call(Method::POST, "/connectors/c/tasks/8/restart"), 404),
        // Bodies: not declared JSON → 415; not JSON, or not the command → 400.
        (call(Method::POST, "/connectors/c/partitions/resync"), 415),
        (
            call(Method::POST, "/connectors/c/partitions/resync")
                .header("content-type", "text/plain")
                .body(r#"{"all": true}"#),
            415,
        ),
        (
            call(Method::POST, "/connectors/c/partitions/resync")
                .header("content-type", "application/json")
                .body("{"),
            400,
        ),
        (
            call(Method::POST, "/connectors/c/partitions/resync")
                .header("content-type", "application/json"),
            400,
        ),
        (call(Method::POST, "/connectors/c/partitions/resync").json(&json!({})), 400),
        (call(Method::PATCH, "/connectors/c/offsets"), 415),
        (call(Method::PATCH, "/connectors/c/offsets").json(&json!({"offsets": []})), 400),
        (call(Method::PATCH, "/connectors/c/offsets").json(&json!([1])), 400),
        // A valid body while the connector runs: Connect's 400.
        (
            call(Method::PATCH, "/connectors/c/offsets")
                .json(&json!({"offsets": [{"partition": {"kind": "task_lists", "user": "a@b.c"}, "offset": null}]})),
            400,
        ),
        (call(Method::DELETE, "/connectors/c/offsets"), 400),
        // Wrong or missing tokens.
        (client.get(format!("{url}/connectors")), 401),
        (client.get(format!("{url}/connectors")).bearer_auth("wrong"), 401),
        (client.get(format!("{url}/")).header("authorization", OP_TOKEN), 401),
        (
            client
                .get(format!("{url}/connectors"))
                .basic_auth("operator", Some("wrong")),
            401,
        ),
    ];
    for (request, want) in cases {
        let described = format!("{request:?}");
        let (code, body, challenge) = send(request).await;
        assert_eq!(code, want, "{described}: {body}");
        assert_eq!(
            body["error_code"].as_u64(),
            Some(u64::from(want)),
            "{described}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{described}: {body}"
        );
        assert!(!body.to_string().contains(OP_TOKEN));
        if want == 401 {
            assert!(challenge.unwrap().starts_with("Bearer realm="));
        }
    }
    // What works: the token as Bearer in any case or as a Basic password; Connect's codes.
    let ok = [
        (
            client
                .get(format!("{url}/connectors"))
                .header("authorization", format!("bearer {OP_TOKEN}")),
            200,
        ),
        (
            client
                .get(format!("{url}/connectors"))
                .basic_auth("anyone", Some(OP_TOKEN)),
            200,
        ),
        (call(Method::POST, "/connectors/c/tasks/7/restart"), 204),
        (call(Method::PUT, "/connectors/c/stop"), 202),
        (
            call(Method::POST, "/connectors/c/partitions/resync").json(&json!({"all": true})),
            202,
        ),
        (client.get(format!("{url}/healthz")), 200),
    ];
    for (request, want) in ok {
        let described = format!("{request:?}");
        let (code, body, _) = send(request).await;
        assert_eq!(code, want, "{described}: {body}");
    }
    let (code, body, _) = send(call(Method::GET, "/connectors?expand=status&expand=info")).await;
    assert_eq!(code, 200);
    assert_eq!(body["c"]["status"]["connector"]["state"], "UNASSIGNED");
    assert_eq!(body["c"]["info"]["name"], "c");
    stop.cancel();
}
