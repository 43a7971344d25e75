//! The operator: what it makes of each Connection, Transport and WorkerPool on a cluster, in
//! five rooms, each importing only from the rooms below it:
//!
//! - `kinds` — what each kind supplies to the skeleton (transport, connection) and the pools
//!   (worker_pool, placement: where a pooled resource lives);
//! - `reconcile` — the one reconcile skeleton every kind runs, and the guard around it for
//!   objects that cannot be read;
//! - `workers` — a resource's worker as the reconciler sees it: its objects applied, its pod;
//! - `runtime` — the controller runtime: context, caches, watches' scope, triggers, API
//!   client, backoff, leadership, metrics, Events, conditions and status writing, errors, the
//!   workers' CA, the worker client and its report watches;
//! - `objects` — pure builders of the Kubernetes objects (worker objects, NetworkPolicies,
//!   certificates), no client.
//!
//! `run` wires them into `ferry operator`.

// The rooms, from the top down: a room imports only from the rooms below it (checked by
// tests/operator_rooms.rs). `run` wires them into `ferry operator`.
pub mod kinds;
pub mod objects;
pub mod reconcile;
pub mod runtime;
pub mod workers;

#[cfg(test)]
pub(crate) mod fixtures;
pub mod flags;
pub mod run;

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
