//! The Argo CD health check (docs/argocd/health.lua) run by a real Lua 5.1 interpreter (the
//! version Argo CD embeds, gopher-lua) against every fixture of docs/argocd/health_test.yaml,
//! Argo CD's own test format. The fixtures are objects ferry's CRD accepts.
//!
//! Needs `lua5.1` (Debian's package): `.ci/run` installs it and sets `FERRY_REQUIRE_LUA=1`, so
//! there a missing interpreter fails; elsewhere the test says it is skipped and why.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use ferry::api::validate::ManifestValidator;
use serde_json::Value;

const DIR: &str = "docs/argocd";

/// A Lua table constructor holding `value` (JSON null: the key is left out, as nil).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs the health check with `obj` set, as Argo CD does; answers (status, message).
fn health(lua: &str, object: &Value) -> (String, String) {
    let script = Path::new(DIR).join("health.lua");
    let program = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")",
        lua_literal(object),
        lua_string(&script.display().to_string()),
    );
    let out = Command::new(lua).arg("-e").arg(&program).output().unwrap();
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap();
    (status.to_owned(), message.to_owned())
}

fn interpreter() -> Option<&'static str> {
    let found = Command::new("lua5.1").arg("-v").output().is_ok();
    if found {
        return Some("lua5.1");
    }
    assert!(
        std::env::var_os("FERRY_REQUIRE_LUA").is_none(),
        "FERRY_REQUIRE_LUA is set but lua5.1 is not installed (apt-get install lua5.1)"
    );
    None
}

fn read_yaml(path: &Path) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_argocd_health_check_maps_every_documented_status() {
    let Some(lua) = interpreter() else {
        eprintln!("skipped: lua5.1 is not installed (apt-get install lua5.1; .ci/run installs it)");
        return;
    };
    let validator = ManifestValidator::new();
    let tests = read_yaml(&Path::new(DIR).join("health_test.yaml"));
    let mut seen = std::collections::BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        let input = case["inputPath"].as_str().unwrap();
        let object = read_yaml(&Path::new(DIR).join(input));
        if let Err(e) = validator.validate(&object) {
            panic!("{input} is not an object ferry's CRD accepts: {e}");
        }
        let expected = &case["healthStatus"];
        let (status, message) = health(lua, &object);
        assert_eq!(
            (status.as_str(), message.as_str()),
            (
                expected["status"].as_str().unwrap(),
                expected["message"].as_str().unwrap()
            ),
            "{input}"
        );
        seen.insert((object["kind"].as_str().unwrap().to_owned(), status));
    }
    // Every health Argo CD knows that ferry can be in, for both kinds.
    for kind in ["Transport", "Connection"] {
        for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
            assert!(
                seen.contains(&(kind.to_owned(), status.to_owned())),
                "no fixture of a {status} {kind}"
            );
        }
    }
}

/// The argocd-cm snippet in docs/argocd/README.md carries the script itself, for both kinds.
#[test]
fn the_documented_argocd_cm_holds_the_script() {
    let script = std::fs::read_to_string(Path::new(DIR).join("health.lua")).unwrap();
    let readme = std::fs::read_to_string(Path::new(DIR).join("argocd-cm.yaml")).unwrap();
    let config: Value = serde_norway::from_str(&readme).unwrap();
    for kind in ["Transport", "Connection"] {
        let key = format!("resource.customizations.health.ferry.dev_{kind}");
        assert_eq!(
            config["data"][&key].as_str(),
            Some(script.as_str()),
            "{key} in docs/argocd/argocd-cm.yaml is not docs/argocd/health.lua"
        );
    }
}
