//! Which shards this worker owns, as Kafka's consumer-group protocol decides (issue 14).
//!
//! Workers of one connector share the work without a coordinator of their own: each runs a
//! consumer in the connector's group, subscribed to a coordination topic whose partitions
//! are the *shards* (the topic carries no data; it exists only to be assigned). The group
//! coordinator then does what a home-made one would have to: it notices members joining,
//! leaving and dying (session timeout), and hands each shard to exactly one member of the
//! current generation. The worker owns the source partitions of its shards.
//!
//! Why these settings:
//! - `cooperative-sticky` (or the KIP-848 `consumer` protocol when the caller's configuration
//!   asks for it): a rebalance moves only what must move, and a member keeps its other
//!   shards running while one is handed over. Both give this module *incremental* callbacks.
//! - The revocation is acknowledged before the rebalance goes on: [`ShardEvent::Revoked`]
//!   carries a `done` answer, and the rebalance callback (on this module's own polling
//!   thread) waits for it, at most `revoke_timeout`. With the cooperative protocol the next
//!   owner is only given a shard in the rebalance round *after* this member gave it up, so
//!   the worker's stopping and committing (or aborting) comes strictly before the next
//!   owner's start.
//! - A member that stopped answering (SIGSTOP, a network partition) is removed by the
//!   coordinator after `session.timeout.ms`, and its shards go to the others. When it comes
//!   back, librdkafka tells it its assignment was *lost* ([`ShardEvent::Revoked`] with
//!   `lost`): the others own those shards already, and what it still holds must be thrown
//!   away (the transactional fencing makes its late commits fail anyway).
//! - Nothing is committed to the group: the coordination topic has no offsets worth keeping;
//!   the connector's offsets live in its own topic, written in its transactions.
//!
//! Heartbeats are librdkafka's own (its background thread); the polling here serves the
//! rebalance callbacks and error events. Everything here is blocking and runs on the
//! `graph-cdc-group` thread, never on the async executor.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, oneshot};

use super::health::HealthContext;
use super::{Reason, SinkError};

/// How often the group thread polls the consumer (serving rebalance callbacks and errors)
/// and looks at its stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`shard_count`] waits before asking again about a topic not settled yet.
const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// What the group tells this worker.
#[derive(Debug)]
pub enum ShardEvent {
    /// Shards now this worker's (their partitions may start once their offsets are read).
    /// Only the shards added by this rebalance; empty when it added none (the worker is in
    /// the group all the same).
    Assigned(Vec<u32>),
    /// Shards to give up. The rebalance waits (at most `revoke_timeout`) until `done` is
    /// answered (or dropped): the worker stops their partitions and commits or aborts what
    /// they hold first.
    Revoked {
        /// The shards given up (never empty).
        shards: Vec<u32>,
        /// The group already gave them to another worker (this one's session timed out, or
        /// it was fenced): their commits will be fenced anyway, and what they hold is to be
        /// dropped, not committed.
        lost: bool,
        /// Answered once the shards' partitions are stopped.
        done: oneshot::Sender<()>,
    },
    /// This worker is out of the group for good (fenced by a process with the same
    /// `worker_id`, or a fatal consumer error): it must stop.
    Failed(String),
}

/// How a worker joins its connector's group.
#[derive(Debug, Clone)]
pub struct MembershipOptions {
    /// The consumer group (`group.id`): one per connector.
    pub group: String,
    /// The coordination topic: its partitions are the shards.
    pub topic: String,
    /// This worker's id (`client.id` is `{group}-{worker_id}`: the group's description names
    /// the member).
    pub worker_id: String,
    /// `session.timeout.ms`: how long a silent member keeps its shards (heartbeats every
    /// third of it). Brokers refuse less than their `group.min.session.timeout.ms` (6 s by
    /// default). Ignored with the `consumer` group protocol, where the broker sets it.
    pub session_timeout: Duration,
    /// How long a revocation waits for `done` before the rebalance goes on without it. It
    /// must stay under `max.poll.interval.ms` (5 minutes unless the configuration says
    /// otherwise), which is also the classic protocol's rebalance timeout.
    pub revoke_timeout: Duration,
}

