//! What a field accepts, in words a person can act on, from the field's schema: its kind of
//! value (a duration, a size, a URL, a name...) and its bounds. Refusals say this instead of a
//! regular expression or a JSON type name.

use serde_json::Value;

/// `a duration such as 30s or 5m; must be at most 10m`: the kind of value, then the bounds of
/// the field's own rules (their messages already read as words).
pub fn in_words(schema: &Value) -> String {
    let mut words = kind_of_value(schema);
    // A length bound says something only of free text (a duration's or a URL's form says more).
    let free_text = schema
        .get("pattern")
        .and_then(Value::as_str)
        .is_none_or(|p| pattern_in_words(p).is_none());
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && free_text
    {
        words.push_str(&format!(" of at most {max} characters"));
    }
    match (
        schema.get("minimum").and_then(Value::as_i64),
        schema.get("maximum").and_then(Value::as_i64),
    ) {
        (Some(min), Some(max)) => words.push_str(&format!(" from {min} to {max}")),
        (Some(min), None) => words.push_str(&format!(" of at least {min}")),
        (None, Some(max)) => words.push_str(&format!(" of at most {max}")),
        (None, None) => {}
    }
    let rules: Vec<&str> = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("message").and_then(Value::as_str))
        .filter(|message| message.starts_with("must be"))
        .collect();
    for rule in rules {
        words.push_str("; ");
        words.push_str(rule);
    }
    words
}

/// The kind of value, by the field's pattern, enum or type.
fn kind_of_value(schema: &Value) -> String {
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && let Some(words) = pattern_in_words(pattern)
    {
        return words.into();
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let options: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
            .collect();
        return format!("one of {}", options.join(", "));
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "a number or text".into();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // A JSON Schema type list (nullable fields): the first is the field's own.
        Some(Value::Array(types)) => types.first().and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    match kind {
        "string" => "text",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "array" => "a list",
        "object" => "a mapping of fields",
        _ => "a value of the documented form (kubectl explain shows it)",
    }
    .into()
}

/// The patterns ferry's CRDs use, in words.
fn pattern_in_words(pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        super::duration::PATTERN => {
            "a duration such as 30s, 5m or 1h30m (a number and a unit: ns, us, ms, s, m, h)"
        }
        super::quantity::PATTERN => {
            "a size such as 512Mi or 2Gi (or a whole number of bytes; units Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E)"
        }
        r"^https?://[^\s/?#]+[^\s]*$" => "an http:// or https:// URL with a host and no spaces",
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" => {
            "a name of lowercase letters, digits and '-', starting and ending with a letter or digit"
        }
        r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" => {
            "a name of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        }
        r"^/.*$" => "a JSON pointer such as /items or /data/0/id (it starts with /)",
        r"^(/.*)?$" => "a JSON pointer such as /items, or empty for the whole document",
        r"^/[^\s]*$" => "a path such as /health (it starts with / and has no spaces)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_in_words() {
        let duration = super::super::duration::PATTERN;
        for (schema, words) in [
            (
                json!({"type": "string", "pattern": duration, "maxLength": 32,
                       "x-kubernetes-validations": [{"rule": "...", "message": "must be more than 0s and at most 10m"}]}),
                "a duration such as 30s, 5m or 1h30m (a number and a unit: ns, us, ms, s, m, h); must be more than 0s and at most 10m",
            ),
            (
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                "a whole number from 1 to 1000",
            ),
            (
                json!({"type": "string", "enum": ["Retain", "Delete"]}),
                "one of Retain, Delete",
            ),
            (json!({"type": ["boolean", "null"]}), "true or false"),
            (
                json!({"type": "string", "pattern": "^x+$", "maxLength": 8}),
                "text of at most 8 characters",
            ),
            (
                json!({"x-kubernetes-validations": [{"rule": "...", "message": "exactly one of transport or http must be set"}], "type": "object"}),
                "a mapping of fields",
            ),
        ] {
            assert_eq!(in_words(&schema), words, "{schema}");
        }
    }

    /// Every pattern of ferry's CRDs has words: a new pattern without them fails here.
    #[test]
    fn every_pattern_of_the_crds_has_words() {
        let crds = serde_json::to_value(crate::api::crds()).unwrap();
        let mut patterns = Vec::new();
        collect_patterns(&crds, &mut patterns);
        assert!(patterns.len() >= 5, "{patterns:?}");
        for pattern in patterns {
            assert!(
                pattern_in_words(&pattern).is_some(),
                "no words for {pattern}"
            );
        }
    }

    fn collect_patterns(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(p)) = map.get("pattern") {
                    out.push(p.clone());
                }
                map.values().for_each(|v| collect_patterns(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
            _ => {}
        }
    }
}
