//! The shape of a saved record, ferry's own and versioned (docs/store-format.md, "Records").
//!
//! A record holds what ferry itself keeps of a resource (state, totals, watermarks) in fields
//! of its own, and the resource's spec as the JSON it was given — never a CRD type's serde
//! shape. A change of the CRD does not change what is on disk, so a new spec field cannot make
//! an existing record unreadable: the spec is read only to host the resource again after a
//! restart, before the operator sends it; a desired state that arrives replaces it, and the
//! record's own fields are read whatever the spec holds. Fields a build does not know (a newer
//! ferry's, after a downgrade) are kept as they are on every save.
//!
//! Every record carries `version`; records written before versions have none and are read as
//! version 1. A change of a record's own fields that an older reader cannot take raises
//! [`RECORD_VERSION`], and `decode` refuses a newer record by name instead of misreading it.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The version of the records this build writes, and the newest it reads.
pub const RECORD_VERSION: u64 = 1;

use super::RecordKind;

/// Why a saved record cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the saved record of {} {key} cannot be read: {why}", kind.name())]
pub struct RecordError {
    kind: RecordKind,
    key: String,
    #[source]
    why: Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error(
        "it was written by a newer ferry (record version {found}; this one reads versions up to {RECORD_VERSION}): run that version of ferry or a newer one"
    )]
    Newer { found: u64 },
    #[error("it is not a record ferry can read: {0}")]
    NotARecord(#[source] serde_json::Error),
}

/// Read the saved record of `kind` at `key`, of any version up to [`RECORD_VERSION`] (none:
/// version 1).
pub fn decode<T: DeserializeOwned>(
    kind: RecordKind,
    key: &str,
    raw: &[u8],
) -> Result<T, RecordError> {
    let fail = |why| RecordError {
        kind,
        key: key.to_owned(),
        why,
    };
    let value: Value = serde_json::from_slice(raw).map_err(|e| fail(Unreadable::NotARecord(e)))?;
    let found = value.get("version").and_then(Value::as_u64).unwrap_or(1);
    if found > RECORD_VERSION {
        return Err(fail(Unreadable::Newer { found }));
    }
    serde_json::from_value(value).map_err(|e| fail(Unreadable::NotARecord(e)))
}

/// `version` of a record being written.
pub fn record_version() -> u64 {
    RECORD_VERSION
}

/// A spec and the JSON a record keeps of it. Made from a desired state, the JSON is that
/// spec's; read from a record, it is the record's JSON as it was, unknown fields included, so
/// saving it again loses nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedSpec<S> {
    spec: S,
    json: Value,
}

impl<S: Serialize> SavedSpec<S> {
    /// A desired state's spec.
    pub fn new(spec: S) -> Self {
        let json = serde_json::to_value(&spec).unwrap_or(Value::Null);
        Self { spec, json }
    }
}

impl<S: DeserializeOwned> SavedSpec<S> {
    /// The spec a record kept, read by this build.
    pub fn read(json: Value) -> Result<Self, serde_json::Error> {
        Ok(Self {
            spec: S::deserialize(&json)?,
            json,
        })
    }
}

impl<S> std::ops::Deref for SavedSpec<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.spec
    }
}

impl<S> SavedSpec<S> {
    pub fn spec(&self) -> &S {
        &self.spec
    }

    /// The JSON a record saves.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Shape {
        version: u64,
        kept: u64,
    }

    #[test]
    fn records_without_a_version_are_version_one_and_newer_ones_are_refused_by_name() {
        let decode = |raw: &[u8]| decode::<Shape>(RecordKind::Transport, "plant-a/erp", raw);
        let old = decode(br#"{"version": 1, "kept": 3}"#).unwrap();
        assert_eq!(old.kept, 3);
        #[derive(Debug, Deserialize)]
        struct Defaulted {
            #[serde(default = "record_version")]
            version: u64,
        }
        let before_versions: Defaulted =
            super::decode(RecordKind::Transport, "plant-a/erp", br#"{"kept": 3}"#).unwrap();
        assert_eq!(before_versions.version, 1);
        let newer = decode(br#"{"version": 2, "kept": 3}"#).unwrap_err();
        assert!(
            matches!(newer.why, Unreadable::Newer { found: 2 }),
            "{newer}"
        );
        assert!(
            newer.to_string().starts_with(
                "the saved record of transport plant-a/erp cannot be read: it was written by a newer ferry (record version 2"
            ),
            "{newer}"
        );
        assert!(matches!(
            decode(b"{not json").unwrap_err().why,
            Unreadable::NotARecord(_)
        ));
    }

    #[test]
    fn a_spec_read_from_a_record_keeps_fields_this_build_does_not_know() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct Spec {
            a: u64,
        }
        let json = json!({"a": 1, "fromANewerFerry": {"x": true}});
        let saved = SavedSpec::<Spec>::read(json.clone()).unwrap();
        assert_eq!(saved.spec(), &Spec { a: 1 });
        assert_eq!(saved.json(), &json);
        assert_eq!(SavedSpec::new(Spec { a: 2 }).json(), &json!({"a": 2}));
    }
}
