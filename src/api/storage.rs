//! The worker's persistent volume, shared by both kinds.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::quantity::ByteQuantity;

/// What happens to the worker's volume when the resource is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ReclaimPolicy {
    /// Keep the PersistentVolumeClaim (and any queued transactions in it).
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaim with the resource.
    Delete,
}

/// The worker's data directory: a PersistentVolumeClaim in Kubernetes.
///
/// Size and class are fixed once created (a transition rule: the API server refuses the
/// change at `kubectl apply`, rather than the StatefulSet's immutable claim template failing
/// every reconcile); `reclaimPolicy` may change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.size) == has(oldSelf.size) && (!has(self.size) || quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) == 0) && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)"
).message("size and storageClassName cannot change once the worker's volume exists (reclaimPolicy can)"))]
pub struct Storage {
    /// Size of the volume; the default depends on the kind (Transport 2Gi, Connection 100Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("quantity(string(self)).compareTo(quantity('1Pi')) <= 0").message("must be at most 1Pi"))]
    pub size: Option<ByteQuantity>,
    /// StorageClass of the volume; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Retain (default) keeps the volume when the resource is deleted; Delete removes it. In a
    /// WorkerPool: what the resource kept on its worker's volume (queue, watermarks).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Storage {
    /// The volume size, or the kind's default.
    pub fn size_or(&self, default: u64) -> u64 {
        self.size.as_ref().map_or(default, ByteQuantity::bytes)
    }
}
