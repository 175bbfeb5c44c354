//! The transactional producer. Every call here blocks: it runs on the committer's own thread.
//!
//! Each record is sent with a tag (see [`Tag`]); delivery reports of records Kafka refused
//! for good are kept, so the committer can tell which batch of a failed transaction is at
//! fault instead of aborting the same transaction forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;

use super::health::KafkaHealth;
use super::{Reason, SinkError, SinkOptions};

/// What to do about a failed transactional call (librdkafka's own classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnErrorClass {
    /// Call it again.
    Retriable,
    /// Abort the transaction and redo its work.
    Abort,
    /// The producer is unusable (e.g. fenced): stop the worker.
    Fatal,
}

/// Classifies an error of a transactional call.
pub fn classify(e: &KafkaError) -> TxnErrorClass {
    match e {
        KafkaError::Transaction(r) if r.is_fatal() => TxnErrorClass::Fatal,
        KafkaError::Transaction(r) if r.txn_requires_abort() => TxnErrorClass::Abort,
        KafkaError::Transaction(r) if r.is_retriable() => TxnErrorClass::Retriable,
        _ if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fenced)
            || e.rdkafka_error_code() == Some(RDKafkaErrorCode::ProducerFenced) =>
        {
            TxnErrorClass::Fatal
        }
        _ => TxnErrorClass::Abort,
    }
}

/// A fatal error as the sink says it: [`SinkError::Fenced`] when another producer took the
/// transactional id over (the shard moved), [`SinkError::Fatal`] otherwise.
pub fn fatal(e: KafkaError) -> SinkError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced) => {
            SinkError::Fenced(Reason::from_cause(e))
        }
        _ => SinkError::Fatal(Reason::from_cause(e)),
    }
}

/// Why Kafka refuses a record for good (sending it again cannot help), as the class named in
/// dead-letter headers; `None` for errors worth retrying.
pub fn record_fault_class(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            "record_too_large"
        }
        C::TopicAuthorizationFailed => "topic_authorization_failed",
        C::InvalidRecord | C::InvalidMessage => "invalid_record",
        C::InvalidTopic => "invalid_topic",
        C::PolicyViolation => "policy_violation",
        _ => return None,
    })
}

/// A record's place in a transaction: `(batch index, record index)` packed in a `usize`;
/// [`Tag::NONE`] for records that belong to no batch (offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub usize);

impl Tag {
    pub const NONE: Tag = Tag(usize::MAX);

    pub fn new(batch: usize, record: usize) -> Self {
        Tag((batch << 32) | (record & 0xffff_ffff))
    }

    pub fn batch(self) -> usize {
        self.0 >> 32
    }

    pub fn record(self) -> usize {
        self.0 & 0xffff_ffff
    }
}

/// A record Kafka refused for good during the current transaction.
#[derive(Debug, Clone)]
pub struct Refused {
    pub tag: Tag,
    pub class: &'static str,
    pub message: String,
}

/// The producer's context: connection health, refusals of the current transaction, and
/// where its tagged records landed.
#[derive(Default)]
pub struct TxnContext {
    pub health: Arc<KafkaHealth>,
    refused: Mutex<Vec<Refused>>,
    /// `(tag, partition, offset)` of each tagged record delivered in this transaction.
    delivered: Mutex<Vec<(Tag, i32, i64)>>,
}

impl ClientContext for TxnContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.health.record(code, reason);
        }
        tracing::warn!(error = %error, reason, "Kafka client error");
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, tag: usize) {
        if let (Ok(m), false) = (r, tag == Tag::NONE.0) {
            use rdkafka::Message as _;
            self.delivered
                .lock()
                .push((Tag(tag), m.partition(), m.offset()));
        }
        if let Err((e, _)) = r {
            let class = e.rdkafka_error_code().and_then(record_fault_class);
            if let (Some(class), false) = (class, tag == Tag::NONE.0) {
                self.refused.lock().push(Refused {
                    tag: Tag(tag),
                    class,
                    message: e.to_string(),
                });
            }
        }
    }
}

pub struct TxnProducer {
    inner: Arc<BaseProducer<TxnContext>>,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

/// How often delivery reports are served. rdkafka's `ThreadedProducer` polls with a 100 ms
/// timeout whose last sub-millisecond rounds down to 0 and spins: ~1% of a core on an idle
/// worker. Polling without a timeout, then sleeping, costs nothing measurable.
const POLL_EVERY: Duration = Duration::from_millis(50);

impl Drop for TxnProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}

