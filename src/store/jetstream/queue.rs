//! A transport's Store and Forward queue on its own JetStream stream (docs/transport.md: the
//! same rules as the local queue). One worker owns it at a time, through its [`OwnedRecord`]:
//!
//! - an append is a publish with the transaction's id as `Nats-Msg-Id` (a producer's retry is
//!   stored once), answered only once the stream acknowledged it, which it does after a
//!   quorum of its replicas wrote it;
//! - every outcome settles the queue from its head: the record's `settled.seq` moves past the
//!   transaction and its outcome is counted, by compare-and-swap (so a fenced worker settles
//!   nothing), and only then is it purged from the stream (a purge lost to a crash is done
//!   again by the next owner; a settled transaction is never delivered again);
//! - what the server expired itself (`max_age`, the backstop while no worker looked after the
//!   queue) is counted as expired by the next owner.
//!
//! `stored` is the stream's last sequence, so the ledger stored = forwarded + rejected +
//! expired + dropped + queued holds exactly across owners.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        stream::{DirectGetErrorKind, Stream},
    },
};

use super::{
    JetStream, JetStreamError, OwnedRecord, Settled, bounded,
    config::{self, Owner, StreamLimits},
    names::TransportNames,
};
use crate::{
    api::transport::WhenFull,
    store::{Appended, Limits, NewTxn, QueueInfo, QueuedEntry, QueuedTxn, StoreError},
};

const RECEIVED: &str = "Ferry-Received";
const CONTENT_TYPE: &str = "Content-Type";
/// The most transactions one expiry or drop settles at once.
const SETTLE_BATCH: usize = 1024;

pub struct StreamQueue {
    js: JetStream,
    names: TransportNames,
    stream: Stream,
    record: OwnedRecord,
    /// The stream's last sequence: everything ever stored.
    last_seq: AtomicU64,
    /// Bytes the queued transactions take on the server (its own accounting, headers included).
    bytes: AtomicU64,
    oldest_ms: Mutex<Option<u64>>,
    /// One settling at a time (forwarded, expired, dropped), so none is counted twice.
    settling: tokio::sync::Mutex<()>,
}

impl StreamQueue {
    /// Take the transport's record (fencing its previous owner), make or update its stream,
    /// and count what happened while nobody owned it.
    pub async fn open(
        js: &JetStream,
        key: &str,
        limits: &StreamLimits,
        owner: &Owner,
    ) -> Result<Self, JetStreamError> {
        let names = TransportNames::new(key);
        let record = js.take(&names.key).await?;
        let settled = record.envelope().settled;
        let mut config = config::stream_config(&names, limits, js.replicas(), owner);
        let context = js.context();
        match bounded("read the stream", context.get_stream(&names.stream)).await {
            Ok(_) => {
                bounded("update the stream", context.update_stream(config)).await?;
            }
            Err(_) => {
                // A stream made again (deleted by hand?) goes on from the settled sequence,
                // so the ledger still adds up.
                if settled.seq > 0 {
                    config.first_sequence = Some(settled.seq + 1);
                }
                bounded("create the stream", context.create_stream(config)).await?;
            }
        }
        let mut handle = bounded("read the stream", context.get_stream(&names.stream)).await?;
        let state = bounded("read the stream", handle.info())
            .await?
            .state
            .clone();
        let queue = Self {
            js: js.clone(),
            names,
            stream: handle,
            record,
            last_seq: AtomicU64::new(state.last_sequence.max(settled.seq)),
            bytes: AtomicU64::new(state.bytes),
            oldest_ms: Mutex::new(None),
            settling: tokio::sync::Mutex::new(()),
        };
        // Settled but not purged (a crash between the two): purge now.
        if state.messages > 0 && state.first_sequence <= settled.seq {
            queue.purge_below(settled.seq + 1).await;
        }
        // Expired by the server while no worker owned the queue: counted as expired.
        let first_kept = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        let gone = first_kept.saturating_sub(settled.seq + 1);
        if gone > 0 {
            tracing::warn!(stream = %queue.names.stream, expired = gone,
                "transactions expired by the JetStream server while no worker owned the queue (max_age)");
            queue
                .settle(settled.seq + gone, |s, n| s.expired += n)
                .await
                .map_err(|e| match e {
                    StoreError::JetStream(e) => e,
                    other => JetStreamError::Refused(other.to_string()),
                })?;
        }
        if queue.messages() == 0 {
            queue.bytes.store(0, Ordering::Relaxed);
        }
        queue.refresh_oldest().await;
        Ok(queue)
    }

