//! The generated CRDs are what `crds/` holds, and what a Kubernetes 1.30+ API server
//! accepts: structural schemas, CEL rules that compile within the cost budget, and the
//! documented status strings verbatim.

use ferry::api::{
    ConnectionStatusValue, TransportState, crds, crds_yaml,
    validate::{ManifestValidator, Resource},
};
use kube::core::cel::{CompiledSchema, ScopeContext, analyze_rule, compile_schema};
use serde_json::{Value, json};

fn schema_of(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind is generated");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema present");
    serde_json::to_value(schema).expect("schema is JSON")
}

#[test]
fn committed_crds_match_the_types() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/ferry.dev.yaml"))
            .expect("crds/ferry.dev.yaml exists");
    assert!(
        committed == crds_yaml().expect("renders"),
        "crds/ferry.dev.yaml is stale: run `cargo run -- crds > crds/ferry.dev.yaml`"
    );
}

/// The structural-schema rules of the apiextensions API server, as documented for v1 CRDs.
fn structural_problems(node: &Value, at: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if obj.contains_key("$ref") {
        out.push(format!("{at}: $ref is not allowed"));
    }
    if in_junctor {
        for key in [
            "description",
            "type",
            "default",
            "additionalProperties",
            "nullable",
        ] {
            if obj.contains_key(key) {
                out.push(format!("{at}: {key} inside anyOf/allOf/oneOf/not"));
            }
        }
    } else if !obj.contains_key("type") && !int_or_string && !preserve {
        out.push(format!("{at}: no type"));
    }
    if int_or_string && obj.contains_key("type") {
        out.push(format!("{at}: int-or-string must not set type"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!(
            "{at}: properties and additionalProperties are exclusive"
        ));
    }
    if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
        let item = &obj["items"];
        for key in obj["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let required = item["required"].as_array().is_some_and(|r| r.contains(key));
            let defaulted = item["properties"][key.as_str().unwrap_or_default()]
                .get("default")
                .is_some();
            if !required && !defaulted {
                out.push(format!(
                    "{at}: list-map key {key} must be required or defaulted"
                ));
            }
        }
    }
    for (name, sub) in obj
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural_problems(sub, &format!("{at}.{name}"), in_junctor, out);
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{at}[]"), in_junctor, out);
    }
    for junctor in ["anyOf", "allOf", "oneOf"] {
        for (i, sub) in obj
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_problems(sub, &format!("{at}.{junctor}[{i}]"), true, out);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for kind in ["Transport", "Connection", "WorkerPool"] {
        let mut problems = Vec::new();
        structural_problems(&schema_of(kind), kind, false, &mut problems);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
    }
}

/// Every rule compiles, uses only `self`/`oldSelf`, and is inside the API server's cost budget.
fn cel_problems(compiled: &CompiledSchema, at: &str, rules: &mut usize, out: &mut Vec<String>) {
    for validation in &compiled.validations {
        match validation {
            Ok(result) => {
                *rules += 1;
                for warning in
                    analyze_rule(&result.rule.rule, compiled, ScopeContext::CrdValidation)
                {
                    out.push(format!("{at}: {}", warning.message));
                }
            }
            Err(e) => out.push(format!("{at}: {e:?}")),
        }
    }
    for (name, sub) in &compiled.properties {
        cel_problems(sub, &format!("{at}.{name}"), rules, out);
    }
    if let Some(items) = &compiled.items {
        cel_problems(items, &format!("{at}[]"), rules, out);
    }
}

#[test]
fn cel_rules_compile_within_the_cost_budget() {
    let mut rules = 0;
    for kind in ["Transport", "Connection", "WorkerPool"] {
        let mut problems = Vec::new();
        cel_problems(
            &compile_schema(&schema_of(kind)),
            kind,
            &mut rules,
            &mut problems,
        );
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
    }
    // 14, and spec.network.ingestFrom's three (a peer's shape, its cidr, an except entry) on
    // Transport and WorkerPool; a WorkerPool's queue (fixed once set), failoverAfter, and its
    // JetStream's url and replicas.
    assert_eq!(rules, 24, "every CEL rule of the types was visited");
}

