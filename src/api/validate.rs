//! Checks a manifest the way the API server does, so that standalone mode, the worker and
//! `kubectl apply` accept and reject the same objects, and every problem names its field.
//!
//! The checks, in the API server's order:
//! 1. apiVersion, kind and metadata.name;
//! 2. the CRD's openAPIV3Schema, with unknown fields rejected (kubectl's default
//!    `--validate=strict`) and `nullable`/int-or-string mapped to JSON Schema;
//! 3. the schema's `x-kubernetes-validations` (CEL) rules, after defaulting;
//! 4. `x-kubernetes-list-type: map` keys unique;
//! 5. deserialization into the Rust types (quantities and durations parsed).

use std::fmt;

use kube::core::cel::{CompiledSchema, Validator as CelValidator, compile_schema};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::{API_VERSION, Connection, Transport, hosted_crds};

/// A resource that passed every check (boxed: both are large and often moved).
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Transport(Box<Transport>),
    Connection(Box<Connection>),
}

/// One thing wrong with a manifest, at a field path like `spec.host.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a manifest was rejected: which object, and every problem found in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidManifest {
    /// `Transport plant-a/erp`, or what is known of the object.
    pub object: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

struct KindSchema {
    kind: String,
    /// The openAPIV3Schema as generated, for the list-map walk.
    schema: Value,
    /// The JSON Schema `structural` was built from: its errors' schema paths point into it.
    json_schema: Value,
    structural: jsonschema::Validator,
    cel: CompiledSchema,
}

/// Holds the compiled schemas of both kinds; build once, use for many manifests.
pub struct ManifestValidator {
    kinds: Vec<KindSchema>,
    cel: CelValidator,
}

impl ManifestValidator {
    pub fn new() -> Self {
        let kinds = hosted_crds()
            .into_iter()
            .map(|crd| {
                let version = &crd.spec.versions[0];
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(|s| serde_json::to_value(s).expect("a generated schema is JSON"))
                    .expect("derived CRDs carry an openAPIV3Schema");
                let mut strict = as_json_schema(&schema, true);
                // The API server knows these on every object; the CRD does not list them.
                strict["properties"]["apiVersion"] = json!({"type": "string"});
                strict["properties"]["kind"] = json!({"type": "string"});
                strict["properties"]["metadata"] = json!({"type": "object"});
                let structural = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .build(&strict)
                    .expect("the generated schema compiles as JSON Schema");
                KindSchema {
                    kind: crd.spec.names.kind.clone(),
                    cel: compile_schema(&schema),
                    schema,
                    json_schema: strict,
                    structural,
                }
            })
            .collect();
        Self {
            kinds,
            cel: CelValidator::new(),
        }
    }

    /// Every check of the module docs; `Ok` only when all pass.
    pub fn validate(&self, doc: &Value) -> Result<Resource, InvalidManifest> {
        let kind = self.check(doc)?;
        let resource = match kind {
            "Transport" => deserialize(doc).map(|t| Resource::Transport(Box::new(t))),
            "Connection" => deserialize(doc).map(|c| Resource::Connection(Box::new(c))),
            other => Err(problem(
                "kind",
                &format!("{other} has a schema but no reader in this ferry"),
            )),
        };
        resource.map_err(|p| InvalidManifest {
            object: describe(doc),
            problems: vec![p],
        })
    }

    /// Whether the API server would accept `doc`: every check but reading it into ferry's
    /// types (so a test can hold that whatever the schema accepts, ferry reads).
    pub fn schema_accepts(&self, doc: &Value) -> bool {
        self.check(doc).is_ok()
    }

    /// The checks of the schema (identity, structure, CEL, list-map keys); answers the kind.
    fn check(&self, doc: &Value) -> Result<&str, InvalidManifest> {
        let object = describe(doc);
        let fail = |problems: Vec<Problem>| InvalidManifest {
            object: object.clone(),
            problems,
        };
        let Some(map) = doc.as_object() else {
            return Err(fail(vec![problem(
                "",
                "a manifest must be a YAML/JSON object",
            )]));
        };
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.kind.as_str()).collect();
        let mut problems = identity_problems(map, &kinds);
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        let Some(schema) = self.kinds.iter().find(|k| k.kind == kind) else {
            return Err(fail(problems));
        };

