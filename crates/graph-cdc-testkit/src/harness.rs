//! What the product's tests and benchmarks share: the test app registered in a simulator,
//! worker specs built from the connector's own defaults on topics of their own, a worker
//! running in this process, the connector's counters, and topics read back as a
//! `read_committed` consumer sees them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_cdc::config::{Secret, Settings};
use graph_cdc::metrics::metrics;
use graph_cdc::source::{Op, PartitionId, PartitionKind};
use graph_cdc::worker::{self, PartitionState, WorkerError, WorkerSpec, WorkerStatus};
use graph_sim::{SimServer, SimSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// The tenant the test app is registered in.
pub const TENANT: &str = "contoso";
/// The test app's client id.
pub const CLIENT: &str = "graph-cdc-test";
/// The test app's client secret.
pub const SECRET: &str = "graph-cdc-test-secret";

/// Ten hex digits, unique per call: names one run's topics and transactional id.
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// Registers the test app ([`TENANT`], [`CLIENT`], [`SECRET`]) in a simulator.
pub fn register_app(sim: &SimServer) {
    sim.state.add_secret_client(TENANT, CLIENT, SECRET);
}

/// A simulator on loopback with the test app registered (on the current runtime).
pub async fn start_sim() -> SimServer {
    let sim = SimServer::start("127.0.0.1:0", SimSettings::default())
        .await
        .expect("simulator");
    register_app(&sim);
    sim
}

/// The connector's built-in settings pointed at a simulator and a broker, as the test app,
/// with a connector name, topics and offsets topic of their own (`{kind}-{run}`).
pub fn settings(graph_url: &str, bootstrap: &str, run: &str) -> Settings {
    let mut s = Settings::defaults();
    s.name = format!("conn-{run}");
    // Few shards: each is a producer of its own.
    s.worker.shards = 3;
    let g = &mut s.graph;
    g.tenant_id = TENANT.into();
    g.client_id = CLIENT.into();
    g.client_secret = Some(Secret::new(SECRET));
    g.base_url = Some(graph_url.into());
    g.authority_url = Some(graph_url.into());
    let k = &mut s.kafka;
    k.bootstrap_servers = bootstrap.into();
    k.worker_id = Some("0".into());
    k.offsets_topic = format!("offsets-{run}");
    k.shards_topic = format!("shards-{run}");
    k.control_topic = format!("control-{run}");
    k.state_topic = format!("state-{run}");
    k.topics.events = format!("events-{run}");
    k.topics.calendars = format!("calendars-{run}");
    k.topics.task_lists = format!("lists-{run}");
    k.topics.tasks = format!("tasks-{run}");
    k.topics.members = format!("members-{run}");
    s
}

/// [`settings`] for a fresh run, resolved into the spec of a worker tracking `partitions`.
pub fn worker_spec(graph_url: &str, bootstrap: &str, partitions: Vec<PartitionId>) -> WorkerSpec {
    let s = settings(graph_url, bootstrap, &run_id());
    let mut spec = WorkerSpec::from_settings(&s).expect("the test settings resolve");
    spec.partitions = partitions;
    spec
}

/// A worker running in this process, on the runtime it was started on.
pub struct InProcessWorker {
    pub stop: CancellationToken,
    pub status: Arc<WorkerStatus>,
    pub task: tokio::task::JoinHandle<Result<(), WorkerError>>,
    /// How the worker ended, if it did by itself.
    pub ended: Arc<parking_lot::Mutex<Option<String>>>,
    /// Operator commands (see [`InProcessWorker::command`]).
    pub commands: tokio::sync::mpsc::Sender<graph_cdc::worker::Request>,
}

impl InProcessWorker {
    /// Starts `spec` on `rt` (`TEST_LOG=debug` shows its logs).
    pub fn start(rt: &tokio::runtime::Handle, spec: WorkerSpec) -> Self {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let stop = CancellationToken::new();
        let status = Arc::new(WorkerStatus::default());
        let (commands, rx) = tokio::sync::mpsc::channel(1);
        let ended = Arc::new(parking_lot::Mutex::new(None));
        let (e, st, s) = (ended.clone(), status.clone(), stop.clone());
        let task = rt.spawn(async move {
            let r = worker::run_with_status(spec, st, rx, s.cancelled_owned()).await;
            *e.lock() = Some(format!("{r:?}"));
            r
        });
        Self {
            stop,
            status,
            task,
            ended,
            commands,
        }
    }

    /// Carries out an operator's command, as the REST API would ask it.
    pub async fn command(
        &self,
        command: graph_cdc::worker::Command,
    ) -> Result<String, graph_cdc::worker::CommandError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let req = graph_cdc::worker::Request { command, reply };
        self.commands
            .send(req)
            .await
            .expect("the worker takes commands");
        rx.await.expect("the worker answers")
    }

    /// Stops the worker and returns how it ended; panics if that takes over 20 s.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("worker stops within 20 s")
            .expect("worker task")
    }

    /// The partition's state as the worker reports it.
    pub fn state(&self, p: &PartitionId) -> Option<PartitionState> {
        self.status.partitions.lock().get(p).cloned()
    }

    /// Waits until `p` is `FAILED`, at most `within`; its reason.
    pub async fn failed(&self, p: &PartitionId, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            match self.state(p) {
                Some(PartitionState::Failed(r)) => return r,
                other => assert!(std::time::Instant::now() < deadline, "{p} is {other:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// [`Self::stop`] from outside the runtime (benchmarks).
    pub fn stop_blocking(self, rt: &tokio::runtime::Runtime) -> Result<(), WorkerError> {
        rt.block_on(self.stop())
    }
}

/// Records the connector committed in this process, all kinds and operations.
pub fn records_written() -> u64 {
    let m = metrics();
    let mut n = 0;
    for k in PartitionKind::ALL {
        for op in [Op::Upsert, Op::Delete] {
            n += m
                .records_written
                .with_label_values(&[k.as_str(), op.as_str()])
                .get();
        }
    }
    n
}

/// Transactions the connector committed in this process.
pub fn transactions() -> u64 {
    metrics()
        .transactions
        .with_label_values(&["committed"])
        .get()
}

/// Polls `f` every 5 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One committed record of a topic.
pub struct Committed {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning to its end with `read_committed`, in order.
pub fn read_committed(bootstrap: &str, topic: &str) -> Vec<Committed> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    // Each partition is read to its end as of now: its last stable offset (what a
    // `read_committed` client's watermarks are), or an EOF, whichever comes first. An EOF
    // alone may never come while workers keep appending faster than the fetches go.
    let mut stable: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    for p in &parts {
        // A topic just created may have no leader yet: then the EOF alone ends the read.
        let lso = (0..20).find_map(|_| {
            match consumer.fetch_watermarks(topic, *p, Duration::from_secs(5)) {
                Ok((_, lso)) => Some(lso),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            }
        });
        stable.insert(*p, lso.unwrap_or(i64::MAX));
    }
    let mut eof = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof.len() < parts.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.offset() + 1 >= stable.get(&m.partition()).copied().unwrap_or(i64::MAX) {
                    eof.insert(m.partition());
                }
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Committed {
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    assert_eq!(eof.len(), parts.len(), "{topic} read to its end");
    out
}

/// The compacted view: key → value, tombstones removing.
pub fn compacted(records: &[Committed]) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut view = HashMap::new();
    for r in records {
        match &r.value {
            Some(v) => {
                view.insert(r.key.clone(), v.clone());
            }
            None => {
                view.remove(&r.key);
            }
        }
    }
    view
}
