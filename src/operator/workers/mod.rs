//! A resource's worker as the reconciler sees it: its objects applied only where the resource
//! controls them (`worker_objects`), its pod and whether it can be asked (`worker_pod`).

pub mod worker_objects;
pub mod worker_pod;
