//! One hosted transport at run time: the state machine driven by real I/O.
//!
//! Producers call [`TransportRuntime::ingest`] concurrently; each asks the machine what to do
//! with its transaction under a short lock, then delivers, stores or fails it without the
//! lock. Background tasks forward the queue (Store and Forward), connect at start-up
//! (loadAtInit, restart), expire transactions past their time to live and save the record.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    host::{Delivery, HostClient, HostError},
    machine::{self, Action, Config, Event},
    queue::{QueueHome, TransportQueue},
};
use crate::api::{
    TransportSpec, TransportState,
    transport::{QueueStatus, Totals},
};
use crate::store::{
    Limits, NewTxn, QueuedEntry, QueuedTxn, RecordKind, StoreError,
    jetstream::{Owner, StreamLimits},
    now_ms,
    record::{self, RecordError, SavedSpec, record_version},
};
use crate::wire::{IngestResult, Outcome, TransportReport};

/// Forwarding reads at most this many queued transactions at a time ...
const FORWARD_BATCH: usize = 1024;
/// ... and at most this many payload bytes (but always one transaction, however large), so a
/// long outage with large transactions costs a few MiB per retry, not the queue's size.
const FORWARD_BATCH_BYTES: u64 = 4 << 20;
/// A read of the queue running on the blocking pool.
type ReadTask = tokio::task::JoinHandle<Result<Vec<QueuedTxn>, StoreError>>;
/// Reconnect backoff: doubles from the first delay up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Wait out `delay` (a restart, T10, ends the wait at once); answers the next delay: double,
/// up to [`BACKOFF_CAP`], or the first again after a restart.
async fn backoff(delay: Duration, restarts: &mut watch::Receiver<u64>) -> Duration {
    tokio::select! {
        () = tokio::time::sleep(delay) => (delay * 2).min(BACKOFF_CAP),
        _ = restarts.changed() => BACKOFF_FIRST,
    }
}
/// The queue's limits as its spec says (a stream is made with them).
fn stream_limits(spec: &TransportSpec) -> StreamLimits {
    let sf = &spec.store_and_forward;
    StreamLimits {
        max_messages: sf.max_messages,
        max_bytes: sf.max_bytes.bytes(),
        max_transaction_bytes: spec.max_transaction_bytes.bytes(),
        time_to_live: sf.time_to_live.as_std(),
    }
}

/// Who a stream belongs to, from the worker's key (`namespace/name`).
fn owner(key: &str) -> Owner {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    Owner {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: None,
    }
}

/// How often time to live is enforced and the totals are saved.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// What the store keeps of a transport besides its queue, in a versioned shape of its own
/// (`store::record`): enough to host it again after a restart exactly as it was.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default = "record_version")]
    pub version: u64,
    /// The spec as JSON, read only to host the transport again before its desired state
    /// arrives (T8).
    pub spec: Value,
    pub generation: Option<i64>,
    pub state: TransportState,
    pub totals: DirectTotals,
    /// False once the transport was deleted from the worker: a restart does not host it again.
    #[serde(default = "yes")]
    pub hosted: bool,
}

fn yes() -> bool {
    true
}

/// The totals of what never entered the queue. Saved with the record every
/// housekeeping tick (and durably at shutdown); the queue's own totals are exact.
///
/// `received` is not kept: it is the sum of the outcomes (these two and the queue's exact
/// `stored`), so the totals are a ledger that adds up after kill -9 too, and every total only
/// grows (a Prometheus counter). A transaction is counted as received once it has its outcome.
/// (Records written before this carry a `received`, which is ignored.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectTotals {
    pub delivered: u64,
    /// Failed without being stored (suspended or unreachable without S&F, rejected by the
    /// host, not storable).
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

struct Inner {
    spec: SavedSpec<TransportSpec>,
    generation: Option<i64>,
    state: TransportState,
    host: Arc<HostClient>,
    totals: DirectTotals,
    /// Transactions decided `Store` whose append has not committed yet: the queue is not
    /// "drained" while any is on its way.
    pending_stores: u64,
    /// The record changed since it was last saved.
    dirty: bool,
    /// A connect loop (loadAtInit, restart) is running.
    connecting: bool,
    hosted: bool,
    /// The last `ferry.dev/restart` value handled in this process.
    restarted: Option<String>,
}

