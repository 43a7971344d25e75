//! The operator's rooms (src/operator/mod.rs) import only downwards: kinds → reconcile →
//! workers → runtime → objects. A file's own tests are left out (they may use fixtures of any
//! room). A circle between rooms fails here, naming the file and the room it reaches up to.

use std::path::Path;

const ROOMS: [&str; 5] = ["kinds", "reconcile", "workers", "runtime", "objects"];

/// The rooms `text` names through `crate::operator::…`, groups included.
fn rooms_named(text: &str) -> Vec<String> {
    let mut named = Vec::new();
    let prefix = "crate::operator::";
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level entries of the group: the first identifier after `{` and each `,` at
            // depth one.
            let mut depth = 1;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => entry_start = true,
                    c if entry_start && (c.is_alphabetic() || c == '_') => {
                        let word: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        named.push(word);
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    named.retain(|name| ROOMS.contains(&name.as_str()));
    named
}

#[test]
fn rooms_import_only_downwards() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/operator");
    let mut upward = Vec::new();
    let mut files = 0;
    for (level, room) in ROOMS.iter().enumerate() {
        for entry in std::fs::read_dir(root.join(room)).expect("a room is a folder") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("readable");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            files += 1;
            for named in rooms_named(code) {
                let to = ROOMS.iter().position(|r| *r == named).unwrap_or(level);
                if to < level {
                    upward.push(format!("{} → {named}", path.display()));
                }
            }
        }
    }
    assert!(files > 20, "the rooms hold the operator's files ({files})");
    assert!(
        upward.is_empty(),
        "imports up a room:\n{}",
        upward.join("\n")
    );
}

#[test]
fn groups_and_paths_are_both_read() {
    let text = "use crate::operator::{runtime::context::Context, kinds::{placement}};\n\
                let x = crate::operator::workers::worker_pod::pod_name(a);";
    assert_eq!(rooms_named(text), ["runtime", "kinds", "workers"]);
}
