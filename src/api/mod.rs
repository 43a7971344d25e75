//! The resource types of `ferry.dev/v1alpha1` and the CRDs generated from them.

pub mod connection;
pub mod duration;
pub mod manifest;
pub mod quantity;
pub mod storage;
pub mod transport;
pub mod validate;

pub use connection::{Connection, ConnectionSpec, ConnectionStatus, ConnectionStatusValue};
pub use transport::{Transport, TransportSpec, TransportState, TransportStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// Both CRDs, in the order `ferry crds` prints them.
pub fn crds() -> [CustomResourceDefinition; 2] {
    [Connection::crd(), Transport::crd()]
}

/// The CRDs as one multi-document YAML stream: what `ferry crds` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