impl Inner {
    fn config(&self) -> Config {
        Config {
            store_and_forward: self.spec.store_and_forward.enabled,
            load_at_init: self.spec.load_at_init,
        }
    }

    fn limits(&self) -> Limits {
        let sf = &self.spec.store_and_forward;
        Limits {
            max_messages: sf.max_messages,
            max_bytes: sf.max_bytes.bytes(),
            when_full: sf.when_full,
        }
    }
}

pub struct TransportRuntime {
    key: String,
    /// Deliveries in flight while forwarding (1 = strict queue order at the host).
    forward_window: usize,
    endpoint: String,
    queue: TransportQueue,
    inner: Mutex<Inner>,
    /// Wakes the forwarder (state or queue changed).
    forward: Notify,
    states: watch::Sender<TransportState>,
    /// Counts restarts (T10): a connect or forward loop waiting out its backoff starts again
    /// at once, from the first delay.
    restarts: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Panics caught in its work (its tasks, its ingests): counted, the work goes on.
    panics: Arc<crate::supervise::Panics>,
    /// Why its queue's server is unavailable (T11), until an operation on it succeeds again.
    unavailable: Mutex<Option<String>>,
}

impl TransportRuntime {
    /// Host a transport: restore its record and queue from the store (T8), apply the
    /// spec's desired state, and start its background tasks.
    pub async fn start(
        home: QueueHome,
        key: String,
        endpoint: String,
        spec: SavedSpec<TransportSpec>,
        generation: Option<i64>,
        forward_window: usize,
    ) -> Result<Arc<Self>, RuntimeError> {
        let (queue, raw) =
            TransportQueue::open(&home, &key, stream_limits(spec.spec()), owner(&key)).await?;
        let record: Option<Record> = raw
            .map(|raw| record::decode(RecordKind::Transport, &key, &raw))
            .transpose()?;
        let host = Arc::new(HostClient::new(&spec.host, &key)?);
        let restored = record.as_ref().map(|r| r.state);
        let suspended = spec.suspended;
        let (states, _) = watch::channel(TransportState::Down);
        let runtime = Arc::new(Self {
            forward_window: forward_window.max(1),
            endpoint,
            queue,
            inner: Mutex::new(Inner {
                spec,
                generation,
                state: TransportState::Down,
                host,
                totals: record.map(|r| r.totals).unwrap_or_default(),
                pending_stores: 0,
                dirty: true,
                connecting: false,
                hosted: true,
                restarted: None,
            }),
            forward: Notify::new(),
            states,
            restarts: watch::channel(0).0,
            tasks: Mutex::new(Vec::new()),
            panics: Arc::default(),
            unavailable: Mutex::new(None),
            key,
        });
        let queued = runtime.queue.info().messages > 0;
        runtime.event(Event::Start { restored, queued });
        runtime.follow_desired(suspended);
        runtime.save(true).await?;
        let tasks = vec![
            runtime.supervised("forwarding", |r| r.forwarder()),
            runtime.supervised("housekeeping", |r| r.housekeeping()),
        ];
        runtime.lock_tasks().extend(tasks);
        Ok(runtime)
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// T12: another worker took it over.
    pub fn moved(&self) -> bool {
        self.queue.fenced()
    }

    /// One of its background tasks, started again (and counted) when it panics.
    fn supervised<F>(
        self: &Arc<Self>,
        what: &'static str,
        work: fn(Arc<Self>) -> F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let runtime = self.clone();
        crate::supervise::supervised(self.key.clone(), what, self.panics.clone(), move || {
            work(runtime.clone())
        })
    }

    /// Count a panic of its work that was caught elsewhere (an ingest's task).
    pub fn panicked(&self, what: &str, payload: &(dyn std::any::Any + Send)) {
        self.panics.record(&self.key, what, payload);
    }

    /// (namespace, name)
    pub fn namespace_name(&self) -> (String, String) {
        let (ns, name) = self.key.split_once('/').unwrap_or(("default", &self.key));
        (ns.to_owned(), name.to_owned())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribe to state changes.
    pub fn watch_state(&self) -> watch::Receiver<TransportState> {
        self.states.subscribe()
    }

    pub fn state(&self) -> TransportState {
        self.lock().state
    }

    /// `spec.maxTransactionBytes`, without copying the spec (read on every ingest).
    pub fn max_transaction_bytes(&self) -> u64 {
        self.lock().spec.max_transaction_bytes.bytes()
    }

    pub fn spec(&self) -> TransportSpec {
        self.lock().spec.spec().clone()
    }

    /// Apply a new spec (PUT): host settings, limits, and Suspend/Resume.
    pub async fn update(
        self: &Arc<Self>,
        spec: SavedSpec<TransportSpec>,
        generation: Option<i64>,
    ) -> Result<(), RuntimeError> {
        // A new client only for a new host: building one (TLS roots) takes milliseconds, and
        // the operator pushes specs whose host did not change.
        let (host_changed, limits_changed) = {
            let inner = self.lock();
            (
                inner.spec.host != spec.host,
                stream_limits(inner.spec.spec()) != stream_limits(spec.spec()),
            )
        };
        if limits_changed {
            self.queue
                .configure(&stream_limits(spec.spec()), &owner(&self.key))
                .await?;
        }
        let host = if host_changed {
            Some(Arc::new(HostClient::new(&spec.host, &self.key)?))
        } else {
            None
        };
        let suspended = {
            let mut inner = self.lock();
            if let Some(host) = host {
                inner.host = host;
            }
            let suspended = spec.suspended;
            inner.spec = spec;
            inner.generation = generation;
            inner.dirty = true;
            suspended
        };
        self.follow_desired(suspended);
        // The desired state must survive a restart before the caller hears it was applied.
        self.save(true).await?;
        Ok(())
    }

    fn follow_desired(self: &Arc<Self>, suspended: bool) {
        let state = self.state();
        if suspended && !machine::is_suspended(state) {
            let queued = self.queue.info().messages > 0 || self.lock().pending_stores > 0;
            self.event(Event::Suspend { queued });
        } else if !suspended && machine::is_suspended(state) {
            self.event(Event::Resume);
        }
    }

    /// Feed one event that carries no transaction, and carry out its actions.
    fn event(self: &Arc<Self>, event: Event) {
        let actions = {
            let mut inner = self.lock();
            self.transition(&mut inner, event)
        };
        for action in actions {
            match action {
                Action::Connect => self.clone().spawn_connect(),
                Action::Forward => self.forward.notify_one(),
                Action::Disconnect => {
                    let mut inner = self.lock();
                    if let Ok(fresh) = HostClient::new(&inner.spec.host, &self.key) {
                        // Dropping the old client closes its pooled connections.
                        inner.host = Arc::new(fresh);
                    }
                }
                // Transaction actions only come with Arrived/Unreachable, handled by ingest.
                Action::Deliver | Action::Store | Action::Fail(_) => {}
            }
        }
    }

    /// Apply the machine under the lock; publish a state change.
    fn transition(&self, inner: &mut Inner, event: Event) -> Vec<Action> {
        let (to, actions) = machine::step(inner.state, event, inner.config());
        if to != inner.state {
            tracing::info!(transport = %self.key, from = %inner.state, to = %to, %event, "state changed");
            inner.state = to;
            inner.dirty = true;
            self.states.send_replace(to);
            self.forward.notify_one();
        }
        actions
    }

    /// One transaction from a producer. It ends in exactly one outcome; callers that must not
    /// lose it to a cancelled request run this in a task of its own (the ingest route does).
    pub async fn ingest(
        self: &Arc<Self>,
        id: String,
        content_type: Option<String>,
        txn: NewTxn,
    ) -> IngestResult {
        crate::supervise::failpoint("ingest", &self.key);
        if self.queue.fenced() {
            return self.refuse_moved(id);
        }
        let (action, host) = {
            let mut inner = self.lock();
            inner.dirty = true;
            let actions = self.transition(&mut inner, Event::Arrived);
            let action = actions.first().copied();
            if action == Some(Action::Store) {
                inner.pending_stores += 1;
            }
            (action, inner.host.clone())
        };
        match action {
            Some(Action::Deliver) => self.deliver_direct(&host, id, content_type, txn).await,
            Some(Action::Store) => self.store(id, txn).await,
            Some(Action::Fail(reason)) => self.fail(id, reason.message().into()),
            _ => self.fail(id, "the transport could not decide what to do".into()),
        }
    }

    async fn deliver_direct(
        self: &Arc<Self>,
        host: &HostClient,
        id: String,
        content_type: Option<String>,
        txn: NewTxn,
    ) -> IngestResult {
        match host
            .deliver(&id, content_type.as_deref(), txn.payload())
            .await
        {
            Delivery::Delivered => {
                let mut inner = self.lock();
                inner.totals.delivered += 1;
                inner.dirty = true;
                self.transition(&mut inner, Event::Delivered);
                IngestResult {
                    id,
                    outcome: Outcome::Delivered,
                    reason: None,
                    state: inner.state,
                }
            }
            Delivery::Rejected(reason) => self.fail(id, reason),
            Delivery::Unreachable(why) => {
                tracing::warn!(transport = %self.key, reason = %why, "host unreachable");
                let action = {
                    let mut inner = self.lock();
                    let actions = self.transition(&mut inner, Event::Unreachable);
                    let action = actions.first().copied();
                    if action == Some(Action::Store) {
                        inner.pending_stores += 1;
                    }
                    action
                };
                match action {
                    Some(Action::Store) => self.store(id, txn).await,
                    Some(Action::Fail(reason)) => {
                        self.fail(id, format!("{why}; {}", reason.message()))
                    }
                    _ => self.fail(id, why),
                }
            }
        }
    }

    /// Append to the queue (fsync'd before the answer); `pending_stores` was counted.
    async fn store(&self, id: String, txn: NewTxn) -> IngestResult {
        let limits = self.lock().limits();
        let appended = self.queue.append(txn, limits).await;
        self.observed(appended.as_ref().map(|_| ()));
        let mut inner = self.lock();
        inner.pending_stores -= 1;
        inner.dirty = true;
        self.forward.notify_one();
        match appended {
            Ok(appended) => {
                if appended.dropped > 0 {
                    tracing::warn!(transport = %self.key, dropped = appended.dropped,
                        "Store and Forward queue full: dropped the oldest transactions (whenFull: DropOldest)");
                }
                IngestResult {
                    id,
                    outcome: Outcome::Stored,
                    reason: None,
                    state: inner.state,
                }
            }
            Err(e) => {
                // Unavailable: whether a quorum took it is not known (the answer was lost).
                // It is no outcome: stored after all, the stream counts it (and the producer's
                // retry with its id is stored once); else it was never received (T11).
                if !e.is_unavailable() {
                    inner.totals.failed += 1;
                }
                tracing::warn!(transport = %self.key, error = %e, "transaction not stored");
                IngestResult {
                    id,
                    outcome: Outcome::Failed,
                    reason: Some(e.to_string()),
                    state: inner.state,
                }
            }
        }
    }

    /// Another worker took the transport over: the producer sends it again and reaches that
    /// worker. Not counted here (this worker's totals are no longer the transport's).
    fn refuse_moved(&self, id: String) -> IngestResult {
        IngestResult {
            id,
            outcome: Outcome::Failed,
            reason: Some(
                "this worker no longer serves the transport (it was moved to another worker of the pool); send it again".into(),
            ),
            state: self.state(),
        }
    }

    /// Note what an operation on the queue's server says of it: unavailable (T11) until one
    /// succeeds again; taken over by another worker (fenced): stop at once.
    fn observed(&self, result: Result<(), &StoreError>) {
        let mut unavailable = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if unavailable.take().is_some() {
                    tracing::info!(transport = %self.key, "the queue is available again");
                }
            }
            Err(e) if e.is_unavailable() => {
                if unavailable.is_none() {
                    tracing::warn!(transport = %self.key, error = %e, "the queue is unavailable (QueueUnavailable)");
                }
                *unavailable = Some(e.to_string());
            }
            Err(e) if e.is_fenced() => {
                drop(unavailable);
                self.fenced(e);
            }
            Err(_) => {}
        }
    }

