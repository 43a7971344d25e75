//! The worker: hosts transports and connections (each kind a `HostedRuntime`, registered in
//! `kinds.rs`), owns the store, serves the HTTP API of docs/worker-api.md (`crate::wire`).

pub mod api;
pub mod budget;
pub mod flags;
pub mod hosted;
mod kinds;
pub mod linger;
pub mod metrics;
pub mod process;
pub mod server;
pub mod starting;
pub mod tls;
pub mod tokens;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use serde_json::Value;

use crate::api::storage::ReclaimPolicy;
use crate::store::{
    RecordKind, Store, StoreError, blocking,
    jetstream::{JetStream, JetStreamError, Settings as JetStreamSettings},
};
use crate::transport::queue::QueueHome;
use crate::wire::Purge;
use crate::{
    api::validate::{InvalidManifest, ManifestValidator, Resource},
    connection::runtime::ConnectionError,
    transport::runtime::RuntimeError,
    wire::key,
};
use futures::future::BoxFuture;
use hosted::{ForEachKind, HostedRuntime};
use tokens::TokenHash;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Invalid(#[from] InvalidManifest),
    #[error("the object is a {kind}; this route takes a {expected}")]
    WrongKind {
        kind: String,
        expected: &'static str,
    },
    #[error("the body names {body}, but the URL names {url}")]
    NameMismatch { body: String, url: String },
    #[error("cannot host {key}: {source}")]
    Runtime {
        key: String,
        #[source]
        source: RuntimeError,
    },
    #[error("cannot host connection {key}: {source}")]
    Connection {
        key: String,
        #[source]
        source: ConnectionError,
    },
    #[error("the saved spec of {key} cannot be read by this ferry: {source}")]
    SavedSpec {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the `resolved` object is malformed: {0}")]
    Resolved(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] crate::store::record::RecordError),
}

/// Where producers reach this worker, for the `endpoint` in reports.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub data_dir: PathBuf,
    pub public_url: String,
    /// Deliveries in flight while forwarding a queue (1 keeps the host's order exact).
    pub forward_window: usize,
    /// Bytes of transactions ingest may hold in memory at once, across all requests.
    pub memory_budget: u64,
    /// A pool worker on JetStream: its transports' queues and records are there.
    pub jetstream: Option<crate::store::jetstream::Settings>,
}

pub struct Worker {
    store: Store,
    /// Where transports' queues are opened: the store, or the pool's JetStream.
    queue_home: QueueHome,
    public_url: String,
    forward_window: usize,
    budget: budget::MemoryBudget,
    /// Set when the HTTP server begins to stop: bodies still arriving are refused.
    stopping: tokio::sync::watch::Sender<bool>,
    kinds: kinds::HostedKinds,
    /// Held from "is it hosted?" to its insert or removal: two PUTs of one new resource must
    /// not both start a runtime on the same queue and records (admin requests only; ingest
    /// never takes it).
    hosting: tokio::sync::Mutex<()>,
    validator: Mutex<ManifestValidator>,
    /// The transports with an ingest token of their own (on a pool's worker), by key: their
    /// producers' token is checked against it, never the worker's.
    ingest_tokens: RwLock<HashMap<String, TokenHash>>,
}

impl Worker {
    /// Open the store. With `rehost`, every resource the store was hosting before the restart
    /// is hosted again at once (T8), before any desired state arrives.
    pub async fn open(options: WorkerOptions, rehost: bool) -> Result<Arc<Self>, WorkerError> {
        // Opening (recovery after a crash) and reading every record are disk work: on the
        // blocking pool, not on the threads that serve requests.
        let dir = options.data_dir.clone();
        let store = blocking(move || Store::open(&dir)).await?;
        let ingest_tokens = saved_ingest_tokens(&store).await?;
        let queue_home = match options.jetstream {
            Some(settings) => QueueHome::JetStream(Box::new(connect_jetstream(settings).await?)),
            None => QueueHome::Local(store.clone()),
        };
        // On JetStream what a worker hosted is the pool's to place again (any worker may host
        // it now): the operator gives it its resources; nothing is hosted from a record.
        let rehost = rehost && matches!(queue_home, QueueHome::Local(_));
        let worker = Arc::new(Self {
            store,
            queue_home,
            public_url: options.public_url.trim_end_matches('/').to_owned(),
            forward_window: options.forward_window,
            budget: budget::MemoryBudget::new(options.memory_budget),
            stopping: tokio::sync::watch::channel(false).0,
            kinds: kinds::HostedKinds::default(),
            hosting: tokio::sync::Mutex::new(()),
            validator: Mutex::new(ManifestValidator::new()),
            ingest_tokens: RwLock::new(ingest_tokens),
        });
        if rehost {
            let rehosting = kinds::each(Rehost(&worker, Vec::new())).1;
            for rehost in rehosting {
                rehost.await?;
            }
        }
        Ok(worker)
    }

