//! Byte quantities as Kubernetes writes them (`1Gi`, `500M`, or a plain number of bytes).
//!
//! Only whole, positive amounts are accepted: a fraction of a byte or a `m` (milli) suffix
//! means nothing for a size. The text the user wrote is kept for round trips.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// What the schema accepts for the string form.
pub const PATTERN: &str = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

const SUFFIXES: [(&str, u64); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error(
        "{0:?} is not a byte size: write a whole positive number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T), e.g. 512Mi"
    )]
    Malformed(String),
    #[error("{0:?} is too large: a size must fit in 64 bits of bytes")]
    TooLarge(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    Number(u64),
    Text(String),
}

/// A positive number of bytes, and how the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteQuantity {
    written: Written,
    bytes: u64,
}

impl ByteQuantity {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn from_bytes(bytes: u64) -> Result<Self, QuantityError> {
        if bytes == 0 {
            return Err(QuantityError::Malformed("0".into()));
        }
        Ok(Self {
            written: Written::Number(bytes),
            bytes,
        })
    }
}

impl FromStr for ByteQuantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || QuantityError::Malformed(text.to_owned());
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(digits_end);
        if digits.is_empty() || digits.starts_with('0') {
            return Err(malformed());
        }
        let multiplier = if suffix.is_empty() {
            1
        } else {
            SUFFIXES
                .iter()
                .find(|(s, _)| *s == suffix)
                .map(|(_, m)| *m)
                .ok_or_else(malformed)?
        };
        let number: u64 = digits
            .parse()
            .map_err(|_| QuantityError::TooLarge(text.to_owned()))?;
        let bytes = number
            .checked_mul(multiplier)
            .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?;
        Ok(Self {
            written: Written::Text(text.to_owned()),
            bytes,
        })
    }
}

impl fmt::Display for ByteQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.written {
            Written::Number(n) => write!(f, "{n}"),
            Written::Text(t) => f.write_str(t),
        }
    }
}

impl Serialize for ByteQuantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.written {
            Written::Number(n) => s.serialize_u64(*n),
            Written::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for ByteQuantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum IntOrString {
            Int(i64),
            Str(String),
        }
        match IntOrString::deserialize(d)? {
            IntOrString::Int(n) if n > 0 => Ok(Self {
                written: Written::Number(n as u64),
                bytes: n as u64,
            }),
            IntOrString::Int(n) => Err(de::Error::custom(QuantityError::Malformed(n.to_string()))),
            IntOrString::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl JsonSchema for ByteQuantity {
    fn schema_name() -> Cow<'static, str> {
        "ByteQuantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The int-or-string form Kubernetes uses for quantities. `minimum` applies to the
        // integer form only, `pattern`/`maxLength` to the string form (JSON Schema semantics).
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "minimum": 1,
            "maxLength": 32,
            "pattern": PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kubernetes_suffixes() {
        for (text, bytes) in [
            ("1", 1),
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("2Gi", 2 << 30),
            ("500M", 500_000_000),
            ("3k", 3000),
        ] {
            assert_eq!(
                text.parse::<ByteQuantity>().unwrap().bytes(),
                bytes,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_zero_fractions_unknown_suffixes_and_overflow() {
        for text in ["0", "0Mi", "", "Mi", "1.5Gi", "10m", "1KB", "-1", "20Ei"] {
            assert!(
                text.parse::<ByteQuantity>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn accepts_integers_and_keeps_the_written_form() {
        let q: ByteQuantity = serde_json::from_value(serde_json::json!(1048576)).unwrap();
        assert_eq!(q.bytes(), 1 << 20);
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!(1048576)
        );
        let q: ByteQuantity = serde_json::from_value(serde_json::json!("1Mi")).unwrap();
        assert_eq!(serde_json::to_value(&q).unwrap(), serde_json::json!("1Mi"));
        assert!(serde_json::from_value::<ByteQuantity>(serde_json::json!(0)).is_err());
    }

    proptest! {
        #[test]
        fn suffix_multiplies_or_reports_overflow(n in 1u64..u64::MAX, i in 0usize..12) {
            let (suffix, m) = SUFFIXES[i];
            let parsed = format!("{n}{suffix}").parse::<ByteQuantity>();
            match n.checked_mul(m) {
                Some(bytes) => prop_assert_eq!(parsed.map(|q| q.bytes()), Ok(bytes)),
                None => prop_assert!(matches!(parsed, Err(QuantityError::TooLarge(_)))),
            }
        }
    }
}