    /// T12: taken over by another worker (a move): end every task, deliver and write nothing
    /// more.
    fn fenced(&self, why: &StoreError) {
        tracing::warn!(transport = %self.key, reason = %why, "stopped: the transport was moved to another worker");
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
    }

    fn fail(&self, id: String, reason: String) -> IngestResult {
        let mut inner = self.lock();
        inner.totals.failed += 1;
        inner.dirty = true;
        tracing::info!(transport = %self.key, %id, %reason, "transaction failed");
        IngestResult {
            id,
            outcome: Outcome::Failed,
            reason: Some(reason),
            state: inner.state,
        }
    }

    /// Connect with backoff while the machine asks for it (loadAtInit, restart).
    fn spawn_connect(self: Arc<Self>) {
        {
            let mut inner = self.lock();
            if inner.connecting {
                return;
            }
            inner.connecting = true;
        }
        let runtime = self.clone();
        let handle = tokio::spawn(async move {
            let this = runtime;
            let mut delay = BACKOFF_FIRST;
            let mut restarts = this.restarts.subscribe();
            loop {
                let (state, host) = {
                    let inner = this.lock();
                    (inner.state, inner.host.clone())
                };
                if state != TransportState::Down {
                    break;
                }
                let event = match host.connect().await {
                    Ok(()) => Event::Connected,
                    Err(why) => {
                        if delay == BACKOFF_FIRST {
                            tracing::warn!(transport = %this.key, reason = %why, "cannot connect to the host; retrying with backoff");
                        } else {
                            tracing::debug!(transport = %this.key, reason = %why, "connect failed");
                        }
                        Event::ConnectFailed
                    }
                };
                let retry = {
                    let mut inner = this.lock();
                    this.transition(&mut inner, event)
                        .contains(&Action::Connect)
                };
                if !retry {
                    break;
                }
                delay = backoff(delay, &mut restarts).await;
            }
            this.lock().connecting = false;
        });
        // A connect task per reconnect: the finished ones go, so the list stays as long as
        // what runs (the forwarder, housekeeping, at most one connect).
        let mut tasks = self.lock_tasks();
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
    }

