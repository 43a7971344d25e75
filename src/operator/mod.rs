//! The operator: what it makes of each Connection and Transport on a cluster — the worker's
//! objects (builders), the reconcilers, the status they write, and `ferry operator` (run).

pub mod builders;
pub mod connection_reconciler;
pub mod events;
pub mod guard;
pub mod leadership;
pub mod metrics;
pub mod run;
pub mod status;
pub mod transport_reconciler;
pub mod worker_client;

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
