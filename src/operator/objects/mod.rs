//! Pure builders: the Kubernetes objects of a worker (`builders`), its NetworkPolicy
//! (`network_policy`), the CA and serving certificates (`certificates`). No client, no context.

pub mod builders;
pub mod certificates;
pub mod network_policy;