    /// Store and Forward: while in that state, reconnect with backoff and forward the queue in
    /// order, one transaction at a time so the host sees them in queue order.
    async fn forwarder(self: Arc<Self>) {
        crate::supervise::failpoint("forward", &self.key);
        let mut delay = BACKOFF_FIRST;
        // The next batch, read while the current one is forwarded, and the removal of the last
        // one, committed while the next is forwarded: the queue's own work does not add to the
        // drain's round trips. A read ahead is dropped whenever the current batch did not all
        // go through; a removal is waited for before the queue is read from its head again.
        let mut read_ahead: Option<ReadTask> = None;
        let mut removing: Option<tokio::task::JoinHandle<Result<(u64, u64), StoreError>>> = None;
        let mut restarts = self.restarts.subscribe();
        loop {
            let (state, host) = {
                let inner = self.lock();
                (inner.state, inner.host.clone())
            };
            if state != TransportState::StoreAndForward {
                read_ahead = None;
                self.removed(&mut removing).await;
                self.forward.notified().await;
                continue;
            }
            let ahead = match read_ahead.take() {
                Some(read) => match read.await {
                    Ok(Ok(batch)) if !batch.is_empty() => Some(batch),
                    // Nothing read ahead (the end, or a transaction too large to read ahead).
                    _ => None,
                },
                None => None,
            };
            let next = match ahead {
                Some(batch) => Ok(batch),
                None => {
                    self.removed(&mut removing).await;
                    self.read_head().await
                }
            };
            self.observed(next.as_ref().map(|_| ()));
            let batch = match next {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(transport = %self.key, error = %e, "cannot read the queue");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if !self.try_drained() {
                    // An append is on its way; it wakes us when committed.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), self.forward.notified())
                            .await;
                }
                continue;
            }
            // A worker that hung while the transport was moved delivers nothing after it
            // wakes up: ownership is checked before each delivery from a stream.
            let owned = self.queue.check_owned().await;
            self.observed(owned.as_ref().map(|_| ()));
            if owned.is_err() {
                read_ahead = None;
                delay = backoff(delay, &mut restarts).await;
                continue;
            }
            let last = batch.last().map(|t| t.seq);
            let count = batch.len();
            read_ahead = Some(self.read_ahead(last));
            let (delivered, rejected, stopped) = self.forward_batch(&host, batch).await;
            if delivered.len() + rejected.len() < count {
                read_ahead = None;
            }
            // One removal at a time, in order: the previous one had a whole batch to commit.
            self.removed(&mut removing).await;
            if !delivered.is_empty() || !rejected.is_empty() {
                // The host took some: it is back, so the next pause starts short again.
                delay = BACKOFF_FIRST;
                let queue = self.queue.clone();
                removing = Some(tokio::spawn(async move {
                    queue.remove(delivered, rejected).await
                }));
                // A queue that settles each transaction (JetStream) settles it before the
                // next delivery: a worker fenced by a move delivers no more than that one.
                if self.queue.forward_batch(FORWARD_BATCH) == 1 {
                    self.removed(&mut removing).await;
                }
            }
            if let Some(why) = stopped {
                read_ahead = None;
                if delay == BACKOFF_FIRST {
                    tracing::warn!(transport = %self.key, reason = %why, "forwarding paused: the host is unreachable; retrying with backoff");
                } else {
                    tracing::debug!(transport = %self.key, reason = %why, retry_in_ms = delay.as_millis(), "forwarding paused");
                }
                delay = backoff(delay, &mut restarts).await;
            }
        }
    }

