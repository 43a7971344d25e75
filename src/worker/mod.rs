//! The worker: hosts transports, owns the store, serves the HTTP API of docs/worker-api.md.

pub mod api;
pub mod budget;
pub mod linger;
pub mod metrics;
pub mod server;
pub mod starting;
pub mod tokens;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use serde_json::Value;

use crate::store::{RecordKind, Store, StoreError};
use crate::{
    api::{
        Connection, Transport,
        validate::{InvalidManifest, ManifestValidator, Resource},
    },
    connection::runtime::{ConnectionError, ConnectionRecord, ConnectionRuntime},
    transport::runtime::{Record, RuntimeError, TransportRuntime},
    wire::{self, Resolved, key},
};

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
    #[error("the `resolved` object is malformed: {0}")]
    Resolved(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
}

pub struct Worker {
    store: Store,
    public_url: String,
    forward_window: usize,
    budget: budget::MemoryBudget,
    /// Set when the HTTP server begins to stop: bodies still arriving are refused.
    stopping: tokio::sync::watch::Sender<bool>,
    transports: RwLock<BTreeMap<String, Arc<TransportRuntime>>>,
    connections: RwLock<BTreeMap<String, Arc<ConnectionRuntime>>>,
    /// Held from "is it hosted?" to its insert or removal: two PUTs of one new resource must
    /// not both start a runtime on the same queue and records (admin requests only; ingest
    /// never takes it).
    hosting: tokio::sync::Mutex<()>,
    validator: Mutex<ManifestValidator>,
}

/// Run store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StoreError::ReadTask(Arc::new(e))))
}

