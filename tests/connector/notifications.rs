//! Change notifications end to end (issue 16): a worker with `[notifications]` on subscribes
//! through the simulator's `/subscriptions` (which runs Graph's validation handshake against
//! the worker's `/notifications`), and a change reaches Kafka by the notification the
//! simulator posts, with polls ten minutes apart. Forged notifications are dropped; a
//! partition that stops deletes its subscription.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graph_cdc::config::{Secret, Settings};
use graph_cdc::server::{self, ServerState};
use graph_cdc::source::PartitionId;
use graph_cdc::worker::{self, Command, NotificationSpec, WorkerSpec, WorkerStatus};
use graph_sim::generate::MutateSpec;
use graph_sim::SimServer;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const WINDOW: &str = "2026-05-01T00:00:00Z/2026-06-01T00:00:00Z";
const CLIENT_STATE: &str = "client-state-of-the-notifications-test";

/// A worker and its HTTP server, the server bound first so that the worker's subscriptions
/// can name it.
struct Notified {
    url: String,
    status: Arc<WorkerStatus>,
    commands: tokio::sync::mpsc::Sender<worker::Request>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

async fn start(spec: WorkerSpec) -> (Notified, WorkerSpec) {
    start_on(spec, "127.0.0.1:0").await
}

/// [`start`] with the server on `addr` (a restarted worker keeps its public URL).
async fn start_on(spec: WorkerSpec, addr: &str) -> (Notified, WorkerSpec) {
    start_with(spec, addr, |_| {}).await
}

/// [`start_on`], with `tweak` applied to the notification settings.
async fn start_with(
    spec: WorkerSpec,
    addr: &str,
    tweak: impl FnOnce(&mut NotificationSpec),
) -> (Notified, WorkerSpec) {
    start_behind(spec, addr, None, tweak).await
}

/// [`start_with`], Graph posting to `ingress` (another worker's server) when given: the
/// worker advertises its own server to the others (forwarding).
async fn start_behind(
    mut spec: WorkerSpec,
    addr: &str,
    ingress: Option<&str>,
    tweak: impl FnOnce(&mut NotificationSpec),
) -> (Notified, WorkerSpec) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    spec.sharding.advertised_url = Some(url.clone());
    let public = ingress.unwrap_or(&url).to_string();
    let mut n = NotificationSpec {
        url: format!("{public}/notifications"),
        lifecycle_url: format!("{public}/notifications/lifecycle"),
        client_state: Secret::new(CLIENT_STATE),
        renew_before: Duration::from_secs(24 * 3600),
        max_lifetime: None,
        poll_interval: Duration::from_secs(600),
        sweep_after: None,
    };
    tweak(&mut n);
    spec.notifications = Some(n);
    let settings = Settings::from_toml_str(
        "[graph]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n[[sources]]\nkind = \"todo\"\nusers = [\"a@b.c\"]\n",
        false,
    )
    .unwrap();
    let status = Arc::new(WorkerStatus::default());
    let (commands, rx) = tokio::sync::mpsc::channel(8);
    let state = Arc::new(ServerState {
        commands: commands.clone(),
        auth_token: Some("operator-token".into()),
        name: spec.sink.connector.clone(),
        worker_id: spec.sharding.worker_id.clone(),
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
    let (s, sp, st) = (stop.clone(), spec.clone(), status.clone());
    let task =
        tokio::spawn(async move { worker::run_with_status(sp, st, rx, s.cancelled_owned()).await });
    let n = Notified {
        url,
        status,
        commands,
        stop,
        task,
    };
    (n, spec)
}

impl Notified {
    async fn command(&self, command: Command) -> Result<String, worker::CommandError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(worker::Request { command, reply })
            .await
            .unwrap();
        rx.await.unwrap()
    }
}

/// `count` changes to the events and tasks of `users` (no calendars or lists made or
/// removed: only notified partitions change).
pub(crate) fn changes(users: &[String], count: usize, seed: u64) -> MutateSpec {
    MutateSpec {
        count,
        users: Some(users.to_vec()),
        start: chrono::NaiveDateTime::parse_from_str("2026-05-01T00:00:00", "%Y-%m-%dT%H:%M:%S")
            .unwrap(),
        days: 31,
        structural: false,
        membership: false,
        seed: Some(seed),
    }
}

/// The partitions Graph notifies of: each user's calendar view and task lists' tasks.
fn notified_partitions(sim: &SimServer) -> Vec<PartitionId> {
    all_partitions(sim, WINDOW)
        .into_iter()
        .filter(|p| {
            matches!(
                p,
                PartitionId::CalendarView { .. } | PartitionId::Tasks { .. }
            )
        })
        .collect()
}

/// The first partition whose compacted view differs from the truth.
pub(crate) fn differs(sim: &SimServer, spec: &WorkerSpec, parts: &[PartitionId]) -> Option<String> {
    let mut views = BTreeMap::new();
    for p in parts {
        let topic = spec.sink.topics.for_kind(p.kind()).to_string();
        if !views.contains_key(&topic) {
            let records = read_all(&spec.sink.bootstrap_servers, &topic);
            views.insert(topic.clone(), compacted(&records));
        }
        if view_of(&views[&topic], p) != truth(sim, p) {
            return Some(p.to_string());
        }
    }
    None
}

fn wait_converged_within(
    sim: &SimServer,
    spec: &WorkerSpec,
    parts: &[PartitionId],
    t: Duration,
) -> Duration {
    let started = Instant::now();
    tokio::task::block_in_place(|| loop {
        let Some(d) = differs(sim, spec, parts) else {
            return started.elapsed();
        };
        assert!(started.elapsed() < t, "not converged after {t:?}: {d}");
        std::thread::sleep(Duration::from_millis(200));
    })
}

fn notified(effect: &str) -> u64 {
    let m = graph_cdc::metrics::metrics();
    ["calendar_view", "tasks"]
        .iter()
        .map(|k| m.notified_rounds.with_label_values(&[k, effect]).get())
        .sum()
}

fn dropped(outcome: &str) -> u64 {
    graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["change", outcome])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_kafka_by_notification_and_stopped_partitions_unsubscribe() {
    let (sim, users) = sim_with_users(2, 6, 4, 161).await;
    let parts = notified_partitions(&sim);
    assert!(parts.len() >= 4, "{parts:?}");
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    // Polls ten minutes apart: within the test only a notification starts a round.
    spec.poll_interval = Duration::from_secs(600);
    let (w, spec) = start(spec).await;
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(60));