/// This worker's membership of its connector's group: a consumer polled on a thread of its
/// own, reporting its shards as [`ShardEvent`]s. [`stop`](Self::stop) leaves the group;
/// dropping it without stopping leaves too, but without waiting.
pub struct Membership {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Set by [`Membership::rejoin`], cleared by the group thread once it resubscribed.
    rejoin: Arc<AtomicBool>,
    owned: Arc<Mutex<BTreeSet<u32>>>,
    health: HealthContext,
}

impl Membership {
    /// Joins the group on a thread of its own (`graph-cdc-group`), polling the consumer
    /// every ~100 ms (heartbeats are librdkafka's own; the poll serves the rebalance
    /// callbacks); events go to the returned channel. `config` is the sink's consumer
    /// configuration (`SinkOptions::consumer_config`: the user's security options); the
    /// group's own properties are set over it.
    ///
    /// Fails (`SinkError::Setup`) when the consumer cannot be created or subscribed, or when
    /// `revoke_timeout` is not shorter than `max.poll.interval.ms`.
    pub fn start(
        config: ClientConfig,
        opts: MembershipOptions,
    ) -> Result<(Membership, mpsc::UnboundedReceiver<ShardEvent>), SinkError> {
        let config = group_config(config, &opts)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let health = HealthContext::default();
        let context = GroupContext {
            topic: opts.topic.clone(),
            revoke_timeout: opts.revoke_timeout,
            events: tx.clone(),
            owned: Arc::clone(&owned),
            health: health.clone(),
        };
        let setup =
            |doing: String| move |e: KafkaError| SinkError::Setup(Reason::because(doing, e));
        let consumer: BaseConsumer<GroupContext> = config.create_with_context(context).map_err(
            setup(format!("creating the consumer of group '{}'", opts.group)),
        )?;
        consumer.subscribe(&[&opts.topic]).map_err(setup(format!(
            "subscribing group '{}' to '{}'",
            opts.group, opts.topic
        )))?;
        let stop = Arc::new(AtomicBool::new(false));
        let rejoin = Arc::new(AtomicBool::new(false));
        let flags = (Arc::clone(&stop), Arc::clone(&rejoin));
        let (group, topic) = (opts.group.clone(), opts.topic.clone());
        let thread = thread::Builder::new()
            .name("graph-cdc-group".into())
            .spawn(move || run(consumer, &flags.0, &flags.1, &group, &topic, &tx))
            .map_err(|e| SinkError::Setup(Reason::because("starting the group thread", e)))?;
        tracing::info!(
            group = %opts.group,
            topic = %opts.topic,
            worker_id = %opts.worker_id,
            "joining the workers' group"
        );
        Ok((
            Membership {
                thread: Some(thread),
                stop,
                rejoin,
                owned,
                health,
            },
            rx,
        ))
    }

    /// The shards this worker owns now (sorted): assigned and not revoked yet. A shard
    /// being revoked counts until `done` is answered.
    pub fn owned(&self) -> Vec<u32> {
        self.owned.lock().iter().copied().collect()
    }

    /// Leaves the group and joins it again (every shard is revoked, then whatever the
    /// coordinator assigns arrives): for a worker that finds it cannot write a shard the
    /// group still says is its own (its producer was fenced, see `worker::ownership`).
    pub fn rejoin(&self) {
        self.rejoin.store(true, Ordering::Release);
    }

    /// The most telling connection problem the group's consumer reported in the last two
    /// minutes, in librdkafka's words (why no shard arrives: authentication, TLS…).
    pub fn recent_problem(&self) -> Option<String> {
        self.health.0.recent()
    }

