//! Reading manifests: the multi-document YAML files users give kubectl.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("document {document} is not valid YAML: {source}")]
pub struct YamlError {
    /// 1-based position of the document in the stream.
    pub document: usize,
    #[source]
    pub source: serde_norway::Error,
}

/// Every non-empty document of a YAML stream, as JSON values.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| YamlError {
            document: i + 1,
            source,
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = parse_documents("---\na: 1\n---\n# only a comment\n---\nb: [x]\n").unwrap();
        assert_eq!(
            docs,
            [serde_json::json!({"a": 1}), serde_json::json!({"b": ["x"]})]
        );
    }

    #[test]
    fn names_the_broken_document() {
        let err = parse_documents("a: 1\n---\nb: [unclosed\n").unwrap_err();
        assert_eq!(err.document, 2);
    }
}