/// A pool's queue is where its resources' queues are: fixed once the pool exists; its
/// JetStream's url, replicas and failoverAfter are checked by the API server.
#[test]
fn a_pools_queue_is_fixed_once_created_and_checked() {
    use kube::core::cel::Validator;
    let validator = Validator::new();
    let compiled = compile_schema(&schema_of("WorkerPool"));
    let pool = |queue: Option<Value>, failover: &str| {
        let mut spec = json!({"failoverAfter": failover});
        if let Some(queue) = queue {
            spec["queue"] = queue;
        }
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "shared", "namespace": "plant-a"},
            "spec": spec,
        })
    };
    let js = |url: &str, replicas: u8| json!({"jetstream": {"url": url, "replicas": replicas}});
    let ok = js(
        "nats://nats-0.nats:4222, nats://nats-1.nats:4222,tls://nats-2:4222",
        3,
    );
    let check = |old: Option<Value>, new: Option<Value>, failover: &str| {
        let old = old
            .map(|q| pool(Some(q), "20s"))
            .unwrap_or_else(|| pool(None, "20s"));
        validator.validate_compiled(&compiled, &pool(new, failover), Some(&old))
    };
    assert!(check(Some(ok.clone()), Some(ok.clone()), "20s").is_ok());
    assert!(check(None, None, "1m").is_ok());
    for (old, new) in [
        (Some(ok.clone()), None),
        (None, Some(ok.clone())),
        (Some(ok.clone()), Some(js("nats://other:4222", 3))),
    ] {
        let text = format!("{:?}", check(old, new, "20s").expect_err("refused"));
        assert!(
            text.contains("queue cannot change once the pool exists"),
            "{text}"
        );
    }
    for (queue, failover, refused) in [
        (js("http://nats:4222", 3), "20s", "nats:// or tls://"),
        (js("nats://nats:4222/path", 3), "20s", "nats:// or tls://"),
        (js("", 3), "20s", "nats:// or tls://"),
        (js("nats://nats:4222", 2), "20s", "must be 1, 3 or 5"),
        (ok.clone(), "1s", "at least 5s"),
    ] {
        let errors = validator
            .validate_compiled(&compiled, &pool(Some(queue.clone()), failover), None)
            .expect_err("refused");
        let text = format!("{errors:?}");
        assert!(text.contains(refused), "{queue} {failover}: {text}");
    }
    assert!(
        validator
            .validate_compiled(&compiled, &pool(Some(ok), "20s"), None)
            .is_ok()
    );
}

/// `spec.workerPool` is fixed once the resource exists, in both directions: the resource's
/// queue or watermarks live on its worker's volume. On create it may be anything valid.
#[test]
fn the_worker_pool_is_fixed_once_created() {
    use kube::core::cel::Validator;
    let validator = Validator::new();
    for kind in ["Transport", "Connection"] {
        let compiled = compile_schema(&schema_of(kind));
        let object = |pool: Option<&str>| {
            let mut spec = match kind {
                "Transport" => json!({"host": {"url": "http://erp/ingest"}}),
                _ => json!({}),
            };
            if let Some(pool) = pool {
                spec["workerPool"] = json!(pool);
            }
            json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": kind,
                "metadata": {"name": "erp", "namespace": "plant-a"},
                "spec": spec,
            })
        };
        let check = |old: Option<&str>, new: Option<&str>| {
            validator.validate_compiled(&compiled, &object(new), Some(&object(old)))
        };
        assert!(check(Some("shared"), Some("shared")).is_ok(), "{kind}");
        assert!(check(None, None).is_ok(), "{kind}");
        for (old, new) in [
            (Some("shared"), Some("other")),
            (Some("shared"), None),
            (None, Some("shared")),
        ] {
            let errors = check(old, new).expect_err("refused");
            let text = format!("{errors:?}");
            assert!(
                text.contains("workerPool cannot change once the resource exists"),
                "{kind} {old:?} → {new:?}: {text}"
            );
        }
        assert!(
            validator
                .validate_compiled(&compiled, &object(Some("shared")), None)
                .is_ok(),
            "{kind}: a create has no old object"
        );
    }
}

/// The storage transition rule, as the API server runs it on an update: size and class are
/// fixed, reclaimPolicy is not; on create (no old object) it does not apply.
#[test]
fn storage_size_and_class_are_fixed_once_created() {
    use kube::core::cel::Validator;
    let compiled = compile_schema(&schema_of("Transport"));
    let validator = Validator::new();
    let transport = |storage: Value| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
            "metadata": {"name": "erp", "namespace": "plant-a"},
            "spec": {"host": {"url": "http://erp/ingest"}, "storage": storage},
        })
    };
    let old = transport(json!({"size": "2Gi", "reclaimPolicy": "Retain"}));
    let check = |new: Value| validator.validate_compiled(&compiled, &new, Some(&old));
    assert!(check(transport(json!({"size": "2Gi", "reclaimPolicy": "Delete"}))).is_ok());
    assert!(
        check(transport(
            json!({"size": "2048Mi", "reclaimPolicy": "Retain"})
        ))
        .is_ok(),
        "the same quantity written differently"
    );
    for changed in [
        json!({"size": "4Gi"}),
        json!({"size": "2Gi", "storageClassName": "fast"}),
        json!({"reclaimPolicy": "Retain"}),
    ] {
        let errors = check(transport(changed.clone())).expect_err("refused");
        let text = format!("{errors:?}");
        assert!(
            text.contains("cannot change once the worker"),
            "{changed}: {text}"
        );
    }
    assert!(
        validator
            .validate_compiled(&compiled, &transport(json!({"size": "4Gi"})), None)
            .is_ok(),
        "a create has no old object"
    );
}