    /// Wait for the removal of the last forwarded batch. A removal that fails leaves those
    /// transactions queued: they are forwarded again (at least once).
    async fn removed(
        &self,
        removing: &mut Option<tokio::task::JoinHandle<Result<(u64, u64), StoreError>>>,
    ) {
        if let Some(removal) = removing.take() {
            match removal.await {
                Ok(Ok(_)) => self.observed(Ok(())),
                Ok(Err(e)) if e.is_fenced() || e.is_unavailable() => {
                    tracing::warn!(transport = %self.key, error = %e, "forwarded transactions not settled; they will be forwarded again unless the transport moved");
                    self.observed(Err(&e));
                }
                Ok(Err(e)) => {
                    tracing::error!(transport = %self.key, error = %e, "cannot remove forwarded transactions; they will be forwarded again")
                }
                Err(e) => {
                    tracing::error!(transport = %self.key, error = %e, "the removal of forwarded transactions did not finish; they will be forwarded again")
                }
            }
        }
    }

    /// The batch at the head of the queue.
    async fn read_head(&self) -> Result<Vec<QueuedTxn>, StoreError> {
        self.read_batch(None, false)
            .await
            .map_err(|e| StoreError::ReadTask(std::sync::Arc::new(e)))?
    }

    /// Start reading the batch after `last`, within the batch's byte bound.
    fn read_ahead(&self, last: Option<u64>) -> ReadTask {
        self.read_batch(last, true)
    }

