//! Whatever the generated CRD schema accepts, ferry reads: objects are generated from the
//! schema itself (types, patterns, bounds, enums, nullable, int-or-string, with edge values),
//! and every one the schema checks (structure, CEL, list-map keys) accept must deserialize
//! into ferry's types. The schema and the types can then never drift apart unnoticed: a field
//! the API server takes but ferry cannot read would stop that object's reconcile.

use ferry::api::{crds, validate::ManifestValidator};
use proptest::{prelude::*, string::string_regex};
use serde_json::{Map, Value, json};

/// The openAPIV3Schema of `kind`'s spec.
fn spec_schema(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("the kind");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    serde_json::to_value(schema).expect("JSON")["properties"]["spec"].clone()
}

fn int_bound(schema: &Value, key: &str) -> Option<i64> {
    schema.get(key).and_then(Value::as_f64).map(|f| f as i64)
}

/// Integers within the schema's bounds, its edges most of all.
fn integers(schema: &Value) -> BoxedStrategy<Value> {
    let min = int_bound(schema, "minimum").unwrap_or(-1 << 40);
    let max = int_bound(schema, "maximum").unwrap_or(i64::MAX);
    prop_oneof![
        Just(min),
        Just(max),
        Just(min.saturating_add(1).min(max)),
        min..=max,
    ]
    .prop_map(|n| json!(n))
    .boxed()
}

/// Strings matching the schema's pattern (anchors removed), enum or format.
fn strings(schema: &Value) -> BoxedStrategy<Value> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return proptest::sample::select(values.clone()).boxed();
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") {
        return Just(json!("2026-11-28T05:00:00Z")).boxed();
    }
    let max_len = schema
        .get("maxLength")
        .and_then(Value::as_u64)
        .unwrap_or(64) as usize;
    let text = match schema.get("pattern").and_then(Value::as_str) {
        Some(pattern) => {
            let bare = pattern.trim_start_matches('^').trim_end_matches('$');
            string_regex(bare).expect("the pattern compiles").boxed()
        }
        None => "[a-zA-Z0-9./:_-]{0,40}".boxed(),
    };
    text.prop_map(move |s| json!(s.chars().take(max_len).collect::<String>()))
        .boxed()
}

/// Any value the schema's structure allows (rules and patterns included; CEL is left to the
/// checks, which decide what counts as accepted).
fn from_schema(schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    let value = if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        prop_oneof![integers(schema), strings(schema)].boxed()
    } else {
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => objects(schema, depth),
            Some("array") => {
                let items = schema.get("items").cloned().unwrap_or(json!({}));
                let max = schema.get("maxItems").and_then(Value::as_u64).unwrap_or(3) as usize;
                prop::collection::vec(from_schema(&items, depth + 1), 0..=max.min(3))
                    .prop_map(Value::Array)
                    .boxed()
            }
            Some("string") => strings(schema),
            Some("integer") => integers(schema),
            Some("number") => (-1e6f64..1e6).prop_map(|f| json!(f)).boxed(),
            Some("boolean") => any::<bool>().prop_map(Value::Bool).boxed(),
            _ => Just(json!({})).boxed(),
        }
    };
    if schema.get("nullable") == Some(&json!(true)) {
        prop_oneof![1 => Just(Value::Null), 4 => value].boxed()
    } else {
        value
    }
}

fn objects(schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Just(json!({})).boxed();
    };
    if depth > 6 {
        return Just(json!({})).boxed();
    }
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = properties
        .iter()
        .map(|(name, property)| {
            let name = name.clone();
            let value = from_schema(property, depth + 1);
            if required.contains(&name) {
                value.prop_map(move |v| Some((name.clone(), v))).boxed()
            } else {
                prop::option::of(value.prop_map(move |v| (name.clone(), v))).boxed()
            }
        })
        .collect();
    fields
        .prop_map(|fields| Value::Object(fields.into_iter().flatten().collect::<Map<_, _>>()))
        .boxed()
}

fn manifest(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "ferry.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "generated", "namespace": "ns"}, "spec": spec})
}

fn validator() -> &'static ManifestValidator {
    static VALIDATOR: std::sync::OnceLock<ManifestValidator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(ManifestValidator::new)
}

fn check(kind: &str, spec: Value) -> Result<bool, TestCaseError> {
    let doc = manifest(kind, spec);
    let v = validator();
    if !v.schema_accepts(&doc) {
        return Ok(false);
    }
    if let Err(e) = v.validate(&doc) {
        return Err(TestCaseError::fail(format!(
            "the schema accepts it but ferry cannot read it: {e}\n{doc:#}"
        )));
    }
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_transport_the_schema_accepts_is_readable(spec in from_schema(&spec_schema("Transport"), 0)) {
        check("Transport", spec)?;
    }

    #[test]
    fn every_connection_the_schema_accepts_is_readable(spec in from_schema(&spec_schema("Connection"), 0)) {
        check("Connection", spec)?;
    }
}

/// The generator is not vacuous: some generated objects pass the schema checks.
#[test]
fn the_generator_reaches_accepted_objects() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for kind in ["Transport", "Connection"] {
        let strategy = from_schema(&spec_schema(kind), 0);
        let accepted = (0..400)
            .filter(|_| {
                let spec = strategy.new_tree(&mut runner).expect("a value").current();
                check(kind, spec).expect("readable")
            })
            .count();
        assert!(
            accepted > 0,
            "{kind}: no generated object passed the schema"
        );
    }
}
