//! The worker's durable store: every hosted transport's Store and Forward queue and the saved
//! records of its transports and connections (desired state, state, totals, watermarks) in
//! one redb file, laid out as `layout` says. This module is the store's API; `open` opens the
//! file (recovery, format checks), `writer` is the group-commit writer thread, `record` the
//! shape of saved records.
//!
//! All writes go through one writer thread that puts every write waiting at that moment into
//! a single redb transaction: concurrent producers share one fsync (group commit), and a
//! transaction answered `stored` has been fsync'd before the answer. Removals after forwarding
//! and expiry do not wait for an fsync: if the worker dies first, those transactions are
//! forwarded (or expired) again, which at-least-once delivery allows.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, mpsc},
    thread,
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::api::transport::WhenFull;

mod holder;
pub mod jetstream;
mod layout;
mod open;
pub mod record;
mod writer;

use open::{check_format, create_new, open_existing, write_marker};
use writer::{Op, Reply, Waiter, Work};

pub use layout::{
    FILE, FORMAT_VERSION, MAX_HEADER_FIELD, QueueInfo, QueuedEntry, QueuedTxn, RecordKind,
    encode_header, header_len,
};
use layout::{Header, MARKER, META};

/// Wall-clock milliseconds since the Unix epoch: the clock queued transactions are stamped
/// with, and what their age and time to live are measured against.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run store work (a read, opening the file) on the blocking pool, not on the threads that
/// serve requests.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StoreError::ReadTask(Arc::new(e))))
}

/// Groups larger than this are split, so one commit never holds the writer for long.
const MAX_GROUP: usize = 4096;
/// redb's page cache; the default (1 GiB) would dominate the worker's memory.
const CACHE_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<redb::Error>,
    },
    #[error(
        "the store {path} is damaged ({reason}); ferry does not start on it, so nothing queued in it is overwritten. Keep the file: restore it from a backup, or rename it (e.g. to {path}.damaged) to start with an empty store and keep the damaged one for recovery (docs/troubleshooting.md#a-damaged-store)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "the store {path} is in use by another process ({}); nothing is wrong with its data. Two ferry processes cannot share one data directory: stop the other one, or give this one its own --data-dir (docs/troubleshooting.md#a-store-in-use)",
        holder.as_deref().unwrap_or("it holds the file's lock")
    )]
    InUse {
        path: PathBuf,
        holder: Option<String>,
    },
    #[error(
        "the store {path} is missing, but {marker} says this directory held one (a volume not mounted, or a file deleted?). Mount the right volume; if its queue is truly gone, delete {marker} to start with an empty store"
    )]
    Missing { path: PathBuf, marker: PathBuf },
    #[error(
        "the store {path} has format version {found}, written by a newer ferry; this one reads version {FORMAT_VERSION} and does not start on it (run the newer ferry again)"
    )]
    NewerFormat { path: PathBuf, found: u64 },
    #[error(
        "the Store and Forward queue is full ({messages} messages, {bytes} bytes) and whenFull is RejectNew"
    )]
    Full { messages: u64, bytes: u64 },
    #[error(
        "the transaction ({size} bytes) is larger than storeAndForward.maxBytes ({max_bytes} bytes)"
    )]
    LargerThanQueue { size: u64, max_bytes: u64 },
    #[error("the store could not write to disk: {0}")]
    Disk(#[source] Arc<redb::Error>),
    #[error("queued transaction {seq} is corrupt: its bytes do not hold the header they claim")]
    Corrupt { seq: u64 },
    #[error("cannot encode the record to save: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    #[error("the store is being reopened after a disk error; try again")]
    Reopening,
    #[error("a read of the store did not finish: {0}")]
    ReadTask(#[source] Arc<tokio::task::JoinError>),
    #[error("the store has shut down")]
    Closed,
    #[error("the transport was deleted and its queue removed (reclaimPolicy: Delete)")]
    Purged,
    #[error(transparent)]
    JetStream(#[from] jetstream::JetStreamError),
}

impl StoreError {
    fn disk(e: impl Into<redb::Error>) -> Self {
        Self::Disk(Arc::new(e.into()))
    }

    /// Another worker took the resource over (JetStream): stop serving it.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Self::JetStream(jetstream::JetStreamError::Fenced { .. })
        )
    }

    /// The queue's server is unavailable now (JetStream: no quorum, unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::JetStream(jetstream::JetStreamError::Unavailable(_))
        )
    }

    /// A record that cannot be turned into JSON (kept for completeness: ferry's records always
    /// can).
    pub fn encode(e: serde_json::Error) -> Self {
        Self::Encode(Arc::new(e))
    }
}