    /// Host again every resource of a kind whose saved record says it was hosted. One that
    /// cannot be read or started is left out, and the others run.
    async fn rehost<R: HostedRuntime>(&self) -> Result<(), WorkerError> {
        let store = self.store.clone();
        let records = blocking(move || store.records(R::RECORD)).await?;
        let kind = R::KIND.singular();
        for (key, raw) in records {
            let desired = match R::saved(&key, &raw) {
                Ok(Some(desired)) => desired,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(kind, resource = %key, error = %e, "not hosted again after restart: the saved record cannot be read; it is hosted when its desired state arrives");
                    continue;
                }
            };
            match self.start::<R>(&key, desired).await {
                Ok(_) => tracing::info!(kind, resource = %key, "hosted again after restart"),
                Err(e) => {
                    tracing::error!(kind, resource = %key, error = %e, "cannot host it again after restart; the others are hosted");
                }
            }
        }
        Ok(())
    }

    /// The hash of the transport's own ingest token, when it has one.
    pub fn ingest_token(&self, key: &str) -> Option<TokenHash> {
        self.ingest_tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Give the transport at `key` an ingest token of its own (kept on the volume first, so a
    /// restart checks it too). From then on only that token posts to it.
    pub async fn set_ingest_token(&self, key: &str, hash: TokenHash) -> Result<(), WorkerError> {
        if self.ingest_token(key) == Some(hash) {
            return Ok(());
        }
        self.store
            .save_record(RecordKind::IngestToken, key, hash.to_hex().into_bytes())
            .await?;
        self.ingest_tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), hash);
        Ok(())
    }

    /// The budget for transaction bytes in memory (shared by every ingest).
    pub fn budget(&self) -> budget::MemoryBudget {
        self.budget.clone()
    }

    /// The HTTP server is stopping: no new transaction is received from now on.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`Worker::begin_stop`] was called.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where transports' queues are opened.
    pub fn queue_home(&self) -> &QueueHome {
        &self.queue_home
    }

    /// The hosted resource of kind `R` at `key` (`namespace/name`).
    pub fn get<R: HostedRuntime>(&self, key: &str) -> Option<Arc<R>> {
        R::hosted(self).get(key)
    }

    /// How many resources of kind `R` are hosted.
    pub fn hosted_count<R: HostedRuntime>(&self) -> usize {
        R::hosted(self).count()
    }

    /// Every hosted resource of kind `R`.
    pub fn all<R: HostedRuntime>(&self) -> Vec<Arc<R>> {
        R::hosted(self).all()
    }

    async fn start<R: HostedRuntime>(
        &self,
        key: &str,
        desired: R::Desired,
    ) -> Result<Arc<R>, WorkerError> {
        let runtime = R::start(self, key, desired).await?;
        R::hosted(self).insert(key, runtime.clone());
        Ok(runtime)
    }

    /// Check a manifest the way the API server does.
    pub fn validate(&self, doc: &Value) -> Result<Resource, InvalidManifest> {
        self.validator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .validate(doc)
    }

    /// Create or update a hosted resource from a PUT's body. Answers it and whether it was
    /// created. `url` is the `namespace/name` of the route, when there is one.
    pub async fn apply<R: HostedRuntime>(
        &self,
        doc: &Value,
        url: Option<&str>,
    ) -> Result<(Arc<R>, bool), WorkerError> {
        let (resource, beside) = R::from_manifest(self, &with_namespace(doc, url))?;
        self.host::<R>(resource, beside, url).await
    }

    /// Create or update a hosted resource. An update needs no lock; a start checks again under
    /// the hosting lock (another PUT may have started it meanwhile) and is inserted before the
    /// lock goes.
    pub async fn host<R: HostedRuntime>(
        &self,
        resource: R::Resource,
        beside: R::Beside,
        url: Option<&str>,
    ) -> Result<(Arc<R>, bool), WorkerError> {
        let (meta, desired) = R::desired(resource, beside);
        let key = object_key(&meta, url)?;
        if let Some(existing) = self.get::<R>(&key).filter(|r| !r.moved()) {
            existing.update(desired).await?;
            return Ok((existing, false));
        }
        let _hosting = self.hosting.lock().await;
        match self.get::<R>(&key) {
            // Moved away and placed here again (T12): its runtime here was fenced; it takes
            // the record anew.
            Some(fenced) if fenced.moved() => {
                R::hosted(self).remove(&key);
                fenced.stop().await?;
            }
            Some(existing) => {
                existing.update(desired).await?;
                return Ok((existing, false));
            }
            None => {}
        }
        Ok((self.start::<R>(&key, desired).await?, true))
    }

    /// Stop hosting a resource (DELETE). What it keeps on disk stays, unless `purge` says
    /// otherwise: then its records, queue and ingest token go too (with `Remove` also when it
    /// was hosted no more), so a resource of the same name starts empty.
    pub async fn remove<R: HostedRuntime>(
        &self,
        key: &str,
        purge: Purge,
    ) -> Result<Removed, WorkerError> {
        let _hosting = self.hosting.lock().await;
        let (hosted, purge) = match R::hosted(self).remove(key) {
            Some(runtime) if runtime.moved() => {
                runtime.stop().await?;
                self.budget.forget(key);
                (true, false)
            }
            Some(runtime) => {
                let delete = runtime.reclaim_policy() == ReclaimPolicy::Delete;
                runtime.stop().await?;
                self.budget.forget(key);
                (
                    true,
                    purge == Purge::Remove || (purge == Purge::AsItsReclaimPolicy && delete),
                )
            }
            None => (false, purge == Purge::Remove),
        };
        let purged = purge && self.purge::<R>(key).await?;
        if purge && R::RECORD == RecordKind::Transport {
            self.ingest_tokens
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
        }
        Ok(Removed {
            hosted,
            purged,
            purging: purge,
        })
    }

    /// Remove what is kept of a resource: on the volume, and its stream and record on the
    /// pool's JetStream.
    async fn purge<R: HostedRuntime>(&self, key: &str) -> Result<bool, WorkerError> {
        let mut purged = self.store.purge(R::RECORD, key).await?;
        if let QueueHome::JetStream(js) = &self.queue_home {
            purged |= match R::RECORD {
                RecordKind::Transport => js.delete_transport(key).await?,
                _ => false,
            };
        }
        Ok(purged)
    }

    /// Save every record durably (shutdown).
    pub async fn shutdown(&self) {
        // In reverse: what feeds another kind stops first.
        let pausing = kinds::each(Pause(self, Vec::new())).1;
        for pause in pausing.into_iter().rev() {
            pause.await;
        }
    }

    async fn pause_all<R: HostedRuntime>(&self) {
        for runtime in self.all::<R>() {
            if let Err(e) = runtime.pause().await {
                tracing::error!(kind = R::KIND.singular(), resource = %runtime.key(), error = %e, "cannot save the record at shutdown");
            }
        }
    }
}

