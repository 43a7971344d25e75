//! The on-disk format of the worker's store, in one place (docs/store-format.md describes
//! it for readers): the file and its marker, the tables, the keys of the meta table, and the
//! byte layout of a queued transaction and of a queue's numbers. Every read and write of those
//! bytes goes through this module.
//!
//! Format version 1:
//! - file `ferry.redb` in the data directory, and `ferry.redb.created` beside it once created;
//! - table `meta` (`&str` → bytes): `format-version` (u64 LE), `record/<ns>/<name>` (a
//!   transport's saved record, JSON), `connection/<ns>/<name>` (a connection's, JSON),
//!   `queue-info/<ns>/<name>` (a queue's numbers, [`QueueInfo`]);
//! - one table per transport, `queue/<ns>/<name>` (u64 sequence number → a queued
//!   transaction): received time (u64 LE, ms since the epoch), id length (u16 LE), id (UTF-8),
//!   content type length (u16 LE, 0 = none), content type (UTF-8), then the payload as
//!   received.
//!
//! All integers are little-endian.

use redb::TableDefinition;

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The store's file in the data directory.
pub const FILE: &str = "ferry.redb";
/// Written beside the file once it exists: a directory with the marker and no file lost it.
pub(super) const MARKER: &str = "ferry.redb.created";
/// The layout described above. A store with a higher version is refused at open; one without
/// a version (written before versions) is version 1.
pub const FORMAT_VERSION: u64 = 1;
pub(super) const FORMAT_KEY: &str = "format-version";

/// The table of a transport's queue (`namespace/name`).
pub(super) fn queue_table(key: &str) -> String {
    format!("queue/{key}")
}

/// The meta key of a transport's queue numbers.
pub(super) fn queue_info_key(key: &str) -> String {
    format!("queue-info/{key}")
}

/// The meta keys and the queue table (a transport's) of everything kept of one resource.
pub(super) fn kept_of(kind: RecordKind, key: &str) -> (Vec<String>, Option<String>) {
    match kind {
        RecordKind::Transport | RecordKind::IngestToken => (
            vec![
                RecordKind::Transport.meta_key(key),
                queue_info_key(key),
                RecordKind::IngestToken.meta_key(key),
            ],
            Some(queue_table(key)),
        ),
        RecordKind::Connection => (vec![RecordKind::Connection.meta_key(key)], None),
    }
}

/// Whose record: transports and connections are kept apart in the meta table, and the
/// hashes of a pool worker's per-transport ingest tokens beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Transport,
    Connection,
    IngestToken,
}

impl RecordKind {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Self::Transport => "record/",
            Self::Connection => "connection/",
            Self::IngestToken => "ingest-token/",
        }
    }

    /// The kind, in words.
    pub fn name(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Connection => "connection",
            Self::IngestToken => "ingest token of transport",
        }
    }

    /// The meta key of the record of `key`.
    pub(super) fn meta_key(self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }
}

/// A transaction as it is kept in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedTxn {
    pub seq: u64,
    pub id: String,
    pub content_type: Option<String>,
    /// When the worker received it, milliseconds since the Unix epoch.
    pub received_ms: u64,
    pub payload: bytes::Bytes,
}

/// The longest transaction id and content type a queued transaction can carry (their lengths
/// are written in two bytes).
pub const MAX_HEADER_FIELD: usize = u16::MAX as usize;

/// The fixed part of the header: received time (8), id length (2), content type length (2).
const FIXED_HEADER: usize = 12;

/// The bytes in front of a queued transaction's payload: received time, id, content type.
/// `id` and `content_type` must be at most [`MAX_HEADER_FIELD`] bytes (the ingest route
/// refuses longer ones).
pub fn encode_header(received_ms: u64, id: &str, content_type: Option<&str>, out: &mut Vec<u8>) {
    let ct = content_type.unwrap_or("");
    out.extend_from_slice(&received_ms.to_le_bytes());
    out.extend_from_slice(&(id.len().min(MAX_HEADER_FIELD) as u16).to_le_bytes());
    out.extend_from_slice(&id.as_bytes()[..id.len().min(MAX_HEADER_FIELD)]);
    out.extend_from_slice(&(ct.len().min(MAX_HEADER_FIELD) as u16).to_le_bytes());
    out.extend_from_slice(&ct.as_bytes()[..ct.len().min(MAX_HEADER_FIELD)]);
}

/// The size of [`encode_header`]'s output.
pub fn header_len(id: &str, content_type: Option<&str>) -> usize {
    FIXED_HEADER
        + id.len().min(MAX_HEADER_FIELD)
        + content_type.map_or(0, |ct| ct.len().min(MAX_HEADER_FIELD))
}

/// A queued transaction's header read in place: the one parser of its bytes.
pub(super) struct Header<'a> {
    pub received_ms: u64,
    pub id: &'a [u8],
    pub content_type: &'a [u8],
    /// Where the payload starts.
    pub payload_at: usize,
}

