//! The committer: one thread that owns the transactional producer and turns batches into
//! transactions.
//!
//! Batches arriving within `linger` (up to `max_batch_records`) share one transaction; each
//! batch's offset and state records (`live/`) are written in the same transaction as its
//! records, so a `read_committed` consumer sees all or none. State records say where the
//! batch's records landed, known only from their delivery reports: rather than wait for
//! those inside the transaction (a round trip more for every transaction), the state
//! records are written with those locations unknown and written again, filled in, first
//! thing in the next transaction (`state.rs`). Offsets without records (idle polls, empty
//! pages) cost no transaction of their own: they wait in memory and ride along with the next
//! transaction, or are written together when `heartbeat_interval` has passed.
//!
//! A record Kafka refuses for good (larger than `message.max.bytes`, a topic the principal
//! may not write…) must not abort the same shared transaction forever: records over the
//! known size limit are caught before they are sent, and refusals reported by delivery are
//! traced back to their batch. That batch is then dead-lettered (`errors.tolerance = all`)
//! or failed alone (`none`), and the transaction is retried with everything else.
//!
//! The worker talks to it through a [`SinkHandle`] (`handle.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;
use tokio::sync::mpsc;

use super::handle::{Ack, IdleOffsets, SinkHandle, SinkMsg};
use super::health::KafkaHealth;
use super::producer::{Refused, Tag, TxnProducer};
use super::records::{dead_letter_headers, headers};
use super::refusals::{screen, suspects, Fault, Known, Pending};
use super::state::{located, write_state, Rewrite};
use super::{Reason, SinkError, SinkOptions};
use crate::metrics;
use crate::offsets::{encode_key, encode_value};
use crate::source::{Loc, Op, PartitionId, SourceOffset};

/// Where the worker's commands find it.
pub use super::handle::OffsetWrites;

pub struct Committer {
    producer: TxnProducer,
    opts: SinkOptions,
    rx: mpsc::Receiver<SinkMsg>,
    /// Offsets without records, waiting for a transaction: taken from `idle_in` (where the
    /// partitions put them) at each transaction and heartbeat.
    idle: HashMap<Arc<PartitionId>, SourceOffset>,
    idle_in: IdleOffsets,
    last_heartbeat: Instant,
    /// `message.max.bytes` of the producer.
    max_message_bytes: usize,
    /// Records Kafka refused (see [`Known`]).
    known_refused: Known,
    /// State records of the last transaction to write again, with where its records landed
    /// (`state.rs`): with the next transaction, or at the heartbeat like idle offsets.
    rewrites: Vec<Rewrite>,
}

/// One transaction's worth of work.
#[derive(Default)]
struct Txn {
    batches: Vec<Pending>,
    direct: Vec<(OffsetWrites, Ack)>,
    flushes: Vec<Ack>,
    records: usize,
}

impl Txn {
    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.direct.is_empty() && self.flushes.is_empty()
    }

    /// Answers every waiter with `r` (batches: with no locations).
    fn answer(self, r: Result<(), SinkError>) {
        self.answer_located(r, Vec::new());
    }

    /// Answers every waiter with `r`, batch `i` with `locs[i]` (where its records landed).
    fn answer_located(self, r: Result<(), SinkError>, locs: Vec<Vec<Loc>>) {
        let mut locs = locs.into_iter();
        for p in self.batches {
            let l = locs.next().unwrap_or_default();
            let _ = p.ack.send(r.clone().map(|()| l));
        }
        for (_, ack) in self.direct {
            let _ = ack.send(r.clone());
        }
        for ack in self.flushes {
            let _ = ack.send(r.clone());
        }
    }
}

/// How a transaction failed.
enum WriteError {
    Sink(SinkError),
    /// Records Kafka refuses for good (found before sending or by their delivery reports).
    Refused(Vec<Refused>),
    /// The commit failed for a reason that is some record's fault, without saying whose.
    Unattributed {
        class: &'static str,
        message: Reason,
    },
}

impl From<SinkError> for WriteError {
    fn from(e: SinkError) -> Self {
        WriteError::Sink(e)
    }
}

/// Attempts of one transaction after refused records were set aside.
const MAX_ATTEMPTS: usize = 4;

