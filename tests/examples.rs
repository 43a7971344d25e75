//! Every manifest under examples/ is accepted and round-trips; every one under
//! examples/invalid/ is rejected on the field its header names.

use std::{fs, path::Path};

use ferry::api::{
    manifest::parse_documents,
    validate::{ManifestValidator, Resource},
};
use serde_json::Value;

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `written` is contained in `serialized`: no field the user wrote is lost or renamed.
fn assert_contained(written: &Value, serialized: &Value, at: &str) {
    match (written, serialized) {
        (Value::Object(w), Value::Object(s)) => {
            for (k, v) in w {
                let got = s
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} was lost in the round trip"));
                assert_contained(v, got, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(s)) => {
            assert_eq!(w.len(), s.len(), "{at}: list length changed");
            for (i, (a, b)) in w.iter().zip(s).enumerate() {
                assert_contained(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(written, serialized, "{at} changed in the round trip"),
    }
}

#[test]
fn valid_examples_are_accepted_and_round_trip() {
    let validator = ManifestValidator::new();
    let mut seen = (0, 0);
    for file in yaml_files("examples") {
        let text = fs::read_to_string(&file).expect("readable example");
        for doc in parse_documents(&text).expect("valid YAML") {
            // A WorkerPool runs no worker of its own: the API server checks it (e2e), and
            // `worker_pools_round_trip` here.
            if doc["kind"] == "WorkerPool" {
                continue;
            }
            let resource = validator
                .validate(&doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let serialized = match &resource {
                Resource::Transport(t) => {
                    seen.0 += 1;
                    serde_json::to_value(t)
                }
                Resource::Connection(c) => {
                    seen.1 += 1;
                    serde_json::to_value(c)
                }
            }
            .expect("serializes");
            assert_contained(&doc, &serialized, "");
            let again = validator
                .validate(&serialized)
                .unwrap_or_else(|e| panic!("{} after a round trip: {e}", file.display()));
            assert_eq!(
                again,
                resource,
                "{}: round trip changed the object",
                file.display()
            );
        }
    }
    assert!(seen.0 >= 3 && seen.1 >= 3, "too few examples: {seen:?}");
}

#[test]
fn worker_pools_round_trip() {
    let mut seen = 0;
    for file in yaml_files("examples") {
        let text = fs::read_to_string(&file).expect("readable example");
        for doc in parse_documents(&text).expect("valid YAML") {
            if doc["kind"] != "WorkerPool" {
                continue;
            }
            let pool: ferry::api::WorkerPool = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let serialized = serde_json::to_value(&pool).expect("serializes");
            assert_contained(&doc, &serialized, "");
            seen += 1;
        }
    }
    assert!(seen >= 1, "no WorkerPool example");
}

#[test]
fn invalid_examples_are_rejected_on_the_named_field() {
    let validator = ManifestValidator::new();
    let files = yaml_files("examples/invalid");
    assert!(files.len() >= 25, "only {} invalid examples", files.len());
    for file in files {
        let text = fs::read_to_string(&file).expect("readable example");
        let fields: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# field: "))
            .collect();
        assert!(
            !fields.is_empty() && text.contains("# rejected because: "),
            "{}: header must give the reason and the field",
            file.display()
        );
        let docs = parse_documents(&text).expect("valid YAML");
        assert_eq!(
            docs.len(),
            1,
            "{}: one object per invalid example",
            file.display()
        );
        let err = validator
            .validate(&docs[0])
            .expect_err(&format!("{} was accepted", file.display()));
        let named: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        for field in fields {
            assert!(
                named.contains(&field),
                "{}: expected a problem at {field}, got: {err}",
                file.display()
            );
        }
        println!("{}: {err}", file.file_name().unwrap_or_default().display());
    }
}