    // One subscription per partition, each validated against the worker's webhook.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = sim.state.subscriptions.lock().len();
        if n == parts.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} subscriptions of {}",
            parts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let subs = sim.state.subscriptions.lock();
        for s in subs.all() {
            assert_eq!(s.notification_url, format!("{}/notifications", w.url));
            assert_eq!(s.client_state.as_deref(), Some(CLIENT_STATE));
            assert!(
                s.expires > chrono::Utc::now() + chrono::Duration::hours(70),
                "{}",
                s.expires
            );
        }
    }

    // Changes to events and tasks: converged by notifications, polls being 10 minutes off.
    let woken = notified("woken") + notified("running") + notified("already_due");
    let m = changes(&users, 25, 162);
    graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
    let took = wait_converged_within(&sim, &spec, &parts, Duration::from_secs(30));
    println!("25 changes converged by notifications in {took:?}");
    assert!(
        notified("woken") + notified("running") + notified("already_due") > woken,
        "no round was triggered by a notification"
    );

    // A notification with another client state is dropped (and answered 202 all the same).
    let sub_id = sim.state.subscriptions.lock().all()[0].id.clone();
    let forged_before = dropped("wrong_client_state");
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/notifications", w.url))
        .json(&serde_json::json!({"value": [{
            "subscriptionId": sub_id, "clientState": "guessed", "changeType": "updated",
            "resource": "Users/x/Events/y"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(dropped("wrong_client_state"), forged_before + 1);
    // Graph's handshake, open without the REST API's token.
    let r = http
        .post(format!(
            "{}/notifications?validationToken=Validation%3A%20Testing",
            w.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Validation: Testing");
    assert_eq!(
        http.post(format!("{}/notifications", w.url))
            .body("not json")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // Stopped, every partition deletes its subscription: none left behind.
    w.command(Command::Stop).await.expect("stop");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = sim.state.subscriptions.lock().len();
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} subscriptions left after the stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
    assert!(!w.status.notifications.is_open());
    let records = all_records(&spec);
    assert_eq!(duplicates(&records), Vec::<String>::new());
}

fn subscription_ids(sim: &SimServer) -> std::collections::BTreeSet<String> {
    sim.state
        .subscriptions
        .lock()
        .all()
        .iter()
        .map(|s| s.id.clone())
        .collect()
}

pub(crate) async fn wait_subscriptions(sim: &SimServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = sim.state.subscriptions.lock().len();
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{got} subscriptions, not {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscriptions this simulator created (its own count: tests run side by side).
fn created(sim: &SimServer) -> u64 {
    sim.state.stats.lock().notifications.subscriptions_created
}

/// A worker stopped and started again reuses its subscriptions (their ids are written with
/// the offsets): none deleted at the stop, none created at the start, and changes still
/// arrive by notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_reuses_the_subscriptions_its_offsets_name() {
    let (sim, users) = sim_with_users(2, 4, 3, 171).await;
    let parts = notified_partitions(&sim);
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    spec.poll_interval = Duration::from_secs(600);
    let (w, spec) = start(spec).await;
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(60));
    wait_subscriptions(&sim, parts.len()).await;
    let ids = subscription_ids(&sim);
    // Each subscription's first poll (right after its creation) wrote it with the offset,
    // at the next heartbeat at the latest; the stop flushes what waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = w.url.trim_start_matches("http://").to_string();
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
    assert_eq!(
        subscription_ids(&sim),
        ids,
        "a stop keeps the subscriptions"
    );
    let offsets = graph_cdc::sink::offsets_store::load_offsets(
        &spec.sink.consumer_config(),
        &spec.sink.offsets_topic,
        &spec.sink.connector,
        |_| true,
        Duration::from_secs(30),
    )
    .unwrap();
    let recorded: std::collections::BTreeSet<String> = offsets
        .values()
        .filter_map(|o| o.subscription.as_ref().map(|s| s.id.clone()))
        .collect();
    assert_eq!(
        recorded, ids,
        "every subscription is recorded in its offset"
    );

    let before = created(&sim);
    let (w, spec) = start_on(spec, &addr).await;
    let m = changes(&users, 15, 172);
    // Wait for the restarted worker to run its partitions before changing things.
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.status.partitions.lock().len() < parts.len() || !w.status.notifications.is_open() {
        assert!(
            Instant::now() < deadline,
            "the restarted worker never ran its partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
    let took = wait_converged_within(&sim, &spec, &parts, Duration::from_secs(30));
    println!("after the restart, 15 changes converged by notifications in {took:?}");
    assert_eq!(subscription_ids(&sim), ids, "the same subscriptions");
    assert_eq!(
        created(&sim),
        before,
        "none created by the restarted worker"
    );
    w.command(Command::Stop).await.expect("stop");
    wait_subscriptions(&sim, 0).await;
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
}

/// `POST {sim}/_sim{path}` with a JSON body.
async fn sim_post(
    sim: &SimServer,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> u16 {
    reqwest::Client::new()
        .request(method, format!("{}/_sim{path}", sim.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn notification_stats(sim: &SimServer) -> graph_sim::subscriptions::NotificationStats {
    sim.state.stats.lock().notifications.clone()
}

/// Subscriptions living 20 s are renewed before they lapse; Graph's lifecycle events are
/// answered (a removed subscription recreated, a reauthorization asked for done); with every
/// notification dropped the safety-net polls converge, and with every one sent twice the
/// replays are dropped: nothing is committed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_lifecycle_events_drops_and_duplicates_converge() {
    let (sim, users) = sim_with_users(1, 4, 3, 181).await;
    sim.state.settings.write().subscription_max_secs = Some(20);
    let parts = notified_partitions(&sim);
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    spec.poll_interval = Duration::from_secs(600);
    let (w, spec) = start_with(spec, "127.0.0.1:0", |n| {
        n.max_lifetime = Some(Duration::from_secs(20));
        n.poll_interval = Duration::from_secs(5);
    })
    .await;
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(60));
    wait_subscriptions(&sim, parts.len()).await;
    let mutate = |count, seed| changes(&users, count, seed);

    // 45 s: two lifetimes and more. Every subscription renewed, none lapsed.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let st = notification_stats(&sim);
    assert_eq!(st.subscriptions_expired, 0, "{st:?}");
    assert!(st.subscriptions_renewed >= 2 * parts.len() as u64, "{st:?}");
    graph_sim::generate::mutate(&mut sim.state.store.write(), &mutate(10, 182));
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(20));

    // Lifecycle events.
    let first = sim.state.subscriptions.lock().all()[0].id.clone();
    let code = sim_post(
        &sim,
        reqwest::Method::POST,
        &format!("/subscriptions/{first}/lifecycle"),
        serde_json::json!({"event": "reauthorizationRequired"}),
    )
    .await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim
        .state
        .subscriptions
        .lock()
        .get(&first)
        .is_some_and(|s| s.reauthorize_since.is_some())
    {
        assert!(Instant::now() < deadline, "never reauthorized");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = sim_post(
        &sim,
        reqwest::Method::POST,
        &format!("/subscriptions/{first}/lifecycle"),
        serde_json::json!({"event": "subscriptionRemoved"}),
    )
    .await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ids = subscription_ids(&sim);
        if ids.len() == parts.len() && !ids.contains(&first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed subscription was not recreated: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missed = sim.state.subscriptions.lock().all()[0].id.clone();
    let code = sim_post(
        &sim,
        reqwest::Method::POST,
        &format!("/subscriptions/{missed}/lifecycle"),
        serde_json::json!({"event": "missed"}),
    )
    .await;
    assert_eq!(code, 200);

    // Every notification dropped: the safety-net polls (5 s here, 10 minutes for the
    // partitions without a live subscription) converge.
    let faults = |drop: f64, dup: f64| serde_json::json!({"drop_probability": drop, "duplicate_probability": dup, "seed": 7});
    assert_eq!(
        sim_post(
            &sim,
            reqwest::Method::PUT,
            "/notifications/faults",
            faults(1.0, 0.0)
        )
        .await,
        200
    );
    graph_sim::generate::mutate(&mut sim.state.store.write(), &mutate(10, 183));
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(30));
    assert!(notification_stats(&sim).dropped > 0);

    // Every notification sent twice: the replays are dropped, nothing is written twice.
    let replayed = graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["change", "replayed"])
        .get();
    assert_eq!(
        sim_post(
            &sim,
            reqwest::Method::PUT,
            "/notifications/faults",
            faults(0.0, 1.0)
        )
        .await,
        200
    );
    graph_sim::generate::mutate(&mut sim.state.store.write(), &mutate(10, 184));
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(20));
    assert!(notification_stats(&sim).duplicated > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["change", "replayed"])
        .get()
        == replayed
    {
        assert!(Instant::now() < deadline, "no replay was told apart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// Two workers behind one ingress (Graph posts every notification to the first): those of
/// the second's subscriptions are forwarded to it, and its partitions' changes converge by
/// notification too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reaching_another_worker_are_forwarded_to_the_owner() {
    let (sim, users) = sim_with_users(6, 3, 2, 191).await;
    let parts = notified_partitions(&sim);
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    spec.poll_interval = Duration::from_secs(600);
    spec.sharding.shards = 4;
    spec.sharding.worker_id = "a".into();
    let (a, spec) = start_with(spec, "127.0.0.1:0", |_| {}).await;
    let mut b_spec = spec.clone();
    b_spec.sharding.worker_id = "b".into();
    let (b, _) = start_behind(b_spec, "127.0.0.1:0", Some(&a.url), |_| {}).await;
    // Both run partitions, and every partition has its subscription, all posting to `a`.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let running = |w: &Notified| {
            w.status
                .partitions
                .lock()
                .values()
                .filter(|s| matches!(s, worker::PartitionState::Running))
                .count()
        };
        let (ra, rb) = (running(&a), running(&b));
        let subs = sim.state.subscriptions.lock().len();
        if ra > 0 && rb > 0 && ra + rb == parts.len() && subs == parts.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a runs {ra}, b runs {rb} of {}; {subs} subscriptions",
            parts.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in sim.state.subscriptions.lock().all() {
        assert_eq!(s.notification_url, format!("{}/notifications", a.url));
    }
    wait_converged_within(&sim, &spec, &parts, Duration::from_secs(60));
    let forwarded = graph_cdc::metrics::metrics()
        .notifications
        .with_label_values(&["forward", "forwarded"])
        .get();
    let m = changes(&users, 30, 192);
    graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
    let took = wait_converged_within(&sim, &spec, &parts, Duration::from_secs(30));
    println!("two workers behind one ingress: 30 changes converged in {took:?}");
    assert!(
        graph_cdc::metrics::metrics()
            .notifications
            .with_label_values(&["forward", "forwarded"])
            .get()
            > forwarded,
        "nothing was forwarded to the second worker"
    );
    for w in [a, b] {
        w.stop.cancel();
        w.task.await.unwrap().unwrap();
    }
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
}

/// `graph-cdc run` processes with notifications on, SIGKILLed right after changes are made
/// (between the notifications and their rounds, or in the middle of them) and started again
/// at once: the topics converge to the truth with nothing committed twice, and the
/// subscriptions made by the first process are the only ones ever made (each restart reuses
/// them from the offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_between_notifications_and_their_rounds_lose_nothing() {
    use rand::Rng as _;
    let (sim, users) = sim_with_users(2, 4, 3, 201).await;
    let notified = notified_partitions(&sim).len();
    let spec = spec(&sim, &bootstrap(), Vec::new());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = config(&spec, &users)
        .replace(
            "poll_interval = \"300ms\"",
            "poll_interval = \"10s\"\npoll_interval_with_notifications = \"10m\"",
        )
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
        + &format!(
            "\n[notifications]\nenabled = true\npublic_url = \"http://127.0.0.1:{port}/notifications\"\n\
             client_state = \"{CLIENT_STATE}\"\nallow_insecure_url = true\n"
        );
    let dir = std::env::temp_dir().join(format!(
        "graph-cdc-notified-crash-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("worker.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut child = KillOnDrop(launch(&cfg));
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    wait_subscriptions(&sim, notified).await;
    // Each subscription written with its partition's offset (heartbeat 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let made = created(&sim);
    assert_eq!(made, notified as u64);
    let mut rng = rand::rng();
    for round in 0..6u64 {
        let m = changes(&users, 8, 210 + round);
        graph_sim::generate::mutate(&mut sim.state.store.write(), &m);
        // The notifications leave after 200 ms; their rounds take a few more.
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..600))).await;
        signal(&child.0, libc::SIGKILL);
        let _ = child.0.wait();
        child = KillOnDrop(launch(&cfg));
    }
    // Lost notifications (sent while no worker listened) are made up for by the restarted
    // worker's first polls, spread over `graph.poll_interval`.
    tokio::task::block_in_place(|| wait_converged(&sim, &spec, WINDOW, Duration::from_secs(90)));
    assert_eq!(duplicates(&all_records(&spec)), Vec::<String>::new());
    assert_eq!(created(&sim), made, "a restart made new subscriptions");
    assert_eq!(sim.state.subscriptions.lock().len(), notified);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A subscription left behind (posting to the connector's URL, for a user of the worker's
/// shards, held by no partition: a worker killed before recording it) is deleted by the
/// worker's sweep; the partitions' own subscriptions stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_left_behind_are_swept() {
    let (sim, users) = sim_with_users(1, 2, 2, 221).await;
    let parts = notified_partitions(&sim);
    let mut spec = spec(&sim, &bootstrap(), parts.clone());
    spec.poll_interval = Duration::from_secs(600);
    let (w, _spec) = start_with(spec, "127.0.0.1:0", |n| {
        n.sweep_after = Some(Duration::from_secs(8));
    })
    .await;
    wait_subscriptions(&sim, parts.len()).await;
    let own = subscription_ids(&sim);
    // The leftover: made by "another incarnation" of this worker, a day to live.
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!("{}/v1.0/subscriptions", sim.url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&serde_json::json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": format!("{}/notifications", w.url),
            "resource": format!("users/{}/events", users[0]),
            "expirationDateTime": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
            "clientState": CLIENT_STATE,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let leftover = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sim.state.subscriptions.lock().len(), parts.len() + 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.state.subscriptions.lock().get(&leftover).is_some() {
        assert!(Instant::now() < deadline, "the leftover was never swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        subscription_ids(&sim),
        own,
        "the partitions' own subscriptions stay"
    );
    w.stop.cancel();
    w.task.await.unwrap().unwrap();
}
