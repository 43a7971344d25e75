//! A kind of resource the worker hosts, as one concept: how its desired state is read from a
//! manifest or a saved record, and how its runtime is started, updated, reported and
//! stopped. The worker (`mod.rs`), its routes (`api.rs`), its restart (re-hosting) and its
//! shutdown are written once over this trait; each kind implements it and is registered in
//! `kinds.rs`.

use std::{collections::BTreeMap, future::Future, sync::Arc, sync::RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{Worker, WorkerError};
use crate::{
    store::{RecordKind, StoreError},
    wire,
};

/// A hosted resource's runtime, as the worker drives it.
pub trait HostedRuntime: Send + Sync + Sized + 'static {
    /// How the routes name the kind.
    const KIND: wire::Kind;
    /// Where its saved records are.
    const RECORD: RecordKind;
    /// What stays on disk once it is no longer hosted, in words.
    const KEPT: &'static str;
    /// What a purge removes from disk, in words.
    const PURGED: &'static str;
    /// The resource as a manifest gives it, checked.
    type Resource: Send;
    /// What comes beside the manifest (a connection's `resolved`).
    type Beside: Send;
    /// What the runtime is started or updated with.
    type Desired: Send + 'static;
    /// `GET`'s answer.
    type Report: serde::Serialize + wire::Marked + Send;

    /// The worker's runtimes of this kind.
    fn hosted(worker: &Worker) -> &Hosted<Self>;

    /// A PUT's body: the manifest, checked, and what comes beside it.
    fn from_manifest(
        worker: &Worker,
        doc: &Value,
    ) -> Result<(Self::Resource, Self::Beside), WorkerError>;

    /// The object's metadata and what the runtime is given.
    fn desired(resource: Self::Resource, beside: Self::Beside) -> (ObjectMeta, Self::Desired);

    /// What a saved record asks for: `None` when it is no longer hosted.
    fn saved(key: &str, raw: &[u8]) -> Result<Option<Self::Desired>, WorkerError>;

    fn start(
        worker: &Worker,
        key: &str,
        desired: Self::Desired,
    ) -> impl Future<Output = Result<Arc<Self>, WorkerError>> + Send;

    fn update(
        self: &Arc<Self>,
        desired: Self::Desired,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send;

    /// Restart its runtime once for `value` (`ferry.dev/restart`); `just_started`: the same
    /// request hosted it, so the value is only noted as handled.
    fn restart(
        self: &Arc<Self>,
        value: String,
        just_started: bool,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send;

    fn key(&self) -> &str;

    fn report(&self) -> Self::Report;

    /// What its own spec says becomes of what it keeps when it is deleted.
    fn reclaim_policy(&self) -> crate::api::storage::ReclaimPolicy;

    /// Another worker took it over (a pool on JetStream, T12): what it kept is that worker's
    /// now, and is never purged from here.
    fn moved(&self) -> bool {
        false
    }

    /// Stop hosting it (DELETE): a restart does not host it again.
    fn stop(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Save everything durably (shutdown): a restart hosts it again.
    fn pause(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Something done once for each hosted kind (its routes, re-hosting, saving at shutdown):
/// `kinds::each` calls it for every kind, in the order they are registered.
pub trait ForEachKind {
    fn kind<R: HostedRuntime>(self) -> Self;
}

/// The runtimes of one kind, by `namespace/name`.
pub struct Hosted<R>(RwLock<BTreeMap<String, Arc<R>>>);

impl<R> Default for Hosted<R> {
    fn default() -> Self {
        Self(RwLock::new(BTreeMap::new()))
    }
}

impl<R> Hosted<R> {
    pub fn get(&self, key: &str) -> Option<Arc<R>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// How many are hosted.
    pub fn count(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn all(&self) -> Vec<Arc<R>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn insert(&self, key: &str, runtime: Arc<R>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), runtime);
    }

    pub(super) fn remove(&self, key: &str) -> Option<Arc<R>> {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }
}
