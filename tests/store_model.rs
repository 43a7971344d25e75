//! A model-based test of the worker's store: random appends (with Max Storage), removals after
//! forwarding, rejections, expiry, batched reads and restarts, each checked against a plain
//! in-memory model of the queue and its numbers.
//!
//! Appends are durable (fsync'd before the answer); removals and expiry are not, so a restart
//! may bring back what was removed since the last append, never anything older, and never
//! loses an append.

use ferry::{
    api::transport::WhenFull,
    store::{Limits, NewTxn, Queue, QueueInfo, QueuedTxn, Store, StoreError},
};
use proptest::{prelude::*, sample::Index};
use std::sync::Arc;

const KEY: &str = "plant-a/erp";
const MAX_MESSAGES: u64 = 6;
const MAX_BYTES: u64 = 300;

#[derive(Clone, Debug)]
enum Op {
    Append {
        size: usize,
        received_ms: u64,
        reject_new: bool,
    },
    /// Forwarded: remove these (by position in the queue; a position past the end names a
    /// transaction removed already).
    Deliver(Vec<Index>),
    Reject(Index),
    Expire(u64),
    ReadHead {
        after: Option<Index>,
        max: usize,
        max_bytes: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..140, 0u64..1_000, any::<bool>()).prop_map(|(size, received_ms, reject_new)| {
            Op::Append { size, received_ms, reject_new }
        }),
        2 => proptest::collection::vec(any::<Index>(), 1..4).prop_map(Op::Deliver),
        1 => any::<Index>().prop_map(Op::Reject),
        1 => (0u64..1_000).prop_map(Op::Expire),
        2 => (proptest::option::of(any::<Index>()), 1usize..5, 0u64..200)
            .prop_map(|(after, max, max_bytes)| Op::ReadHead { after, max, max_bytes }),
        1 => Just(Op::Restart),
    ]
}

/// A queued transaction as the model keeps it: sequence number, received time, payload.
type Txn = (u64, u64, Vec<u8>);
/// What the store holds: its numbers and every queued transaction.
type Held = (QueueInfo, Vec<Txn>);

/// The queue as a list, and its numbers.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    queue: Vec<Txn>,
    next_seq: u64,
    stored: u64,
    forwarded: u64,
    expired: u64,
    dropped: u64,
    rejected: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.queue.iter().map(|(_, _, p)| p.len() as u64).sum()
    }

    fn fits(&self, size: u64) -> bool {
        (self.queue.len() as u64) < MAX_MESSAGES && self.bytes() + size <= MAX_BYTES
    }

    /// What an append answers: the sequence number and how many were dropped, or why not.
    fn append(
        &mut self,
        payload: Vec<u8>,
        received_ms: u64,
        reject_new: bool,
    ) -> Result<(u64, u64), &'static str> {
        let size = payload.len() as u64;
        if size > MAX_BYTES {
            return Err("larger than the queue");
        }
        let mut dropped = 0;
        if !self.fits(size) {
            if reject_new {
                return Err("full");
            }
            while !self.fits(size) && !self.queue.is_empty() {
                self.queue.remove(0);
                dropped += 1;
            }
        }
        let seq = self.next_seq;
        self.queue.push((seq, received_ms, payload));
        self.next_seq += 1;
        self.stored += 1;
        self.dropped += dropped;
        Ok((seq, dropped))
    }

    fn remove(&mut self, seqs: &[u64]) -> u64 {
        let before = self.queue.len();
        self.queue.retain(|(seq, _, _)| !seqs.contains(seq));
        (before - self.queue.len()) as u64
    }

    fn expire(&mut self, cutoff_ms: u64) -> u64 {
        let mut expired = 0;
        while self
            .queue
            .first()
            .is_some_and(|(_, received, _)| *received < cutoff_ms)
        {
            self.queue.remove(0);
            expired += 1;
        }
        self.expired += expired;
        expired
    }

    /// The position's sequence number; one past the end is a sequence number no longer queued.
    fn seq_at(&self, index: &Index) -> u64 {
        let i = index.index(self.queue.len() + 1);
        self.queue
            .get(i)
            .map_or(self.next_seq + 7, |(seq, _, _)| *seq)
    }

    fn head(&self, after: Option<u64>, max: usize, max_bytes: u64) -> Vec<Txn> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for txn in self
            .queue
            .iter()
            .filter(|(seq, _, _)| after.is_none_or(|a| *seq > a))
            .take(max)
        {
            let size = txn.2.len() as u64;
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(txn.clone());
        }
        out
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            messages: self.queue.len() as u64,
            bytes: self.bytes(),
            next_seq: self.next_seq,
            stored: self.stored,
            forwarded: self.forwarded,
            expired: self.expired,
            dropped: self.dropped,
            rejected: self.rejected,
            oldest_ms: self.queue.first().map(|(_, received, _)| *received),
        }
    }
}

