//! The transactional producer. Every call here blocks: it runs on the committer's own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::util::Timeout;

use super::{SinkError, SinkOptions};

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

pub struct TxnProducer {
    inner: Arc<BaseProducer<DefaultProducerContext>>,
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
    pub fn new(opts: &SinkOptions) -> Result<Self, SinkError> {
        let mut cfg = opts.client_config();
        cfg.set("transactional.id", &opts.transactional_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                opts.transaction_timeout.as_millis().to_string(),
            )
            // Same partitioning as Java clients, so keys land where Kafka Connect would put them.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        let inner: Arc<BaseProducer<DefaultProducerContext>> = Arc::new(
            cfg.create()
                .map_err(|e| SinkError::Setup(format!("creating the producer: {e}")))?,
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
                .map_err(|e| SinkError::Setup(format!("starting the poll thread: {e}")))?
        };
        let p = Self {
            inner,
            timeout,
            stop,
            poller: Some(poller),
        };
        p.retrying(|p| p.inner.init_transactions(Timeout::After(p.timeout)))
            .map_err(|e| match e {
                SinkError::Aborted(m) => {
                    SinkError::Setup(format!("initialising transactions: {m}"))
                }
                other => other,
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
                    TxnErrorClass::Fatal => return Err(SinkError::Fatal(e.to_string())),
                    _ => return Err(SinkError::Aborted(e.to_string())),
                },
            }
        }
    }

    pub fn begin(&self) -> Result<(), SinkError> {
        self.retrying(|p| p.inner.begin_transaction())
    }

    /// Queues one record, waiting while librdkafka's queue is full.
    pub fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), SinkError> {
        let mut record = record;
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.inner.poll(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(match classify(&e) {
                        TxnErrorClass::Fatal => SinkError::Fatal(e.to_string()),
                        _ => SinkError::Aborted(e.to_string()),
                    })
                }
            }
        }
    }

    pub fn commit(&self) -> Result<(), SinkError> {
        self.retrying(|p| p.inner.commit_transaction(Timeout::After(p.timeout)))
    }

    /// Aborts the open transaction; failing to abort is fatal.
    pub fn abort(&self) -> Result<(), SinkError> {
        self.retrying(|p| p.inner.abort_transaction(Timeout::After(p.timeout)))
            .map_err(|e| match e {
                SinkError::Aborted(m) => SinkError::Fatal(format!("abort failed: {m}")),
                other => other,
            })
    }

    /// Messages queued and not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}