        problems.extend(
            schema
                .structural
                .iter_errors(doc)
                .map(|e| schema_problem(&schema.json_schema, e)),
        );
        scalar_problems(&schema.schema, doc, "", &mut problems);
        if !problems.is_empty() {
            // CEL rules assume a structurally valid object, as on the API server.
            return Err(fail(problems));
        }
        if let Err(errors) = self.cel.validate_compiled(&schema.cel, doc, None) {
            problems.extend(errors.iter().map(|e| problem(&e.field_path, &e.message)));
        }
        list_map_problems(&schema.schema, doc, "", &mut problems);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(&schema.kind)
    }
}

impl Default for ManifestValidator {
    fn default() -> Self {
        Self::new()
    }
}

fn problem(field: &str, message: &str) -> Problem {
    Problem {
        field: if field.is_empty() {
            "(root)".into()
        } else {
            field.into()
        },
        message: message.into(),
    }
}

/// `Transport plant-a/erp`, as far as the document tells.
fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    match (ns, name) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} (unnamed)"),
    }
}

/// apiVersion, kind and metadata: checked by the API server before any schema.
fn identity_problems(map: &Map<String, Value>, kinds: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => problems.push(problem(
            "apiVersion",
            &format!("must be {API_VERSION}, not {}", shown(other)),
        )),
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(kind) if kinds.contains(&kind) => {}
        other => problems.push(problem(
            "kind",
            &format!("must be {}, not {}", kinds.join(" or "), shown(other)),
        )),
    }
    let meta = map.get("metadata");
    match meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
        None => problems.push(problem("metadata.name", "is required")),
        Some(name) if !is_dns_subdomain(name) => problems.push(problem(
            "metadata.name",
            &format!(
                "{name:?} must be a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ),
        )),
        Some(_) => {}
    }
    if let Some(ns) = meta.and_then(|m| m.get("namespace")) {
        match ns.as_str() {
            Some(ns) if is_dns_label(ns) => {}
            _ => problems.push(problem(
                "metadata.namespace",
                &format!("{ns} must be a DNS label: at most 63 lowercase letters, digits and '-'"),
            )),
        }
    }
    problems
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "missing".into(), |v| format!("{v:?}"))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kubernetes' `IsDNS1123Subdomain`: at most 253 characters, dot-separated parts of lowercase
/// letters, digits and '-' that start and end with a letter or digit. Unlike a label, a part
/// has no limit of its own (the API server accepts a 100-character name without dots).
fn is_dns_subdomain(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(part)
}

/// The OpenAPI v3 schema of a CRD as plain JSON Schema: `nullable` and int-or-string become
/// type lists, and (when `strict`) objects with declared properties reject unknown ones.
fn as_json_schema(schema: &Value, strict: bool) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in obj {
        let value = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), as_json_schema(v, strict)))
                    .collect(),
            ),
            "items" | "additionalProperties" if value.is_object() => as_json_schema(value, strict),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| as_json_schema(v, strict))
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    let nullable = obj.get("nullable") == Some(&Value::Bool(true));
    let mut types: Vec<Value> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.clone().into()],
        _ if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) => {
            vec!["integer".into(), "string".into()]
        }
        _ => vec![],
    };
    if !types.is_empty() {
        if nullable {
            types.push("null".into());
        }
        out.insert("type".into(), Value::Array(types));
    }
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if strict && obj.contains_key("properties") && !preserves {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    out.into()
}