#[test]
fn status_values_are_the_documented_strings() {
    let documented = [
        "Down",
        "Up",
        "Suspended",
        "S&F Suspended",
        "Store and Forward",
    ];
    assert_eq!(
        schema_of("Transport")["properties"]["status"]["properties"]["state"]["enum"],
        json!(documented)
    );
    for (state, text) in TransportState::ALL.iter().zip(documented) {
        assert_eq!(serde_json::to_value(state).unwrap(), json!(text));
        assert_eq!(state.to_string(), text);
    }
    let documented = [
        "Disabled",
        "Failed",
        "Idle",
        "Restarting",
        "Running",
        "Server Reinitializing",
        "Unknown",
    ];
    assert_eq!(
        schema_of("Connection")["properties"]["status"]["properties"]["status"]["enum"],
        json!(documented)
    );
    for (value, text) in ConnectionStatusValue::ALL.iter().zip(documented) {
        assert_eq!(serde_json::to_value(value).unwrap(), json!(text));
        assert_eq!(value.to_string(), text);
    }
}

#[test]
fn names_columns_and_status_subresource() {
    for (kind, short, columns) in [
        (
            "Transport",
            "tp",
            ["State", "Ready", "Queued", "Worker", "Age"],
        ),
        (
            "Connection",
            "conn",
            ["Status", "Ready", "Iteration", "Worker", "Age"],
        ),
    ] {
        let crd = crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("generated");
        assert_eq!(crd.spec.group, "ferry.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let names: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, columns);
    }
}

#[test]
fn a_status_written_by_the_operator_passes_the_schema() {
    let validator = ManifestValidator::new();
    let doc = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "Transport",
        "metadata": {"name": "erp", "namespace": "plant-a"},
        "spec": {"host": {"url": "http://erp:8080/ingest"}},
        "status": {
            "state": "S&F Suspended", "observedGeneration": 4,
            "queue": {"messages": 3, "bytes": 3072, "oldestAgeSeconds": 12},
            "totals": {"received": 10, "delivered": 7, "stored": 3, "forwarded": 0, "failed": 0, "expired": 0, "dropped": 0},
            "endpoint": "http://ferry-tp-erp.plant-a.svc:8080/v1/transports/plant-a/erp/transactions",
            "lastReportTime": "2026-11-23T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Suspended", "message": "suspended by the user; 3 transactions queued", "lastTransitionTime": "2026-11-23T10:00:00Z"}]
        }
    });
    let Ok(Resource::Transport(t)) = validator.validate(&doc) else {
        panic!("rejected")
    };
    assert_eq!(
        t.status.and_then(|s| s.state),
        Some(TransportState::SfSuspended)
    );
}

#[test]
fn the_structural_check_catches_what_the_api_server_refuses() {
    let bad = json!({"type": "object", "properties": {
        "untyped": {"description": "no type"},
        "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false},
        "junctor": {"type": "string", "anyOf": [{"type": "string"}]},
    }});
    let mut problems = Vec::new();
    structural_problems(&bad, "bad", false, &mut problems);
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

/// `kubectl explain` shows a field's description, not its schema: every field a person writes
/// that has a default or a bound says it in its description (`Default: 1h.`, the numbers of
/// its minimum and maximum, its rules' "must be ..." in words).
#[test]
fn every_default_and_bound_is_in_the_description() {
    fn check(node: &Value, at: &str, checked: &mut usize, out: &mut Vec<String>) {
        let Some(properties) = node.get("properties").and_then(Value::as_object) else {
            if let Some(items) = node.get("items") {
                check(items, &format!("{at}[]"), checked, out);
            }
            return;
        };
        for (name, field) in properties {
            let path = format!("{at}.{name}");
            let description = field["description"].as_str().unwrap_or("");
            let mut wanted = Vec::new();
            match &field["default"] {
                Value::String(s) if s.is_empty() => wanted.push("Default: \"\".".to_owned()),
                Value::String(s) => wanted.push(format!("Default: {s}.")),
                v @ (Value::Number(_) | Value::Bool(_)) => wanted.push(format!("Default: {v}.")),
                _ => {}
            }
            for bound in ["minimum", "maximum", "maxItems"] {
                if let Some(n) = field[bound].as_f64() {
                    wanted.push(format!("{}", n as i64));
                }
            }
            for rule in field["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(rest) = rule["message"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("must be "))
                {
                    wanted.push(rest.to_owned());
                }
            }
            for w in wanted {
                *checked += 1;
                if !description.contains(&w) {
                    out.push(format!("{path}: {w:?} not in {description:?}"));
                }
            }
            if name != "status" {
                check(field, &path, checked, out);
            }
        }
    }
    for kind in ["Transport", "Connection"] {
        let schema = schema_of(kind);
        let (mut checked, mut missing) = (0, Vec::new());
        check(
            &schema["properties"]["spec"],
            "spec",
            &mut checked,
            &mut missing,
        );
        assert!(checked >= 10, "{kind}: only {checked} defaults and bounds");
        assert!(missing.is_empty(), "{kind}:\n{}", missing.join("\n"));
    }
}
