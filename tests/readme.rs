//! The README's commands for platform teams are the ones that work: every `kubectl ferry` line
//! parses as the plugin's command line, and every `kubectl patch` line, applied to the example
//! it names, gives a resource the CRD accepts. (The `helm upgrade --install` line is rendered
//! and validated by .ci/run; the plugin's commands run against the mock API server in
//! src/plugin.)

use clap::Parser;
use ferry::{
    api::{manifest::parse_documents, validate::ManifestValidator},
    plugin::Cli,
};
use serde_json::Value;

const README: &str = include_str!("../README.md");

fn lines(prefix: &str) -> Vec<&'static str> {
    README
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[test]
fn every_kubectl_ferry_line_parses() {
    let commands = lines("kubectl ferry ");
    assert!(
        commands.len() >= 5,
        "the README shows the plugin: {commands:?}"
    );
    for line in commands {
        let args = line
            .strip_prefix("kubectl ferry ")
            .expect("prefix")
            .split_whitespace();
        if let Err(e) = Cli::try_parse_from(std::iter::once("kubectl-ferry").chain(args)) {
            panic!("README: `{line}` does not parse: {e}");
        }
    }
}

/// RFC 7386, as `kubectl patch --type=merge` applies it.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[test]
fn every_kubectl_patch_line_gives_a_valid_resource() {
    let validator = ManifestValidator::new();
    let patches = lines("kubectl -n plant-a patch ");
    assert!(patches.len() >= 4, "{patches:?}");
    for line in patches {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = words[4].split_once('/').expect("kind/name");
        assert!(line.contains("--type=merge"), "{line}");
        let json = line
            .split_once("-p '")
            .and_then(|(_, rest)| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("`{line}` has no -p '<json>'"));
        let patch: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{line}: {e}"));
        let example = match (kind, name) {
            ("transport", "erp") => include_str!("../examples/transport-erp.yaml"),
            ("connection", "crm-orders") => include_str!("../examples/connection-crm-orders.yaml"),
            other => panic!("the README patches {other:?}, which no example defines"),
        };
        let mut doc = parse_documents(example).expect("example").remove(0);
        assert_eq!(doc["metadata"]["name"], name, "{line}");
        assert_eq!(doc["metadata"]["namespace"], "plant-a", "{line}");
        merge(&mut doc, &patch);
        if let Err(e) = validator.validate(&doc) {
            panic!("`{line}` would be refused: {e}");
        }
    }
}
