//! The operator: what it makes of each Connection and Transport on a cluster — the worker's
//! objects (builders), the one reconcile skeleton both kinds run (reconcile) with what each
//! kind supplies (transport, connection), the status they write, and `ferry operator` (run).

pub mod api_client;
pub mod authority;
pub mod backoff;
pub mod builders;
pub mod caches;
pub mod certificates;
pub mod connection;
pub mod context;
pub mod error;
pub mod events;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod guard;
pub mod leadership;
pub mod metrics;
pub mod network_policy;
pub mod placement;
pub mod reconcile;
pub mod report_watch;
pub mod run;
pub mod status;
mod status_writer;
pub mod transport;
pub mod triggers;
pub mod watch_scope;
pub mod worker_client;
pub mod worker_objects;
pub mod worker_pod;
pub mod worker_pool;

/// A namespaced kind the operator reads, writes and watches (Transport, Connection, and
/// their `DeserializeGuard`s): one name for the bounds its generic steps share.
pub trait NamespacedObject:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> NamespacedObject for K where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The readable objects of a guarded cache or list.
pub fn readable<K: Clone>(guarded: &[std::sync::Arc<kube::core::DeserializeGuard<K>>]) -> Vec<K> {
    guarded
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .collect()
}