impl Worker {
    /// Open the store. With `rehost`, every transport the store was hosting before the
    /// restart is hosted again at once (T8), before any desired state arrives.
    pub async fn open(options: WorkerOptions, rehost: bool) -> Result<Arc<Self>, WorkerError> {
        // Opening (recovery after a crash) and reading every record are disk work: on the
        // blocking pool, not on the threads that serve requests.
        let dir = options.data_dir.clone();
        let store = blocking(move || Store::open(&dir)).await?;
        let worker = Arc::new(Self {
            store,
            public_url: options.public_url.trim_end_matches('/').to_owned(),
            forward_window: options.forward_window,
            budget: budget::MemoryBudget::new(options.memory_budget),
            stopping: tokio::sync::watch::channel(false).0,
            transports: RwLock::new(BTreeMap::new()),
            connections: RwLock::new(BTreeMap::new()),
            hosting: tokio::sync::Mutex::new(()),
            validator: Mutex::new(ManifestValidator::new()),
        });
        if rehost {
            let store = worker.store.clone();
            let transports = blocking(move || store.records(RecordKind::Transport)).await?;
            for (key, raw) in transports {
                let record: Record = match serde_json::from_slice(&raw) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(transport = %key, error = %e, "saved record unreadable; not hosted");
                        continue;
                    }
                };
                if !record.hosted {
                    continue;
                }
                // One that cannot start is left out, as an unreadable record is: the others run.
                match worker.start(&key, record.spec, record.generation).await {
                    Ok(runtime) => {
                        tracing::info!(transport = %key, state = %runtime.state(), "hosted again after restart");
                    }
                    Err(e) => {
                        tracing::error!(transport = %key, error = %e, "cannot host it again after restart; the others are hosted");
                    }
                }
            }
            let store = worker.store.clone();
            let connections = blocking(move || store.records(RecordKind::Connection)).await?;
            for (key, raw) in connections {
                let record: ConnectionRecord = match serde_json::from_slice(&raw) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(connection = %key, error = %e, "saved record unreadable; not hosted");
                        continue;
                    }
                };
                if !record.hosted {
                    continue;
                }
                match worker
                    .start_connection(&key, record.spec, record.generation, record.resolved)
                    .await
                {
                    Ok(_) => tracing::info!(connection = %key, "hosted again after restart"),
                    Err(e) => {
                        tracing::error!(connection = %key, error = %e, "cannot host it again after restart; the others are hosted");
                    }
                }
            }
        }
        Ok(worker)
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

    fn endpoint(&self, key: &str) -> String {
        format!("{}{}", self.public_url, wire::transactions_path(key))
    }

    async fn start(
        &self,
        key: &str,
        spec: crate::api::TransportSpec,
        generation: Option<i64>,
    ) -> Result<Arc<TransportRuntime>, WorkerError> {
        let runtime = TransportRuntime::start(
            self.store.clone(),
            key.to_owned(),
            self.endpoint(key),
            spec,
            generation,
            self.forward_window,
        )
        .await
        .map_err(|source| WorkerError::Runtime {
            key: key.to_owned(),
            source,
        })?;
        self.write_transports()
            .insert(key.to_owned(), runtime.clone());
        Ok(runtime)
    }

    fn write_transports(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<TransportRuntime>>> {
        self.transports.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn transports(&self) -> Vec<Arc<TransportRuntime>> {
        self.transports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn transport(&self, key: &str) -> Option<Arc<TransportRuntime>> {
        self.transports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Check a manifest the way the API server does.
    pub fn validate(&self, doc: &Value) -> Result<Resource, InvalidManifest> {
        self.validator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .validate(doc)
    }

    /// Create or update a hosted transport from its manifest (PUT). Answers whether it was
    /// created. `url` is the `namespace/name` of the route, when there is one.
    pub async fn apply_transport(
        &self,
        doc: &Value,
        url: Option<&str>,
    ) -> Result<(Arc<TransportRuntime>, bool), WorkerError> {
        let transport = match self.validate(&with_namespace(doc, url))? {
            Resource::Transport(t) => t,
            Resource::Connection(_) => {
                return Err(WorkerError::WrongKind {
                    kind: "Connection".into(),
                    expected: "Transport",
                });
            }
        };
        self.host_transport(*transport, url).await
    }

    pub async fn host_transport(
        &self,
        transport: Transport,
        url: Option<&str>,
    ) -> Result<(Arc<TransportRuntime>, bool), WorkerError> {
        let key = object_key(&transport.metadata, url)?;
        let generation = transport.metadata.generation;
        let key = &key;
        self.update_or_start(
            transport.spec,
            || self.transport(key),
            |existing, spec| async move {
                existing
                    .update(spec, generation)
                    .await
                    .map_err(|source| WorkerError::Runtime {
                        key: key.clone(),
                        source,
                    })
            },
            |spec| self.start(key, spec, generation),
        )
        .await
    }

    /// Update the hosted runtime `hosted()` finds with `desired`, or start one with it. An
    /// update needs no lock; a start checks again under the hosting lock (another PUT may have
    /// started it meanwhile) and is inserted before the lock goes. Answers the runtime and
    /// whether it was started.
    async fn update_or_start<R, D, Updated, Started>(
        &self,
        desired: D,
        hosted: impl Fn() -> Option<Arc<R>>,
        update: impl FnOnce(Arc<R>, D) -> Updated,
        start: impl FnOnce(D) -> Started,
    ) -> Result<(Arc<R>, bool), WorkerError>
    where
        Updated: Future<Output = Result<(), WorkerError>>,
        Started: Future<Output = Result<Arc<R>, WorkerError>>,
    {
        if let Some(existing) = hosted() {
            update(existing.clone(), desired).await?;
            return Ok((existing, false));
        }
        let _hosting = self.hosting.lock().await;
        if let Some(existing) = hosted() {
            update(existing.clone(), desired).await?;
            return Ok((existing, false));
        }
        Ok((start(desired).await?, true))
    }

    /// Stop hosting a transport (DELETE); its queue and record stay on disk.
    pub async fn remove_transport(&self, key: &str) -> Result<bool, WorkerError> {
        let _hosting = self.hosting.lock().await;
        let Some(runtime) = self.write_transports().remove(key) else {
            return Ok(false);
        };
        runtime.stop().await?;
        Ok(true)
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionRuntime>> {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn connection(&self, key: &str) -> Option<Arc<ConnectionRuntime>> {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    async fn start_connection(
        &self,
        key: &str,
        spec: crate::api::ConnectionSpec,
        generation: Option<i64>,
        resolved: Resolved,
    ) -> Result<Arc<ConnectionRuntime>, WorkerError> {
        let runtime = ConnectionRuntime::start(
            self.store.clone(),
            key.to_owned(),
            spec,
            generation,
            resolved,
        )
        .await
        .map_err(|source| WorkerError::Connection {
            key: key.to_owned(),
            source,
        })?;
        self.connections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), runtime.clone());
        Ok(runtime)
    }

    /// Create or update a hosted connection from its manifest (PUT); the body may carry a
    /// top-level `resolved` object beside `spec`.
    pub async fn apply_connection(
        &self,
        doc: &Value,
        url: Option<&str>,
    ) -> Result<(Arc<ConnectionRuntime>, bool), WorkerError> {
        let resolved: Resolved = match doc.get("resolved") {
            Some(r) => serde_json::from_value(r.clone())
                .map_err(|e| WorkerError::Resolved(e.to_string()))?,
            None => Resolved::default(),
        };
        let mut manifest = with_namespace(doc, url);
        if let Some(map) = manifest.as_object_mut() {
            map.remove("resolved");
        }
        let connection = match self.validate(&manifest)? {
            Resource::Connection(c) => c,
            Resource::Transport(_) => {
                return Err(WorkerError::WrongKind {
                    kind: "Transport".into(),
                    expected: "Connection",
                });
            }
        };
        self.host_connection(*connection, resolved, url).await
    }

    pub async fn host_connection(
        &self,
        connection: Connection,
        resolved: Resolved,
        url: Option<&str>,
    ) -> Result<(Arc<ConnectionRuntime>, bool), WorkerError> {
        let key = object_key(&connection.metadata, url)?;
        let generation = connection.metadata.generation;
        let key = &key;
        self.update_or_start(
            (connection.spec, resolved),
            || self.connection(key),
            |existing, (spec, resolved)| async move {
                existing
                    .update(spec, generation, resolved)
                    .await
                    .map_err(|source| WorkerError::Connection {
                        key: key.clone(),
                        source,
                    })
            },
            |(spec, resolved)| self.start_connection(key, spec, generation, resolved),
        )
        .await
    }

    /// Stop hosting a connection (DELETE); its watermarks stay on disk.
    pub async fn remove_connection(&self, key: &str) -> Result<bool, WorkerError> {
        let _hosting = self.hosting.lock().await;
        let removed = self
            .connections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let Some(runtime) = removed else {
            return Ok(false);
        };
        runtime.stop().await?;
        Ok(true)
    }

    /// Save every record durably (shutdown).
    pub async fn shutdown(&self) {
        for runtime in self.connections() {
            if let Err(e) = runtime.pause().await {
                tracing::error!(connection = %runtime.key(), error = %e, "cannot save the record at shutdown");
            }
        }
        for runtime in self.transports() {
            if let Err(e) = runtime.pause().await {
                tracing::error!(transport = %runtime.key(), error = %e, "cannot save the record at shutdown");
            }
        }
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
