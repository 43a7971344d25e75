//! A resource's worker as the reconciler sees it: its objects applied only where the resource
//! controls them (`worker_objects`), its pod and whether it can be asked (`worker_pod`), and
//! the rollout of the operator's template changes at each worker (`rollout`).

pub mod rollout;
pub mod worker_objects;
pub mod worker_pod;