/// A JSON Schema error as a field problem. Unknown and missing fields are named themselves,
/// as the API server does (`unknown field "spec.suspend"`, `spec.host: Required value`); a
/// value of the wrong form says what the field accepts, in words (`expected`), never a
/// regular expression or a type name alone.
fn schema_problem(root: &Value, error: jsonschema::ValidationError<'_>) -> Problem {
    use jsonschema::error::ValidationErrorKind;
    let at = pointer_to_field(error.instance_path().as_str());
    let child = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let fields: Vec<String> = unexpected.iter().map(|u| child(u)).collect();
            problem(&fields.join(", "), "unknown field")
        }
        ValidationErrorKind::Required { property } => {
            problem(&child(property.as_str().unwrap_or_default()), "is required")
        }
        ValidationErrorKind::Pattern { .. }
        | ValidationErrorKind::Type { .. }
        | ValidationErrorKind::Enum { .. }
        | ValidationErrorKind::MaxLength { .. }
        | ValidationErrorKind::MinLength { .. }
        | ValidationErrorKind::Maximum { .. }
        | ValidationErrorKind::Minimum { .. } => {
            // The schema of the field: the error's schema path without its keyword.
            let path = error.schema_path().as_str();
            let field = path.rsplit_once('/').map_or("", |(field, _)| field);
            match root.pointer(field) {
                Some(schema) => problem(
                    &at,
                    &format!(
                        "must be {} (got {})",
                        super::expected::in_words(schema),
                        shown_value(error.instance())
                    ),
                ),
                None => problem(&at, &error.to_string()),
            }
        }
        _ => problem(&at, &error.to_string()),
    }
}