    pub fn record(&self) -> &OwnedRecord {
        &self.record
    }

    pub fn stream_name(&self) -> &str {
        &self.names.stream
    }

    fn messages(&self) -> u64 {
        self.last_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.record.envelope().settled.seq)
    }

    pub fn info(&self) -> QueueInfo {
        let settled = self.record.envelope().settled;
        let stored = self.last_seq.load(Ordering::Acquire).max(settled.seq);
        let messages = stored - settled.seq;
        QueueInfo {
            messages,
            bytes: if messages == 0 {
                0
            } else {
                self.bytes.load(Ordering::Relaxed)
            },
            next_seq: stored + 1,
            stored,
            forwarded: settled.forwarded,
            expired: settled.expired,
            dropped: settled.dropped,
            rejected: settled.rejected,
            oldest_ms: if messages == 0 {
                None
            } else {
                *self.oldest_ms.lock().unwrap_or_else(|e| e.into_inner())
            },
        }
    }

    /// Append, answered once a quorum of the stream's replicas has it. RejectNew refuses on
    /// a full queue; DropOldest settles the head as dropped to make room first.
    pub async fn append(&self, txn: NewTxn, limits: Limits) -> Result<Appended, StoreError> {
        if self.record.fenced() {
            return Err(self.fenced());
        }
        let (received_ms, id, content_type) = txn.header();
        let payload = txn.payload();
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert(RECEIVED, received_ms.to_string().as_str());
        if let Some(content_type) = &content_type {
            headers.insert(CONTENT_TYPE, content_type.as_str());
        }
        let size = stored_size(&self.names.subject, &headers, payload.len());
        if size > limits.max_bytes {
            return Err(StoreError::LargerThanQueue {
                size: payload.len() as u64,
                max_bytes: limits.max_bytes,
            });
        }
        let mut dropped = 0;
        let info = self.info();
        if info.messages >= limits.max_messages || info.bytes + size > limits.max_bytes {
            match limits.when_full {
                WhenFull::RejectNew => {
                    return Err(StoreError::Full {
                        messages: info.messages,
                        bytes: info.bytes,
                    });
                }
                WhenFull::DropOldest => dropped = self.make_room(size, limits).await?,
            }
        }
        let published = async {
            let ack = self
                .js
                .context()
                .publish_with_headers(self.names.subject.clone(), headers, payload)
                .await?;
            ack.await
        };
        let ack = match tokio::time::timeout(super::OP_TIMEOUT, published).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => return Err(publish_error(e, self.info())),
            Err(_) => {
                return Err(JetStreamError::Unavailable(
                    "no acknowledgement from a quorum of the stream's replicas".into(),
                )
                .into());
            }
        };
        if !ack.duplicate {
            let before = self.last_seq.fetch_max(ack.sequence, Ordering::AcqRel);
            self.bytes.fetch_add(size, Ordering::Relaxed);
            if before <= self.record.envelope().settled.seq {
                let mut oldest = self.oldest_ms.lock().unwrap_or_else(|e| e.into_inner());
                oldest.get_or_insert(received_ms);
            }
        }
        Ok(Appended {
            seq: ack.sequence,
            dropped,
        })
    }

    /// DropOldest: settle as dropped from the head until `size` more fits.
    async fn make_room(&self, size: u64, limits: Limits) -> Result<u64, StoreError> {
        let head = self.read_head(None, SETTLE_BATCH, u64::MAX).await?;
        let (mut messages, mut bytes) = (self.info().messages, self.info().bytes);
        let mut last = None;
        let mut count = 0;
        for txn in &head {
            if messages < limits.max_messages && bytes + size <= limits.max_bytes {
                break;
            }
            messages -= 1;
            bytes = bytes.saturating_sub(txn.payload.len() as u64);
            last = Some(txn.seq);
            count += 1;
        }
        match last {
            Some(seq) => {
                self.settle(seq, |s, n| s.dropped += n).await?;
                Ok(count)
            }
            None => Ok(0),
        }
    }

    /// Read up to `max` transactions (and `max_bytes`, but always one) from the head, or
    /// after `after`.
    pub async fn read_head(
        &self,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        self.read(after, max, max_bytes, false).await
    }

    /// As [`Self::read_head`], but never one transaction beyond `max_bytes`.
    pub async fn read_head_within(
        &self,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        self.read(after, max, max_bytes, true).await
    }

    async fn read(
        &self,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
        within: bool,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        let settled = self.record.envelope().settled.seq;
        let mut next = after.unwrap_or(settled).max(settled) + 1;
        let last = self.last_seq.load(Ordering::Acquire);
        let (mut batch, mut bytes) = (Vec::new(), 0u64);
        while batch.len() < max && next <= last {
            let Some(txn) = self.get(next).await? else {
                break;
            };
            let size = txn.payload.len() as u64;
            if !batch.is_empty() && bytes + size > max_bytes || within && size > max_bytes {
                break;
            }
            bytes += size;
            next = txn.seq + 1;
            batch.push(txn);
        }
        Ok(batch)
    }

    /// The transaction at `seq` or the next one after it.
    async fn get(&self, seq: u64) -> Result<Option<QueuedTxn>, StoreError> {
        let got = tokio::time::timeout(
            super::OP_TIMEOUT,
            self.stream
                .direct_get_next_for_subject(self.names.subject.clone(), Some(seq)),
        )
        .await;
        let message = match got {
            Ok(Ok(message)) => message,
            Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
            Ok(Err(e)) => {
                return Err(JetStreamError::unavailable(format!("read the queue: {e}")).into());
            }
            Err(_) => return Err(JetStreamError::unavailable("read the queue: no answer").into()),
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        Ok(Some(QueuedTxn {
            seq: message.sequence,
            id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()).unwrap_or_default(),
            content_type: header(CONTENT_TYPE),
            received_ms: header(RECEIVED)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| (message.time.unix_timestamp_nanos() / 1_000_000) as u64),
            payload: message.payload,
        }))
    }

    /// The oldest `limit` transactions without their payloads.
    pub async fn peek_head(&self, limit: usize) -> Result<Vec<QueuedEntry>, StoreError> {
        Ok(self
            .read_head(None, limit, u64::MAX)
            .await?
            .into_iter()
            .map(|txn| QueuedEntry {
                seq: txn.seq,
                bytes: txn.payload.len() as u64,
                id: txn.id,
                content_type: txn.content_type,
                received_ms: txn.received_ms,
            })
            .collect())
    }

    /// Forwarded (`delivered`) and rejected transactions, a run from the head: settled and
    /// counted once. Answers how many of each were still queued.
    pub async fn remove(
        &self,
        delivered: &[u64],
        rejected: &[u64],
    ) -> Result<(u64, u64), StoreError> {
        let Some(&up_to) = delivered.iter().chain(rejected).max() else {
            return Ok((0, 0));
        };
        let _settling = self.settling.lock().await;
        let settled = self.record.envelope().settled.seq;
        let fresh = |seqs: &[u64]| seqs.iter().filter(|&&s| s > settled).count() as u64;
        let (forwarded, rejected) = (fresh(delivered), fresh(rejected));
        if up_to <= settled {
            return Ok((0, 0));
        }
        self.settle_locked(up_to, |s, _| {
            s.forwarded += forwarded;
            s.rejected += rejected;
        })
        .await?;
        Ok((forwarded, rejected))
    }

    /// T9: settle as expired what was received before `cutoff_ms`, from the head.
    pub async fn expire(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let _settling = self.settling.lock().await;
        let head = self.read_head(None, SETTLE_BATCH, u64::MAX).await?;
        let expired: Vec<&QueuedTxn> = head
            .iter()
            .take_while(|txn| txn.received_ms < cutoff_ms)
            .collect();
        let Some(last) = expired.last().map(|t| t.seq) else {
            return Ok(0);
        };
        let count = expired.len() as u64;
        self.settle_locked(last, |s, _| s.expired += count).await?;
        Ok(count)
    }

    async fn settle(
        &self,
        up_to: u64,
        count: impl FnOnce(&mut Settled, u64),
    ) -> Result<(), StoreError> {
        let _settling = self.settling.lock().await;
        self.settle_locked(up_to, count).await
    }

    /// Move `settled.seq` to `up_to` and count (compare-and-swap: a fenced worker settles
    /// nothing), then purge what it passed.
    async fn settle_locked(
        &self,
        up_to: u64,
        count: impl FnOnce(&mut Settled, u64),
    ) -> Result<(), StoreError> {
        let before = self.record.envelope().settled.seq;
        if up_to <= before {
            return Ok(());
        }
        let bytes = self.bytes_between(before, up_to);
        self.record
            .update(|envelope| {
                count(&mut envelope.settled, up_to - before);
                envelope.settled.seq = up_to;
            })
            .await?;
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
        self.purge_below(up_to + 1).await;
        self.refresh_oldest().await;
        Ok(())
    }

    /// An estimate of what the settled transactions took (their share of the bytes).
    fn bytes_between(&self, before: u64, up_to: u64) -> u64 {
        let messages = self.last_seq.load(Ordering::Acquire).saturating_sub(before);
        if messages == 0 {
            return 0;
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        if up_to - before >= messages {
            bytes
        } else {
            bytes / messages * (up_to - before)
        }
    }

    async fn purge_below(&self, seq: u64) {
        if let Err(e) = bounded("purge settled transactions", async {
            self.stream.purge().sequence(seq).await
        })
        .await
        {
            // Settled already: the next owner (or the next settle) purges them.
            tracing::debug!(stream = %self.names.stream, error = %e, "purge of settled transactions failed");
        }
    }

    async fn refresh_oldest(&self) {
        let oldest = match self.read_head(None, 1, u64::MAX).await {
            Ok(head) => head.first().map(|t| t.received_ms),
            Err(_) => return,
        };
        *self.oldest_ms.lock().unwrap_or_else(|e| e.into_inner()) = oldest;
    }

    fn fenced(&self) -> StoreError {
        JetStreamError::Fenced {
            key: self.names.key.clone(),
            owner: None,
        }
        .into()
    }

    /// New limits from the spec: the stream is updated (refused by the server, the old ones
    /// stay and the error says why).
    pub async fn configure(&self, limits: &StreamLimits, owner: &Owner) -> Result<(), StoreError> {
        let config = config::stream_config(&self.names, limits, self.js.replicas(), owner);
        bounded("update the stream", self.js.context().update_stream(config)).await?;
        Ok(())
    }

    /// Save the runtime's record beside the queue's (compare-and-swap).
    pub async fn save_record(&self, record: serde_json::Value) -> Result<(), StoreError> {
        self.record
            .update(|envelope| envelope.record = Some(record))
            .await?;
        Ok(())
    }
}

