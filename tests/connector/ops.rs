//! The HTTP surface of a running worker: health, readiness, metrics and the REST API (reads
//! and operator commands behind the token), with no secret in any answer. `start` and the
//! helpers here also serve `connect_client.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use graph_cdc::config::Settings;
use graph_cdc::server::{self, ServerState};
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{self, WorkerSpec, WorkerStatus};
use graph_sim::generate::GenerateSpec;
use graph_sim::{SimServer, SimSettings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

pub(crate) const WINDOW: &str = "2026-03-01T00:00:00Z/2026-03-31T00:00:00Z";
pub(crate) const GRAPH_SECRET: &str = "graph-secret-c4f2e9";
pub(crate) const KAFKA_PASSWORD: &str = "kafka-password-77aa1";

pub(crate) async fn sim() -> SimServer {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .unwrap();
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
    let spec = GenerateSpec {
        users: 2,
        tenant: Some(TENANT.into()),
        start: chrono::NaiveDateTime::parse_from_str("2026-03-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
            .unwrap(),
        days: 30,
        seed: Some(31),
        ..Default::default()
    };
    graph_sim::generate::generate(&mut sim.state.store.write(), &spec).unwrap();
    sim
}

pub(crate) const OP_TOKEN: &str = "operator-token-5e1";

pub(crate) struct Ops {
    pub url: String,
    pub status: Arc<WorkerStatus>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

/// Starts a worker and its HTTP server; the shown config carries secrets that must not leak.
pub(crate) async fn start(spec: &WorkerSpec) -> Ops {
    let settings = Settings::from_toml_str(
        &format!(
            "name = \"{}\"\n[graph]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"{GRAPH_SECRET}\"\n[kafka.options]\n\"sasl.password\" = \"{KAFKA_PASSWORD}\"\n[[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\n",
            spec.sink.connector
        ),
        false,
    )
    .unwrap();
    let status = Arc::new(WorkerStatus::default());
    let status_out = status.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (commands, rx) = tokio::sync::mpsc::channel(8);
    let state = Arc::new(ServerState {
        commands,
        auth_token: Some(OP_TOKEN.into()),
        name: spec.sink.connector.clone(),
        worker_id: "w0".into(),
        config: settings.redacted_json(),
        status: status.clone(),
        peers: server::peers::client(&[]).unwrap(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    let (s, sp) = (stop.clone(), spec.clone());
    let task =
        tokio::spawn(
            async move { worker::run_with_status(sp, status, rx, s.cancelled_owned()).await },
        );
    Ops {
        url,
        status: status_out,
        stop,
        task,
    }
}

/// A `GET` with the operator's token.
pub(crate) async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(OP_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A `GET` without a token.
pub(crate) async fn get_open(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) async fn wait_ready(url: &str) {
    for _ in 0..100 {
        if get_open(&format!("{url}/readyz")).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "never ready: {}",
        get_open(&format!("{url}/readyz")).await.1
    );
}

pub(crate) fn no_secrets(body: &str) {
    for s in [GRAPH_SECRET, KAFKA_PASSWORD, SECRET, OP_TOKEN] {
        assert!(!body.contains(s), "secret in: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_rest_api_of_a_running_worker() {
    let sim = sim().await;
    let partitions: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect();
    let spec = spec(&sim, &bootstrap(), partitions);
    let ops = start(&spec).await;
    let u = &ops.url;
    assert_eq!(get_open(&format!("{u}/healthz")).await.0, 200);
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    wait_ready(u).await;
    let name = &spec.sink.connector;
    let mut bodies = Vec::new();
    // The probes and the scrape are open; everything else needs the token.
    let (code, body) = get_open(&format!("{u}/metrics")).await;
    assert_eq!(code, 200);
    let written: f64 = body
        .lines()
        .filter(|l| l.starts_with("graph_cdc_records_written_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(written > 0.0, "records written: {body}");
    assert!(body.contains("graph_cdc_graph_requests_total{"));
    assert!(body.contains("graph_cdc_graph_request_duration_seconds_bucket"));
    assert!(body.contains("graph_cdc_staleness_max_seconds "));
    assert!(body.contains("graph_cdc_staleness_seconds_count"));
    assert!(
        body.contains("graph_cdc_partitions{kind=\"calendar_view\",state=\"running\"}"),
        "{body}"
    );
    assert!(body.contains("graph_cdc_partitions_tracked "));
    assert!(
        !body.contains("graph_cdc_partition_staleness_seconds{"),
        "per-partition series are off by default"
    );
    bodies.push(body);
    // Per-partition series behind the setting.
    ops.status
        .per_partition_metrics
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (_, per) = get(&format!("{u}/metrics")).await;
    assert!(
        per.contains("graph_cdc_partition_staleness_seconds{partition="),
        "{per}"
    );
    assert!(per.contains("graph_cdc_partition_state{partition="));
    assert!(per.contains("graph_cdc_partition_round_pages{partition="));
    ops.status
        .per_partition_metrics
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (code, body) = get(&format!("{u}/connectors")).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&body).unwrap()),
        (200, serde_json::json!([name]))
    );
    let (code, body) = get(&format!("{u}/connectors/{name}")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["graph"]["client_secret"], "***");
    assert_eq!(v["config"]["kafka"]["options"]["sasl.password"], "***");
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors/{name}/status")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        all_partitions(&sim, WINDOW).len(),
        "task partitions included"
    );
    assert!(tasks.iter().all(|t| t["state"] == "RUNNING"), "{body}");
    bodies.push(body);
    let (code, body) = get(&format!("{u}/connectors/{name}/offsets")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let offsets = v["offsets"].as_array().unwrap();
    assert!(!offsets.is_empty());
    assert!(offsets
        .iter()
        .all(|o| o["partition"]["kind"].is_string() && o["offset"]["round"].as_u64() >= Some(1)));
    bodies.push(body);
    // Connect's flat string map, secrets masked.
    let (code, body) = get(&format!("{u}/connectors/{name}/config")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v.as_object().unwrap().values().all(Value::is_string),
        "{body}"
    );
    assert_eq!(v["graph.client_secret"], "***");
    assert_eq!(v["kafka.options.sasl.password"], "***");
    assert_eq!(v["connector.class"], "graph-cdc");
    assert_eq!(v["name"], name.as_str());
    bodies.push(body);
    // Tasks: Connect's `{"id": {"connector", "task"}, "config"}`, ids derived from partitions.
    let (code, body) = get(&format!("{u}/connectors/{name}/tasks")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let listed = v.as_array().unwrap();
    assert_eq!(listed.len(), all_partitions(&sim, WINDOW).len(), "{body}");
    for t in listed {
        assert_eq!(t["id"]["connector"], name.as_str());
        let p: Value = serde_json::from_str(t["config"]["partition"].as_str().unwrap()).unwrap();
        let p = PartitionId::from_json(&p).unwrap();
        assert_eq!(t["id"]["task"].as_u64(), Some(worker::task_id(&p)));
        assert_eq!(t["config"]["partition.user"], p.user());
    }
    bodies.push(body);
    let first = listed[0]["id"]["task"].as_u64().unwrap();
    let (code, body) = get(&format!("{u}/connectors/{name}/tasks/{first}/status")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            v["id"].as_u64(),
            v["state"].as_str(),
            v["worker_id"].as_str()
        ),
        (Some(first), Some("RUNNING"), Some("w0"))
    );
    let (code, body) = get(&format!("{u}/connectors/{name}/tasks/7/status")).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = get(&format!("{u}/connector-plugins")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["class"], "graph-cdc");
    assert_eq!(v[0]["type"], "source");
    assert_eq!(v[0]["version"], env!("CARGO_PKG_VERSION"));
    for path in [
        "/".to_string(),
        "/connectors".into(),
        format!("/connectors/{name}"),
        format!("/connectors/{name}/config"),
        format!("/connectors/{name}/status"),
        format!("/connectors/{name}/tasks"),
        format!("/connectors/{name}/offsets"),
        "/connector-plugins".into(),
        "/no-such-path".into(),
    ] {
        let (code, body) = get_open(&format!("{u}{path}")).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error_code"],
            401
        );
        bodies.push(body);
    }
    let (code, body) = get(&format!("{u}/connectors/nope/status")).await;
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error_code"],
        404
    );
    for b in &bodies {
        no_secrets(b);
    }
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

pub(crate) async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn connector_state(url: &str, name: &str) -> String {
    let (_, v) = call(
        reqwest::Method::GET,
        &format!("{url}/connectors/{name}/status"),
        Some(OP_TOKEN),
        None,
    )
    .await;
    v["connector"]["state"].as_str().unwrap_or("").to_string()
}

/// Pause, resume, stop, offsets PATCH/DELETE against the real broker (400 while running, as
/// in Connect; 401 without the token), resync and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_and_offset_changes() {
    use reqwest::Method;
    let sim = sim().await;
    let partitions: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect();
    let spec = spec(&sim, &bootstrap(), partitions.clone());
    let ops = start(&spec).await;
    let (u, name) = (ops.url.clone(), spec.sink.connector.clone());
    let c = |path: &str| format!("{u}/connectors/{name}{path}");
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    // Mutating calls need the token.
    assert_eq!(call(Method::PUT, &c("/pause"), None, None).await.0, 401);
    assert_eq!(
        call(Method::PUT, &c("/pause"), Some("wrong"), None).await.0,
        401
    );
    assert_eq!(
        call(Method::PUT, &c("/pause"), Some(OP_TOKEN), None)
            .await
            .0,
        202
    );
    assert_eq!(connector_state(&u, &name).await, "PAUSED");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = sim.state.stats.lock().total();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sim.state.stats.lock().total(),
        before,
        "no Graph request while paused"
    );
    assert_eq!(
        call(Method::PUT, &c("/resume"), Some(OP_TOKEN), None)
            .await
            .0,
        202
    );
    assert_eq!(connector_state(&u, &name).await, "RUNNING");
    // Offsets can only change while stopped: 400, never 409 (retried by Connect clients).
    let (code, v) = call(Method::DELETE, &c("/offsets"), Some(OP_TOKEN), None).await;
    assert_eq!((code, v["error_code"].as_u64()), (400, Some(400)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Connectors must be in the STOPPED state"),
        "{v}"
    );
    let one = serde_json::json!({"offsets": [{"partition": serde_json::from_str::<Value>(&partitions[0].to_json()).unwrap(), "offset": null}]});
    let (code, v) = call(Method::PATCH, &c("/offsets"), Some(OP_TOKEN), Some(one)).await;
    assert_eq!((code, v["error_code"].as_u64()), (400, Some(400)), "{v}");
    assert_eq!(
        call(Method::PUT, &c("/stop"), Some(OP_TOKEN), None).await.0,
        202
    );
    assert_eq!(connector_state(&u, &name).await, "STOPPED");
    let (code, v) = call(Method::GET, &c("/offsets"), Some(OP_TOKEN), None).await;
    assert_eq!(code, 200);
    assert!(v["offsets"].as_array().unwrap().len() >= partitions.len());
    assert_eq!(
        call(Method::DELETE, &c("/offsets"), Some(OP_TOKEN), None)
            .await
            .0,
        200
    );
    let (_, v) = call(Method::GET, &c("/offsets"), Some(OP_TOKEN), None).await;
    assert!(v["offsets"].as_array().unwrap().is_empty());
    // PATCH one partition, then read the offsets topic back from the broker.
    let target = &partitions[0];
    let offset = serde_json::json!({"round": 7, "resync": false});
    let body = serde_json::json!({"offsets": [{"partition": serde_json::from_str::<Value>(&target.to_json()).unwrap(), "offset": offset}]});
    assert_eq!(
        call(Method::PATCH, &c("/offsets"), Some(OP_TOKEN), Some(body))
            .await
            .0,
        200
    );
    let records = tokio::task::block_in_place(|| {
        read_all(&spec.sink.bootstrap_servers, &spec.sink.offsets_topic)
    });
    let key = graph_cdc::offsets::encode_key(&name, target);
    let last = records.iter().rfind(|r| r.key == key.as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(last.value.as_ref().unwrap()).unwrap()["round"],
        7
    );
    let other = graph_cdc::offsets::encode_key(&name, &partitions[1]);
    assert!(
        records
            .iter()
            .rfind(|r| r.key == other.as_bytes())
            .unwrap()
            .value
            .is_none(),
        "reset"
    );
    // Malformed or empty bodies: 400; a body not declared JSON: 415.
    for bad in [
        serde_json::json!({"offsets": [{"partition": {"kind": "mail"}, "offset": null}]}),
        serde_json::json!({"offsets": []}),
        serde_json::json!({"offsets": [{"partition": {"kind": "task_lists", "user": "a@b.c"}}]}),
        serde_json::json!({}),
    ] {
        let (code, v) = call(
            Method::PATCH,
            &c("/offsets"),
            Some(OP_TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (code, v["error_code"].as_u64()),
            (400, Some(400)),
            "{bad}: {v}"
        );
    }
    let r = reqwest::Client::new()
        .patch(c("/offsets"))
        .bearer_auth(OP_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"offsets": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert_eq!(r.json::<Value>().await.unwrap()["error_code"], 415);
    // Resume: every partition starts over and the topics converge again.
    assert_eq!(
        call(Method::PUT, &c("/resume"), Some(OP_TOKEN), None)
            .await
            .0,
        202
    );
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    // Resyncing everything must be asked for: `{}` or no body at all no longer does it.
    let (code, v) = call(
        Method::POST,
        &c("/partitions/resync"),
        Some(OP_TOKEN),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(Method::POST, &c("/partitions/resync"), Some(OP_TOKEN), None).await;
    assert_eq!(code, 415, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains(r#"{"all": true}"#),
        "{v}"
    );
    let (code, v) = call(
        Method::POST,
        &c("/partitions/resync"),
        Some(OP_TOKEN),
        Some(serde_json::json!({"all": true})),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("resync requested for "),
        "{v}"
    );
    assert_eq!(
        call(
            Method::POST,
            &c("/restart?includeTasks=true&onlyFailed=true"),
            Some(OP_TOKEN),
            None
        )
        .await
        .0,
        202
    );
    let first = tasks(&u, &name).await.into_keys().next().unwrap();
    // A task restart answers 204 with no body, as in Connect.
    assert_eq!(
        call(
            Method::POST,
            &c(&format!("/tasks/{first}/restart")),
            Some(OP_TOKEN),
            None
        )
        .await,
        (204, Value::Null)
    );
    assert_eq!(
        call(Method::POST, &c("/tasks/999/restart"), Some(OP_TOKEN), None)
            .await
            .0,
        404
    );
    let user = sim
        .state
        .store
        .read()
        .user_id("user001@contoso.com")
        .unwrap()
        .to_string();
    sim.state
        .store
        .write()
        .create_list(&user, Default::default())
        .unwrap();
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}

/// The tasks of `GET /connectors/{name}/status`, by id: (partition, state). Checks that each
/// id is the one derived from its partition and that `GET /connectors/{name}` lists the same.
async fn tasks(url: &str, name: &str) -> BTreeMap<u64, (PartitionId, String)> {
    let (code, v) = call(
        reqwest::Method::GET,
        &format!("{url}/connectors/{name}/status"),
        Some(OP_TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let mut out = BTreeMap::new();
    for t in v["tasks"].as_array().unwrap() {
        let p = PartitionId::from_json(&t["partition"]).unwrap();
        let id = t["id"].as_u64().unwrap();
        assert_eq!(id, worker::task_id(&p), "the id of {p}");
        let state = t["state"].as_str().unwrap().to_string();
        assert!(out.insert(id, (p, state)).is_none(), "ids are unique");
    }
    let (_, v) = call(
        reqwest::Method::GET,
        &format!("{url}/connectors/{name}"),
        Some(OP_TOKEN),
        None,
    )
    .await;
    let listed: BTreeMap<u64, PartitionId> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let p = PartitionId::from_json(&t["partition"]).unwrap();
            (t["task"].as_u64().unwrap(), p)
        })
        .collect();
    // Read one after the other: a partition may have appeared in between.
    for (id, p) in &listed {
        if let Some((q, _)) = out.get(id) {
            assert_eq!(p, q, "task {id} is the same partition in both listings");
        }
    }
    out
}

/// Polls the status until `done` holds for the tasks (30 s at most).
async fn wait_tasks(
    url: &str,
    name: &str,
    what: &str,
    done: impl Fn(&BTreeMap<u64, (PartitionId, String)>) -> bool,
) -> BTreeMap<u64, (PartitionId, String)> {
    for _ in 0..150 {
        let t = tasks(url, name).await;
        if done(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: {:?}", tasks(url, name).await);
}

/// Task ids come from the partitions, not from their positions: they stay the same while task
/// partitions of To Do lists appear (one sorting before the others) and disappear, and a
/// restart by id restarts that partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_are_stable_and_restart_by_id_hits_its_partition() {
    use graph_sim::model::NameSpec;
    use reqwest::Method;
    let sim = sim().await;
    let user = sim
        .state
        .store
        .read()
        .user_id("user001@contoso.com")
        .unwrap()
        .to_string();
    // A list that can be deleted (the default one cannot).
    let gone = sim
        .state
        .store
        .write()
        .create_list(&user, NameSpec::default())
        .unwrap();
    let mut partitions: Vec<PartitionId> = all_partitions(&sim, WINDOW)
        .into_iter()
        .filter(|p| !matches!(p, PartitionId::Tasks { .. }))
        .collect();
    // A user the directory does not know yet (configured by name): its partition fails,
    // under that name, until the user exists.
    let ghost = PartitionId::CalendarList {
        user: "ghost@contoso.com".into(),
    };
    partitions.push(ghost.clone());
    let spec = spec(&sim, &bootstrap(), partitions);
    let ops = start(&spec).await;
    let (u, name) = (ops.url.clone(), spec.sink.connector.clone());
    let ghost_id = worker::task_id(&ghost);
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    let before = wait_tasks(&u, &name, "the unknown mailbox fails", |t| {
        t.get(&ghost_id).is_some_and(|(_, s)| s == "FAILED")
    })
    .await;
    assert_eq!(before.len(), all_partitions(&sim, WINDOW).len() + 1);

    // A new list (its partition sorts before user002's task partitions) and a deleted one.
    let new_list = sim
        .state
        .store
        .write()
        .create_list(&user, NameSpec::default())
        .unwrap();
    sim.state.store.write().delete_list(&user, &gone).unwrap();
    let new_p = PartitionId::Tasks {
        user: user.clone(),
        list: new_list,
    };
    let gone_p = PartitionId::Tasks {
        user: user.clone(),
        list: gone,
    };
    let (new_id, gone_id) = (worker::task_id(&new_p), worker::task_id(&gone_p));
    let after = wait_tasks(&u, &name, "the new list's partition runs", |t| {
        t.get(&new_id).is_some_and(|(_, s)| s == "RUNNING")
            && t.get(&gone_id).is_none_or(|(_, s)| s != "RUNNING")
    })
    .await;
    assert_eq!(after[&new_id].0, new_p);
    for (id, (p, _)) in &before {
        if let Some((q, _)) = after.get(id) {
            assert_eq!(p, q, "task {id} still names the same partition");
        } else {
            assert_eq!(*id, gone_id, "only the deleted list's partition may go");
        }
    }

    // The user appears; restarting the failed task by its id looks the user up again, and the
    // partition runs under the user's object id (the failed entry under the name goes).
    let ghost_user = sim
        .state
        .store
        .write()
        .create_user(graph_sim::model::UserSpec {
            tenant: Some(TENANT.into()),
            user_principal_name: "ghost@contoso.com".into(),
            id: None,
            display_name: None,
        })
        .unwrap()
        .id;
    let by_id = ghost.with_user(&ghost_user);
    let by_id_task = worker::task_id(&by_id);
    let c = |path: &str| format!("{u}/connectors/{name}{path}");
    let (code, v) = call(
        Method::POST,
        &c(&format!("/tasks/{ghost_id}/restart")),
        Some(OP_TOKEN),
        None,
    )
    .await;
    assert_eq!((code, v), (204, Value::Null));
    let restarted = wait_tasks(&u, &name, "the restarted task runs", |t| {
        t.get(&by_id_task).is_some_and(|(_, s)| s == "RUNNING") && !t.contains_key(&ghost_id)
    })
    .await;
    assert_eq!(restarted[&by_id_task].0, by_id);
    let ghost = by_id;
    // Its calendars reach Kafka (only this partition of the new mailbox is configured).
    let topic = spec.sink.topics.for_kind(ghost.kind()).to_string();
    let want = truth(&sim, &ghost);
    assert!(!want.is_empty(), "a new mailbox has its primary calendar");
    let mut got = BTreeMap::new();
    for _ in 0..150 {
        got = tokio::task::block_in_place(|| {
            view_of(
                &compacted(&read_all(&spec.sink.bootstrap_servers, &topic)),
                &ghost,
            )
        });
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(got, want, "the restarted partition caught up");
    assert!(ops.status.offsets.lock().contains_key(&ghost));
    // An id no partition has.
    let unknown = (0..).find(|i| !restarted.contains_key(i)).unwrap();
    let (code, v) = call(
        Method::POST,
        &c(&format!("/tasks/{unknown}/restart")),
        Some(OP_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (404, Some(&*format!("no task {unknown}")))
    );
    ops.stop.cancel();
    ops.task.await.unwrap().unwrap();
}