impl<'a> Header<'a> {
    /// `None` when the bytes are too short for the lengths they claim.
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        let u16_at = |at: usize| {
            raw.get(at..at + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_le_bytes)
        };
        let received_ms = u64::from_le_bytes(raw.get(0..8)?.try_into().ok()?);
        let id_len = usize::from(u16_at(8)?);
        let id = raw.get(10..10 + id_len)?;
        let ct_len = usize::from(u16_at(10 + id_len)?);
        let ct_at = FIXED_HEADER + id_len;
        let content_type = raw.get(ct_at..ct_at + ct_len)?;
        Some(Self {
            received_ms,
            id,
            content_type,
            payload_at: ct_at + ct_len,
        })
    }

    /// The received time and payload size of a value; (0, 0) for one too short to parse.
    pub fn time_and_size(raw: &[u8]) -> (u64, u64) {
        Header::parse(raw).map_or((0, 0), |h| {
            (h.received_ms, (raw.len() - h.payload_at) as u64)
        })
    }
}

/// A queued transaction without its payload: what an operator looks at during an incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEntry {
    pub seq: u64,
    pub id: String,
    pub content_type: Option<String>,
    /// When the worker received it, milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl QueuedEntry {
    /// The header of a value read from the store (ids and content types are stored as the
    /// ingest route accepted them: text; anything else is shown lossily, never refused).
    pub(super) fn decode(seq: u64, raw: &[u8]) -> Option<Self> {
        let header = Header::parse(raw)?;
        let content_type = String::from_utf8_lossy(header.content_type).into_owned();
        Some(Self {
            seq,
            id: String::from_utf8_lossy(header.id).into_owned(),
            content_type: (!content_type.is_empty()).then_some(content_type),
            received_ms: header.received_ms,
            bytes: (raw.len() - header.payload_at) as u64,
        })
    }
}

impl QueuedTxn {
    /// Decode a value read from the store. The payload is copied out of redb's buffer: redb
    /// requires every page a reader holds to be released before a writer frees it (a debug
    /// assertion guards it), so nothing read may outlive its read transaction.
    pub(super) fn decode(seq: u64, raw: &[u8]) -> Option<Self> {
        let header = Header::parse(raw)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let content_type = text(header.content_type)?;
        Some(Self {
            seq,
            id: text(header.id)?,
            content_type: (!content_type.is_empty()).then_some(content_type),
            received_ms: header.received_ms,
            payload: bytes::Bytes::copy_from_slice(&raw[header.payload_at..]),
        })
    }
}

/// What a queue holds, and what became of everything that entered it. Kept by the writer in
/// the same redb transaction as the change it counts, so it is exact after any crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueInfo {
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// The sequence number the next transaction gets.
    pub next_seq: u64,
    /// Totals: appended, forwarded (delivered from the queue), expired (time to live),
    /// dropped (DropOldest), rejected (a 4xx from the host while forwarding).
    pub stored: u64,
    pub forwarded: u64,
    pub expired: u64,
    pub dropped: u64,
    pub rejected: u64,
    /// When the oldest queued transaction was received (ms since the epoch); not saved.
    pub oldest_ms: Option<u64>,
}

/// Eight u64 words, in the order of the fields above (`oldest_ms` is not saved). A shorter
/// value (an older layout) reads the missing words as 0.
const INFO_WORDS: usize = 8;

impl QueueInfo {
    fn words(&self) -> [u64; INFO_WORDS] {
        [
            self.messages,
            self.bytes,
            self.next_seq,
            self.stored,
            self.forwarded,
            self.expired,
            self.dropped,
            self.rejected,
        ]
    }

    pub(super) fn to_bytes(self) -> Vec<u8> {
        self.words().iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub(super) fn from_bytes(raw: &[u8]) -> Self {
        let word = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            messages: word(0),
            bytes: word(1),
            next_seq: word(2),
            stored: word(3),
            forwarded: word(4),
            expired: word(5),
            dropped: word(6),
            rejected: word(7),
            oldest_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What is written reads back, whatever the id, content type and payload.
        #[test]
        fn a_queued_transaction_reads_back_as_written(
            received_ms in any::<u64>(),
            id in "[ -~]{1,80}",
            content_type in proptest::option::of("[ -~]{1,80}"),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut raw = Vec::new();
            encode_header(received_ms, &id, content_type.as_deref(), &mut raw);
            prop_assert_eq!(raw.len(), header_len(&id, content_type.as_deref()));
            raw.extend_from_slice(&payload);
            let txn = QueuedTxn::decode(9, &raw).expect("decodes");
            prop_assert_eq!(&txn.id, &id);
            prop_assert_eq!(txn.content_type.as_deref(), content_type.as_deref());
            prop_assert_eq!(txn.received_ms, received_ms);
            prop_assert_eq!(&txn.payload[..], &payload[..]);
            prop_assert_eq!(Header::time_and_size(&raw), (received_ms, payload.len() as u64));
        }

        /// Damaged bytes are refused or read, never a panic.
        #[test]
        fn any_bytes_parse_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = QueuedTxn::decode(1, &raw);
            let _ = Header::time_and_size(&raw);
            let _ = QueueInfo::from_bytes(&raw);
        }

        #[test]
        fn queue_numbers_read_back(words in proptest::array::uniform8(any::<u64>())) {
            let info = QueueInfo {
                messages: words[0], bytes: words[1], next_seq: words[2], stored: words[3],
                forwarded: words[4], expired: words[5], dropped: words[6], rejected: words[7],
                oldest_ms: None,
            };
            prop_assert_eq!(QueueInfo::from_bytes(&info.to_bytes()), info);
        }
    }
}
