//! The committer: one thread that owns the transactional producer and turns batches into
//! transactions.
//!
//! Batches arriving within `linger` (up to `max_batch_records`) share one transaction; each
//! batch's offset is written in the same transaction as its records, so a `read_committed`
//! consumer sees both or neither. Offsets without records (idle polls, empty pages) cost no
//! transaction of their own: they wait in memory and ride along with the next transaction,
//! or are written together when `heartbeat_interval` has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;
use tokio::sync::{mpsc, oneshot};

use super::producer::TxnProducer;
use super::records::headers;
use super::{SinkError, SinkOptions};
use crate::metrics;
use crate::offsets::{encode_key, encode_value};
use crate::source::{Op, PartitionId, SourceBatch, SourceOffset};

type Ack = oneshot::Sender<Result<(), SinkError>>;

/// Offsets to write directly; `None` resets a partition.
pub type OffsetWrites = Vec<(PartitionId, Option<SourceOffset>)>;

/// What the committer is asked to do.
pub enum SinkMsg {
    /// A page's records and offset; acknowledged once committed or failed.
    Batch { batch: SourceBatch, ack: Ack },
    /// An offset with no records: persisted with the next transaction or heartbeat.
    Idle {
        partition: Arc<PartitionId>,
        offset: SourceOffset,
    },
    /// Offsets to write now in a transaction of their own (`None` resets a partition).
    Offsets {
        offsets: Vec<(PartitionId, Option<SourceOffset>)>,
        ack: Ack,
    },
    /// Write pending idle offsets now, then acknowledge.
    Flush { ack: Ack },
}

/// The worker's end of the committer.
#[derive(Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<SinkMsg>,
}

impl SinkHandle {
    /// Commits a batch (records and offset in one transaction).
    pub async fn commit(&self, batch: SourceBatch) -> Result<(), SinkError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(SinkMsg::Batch { batch, ack })
            .await
            .map_err(|_| SinkError::Stopped)?;
        rx.await.map_err(|_| SinkError::Stopped)?
    }

    /// Hands over an offset that covers no records.
    pub async fn idle(
        &self,
        partition: Arc<PartitionId>,
        offset: SourceOffset,
    ) -> Result<(), SinkError> {
        self.tx
            .send(SinkMsg::Idle { partition, offset })
            .await
            .map_err(|_| SinkError::Stopped)
    }

    /// Writes offsets directly (operator changes; `None` resets).
    pub async fn write_offsets(
        &self,
        offsets: Vec<(PartitionId, Option<SourceOffset>)>,
    ) -> Result<(), SinkError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(SinkMsg::Offsets { offsets, ack })
            .await
            .map_err(|_| SinkError::Stopped)?;
        rx.await.map_err(|_| SinkError::Stopped)?
    }

    /// Persists idle offsets now.
    pub async fn flush(&self) -> Result<(), SinkError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(SinkMsg::Flush { ack })
            .await
            .map_err(|_| SinkError::Stopped)?;
        rx.await.map_err(|_| SinkError::Stopped)?
    }
}

pub struct Committer {
    producer: TxnProducer,
    opts: SinkOptions,
    rx: mpsc::Receiver<SinkMsg>,
    /// Offsets without records, waiting for a transaction.
    idle: HashMap<Arc<PartitionId>, SourceOffset>,
    last_heartbeat: Instant,
}

/// One transaction's worth of work.
#[derive(Default)]
struct Txn {
    batches: Vec<(SourceBatch, Ack)>,
    direct: Vec<(OffsetWrites, Ack)>,
    flushes: Vec<Ack>,
    records: usize,
}

impl Committer {
    /// Creates the producer (initialising transactions fences older incarnations) and starts
    /// the committer thread. Blocking: call from `spawn_blocking` or a plain thread.
    pub fn start(
        opts: SinkOptions,
    ) -> Result<(SinkHandle, std::thread::JoinHandle<Result<(), SinkError>>), SinkError> {
        let producer = TxnProducer::new(&opts)?;
        let (tx, rx) = mpsc::channel(1024);
        let committer = Committer {
            producer,
            opts,
            rx,
            idle: HashMap::new(),
            last_heartbeat: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("graph-cdc-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| SinkError::Setup(format!("starting the committer thread: {e}")))?;
        Ok((SinkHandle { tx }, thread))
    }

    fn run(mut self) -> Result<(), SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| SinkError::Setup(format!("committer runtime: {e}")))?;
        loop {
            let heartbeat_due = self.last_heartbeat + self.opts.heartbeat_interval;
            let first = if self.idle.is_empty() {
                rt.block_on(self.rx.recv()).map(Some)
            } else {
                match rt.block_on(async {
                    tokio::time::timeout_at(heartbeat_due.into(), self.rx.recv()).await
                }) {
                    Ok(m) => m.map(Some),
                    Err(_) => Some(None),
                }
            };
            let mut txn = Txn::default();
            let closed = match first {
                // Every handle is gone: write what is pending and stop.
                None => true,
                Some(None) => false,
                Some(Some(m)) => {
                    self.take(m, &mut txn);
                    self.collect(&rt, &mut txn)
                }
            };
            let heartbeat = Instant::now() >= heartbeat_due || closed || !txn.flushes.is_empty();
            if !txn.batches.is_empty()
                || !txn.direct.is_empty()
                || (heartbeat && !self.idle.is_empty())
            {
                self.transaction(txn)?;
            } else {
                for ack in txn.flushes {
                    let _ = ack.send(Ok(()));
                }
            }
            if closed {
                return Ok(());
            }
        }
    }

