//! Where a hosted transport keeps its queue and record: the worker's redb file (the default),
//! or its own stream and a record in the pool's bucket on JetStream (a pool with
//! `spec.queue.jetstream`). The runtime asks the same of both; the rules of docs/transport.md
//! hold for each.

use std::sync::Arc;

use crate::store::{
    Appended, Limits, NewTxn, Queue, QueueInfo, QueuedEntry, QueuedTxn, RecordKind, Store,
    StoreError, blocking,
    jetstream::{JetStream, Owner, StreamLimits, StreamQueue},
};

/// Where a transport's queue is to be opened.
#[derive(Clone)]
pub enum QueueHome {
    Local(Store),
    JetStream(Box<JetStream>),
}

#[derive(Clone)]
pub enum TransportQueue {
    Local { store: Store, queue: Arc<Queue> },
    Stream(Arc<StreamQueue>),
}

impl TransportQueue {
    /// Open the queue and read the transport's saved record (None: never saved).
    pub async fn open(
        home: &QueueHome,
        key: &str,
        limits: StreamLimits,
        owner: Owner,
    ) -> Result<(Self, Option<Vec<u8>>), StoreError> {
        match home {
            QueueHome::Local(store) => {
                let (store, key) = (store.clone(), key.to_owned());
                blocking(move || {
                    let record = store.load_record(RecordKind::Transport, &key)?;
                    let queue = store.queue(&key)?;
                    Ok((Self::Local { store, queue }, record))
                })
                .await
            }
            QueueHome::JetStream(js) => {
                let queue = StreamQueue::open(js, key, &limits, &owner).await?;
                let record = queue
                    .record()
                    .envelope()
                    .record
                    .map(|r| serde_json::to_vec(&r))
                    .transpose()
                    .map_err(StoreError::encode)?;
                Ok((Self::Stream(Arc::new(queue)), record))
            }
        }
    }

    pub fn info(&self) -> QueueInfo {
        match self {
            Self::Local { queue, .. } => queue.info(),
            Self::Stream(queue) => queue.info(),
        }
    }

    /// Another worker took the transport over: nothing more is delivered or written for it.
    pub fn fenced(&self) -> bool {
        match self {
            Self::Local { .. } => false,
            Self::Stream(queue) => queue.record().fenced(),
        }
    }

    /// Transactions forwarded between two settles: the local queue removes a batch in one
    /// commit; a stream settles each one at once, so a worker fenced by a move delivers at
    /// most the one it had in flight.
    pub fn forward_batch(&self, batch: usize) -> usize {
        match self {
            Self::Local { .. } => batch,
            Self::Stream(_) => 1,
        }
    }

    /// Before a delivery from the queue: still this worker's (JetStream: the record's
    /// revision is the one it wrote; a move fences it here).
    pub async fn check_owned(&self) -> Result<(), StoreError> {
        match self {
            Self::Local { .. } => Ok(()),
            Self::Stream(queue) => Ok(queue.record().check().await?),
        }
    }

    pub async fn append(&self, txn: NewTxn, limits: Limits) -> Result<Appended, StoreError> {
        match self {
            Self::Local { store, queue } => store.append(queue, txn, limits).await,
            Self::Stream(queue) => queue.append(txn, limits).await,
        }
    }

    pub async fn remove(
        &self,
        delivered: Vec<u64>,
        rejected: Vec<u64>,
    ) -> Result<(u64, u64), StoreError> {
        match self {
            Self::Local { store, queue } => store.remove(queue, delivered, rejected).await,
            Self::Stream(queue) => queue.remove(&delivered, &rejected).await,
        }
    }

    /// A batch from the head (or after `after`); `within` never lets one transaction larger
    /// than `max_bytes` through (a read ahead).
    pub async fn read(
        &self,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
        within: bool,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        match self {
            Self::Local { store, queue } => {
                let (store, queue) = (store.clone(), queue.clone());
                blocking(move || {
                    if within {
                        store.read_head_within(&queue, after, max, max_bytes)
                    } else {
                        store.read_head(&queue, after, max, max_bytes)
                    }
                })
                .await
            }
            Self::Stream(queue) if within => queue.read_head_within(after, max, max_bytes).await,
            Self::Stream(queue) => queue.read_head(after, max, max_bytes).await,
        }
    }

    pub async fn expire(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        match self {
            Self::Local { store, queue } => store.expire(queue, cutoff_ms).await,
            Self::Stream(queue) => queue.expire(cutoff_ms).await,
        }
    }

    pub async fn peek_head(&self, limit: usize) -> Result<Vec<QueuedEntry>, StoreError> {
        match self {
            Self::Local { store, queue } => {
                let (store, queue) = (store.clone(), queue.clone());
                blocking(move || store.peek_head(&queue, limit)).await
            }
            Self::Stream(queue) => queue.peek_head(limit).await,
        }
    }

    /// New limits from the spec (a stream is updated; the local queue reads them per append).
    pub async fn configure(&self, limits: &StreamLimits, owner: &Owner) -> Result<(), StoreError> {
        match self {
            Self::Local { .. } => Ok(()),
            Self::Stream(queue) => queue.configure(limits, owner).await,
        }
    }

    /// Save the runtime's record (`value` is its JSON).
    pub async fn save_record(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local { store, .. } => store.save_record(RecordKind::Transport, key, value).await,
            Self::Stream(queue) => {
                let json = serde_json::from_slice(&value).map_err(StoreError::encode)?;
                queue.save_record(json).await
            }
        }
    }
}
