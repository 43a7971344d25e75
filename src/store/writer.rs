//! The group-commit writer: one thread that puts every write waiting at that moment into a
//! single redb transaction (one fsync for all of them), answers each waiter with its own
//! result, and keeps each queue's numbers in the same commit as the change they count.

use std::sync::{Arc, mpsc};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{
    Appended, Limits, MAX_GROUP, NewTxn, Queue, QueueInfo, Shared, StoreError,
    layout::{Header, META},
};
use crate::api::transport::WhenFull;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write, as the writer thread carries it out.
pub(super) enum Work {
    Append {
        queue: Arc<Queue>,
        txn: NewTxn,
        limits: Limits,
    },
    /// Remove forwarded (`delivered`) and host-rejected transactions.
    Remove {
        queue: Arc<Queue>,
        delivered: Vec<u64>,
        rejected: Vec<u64>,
    },
    /// Remove every transaction received before `cutoff_ms` (time to live).
    Expire { queue: Arc<Queue>, cutoff_ms: u64 },
    /// Save a transport's or connection's record.
    SaveRecord { key: String, value: Vec<u8> },
    /// Remove a resource's records and its queue table, if it has one (`Store::purge`).
    Purge {
        meta_keys: Vec<String>,
        table: Option<String>,
    },
    /// Makes the writer panic: what a bug in it would do.
    #[cfg(test)]
    Panic,
}

impl Work {
    pub(super) fn durable(&self) -> bool {
        match self {
            Work::Append { .. } | Work::SaveRecord { .. } | Work::Purge { .. } => true,
            Work::Remove { .. } | Work::Expire { .. } => false,
            #[cfg(test)]
            Work::Panic => false,
        }
    }
}

/// What a write did.
pub(super) enum Answer {
    Appended(Appended),
    Count(u64),
    Removed((u64, u64)),
    Saved,
    Purged(bool),
}

/// Where the answer to a write goes. Every waiter is answered, whatever becomes of its group.
pub(super) enum Waiter {
    Appended(Reply<Appended>),
    Count(Reply<u64>),
    Removed(Reply<(u64, u64)>),
    Saved(Reply<()>),
    Purged(Reply<bool>),
}

impl Waiter {
    pub(super) fn answer(self, result: Result<Answer, StoreError>) {
        // Each waiter is answered by the work it sent; another answer cannot happen.
        let mismatch = || StoreError::Closed;
        // A caller that stopped waiting is not an error: the sends' results are dropped.
        match self {
            Waiter::Appended(r) => drop(r.send(result.and_then(|a| match a {
                Answer::Appended(v) => Ok(v),
                _ => Err(mismatch()),
            }))),
            Waiter::Count(r) => drop(r.send(result.and_then(|a| match a {
                Answer::Count(v) => Ok(v),
                _ => Err(mismatch()),
            }))),
            Waiter::Removed(r) => drop(r.send(result.and_then(|a| match a {
                Answer::Removed(v) => Ok(v),
                _ => Err(mismatch()),
            }))),
            Waiter::Saved(r) => drop(r.send(result.map(|_| ()))),
            Waiter::Purged(r) => drop(r.send(result.and_then(|a| match a {
                Answer::Purged(v) => Ok(v),
                _ => Err(mismatch()),
            }))),
        }
    }
}

pub(super) type Op = (Work, Waiter);

/// The writer thread: one redb write transaction per group of waiting operations.
pub(super) fn writer(shared: &Shared, ops: &mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match ops.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let (works, waiters): (Vec<Work>, Vec<Waiter>) = group.into_iter().unzip();
        #[cfg(test)]
        assert!(
            !works.iter().any(|w| matches!(w, Work::Panic)),
            "a test made the writer fail"
        );
        let db = match shared.db() {
            Ok(db) => db,
            Err(e) => {
                shared.reopen();
                waiters.into_iter().for_each(|w| w.answer(Err(e.clone())));
                continue;
            }
        };
        match commit_group(&db, shared, works) {
            Ok(answers) => {
                for (waiter, answer) in waiters.into_iter().zip(answers) {
                    waiter.answer(answer);
                }
            }
            Err(e) => {
                // Nothing of the group was written; every caller learns why.
                tracing::error!(error = %e, "store commit failed");
                waiters.into_iter().for_each(|w| w.answer(Err(e.clone())));
                drop(db);
                shared.reopen();
            }
        }
    }
}