impl Committer {
    /// Creates the producer (initialising transactions fences older incarnations) and starts
    /// the committer thread. Blocking: call from `spawn_blocking` or a plain thread.
    pub fn start(
        opts: SinkOptions,
        health: Arc<KafkaHealth>,
    ) -> Result<(SinkHandle, std::thread::JoinHandle<Result<(), SinkError>>), SinkError> {
        let producer = TxnProducer::new(&opts, health)?;
        let (tx, rx) = mpsc::channel(1024);
        let idle_in = IdleOffsets::default();
        let committer = Committer {
            idle_in: idle_in.clone(),
            producer,
            max_message_bytes: opts.max_message_bytes(),
            opts,
            rx,
            idle: HashMap::new(),
            last_heartbeat: Instant::now(),
            known_refused: Known::default(),
            rewrites: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("graph-cdc-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| SinkError::Setup(Reason::because("starting the committer thread", e)))?;
        Ok((SinkHandle::new(tx, idle_in), thread))
    }

    fn run(mut self) -> Result<(), SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| SinkError::Setup(Reason::because("committer runtime", e)))?;
        loop {
            // Idle offsets come without a message: every heartbeat looks for them.
            let heartbeat_due = self.last_heartbeat + self.opts.heartbeat_interval;
            let first = match rt.block_on(async {
                tokio::time::timeout_at(heartbeat_due.into(), self.rx.recv()).await
            }) {
                Ok(m) => m.map(Some),
                Err(_) => Some(None),
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
            if heartbeat {
                self.take_idle();
            }
            if !txn.batches.is_empty()
                || !txn.direct.is_empty()
                || (heartbeat && (!self.idle.is_empty() || !self.rewrites.is_empty()))
            {
                self.transaction(txn)?;
            } else {
                if heartbeat {
                    // Nothing to write: the next heartbeat is an interval away.
                    self.last_heartbeat = Instant::now();
                }
                txn.answer(Ok(()));
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
                txn.batches.push(Pending {
                    batch: *batch,
                    ack,
                    dead: HashMap::new(),
                });
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

    /// Moves the idle offsets the partitions handed over since the last look into the
    /// pending ones (newer replace older: a partition's are handed over in order).
    fn take_idle(&mut self) {
        let taken = std::mem::take(&mut *self.idle_in.lock());
        self.idle.extend(taken);
    }

    /// Commits `txn`, setting aside records Kafka refuses for good and retrying the rest.
    /// The idle offsets handed over before its batches go with it.
    fn transaction(&mut self, mut txn: Txn) -> Result<(), SinkError> {
        self.take_idle();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Records over the known limit are set aside before anything is sent.
            let oversized = screen(&txn.batches, &self.known_refused, self.max_message_bytes);
            if !oversized.is_empty() {
                txn = self.set_aside(txn, oversized);
                if txn.is_empty() && self.idle.is_empty() {
                    return Ok(());
                }
            }
            let (why, refused) = match self.write(&txn) {
                Ok((locs, rewrites)) => {
                    self.rewrites = rewrites;
                    self.committed(txn, started, locs);
                    return Ok(());
                }
                Err(WriteError::Sink(SinkError::Aborted(why))) => (why, Vec::new()),
                Err(WriteError::Refused(r)) => (
                    Reason::new(format!("{} record(s) refused", r.len())),
                    suspects(&txn.batches, r),
                ),
                Err(WriteError::Unattributed { class, message }) if txn.batches.len() > 1 => {
                    // Whose record it is can only be learnt by trying each batch alone.
                    metrics::transaction_aborted(&message, txn.batches.len());
                    if let Err(e) = self.abort() {
                        return give_up(txn, e);
                    }
                    tracing::info!(class, "isolating the batches of a refused transaction");
                    return self.one_by_one(txn);
                }
                Err(WriteError::Unattributed { class, message }) => {
                    let n = txn.batches.first().map_or(0, |p| p.batch.records.len());
                    let all = (0..n)
                        .map(|i| Refused {
                            tag: Tag::new(0, i),
                            class,
                            message: message.to_string(),
                        })
                        .collect::<Vec<_>>();
                    (message, suspects(&txn.batches, all))
                }
                Err(WriteError::Sink(e)) => return give_up(txn, e),
            };
            metrics::transaction_aborted(&why, txn.batches.len());
            if let Err(e) = self.abort() {
                return give_up(txn, e);
            }
            if !refused.is_empty() {
                // librdkafka's idempotence state after a refused produce request can make the
                // retry fail with "skipped sequence numbers" (OUT_OF_ORDER_SEQUENCE_NUMBER):
                // a fresh producer (same transactional.id, which fences the old one) has none.
                if let Err(e) = self.renew_producer() {
                    return give_up(txn, e);
                }
            }
            if refused.is_empty() || attempt >= MAX_ATTEMPTS {
                // Idle offsets stay pending for the next transaction; batches are refetched.
                txn.answer(Err(SinkError::Aborted(why)));
                return Ok(());
            }
            txn = self.set_aside(txn, refused);
            if txn.is_empty() && self.idle.is_empty() {
                return Ok(());
            }
        }
    }

    /// Aborts the open transaction, replacing the producer when librdkafka cannot (see
    /// [`TxnProducer::abort`]): a new producer with the same `transactional.id` fences the
    /// old one and aborts whatever it left open.
    fn abort(&mut self) -> Result<(), SinkError> {
        if self.producer.abort()? {
            return Ok(());
        }
        tracing::warn!("the broker refused to abort an empty transaction; replacing the producer");
        self.renew_producer()
    }

    /// Replaces the producer by a new one with the same `transactional.id` (which fences the
    /// old instance, dropped right after).
    fn renew_producer(&mut self) -> Result<(), SinkError> {
        let health = self.producer.health();
        self.producer = TxnProducer::new(&self.opts, health)?;
        Ok(())
    }

    /// Runs each batch in a transaction of its own (after an unattributed refusal).
    fn one_by_one(&mut self, txn: Txn) -> Result<(), SinkError> {
        let Txn {
            batches,
            direct,
            flushes,
            ..
        } = txn;
        for p in batches {
            let records = p.batch.records.len();
            self.transaction(Txn {
                batches: vec![p],
                records,
                ..Default::default()
            })?;
        }
        if !direct.is_empty() || !flushes.is_empty() {
            self.transaction(Txn {
                direct,
                flushes,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Moves refused records to the dead-letter topic, or fails their batches when errors
    /// are not tolerated (or the dead letter itself was refused).
    fn set_aside(&mut self, mut txn: Txn, refused: Vec<Refused>) -> Txn {
        let mut failed: HashMap<usize, String> = HashMap::new();
        for r in refused {
            let Some(p) = txn.batches.get_mut(r.tag.batch()) else {
                continue;
            };
            let Some(rec) = p.batch.records.get(r.tag.record()) else {
                continue;
            };
            self.known_refused.insert(
                &p.batch.partition,
                rec,
                Fault {
                    class: r.class,
                    message: r.message.clone(),
                },
            );
            let topic = self.opts.topics.for_kind(p.batch.partition.kind());
            let reason = format!(
                "{}: item {} of partition {} to topic '{topic}': {}",
                r.class, rec.id, p.batch.partition, r.message
            );
            let tolerated = self.opts.errors.dead_letter_topic.is_some()
                && !p.dead.contains_key(&r.tag.record());
            if tolerated {
                tracing::warn!(partition = %p.batch.partition, item = %rec.id, class = r.class, error = %r.message, "record refused by Kafka; dead-lettering it");
                p.dead.insert(
                    r.tag.record(),
                    Fault {
                        class: r.class,
                        message: r.message,
                    },
                );
            } else {
                metrics::record_refused(&p.batch.partition, r.class, &reason);
                failed.entry(r.tag.batch()).or_insert(reason);
            }
        }
        let mut kept = Vec::with_capacity(txn.batches.len());
        for (i, p) in txn.batches.into_iter().enumerate() {
            match failed.remove(&i) {
                Some(reason) => {
                    txn.records -= p.batch.records.len();
                    let _ = p.ack.send(Err(SinkError::Rejected(reason)));
                }
                None => kept.push(p),
            }
        }
        txn.batches = kept;
        txn
    }

    fn committed(&mut self, txn: Txn, started: Instant, locs: Vec<Vec<Loc>>) {
        self.idle.clear();
        self.last_heartbeat = Instant::now();
        let mut counts: HashMap<(crate::source::PartitionKind, Op), (u64, u64)> = HashMap::new();
        for p in &txn.batches {
            for (j, r) in p.batch.records.iter().enumerate() {
                if let Some(f) = p.dead.get(&j) {
                    metrics::record_dead_lettered(&p.batch.partition, &r.id, f.class);
                    continue;
                }
                let e = counts.entry((r.partition.kind(), r.op)).or_default();
                e.0 += 1;
                e.1 += (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64;
            }
        }
        for ((kind, op), (n, bytes)) in counts {
            metrics::records_written(kind, op, n, bytes);
        }
        metrics::transaction_committed(txn.records, txn.batches.len(), started.elapsed());
        txn.answer_located(Ok(()), locs);
    }

    /// Writes `txn` and commits it; answers where each batch's records landed and the state
    /// records to write again with those locations (both only when some batch has state
    /// records that need them).
    fn write(&self, txn: &Txn) -> Result<(Vec<Vec<Loc>>, Vec<Rewrite>), WriteError> {
        self.producer.begin()?;
        let refused = |r: Result<Refused, SinkError>| match r {
            Ok(r) => WriteError::Refused(vec![r]),
            Err(e) => WriteError::Sink(e),
        };
        // The last offset of each partition in this transaction, in first-seen order.
        let mut offsets: Vec<(&PartitionId, Option<&SourceOffset>)> = Vec::new();
        let mut seen: HashMap<&PartitionId, usize> = HashMap::new();
        let mut sent = 0;
        for (i, p) in txn.batches.iter().enumerate() {
            let batch = &p.batch;
            let own_json = batch.partition.to_json();
            for (j, r) in batch.records.iter().enumerate() {
                // A removed list's batch carries its tasks' tombstones: their own topic and
                // identity.
                let other_json;
                let pjson = if r.partition == batch.partition {
                    &own_json
                } else {
                    other_json = r.partition.to_json();
                    &other_json
                };
                let topic = self.opts.topics.for_kind(r.partition.kind());
                let tag = Tag::new(i, j).0;
                let rec = match (p.dead.get(&j), &self.opts.errors.dead_letter_topic) {
                    (Some(f), Some(dlq)) => {
                        let h = dead_letter_headers(r, pjson, topic, f.class, &f.message);
                        let rec = BaseRecord::with_opaque_to(dlq.as_str(), tag)
                            .key(&r.key[..])
                            .headers(h);
                        // A record too large for its topic is too large here too: the
                        // dead letter says what it was, the item can be fetched by its id.
                        match &r.value {
                            Some(v) if f.class != "record_too_large" => rec.payload(&v[..]),
                            _ => rec,
                        }
                    }
                    _ => {
                        let rec = BaseRecord::with_opaque_to(topic, tag)
                            .key(&r.key[..])
                            .headers(headers(r, pjson, batch.principal.as_deref()));
                        match &r.value {
                            Some(v) => rec.payload(&v[..]),
                            None => rec,
                        }
                    }
                };
                self.producer.send(rec).map_err(refused)?;
                sent += 1;
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
            let mut rec: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.opts.offsets_topic, Tag::NONE.0)
                    .key(key.as_bytes());
            if let Some(v) = &value {
                rec = rec.payload(&v[..]);
            }
            self.producer.send(rec).map_err(refused)?;
        }
        write_state(
            &self.producer,
            &self.opts.state_topic,
            &self.rewrites,
            &txn.batches,
        )
        .map_err(refused)?;
        metrics::metrics()
            .producer_queue
            .set(self.producer.in_flight() as i64);
        match self.producer.commit() {
            Ok(()) => Ok(located(&self.producer, &txn.batches, sent)),
            Err((e, class)) => {
                let refused = self.producer.refused();
                if !refused.is_empty() {
                    return Err(WriteError::Refused(refused));
                }
                match (e, class) {
                    (SinkError::Aborted(message), Some(class)) => {
                        Err(WriteError::Unattributed { class, message })
                    }
                    (e, _) => Err(WriteError::Sink(e)),
                }
            }
        }
    }
}

/// The producer cannot go on: every waiter of `txn` hears why, and the committer stops.
fn give_up(txn: Txn, e: SinkError) -> Result<(), SinkError> {
    tracing::error!(error = %e, "Kafka producer failed; stopping");
    txn.answer(Err(e.clone()));
    Err(e)
}

/// The offset of a partition that starts from its initial request.
static INITIAL: SourceOffset = SourceOffset::INITIAL;

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
