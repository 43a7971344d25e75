//! ferry: a Kubernetes operator for Connections and Transports.

pub mod api;
pub mod transport;