/// Carry out a group of writes in one redb transaction. Each write's own result (a full queue
/// is a result, not a failure of the group) is answered only if the group commits. Each write
/// is dropped once applied: a large payload is not held beside redb's copy during the commit.
fn commit_group(
    db: &Database,
    shared: &Shared,
    works: Vec<Work>,
) -> Result<Vec<Result<Answer, StoreError>>, StoreError> {
    let durable = works.iter().any(Work::durable);
    // The numbers each touched queue will have once the group commits.
    let mut pending: Vec<(Arc<Queue>, QueueInfo)> = Vec::new();
    let mut answers = Vec::with_capacity(works.len());
    let mut tx = db.begin_write().map_err(StoreError::disk)?;
    tx.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(StoreError::disk)?;
    {
        let mut meta = tx.open_table(META).map_err(StoreError::disk)?;
        for work in works {
            answers.push(apply(&tx, &mut meta, &work, &mut pending, shared)?);
        }
        // A queue purged in this group keeps no numbers.
        pending.retain(|(queue, _)| !queue.purged());
        for (queue, info) in &pending {
            meta.insert(queue.meta_key.as_str(), info.to_bytes().as_slice())
                .map_err(StoreError::disk)?;
        }
    }
    tx.commit().map_err(StoreError::disk)?;
    for (queue, info) in pending {
        queue.set_info(info);
    }
    Ok(answers)
}

fn info_for(queue: &Arc<Queue>, pending: &mut Vec<(Arc<Queue>, QueueInfo)>) -> usize {
    if let Some(i) = pending.iter().position(|(q, _)| Arc::ptr_eq(q, queue)) {
        return i;
    }
    pending.push((queue.clone(), queue.info()));
    pending.len() - 1
}

fn queue_table<'t>(
    tx: &'t redb::WriteTransaction,
    queue: &Queue,
) -> Result<redb::Table<'t, u64, &'static [u8]>, StoreError> {
    tx.open_table(TableDefinition::<u64, &[u8]>::new(&queue.table))
        .map_err(StoreError::disk)
}

/// One write inside the group's transaction. `Err` fails the whole group; `Ok(Err(..))` is
/// this write's own refusal (a full queue).
fn apply(
    tx: &redb::WriteTransaction,
    meta: &mut redb::Table<&str, &[u8]>,
    work: &Work,
    pending: &mut Vec<(Arc<Queue>, QueueInfo)>,
    shared: &Shared,
) -> Result<Result<Answer, StoreError>, StoreError> {
    // A write to a purged queue would create its table again.
    if let Work::Append { queue, .. } | Work::Remove { queue, .. } | Work::Expire { queue, .. } =
        work
        && queue.purged()
    {
        return Ok(Err(StoreError::Purged));
    }
    Ok(match work {
        Work::Append { queue, txn, limits } => {
            let i = info_for(queue, pending);
            let mut table = queue_table(tx, queue)?;
            match append(&mut table, &mut pending[i].1, txn, *limits) {
                Err(e @ StoreError::Disk(_)) => return Err(e),
                outcome => outcome.map(Answer::Appended),
            }
        }
        Work::Remove {
            queue,
            delivered,
            rejected,
        } => {
            let i = info_for(queue, pending);
            let mut table = queue_table(tx, queue)?;
            let info = &mut pending[i].1;
            let removed = (
                remove_seqs(&mut table, info, delivered)?,
                remove_seqs(&mut table, info, rejected)?,
            );
            info.forwarded += removed.0;
            info.rejected += removed.1;
            info.oldest_ms = oldest(&table)?;
            Ok(Answer::Removed(removed))
        }
        Work::Expire { queue, cutoff_ms } => {
            let i = info_for(queue, pending);
            let mut table = queue_table(tx, queue)?;
            let cutoff = *cutoff_ms;
            let expired = pop_while(&mut table, &mut pending[i].1, |_, received| {
                received < cutoff
            })?;
            pending[i].1.expired += expired;
            Ok(Answer::Count(expired))
        }
        Work::SaveRecord { key, value } => {
            meta.insert(key.as_str(), value.as_slice())
                .map_err(StoreError::disk)?;
            Ok(Answer::Saved)
        }
        Work::Purge { meta_keys, table } => {
            let mut kept = false;
            for key in meta_keys {
                kept |= meta
                    .remove(key.as_str())
                    .map_err(StoreError::disk)?
                    .is_some();
            }
            if let Some(table) = table {
                shared.purged(table);
                kept |= tx
                    .delete_table(TableDefinition::<u64, &[u8]>::new(table))
                    .map_err(StoreError::disk)?;
            }
            Ok(Answer::Purged(kept))
        }
        #[cfg(test)]
        Work::Panic => unreachable!("the writer fails before it commits"),
    })
}

