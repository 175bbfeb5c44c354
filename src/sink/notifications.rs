//! The Kafka side of change notifications delivered through Azure Event Hubs (issue 16;
//! README, "Change notifications"): a consumer of the hub through Event Hubs'
//! Kafka-compatible endpoint (`<namespace>.servicebus.windows.net:9093`, SASL_SSL, PLAIN with
//! user `$ConnectionString` and the connection string as password), in a consumer group,
//! with `enable.auto.commit=false`: the worker commits a message's offset only once the
//! rounds it triggered are committed ([`HubConsumer::commit`]).
//!
//! librdkafka's blocking calls run on a thread of their own; messages reach the async side
//! through a bounded channel, commits go the other way. Each message carries the
//! assignment's *epoch* (bumped at every rebalance): a commit of an older epoch is dropped,
//! so a worker never commits an offset of a partition it gave up (the group re-reads from
//! the last committed offset, and a replayed notification only triggers rounds again).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics;
use crate::redact::{MaskedMap, Secret};

/// Messages read ahead of the worker at most.
const AHEAD: usize = 1024;

/// How the worker reads the event hub.
#[derive(Clone)]
pub struct HubOptions {
    /// `notifications.eventhub.bootstrap_servers`.
    pub bootstrap_servers: String,
    /// `notifications.eventhub.topic`: the hub.
    pub topic: String,
    /// `notifications.eventhub.consumer_group`.
    pub group: String,
    /// `notifications.eventhub.connection_string` (`Debug` masks it).
    pub connection_string: Option<Secret>,
    /// `notifications.eventhub.options`, applied last (`Debug` masks secret-looking values).
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("connection_string", &self.connection_string)
            .field("options", &MaskedMap(&self.options))
            .finish()
    }
}

impl HubOptions {
    /// The consumer's librdkafka configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A group new to the hub reads what it holds (a replay only triggers rounds).
            .set("auto.offset.reset", "earliest")
            // Event Hubs' recommendations for Kafka clients (Azure docs,
            // event-hubs/apache-kafka-configurations).
            .set("socket.keepalive.enable", "true")
            .set("metadata.max.age.ms", "180000")
            .set("session.timeout.ms", "30000")
            .set("heartbeat.interval.ms", "3000")
            .set_log_level(RDKafkaLogLevel::Warning);
        if let Some(cs) = &self.connection_string {
            c.set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", "$ConnectionString")
                .set("sasl.password", cs.expose());
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

impl HubOptions {
    /// Builds the consumer without connecting anywhere and reports each property librdkafka
    /// refuses, naming its key (the connection string never appears in them).
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        let mut base = self.clone();
        base.options = BTreeMap::new();
        for (k, v) in &self.options {
            let mut c = base.client_config();
            c.set(k, v);
            if let Err(e) = c.create::<BaseConsumer>() {
                errs.push(format!("notifications.eventhub.options.\"{k}\": {e}"));
            }
        }
        if errs.is_empty() {
            if let Err(e) = self.client_config().create::<BaseConsumer>() {
                errs.push(format!("notifications.eventhub: {e}"));
            }
        }
        match errs.is_empty() {
            true => Ok(()),
            false => Err(errs),
        }
    }
}

/// One message of the hub: a notification collection (`{"value":[…]}`).
#[derive(Debug)]
pub struct HubMessage {
    /// The assignment it was read under (see the module's doc).
    pub epoch: u64,
    /// Its Kafka partition and offset.
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// Offsets to commit: for each partition, the next offset to read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HubCommit {
    pub epoch: u64,
    pub next: BTreeMap<i32, i64>,
}

/// Why the hub's consumer did not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("notifications.eventhub: cannot create the consumer: {0}")]
    Create(KafkaError),
    #[error("notifications.eventhub.topic: cannot subscribe to '{topic}': {why}")]
    Subscribe { topic: String, why: KafkaError },
    #[error("notifications.eventhub: the consumer's thread did not start: {0}")]
    Thread(std::io::Error),
}

struct HubContext {
    epoch: Arc<AtomicU64>,
}

impl ClientContext for HubContext {
    fn error(&self, error: KafkaError, reason: &str) {
        metrics::eventhub_consumer_error(&error.to_string(), reason);
    }
}

impl ConsumerContext for HubContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::eventhub_assigned(tpl.count());
        }
    }
}