    /// Closes the consumer (the shards are revoked here first: answered at once if the
    /// receiver is gone) and joins the thread. A static member (`group.instance.id`) does not
    /// leave the group: the others get its shards once its session times out, or it gets them
    /// back at once if it restarts under the same id before. Blocking: at most about `revoke_timeout` more than the
    /// broker takes to answer. The last [`ShardEvent::Revoked`] arrives while this waits:
    /// keep serving the receiver meanwhile (from another task or thread), or drop it first.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the group thread panicked");
            }
        }
    }
}

impl Drop for Membership {
    /// Tells the thread to leave the group, without waiting for it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The number of partitions (shards) of `topic`, from the cluster's metadata (blocking, at
/// most about `timeout`). `config` is the sink's consumer configuration. Fails when the topic
/// does not exist. Right after the topic is created the cluster may not know it yet, or not
/// have its leaders: that is asked again until `timeout`.
pub fn shard_count(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<u32, SinkError> {
    let mut config = config.clone();
    // A plain client: metadata needs no group (and a group consumer would start joining).
    config.remove("group.id");
    let doing = || format!("reading the partitions of '{topic}'");
    let failed = |e: KafkaError| SinkError::Setup(Reason::because(doing(), e));
    let client: BaseConsumer<HealthContext> = config
        .create_with_context(HealthContext::default())
        .map_err(failed)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let metadata = client.fetch_metadata(Some(topic), left).map_err(failed)?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        let partitions = found.map_or(0, |t| t.partitions().len());
        let error = found.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
        let settled = found.is_some_and(|t| {
            t.partitions()
                .iter()
                .all(|p| p.error().is_none() && p.leader() >= 0)
        });
        if error.is_none() && partitions > 0 && settled {
            return u32::try_from(partitions).map_err(|_| {
                SinkError::Setup(Reason::new(format!("{}: too many partitions", doing())))
            });
        }
        if Instant::now() + RETRY_INTERVAL >= deadline {
            return Err(match error {
                Some(code) => failed(KafkaError::MetadataFetch(code)),
                None if found.is_none() => SinkError::Setup(Reason::new(format!(
                    "{}: the cluster does not list it",
                    doing()
                ))),
                None if partitions == 0 => {
                    SinkError::Setup(Reason::new(format!("{}: it has no partitions", doing())))
                }
                None => SinkError::Setup(Reason::new(format!(
                    "{}: some partitions have no leader",
                    doing()
                ))),
            });
        }
        tracing::debug!(topic, error = ?error, "topic not settled yet; asking again");
        thread::sleep(RETRY_INTERVAL);
    }
}

/// `base` with the group's own properties (they win over the user's).
fn group_config(
    mut base: ClientConfig,
    opts: &MembershipOptions,
) -> Result<ClientConfig, SinkError> {
    let max_poll = base
        .get("max.poll.interval.ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_millis);
    if opts.revoke_timeout >= max_poll {
        return Err(SinkError::Setup(Reason::new(format!(
            "the revocation timeout ({:?}) must be shorter than max.poll.interval.ms ({:?}): \
             the group would drop this worker while it hands its shards over",
            opts.revoke_timeout, max_poll
        ))));
    }
    base.set("group.id", &opts.group)
        .set("client.id", format!("{}-{}", opts.group, opts.worker_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        // Static membership (KIP-345): a worker restarted under its id (a StatefulSet pod)
        // gets its shards back at once instead of after the dead session's timeout, and a
        // second process with the same id fences the first's membership.
        .set("group.instance.id", &opts.worker_id);
    // The KIP-848 protocol: the broker assigns (incrementally) and sets the session timeout
    // and heartbeat interval itself; librdkafka refuses these properties with it.
    if base.get("group.protocol") != Some("consumer") {
        let session = opts.session_timeout.as_millis();
        base.set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(1).to_string());
    }
    Ok(base)
}

/// The group thread: polls until told to stop, then leaves the group (the consumer's drop
/// closes it, serving the last revocation on this thread).
fn run(
    consumer: BaseConsumer<GroupContext>,
    stop: &AtomicBool,
    rejoin: &AtomicBool,
    group: &str,
    topic: &str,
    events: &mpsc::UnboundedSender<ShardEvent>,
) {
    while !stop.load(Ordering::Acquire) {
        if rejoin.swap(false, Ordering::AcqRel) {
            // Unsubscribing revokes everything (the callback runs on this thread), then the
            // subscription joins again.
            tracing::warn!(group, "rejoining the workers' group");
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[topic]) {
                let why = format!("rejoining the workers' group '{group}': {e}");
                tracing::error!(group, error = %e, "{why}");
                let _ = events.send(ShardEvent::Failed(why));
                break;
            }
        }
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(_)) => {} // the coordination topic carries no data
            // Fenced (another process joined with this `worker_id`) or otherwise unusable:
            // the shards' producers are fenced next, which stops this worker.
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                let why = format!("fenced out of the workers' group '{group}': another worker with this worker_id took its place (or the group consumer failed: {e})");
                tracing::error!(group, error = %e, "{why}");
                let _ = events.send(ShardEvent::Failed(why));
                break;
            }
            Some(Err(e)) => {
                tracing::warn!(group, error = %e, "consumer group error");
            }
        }
    }
    let started = Instant::now();
    // Dropping closes the consumer: revokes what it owns (the callback runs here) and leaves
    // the group, polling until librdkafka says it is closed.
    drop(consumer);
    tracing::info!(group, elapsed = ?started.elapsed(), "left the workers' group");
}