/// Max Storage for one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

/// A transaction to append, already in its queued form (header and payload in one buffer):
/// ingest reads the body straight into it, so a payload is held once, and delivering it
/// directly uses a slice of the same buffer.
#[derive(Clone, Debug)]
pub struct NewTxn {
    encoded: bytes::Bytes,
    payload_at: usize,
}

impl NewTxn {
    /// `encoded` must start with [`encode_header`]'s output of `header_len` bytes.
    pub fn from_encoded(encoded: bytes::Bytes, header_len: usize) -> Self {
        Self {
            payload_at: header_len.min(encoded.len()),
            encoded,
        }
    }

    pub fn new(id: &str, content_type: Option<&str>, received_ms: u64, payload: &[u8]) -> Self {
        let mut encoded = Vec::with_capacity(header_len(id, content_type) + payload.len());
        encode_header(received_ms, id, content_type, &mut encoded);
        let at = encoded.len();
        encoded.extend_from_slice(payload);
        Self::from_encoded(encoded.into(), at)
    }

    /// The payload, without a copy.
    pub fn payload(&self) -> bytes::Bytes {
        self.encoded.slice(self.payload_at..)
    }

    fn received_ms(&self) -> u64 {
        Header::time_and_size(&self.encoded).0
    }

    /// Its receive time, id and content type, as the header holds them.
    pub(crate) fn header(&self) -> (u64, String, Option<String>) {
        match Header::parse(&self.encoded) {
            Some(header) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let content_type = text(header.content_type);
                (
                    header.received_ms,
                    text(header.id),
                    (!content_type.is_empty()).then_some(content_type),
                )
            }
            None => (self.received_ms(), String::new(), None),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Transactions dropped from the head to make room (DropOldest).
    pub dropped: u64,
}

/// One transport's queue: its table and its numbers.
pub struct Queue {
    table: String,
    meta_key: String,
    info: Mutex<QueueInfo>,
    /// Set by the writer when the queue's table is purged: a write still under way then (an
    /// ingest, a forwarder's removal) is refused instead of creating the table again.
    purged: std::sync::atomic::AtomicBool,
}

impl Queue {
    pub fn info(&self) -> QueueInfo {
        *self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_info(&self, info: QueueInfo) {
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = info;
    }

    fn purged(&self) -> bool {
        self.purged.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The database handle, replaced when redb must be reopened after an I/O error.
struct Shared {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    /// The queues handed out, to read their numbers again after a reopen.
    queues: Mutex<Vec<std::sync::Weak<Queue>>>,
    /// Set when the writer thread failed: every write is refused from then on.
    writer_failed: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    fn open(path: &Path) -> Result<Database, redb::DatabaseError> {
        Database::builder().set_cache_size(CACHE_BYTES).create(path)
    }

    /// Mark every queue handed out for `table` purged (the writer, purging it).
    fn purged(&self, table: &str) {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for queue in queues.iter().filter_map(std::sync::Weak::upgrade) {
            if queue.table == table {
                queue
                    .purged
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }

    /// redb refuses all work after an I/O error until the file is closed and opened again
    /// (which also recovers the last committed state).
    fn reopen(&self) {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            // Readers hold a clone only while they read; the file closes when the last goes.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(old);
        }
        match Self::open(&self.path) {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), "store reopened after a disk error");
                // The file is back at its last durable commit: removals that were not yet
                // fsync'd are undone (they will be forwarded or expired again), so the queues'
                // numbers are read again.
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                queues.retain(|q| q.strong_count() > 0);
                for queue in queues.iter().filter_map(std::sync::Weak::upgrade) {
                    match read_info(&db, &queue.table, &queue.meta_key) {
                        Ok(info) => queue.set_info(info),
                        Err(e) => {
                            tracing::error!(queue = %queue.table, error = %e, "cannot read the queue again")
                        }
                    }
                }
                *slot = Some(Arc::new(db));
            }
            Err(e) => tracing::error!(
                path = %self.path.display(), error = %e,
                "cannot reopen the store; trying again with the next write"
            ),
        }
    }
}

/// The store of one worker. Cheap to clone; when the last clone is dropped the writer
/// finishes what it was given and the file is closed.
#[derive(Clone)]
pub struct Store {
    // Dropped before `shared`: joining the writer releases its handle on the database.
    writer: Arc<Writer>,
    shared: Arc<Shared>,
}

struct Writer {
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop.
        self.ops.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Open (or create) `dir/ferry.redb` and start the writer thread. A damaged, empty or
    /// missing file where a store was, or a newer format, is an error that says what to do:
    /// never a panic, never a silent new store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        let marker = dir.join(MARKER);
        let open_err = |e: redb::Error| StoreError::Open {
            path: path.clone(),
            source: Arc::new(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        let db = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(StoreError::Damaged {
                    path,
                    reason: "the file is empty".into(),
                });
            }
            Ok(_) => {
                let db = open_existing(&path)?;
                if !marker.exists() {
                    // A store from before the marker.
                    write_marker(&marker).map_err(|e| open_err(e.into()))?;
                }
                db
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if marker.exists() {
                    return Err(StoreError::Missing { path, marker });
                }
                create_new(&path, &marker).map_err(open_err)?
            }
            Err(e) => return Err(open_err(e.into())),
        };
        check_format(&db, &path)?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            db: RwLock::new(Some(Arc::new(db))),
            queues: Mutex::new(Vec::new()),
            writer_failed: tokio::sync::watch::channel(false).0,
        });
        let (ops, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer::writer(&writer_shared, &rx));
                if std::panic::catch_unwind(run).is_err() {
                    // Without its writer the store refuses every write from now on; the
                    // process that owns the store decides what to do (`writer_failed`).
                    tracing::error!("the store's writer failed; every write is refused");
                    writer_shared.writer_failed.send_replace(true);
                }
            })
            .map_err(|e| open_err(e.into()))?;
        let writer = Arc::new(Writer {
            ops: Some(ops),
            thread: Some(thread),
        });
        Ok(Self { writer, shared })
    }

    /// Resolves when the writer thread has failed (a bug: redb or ferry panicked while
    /// writing). The store refuses every write from then on: a worker should stop, so its pod
    /// restarts on the last commit, rather than fail every transaction while looking alive.
    pub async fn writer_failed(&self) {
        let mut failed = self.shared.writer_failed.subscribe();
        let _ = failed.wait_for(|failed| *failed).await;
    }

    /// The queue of a transport (`namespace/name`), with its numbers read from disk.
    pub fn queue(&self, key: &str) -> Result<Arc<Queue>, StoreError> {
        let table = layout::queue_table(key);
        let meta_key = layout::queue_info_key(key);
        let info = read_info(&*self.shared.db()?, &table, &meta_key)?;
        let queue = Arc::new(Queue {
            table,
            meta_key,
            info: Mutex::new(info),
            purged: Default::default(),
        });
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&queue));
        Ok(queue)
    }

    /// Transactions from the head of the queue, in order, starting after `after`: at most
    /// `max` of them and `max_bytes` of payload, but always the first one however large it
    /// is (so a transaction larger than a batch still moves).
    pub fn read_head(
        &self,
        queue: &Queue,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        self.read(queue, after, max, max_bytes, true)
    }

    /// The same, but never more than `max_bytes` of payload: a first transaction larger than
    /// that is left unread (for a read ahead, which must not double what a large transaction
    /// costs in memory).
    pub fn read_head_within(
        &self,
        queue: &Queue,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        self.read(queue, after, max, max_bytes, false)
    }

    fn read(
        &self,
        queue: &Queue,
        after: Option<u64>,
        max: usize,
        max_bytes: u64,
        oversized_first: bool,
    ) -> Result<Vec<QueuedTxn>, StoreError> {
        let Some(table) = self.queue_table(queue)? else {
            return Ok(vec![]);
        };
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::with_capacity(max.min(1024));
        let mut bytes = 0u64;
        for entry in table.range(start..).map_err(StoreError::disk)?.take(max) {
            let (k, v) = entry.map_err(StoreError::disk)?;
            let size = Header::time_and_size(v.value()).1;
            if (!out.is_empty() || !oversized_first) && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            let seq = k.value();
            out.push(QueuedTxn::decode(seq, v.value()).ok_or(StoreError::Corrupt { seq })?);
        }
        Ok(out)
    }

    /// The queue's table as of now; `None` before anything was ever queued.
    fn queue_table(
        &self,
        queue: &Queue,
    ) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, StoreError> {
        let read = self.shared.db()?.begin_read().map_err(StoreError::disk)?;
        let definition = TableDefinition::<u64, &[u8]>::new(&queue.table);
        match read.open_table(definition) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(StoreError::disk(e)),
        }
    }

    /// The first `max` transactions of the queue, headers only: no payload is copied.
    pub fn peek_head(&self, queue: &Queue, max: usize) -> Result<Vec<QueuedEntry>, StoreError> {
        let Some(table) = self.queue_table(queue)? else {
            return Ok(vec![]);
        };
        let mut out = Vec::with_capacity(max.min(1024));
        for entry in table.range(0..).map_err(StoreError::disk)?.take(max) {
            let (k, v) = entry.map_err(StoreError::disk)?;
            let seq = k.value();
            out.push(QueuedEntry::decode(seq, v.value()).ok_or(StoreError::Corrupt { seq })?);
        }
        Ok(out)
    }

    /// Every saved record of a kind, by key.
    pub fn records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.shared.db()?.begin_read().map_err(StoreError::disk)?;
        let meta = match read.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(StoreError::disk(e)),
        };
        let mut out = Vec::new();
        for entry in meta.range(kind.prefix()..).map_err(StoreError::disk)? {
            let (k, v) = entry.map_err(StoreError::disk)?;
            let Some(key) = k.value().strip_prefix(kind.prefix()) else {
                break;
            };
            out.push((key.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A saved record (see `save_record`).
    pub fn load_record(&self, kind: RecordKind, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.shared.db()?.begin_read().map_err(StoreError::disk)?;
        match read.open_table(META) {
            Ok(meta) => Ok(meta
                .get(kind.meta_key(key).as_str())
                .map_err(StoreError::disk)?
                .map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(StoreError::disk(e)),
        }
    }

    pub async fn append(
        &self,
        queue: &Arc<Queue>,
        txn: NewTxn,
        limits: Limits,
    ) -> Result<Appended, StoreError> {
        self.call(
            Work::Append {
                queue: queue.clone(),
                txn,
                limits,
            },
            Waiter::Appended,
        )
        .await
    }

    /// Remove forwarded and rejected transactions; answers how many of each were still queued
    /// (one dropped or expired meanwhile was counted as such already).
    pub async fn remove(
        &self,
        queue: &Arc<Queue>,
        delivered: Vec<u64>,
        rejected: Vec<u64>,
    ) -> Result<(u64, u64), StoreError> {
        self.call(
            Work::Remove {
                queue: queue.clone(),
                delivered,
                rejected,
            },
            Waiter::Removed,
        )
        .await
    }

    /// Remove what was received before `cutoff_ms`; answers how many expired.
    pub async fn expire(&self, queue: &Arc<Queue>, cutoff_ms: u64) -> Result<u64, StoreError> {
        self.call(
            Work::Expire {
                queue: queue.clone(),
                cutoff_ms,
            },
            Waiter::Count,
        )
        .await
    }

    /// Save a record under `key`.
    pub async fn save_record(
        &self,
        kind: RecordKind,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.call(
            Work::SaveRecord {
                key: kind.meta_key(key),
                value,
            },
            Waiter::Saved,
        )
        .await
    }

    /// Remove everything kept of one resource of `kind` (a transport's record, queue, queue
    /// numbers and ingest token hash; a connection's record with its watermarks), in one
    /// durable commit: a resource deleted with `reclaimPolicy: Delete` from a pool's worker.
    /// Its queues handed out take no write from then on. Answers whether anything was kept.
    pub async fn purge(&self, kind: RecordKind, key: &str) -> Result<bool, StoreError> {
        let (meta_keys, table) = layout::kept_of(kind, key);
        self.call(Work::Purge { meta_keys, table }, Waiter::Purged)
            .await
    }

    async fn call<T>(
        &self,
        work: Work,
        waiter: impl FnOnce(Reply<T>) -> Waiter,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ops = self.writer.ops.as_ref().ok_or(StoreError::Closed)?;
        ops.send((work, waiter(reply)))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

thread_local! {
    /// Set while this thread opens a file whose damage may make redb panic (caught there).
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The process's panic hook, installed once by the binary at its start: a panic the store
/// catches and reports itself (redb's assertion while opening a damaged file, on the thread
/// opening it) prints nothing, so a damaged store is one clear line; any other panic is
/// printed by the hook that was there before.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !EXPECTING_PANIC.with(std::cell::Cell::get) {
            previous(info);
        }
    }));
}

/// A queue's numbers as the file holds them.
fn read_info(db: &Database, table: &str, meta_key: &str) -> Result<QueueInfo, StoreError> {
    let read = db.begin_read().map_err(StoreError::disk)?;
    let mut info = match read.open_table(META) {
        Ok(meta) => meta
            .get(meta_key)
            .map_err(StoreError::disk)?
            .map(|v| QueueInfo::from_bytes(v.value()))
            .unwrap_or_default(),
        Err(redb::TableError::TableDoesNotExist(_)) => QueueInfo::default(),
        Err(e) => return Err(StoreError::disk(e)),
    };
    match read.open_table(TableDefinition::<u64, &[u8]>::new(table)) {
        Ok(t) => {
            info.oldest_ms = t
                .first()
                .map_err(StoreError::disk)?
                .map(|(_, v)| Header::time_and_size(v.value()).0);
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(StoreError::disk(e)),
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use layout::FORMAT_KEY;

    fn txn(id: &str, size: usize, received_ms: u64) -> NewTxn {
        NewTxn::new(id, Some("application/json"), received_ms, &vec![b'x'; size])
    }

    const ROOMY: Limits = Limits {
        max_messages: 1000,
        max_bytes: 1 << 20,
        when_full: WhenFull::DropOldest,
    };

    fn ids(store: &Store, queue: &Queue) -> Vec<String> {
        store
            .read_head(queue, None, 100, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    }

    #[tokio::test]
    async fn queue_and_counters_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let q = store.queue("ns/a").unwrap();
            for (i, id) in ["a", "b", "c"].iter().enumerate() {
                store
                    .append(&q, txn(id, 10, 100 + i as u64), ROOMY)
                    .await
                    .unwrap();
            }
            assert_eq!(store.remove(&q, vec![0], vec![1]).await.unwrap(), (1, 1));
            store
                .save_record(RecordKind::Transport, "ns/a", b"{}".to_vec())
                .await
                .unwrap();
            store
                .save_record(RecordKind::Connection, "ns/c", b"[]".to_vec())
                .await
                .unwrap();
            drop(q);
        }
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("ns/a").unwrap();
        let info = q.info();
        assert_eq!((info.messages, info.bytes, info.next_seq), (1, 10, 3));
        assert_eq!((info.stored, info.forwarded, info.rejected), (3, 1, 1));
        assert_eq!(info.oldest_ms, Some(102));
        let head = store.read_head(&q, None, 10, u64::MAX).unwrap();
        assert_eq!(head[0].id, "c");
        assert_eq!(head[0].content_type.as_deref(), Some("application/json"));
        let records = |kind| store.records(kind).unwrap();
        assert_eq!(
            records(RecordKind::Transport),
            [("ns/a".to_string(), b"{}".to_vec())]
        );
        assert_eq!(
            records(RecordKind::Connection),
            [("ns/c".to_string(), b"[]".to_vec())]
        );
        // Queues of different transports are separate.
        assert_eq!(store.queue("ns/b").unwrap().info().messages, 0);
    }

    #[tokio::test]
    async fn drop_oldest_and_reject_new() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("ns/q").unwrap();
        let by_count = Limits {
            max_messages: 2,
            ..ROOMY
        };
        for id in ["1", "2", "3"] {
            store.append(&q, txn(id, 1, 0), by_count).await.unwrap();
        }
        assert_eq!(ids(&store, &q), ["2", "3"]);
        assert_eq!(q.info().dropped, 1);

        let by_bytes = Limits {
            max_messages: 100,
            max_bytes: 10,
            when_full: WhenFull::DropOldest,
        };
        // 2 bytes queued + 9 > 10: dropping the oldest 1-byte transaction makes room.
        let appended = store.append(&q, txn("big", 9, 0), by_bytes).await.unwrap();
        assert_eq!(appended.dropped, 1);
        assert_eq!(ids(&store, &q), ["3", "big"]);

        let reject = Limits {
            when_full: WhenFull::RejectNew,
            ..by_bytes
        };
        let err = store.append(&q, txn("no", 2, 0), reject).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Full {
                    messages: 2,
                    bytes: 10
                }
            ),
            "{err}"
        );
        let err = store
            .append(&q, txn("huge", 11, 0), by_bytes)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LargerThanQueue { .. }), "{err}");
        assert_eq!(ids(&store, &q), ["3", "big"]);
    }

    /// A purge removes what one transport kept (queue, numbers, record, token hash) and only
    /// that: a connection of the same name and another transport keep theirs; a queue handed
    /// out before takes no write after it, and one asked for again starts empty.
    #[tokio::test]
    async fn a_purge_removes_one_resource_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gone = store.queue("ns/gone").unwrap();
        let kept = store.queue("ns/kept").unwrap();
        for q in [&gone, &kept] {
            store.append(q, txn("a", 10, 1), ROOMY).await.unwrap();
            store.append(q, txn("b", 10, 2), ROOMY).await.unwrap();
        }
        for (kind, key) in [
            (RecordKind::Transport, "ns/gone"),
            (RecordKind::IngestToken, "ns/gone"),
            (RecordKind::Connection, "ns/gone"),
            (RecordKind::Transport, "ns/kept"),
        ] {
            store.save_record(kind, key, b"{}".to_vec()).await.unwrap();
        }

        assert!(store.purge(RecordKind::Transport, "ns/gone").await.unwrap());
        let err = store
            .append(&gone, txn("late", 1, 3), ROOMY)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Purged), "{err}");
        assert!(matches!(
            store.remove(&gone, vec![0], vec![]).await,
            Err(StoreError::Purged)
        ));
        assert!(matches!(
            store.expire(&gone, 10).await,
            Err(StoreError::Purged)
        ));
        // It is gone from the file, not only from memory.
        drop((gone, kept, store));
        let store = Store::open(dir.path()).unwrap();
        let again = store.queue("ns/gone").unwrap();
        assert_eq!(again.info(), QueueInfo::default(), "it starts empty");
        assert!(ids(&store, &again).is_empty());
        let keys = |kind| -> Vec<String> {
            store
                .records(kind)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(RecordKind::Transport), ["ns/kept"]);
        assert!(keys(RecordKind::IngestToken).is_empty());
        assert_eq!(keys(RecordKind::Connection), ["ns/gone"]);
        let kept = store.queue("ns/kept").unwrap();
        assert_eq!(ids(&store, &kept), ["a", "b"]);
        assert_eq!(kept.info().messages, 2);
        // A queue asked for again takes writes; purging nothing answers false.
        store.append(&again, txn("new", 1, 4), ROOMY).await.unwrap();
        assert_eq!(ids(&store, &again), ["new"]);
        assert!(
            store
                .purge(RecordKind::Connection, "ns/gone")
                .await
                .unwrap()
        );
        assert!(
            !store
                .purge(RecordKind::Connection, "ns/gone")
                .await
                .unwrap()
        );
        assert!(keys(RecordKind::Connection).is_empty());
    }

    #[tokio::test]
    async fn expiry_removes_from_the_head_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("ns/t").unwrap();
        for (id, at) in [("old", 10), ("older-but-later", 5), ("new", 50)] {
            store.append(&q, txn(id, 1, at), ROOMY).await.unwrap();
        }
        // FIFO: expiry stops at the first transaction that is still alive.
        assert_eq!(store.expire(&q, 20).await.unwrap(), 2);
        assert_eq!(ids(&store, &q), ["new"]);
        assert_eq!((q.info().expired, q.info().oldest_ms), (2, Some(50)));
        assert_eq!(store.expire(&q, 20).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_keep_their_order_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("ns/c").unwrap();
        let mut tasks = Vec::new();
        for p in 0..8 {
            let (store, q) = (store.clone(), q.clone());
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let id = format!("{p}-{i}");
                    seqs.push(store.append(&q, txn(&id, 4, 0), ROOMY).await.unwrap().seq);
                }
                seqs
            }));
        }
        for task in tasks {
            let seqs = task.await.unwrap();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "a producer's appends out of order"
            );
        }
        let info = q.info();
        assert_eq!((info.messages, info.bytes, info.stored), (400, 1600, 400));
    }

    #[test]
    fn encoding_round_trips() {
        let t = QueuedTxn {
            seq: 7,
            id: "id-1".into(),
            content_type: None,
            received_ms: 123,
            payload: bytes::Bytes::from_static(b"payload"),
        };
        let new = NewTxn::new(&t.id, t.content_type.as_deref(), t.received_ms, &t.payload);
        assert_eq!(&new.payload()[..], b"payload");
        let raw = new.encoded.to_vec();
        assert_eq!(QueuedTxn::decode(7, &raw).unwrap(), t);
        assert_eq!(Header::time_and_size(&raw), (123, 7));
        assert!(QueuedTxn::decode(7, &raw[..5]).is_none());
    }

    #[tokio::test]
    async fn the_head_is_read_in_batches_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = store.queue("ns/b").unwrap();
        for (id, size) in [
            ("a", 400),
            ("b", 400),
            ("c", 400),
            ("huge", 5000),
            ("d", 10),
        ] {
            store.append(&q, txn(id, size, 0), ROOMY).await.unwrap();
        }
        let batch = |after, max_bytes| -> Vec<String> {
            let head = store.read_head(&q, after, 100, max_bytes).unwrap();
            head.into_iter().map(|t| t.id).collect()
        };
        assert_eq!(batch(None, 1000), ["a", "b"]);
        assert_eq!(batch(Some(1), 1000), ["c"]);
        // One transaction larger than the batch is read alone: the queue still moves.
        assert_eq!(batch(Some(2), 1000), ["huge"]);
        assert_eq!(batch(Some(3), 1000), ["d"]);
    }

    /// A store with a few queued transactions, closed; answers its file.
    async fn written_store(dir: &Path) -> PathBuf {
        let store = Store::open(dir).unwrap();
        let q = store.queue("ns/d").unwrap();
        for i in 0..50 {
            store
                .append(&q, txn(&format!("t{i}"), 20_000, 0), ROOMY)
                .await
                .unwrap();
        }
        drop(q);
        drop(store);
        dir.join(FILE)
    }

    fn refusal(dir: &Path) -> String {
        match Store::open(dir) {
            Ok(_) => panic!("the store opened"),
            Err(e) => e.to_string(),
        }
    }

    /// A writer that fails (a bug) refuses every write from then on and says so through
    /// `writer_failed`; the process is not ended from inside the library (this test would
    /// not finish if it were).
    #[tokio::test]
    async fn a_failed_writer_is_reported_not_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = store.call(Work::Panic, Waiter::Saved).await;
        assert!(failed.is_err());
        tokio::time::timeout(std::time::Duration::from_secs(10), store.writer_failed())
            .await
            .expect("the failure is reported");
        let refused = store
            .save_record(RecordKind::Transport, "plant-a/erp", b"{}".to_vec())
            .await;
        assert!(refused.is_err(), "no write after the writer failed");
    }

    /// A store another open holds is in use, not damaged: the message says nothing is wrong
    /// with the data, names the holder (this process here) and never suggests moving it.
    #[tokio::test]
    async fn a_store_in_use_says_so_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let _open = Store::open(dir.path()).unwrap();
        let message = refusal(dir.path());
        assert!(
            message.contains("is in use by another process"),
            "{message}"
        );
        assert!(
            message.contains("nothing is wrong with its data"),
            "{message}"
        );
        if cfg!(target_os = "linux") {
            let pid = format!("pid {}", std::process::id());
            assert!(message.contains(&pid), "{message}");
        }
        for misleading in ["damaged", "lost", "move it"] {
            assert!(!message.contains(misleading), "{message}");
        }
    }

    #[tokio::test]
    async fn a_damaged_empty_or_missing_store_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = written_store(dir.path()).await;
        let full = std::fs::read(&file).unwrap();

        // Truncated to half: redb's own assertion is caught and reported.
        std::fs::write(&file, &full[..full.len() / 2]).unwrap();
        let message = refusal(dir.path());
        assert!(message.contains("is damaged"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("rename it"), "{message}");
        assert!(
            !message.contains("lost"),
            "the first advice keeps the data: {message}"
        );

        std::fs::write(&file, b"").unwrap();
        let message = refusal(dir.path());
        assert!(message.contains("the file is empty"), "{message}");

        std::fs::remove_file(&file).unwrap();
        let message = refusal(dir.path());
        assert!(message.contains("is missing"), "{message}");
        assert!(message.contains(MARKER), "{message}");

        // Put back whole, it opens with everything in it.
        std::fs::write(&file, &full).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.queue("ns/d").unwrap().info().messages, 50);
    }

    #[tokio::test]
    async fn the_format_version_is_written_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = written_store(dir.path()).await;
        {
            let db = Database::create(&file).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                assert_eq!(
                    meta.get(FORMAT_KEY).unwrap().unwrap().value(),
                    FORMAT_VERSION.to_le_bytes()
                );
                meta.insert(FORMAT_KEY, 2u64.to_le_bytes().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let message = refusal(dir.path());
        assert!(message.contains("format version 2"), "{message}");
        // A store from before versions (no key) is version 1 from now on.
        {
            let db = Database::create(&file).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().remove(FORMAT_KEY).unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.queue("ns/d").unwrap().info().messages, 50);
    }
}