fn limits(reject_new: bool) -> Limits {
    Limits {
        max_messages: MAX_MESSAGES,
        max_bytes: MAX_BYTES,
        when_full: if reject_new {
            WhenFull::RejectNew
        } else {
            WhenFull::DropOldest
        },
    }
}

fn as_model(txns: Vec<QueuedTxn>) -> Vec<Txn> {
    txns.into_iter()
        .map(|t| (t.seq, t.received_ms, t.payload.to_vec()))
        .collect()
}

/// What the store holds, all of it.
fn held(store: &Store, queue: &Queue) -> Held {
    let all = store
        .read_head(queue, None, usize::MAX, u64::MAX)
        .expect("readable");
    (queue.info(), as_model(all))
}

fn matches(model: &Model, held: &Held) -> bool {
    held.0 == model.info() && held.1 == model.queue
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a directory");
    let mut store = Store::open(dir.path()).expect("a store");
    let mut queue: Arc<Queue> = store.queue(KEY).expect("a queue");
    let mut model = Model::default();
    // The model as of the last durable commit (every append commits durably, whatever it answers).
    let mut durable = Model::default();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                size,
                received_ms,
                reject_new,
            } => {
                let payload: Vec<u8> = (0..size).map(|i| (i + n) as u8).collect();
                let txn = NewTxn::new(
                    &format!("txn-{n}"),
                    Some("text/plain"),
                    received_ms,
                    &payload,
                );
                let answer = store.append(&queue, txn, limits(reject_new)).await;
                let expected = model.append(payload, received_ms, reject_new);
                match (&answer, expected) {
                    (Ok(appended), Ok((seq, dropped))) => {
                        prop_assert_eq!((appended.seq, appended.dropped), (seq, dropped));
                    }
                    (Err(StoreError::Full { .. }), Err("full")) => {}
                    (Err(StoreError::LargerThanQueue { .. }), Err("larger than the queue")) => {}
                    (got, expected) => {
                        prop_assert!(false, "append {n}: store {got:?}, model {expected:?}")
                    }
                }
                durable = model.clone();
            }
            Op::Deliver(indices) => {
                let seqs: Vec<u64> = indices.iter().map(|i| model.seq_at(i)).collect();
                let removed = store
                    .remove(&queue, seqs.clone(), vec![])
                    .await
                    .expect("removed");
                let expected = model.remove(&seqs);
                model.forwarded += expected;
                prop_assert_eq!(removed, (expected, 0));
            }
            Op::Reject(index) => {
                let seq = model.seq_at(&index);
                let removed = store
                    .remove(&queue, vec![], vec![seq])
                    .await
                    .expect("removed");
                let expected = model.remove(&[seq]);
                model.rejected += expected;
                prop_assert_eq!(removed, (0, expected));
            }
            Op::Expire(cutoff) => {
                let expired = store.expire(&queue, cutoff).await.expect("expired");
                prop_assert_eq!(expired, model.expire(cutoff));
            }
            Op::ReadHead {
                after,
                max,
                max_bytes,
            } => {
                let after = after.map(|i| model.seq_at(&i));
                let read = store
                    .read_head(&queue, after, max, max_bytes)
                    .expect("read");
                prop_assert_eq!(as_model(read), model.head(after, max, max_bytes));
            }
            Op::Restart => {
                drop(queue);
                drop(store);
                store = Store::open(dir.path()).expect("reopened");
                queue = store.queue(KEY).expect("the queue again");
                let held = held(&store, &queue);
                // Everything, or everything up to the last append: removals since then may be
                // undone, an append never is.
                if !matches(&model, &held) {
                    prop_assert!(
                        matches(&durable, &held),
                        "after a restart the store holds {held:?}\nmodel {model:?}\nlast durable {durable:?}"
                    );
                    model = durable.clone();
                }
            }
        }
        let held = held(&store, &queue);
        prop_assert!(
            matches(&model, &held),
            "after op {n}: store {held:?}\nmodel {model:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_as_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(run(ops))?;
    }
}
