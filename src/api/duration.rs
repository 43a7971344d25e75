//! Go-style durations (`10s`, `1h30m`), the format of Kubernetes' `metav1.Duration`.
//!
//! The text the user wrote is kept, so that a manifest read and written back is unchanged
//! (GitOps tools compare text).

use std::{borrow::Cow, fmt, str::FromStr, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What the schema accepts: one or more `<number><unit>` groups, no sign.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{0:?} is not a duration: write it like 500ms, 10s, 5m or 1h30m ({1})")]
    Malformed(String, String),
    #[error("{0:?} is negative: durations here must be positive")]
    Negative(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: time::Duration,
}

impl Duration {
    pub fn as_std(&self) -> time::Duration {
        self.value
    }

    /// A whole number of seconds, written in hours when it is whole hours (`60s`, `1h`).
    pub fn from_secs(secs: u64) -> Self {
        let text = if secs.is_multiple_of(3600) && secs > 0 {
            format!("{}h", secs / 3600)
        } else {
            format!("{secs}s")
        };
        Self {
            text,
            value: time::Duration::from_secs(secs),
        }
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(DurationError::Malformed(
                String::new(),
                "it is empty".into(),
            ));
        }
        let parsed: kube::core::Duration =
            text.parse()
                .map_err(|e: kube::core::duration::ParseError| {
                    DurationError::Malformed(text.to_owned(), e.to_string())
                })?;
        if parsed.is_negative() {
            return Err(DurationError::Negative(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            value: parsed.into(),
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // maxLength bounds the cost the API server estimates for CEL rules on this field.
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations_and_keeps_the_text() {
        for (text, secs) in [
            ("10s", 10.0),
            ("1h", 3600.0),
            ("1h30m", 5400.0),
            ("500ms", 0.5),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.as_std().as_secs_f64(), secs, "{text}");
            assert_eq!(d.to_string(), text);
            assert_eq!(serde_json::to_value(&d).unwrap(), serde_json::json!(text));
        }
    }

    #[test]
    fn rejects_what_is_not_a_positive_duration() {
        for text in ["", "10", "ten seconds", "1d", "-5s"] {
            assert!(
                text.parse::<Duration>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn from_secs_writes_seconds_or_whole_hours() {
        assert_eq!(Duration::from_secs(3600).to_string(), "1h");
        assert_eq!(Duration::from_secs(60).to_string(), "60s");
        assert_eq!(Duration::from_secs(90).to_string(), "90s");
    }
}
