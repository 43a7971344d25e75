//! A resource's record in the pool's bucket, held by one worker: every write is a
//! compare-and-swap on the revision this worker last wrote. Taking the record writes the
//! taker as its owner with the epoch one higher; from then on the previous owner's next write
//! fails, and it stops serving the resource at once (fencing): a worker that hung while its
//! resources were moved, and wakes up, writes nothing and delivers nothing more for them
//! (T12).

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{JetStreamError, bounded};

/// How often taking a record is tried again when another write came in between.
const TAKE_TRIES: usize = 5;

/// What a transport's queue settled, from its head: everything at or below `seq` has its
/// outcome, counted here once. `stored` is the stream's last sequence, so the queue's ledger
/// (stored = forwarded + rejected + expired + dropped + queued) holds across owners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settled {
    pub seq: u64,
    pub forwarded: u64,
    pub rejected: u64,
    pub expired: u64,
    pub dropped: u64,
}

/// The value kept under a key of the pool's bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub owner: String,
    pub epoch: u64,
    #[serde(default)]
    pub settled: Settled,
    /// The runtime's own record (a transport's or connection's, as it saves it locally).
    #[serde(default)]
    pub record: Option<Value>,
}

struct Held {
    revision: u64,
    envelope: Envelope,
}

pub struct OwnedRecord {
    bucket: kv::Store,
    key: String,
    held: tokio::sync::Mutex<Held>,
    /// A copy for readers that must not wait (a report).
    snapshot: Mutex<Envelope>,
    fenced: AtomicBool,
}

impl OwnedRecord {
    /// Take `key` for `owner`: the epoch one higher than whoever held it.
    pub async fn take(bucket: kv::Store, key: &str, owner: &str) -> Result<Self, JetStreamError> {
        for _ in 0..TAKE_TRIES {
            let entry = bounded("read the record", bucket.entry(key)).await?;
            let current = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    Some(decode(key, &entry.value)?)
                }
                _ => None,
            };
            let mut envelope = current.unwrap_or_default();
            envelope.owner = owner.to_owned();
            envelope.epoch += 1;
            let value = encode(&envelope)?;
            let written = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let update = bucket.update(key, value, entry.revision);
                    match tokio::time::timeout(super::OP_TIMEOUT, update).await {
                        Ok(Ok(revision)) => Some(revision),
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                        Ok(Err(e)) => {
                            return Err(JetStreamError::unavailable(format!(
                                "take the record: {e}"
                            )));
                        }
                        Err(_) => {
                            return Err(JetStreamError::unavailable("take the record: no answer"));
                        }
                    }
                }
                // Never written, or deleted (`create` writes over a tombstone).
                _ => match tokio::time::timeout(super::OP_TIMEOUT, bucket.create(key, value)).await
                {
                    Ok(Ok(revision)) => Some(revision),
                    Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                    Ok(Err(e)) => {
                        return Err(JetStreamError::unavailable(format!("take the record: {e}")));
                    }
                    Err(_) => {
                        return Err(JetStreamError::unavailable("take the record: no answer"));
                    }
                },
            };
            if let Some(revision) = written {
                tracing::debug!(key, owner, epoch = envelope.epoch, revision, "record taken");
                return Ok(Self {
                    bucket,
                    key: key.to_owned(),
                    snapshot: Mutex::new(envelope.clone()),
                    held: tokio::sync::Mutex::new(Held { revision, envelope }),
                    fenced: AtomicBool::new(false),
                });
            }
        }
        Err(JetStreamError::Unavailable(format!(
            "the record {key} kept changing while it was taken ({TAKE_TRIES} tries)"
        )))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The record as last written (or taken).
    pub fn envelope(&self) -> Envelope {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn epoch(&self) -> u64 {
        self.envelope().epoch
    }

    /// Another worker took the record: nothing more may be written or delivered for it.
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Change the record and write it, compare-and-swap on the revision last written. A
    /// failed swap means another worker took it: fenced from then on.
    pub async fn update(
        &self,
        change: impl FnOnce(&mut Envelope),
    ) -> Result<Envelope, JetStreamError> {
        let mut held = self.held.lock().await;
        if self.fenced() {
            return Err(self.fenced_error(None));
        }
        let mut next = held.envelope.clone();
        change(&mut next);
        let value = encode(&next)?;
        let update = self.bucket.update(&self.key, value, held.revision);
        match tokio::time::timeout(super::OP_TIMEOUT, update).await {
            Ok(Ok(revision)) => {
                held.revision = revision;
                held.envelope = next.clone();
                *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
                Ok(next)
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.fenced.store(true, Ordering::Release);
                let owner = self.current_owner().await;
                tracing::warn!(key = %self.key, owner = ?owner, "record taken by another worker: fenced");
                Err(self.fenced_error(owner))
            }
            Ok(Err(e)) => Err(JetStreamError::unavailable(format!(
                "write the record: {e}"
            ))),
            Err(_) => Err(JetStreamError::unavailable("write the record: no answer")),
        }
    }

    /// Whether the record is still this worker's: its revision is the one last written. A
    /// worker checks before it delivers from the queue after a pause (it may have hung while
    /// the resource was moved); another owner fences it at once.
    pub async fn check(&self) -> Result<(), JetStreamError> {
        let held = self.held.lock().await;
        if self.fenced() {
            return Err(self.fenced_error(None));
        }
        let entry = bounded("read the record", self.bucket.entry(&self.key)).await?;
        match entry {
            Some(entry) if entry.revision == held.revision => Ok(()),
            other => {
                self.fenced.store(true, Ordering::Release);
                let owner = other
                    .and_then(|e| decode(&self.key, &e.value).ok())
                    .map(|e| e.owner);
                tracing::warn!(key = %self.key, owner = ?owner, "record taken by another worker: fenced");
                Err(self.fenced_error(owner))
            }
        }
    }

    fn fenced_error(&self, owner: Option<String>) -> JetStreamError {
        JetStreamError::Fenced {
            key: self.key.clone(),
            owner,
        }
    }

    async fn current_owner(&self) -> Option<String> {
        let entry = bounded("read the record", self.bucket.entry(&self.key))
            .await
            .ok()??;
        decode(&self.key, &entry.value).ok().map(|e| e.owner)
    }
}

fn encode(envelope: &Envelope) -> Result<Bytes, JetStreamError> {
    serde_json::to_vec(envelope)
        .map(Bytes::from)
        .map_err(|e| JetStreamError::Refused(format!("cannot encode a record: {e}")))
}

pub(super) fn decode(key: &str, raw: &[u8]) -> Result<Envelope, JetStreamError> {
    serde_json::from_slice(raw).map_err(|e| JetStreamError::Unreadable {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
