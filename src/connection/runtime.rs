//! One hosted connection at run time: iterations of its sync-sets, watermarks kept in the
//! worker's store, and the report the operator reads.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{
    driver::{HttpSourceDriver, HttpTargetDriver, Source, Target, TransportTargetDriver},
    startup_queue::Admission,
    status::{self, Derived, Inputs, OperatorPhase, SyncSetView, WorkerView},
    watermark::{Progress, Watermark},
};
use crate::{
    api::{
        ConnectionSpec, ConnectionStatusValue,
        connection::{SyncResult, SyncSet, SyncSetStatus},
    },
    store::{
        RecordKind, Store, StoreError, blocking,
        record::{self, RecordError, SavedSpec, record_version},
    },
    wire::{ConnectionReport, Resolved, Startup},
};

/// Each source or target request may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress is saved at least this often within a sync-set, so a restart resends little.
const SAVE_EVERY: u64 = 100;
/// Records of one sync-set in flight to its target at once (W3). One at a time, the round
/// trip was the limit (~3.7k records/s to a local transport); a window keeps the target
/// busy, and the watermark still moves only over the accepted prefix. A target sees the
/// records in change order except within a window, where they may arrive in any order.
pub const SYNC_WINDOW: usize = 32;

/// Where the startup queue has put a connection (`None`: not in the queue, free to run).
impl From<Option<Admission>> for Startup {
    fn from(admission: Option<Admission>) -> Self {
        match admission {
            Some(Admission::Waiting(position)) => Self {
                admitted: false,
                position: Some(position),
            },
            Some(Admission::Starting) | None => Self::default(),
        }
    }
}

/// How one sync-set's run ended, when it was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Synced {
    /// It read everything its source had changed.
    CaughtUp,
    /// Its fetch stopped at the cap with more pages to go, and its watermark moved: the next
    /// iteration starts at once (W1).
    Behind,
    /// A restart ended it after what was in flight was answered: not a completed iteration.
    Interrupted,
}

/// One sync-set's saved state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSetRecord {
    #[serde(default)]
    pub progress: Progress,
    pub last_result: Option<SyncResult>,
    pub last_completed_iteration: Option<u64>,
    #[serde(default)]
    pub records_synced: u64,
    pub last_error: Option<String>,
}

/// What the store keeps of a connection, in a versioned shape of its own (`store::record`):
/// on disk the spec is its JSON (`Spec = Value`), read only to host the connection again
/// before its desired state arrives; a hosted connection holds it read
/// (`SavedSpec<ConnectionSpec>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRecord<Spec = Value> {
    #[serde(default = "record_version")]
    pub version: u64,
    pub spec: Spec,
    pub generation: Option<i64>,
    #[serde(default)]
    pub resolved: Resolved,
    pub iteration: u64,
    #[serde(default)]
    pub sync_sets: BTreeMap<String, SyncSetRecord>,
    #[serde(default = "yes")]
    pub hosted: bool,
}

fn yes() -> bool {
    true
}

