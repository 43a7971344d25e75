//! Names on the JetStream server, derived from Kubernetes names: a stream, a subject and a
//! record key per transport, a key per connection, a bucket per pool. Each is a readable
//! prefix plus a hash of the full name, so any Kubernetes name fits the server's character
//! set and length, two names never share one, and a name never changes (the hash is SHA-256,
//! fixed by `crate::stable_hash_hex`, not by a toolchain).

/// Hex digits of the hash that tells names apart (80 bits).
const HASH_BYTES: usize = 10;
/// The readable part of a stream name; the whole name stays under 64 characters.
const READABLE: usize = 36;

/// A transport's names on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportNames {
    /// `FERRY_<namespace>_<name>_<hash>` (readable part shortened).
    pub stream: String,
    /// The one subject its stream holds: `ferry.tp.<hash>`.
    pub subject: String,
    /// Its record in the pool's bucket: `tp.<hash>`.
    pub key: String,
}

impl TransportNames {
    /// `key` is the worker's resource key, `namespace/name`.
    pub fn new(key: &str) -> Self {
        let hash = crate::stable_hash_hex(&format!("transport/{key}"), HASH_BYTES);
        Self {
            stream: format!("FERRY_{}_{hash}", readable(key, READABLE)),
            subject: format!("ferry.tp.{hash}"),
            key: format!("tp.{hash}"),
        }
    }
}

/// A connection's record key in the pool's bucket: `cx.<hash>`.
pub fn connection_key(key: &str) -> String {
    format!(
        "cx.{}",
        crate::stable_hash_hex(&format!("connection/{key}"), HASH_BYTES)
    )
}

/// An ingest token's record key in the pool's bucket: `it.<hash>`.
pub fn ingest_token_key(key: &str) -> String {
    format!(
        "it.{}",
        crate::stable_hash_hex(&format!("ingest-token/{key}"), HASH_BYTES)
    )
}

/// The bucket of one pool's records: `FERRY_POOL_<namespace>_<name>_<hash>`. A KV bucket's
/// name takes letters, digits, `-` and `_`.
pub fn pool_bucket(namespace: &str, pool: &str) -> String {
    let full = format!("{namespace}/{pool}");
    let hash = crate::stable_hash_hex(&format!("pool/{full}"), HASH_BYTES);
    format!("FERRY_POOL_{}_{hash}", readable(&full, READABLE - 5))
}

/// Letters and digits kept, anything else `_`, at most `max` characters.
fn readable(key: &str, max: usize) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_read_as_the_resource_they_belong_to() {
        let names = TransportNames::new("shop/orders.v1");
        assert!(
            names.stream.starts_with("FERRY_shop_orders_v1_"),
            "{}",
            names.stream
        );
        assert!(names.subject.starts_with("ferry.tp."));
        assert!(names.key.starts_with("tp."));
        assert_eq!(names, TransportNames::new("shop/orders.v1"), "stable");
        assert_ne!(
            names.stream,
            TransportNames::new("shop/orders_v1").stream,
            "names that read the same are told apart by the hash"
        );
        assert!(pool_bucket("shop", "pool-a").starts_with("FERRY_POOL_shop_pool_a_"));
        assert_ne!(connection_key("a/b"), names.key);
        assert_ne!(ingest_token_key("a/b"), connection_key("a/b"));
    }

    /// The same hash for all time: a changed derivation would orphan every stream.
    #[test]
    fn names_never_change() {
        let names = TransportNames::new("default/orders");
        let hash = crate::stable_hash_hex("transport/default/orders", HASH_BYTES);
        assert_eq!(names.stream, format!("FERRY_default_orders_{hash}"));
        assert_eq!(hash.len(), 20);
    }

    fn is_stream_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    fn is_subject_or_key(name: &str) -> bool {
        name.split('.')
            .all(|token| !token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric()))
    }

    proptest! {
        /// Any namespace and name the API server accepts (DNS labels and subdomains, up to 253
        /// characters) gives names the server accepts.
        #[test]
        fn every_kubernetes_name_fits(
            namespace in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
        ) {
            let key = format!("{namespace}/{name}");
            let names = TransportNames::new(&key);
            prop_assert!(is_stream_name(&names.stream), "{}", names.stream);
            prop_assert!(is_subject_or_key(&names.subject));
            prop_assert!(is_subject_or_key(&names.key));
            prop_assert!(is_subject_or_key(&connection_key(&key)));
            prop_assert!(is_stream_name(&pool_bucket(&namespace, &name)));
        }
    }
}
