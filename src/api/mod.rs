//! The resource types of `ferry.dev/v1alpha1` and the CRDs generated from them.

pub mod connection;
pub mod duration;
pub mod expected;
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
    [Connection::crd(), Transport::crd()].map(without_null_quantities)
}

/// Quantities ferry reads as required values (with a default when absent), which kube's
/// schema generation marks `nullable` because they are optional in the manifest. ferry does
/// not take `null` for them, so neither may the API server. (A property test generates objects
/// from the schema and reads each, so a new field like these cannot slip by.)
const NOT_NULLABLE: [&str; 2] = ["maxBytes", "maxTransactionBytes"];

fn without_null_quantities(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn visit(schema: &mut serde_json::Value) {
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        if let Some(properties) = object
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            for (name, property) in properties.iter_mut() {
                if NOT_NULLABLE.contains(&name.as_str())
                    && let Some(property) = property.as_object_mut()
                {
                    property.remove("nullable");
                }
                visit(property);
            }
        }
        if let Some(items) = object.get_mut("items") {
            visit(items);
        }
    }
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        if let Ok(mut json) = serde_json::to_value(&*schema) {
            visit(&mut json);
            if let Ok(cleaned) = serde_json::from_value(json) {
                *schema = cleaned;
            }
        }
    }
    crd
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
