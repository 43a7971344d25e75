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