    fn take(&mut self, m: SinkMsg, txn: &mut Txn) {
        match m {
            SinkMsg::Batch { batch, ack } => {
                txn.records += batch.records.len();
                txn.batches.push((batch, ack));
            }
            SinkMsg::Idle { partition, offset } => {
                self.idle.insert(partition, offset);
            }
            SinkMsg::Offsets { offsets, ack } => txn.direct.push((offsets, ack)),
            SinkMsg::Flush { ack } => txn.flushes.push(ack),
        }
    }

    /// Gathers more messages for up to `linger`; returns true when the channel closed.
    fn collect(&mut self, rt: &tokio::runtime::Runtime, txn: &mut Txn) -> bool {
        if txn.batches.is_empty() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.opts.linger;
        while txn.records < self.opts.max_batch_records {
            // Take whatever is already queued without waiting.
            match self.rx.try_recv() {
                Ok(m) => {
                    self.take(m, txn);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match rt.block_on(async { tokio::time::timeout_at(deadline, self.rx.recv()).await }) {
                Ok(Some(m)) => self.take(m, txn),
                Ok(None) => return true,
                Err(_) => break,
            }
        }
        false
    }

    fn transaction(&mut self, txn: Txn) -> Result<(), SinkError> {
        let started = Instant::now();
        let result = self.write(&txn);
        let n_batches = txn.batches.len();
        match result {
            Ok(()) => {
                self.idle.clear();
                self.last_heartbeat = Instant::now();
                let mut counts: HashMap<(crate::source::PartitionKind, Op), (u64, u64)> =
                    HashMap::new();
                for (b, _) in &txn.batches {
                    for r in &b.records {
                        let e = counts.entry((b.partition.kind(), r.op)).or_default();
                        e.0 += 1;
                        e.1 += (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64;
                    }
                }
                for ((kind, op), (n, bytes)) in counts {
                    metrics::records_written(kind, op, n, bytes);
                }
                metrics::transaction_committed(txn.records, n_batches, started.elapsed());
                for (_, ack) in txn.batches {
                    let _ = ack.send(Ok(()));
                }
                for (_, ack) in txn.direct {
                    let _ = ack.send(Ok(()));
                }
                for ack in txn.flushes {
                    let _ = ack.send(Ok(()));
                }
                Ok(())
            }
            Err(SinkError::Aborted(why)) => {
                metrics::transaction_aborted(&why, n_batches);
                let abort = self.producer.abort();
                let err = match &abort {
                    Ok(()) => SinkError::Aborted(why),
                    Err(e) => e.clone(),
                };
                for (_, ack) in txn.batches {
                    let _ = ack.send(Err(err.clone()));
                }
                for (_, ack) in txn.direct {
                    let _ = ack.send(Err(err.clone()));
                }
                for ack in txn.flushes {
                    let _ = ack.send(Err(err.clone()));
                }
                // Idle offsets stay pending for the next transaction.
                abort
            }
            Err(e) => {
                tracing::error!(error = %e, "Kafka producer failed; stopping");
                for (_, ack) in txn.batches {
                    let _ = ack.send(Err(e.clone()));
                }
                for (_, ack) in txn.direct {
                    let _ = ack.send(Err(e.clone()));
                }
                for ack in txn.flushes {
                    let _ = ack.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }

    fn write(&self, txn: &Txn) -> Result<(), SinkError> {
        self.producer.begin()?;
        // The last offset of each partition in this transaction, in first-seen order.
        let mut offsets: Vec<(&PartitionId, Option<&SourceOffset>)> = Vec::new();
        let mut seen: HashMap<&PartitionId, usize> = HashMap::new();
        for (batch, _) in &txn.batches {
            let topic = self.opts.topics.for_kind(batch.partition.kind());
            let pjson = batch.partition.to_json();
            for r in &batch.records {
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                    .key(&r.key[..])
                    .headers(headers(r, &pjson));
                if let Some(v) = &r.value {
                    rec = rec.payload(&v[..]);
                }
                self.producer.send(rec)?;
            }
            upsert(
                &mut offsets,
                &mut seen,
                &batch.partition,
                Some(&batch.offset),
            );
            for reset in &batch.resets {
                upsert(&mut offsets, &mut seen, reset, None);
            }
            for start in &batch.starts {
                upsert(&mut offsets, &mut seen, start, Some(&INITIAL));
            }
        }
        for (p, o) in &self.idle {
            // A batch of the same partition in this transaction is newer.
            if !seen.contains_key(&**p) {
                upsert(&mut offsets, &mut seen, p, Some(o));
            }
        }
        for (list, _) in &txn.direct {
            for (p, o) in list {
                upsert(&mut offsets, &mut seen, p, o.as_ref());
            }
        }
        for (p, o) in &offsets {
            let key = encode_key(&self.opts.connector, p);
            let value = o.map(encode_value);
            let mut rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.opts.offsets_topic).key(key.as_bytes());
            if let Some(v) = &value {
                rec = rec.payload(&v[..]);
            }
            self.producer.send(rec)?;
        }
        metrics::metrics()
            .producer_queue
            .set(self.producer.in_flight() as i64);
        self.producer.commit()
    }
}

/// The offset of a partition that starts from its initial request.
static INITIAL: SourceOffset = SourceOffset {
    link: None,
    delta_link: None,
    round: 1,
    resync: false,
};

fn upsert<'a>(
    offsets: &mut Vec<(&'a PartitionId, Option<&'a SourceOffset>)>,
    seen: &mut HashMap<&'a PartitionId, usize>,
    p: &'a PartitionId,
    o: Option<&'a SourceOffset>,
) {
    match seen.get(p) {
        Some(&i) => offsets[i].1 = o,
        None => {
            seen.insert(p, offsets.len());
            offsets.push((p, o));
        }
    }
}

/// How long the committer may need to finish after its handles are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