/// The consumer's context: turns rebalance callbacks into [`ShardEvent`]s, waiting for
/// revocations to be answered, and keeps the owned set.
struct GroupContext {
    topic: String,
    revoke_timeout: Duration,
    events: mpsc::UnboundedSender<ShardEvent>,
    owned: Arc<Mutex<BTreeSet<u32>>>,
    /// Keeps the connection problems for [`Membership::recent_problem`].
    health: HealthContext,
}

impl GroupContext {
    /// The shards of `tpl` (the partitions of the coordination topic), sorted.
    fn shards(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut shards: Vec<u32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// Tells the worker to give `shards` up and waits for its answer (at most
    /// `revoke_timeout`), then forgets them.
    fn revoke(&self, shards: Vec<u32>, lost: bool) {
        let started = Instant::now();
        let (done, answer) = oneshot::channel();
        let sent = self
            .events
            .send(ShardEvent::Revoked {
                shards: shards.clone(),
                lost,
                done,
            })
            .is_ok();
        let outcome = if sent {
            wait_for(answer, self.revoke_timeout)
        } else {
            Answer::NoReceiver
        };
        self.owned.lock().retain(|s| !shards.contains(s));
        let elapsed = started.elapsed();
        match outcome {
            Answer::Done | Answer::NoReceiver => {
                tracing::info!(?shards, lost, ?elapsed, "shards revoked");
            }
            Answer::Dropped => tracing::info!(
                ?shards,
                lost,
                ?elapsed,
                "shards revoked (the answer was dropped unanswered)"
            ),
            Answer::TimedOut => tracing::warn!(
                ?shards,
                lost,
                timeout = ?self.revoke_timeout,
                "shards revoked without an answer in time; the rebalance goes on"
            ),
        }
    }
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.health.0.record(code, reason);
        }
        tracing::warn!(topic = %self.topic, error = %error, reason, "consumer group client error");
    }
}

