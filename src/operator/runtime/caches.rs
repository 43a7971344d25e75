//! What the operator reads from its watches instead of asking the API server: the workers'
//! Secrets (their tokens), Services and StatefulSets (metadata), and pods. The reconcile reads
//! these first and asks the API server only for what is not there (yet): an object just
//! created, or before the watches have listed. Filled in `run.rs`; empty (every read goes to
//! the API server) where no watch runs, as in the mock-server tests.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Pod, Secret, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Resource,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::reflector::{self, ObjectRef, Store},
};

use crate::api::{Connection, Transport, WorkerPool};

/// The label selector of every object the operator makes for a worker (and of the pods).
pub const WORKER_OBJECTS: &str =
    "app.kubernetes.io/managed-by=ferry-operator,app.kubernetes.io/component=worker";

#[derive(Clone)]
pub struct Caches {
    /// The Transport controller's own cache (connections look their targets up in it).
    pub transports: Store<DeserializeGuard<Transport>>,
    /// The Connection controller's own cache (pools look up who names them in both).
    pub connections: Store<DeserializeGuard<Connection>>,
    /// The WorkerPool controller's own cache (resources find their pool in it).
    pub pools: Store<DeserializeGuard<WorkerPool>>,
    pub secrets: Store<Secret>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub stateful_sets: Store<PartialObjectMeta<StatefulSet>>,
    pub pods: Store<Pod>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
}

/// A store nothing writes to: always empty.
fn empty<K>() -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    reflector::store().0
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            transports: empty(),
            connections: empty(),
            pools: empty(),
            secrets: empty(),
            services: empty(),
            stateful_sets: empty(),
            pods: empty(),
            network_policies: empty(),
        }
    }
}

/// Whether the store's watch has listed once (a store nobody fills, as in the mock-server
/// tests, never has).
pub fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// The cached object `namespace/name`, if the watch has it.
pub fn cached<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}