/// A refused value as written, cut to a length a message can carry.
fn shown_value(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

/// `/spec/syncSets/0/name` → `spec.syncSets[0].name`
fn pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// Visit every node of `value` with the schema that describes it and its path
/// (`spec.syncSets[0].name`), parents before children. Fields the schema does not describe are
/// not visited (the structural check reports them).
fn visit(schema: &Value, value: &Value, at: &str, f: &mut dyn FnMut(&Value, &Value, &str)) {
    f(schema, value, at);
    match value {
        Value::Object(fields) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (name, field) in fields {
                if let Some(sub) = props.get(name) {
                    let path = if at.is_empty() {
                        name.clone()
                    } else {
                        format!("{at}.{name}")
                    };
                    visit(sub, field, &path, f);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    visit(item_schema, item, &format!("{at}[{i}]"), f);
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: map` lists must not repeat a key (the API server checks this;
/// JSON Schema cannot express it).
fn list_map_problems(schema: &Value, value: &Value, at: &str, problems: &mut Vec<Problem>) {
    visit(schema, value, at, &mut |schema, value, at| {
        let Value::Array(items) = value else { return };
        if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
            return;
        }
        let keys: Vec<&str> = schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut seen = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key: Vec<&Value> = keys.iter().map(|k| &item[*k]).collect();
            if seen.contains(&key) {
                let shown: Vec<String> = key.iter().map(|v| v.to_string()).collect();
                problems.push(problem(
                    &format!("{at}[{i}]"),
                    &format!(
                        "duplicate entry: {} {} is already used by an earlier item",
                        keys.join(", "),
                        shown.join(", ")
                    ),
                ));
            } else {
                seen.push(key);
            }
        }
    });
}

/// Durations and quantities the CEL rules would take to `duration()` and `quantity()`, checked
/// first: the API server's `duration()` is Go's ParseDuration, which fails past its limit
/// (kube's evaluator does not), and kube's `quantity()` overflows on what Go's arbitrary
/// precision handles (every quantity field has a rule bounding it far below 64 bits, so the
/// API server refuses these too).
fn scalar_problems(schema: &Value, value: &Value, at: &str, problems: &mut Vec<Problem>) {
    visit(schema, value, at, &mut |schema, value, at| {
        let pattern = schema.get("pattern").and_then(Value::as_str);
        match (value, pattern) {
            (Value::String(text), Some(super::duration::PATTERN)) => {
                if let Err(why) = super::duration::parse_go_duration(text) {
                    problems.push(problem(
                        at,
                        &format!(
                            "must be {} ({why}; got {})",
                            super::expected::in_words(schema),
                            shown_value(value)
                        ),
                    ));
                }
            }
            (Value::String(text), Some(super::quantity::PATTERN)) => {
                if let Err(e) = text.parse::<super::quantity::ByteQuantity>() {
                    problems.push(problem(at, &e.to_string()));
                }
            }
            (Value::Number(n), Some(super::quantity::PATTERN)) if n.as_u64().is_none() => {
                problems.push(problem(
                    at,
                    &format!(
                        "{n} is not a byte size: write a whole number of bytes that fits in 64 bits"
                    ),
                ));
            }
            _ => {}
        }
    });
}

fn deserialize<T: DeserializeOwned>(doc: &Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        problem(&field, &e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(spec: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "Transport",
               "metadata": {"name": "erp", "namespace": "plant-a"}, "spec": spec})
    }

    fn fields(result: Result<Resource, InvalidManifest>) -> Vec<String> {
        result
            .expect_err("should be rejected")
            .problems
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn minimal_transport_gets_the_documented_defaults() {
        let v = ManifestValidator::new();
        let Resource::Transport(t) = v
            .validate(&transport(
                json!({"host": {"url": "http://erp:8080/ingest"}}),
            ))
            .unwrap()
        else {
            panic!("not a transport")
        };
        assert!(!t.spec.suspended && !t.spec.load_at_init);
        assert!(t.spec.store_and_forward.enabled);
        assert_eq!(t.spec.store_and_forward.max_messages, 100_000);
        assert_eq!(t.spec.store_and_forward.max_bytes.bytes(), 1 << 30);
        assert_eq!(t.spec.max_transaction_bytes.bytes(), 1 << 20);
        assert_eq!(t.spec.host.timeout.as_std().as_secs(), 10);
    }

    #[test]
    fn names_unknown_fields_one_by_one() {
        let v = ManifestValidator::new();
        let doc = transport(json!({"host": {"url": "http://h"}, "suspend": true}));
        assert_eq!(fields(v.validate(&doc)), ["spec.suspend"]);
    }

    #[test]
    fn cel_rules_and_patterns_name_their_field() {
        let v = ManifestValidator::new();
        let doc = transport(json!({"host": {"url": "http://h", "timeout": "11m"}}));
        assert_eq!(fields(v.validate(&doc)), ["spec.host.timeout"]);
        let doc = transport(json!({"host": {"url": "ftp://h"}}));
        assert_eq!(fields(v.validate(&doc)), ["spec.host.url"]);
        let doc = transport(json!({"host": {"url": "http://h"}, "maxTransactionBytes": "65Mi"}));
        assert_eq!(fields(v.validate(&doc)), ["spec.maxTransactionBytes"]);
    }

    #[test]
    fn pointer_paths_read_like_kubectl() {
        assert_eq!(
            pointer_to_field("/spec/syncSets/0/name"),
            "spec.syncSets[0].name"
        );
        assert_eq!(pointer_to_field(""), "");
    }

    #[test]
    fn identity_is_checked_before_the_schema() {
        let v = ManifestValidator::new();
        let doc = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}});
        assert_eq!(
            fields(v.validate(&doc)),
            ["apiVersion", "kind", "metadata.name"]
        );
    }

    #[test]
    fn durations_past_go_limit_name_their_field_and_never_panic() {
        let v = ManifestValidator::new();
        for ttl in ["99999999999999999999h", "9999999h9999999h", "2562048h"] {
            let doc = transport(
                json!({"host": {"url": "http://h"}, "storeAndForward": {"timeToLive": ttl}}),
            );
            assert_eq!(
                fields(v.validate(&doc)),
                ["spec.storeAndForward.timeToLive"],
                "{ttl}"
            );
        }
        let doc = transport(
            json!({"host": {"url": "http://h"}, "storeAndForward": {"timeToLive": "2562047h"}}),
        );
        assert!(v.validate(&doc).is_ok());
    }

    /// A refused value says what the field accepts in words, with its bounds, and the value
    /// refused: never a regular expression or a JSON type name alone.
    #[test]
    fn refusals_say_what_the_field_accepts_in_words() {
        let v = ManifestValidator::new();
        let duration = "must be a duration such as 30s, 5m or 1h30m";
        for (host, words) in [
            (json!({"url": "http://h", "timeout": "-5s"}), duration),
            (json!({"url": "http://h", "timeout": 2}), duration),
            (
                json!({"url": "http://h", "timeout": "99999999999h"}),
                duration,
            ),
            (
                json!({"url": "ftp://h"}),
                "must be an http:// or https:// URL",
            ),
            (
                json!({"url": "http://h", "healthCheckPath": "health"}),
                "must be a path such as /health",
            ),
        ] {
            let error = v
                .validate(&transport(json!({"host": host})))
                .expect_err("refused")
                .to_string();
            assert!(error.contains(words), "{error}");
            for unreadable in ["^(", "does not match", "is not of type"] {
                assert!(!error.contains(unreadable), "{error}");
            }
        }
        let error = v
            .validate(&transport(
                json!({"host": {"url": "http://h", "timeout": "-5s"}}),
            ))
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("at most 10m") && error.contains(r#"(got "-5s")"#),
            "{error}"
        );
        let error = v
            .validate(&transport(json!({"host": {"url": "http://h"},
                "storeAndForward": {"maxBytes": "lots"}})))
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("must be a size such as 512Mi or 2Gi"),
            "{error}"
        );
    }

    /// `spec.network.ingestFrom`: what a NetworkPolicy would refuse is refused here (and by
    /// the API server, the same rules), naming the peer's field.
    #[test]
    fn ingest_peers_are_cidrs_or_pods() {
        let v = ManifestValidator::new();
        let peers = |peers: serde_json::Value| {
            v.validate(&transport(
                json!({"host": {"url": "http://h"}, "network": {"ingestFrom": peers}}),
            ))
        };
        for ok in [
            json!([]),
            json!([{"podSelector": {}}]),
            json!([{"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}}]),
            json!([{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]),
            json!([{"ipBlock": {"cidr": "fd00::/8"}}]),
        ] {
            assert!(peers(ok.clone()).is_ok(), "{ok}");
        }
        for (bad, field) in [
            (
                json!([{"ipBlock": {"cidr": "10.0.0.0/33"}}]),
                "spec.network.ingestFrom[0].ipBlock.cidr",
            ),
            (
                json!([{"ipBlock": {"cidr": "example.com"}}]),
                "spec.network.ingestFrom[0].ipBlock.cidr",
            ),
            (
                json!([{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}}]),
                "spec.network.ingestFrom[1].ipBlock.except",
            ),
            (
                json!([{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]),
                "spec.network.ingestFrom[0]",
            ),
            (json!([{}]), "spec.network.ingestFrom[0]"),
        ] {
            let error = peers(bad.clone()).expect_err("refused").to_string();
            assert!(error.contains(field), "{bad}: {error}");
        }
    }

    /// The names the API server takes for a resource: its DNS-subdomain rule, not a label's.
    #[test]
    fn names_follow_the_api_servers_subdomain_rule() {
        let v = ManifestValidator::new();
        let named = |name: &str| {
            let mut doc = transport(json!({"host": {"url": "http://h"}}));
            doc["metadata"]["name"] = json!(name);
            v.validate(&doc)
        };
        for ok in [
            "a".repeat(100),
            format!("{}.b", "a".repeat(251)),
            "orders.plant-a".into(),
        ] {
            assert!(named(&ok).is_ok(), "{ok}");
        }
        for bad in [
            "a".repeat(254),
            "a..b".into(),
            "-a".into(),
            "a.-b".into(),
            "A".into(),
        ] {
            assert_eq!(fields(named(&bad)), ["metadata.name"], "{bad}");
        }
    }

    /// Values kube's CEL evaluator cannot take (it overflows where the API server's arbitrary
    /// precision refuses by the rule's bound) are refused before CEL runs, naming the field.
    #[test]
    fn huge_quantities_are_refused_before_cel_without_a_panic() {
        let v = ManifestValidator::new();
        for (field, value) in [
            ("maxTransactionBytes", json!("99999999999999999999Ei")),
            ("maxTransactionBytes", json!(1e30)),
            (
                "storeAndForward",
                json!({"maxBytes": "99999999999999999999"}),
            ),
            ("storage", json!({"size": "18446744073709551616"})),
        ] {
            let mut spec = json!({"host": {"url": "http://h"}});
            spec[field] = value.clone();
            let refused = fields(v.validate(&transport(spec)));
            assert!(
                refused
                    .iter()
                    .any(|f| f.starts_with(&format!("spec.{field}"))),
                "{field} {value}: {refused:?}"
            );
        }
    }
}