/// Max Storage first (drop the oldest or refuse), then the append itself.
fn append(
    table: &mut redb::Table<u64, &[u8]>,
    info: &mut QueueInfo,
    txn: &NewTxn,
    limits: Limits,
) -> Result<Appended, StoreError> {
    let size = (txn.encoded.len() - txn.payload_at) as u64;
    if size > limits.max_bytes {
        return Err(StoreError::LargerThanQueue {
            size,
            max_bytes: limits.max_bytes,
        });
    }
    let fits = |info: &QueueInfo| {
        info.messages < limits.max_messages && info.bytes + size <= limits.max_bytes
    };
    let mut dropped = 0;
    if !fits(info) {
        if limits.when_full == WhenFull::RejectNew {
            return Err(StoreError::Full {
                messages: info.messages,
                bytes: info.bytes,
            });
        }
        // DropOldest: drop from the head until the new transaction fits.
        dropped = drop_until_fits(table, info, &fits)?;
    }
    let seq = info.next_seq;
    table
        .insert(seq, &txn.encoded[..])
        .map_err(StoreError::disk)?;
    info.next_seq += 1;
    info.messages += 1;
    info.bytes += size;
    info.stored += 1;
    info.dropped += dropped;
    info.oldest_ms.get_or_insert(txn.received_ms());
    Ok(Appended { seq, dropped })
}

fn drop_until_fits(
    table: &mut redb::Table<u64, &[u8]>,
    info: &mut QueueInfo,
    fits: &dyn Fn(&QueueInfo) -> bool,
) -> Result<u64, StoreError> {
    let mut dropped = 0;
    while !fits(info) {
        let Some((_, v)) = table.pop_first().map_err(StoreError::disk)? else {
            break;
        };
        let (_, size) = Header::time_and_size(v.value());
        info.messages = info.messages.saturating_sub(1);
        info.bytes = info.bytes.saturating_sub(size);
        dropped += 1;
    }
    info.oldest_ms = oldest(table)?;
    Ok(dropped)
}

/// Pop from the head while `keep_popping(seq, received_ms)` holds; answers how many.
fn pop_while(
    table: &mut redb::Table<u64, &[u8]>,
    info: &mut QueueInfo,
    keep_popping: impl Fn(u64, u64) -> bool,
) -> Result<u64, StoreError> {
    let mut popped = 0;
    loop {
        let head = table
            .first()
            .map_err(StoreError::disk)?
            .map(|(k, v)| (k.value(), Header::time_and_size(v.value())));
        let Some((seq, (received_ms, size))) = head else {
            break;
        };
        if !keep_popping(seq, received_ms) {
            break;
        }
        table.remove(seq).map_err(StoreError::disk)?;
        info.messages = info.messages.saturating_sub(1);
        info.bytes = info.bytes.saturating_sub(size);
        popped += 1;
    }
    info.oldest_ms = oldest(table)?;
    Ok(popped)
}

/// Remove the given transactions that are still queued; answers how many were.
fn remove_seqs(
    table: &mut redb::Table<u64, &[u8]>,
    info: &mut QueueInfo,
    seqs: &[u64],
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for seq in seqs {
        if let Some(v) = table.remove(*seq).map_err(StoreError::disk)? {
            let (_, size) = Header::time_and_size(v.value());
            info.messages = info.messages.saturating_sub(1);
            info.bytes = info.bytes.saturating_sub(size);
            removed += 1;
        }
    }
    Ok(removed)
}

fn oldest(table: &redb::Table<u64, &[u8]>) -> Result<Option<u64>, StoreError> {
    Ok(table
        .first()
        .map_err(StoreError::disk)?
        .map(|(_, v)| Header::time_and_size(v.value()).0))
}