    /// Read a batch on the blocking pool: after `after` (None: from the head), at most
    /// `FORWARD_BATCH` transactions and `FORWARD_BATCH_BYTES`; `within` never lets one larger
    /// transaction through (a read ahead).
    fn read_batch(&self, after: Option<u64>, within: bool) -> ReadTask {
        let queue = self.queue.clone();
        let batch = queue.forward_batch(FORWARD_BATCH);
        tokio::spawn(async move { queue.read(after, batch, FORWARD_BATCH_BYTES, within).await })
    }

    /// The queue is empty and nothing is on its way into it: leave Store and Forward.
    fn try_drained(self: &Arc<Self>) -> bool {
        let mut inner = self.lock();
        if self.queue.info().messages > 0 || inner.pending_stores > 0 {
            return false;
        }
        self.transition(&mut inner, Event::Drained);
        true
    }

    /// Deliver a batch in queue order; stop at the first unreachable answer or a state change.
    /// Answers what was delivered and rejected (the caller removes them from the queue) and why
    /// it stopped, if it did; the rest stay for the next try.
    ///
    /// With a window of 1 (the default) the next transaction is sent only once the host has
    /// answered the previous one, so the host sees the queue's order exactly. A larger window
    /// keeps that many requests in flight: faster, but the host may see neighbours in another
    /// order, and a retry after a failure may follow transactions sent after it.
    /// Answers whether any transaction left the queue, and why forwarding stopped early.
    async fn forward_batch(
        &self,
        host: &HostClient,
        batch: Vec<QueuedTxn>,
    ) -> (Vec<u64>, Vec<u64>, Option<String>) {
        let mut delivered = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let mut stopped = None;
        let mut answers = futures::stream::iter(batch.into_iter().map(|txn| async move {
            let payload = txn.payload;
            let delivery = host
                .deliver(&txn.id, txn.content_type.as_deref(), payload)
                .await;
            (txn.seq, txn.id, delivery)
        }))
        .buffered(self.forward_window);
        // The stream starts the next delivery only when polled again, after this check.
        while self.state() == TransportState::StoreAndForward {
            let Some((seq, id, delivery)) = answers.next().await else {
                break;
            };
            match delivery {
                Delivery::Delivered => delivered.push(seq),
                Delivery::Rejected(reason) => {
                    tracing::warn!(transport = %self.key, %id, %reason, "queued transaction rejected by the host; dropped from the queue");
                    rejected.push(seq);
                }
                Delivery::Unreachable(why) => {
                    stopped = Some(why);
                    break;
                }
            }
        }
        drop(answers);
        (delivered, rejected, stopped)
    }

