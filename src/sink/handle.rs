//! The worker's end of the committer: what it can ask (commit a batch, hand over an idle
//! offset, write offsets, flush) and the answers it waits for.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::SinkError;
use crate::source::{Loc, PartitionId, SourceBatch, SourceOffset};

/// Where the committer answers a request.
pub type Ack = oneshot::Sender<Result<(), SinkError>>;

/// Where the committer answers a batch: once committed, where each of its records landed
/// in its topic (empty unless the batch has state records that need it; [`Loc::NONE`] for
/// a record that did not reach its topic).
pub type BatchAck = oneshot::Sender<Result<Vec<Loc>, SinkError>>;

/// Offsets to write directly; `None` resets a partition.
pub type OffsetWrites = Vec<(PartitionId, Option<SourceOffset>)>;

/// Offsets with no records, waiting for the committer's next transaction or heartbeat: a
/// map the partitions write and the committer drains, not messages, so that an idle poll
/// (100,000 partitions: 1,700 a second) does not wake the committer's thread (issue 15).
pub(super) type IdleOffsets = Arc<Mutex<rustc_hash::FxHashMap<Arc<PartitionId>, SourceOffset>>>;

/// Idle offsets waiting that make the committer write them without waiting for its
/// heartbeat.
pub const IDLE_FLUSH_AT: usize = 2048;

/// What the committer is asked to do.
pub enum SinkMsg {
    /// A page's records, state and offset; acknowledged once committed or failed.
    Batch {
        batch: Box<SourceBatch>,
        ack: BatchAck,
    },
    /// Offsets to write now in a transaction of their own (`None` resets a partition).
    Offsets { offsets: OffsetWrites, ack: Ack },
    /// Write pending idle offsets now, then acknowledge.
    Flush { ack: Ack },
}

/// The worker's end of the committer.
#[derive(Clone)]
pub struct SinkHandle {
    tx: mpsc::Sender<SinkMsg>,
    idle: IdleOffsets,
}

impl SinkHandle {
    /// The handle of the committer reading `tx`'s channel and draining `idle`.
    pub(super) fn new(tx: mpsc::Sender<SinkMsg>, idle: IdleOffsets) -> Self {
        Self { tx, idle }
    }

    /// Commits a batch (records, state and offset in one transaction).
    pub async fn commit(&self, batch: SourceBatch) -> Result<(), SinkError> {
        self.commit_located(batch).await.map(drop)
    }

    /// [`Self::commit`], answering where each record landed (see [`BatchAck`]).
    pub async fn commit_located(&self, batch: SourceBatch) -> Result<Vec<Loc>, SinkError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(SinkMsg::Batch {
                batch: Box::new(batch),
                ack,
            })
            .await
            .map_err(|_| SinkError::Stopped)?;
        rx.await.map_err(|_| SinkError::Stopped)?
    }

    /// Hands over an offset that covers no records: persisted with the next transaction or
    /// heartbeat (a later one of the same partition replaces it).
    pub async fn idle(
        &self,
        partition: Arc<PartitionId>,
        offset: SourceOffset,
    ) -> Result<(), SinkError> {
        if self.tx.is_closed() {
            return Err(SinkError::Stopped);
        }
        let pending = {
            let mut idle = self.idle.lock();
            idle.insert(partition, offset);
            idle.len()
        };
        // Written before the heartbeat once this many wait: 100,000 partitions polled every
        // minute would otherwise pile 50,000 offsets into each 30 s heartbeat's transaction
        // (tens of MB in the maps and the producer's queue at once: issue 15). Nobody waits
        // for this flush; a full channel means a transaction is coming anyway.
        if pending == IDLE_FLUSH_AT {
            let (ack, _) = oneshot::channel();
            let _ = self.tx.try_send(SinkMsg::Flush { ack });
        }
        Ok(())
    }

    /// Writes offsets directly (operator changes; `None` resets).
    pub async fn write_offsets(&self, offsets: OffsetWrites) -> Result<(), SinkError> {
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