/// The hub's consumer, on its own thread until dropped.
pub struct HubConsumer {
    commits: std::sync::mpsc::Sender<HubCommit>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubConsumer {
    /// Joins the group on the hub and starts reading it (blocking: call off the executor).
    pub fn start(
        opts: &HubOptions,
    ) -> Result<(Self, tokio::sync::mpsc::Receiver<HubMessage>), HubError> {
        let epoch = Arc::new(AtomicU64::new(0));
        let ctx = HubContext {
            epoch: epoch.clone(),
        };
        let consumer: BaseConsumer<HubContext> = opts
            .client_config()
            .create_with_context(ctx)
            .map_err(HubError::Create)?;
        consumer
            .subscribe(&[opts.topic.as_str()])
            .map_err(|why| HubError::Subscribe {
                topic: opts.topic.clone(),
                why,
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        let (commits, commit_rx) = std::sync::mpsc::channel::<HubCommit>();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let topic = opts.topic.clone();
        let thread = std::thread::Builder::new()
            .name("eventhub-consumer".into())
            .spawn(move || read(consumer, &topic, &epoch, &tx, &commit_rx, &halt))
            .map_err(HubError::Thread)?;
        let me = Self {
            commits,
            stop,
            thread: Some(thread),
        };
        Ok((me, rx))
    }

    /// Commits `c` (on the consumer's thread, soon), unless a rebalance came in between.
    pub fn commit(&self, c: HubCommit) {
        let _ = self.commits.send(c);
    }

    /// Stops reading, after the commits asked so far (blocking: call off the executor).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HubConsumer {
    fn drop(&mut self) {
        // Not joined here (a drop may happen on the executor): the thread sees the flag.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The consumer's thread: polls, hands messages over, carries out commits.
fn read(
    consumer: BaseConsumer<HubContext>,
    topic: &str,
    epoch: &AtomicU64,
    tx: &tokio::sync::mpsc::Sender<HubMessage>,
    commits: &std::sync::mpsc::Receiver<HubCommit>,
    stop: &AtomicBool,
) {
    let commit_all = |consumer: &BaseConsumer<HubContext>| {
        while let Ok(c) = commits.try_recv() {
            commit(consumer, topic, epoch.load(Ordering::SeqCst), c);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        commit_all(&consumer);
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                metrics::eventhub_consumer_error(&e.to_string(), "poll");
                continue;
            }
        };
        let msg = HubMessage {
            epoch: epoch.load(Ordering::SeqCst),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().unwrap_or_default().to_vec(),
        };
        drop(m);
        // The worker is behind: wait for room, still carrying out its commits.
        let mut msg = Some(msg);
        while let Some(m) = msg.take() {
            match tx.try_send(m) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(m)) => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    commit_all(&consumer);
                    std::thread::sleep(Duration::from_millis(10));
                    msg = Some(m);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    commit_all(&consumer);
    consumer.unsubscribe();
}

/// Commits `c` if it is of the current assignment `now`.
fn commit(consumer: &BaseConsumer<HubContext>, topic: &str, now: u64, c: HubCommit) {
    if c.epoch != now || c.next.is_empty() {
        metrics::eventhub_committed("stale", c.next.len());
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &c.next {
        if tpl
            .add_partition_offset(topic, *p, Offset::Offset(*next))
            .is_err()
        {
            return;
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => metrics::eventhub_committed("ok", c.next.len()),
        Err(e) => {
            metrics::eventhub_committed("failed", c.next.len());
            metrics::eventhub_consumer_error(&e.to_string(), "commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_string_is_the_sasl_password_and_never_debugged() {
        let mut o = HubOptions {
            bootstrap_servers: "ns.servicebus.windows.net:9093".into(),
            topic: "graph".into(),
            group: "graph-cdc.notifications".into(),
            connection_string: Some(Secret::new("Endpoint=sb://ns/;SharedAccessKey=hush")),
            options: BTreeMap::new(),
        };
        let c = o.client_config();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(c.get("sasl.username"), Some("$ConnectionString"));
        assert_eq!(
            c.get("sasl.password"),
            Some("Endpoint=sb://ns/;SharedAccessKey=hush")
        );
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert!(!format!("{o:?}").contains("hush"));
        // The test bed's overrides come last.
        o.options
            .insert("security.protocol".into(), "plaintext".into());
        assert_eq!(
            o.client_config().get("security.protocol"),
            Some("plaintext")
        );
        assert_eq!(o.check(), Ok(()));
        o.options.insert("fetch.wait.max.ms".into(), "soon".into());
        let errs = o.check().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("notifications.eventhub.options.\"fetch.wait.max.ms\""),
            "{errs:?}"
        );
        assert!(!errs[0].contains("hush"));
        o.options
            .insert("sasl.password".into(), "hushed-too".into());
        assert!(!format!("{o:?}").contains("hushed-too"));
    }
}