impl JetStream {
    /// reclaimPolicy: Delete: a transport's stream and record go. Answers whether there was
    /// a stream.
    pub async fn delete_transport(&self, key: &str) -> Result<bool, StoreError> {
        let names = TransportNames::new(key);
        let context: &jetstream::Context = self.context();
        let deleted =
            match tokio::time::timeout(super::OP_TIMEOUT, context.delete_stream(&names.stream))
                .await
            {
                Ok(Ok(_)) => true,
                Ok(Err(e)) if e.to_string().contains("not found") => false,
                Ok(Err(e)) => {
                    return Err(
                        JetStreamError::unavailable(format!("delete the stream: {e}")).into(),
                    );
                }
                Err(_) => {
                    return Err(JetStreamError::unavailable("delete the stream: no answer").into());
                }
            };
        self.forget(&names.key).await?;
        Ok(deleted)
    }
}

/// What the server counts a message as (its file store's accounting: subject, headers,
/// payload and a fixed overhead), so the local check of maxBytes agrees with the server's.
fn stored_size(subject: &str, headers: &HeaderMap, payload: usize) -> u64 {
    let headers: usize = 12
        + headers
            .iter()
            .map(|(name, values)| {
                let name: &str = name.as_ref();
                values
                    .iter()
                    .map(|v| name.len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum::<usize>();
    (22 + subject.len() + headers + payload + 8) as u64
}

fn publish_error(e: jetstream::context::PublishError, info: QueueInfo) -> StoreError {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => JetStreamError::Refused(format!(
            "the transaction is larger than the NATS server's max_payload ({text}); raise max_payload on the servers or lower maxTransactionBytes"
        ))
        .into(),
        _ if text.contains("maximum messages") || text.contains("maximum bytes") => {
            StoreError::Full {
                messages: info.messages,
                bytes: info.bytes,
            }
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::StreamNotFound => {
            JetStreamError::Unavailable(text).into()
        }
        _ => JetStreamError::Unavailable(text).into(),
    }
}
