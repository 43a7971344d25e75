//! `ferry.dev/restart: <value>` (docs/operator.md#restarting): a new value restarts the
//! resource's runtime on its worker once. Pure: which value to ask the worker for, and which
//! value the status records as handled.
//!
//! The value asked is the annotation's, or `sha256:<hex>` of it when it is longer than a
//! worker takes ([`crate::wire::MAX_RESTART_VALUE`]): any value the API server accepts works,
//! and the status never holds more than 253 bytes of it.

use kube::core::ObjectMeta;

/// The annotation that asks for a restart of the resource's runtime.
pub const RESTART_ANNOTATION: &str = "ferry.dev/restart";

/// The restart the annotation asks for, as the worker and the status name it; `None` when
/// there is no annotation or it is empty.
pub fn requested(meta: &ObjectMeta) -> Option<String> {
    let value = meta.annotations.as_ref()?.get(RESTART_ANNOTATION)?;
    if value.is_empty() {
        None
    } else if value.len() <= crate::wire::MAX_RESTART_VALUE {
        Some(value.clone())
    } else {
        Some(format!("sha256:{}", crate::stable_hash_hex(value, 32)))
    }
}

/// The value to send the worker: one requested and not yet handled.
pub fn to_ask(requested: Option<String>, handled: Option<&str>) -> Option<String> {
    requested.filter(|value| Some(value.as_str()) != handled)
}

/// What the status records as handled: the value asked once the worker reports it carried it
/// out; until then what it recorded before.
pub fn handled(
    before: Option<&str>,
    asked: Option<&str>,
    reported: Option<&str>,
) -> Option<String> {
    match asked {
        Some(asked) if reported == Some(asked) => Some(asked.to_owned()),
        _ => before.map(str::to_owned),
    }
}

/// The Event for a restart the status now records: (warning, reason, note).
pub fn restarted_event(
    before: Option<&str>,
    after: Option<&str>,
) -> Option<(bool, &'static str, String)> {
    let after = after?;
    (Some(after) != before).then(|| {
        (
            false,
            "Restarted",
            format!("its runtime was restarted on its worker ({RESTART_ANNOTATION}: {after})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn annotated(value: &str) -> ObjectMeta {
        ObjectMeta {
            annotations: Some([(RESTART_ANNOTATION.to_owned(), value.to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn the_annotation_names_the_restart() {
        assert_eq!(requested(&ObjectMeta::default()), None);
        assert_eq!(requested(&annotated("")), None, "empty asks for nothing");
        assert_eq!(
            requested(&annotated("2026-12-03T17:00:00Z")).as_deref(),
            Some("2026-12-03T17:00:00Z")
        );
        let long = "x".repeat(10_000);
        let named = requested(&annotated(&long)).unwrap();
        assert!(named.starts_with("sha256:") && named.len() <= crate::wire::MAX_RESTART_VALUE);
        assert_eq!(requested(&annotated(&long)), Some(named), "stable");
    }

    /// | requested | handled | asked |
    #[test]
    fn a_value_is_asked_until_it_is_handled() {
        let table: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (None, None, None),
            (None, Some("a"), None),
            (Some("a"), None, Some("a")),
            (Some("a"), Some("a"), None),
            (Some("b"), Some("a"), Some("b")),
        ];
        for (requested, before, asked) in table {
            assert_eq!(
                to_ask(requested.map(str::to_owned), *before).as_deref(),
                *asked,
                "{requested:?} {before:?}"
            );
        }
    }

    /// | before | asked | reported | recorded |
    #[test]
    fn the_status_records_what_the_worker_carried_out() {
        type Row<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let table: &[Row] = &[
            (None, None, None, None),
            (Some("a"), None, None, Some("a")),
            (Some("a"), None, Some("z"), Some("a")),
            (None, Some("b"), None, None),
            (Some("a"), Some("b"), Some("a"), Some("a")),
            (Some("a"), Some("b"), Some("b"), Some("b")),
        ];
        for (before, asked, reported, recorded) in table {
            assert_eq!(
                handled(*before, *asked, *reported).as_deref(),
                *recorded,
                "{before:?} {asked:?} {reported:?}"
            );
        }
    }

    proptest! {
        /// Once the worker reports the value asked, it is recorded and never asked again.
        #[test]
        fn a_value_runs_once(value in ".{1,300}", before in proptest::option::of(".{0,20}")) {
            let meta = annotated(&value);
            let asked = to_ask(requested(&meta), before.as_deref());
            let recorded = handled(before.as_deref(), asked.as_deref(), asked.as_deref());
            prop_assert_eq!(to_ask(requested(&meta), recorded.as_deref()), None);
            prop_assert!(recorded.is_none_or(|r| r.len() <= crate::wire::MAX_RESTART_VALUE));
        }
    }
}