impl ConnectionRecord<SavedSpec<ConnectionSpec>> {
    /// The record as it is saved.
    fn saved(&self) -> ConnectionRecord {
        ConnectionRecord {
            version: record_version(),
            spec: self.spec.json().clone(),
            generation: self.generation,
            resolved: self.resolved.without_tokens(),
            iteration: self.iteration,
            sync_sets: self.sync_sets.clone(),
            hosted: self.hosted,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

struct Drivers {
    source: Box<dyn Source>,
    target: Box<dyn Target>,
}

struct Inner {
    record: ConnectionRecord<SavedSpec<ConnectionSpec>>,
    started_iteration: u64,
    ongoing: Option<String>,
    /// Why the connection cannot run, found while building its drivers.
    config_error: Option<String>,
    drivers: BTreeMap<String, Arc<Drivers>>,
    dirty: bool,
    /// The last `ferry.dev/restart` value handled in this process.
    restarted: Option<String>,
}

pub struct ConnectionRuntime {
    key: String,
    store: Store,
    inner: Mutex<Inner>,
    wake: Notify,
    statuses: watch::Sender<ConnectionStatusValue>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Counts restarts: the iteration under way ends after what it has in flight.
    restarts: watch::Sender<u64>,
    /// Panics caught in its iterations: counted, the next one runs.
    panics: Arc<crate::supervise::Panics>,
}

fn build_drivers(
    spec: &ConnectionSpec,
    resolved: &Resolved,
) -> Result<BTreeMap<String, Arc<Drivers>>, String> {
    let mut drivers = BTreeMap::new();
    for sync_set in spec.sync_sets.iter().filter(|s| s.enabled) {
        drivers.insert(
            sync_set.name.clone(),
            Arc::new(drivers_for(sync_set, resolved)?),
        );
    }
    Ok(drivers)
}

fn drivers_for(sync_set: &SyncSet, resolved: &Resolved) -> Result<Drivers, String> {
    let source: Box<dyn Source> = Box::new(HttpSourceDriver::new(
        &sync_set.source.http,
        REQUEST_TIMEOUT,
    )?);
    let target: Box<dyn Target> = match (&sync_set.target.transport, &sync_set.target.http) {
        (Some(transport), None) => {
            let found = resolved.transports.get(&transport.name).ok_or_else(|| {
                format!(
                    "sync-set {}: target transport {} does not exist in this namespace",
                    sync_set.name, transport.name
                )
            })?;
            Box::new(TransportTargetDriver::new(
                &transport.name,
                &found.endpoint,
                found.token.clone(),
                REQUEST_TIMEOUT,
            )?)
        }
        (None, Some(http)) => Box::new(HttpTargetDriver::new(http, REQUEST_TIMEOUT)?),
        _ => {
            return Err(format!(
                "sync-set {}: exactly one target must be set",
                sync_set.name
            ));
        }
    };
    Ok(Drivers { source, target })
}

impl ConnectionRuntime {
    /// Host a connection: restore its watermarks and history, apply the spec, start iterating.
    pub async fn start(
        store: Store,
        key: String,
        spec: SavedSpec<ConnectionSpec>,
        generation: Option<i64>,
        resolved: Resolved,
    ) -> Result<Arc<Self>, ConnectionError> {
        let raw = blocking({
            let (store, key) = (store.clone(), key.clone());
            move || store.load_record(RecordKind::Connection, &key)
        })
        .await?;
        let saved = raw
            .map(|raw| record::decode::<ConnectionRecord>(RecordKind::Connection, &key, &raw))
            .transpose()?;
        let (iteration, sync_sets) =
            saved.map_or((0, BTreeMap::new()), |r| (r.iteration, r.sync_sets));
        let (statuses, _) = watch::channel(ConnectionStatusValue::Restarting);
        let runtime = Arc::new(Self {
            store,
            inner: Mutex::new(Inner {
                record: ConnectionRecord {
                    version: record_version(),
                    spec: spec.clone(),
                    generation,
                    resolved: resolved.clone(),
                    iteration,
                    sync_sets,
                    hosted: true,
                },
                // A (re)started connection is Restarting until each sync-set completes again.
                started_iteration: iteration,
                ongoing: None,
                config_error: None,
                drivers: BTreeMap::new(),
                dirty: true,
                restarted: None,
            }),
            wake: Notify::new(),
            statuses,
            task: Mutex::new(None),
            restarts: watch::channel(0).0,
            panics: Arc::default(),
            key,
        });
        runtime.configure(spec, generation, resolved, true);
        runtime.save().await?;
        let task = crate::supervise::supervised(
            runtime.key.clone(),
            "iterating",
            runtime.panics.clone(),
            {
                let runtime = runtime.clone();
                move || runtime.clone().iterate()
            },
        );
        *runtime.lock_task() = Some(task);
        Ok(runtime)
    }

    /// Restart its runtime for `value` (once per value; docs/connection.md, Q2): its source
    /// and target clients are built again and a new startup begins, `Restarting` until every
    /// enabled sync-set completes an iteration, from the watermarks it has. The iteration under
    /// way ends once what it has in flight is answered (accepted records move the watermark,
    /// nothing is sent twice) and the next begins at once. `just_started`: hosted by this very
    /// request, so only noted as handled.
    pub async fn restart(&self, value: String, just_started: bool) -> Result<(), ConnectionError> {
        let (spec, generation, resolved) = {
            let mut inner = self.lock();
            if inner.restarted.as_deref() == Some(value.as_str()) {
                return Ok(());
            }
            inner.restarted = Some(value.clone());
            if just_started {
                return Ok(());
            }
            (
                inner.record.spec.clone(),
                inner.record.generation,
                inner.record.resolved.clone(),
            )
        };
        tracing::info!(connection = %self.key, restart = %value, "restarting its runtime (ferry.dev/restart)");
        self.restarts.send_modify(|n| *n += 1);
        self.configure(spec, generation, resolved, true);
        self.save().await?;
        Ok(())
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_task(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn spec(&self) -> ConnectionSpec {
        self.lock().record.spec.spec().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<ConnectionStatusValue> {
        self.statuses.subscribe()
    }

    /// Apply a spec and what was resolved for it. A changed spec (or a start) makes the
    /// connection Restarting until every enabled sync-set completes an iteration again.
    fn configure(
        &self,
        spec: SavedSpec<ConnectionSpec>,
        generation: Option<i64>,
        resolved: Resolved,
        restart: bool,
    ) {
        {
            let mut inner = self.lock();
            let changed = inner.record.spec.spec() != spec.spec();
            let starting = spec.started && !inner.record.spec.started;
            match build_drivers(&spec, &resolved) {
                Ok(drivers) => {
                    inner.drivers = drivers;
                    inner.config_error = None;
                }
                Err(e) => {
                    inner.drivers.clear();
                    inner.config_error = Some(e);
                }
            }
            if restart || changed || starting {
                inner.started_iteration = inner.record.iteration;
            }
            inner.record.spec = spec;
            inner.record.generation = generation;
            inner.record.resolved = resolved;
            inner.dirty = true;
        }
        self.publish();
        self.wake.notify_one();
    }

    /// Apply a new spec or resolution (PUT).
    pub async fn update(
        &self,
        spec: SavedSpec<ConnectionSpec>,
        generation: Option<i64>,
        resolved: Resolved,
    ) -> Result<(), ConnectionError> {
        self.configure(spec, generation, resolved, false);
        self.save().await?;
        Ok(())
    }

    /// Let the connection out of the startup queue, or hold it at `position`.
    pub fn set_startup(&self, startup: Startup) {
        {
            let mut inner = self.lock();
            if inner.record.resolved.startup == startup {
                return;
            }
            inner.record.resolved.startup = startup;
            inner.dirty = true;
        }
        self.publish();
        self.wake.notify_one();
    }

    fn runnable(&self) -> bool {
        let inner = self.lock();
        inner.record.spec.started
            && inner.config_error.is_none()
            && inner.record.resolved.startup.admitted
            && !inner.drivers.is_empty()
    }

    /// W1: iterations run every enabled sync-set once; the next starts `frequency` after this
    /// one started, or at once if this one took longer.
    async fn iterate(self: Arc<Self>) {
        crate::supervise::failpoint("iterate", &self.key);
        loop {
            if !self.runnable() {
                self.wake.notified().await;
                continue;
            }
            // A wake-up from before this iteration is stale: the iteration sees the change.
            let _ = self.wake.notified().now_or_never();
            let mut restarts = self.restarts.subscribe();
            let started = Instant::now();
            let (iteration, plan, frequency) = {
                let mut inner = self.lock();
                inner.record.iteration += 1;
                inner.dirty = true;
                let plan: Vec<(String, Arc<Drivers>)> = inner
                    .record
                    .spec
                    .sync_sets
                    .iter()
                    .filter_map(|s| {
                        inner
                            .drivers
                            .get(&s.name)
                            .map(|d| (s.name.clone(), d.clone()))
                    })
                    .collect();
                (
                    inner.record.iteration,
                    plan,
                    inner.record.spec.frequency.as_std(),
                )
            };
            self.publish();
            let mut behind = false;
            for (name, drivers) in plan {
                // Restarted: this iteration ends here, and the next begins at once.
                if restarts.has_changed().unwrap_or(false) {
                    behind = true;
                    break;
                }
                if !self.runnable() {
                    break;
                }
                match self
                    .run_sync_set(iteration, &name, &drivers, &mut restarts)
                    .await
                {
                    Synced::CaughtUp => {}
                    Synced::Behind => behind = true,
                    // Its fetch saw the restart (and marked it seen): the iteration ends here
                    // too, the sync-sets after it are not run with the clients from before.
                    Synced::Interrupted => {
                        behind = true;
                        break;
                    }
                }
            }
            // A sync-set that read only part of what changed (more pages than one fetch holds)
            // is behind its source: the next iteration starts at once (W1: at most
            // `frequency` apart), not a whole interval later.
            let next = if behind {
                Instant::now()
            } else {
                started + frequency
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One sync-set, once: fetch what changed since its watermark, hand each record to the
    /// target in change order, advance the watermark only past accepted records.
    async fn run_sync_set(
        &self,
        iteration: u64,
        name: &str,
        drivers: &Drivers,
        restarts: &mut watch::Receiver<u64>,
    ) -> Synced {
        let progress = {
            let mut inner = self.lock();
            inner.ongoing = Some(name.to_owned());
            inner
                .record
                .sync_sets
                .entry(name.to_owned())
                .or_default()
                .progress
                .clone()
        };
        self.publish();
        let key = format!("{}/{name}", self.key);
        let outcome = self.sync(&key, name, progress, drivers, restarts).await;
        let synced = *outcome.as_ref().unwrap_or(&Synced::CaughtUp);
        let outcome = outcome.map(|_| ());
        // Interrupted by a restart: what it sent is recorded, but it did not complete.
        let completed = synced != Synced::Interrupted;
        {
            let mut inner = self.lock();
            inner.ongoing = None;
            inner.dirty = true;
            let record = inner.record.sync_sets.entry(name.to_owned()).or_default();
            if completed {
                record.last_completed_iteration = Some(iteration);
                match outcome {
                    Ok(()) => {
                        record.last_result = Some(SyncResult::Success);
                        record.last_error = None;
                    }
                    Err(e) => {
                        // Once per distinct error: the same failure every iteration is one line.
                        if record.last_error.as_deref() == Some(e.as_str()) {
                            tracing::debug!(connection = %self.key, sync_set = name, error = %e, "sync-set failed again");
                        } else {
                            tracing::warn!(connection = %self.key, sync_set = name, error = %e, "sync-set failed");
                        }
                        record.last_result = Some(SyncResult::Failed);
                        record.last_error = Some(e);
                    }
                }
            }
        }
        self.publish();
        if let Err(e) = self.save().await {
            tracing::error!(connection = %self.key, error = %e, "cannot save the connection's progress");
        }
        synced
    }

    async fn sync(
        &self,
        key: &str,
        name: &str,
        mut progress: Progress,
        drivers: &Drivers,
        restarts: &mut watch::Receiver<u64>,
    ) -> Result<Synced, String> {
        let fetched = tokio::select! {
            fetched = drivers.source.fetch(progress.watermark.as_ref()) => {
                fetched.map_err(|e| e.to_string())?
            }
            // Nothing was sent yet: nothing to record.
            _ = restarts.changed() => return Ok(Synced::Interrupted),
        };
        let mut pending = progress
            .pending(fetched.records)
            .map_err(|e| e.to_string())?;
        let complete = fetched.complete;
        if !complete {
            pending = Progress::complete_prefix(pending);
        }
        let started_at = progress.watermark.clone();
        // W3: up to SYNC_WINDOW records in flight, their outcomes taken in change order: the
        // watermark moves over the accepted prefix only. After a refusal nothing new is sent;
        // what is in flight finishes, and what of it was accepted is remembered, not resent.
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut next = pending.iter();
        let mut unsaved = 0;
        let mut result = Ok(());
        loop {
            // Restarted: nothing new is sent; what is in flight is answered and recorded.
            let restarted = restarts.has_changed().unwrap_or(false);
            while result.is_ok() && !restarted && in_flight.len() < progress.window(SYNC_WINDOW) {
                let Some(record) = next.next() else { break };
                let send = if progress.accepted_already(record) {
                    Box::pin(std::future::ready(Ok(())))
                } else {
                    drivers.target.send(key, record)
                };
                in_flight.push_back(async move { (record, send.await) });
            }
            let Some((record, sent)) = futures::StreamExt::next(&mut in_flight).await else {
                break;
            };
            let refused_earlier = result.is_err();
            progress.settle(record, sent.is_ok(), refused_earlier);
            match sent {
                Ok(()) => unsaved += 1,
                Err(e) if !refused_earlier => result = Err(format!("record {}: {e}", record.id)),
                Err(_) => {}
            }
            if unsaved >= SAVE_EVERY {
                self.record_progress(name, &progress, unsaved);
                unsaved = 0;
                if let Err(e) = self.save().await {
                    return Err(format!("cannot save the watermark: {e}"));
                }
            }
        }
        self.record_progress(name, &progress, unsaved);
        if result.is_ok() && restarts.has_changed().unwrap_or(false) {
            return Ok(Synced::Interrupted);
        }
        // Caught up, unless the fetch stopped at its cap and the watermark moved (so asking
        // again at once makes progress rather than spinning on the same records).
        let moved = progress.watermark != started_at;
        result.map(|()| {
            if complete || !moved {
                Synced::CaughtUp
            } else {
                Synced::Behind
            }
        })
    }

    fn record_progress(&self, name: &str, progress: &Progress, newly_synced: u64) {
        let mut inner = self.lock();
        let record = inner.record.sync_sets.entry(name.to_owned()).or_default();
        record.progress = progress.clone();
        record.records_synced += newly_synced;
        inner.dirty = true;
    }

    /// W4: the watermarks and accepted ids go to the store, so a restart goes on from them.
    async fn save(&self) -> Result<(), StoreError> {
        let value = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            serde_json::to_vec(&inner.record.saved()).map_err(StoreError::encode)?
        };
        self.store
            .save_record(RecordKind::Connection, &self.key, value)
            .await
    }

    /// The status derivation's inputs, as far as the worker knows them.
    fn inputs(inner: &Inner) -> Inputs {
        let spec = &inner.record.spec;
        let startup = &inner.record.resolved.startup;
        let views = spec
            .sync_sets
            .iter()
            .filter(|s| s.enabled)
            .map(|s| {
                let r = inner.record.sync_sets.get(&s.name);
                SyncSetView {
                    name: s.name.clone(),
                    last_result: r.and_then(|r| r.last_result),
                    completed_since_start: r
                        .and_then(|r| r.last_completed_iteration)
                        .is_some_and(|i| i > inner.started_iteration),
                    last_error: r.and_then(|r| r.last_error.clone()),
                }
            })
            .collect::<Vec<_>>();
        Inputs {
            operator: OperatorPhase::Pushed,
            started: spec.started,
            config_error: inner.config_error.clone(),
            enabled_sync_sets: views.len(),
            queue_position: (!startup.admitted).then(|| startup.position.unwrap_or(1)),
            worker: WorkerView::Report(views),
        }
    }

    pub fn derived(&self) -> Derived {
        status::derive(&Self::inputs(&self.lock()))
    }

    fn publish(&self) {
        let status = self.derived().status;
        self.statuses.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    pub fn report(&self) -> ConnectionReport {
        let inner = self.lock();
        let derived = status::derive(&Self::inputs(&inner));
        let sync_sets = inner
            .record
            .spec
            .sync_sets
            .iter()
            .map(|s| {
                let r = inner
                    .record
                    .sync_sets
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_default();
                SyncSetStatus {
                    name: s.name.clone(),
                    last_result: r.last_result,
                    last_completed_iteration: r.last_completed_iteration,
                    ongoing: inner.ongoing.as_deref() == Some(s.name.as_str()),
                    watermark: r.progress.watermark.as_ref().map(Watermark::as_param),
                    records_synced: r.records_synced,
                    last_error: r.last_error,
                }
            })
            .collect();
        let faults = self.panics.faults();
        ConnectionReport {
            faults: (faults.panics > 0).then_some(faults),
            status: derived.status,
            reason: derived.reason.to_owned(),
            message: derived.message,
            observed_generation: inner.record.generation,
            iteration: inner.record.iteration,
            startup_queue_position: (!inner.record.resolved.startup.admitted)
                .then(|| inner.record.resolved.startup.position.unwrap_or(1)),
            sync_sets,
            started_iteration: inner.started_iteration,
            restarted: inner.restarted.clone(),
        }
    }

    /// Stop hosting (DELETE): the record stays, marked as no longer hosted.
    pub async fn stop(&self) -> Result<(), StoreError> {
        self.lock().record.hosted = false;
        self.pause().await
    }

    /// End the iterations and save (shutdown).
    pub async fn pause(&self) -> Result<(), StoreError> {
        if let Some(task) = self.lock_task().take() {
            task.abort();
        }
        self.lock().dirty = true;
        self.save().await
    }
}
