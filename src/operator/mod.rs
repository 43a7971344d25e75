//! The operator: what it makes of each Connection and Transport on a cluster. So far the
//! object builders; the controllers come next (see the README's status of the operator).

pub mod builders;
pub mod connection_reconciler;
pub mod status;
pub mod transport_reconciler;
pub mod worker_client;
