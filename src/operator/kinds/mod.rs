//! What each kind supplies to the reconcile skeleton (`transport`, `connection`) and the
//! WorkerPools (`worker_pool`) with `placement`, where a pooled resource lives. Pools plug into
//! the skeleton through `WorkerResource::pool_home` / `placed` / `leave_pool`.

pub mod connection;
pub mod failover;
pub mod placement;
pub mod transport;
pub mod worker_pool;
