//! The controller runtime every room above uses: the shared `context`, `caches`, the watches'
//! scope, `triggers`, the bounded `api_client`, `backoff`, `leadership`, `metrics`, `events`,
//! conditions (`status`) and their writing, the reconcile `error`, the workers' CA
//! (`authority`), the `worker_client` and its `report_watch`.

pub mod api_client;
pub mod authority;
pub mod backoff;
pub mod caches;
pub mod context;
pub mod error;
pub mod events;
pub mod leadership;
pub mod metrics;
pub mod not_ready;
pub mod report_watch;
pub mod rollouts;
pub mod status;
pub mod status_writer;
pub mod triggers;
pub mod watch_scope;
pub mod worker_client;