impl TxnProducer {
    /// Creates the producer and initialises transactions, which fences any previous
    /// incarnation with the same `transactional.id` and aborts its open transaction.
    pub fn new(opts: &SinkOptions, health: Arc<KafkaHealth>) -> Result<Self, SinkError> {
        let ctx = TxnContext {
            health,
            ..TxnContext::default()
        };
        let inner: Arc<BaseProducer<TxnContext>> = Arc::new(
            opts.producer_config()
                .create_with_context(ctx)
                .map_err(|e| SinkError::Setup(Reason::because("creating the producer", e)))?,
        );
        let timeout = Duration::from_secs(30).max(opts.transaction_timeout);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("producer-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        inner.poll(Duration::ZERO);
                        std::thread::sleep(POLL_EVERY);
                    }
                })
                .map_err(|e| SinkError::Setup(Reason::because("starting the poll thread", e)))?
        };
        let p = Self {
            inner,
            timeout,
            stop,
            poller: Some(poller),
        };
        p.retrying(|p| p.inner.init_transactions(Timeout::After(p.timeout)))
            .map_err(|e| {
                let why = p.inner.context().health.recent();
                match (e, why) {
                    (SinkError::Aborted(m) | SinkError::Fatal(m), Some(why)) => SinkError::Setup(
                        m.reworded(|m| format!("initialising transactions: {m}: {why}")),
                    ),
                    (SinkError::Aborted(m), None) => {
                        SinkError::Setup(m.reworded(|m| format!("initialising transactions: {m}")))
                    }
                    (other, _) => other,
                }
            })?;
        Ok(p)
    }

    /// Runs `f` until it succeeds, retrying retriable errors a few times.
    fn retrying(&self, f: impl Fn(&Self) -> Result<(), KafkaError>) -> Result<(), SinkError> {
        let mut tries = 0;
        loop {
            match f(self) {
                Ok(()) => return Ok(()),
                Err(e) => match classify(&e) {
                    TxnErrorClass::Retriable if tries < 5 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100 << tries));
                    }
                    TxnErrorClass::Fatal => return Err(fatal(e)),
                    _ => return Err(SinkError::Aborted(Reason::from_cause(e))),
                },
            }
        }
    }

    pub fn begin(&self) -> Result<(), SinkError> {
        self.inner.context().refused.lock().clear();
        self.inner.context().delivered.lock().clear();
        self.retrying(|p| p.inner.begin_transaction())
    }

    /// Queues one record, waiting while librdkafka's queue is full. A record librdkafka
    /// refuses at once for good comes back as `Err(Ok(refusal))`.
    pub fn send(
        &self,
        record: BaseRecord<'_, [u8], [u8], usize>,
    ) -> Result<(), Result<Refused, SinkError>> {
        let mut record = record;
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.inner.poll(Duration::from_millis(5));
                }
                Err((e, r)) => {
                    let class = e.rdkafka_error_code().and_then(record_fault_class);
                    return Err(match (class, Tag(r.delivery_opaque)) {
                        (Some(class), tag) if tag != Tag::NONE => Ok(Refused {
                            tag,
                            class,
                            message: e.to_string(),
                        }),
                        _ => Err(match classify(&e) {
                            TxnErrorClass::Fatal => fatal(e),
                            _ => SinkError::Aborted(Reason::from_cause(e)),
                        }),
                    });
                }
            }
        }
    }

    /// Commits; a failure comes with the record-fault class of its error code, if any.
    pub fn commit(&self) -> Result<(), (SinkError, Option<&'static str>)> {
        let class = std::cell::Cell::new(None);
        self.retrying(|p| {
            p.inner
                .commit_transaction(Timeout::After(p.timeout))
                .inspect_err(|e| class.set(e.rdkafka_error_code().and_then(record_fault_class)))
        })
        .map_err(|e| (e, class.get()))
    }

    /// The records refused for good since the transaction began (after a failed commit).
    pub fn refused(&self) -> Vec<Refused> {
        // Serve delivery reports still queued: a commit can fail before they are served.
        for _ in 0..10 {
            self.inner.poll(Duration::from_millis(10));
        }
        self.inner.context().refused.lock().clone()
    }

    /// Aborts the open transaction; failing to abort is fatal. `Ok(false)`: the broker
    /// answered the abort with `INVALID_TXN_STATE`, which librdkafka takes as fatal although
    /// nothing of the transaction reached any partition: it sends `EndTxn` even when every
    /// `AddPartitionsToTxn` failed (librdkafka#4849, seen here after a topic authorization
    /// failure). Such a producer must be replaced, not the worker stopped.
    pub fn abort(&self) -> Result<bool, SinkError> {
        let invalid_state = std::cell::Cell::new(false);
        let r = self.retrying(|p| {
            p.inner
                .abort_transaction(Timeout::After(p.timeout))
                .inspect_err(|e| {
                    invalid_state.set(
                        e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTransactionalState),
                    )
                })
        });
        match r {
            Ok(()) => Ok(true),
            Err(_) if invalid_state.get() => Ok(false),
            Err(SinkError::Aborted(m)) => Err(SinkError::Fatal(
                m.reworded(|m| format!("abort failed: {m}")),
            )),
            Err(other) => Err(other),
        }
    }

    /// Where the tagged records of this transaction delivered since the last call landed,
    /// `(tag, partition, offset)`; waits a millisecond when there are none yet.
    pub fn take_delivered(&self) -> Vec<(Tag, i32, i64)> {
        let ctx = self.inner.context();
        // Serves delivery reports here (the poll thread does so only every 50 ms): a poll
        // without a timeout serves one event, a batch of reports; rdkafka's `flush` and
        // timed `poll` would wait out their whole timeout (100 ms slices) instead.
        let reported = || ctx.delivered.lock().len();
        for _ in 0..64 {
            let before = reported();
            self.inner.poll(Duration::ZERO);
            if reported() == before {
                break;
            }
        }
        let taken = std::mem::take(&mut *ctx.delivered.lock());
        if taken.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        taken
    }

    /// The connection health this producer reports into.
    pub fn health(&self) -> Arc<KafkaHealth> {
        self.inner.context().health.clone()
    }

    /// Messages queued and not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
