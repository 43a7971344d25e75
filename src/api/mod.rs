//! The resource types of `ferry.dev/v1alpha1` and the CRDs generated from them.

pub mod connection;
pub mod duration;
pub mod expected;
pub mod faults;
pub mod manifest;
pub mod network;
pub mod quantity;
pub mod storage;
pub mod transport;
pub mod validate;
pub mod worker_pool;

pub use connection::{Connection, ConnectionSpec, ConnectionStatus, ConnectionStatusValue};
pub use faults::Faults;
pub use transport::{Transport, TransportSpec, TransportState, TransportStatus};
pub use worker_pool::{WorkerPool, WorkerPoolSpec, WorkerPoolStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// Every CRD, in the order `ferry crds` prints them.
pub fn crds() -> [CustomResourceDefinition; 3] {
    [Connection::crd(), Transport::crd(), WorkerPool::crd()].map(finish_schema)
}

/// The kinds a worker hosts (and standalone runs): what a manifest given to them may be.
pub fn hosted_crds() -> [CustomResourceDefinition; 2] {
    [Connection::crd(), Transport::crd()].map(finish_schema)
}

const NOT_NULLABLE: [&str; 2] = ["maxBytes", "maxTransactionBytes"];

/// Every property of the generated schema, finished: the quantities above lose `nullable`, and
/// each description ends with the field's default and bounds (`Default: 1h. Must be between 1s
/// and 24h.`), so `kubectl explain` shows them; the schema keeps the bounds it enforces.
fn finish_schema(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    /// `document`: the fields a person writes (the spec), not the status ferry writes.
    fn visit(schema: &mut serde_json::Value, document: bool) {
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        if let Some(properties) = object
            .get_mut("properties")
            .and_then(serde_json::Value::as_object_mut)
        {
            for (name, property) in properties.iter_mut() {
                let document = document && name != "status";
                if let Some(property) = property.as_object_mut() {
                    if NOT_NULLABLE.contains(&name.as_str()) {
                        property.remove("nullable");
                    }
                    if document {
                        document_bounds(property);
                    }
                }
                visit(property, document);
            }
        }
        if let Some(items) = object.get_mut("items") {
            visit(items, document);
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
            visit(&mut json, true);
            if let Ok(finished) = serde_json::from_value(json) {
                *schema = finished;
            }
        }
    }
    crd
}

/// What a property's description says of its default and bounds, in the order written.
pub fn bounds_in_words(property: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    use serde_json::Value;
    let number = |key: &str| {
        property.get(key).and_then(Value::as_f64).map(|n| {
            if n.fract() == 0.0 {
                format!("{n:.0}")
            } else {
                n.to_string()
            }
        })
    };
    let mut notes = Vec::new();
    match property.get("default") {
        Some(Value::String(text)) if text.is_empty() => notes.push("Default: \"\".".into()),
        Some(Value::String(text)) => notes.push(format!("Default: {text}.")),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => {
            notes.push(format!("Default: {value}."));
        }
        _ => {}
    }
    match (number("minimum"), number("maximum")) {
        (Some(min), Some(max)) => notes.push(format!("Must be between {min} and {max}.")),
        (Some(min), None) => notes.push(format!("Must be at least {min}.")),
        (None, Some(max)) => notes.push(format!("Must be at most {max}.")),
        (None, None) => {}
    }
    if let (Some(max), None) = (number("maxLength"), property.get("pattern")) {
        notes.push(format!("At most {max} characters."));
    }
    if let Some(max) = number("maxItems") {
        notes.push(format!("At most {max} items."));
    }
    for rule in property
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(message) = rule.get("message").and_then(Value::as_str)
            && let Some(rest) = message.strip_prefix("must be ")
        {
            notes.push(format!("Must be {rest}."));
        }
    }
    notes
}

fn document_bounds(property: &mut serde_json::Map<String, serde_json::Value>) {
    let notes = bounds_in_words(property);
    if notes.is_empty() {
        return;
    }
    let description = property
        .get("description")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let joined = notes.join(" ");
    let text = if description.is_empty() {
        joined
    } else {
        format!("{description} {joined}")
    };
    property.insert("description".into(), text.into());
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