impl ConsumerContext for GroupContext {
    /// Before librdkafka unassigns: the worker gives the revoked shards up first.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let shards = self.shards(tpl);
                if shards.is_empty() {
                    return;
                }
                self.revoke(shards, consumer.assignment_lost());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
                tracing::warn!(topic = %self.topic, error = %e, ?code, "rebalance error");
            }
        }
    }

    /// After librdkafka assigned (incrementally): the new shards are the worker's.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let shards = self.shards(tpl);
        // An empty assignment still says the worker is in the group (with nothing to do:
        // more workers than shards), which readiness wants to hear.
        if shards.is_empty() {
            let _ = self.events.send(ShardEvent::Assigned(shards));
            return;
        }
        // Nothing is read from the shards: no fetching.
        if let Err(e) = consumer.pause(tpl) {
            tracing::debug!(topic = %self.topic, error = %e, "pausing the assigned shards failed");
        }
        self.owned.lock().extend(shards.iter().copied());
        tracing::info!(?shards, "shards assigned");
        if self.events.send(ShardEvent::Assigned(shards)).is_err() {
            tracing::debug!(topic = %self.topic, "no receiver for the assigned shards");
        }
    }
}

/// How a revocation ended.
enum Answer {
    Done,
    /// `done` was dropped without an answer.
    Dropped,
    /// Nobody listens any more.
    NoReceiver,
    TimedOut,
}

/// Wakes the waiting (group) thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits on this (non-async) thread for `answer`, at most `timeout`.
fn wait_for(mut answer: oneshot::Receiver<()>, timeout: Duration) -> Answer {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + timeout;
    loop {
        match Pin::new(&mut answer).poll(&mut cx) {
            Poll::Ready(Ok(())) => return Answer::Done,
            Poll::Ready(Err(_)) => return Answer::Dropped,
            Poll::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Answer::TimedOut;
        }
        thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MembershipOptions {
        MembershipOptions {
            group: "cdc".into(),
            topic: "cdc-shards".into(),
            worker_id: "w1".into(),
            session_timeout: Duration::from_secs(9),
            revoke_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_group_properties_win_over_the_users() {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", "b:9092")
            .set("enable.auto.commit", "true")
            .set("socket.keepalive.enable", "true");
        let c = group_config(base, &opts()).expect("config");
        assert_eq!(c.get("group.id"), Some("cdc"));
        assert_eq!(c.get("client.id"), Some("cdc-w1"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("session.timeout.ms"), Some("9000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("3000"));
        // librdkafka accepts it.
        let consumer: Result<BaseConsumer, _> = c.create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }

    #[test]
    fn the_consumer_protocol_leaves_the_timing_to_the_broker() {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", "b:9092")
            .set("group.protocol", "consumer");
        let c = group_config(base, &opts()).expect("config");
        assert_eq!(c.get("partition.assignment.strategy"), None);
        assert_eq!(c.get("session.timeout.ms"), None);
        let consumer: Result<BaseConsumer, _> = c.create();
        assert!(
            consumer.is_ok(),
            "librdkafka refuses the classic-only properties"
        );
    }

    #[test]
    fn a_revocation_must_fit_in_the_poll_interval() {
        let mut base = ClientConfig::new();
        base.set("max.poll.interval.ms", "20000");
        let e = group_config(base, &opts()).map(drop).expect_err("refused");
        assert!(e.to_string().contains("max.poll.interval.ms"), "{e}");
    }

    #[test]
    fn waiting_for_an_answer_ends_with_it_or_at_the_deadline() {
        let (tx, rx) = oneshot::channel();
        let answering = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            tx.send(()).ok();
        });
        let started = Instant::now();
        assert!(matches!(
            wait_for(rx, Duration::from_secs(10)),
            Answer::Done
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        answering.join().ok();
        let (tx, rx) = oneshot::channel::<()>();
        drop(tx);
        assert!(matches!(
            wait_for(rx, Duration::from_secs(10)),
            Answer::Dropped
        ));
        let (_tx, rx) = oneshot::channel::<()>();
        let started = Instant::now();
        assert!(matches!(
            wait_for(rx, Duration::from_millis(100)),
            Answer::TimedOut
        ));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