/// Connect to the pool's JetStream, trying again while it is unavailable (the worker is not
/// Ready meanwhile); a server too old, or settings it refuses, end the worker with the reason.
async fn connect_jetstream(settings: JetStreamSettings) -> Result<JetStream, WorkerError> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match JetStream::connect(settings.clone()).await {
            Ok(js) => {
                tracing::info!(url = %settings.url, version = %js.server_version(), bucket = %settings.bucket, "connected to JetStream");
                return Ok(js);
            }
            Err(e @ (JetStreamError::ServerTooOld { .. } | JetStreamError::Refused(_))) => {
                return Err(StoreError::from(e).into());
            }
            Err(e) => {
                tracing::warn!(url = %settings.url, error = %e, "JetStream unavailable; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// What a DELETE did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    /// It was hosted, and is no more.
    pub hosted: bool,
    /// What it kept on disk is removed (`false` also when there was nothing).
    pub purged: bool,
    /// A purge was asked for and applied (its own reclaimPolicy may have said keep).
    pub purging: bool,
}

/// The per-transport ingest token hashes kept on the volume. One that cannot be read is left
/// out (its transport takes the worker's token until the operator's next PUT gives it again).
async fn saved_ingest_tokens(store: &Store) -> Result<HashMap<String, TokenHash>, WorkerError> {
    let store = store.clone();
    let records = blocking(move || store.records(RecordKind::IngestToken)).await?;
    let mut hashes = HashMap::new();
    for (key, raw) in records {
        match std::str::from_utf8(&raw)
            .ok()
            .and_then(|hex| TokenHash::from_hex(hex).ok())
        {
            Some(hash) => {
                hashes.insert(key, hash);
            }
            None => {
                tracing::error!(transport = %key, "the saved hash of its ingest token cannot be read; it is given again with the transport's next PUT");
            }
        }
    }
    Ok(hashes)
}

/// Re-hosting every kind, one future each, in registration order.
struct Rehost<'a>(&'a Worker, Vec<BoxFuture<'a, Result<(), WorkerError>>>);

impl ForEachKind for Rehost<'_> {
    fn kind<R: HostedRuntime>(mut self) -> Self {
        self.1.push(Box::pin(self.0.rehost::<R>()));
        self
    }
}

/// Saving every kind's records at shutdown.
struct Pause<'a>(&'a Worker, Vec<BoxFuture<'a, ()>>);

impl ForEachKind for Pause<'_> {
    fn kind<R: HostedRuntime>(mut self) -> Self {
        self.1.push(Box::pin(self.0.pause_all::<R>()));
        self
    }
}

/// The object's `namespace/name`, which must be the route's when there is one.
fn object_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    url: Option<&str>,
) -> Result<String, WorkerError> {
    let key = key(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    );
    match url {
        Some(url) if url != key => Err(WorkerError::NameMismatch {
            body: key,
            url: url.to_owned(),
        }),
        _ => Ok(key),
    }
}

/// A manifest without a namespace takes the route's (as kubectl takes the context's).
fn with_namespace(doc: &Value, url: Option<&str>) -> Value {
    let mut doc = doc.clone();
    if let (Some(url), Some(meta)) = (url, doc.get_mut("metadata").and_then(Value::as_object_mut))
        && !meta.contains_key("namespace")
        && let Some((ns, _)) = url.split_once('/')
    {
        meta.insert("namespace".into(), Value::String(ns.into()));
    }
    doc
}