    /// Time to live, and saving the record.
    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire().await;
            // While the queue's server is unavailable every tick writes the record, so the
            // transport knows it is back without waiting for traffic.
            let probe = self
                .unavailable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            let saved = self.save(probe).await;
            self.observed(saved.as_ref().map(|_| ()));
            if let Err(e) = saved {
                tracing::error!(transport = %self.key, error = %e, "cannot save the transport's record");
            }
        }
    }

    /// T9: time to live, in every state.
    async fn expire(self: &Arc<Self>) {
        let time_to_live = self.lock().spec.store_and_forward.time_to_live.clone();
        let ttl = time_to_live.as_std();
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        if self
            .queue
            .info()
            .oldest_ms
            .is_none_or(|oldest| oldest >= cutoff)
        {
            return;
        }
        let expired = self.queue.expire(cutoff).await;
        self.observed(expired.as_ref().map(|_| ()));
        match expired {
            Ok(0) => {}
            Ok(expired) => {
                tracing::warn!(transport = %self.key, expired, ttl = %time_to_live, "transactions expired (time to live)");
                if self.queue.info().messages == 0 {
                    self.event(Event::QueueEmptied);
                }
            }
            Err(e) => {
                tracing::error!(transport = %self.key, error = %e, "cannot expire transactions")
            }
        }
    }

    /// Save the record if it changed (or always, with `force`). Saves are fsync'd: they are
    /// at most two a second per transport, and the writer groups them with other writes.
    async fn save(&self, force: bool) -> Result<(), StoreError> {
        let record = {
            let mut inner = self.lock();
            if !inner.dirty && !force {
                return Ok(());
            }
            inner.dirty = false;
            Record {
                version: record_version(),
                spec: inner.spec.json().clone(),
                generation: inner.generation,
                state: inner.state,
                totals: inner.totals,
                hosted: inner.hosted,
            }
        };
        let value = serde_json::to_vec(&record).map_err(StoreError::encode)?;
        self.queue.save_record(&self.key, value).await
    }

    pub fn report(&self) -> TransportReport {
        let info = self.queue.info();
        let inner = self.lock();
        let faults = self.panics.faults();
        TransportReport {
            faults: (faults.panics > 0).then_some(faults),
            state: inner.state,
            observed_generation: inner.generation,
            queue: QueueStatus {
                messages: info.messages,
                bytes: info.bytes,
                oldest_age_seconds: info
                    .oldest_ms
                    .map_or(0, |oldest| now_ms().saturating_sub(oldest) / 1000),
            },
            // L1: every transaction received has exactly one outcome.
            totals: Totals {
                received: inner.totals.delivered + inner.totals.failed + info.stored,
                delivered: inner.totals.delivered,
                stored: info.stored,
                forwarded: info.forwarded,
                failed: inner.totals.failed + info.rejected,
                expired: info.expired,
                dropped: info.dropped,
            },
            endpoint: self.endpoint.clone(),
            restarted: inner.restarted.clone(),
            queue_unavailable: self
                .unavailable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            moved: self.queue.fenced(),
        }
    }

    /// The oldest `limit` queued transactions, without their payloads (`GET .../queue`).
    pub async fn oldest_queued(&self, limit: usize) -> Result<Vec<QueuedEntry>, StoreError> {
        self.queue.peek_head(limit).await
    }

    /// T10: restart its runtime for `value` (once per value): a new host client (its pooled
    /// connections closed), the connect and forward loops from their first delay, and the
    /// state set up again as after a worker restart (T8). The queue, the totals and a
    /// suspension stay. `just_started`: it was hosted by this very request, so nothing is
    /// restarted and the value is only noted as handled.
    pub async fn restart(
        self: &Arc<Self>,
        value: String,
        just_started: bool,
    ) -> Result<(), RuntimeError> {
        let host = {
            let inner = self.lock();
            if inner.restarted.as_deref() == Some(value.as_str()) {
                return Ok(());
            }
            (!just_started)
                .then(|| HostClient::new(&inner.spec.host, &self.key))
                .transpose()?
        };
        let Some(host) = host else {
            self.lock().restarted = Some(value);
            return Ok(());
        };
        tracing::info!(transport = %self.key, restart = %value, "restarting its runtime (ferry.dev/restart)");
        let (restored, queued) = {
            let mut inner = self.lock();
            // Dropping the old client closes its pooled connections.
            inner.host = Arc::new(host);
            inner.restarted = Some(value);
            inner.dirty = true;
            let queued = self.queue.info().messages > 0 || inner.pending_stores > 0;
            (Some(inner.state), queued)
        };
        self.restarts.send_modify(|n| *n += 1);
        self.event(Event::Start { restored, queued });
        self.save(true).await?;
        Ok(())
    }

    /// Stop hosting (DELETE): end the background tasks and save the record durably, marked
    /// as no longer hosted. The queue stays on disk.
    pub async fn stop(&self) -> Result<(), StoreError> {
        self.lock().hosted = false;
        self.pause().await
    }

    /// End the background tasks and save the record durably (shutdown). A transport moved to
    /// another worker has nothing of its own to save.
    pub async fn pause(&self) -> Result<(), StoreError> {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if self.queue.fenced() {
            return Ok(());
        }
        self.save(true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every resume connects again (loadAtInit) in a task of its own; the handles of those
    /// that finished are dropped, so a transport suspended and resumed for months keeps a
    /// handful of handles, not one per resume.
    #[tokio::test]
    async fn finished_connect_tasks_are_not_kept() {
        let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = host.local_addr().unwrap();
        tokio::spawn(async move {
            // Accept and hold connections: a connect succeeds.
            let mut held = Vec::new();
            while let Ok((stream, _)) = host.accept().await {
                held.push(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = QueueHome::Local(crate::store::Store::open(dir.path()).unwrap());
        let spec = |suspended: bool| -> SavedSpec<TransportSpec> {
            SavedSpec::new(
                serde_json::from_value(serde_json::json!({
                    "host": {"url": format!("http://{address}/ingest")},
                    "loadAtInit": true, "suspended": suspended,
                }))
                .unwrap(),
            )
        };
        let runtime = TransportRuntime::start(
            store,
            "plant-a/erp".into(),
            "http://worker/v1/transports/plant-a/erp/transactions".into(),
            spec(false),
            Some(1),
            1,
        )
        .await
        .unwrap();
        for generation in 2..40 {
            let suspended = generation % 2 == 0;
            runtime
                .update(spec(suspended), Some(generation))
                .await
                .unwrap();
            if !suspended {
                // Wait for this connect to finish before the next suspend.
                let mut states = runtime.watch_state();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    states.wait_for(|s| *s == TransportState::Up),
                )
                .await;
                while runtime.lock().connecting {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let kept = runtime.lock_tasks().len();
        assert!(kept <= 3, "{kept} task handles kept after 19 resumes");
        runtime.pause().await.unwrap();
    }
}
