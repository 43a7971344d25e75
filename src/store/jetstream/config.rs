//! What ferry asks of the JetStream server, as pure functions: a transport's stream from its
//! Store and Forward settings (docs/resources.md "Pools on JetStream"), the pool's record
//! bucket, and the oldest server ferry runs on.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::{
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use super::names::TransportNames;

/// The oldest server a worker runs on: older ones lack `sync_interval: always` and have
/// known data-loss bugs in clustered JetStream.
pub const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);
/// Room for the headers ferry stores beside a payload (`Nats-Msg-Id`, the receive time, a
/// content type: each bounded by the ingest route).
pub const HEADER_ROOM: u64 = 4096;
/// JetStream's own expiry (`max_age`) is a backstop this long after the time to live: the
/// worker expires the head itself so it can count what expired (T9); the server expires only
/// what no worker looked after meanwhile, and the next owner counts that as expired too.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(300);
/// A producer's retry with the same `Ferry-Transaction-Id` within this long (or the time to
/// live, if shorter) is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Replicas of each stream and of the pool's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas(pub usize);

/// The queue limits a stream is made with: a transport's Store and Forward settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub max_transaction_bytes: u64,
    pub time_to_live: Duration,
}

/// Who the stream belongs to, kept in its metadata for whoever looks at the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// A transport's stream: one subject, file storage, `discard: new` (a full queue refuses at
/// the server too; DropOldest is the worker's, counted), limits from its spec.
pub fn stream_config(
    names: &TransportNames,
    limits: &StreamLimits,
    replicas: Replicas,
    owner: &Owner,
) -> stream::Config {
    let mut metadata = HashMap::from([
        ("ferry.dev/kind".to_owned(), "Transport".to_owned()),
        ("ferry.dev/namespace".to_owned(), owner.namespace.clone()),
        ("ferry.dev/name".to_owned(), owner.name.clone()),
    ]);
    if let Some(uid) = &owner.uid {
        metadata.insert("ferry.dev/uid".to_owned(), uid.clone());
    }
    stream::Config {
        name: names.stream.clone(),
        description: Some(format!(
            "ferry: the Store and Forward queue of transport {}/{}",
            owner.namespace, owner.name
        )),
        subjects: vec![names.subject.clone()],
        storage: StorageType::File,
        num_replicas: replicas.0,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        max_messages: clamp_i64(limits.max_messages),
        max_bytes: clamp_i64(limits.max_bytes),
        max_message_size: i32::try_from(limits.max_transaction_bytes.saturating_add(HEADER_ROOM))
            .unwrap_or(i32::MAX),
        max_age: limits.time_to_live.saturating_add(EXPIRY_GRACE),
        duplicate_window: limits.time_to_live.min(DUPLICATE_WINDOW),
        allow_direct: true,
        metadata,
        ..Default::default()
    }
}

/// The pool's record bucket: one value per key (no history), replicated like the streams.
pub fn bucket_config(bucket: &str, replicas: Replicas) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: "ferry: the records (state, totals, owner) of a WorkerPool's resources"
            .to_owned(),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas.0,
        ..Default::default()
    }
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A server version (`2.12.8`, `2.11.0-RC.1`) as numbers; None when it is not one.
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Whether ferry runs on a server of this version (at least [`MIN_SERVER`]).
pub fn supported(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_SERVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ttl: Duration) -> StreamLimits {
        StreamLimits {
            max_messages: 1000,
            max_bytes: 10 << 20,
            max_transaction_bytes: 1 << 20,
            time_to_live: ttl,
        }
    }

    #[test]
    fn a_stream_holds_the_transports_limits() {
        let names = TransportNames::new("shop/orders");
        let owner = Owner {
            namespace: "shop".into(),
            name: "orders".into(),
            uid: Some("u-1".into()),
        };
        let config = stream_config(
            &names,
            &limits(Duration::from_secs(3600)),
            Replicas(3),
            &owner,
        );
        assert_eq!(config.name, names.stream);
        assert_eq!(config.subjects, vec![names.subject.clone()]);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.storage, StorageType::File);
        assert_eq!(config.discard, DiscardPolicy::New);
        assert_eq!(config.max_messages, 1000);
        assert_eq!(config.max_bytes, 10 << 20);
        assert_eq!(config.max_message_size, (1 << 20) + 4096);
        assert_eq!(config.max_age, Duration::from_secs(3600 + 300));
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert!(config.allow_direct);
        assert_eq!(config.metadata["ferry.dev/uid"], "u-1");
        assert_eq!(config.metadata["ferry.dev/namespace"], "shop");
    }

    #[test]
    fn the_duplicate_window_is_never_longer_than_the_time_to_live() {
        for ttl in [1, 5, 119, 120, 121, 86_400] {
            let ttl = Duration::from_secs(ttl);
            let config = stream_config(
                &TransportNames::new("a/b"),
                &limits(ttl),
                Replicas(1),
                &Owner::default(),
            );
            assert!(config.duplicate_window <= ttl);
            assert!(config.duplicate_window <= config.max_age);
            assert!(config.max_age > ttl);
        }
    }

    #[test]
    fn limits_beyond_the_servers_numbers_are_clamped() {
        let huge = StreamLimits {
            max_messages: u64::MAX,
            max_bytes: u64::MAX,
            max_transaction_bytes: u64::MAX,
            time_to_live: Duration::MAX,
        };
        let config = stream_config(
            &TransportNames::new("a/b"),
            &huge,
            Replicas(5),
            &Owner::default(),
        );
        assert_eq!(config.max_messages, i64::MAX);
        assert_eq!(config.max_bytes, i64::MAX);
        assert_eq!(config.max_message_size, i32::MAX);
        assert_eq!(config.max_age, Duration::MAX);
    }

    #[test]
    fn versions() {
        for (version, parsed, ok) in [
            ("2.12.8", Some((2, 12, 8)), true),
            ("2.11.0", Some((2, 11, 0)), true),
            ("v2.11.0-RC.1", Some((2, 11, 0)), true),
            ("2.10.26", Some((2, 10, 26)), false),
            ("2.9.25", Some((2, 9, 25)), false),
            ("3.0", Some((3, 0, 0)), true),
            ("1.99.99", Some((1, 99, 99)), false),
            ("", None, false),
            ("banana", None, false),
            ("2.x.1", None, false),
        ] {
            assert_eq!(parse_version(version), parsed, "{version}");
            assert_eq!(supported(version), ok, "{version}");
        }
    }
}
