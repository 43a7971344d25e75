//! Go-style durations (`10s`, `1h30m`), the format of Kubernetes' `metav1.Duration`, parsed
//! exactly as Go's `time.ParseDuration` parses them: ferry and the API server (the CRD's CEL
//! rule on every duration field calls `duration()`, which is Go's parser) accept the same texts.
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
        let nanos = parse_go_duration(text)
            .map_err(|reason| DurationError::Malformed(text.to_owned(), reason))?;
        if nanos < 0 {
            return Err(DurationError::Negative(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            value: time::Duration::from_nanos(nanos.unsigned_abs()),
        })
    }
}

/// Go's `time.ParseDuration`, which Kubernetes uses for `metav1.Duration` and CEL's
/// `duration()`: the same accepted set and the same overflow limit (an `int64` of
/// nanoseconds, about 292 years). Answers signed nanoseconds; never panics.
pub fn parse_go_duration(text: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || {
        "it is not a duration, or it exceeds 2562047h (the limit of Kubernetes' durations)"
            .to_owned()
    };
    let mut s = text;
    let mut neg = false;
    if let Some(c) = s.chars().next()
        && (c == '-' || c == '+')
    {
        neg = c == '-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut whole: u64 = 0;
        for b in s[..digits].bytes() {
            if whole > LIMIT / 10 {
                return Err(invalid());
            }
            whole = whole * 10 + u64::from(b - b'0');
            if whole > LIMIT {
                return Err(invalid());
            }
        }
        s = &s[digits..];
        // (\.[0-9]*)?
        let (mut fraction, mut scale, mut has_fraction) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for b in rest[..digits].bytes() {
                if overflow || fraction > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let next = fraction * 10 + u64::from(b - b'0');
                if next > LIMIT {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            has_fraction = digits > 0;
            s = &rest[digits..];
        }
        if digits == 0 && !has_fraction {
            return Err(invalid());
        }
        // The unit: everything up to the next digit or period.
        let unit_len = s
            .bytes()
            .take_while(|b| !(*b == b'.' || b.is_ascii_digit()))
            .count();
        if unit_len == 0 {
            return Err("it has a number without a unit (ns, us, ms, s, m, h)".into());
        }
        let unit = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("{other:?} is not a unit (ns, us, ms, s, m, h)")),
        };
        s = &s[unit_len..];
        if whole > LIMIT / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total = match total.checked_add(value) {
            Some(t) if t <= LIMIT => t,
            _ => return Err(invalid()),
        };
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
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

    /// Go's own table (`time_test.go`, `parseDurationTests` and `parseDurationErrorTests`).
    #[test]
    fn parses_exactly_what_go_parses() {
        const S: i64 = 1_000_000_000;
        for (text, nanos) in [
            ("0", 0),
            ("5s", 5 * S),
            ("-5s", -5 * S),
            ("+5s", 5 * S),
            ("-0", 0),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600_000_000),
            ("5.s", 5 * S),
            (".5s", S / 2),
            ("1.004s", S + 4_000_000),
            ("100.00100s", 100 * S + 1_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12\u{b5}s", 12_000),
            ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000),
            ("15m", 15 * 60 * S),
            ("3h30m", 3 * 3600 * S + 30 * 60 * S),
            ("10.5s4m", 4 * 60 * S + 10 * S + S / 2),
            ("-2m3.4s", -(2 * 60 * S + 3 * S + 400_000_000)),
            (
                "1h2m3s4ms5us6ns",
                3600 * S + 2 * 60 * S + 3 * S + 4_000_000 + 5_000 + 6,
            ),
            (
                "39h9m14.425s",
                39 * 3600 * S + 9 * 60 * S + 14 * S + 425_000_000,
            ),
            ("0.3333333333333333333h", 20 * 60 * S),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("0.100000000000000000000h", 6 * 60 * S),
            (
                "0.830103483285477580700h",
                49 * 60 * S + 48 * S + 372_539_827,
            ),
            ("2562047h", 2_562_047 * 3600 * S),
        ] {
            assert_eq!(parse_go_duration(text), Ok(nanos), "{text}");
        }
        for text in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "1.1.1s",
            "\u{85}\u{85}",
            "9223372036854775808ns",
            "-9223372036854775809ns",
            "9223372036854775.808us",
            "2562048h",
            "9999999h9999999h",
            "99999999999999999999h",
            "99999999999999999999999999999999999s",
        ] {
            assert!(
                parse_go_duration(text).is_err(),
                "{text:?} should be refused"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the text, parsing answers and never panics; what parses prints back as
        /// the same text.
        #[test]
        fn never_panics(text in "[-+.0-9a-z\u{b5}\u{3bc}]{0,40}") {
            let _ = parse_go_duration(&text);
            if let Ok(d) = text.parse::<Duration>() {
                proptest::prop_assert_eq!(d.to_string(), text);
            }
        }
    }
}
